// Definitions of the launch templates declared in launcher.cuh. Included by the per-instantiation
// .cu files (cuda/kernel/inst/), by launcher.cu (split-K reduce) and by the host emulation entry.
#pragma once

#include <atomic>
#include <string>

#include "launcher.cuh"
#include "spmm_kernel.cuh"
#include "splitk_reduce.cuh"

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

inline std::string check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : cuda_error(what, e);
}
#else
inline std::string check_launch(const char*) { return {}; }
#endif

}  // namespace launch_detail

template <class Tag>
std::string launch_splitk_reduce(const SpmmParams& p, StreamHandle stream) {
  auto* kernel = &splitk_reduce_kernel<Tag>;
  (void)stream;
  FLASHLLM_LAUNCH(kernel, dim3(splitk_reduce_blocks(p)), dim3(kReduceThreads), 0, stream, p);
  return launch_detail::check_launch("flashllm split-K reduce launch");
}

#if !defined(FLASHLLM_EMU)
// Compiled once, in launcher.cu, not in every SpMM instantiation file.
extern template std::string launch_splitk_reduce<Fp16>(const SpmmParams&, StreamHandle);
extern template std::string launch_splitk_reduce<Bf16>(const SpmmParams&, StreamHandle);
#endif

template <class T, class Tag>
std::string launch_spmm_config(const SpmmParams& p, StreamHandle stream) {
  const int64_t blocks_m = (int64_t(p.m) + T::kBlockM - 1) / T::kBlockM;
  const int64_t blocks_n = (int64_t(p.n) + T::kBlockN - 1) / T::kBlockN;
  if (blocks_n > 65535) return "flashllm_spmm: N too large for one launch (grid.y > 65535)";
  if (p.split_k > 65535) return "flashllm_spmm: split_k > 65535";
  if (p.split_k > 1 && p.workspace == nullptr) return "flashllm_spmm: split_k > 1 needs a workspace";
  auto* kernel = &spmm_kernel<T, Tag>;
  (void)stream;
#if !defined(FLASHLLM_EMU)
  std::string err = launch_detail::ensure_smem_attribute<T, Tag>(kernel, T::kSmemBytes);
  if (!err.empty()) return err;
#endif
  const dim3 grid(unsigned(blocks_m), unsigned(blocks_n), unsigned(p.split_k));
  FLASHLLM_LAUNCH(kernel, grid, dim3(T::kThreads), T::kSmemBytes, stream, p);
  std::string launch_err = launch_detail::check_launch("flashllm_spmm kernel launch");
  if (!launch_err.empty() || p.split_k == 1) return launch_err;
  return launch_splitk_reduce<Tag>(p, stream);
}

}  // namespace flashllm
