// The (config, dtype) dispatch of launch_spmm (declared in launcher.cuh). Include in exactly one
// translation unit: launcher.cu for CUDA (where the instantiations are extern, see inst/), or the
// host emulation entry (where they are implicit).
#pragma once

#include "launcher.cuh"

namespace flashllm {

std::string launch_spmm(const SpmmParams& p, Dtype dtype, int config,
                               StreamHandle stream) {
  if (p.n == 0 || p.m == 0) return {};
  if (p.split_k < 1) return "split_k must be >= 1";
  if (config < 0) config = choose_config(p.n);
  if (config >= kNumConfigs) return "unknown tiling config";
  const bool f16 = dtype == Dtype::kFloat16;
  switch (config) {
    case 0:
      return f16 ? launch_spmm_config<Traits256x16, Fp16>(p, stream)
                 : launch_spmm_config<Traits256x16, Bf16>(p, stream);
    case 1:
      return f16 ? launch_spmm_config<Traits256x32, Fp16>(p, stream)
                 : launch_spmm_config<Traits256x32, Bf16>(p, stream);
    case 2:
      return f16 ? launch_spmm_config<Traits128x64, Fp16>(p, stream)
                 : launch_spmm_config<Traits128x64, Bf16>(p, stream);
    default:
      return f16 ? launch_spmm_config<Traits128x128, Fp16>(p, stream)
                 : launch_spmm_config<Traits128x128, Bf16>(p, stream);
  }
}

}  // namespace flashllm
