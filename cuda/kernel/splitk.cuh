// Split-K, fused: the K tiles of one output tile are split over gridDim.z blocks; each stores its
// fp32 partial in the workspace, and the last of them to arrive sums all partials in split order
// and writes y. One launch instead of SpMM + reduce (a second launch costs about as much as a
// decode-sized SpMM), and deterministic: the sum's order never depends on which block came last.
//
// Kernel-agnostic: any SpMM body (Tiled-CSL, bitmap) whose grid is (blocks along M, blocks along N,
// split_k) calls splitk_store_partial() for each of its output elements, then splitk_finish() with
// all threads of the block. The workspace layout is fixed here and mirrored by
// jax_flashllm/_tiling.workspace_size (checked through the emulation module).
#pragma once

#include <cstdint>

#include "flashllm/format.h"
#include "flashllm/numeric.h"
#include "params.cuh"
#include "ptx.cuh"

namespace flashllm {

// Workspace (float32 words): split_k slices of (n, m_pad) partials, then one uint32 arrival counter
// per output tile. The counters are sized for the narrowest block of any config (kTileM rows x
// kSplitKCounterBlockN columns), so one layout serves every config, including ones a later kernel adds
// (launcher.cuh asserts every config's block is at least this large).
constexpr int kSplitKCounterBlockN = 16;

FLASHLLM_HD int64_t splitk_partial_words(int64_t split_k, int64_t n, int64_t m_pad) {
  return split_k * n * m_pad;
}
FLASHLLM_HD int64_t splitk_counter_words(int64_t m_tiles, int64_t n) {
  return m_tiles * ((n + kSplitKCounterBlockN - 1) / kSplitKCounterBlockN);
}
// 0 when split_k == 1: no workspace at all.
FLASHLLM_HD int64_t splitk_workspace_words(int64_t split_k, int64_t n, int64_t m_tiles) {
  if (split_k <= 1) return 0;
  return splitk_partial_words(split_k, n, m_tiles * kTileM) + splitk_counter_words(m_tiles, n);
}

// This block's partial y[n, gm] (gm < p.m) of split blockIdx.z. Plain store: splitk_finish's fence
// publishes it.
__device__ __forceinline__ void splitk_store_partial(const SpmmParams& p, int n, int gm, float v) {
  ptx::stg_f32(p.workspace + (int64_t(blockIdx.z) * p.n + n) * p.m_pad + gm, v);
}

// Called by every thread of the block after its splitk_store_partial() calls, with the block's
// output tile [m0, m0 + kBlockM) x [n0, n0 + kBlockN). flag: one word of shared memory no thread
// is still reading. Counters must be zero when the launch starts (launch_impl.cuh memsets them on
// the stream, so a captured command buffer replays the memset too); the last block also resets its
// counter, leaving them zero for a launch that reuses the workspace.
template <int kBlockM, int kBlockN, int kThreads, class Tag>
__device__ __forceinline__ void splitk_finish(const SpmmParams& p, int m0, int n0,
                                              volatile uint32_t* flag) {
  // Release: each thread's partial stores happen before the block's arrival is counted.
  ptx::fence_acq_rel_gpu();
  __syncthreads();
  if (threadIdx.x == 0) {
    uint32_t* counter = p.splitk_counters + (int64_t(blockIdx.y) * gridDim.x + blockIdx.x);
    const uint32_t arrived = ptx::atom_add_relaxed_gpu(counter, 1u) + 1u;
    const bool last = arrived == uint32_t(p.split_k);
    if (last) ptx::st_relaxed_gpu_u32(counter, 0u);
    // Acquire: the other splits' partials (released before their increments) are visible below.
    ptx::fence_acq_rel_gpu();
    *flag = last ? 1u : 0u;
  }
  __syncthreads();
  if (*flag == 0u) return;  // block-uniform
  const int rows = (p.n - n0 < kBlockN) ? p.n - n0 : kBlockN;
  const int cols = (p.m - m0 < kBlockM) ? p.m - m0 : kBlockM;
  const int64_t split_stride = int64_t(p.n) * p.m_pad;
  // Consecutive threads take consecutive m: each split's loads are coalesced rows.
  for (int idx = int(threadIdx.x); idx < rows * cols; idx += kThreads) {
    const int n = n0 + idx / cols, gm = m0 + idx % cols;
    const float* src = p.workspace + int64_t(n) * p.m_pad + gm;
    float sum = 0.f;
    for (int s = 0; s < p.split_k; ++s) sum += ptx::ldcg_f32(src + s * split_stride);
    p.y[int64_t(n) * p.m + gm] = from_float<Tag>(sum);
  }
}

}  // namespace flashllm
