// The CPU kernel for x86-64 with AVX2 + FMA + F16C + POPCNT (Haswell / Zen 1 and later): 8 floats per vector.
// Only this file's functions are compiled for that target (pragma below, no -m flags), and spmm_cpu.cc
// calls them only after __builtin_cpu_supports says the CPU has it: one build runs on any x86-64.
#if defined(__x86_64__)  // the whole file: other targets build only the portable variant
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/attention_cpu.h"
#include "cpu/numeric.h"
#include "cpu/staged.h"
#include "flashllm/format.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,popcnt"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,popcnt")
#endif

namespace flashllm::cpu::avx2 {
namespace {

#include "cpu/x86_vec.inc"

#include "cpu/no_dense_bf16.inc"

#include "cpu/tile_source.inc"

void expand_bitmap_tile(const uint16_t* v, const uint16_t* v_end, const uint32_t* words, uint16_t* tile) {
  expand_bitmap_tile_rows(v, v_end, words, tile);
}

#include "cpu/tile_kernel.inc"

#include "cpu/attention_kernel.inc"

template <Dtype D>
void run(const Staged& s, int64_t mt, int64_t chunk, int64_t width) {
  if (width == 1) tile_task_gemv<Vec8, D>(s, mt, chunk);
  else if (width == 4) tile_task<Vec4, 1, D>(s, mt, chunk);
  else tile_task_width<Vec8, D>(s, mt, chunk, width);
}

}  // namespace

int64_t max_chunk() { return 32; }

int64_t padded_width(int64_t cols) { return cols == 1 ? 1 : cols <= 4 ? 4 : (cols + 7) / 8 * 8; }

void run_task(const Staged& s, int64_t mt, int64_t chunk) { dispatch_task(s, mt, chunk); }

void attention_rows(const AttentionProblem& p, int64_t first, int64_t count) {
  attention_rows_for<Vec8>(p, first, count);
}

}  // namespace flashllm::cpu::avx2

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // __x86_64__
