// Second kernel of a split-K launch: y[n, m] = dtype(sum_s workspace[s, n, m]). The partials stay
// fp32 until this single rounding (the reference rounds each partial to fp16), and the fixed
// summation order keeps results deterministic.
#pragma once

#include "flashllm/numeric.h"
#include "params.cuh"
#include "ptx.cuh"

namespace flashllm {

constexpr int kReduceThreads = 128;
constexpr int kReduceItemsPerThread = 4;  // grid-stride items per thread per pass
constexpr int kReduceMaxBlocks = 2048;

template <class Tag>
__global__ void __launch_bounds__(kReduceThreads) splitk_reduce_kernel(const SpmmParams p) {
  const int64_t total = int64_t(p.n) * p.m;
  const int64_t split_stride = int64_t(p.n) * p.m_pad;
  const int64_t stride = int64_t(gridDim.x) * kReduceThreads;
  for (int64_t idx = int64_t(blockIdx.x) * kReduceThreads + threadIdx.x; idx < total;
       idx += stride) {
    const int64_t n = idx / p.m, m = idx % p.m;
    const float* src = p.workspace + n * p.m_pad + m;
    float sum = 0.f;
    for (int s = 0; s < p.split_k; ++s) sum += src[s * split_stride];
    p.y[idx] = from_float<Tag>(sum);
  }
}

// Blocks for the reduce: enough for every item at kReduceItemsPerThread, capped (grid-stride).
inline unsigned splitk_reduce_blocks(const SpmmParams& p) {
  const int64_t total = int64_t(p.n) * p.m;
  const int64_t per_block = int64_t(kReduceThreads) * kReduceItemsPerThread;
  int64_t blocks = (total + per_block - 1) / per_block;
  if (blocks < 1) blocks = 1;
  if (blocks > kReduceMaxBlocks) blocks = kReduceMaxBlocks;
  return unsigned(blocks);
}

}  // namespace flashllm
