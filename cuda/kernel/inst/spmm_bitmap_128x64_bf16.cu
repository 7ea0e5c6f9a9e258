// One instantiation per file keeps the multi-architecture CUDA build parallel and incremental.
#include "../bitmap_launch.cuh"

namespace flashllm {
template std::string launch_spmm_bitmap_config<Traits128x64, Bf16, false>(const SpmmParams&, StreamHandle);
}  // namespace flashllm
