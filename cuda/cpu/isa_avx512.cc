// The CPU kernel for x86-64 with AVX-512 F/VL + FMA + F16C (Skylake-X, Ice Lake, Zen 4 and later): 16 floats per vector.
// Only this file's functions are compiled for that target (pragma below, no -m flags), and spmm_cpu.cc
// calls them only after __builtin_cpu_supports says the CPU has it: one build runs on any x86-64.
#if defined(__x86_64__)  // the whole file: other targets build only the portable variant
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/numeric.h"
#include "cpu/staged.h"
#include "flashllm/format.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma,f16c")
#endif

namespace flashllm::cpu::avx512 {
namespace {

#include "cpu/x86_vec.inc"

struct Vec16 {
  using T = __m512;
  static constexpr int kWidth = 16;
  static T zero() { return _mm512_setzero_ps(); }
  static T set1(float f) { return _mm512_set1_ps(f); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T fma_if(bool take, T a, T b, T c) { return _mm512_mask3_fmadd_ps(a, b, c, __mmask16(-int(take))); }
  template <Dtype D>
  static T load_half(const uint16_t* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    if constexpr (D == Dtype::kBFloat16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else return _mm512_cvtph_ps(h);
  }
};

#include "cpu/tile_kernel.inc"

template <Dtype D>
void run(const Staged& s, int64_t mt, int64_t chunk, int64_t width) {
  if (width == 1) tile_task_gemv<Vec16, D>(s, mt, chunk);
  else if (width == 4) tile_task<Vec4, 1, D>(s, mt, chunk);
  else if (width == 8) tile_task<Vec8, 1, D>(s, mt, chunk);
  else tile_task_width<Vec16, D>(s, mt, chunk, width);
}

}  // namespace

int64_t max_chunk() { return 64; }

int64_t padded_width(int64_t cols) {
  return cols == 1 ? 1 : cols <= 4 ? 4 : cols <= 8 ? 8 : (cols + 15) / 16 * 16;
}

void run_task(const Staged& s, int64_t mt, int64_t chunk) { dispatch_task(s, mt, chunk); }

}  // namespace flashllm::cpu::avx512

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // __x86_64__
