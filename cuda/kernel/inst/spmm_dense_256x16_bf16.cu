// One instantiation per file keeps the multi-architecture CUDA build parallel and incremental.
#include "../bitmap_launch.cuh"

namespace flashllm {
template std::string launch_spmm_bitmap_config<Traits256x16, Bf16, true>(const SpmmParams&, StreamHandle);
}  // namespace flashllm
