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
  // A helper pays off past ~40 us of work (as for the sparse kernel, spmm_cpu.cc): ~2 * d * s FMAs a row.
  constexpr int64_t kFmaPerHelper = int64_t(1) << 17;
  const int64_t work = rows * 2 * p.d * std::max<int64_t>(p.s, 1);
  const int64_t workers = std::clamp<int64_t>(work / kFmaPerHelper, 1, std::max<int64_t>(num_workers, 1));
  // Tasks of consecutive rows: a (b, h)'s query rows share its keys and values in cache.
  const int64_t per_task = std::max<int64_t>(1, rows / (workers * 4));
  const int64_t tasks = (rows + per_task - 1) / per_task;
  parallel_for(tasks, workers, schedule, [&](int64_t task) {
    const int64_t first = task * per_task;
    run(p, first, std::min(per_task, rows - first));
  });
}

}  // namespace flashllm::cpu
