// One instantiation per file keeps the multi-architecture CUDA build parallel and incremental.
#include "../launch_impl.cuh"

namespace flashllm {
template std::string launch_spmm_config<Traits256x32, Bf16>(const SpmmParams&, StreamHandle);
}  // namespace flashllm
