// The CPU kernel for any target (x86-64 baseline SSE2, arm64 NEON, ...): GCC/Clang vector extensions,
// 4 floats wide, which the compiler maps onto whatever SIMD the baseline target has.
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

namespace flashllm::cpu::portable {
namespace {

void halves_to_floats(const uint16_t* h, float* f, int n) {
  for (int i = 0; i < n; ++i) f[i] = f16_to_float(h[i]);
}

struct Vec4 {
  using T = float __attribute__((vector_size(16)));
  static constexpr int kWidth = 4;
  static constexpr bool kDotBf16 = false;
  static T zero() { return T{0.0f, 0.0f, 0.0f, 0.0f}; }
  static T set1(float f) { return T{f, f, f, f}; }
  static T load(const float* p) {
    T v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static void store(float* p, T v) { std::memcpy(p, &v, sizeof(v)); }
  static T add(T a, T b) { return a + b; }
  static T fma(T a, T b, T c) { return a * b + c; }
  static T fma_if(bool take, T a, T b, T c) {
    using I = int32_t __attribute__((vector_size(16)));
    const int32_t m = -int32_t(take);
    const I mask{m, m, m, m};
    return reinterpret_cast<T>((reinterpret_cast<I>(a * b + c) & mask) | (reinterpret_cast<I>(c) & ~mask));
  }
  template <Dtype D>
  static T load_half(const uint16_t* p) {
    T v;
    for (int i = 0; i < kWidth; ++i) v[i] = D == Dtype::kBFloat16 ? bf16_to_float(p[i]) : f16_to_float(p[i]);
    return v;
  }
};

template <int SLOTS>
int row_prefix(const uint16_t* rows, int r) {
  int n = 0;
  while (n < SLOTS && rows[n] == r) ++n;
  return n;
}

int expand_row8(const uint16_t* v, const uint16_t*, unsigned bits, uint16_t* out) {
  int taken = 0;
  for (int j = 0; j < 8; ++j) {
    const bool on = (bits >> j) & 1u;
    out[j] = on ? v[taken] : uint16_t(0);
    taken += on;
  }
  return taken;
}

#include "cpu/no_dense_bf16.inc"

#include "cpu/tile_source.inc"

void expand_bitmap_tile(const uint16_t* v, const uint16_t* v_end, const uint32_t* words, uint16_t* tile) {
  expand_bitmap_tile_rows(v, v_end, words, tile);
}

#include "cpu/tile_kernel.inc"

#include "cpu/attention_kernel.inc"

template <Dtype D>
void run(const Staged& s, int64_t mt, int64_t chunk, int64_t width) {
  if (width == 1) tile_task_gemv<Vec4, D>(s, mt, chunk);
  else tile_task_width<Vec4, D>(s, mt, chunk, width);
}

}  // namespace

int64_t max_chunk() { return 16; }

int64_t padded_width(int64_t cols) { return cols == 1 ? 1 : (cols + 3) / 4 * 4; }

void run_task(const Staged& s, int64_t mt, int64_t chunk) { dispatch_task(s, mt, chunk); }

void attention_rows(const AttentionProblem& p, int64_t first, int64_t count) {
  attention_rows_for<Vec4>(p, first, count);
}

}  // namespace flashllm::cpu::portable
