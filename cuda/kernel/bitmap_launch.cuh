// Definition of launch_spmm_bitmap_config (declared in launcher.cuh): the bitmap (v2) and dense (v3)
// kernel's launch, with the Tiled-CSL launch's grid, limits and split-K counters. Included by the
// per-instantiation .cu files (cuda/kernel/inst/spmm_{bitmap,dense}_*.cu) and the host emulation.
#pragma once

#include <string>

#include "bitmap_kernel.cuh"
#include "launch_impl.cuh"

namespace flashllm {

template <class T, class Tag, bool kDense>
std::string launch_spmm_bitmap_config(const SpmmParams& p, StreamHandle stream) {
  using BT = BitmapTraits<T, kDense>;
  // cp.async needs 16-byte aligned sources: tiles start on multiples of 8 values (and of 260
  // index words), so the arrays themselves must be (XLA's and cudaMalloc's buffers are).
  if (reinterpret_cast<uintptr_t>(p.values) % 16 != 0 ||
      (!kDense && reinterpret_cast<uintptr_t>(p.bitmaps) % 16 != 0))
    return "flashllm_spmm: values and index must be 16-byte aligned";
  // Keyed on BT (not T): the Tiled-CSL kernel of the same config has its own attribute.
  return launch_detail::launch_grid<T, BT, Tag>(&spmm_bitmap_kernel<BT, Tag>, BT::kSmemBytes, p, stream,
                                                "flashllm_spmm bitmap kernel launch");
}

}  // namespace flashllm
