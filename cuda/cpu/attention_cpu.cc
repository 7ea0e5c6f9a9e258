// Fused attention driver: the instruction-set choice (the sparse kernel's, spmm_cpu.h) and the split of
// query rows over the pool. The per-row work lives in attention_kernel.inc, compiled per instruction set.
#include "cpu/attention_cpu.h"

#include <algorithm>

#include "cpu/spmm_cpu.h"

namespace flashllm::cpu {

void attention(const AttentionProblem& p, int64_t num_workers, const Scheduler& schedule) {
  const int64_t rows = p.b * p.h * p.t;
  if (rows == 0 || p.d == 0) return;
  auto run = portable::attention_rows;
#if defined(__x86_64__)
  // amx has no attention code of its own: its tiles would multiply a single query row as padding.
  const Isa isa = active_isa();
  if (isa == Isa::kAvx512 || isa == Isa::kAmx) run = avx512::attention_rows;
  else if (isa == Isa::kAvx2) run = avx2::attention_rows;
#endif
  // A helper only pays off with enough work to amortize waking it: one per 2^17 cache elements read (k and
  // v, 2 * d * s a row; 256 KB of bf16, ~10 us of streaming for one core). Not tuned: opt-125m decode
  // stays on the calling thread at 64 slots and takes a helper from 128, and both beat XLA's attention.
  constexpr int64_t kElementsPerHelper = int64_t(1) << 17;
  const int64_t work = rows * 2 * p.d * std::max<int64_t>(p.s, 1);
  const int64_t workers = std::clamp<int64_t>(work / kElementsPerHelper, 1, std::max<int64_t>(num_workers, 1));
  // Tasks of consecutive rows: a (b, h)'s query rows share its keys and values in cache.
  const int64_t per_task = std::max<int64_t>(1, rows / (workers * 4));
  const int64_t tasks = (rows + per_task - 1) / per_task;
  parallel_for(tasks, workers, schedule, [&](int64_t task) {
    const int64_t first = task * per_task;
    run(p, first, std::min(per_task, rows - first));
  });
}

}  // namespace flashllm::cpu
