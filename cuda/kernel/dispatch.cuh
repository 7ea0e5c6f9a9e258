// The (config, dtype) dispatch of launch_spmm (declared in launcher.cuh). Include in exactly one
// translation unit: launcher.cu for CUDA (where the instantiations are extern, see inst/), or the
// host emulation entry (where they are implicit).
#pragma once

#include "launcher.cuh"

namespace flashllm {

namespace dispatch_detail {

// One (config, dtype) pair: the kernel family of p.format.
template <class T>
std::string launch_format(const SpmmParams& p, bool f16, StreamHandle stream) {
  switch (p.format) {
    case kFormatTiledCsl:
      return f16 ? launch_spmm_config<T, Fp16>(p, stream) : launch_spmm_config<T, Bf16>(p, stream);
    case kFormatBitmap:
      return f16 ? launch_spmm_bitmap_config<T, Fp16, false>(p, stream)
                 : launch_spmm_bitmap_config<T, Bf16, false>(p, stream);
    default:  // kFormatDense (checked by launch_spmm)
      return f16 ? launch_spmm_bitmap_config<T, Fp16, true>(p, stream)
                 : launch_spmm_bitmap_config<T, Bf16, true>(p, stream);
  }
}

}  // namespace dispatch_detail

std::string launch_spmm(const SpmmParams& p, Dtype dtype, int config,
                               StreamHandle stream) {
  if (p.format != kFormatTiledCsl && p.format != kFormatBitmap && p.format != kFormatDense)
    return "unknown format id " + std::to_string(p.format);
  if (p.n == 0 || p.m == 0) return {};
  if (p.split_k < 1) return "split_k must be >= 1";
  if (config < 0) config = choose_config(p.n);
  if (config >= kNumConfigs) return "unknown tiling config";
  const bool f16 = dtype == Dtype::kFloat16;
  switch (config) {
    case 0:
      return dispatch_detail::launch_format<Traits256x16>(p, f16, stream);
    case 1:
      return dispatch_detail::launch_format<Traits256x32>(p, f16, stream);
    case 2:
      return dispatch_detail::launch_format<Traits128x64>(p, f16, stream);
    default:
      return dispatch_detail::launch_format<Traits128x128>(p, f16, stream);
  }
}

}  // namespace flashllm
