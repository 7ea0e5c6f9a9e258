// CPU fused attention over a KV cache: y = softmax(q k + bias) v per (batch, head, query row), with the
// row's scores in per-thread scratch (S floats: L1/L2) instead of (B, H, T, S) buffers in memory, and a
// 16-bit cache read where it lies (no widened copy). Knows nothing of XLA.
#pragma once

#include <cstdint>
#include <limits>

#include "cpu/numeric.h"
#include "cpu/parallel.h"

namespace flashllm::cpu {

// The additive bias of a masked key: jax_flashllm.models.opt.mask_bias writes jnp.finfo(float32).min
// (a test checks the two agree). Finite, so a row with no visible key stays finite (a uniform average).
inline constexpr float kMaskedBias = -std::numeric_limits<float>::max();

struct AttentionProblem {
  const void* q;      // (b, t, h, d) q_dtype, already scaled by d ** -0.5
  const void* k;      // (b, h, d, s) kv_dtype: keys transposed, contiguous in s
  const void* v;      // (b, h, s, d) kv_dtype
  const float* bias;  // (b or 1, 1, t, s) float32, added to the scores
  void* y;            // (b, t, h, d) q_dtype
  int64_t b, t, h, d, s;
  bool bias_broadcast;  // bias has one batch row shared by every b
  Dtype q_dtype, kv_dtype;
};

// Computes y with float32 scores, sums and accumulation; rows are shared over `num_workers` via
// `schedule`. Semantics are those of jax_flashllm.attention.attention_reference, including a row whose
// keys are all masked (every score the same finite minimum: the uniform average of v), with one
// difference: in a row that sees some key, a block of slots (kAttnVecs vectors: 32, 64 or 128 slots by
// variant, aligned) whose biases are all <= kMaskedBias is skipped, not read, so a non-finite value stored
// there does not reach the output (the reference's weight for it is exp(-3.4e38) = 0, and 0 * inf = NaN).
// A masked slot in a block the row partly sees is read, as by the reference.
void attention(const AttentionProblem& p, int64_t num_workers, const Scheduler& schedule);

// Every instruction-set variant (isa_*.cc, cuda/cpu/attention_kernel.inc) implements one task: the
// query rows [first, first + count) of the flattened (b, h, t) grid.
namespace portable {
void attention_rows(const AttentionProblem& p, int64_t first, int64_t count);
}
#if defined(__x86_64__)
namespace avx2 {
void attention_rows(const AttentionProblem& p, int64_t first, int64_t count);
}
namespace avx512 {
void attention_rows(const AttentionProblem& p, int64_t first, int64_t count);
}
#endif

}  // namespace flashllm::cpu
