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
  const int64_t blocks_m = (int64_t(p.m) + T::kBlockM - 1) / T::kBlockM;
  const int64_t blocks_n = (int64_t(p.n) + T::kBlockN - 1) / T::kBlockN;
  if (blocks_n > 65535) return "flashllm_spmm: N too large for one launch (grid.y > 65535)";
  if (p.split_k > 65535) return "flashllm_spmm: split_k > 65535";
  if (p.split_k > 1 && (p.workspace == nullptr || p.splitk_counters == nullptr))
    return "flashllm_spmm: split_k > 1 needs a workspace";
  // cp.async needs 16-byte aligned sources: tiles start on multiples of 8 values (and of 260
  // index words), so the arrays themselves must be (XLA's and cudaMalloc's buffers are).
  if (reinterpret_cast<uintptr_t>(p.values) % 16 != 0 ||
      (!kDense && reinterpret_cast<uintptr_t>(p.bitmaps) % 16 != 0))
    return "flashllm_spmm: values and index must be 16-byte aligned";
  auto* kernel = &spmm_bitmap_kernel<BT, Tag>;
  (void)stream;
#if !defined(FLASHLLM_EMU)
  // Keyed on BT (not T): the Tiled-CSL kernel of the same config has its own attribute.
  std::string err = launch_detail::ensure_smem_attribute<BT, Tag>(kernel, BT::kSmemBytes);
  if (!err.empty()) return err;
#endif
  if (p.split_k > 1) {
    std::string zerr = launch_detail::zero_counters(p, splitk_counter_words(p.m_tiles, p.n), stream);
    if (!zerr.empty()) return zerr;
  }
  const dim3 grid(unsigned(blocks_m), unsigned(blocks_n), unsigned(p.split_k));
  return launch_detail::check(
      FLASHLLM_LAUNCH(kernel, grid, dim3(T::kThreads), BT::kSmemBytes, stream, p),
      "flashllm_spmm bitmap kernel launch");
}

}  // namespace flashllm
