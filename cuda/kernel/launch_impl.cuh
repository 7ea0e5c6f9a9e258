// Definitions of the launch templates declared in launcher.cuh. Included by the per-instantiation
// .cu files (cuda/kernel/inst/) and by the host emulation entry.
#pragma once

#include <atomic>
#include <cstring>
#include <string>

#include "launcher.cuh"
#include "spmm_kernel.cuh"
#include "splitk.cuh"

namespace flashllm {

namespace launch_detail {

#if !defined(FLASHLLM_EMU)
inline std::string cuda_error(const char* what, cudaError_t e) {
  return std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
}

// Opting in to > 48 KiB of dynamic shared memory is a per-device function attribute: set it once
// per (instantiation, device) — a host-side driver call, no stream work, so it is legal during
// graph capture too. Templated on the instantiation so each kernel has its own "done" mask (all
// spmm_kernel instantiations share one function-pointer type).
template <class T, class Tag, class KernelPtr>
std::string ensure_smem_attribute(KernelPtr kernel, int smem_bytes) {
  static std::atomic<uint64_t> done_mask{0};
  if (smem_bytes <= 48 * 1024) return {};
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return cuda_error("cudaGetDevice", e);
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (done_mask.load(std::memory_order_relaxed) & bit)) return {};
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  if (e != cudaSuccess) return cuda_error("cudaFuncSetAttribute(MaxDynamicSharedMemorySize)", e);
  done_mask.fetch_or(bit, std::memory_order_relaxed);
  return {};
}

// The error of this call itself (the runtime's return value), never cudaGetLastError's.
inline std::string check(cudaError_t e, const char* what) {
  return e == cudaSuccess ? std::string() : cuda_error(what, e);
}

// Split-K arrival counters start at zero: a memset on the launch's stream, so XLA's command
// buffers (stream capture) record it as a memset node in front of the kernel.
inline std::string zero_counters(const SpmmParams& p, int64_t words, StreamHandle stream) {
  return check(cudaMemsetAsync(p.splitk_counters, 0, size_t(words) * 4, stream),
               "cudaMemsetAsync(split-K counters)");
}
#else
inline std::string check(cudaError_t, const char*) { return {}; }
inline std::string zero_counters(const SpmmParams& p, int64_t words, StreamHandle) {
  std::memset(p.splitk_counters, 0, size_t(words) * 4);
  return {};
}
#endif

}  // namespace launch_detail

namespace launch_detail {

// The launch every kernel family shares: grid over T's block tile, launch limits, split-K counters,
// the shared-memory opt-in (keyed on Key, so each family's kernel of a config gets its own attribute).
template <class T, class Key, class Tag, class KernelPtr>
std::string launch_grid(KernelPtr kernel, int smem_bytes, const SpmmParams& p, StreamHandle stream,
                        const char* what) {
  static_assert(T::kBlockM >= kTileM && T::kBlockN >= kSplitKCounterBlockN,
                "splitk.cuh sizes the counters for blocks of at least kTileM x kSplitKCounterBlockN");
  const int64_t blocks_m = (int64_t(p.m) + T::kBlockM - 1) / T::kBlockM;
  const int64_t blocks_n = (int64_t(p.n) + T::kBlockN - 1) / T::kBlockN;
  if (blocks_n > 65535) return "flashllm_spmm: N too large for one launch (grid.y > 65535)";
  if (p.split_k > 65535) return "flashllm_spmm: split_k > 65535";
  if (p.split_k > 1 && (p.workspace == nullptr || p.splitk_counters == nullptr))
    return "flashllm_spmm: split_k > 1 needs a workspace";
  (void)stream;
#if !defined(FLASHLLM_EMU)
  std::string err = ensure_smem_attribute<Key, Tag>(kernel, smem_bytes);
  if (!err.empty()) return err;
#endif
  if (p.split_k > 1) {
    std::string zerr = zero_counters(p, splitk_counter_words(p.m_tiles, p.n), stream);
    if (!zerr.empty()) return zerr;
  }
  const dim3 grid(unsigned(blocks_m), unsigned(blocks_n), unsigned(p.split_k));
  return check(FLASHLLM_LAUNCH(kernel, grid, dim3(T::kThreads), smem_bytes, stream, p), what);
}

}  // namespace launch_detail

template <class T, class Tag>
std::string launch_spmm_config(const SpmmParams& p, StreamHandle stream) {
  return launch_detail::launch_grid<T, T, Tag>(&spmm_kernel<T, Tag>, T::kSmemBytes, p, stream,
                                               "flashllm_spmm kernel launch");
}

}  // namespace flashllm
