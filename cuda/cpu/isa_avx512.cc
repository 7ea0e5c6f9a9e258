// The CPU kernel for x86-64 with AVX-512 F/VL + FMA + F16C (Skylake-X, Ice Lake, Zen 4 and later): 16 floats per vector.
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
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx2,fma,f16c,popcnt"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma,f16c,popcnt")
#endif

namespace flashllm::cpu::avx512 {
namespace {

#include "cpu/x86_vec.inc"

struct Vec16 {
  using T = __m512;
  static constexpr int kWidth = 16;
  static constexpr bool kDotBf16 = true;
  static bool dot_bf16_available();
  static void dot_bf16_tile(const uint16_t* tile, const float* xs, float* acc);
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

// tile_task_gemv's row loop for bf16 with AVX512_BF16 (Zen 4, Cooper Lake, Sapphire Rapids): one
// vdpbf16ps takes 32 products straight from the bf16 tile, no widening. Its products are exact and each
// sum is rounded to nearest like an FMA's; only fp32 denormal partial sums (< 1.2e-38) flush to zero.
// Measured (Zen 4, one core, 4096 x 4096 bf16 from DRAM, 80 %): 0.74 vs 0.93 ns per stored entry.
// A function of its own (one call per tile), as it needs one more target feature than this file.
__attribute__((target("avx512bf16,avx512f,avx512vl")))
void dot_bf16_tile_impl(const uint16_t* tile, const float* xs, float* acc) {
  __m512i x16[kSwizzleRows][2];  // x per row phase as bf16 (exact: x was bf16 before staging)
  for (int phase = 0; phase < kSwizzleRows; ++phase)
    for (int h = 0; h < 2; ++h) {
      const __m512i lo = _mm512_srli_epi32(_mm512_castps_si512(_mm512_loadu_ps(xs + phase * kTileK + 32 * h)), 16);
      const __m512i hi = _mm512_srli_epi32(_mm512_castps_si512(_mm512_loadu_ps(xs + phase * kTileK + 32 * h + 16)), 16);
      x16[phase][h] = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), _mm512_packus_epi32(lo, hi));
    }
  for (int r = 0; r < kTileM; ++r) {
    const __m512i* tr = reinterpret_cast<const __m512i*>(tile + r * kTileK);
    __m512 a = _mm512_loadu_ps(acc + r * 16);
    a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_loadu_si512(tr), (__m512bh)x16[r % kSwizzleRows][0]);
    a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_loadu_si512(tr + 1), (__m512bh)x16[r % kSwizzleRows][1]);
    _mm512_storeu_ps(acc + r * 16, a);
  }
}

bool Vec16::dot_bf16_available() {
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
}

void Vec16::dot_bf16_tile(const uint16_t* tile, const float* xs, float* acc) { dot_bf16_tile_impl(tile, xs, acc); }

// add_tile_dense's multiply for bf16 with AVX512_BF16: acc (kTileM, NC) += tile (kTileM, kTileK, bf16,
// swizzled) @ x^T (kTileK, NC fp32 holding bf16 values, paired to bf16 in registers). R rows x G vectors of acc stay in
// registers; each vdpbf16ps takes one broadcast pair of W (logical columns 2cp, 2cp + 1; the swizzle
// moves whole 8-column chunks, so a pair stays together) times 16 (or 8) columns' pairs of x.
struct Zmm {
  using T = __m512;
  using I = __m512i;
  static constexpr int kWidth = 16;
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  // bf16 pairs (x[c][n] low, x[c + 1][n] high) of two fp32 rows that hold bf16 values (exact).
  static I pairs(const float* lo, const float* hi) {
    return _mm512_ternarylogic_epi32(_mm512_srli_epi32(_mm512_castps_si512(_mm512_loadu_ps(lo)), 16),
                                     _mm512_castps_si512(_mm512_loadu_ps(hi)), _mm512_set1_epi32(int(0xFFFF0000u)), 0xD8);
  }
  static I bcast(uint32_t w) { return _mm512_set1_epi32(int(w)); }
  __attribute__((target("avx512bf16,avx512f,avx512vl"))) static T dp(T a, I w, I x) {
    return _mm512_dpbf16_ps(a, (__m512bh)w, (__m512bh)x);
  }
};
struct Ymm {
  using T = __m256;
  using I = __m256i;
  static constexpr int kWidth = 8;
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static I pairs(const float* lo, const float* hi) {
    return _mm256_ternarylogic_epi32(_mm256_srli_epi32(_mm256_castps_si256(_mm256_loadu_ps(lo)), 16),
                                     _mm256_castps_si256(_mm256_loadu_ps(hi)), _mm256_set1_epi32(int(0xFFFF0000u)), 0xD8);
  }
  static I bcast(uint32_t w) { return _mm256_set1_epi32(int(w)); }
  __attribute__((target("avx512bf16,avx512f,avx512vl"))) static T dp(T a, I w, I x) {
    return _mm256_dpbf16_ps(a, (__m256bh)w, (__m256bh)x);
  }
};

template <class Z, int R, int G, int NC>
__attribute__((target("avx512bf16,avx512f,avx512vl,avx2,fma,f16c")))
void dense_bf16_block(const uint32_t* t32, const float* xk, float* acc) {
  static_assert(R % kSwizzleRows == 0, "a block starts at row phase 0");
  typename Z::T a[R][G];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < G; ++j) a[i][j] = Z::load(acc + i * NC + j * Z::kWidth);
  for (int q = 0; q < kChunksPerRow; ++q) {      // logical 8-column chunk
    for (int s = 0; s < kChunkElems / 2; ++s) {  // pair inside it
      const int cp = q * (kChunkElems / 2) + s;
      typename Z::I xv[G];
      for (int j = 0; j < G; ++j) xv[j] = Z::pairs(xk + 2 * cp * NC + j * Z::kWidth, xk + (2 * cp + 1) * NC + j * Z::kWidth);
      for (int i = 0; i < R; ++i) {
        const int pos = ((q ^ (i % kSwizzleRows)) * (kChunkElems / 2)) + s;  // stored pair in row i
        const typename Z::I w = Z::bcast(t32[i * (kTileK / 2) + pos]);
        for (int j = 0; j < G; ++j) a[i][j] = Z::dp(a[i][j], w, xv[j]);
      }
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < G; ++j) Z::store(acc + i * NC + j * Z::kWidth, a[i][j]);
}

template <int NC>
bool dense_bf16_available() {
  return NC % 8 == 0 && Vec16::dot_bf16_available();
}

#include "cpu/amx_tile.inc"

template <int NC>
void dense_bf16_tile(const uint16_t* tile, const float* xk, float* acc) {
  if constexpr (NC % kAmxCols == 0) {
    if (active_isa() == Isa::kAmx) return amx_dense_bf16_tile<NC>(tile, xk, acc);
  }
  const uint32_t* t32 = reinterpret_cast<const uint32_t*>(tile);
  if constexpr (NC == 8) {
    for (int r0 = 0; r0 < kTileM; r0 += 16)
      dense_bf16_block<Ymm, 16, 1, NC>(t32 + r0 * (kTileK / 2), xk, acc + r0 * NC);
  } else if constexpr (NC % 16 == 0) {
    constexpr int R = NC == 16 ? 16 : 8;
    for (int r0 = 0; r0 < kTileM; r0 += R)
      for (int j0 = 0; j0 < NC / 16; j0 += 2) {
        if (j0 + 2 <= NC / 16) dense_bf16_block<Zmm, R, 2, NC>(t32 + r0 * (kTileK / 2), xk + j0 * 16, acc + r0 * NC + j0 * 16);
        else dense_bf16_block<Zmm, R, 1, NC>(t32 + r0 * (kTileK / 2), xk + j0 * 16, acc + r0 * NC + j0 * 16);
      }
  }
}

#include "cpu/tile_source.inc"

// expand_bitmap_tile with AVX-512 VBMI2 (Ice Lake, Zen 4, Sapphire Rapids): one vpexpandw places the
// next popcount(word) values into the lanes of the word's set bits, 32 lanes = 4 block rows at once,
// reading only the values it places (a masked load: no read past the tile's values).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi2,popcnt")))
void expand_bitmap_tile_vbmi2(const uint16_t* v, const uint32_t* words, uint16_t* tile) {
  const uint32_t* bits = words + kBitmapHeaderWords;
  for (int b = 0; b < kBlocksPerTile; ++b) {
    for (int h = 0; h < 2; ++h) {
      const uint32_t word = bits[2 * b + h];
      const int taken = __builtin_popcount(word);
      // Register form after a masked load: Zen 4 runs vpexpandw with a memory source as microcode
      // (measured: the whole bitmap kernel ran at 3.6 GB/s with it).
      const __m512i packed = _mm512_maskz_loadu_epi16(__mmask32((uint64_t(1) << taken) - 1), v);
      const __m512i rows = _mm512_maskz_expand_epi16(__mmask32(word), packed);
      v += taken;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(block_row_out(tile, b, 4 * h + 0)), _mm512_extracti32x4_epi32(rows, 0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(block_row_out(tile, b, 4 * h + 1)), _mm512_extracti32x4_epi32(rows, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(block_row_out(tile, b, 4 * h + 2)), _mm512_extracti32x4_epi32(rows, 2));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(block_row_out(tile, b, 4 * h + 3)), _mm512_extracti32x4_epi32(rows, 3));
    }
  }
}

bool has_vbmi2() {
  static const bool has = __builtin_cpu_supports("avx512vbmi2") && __builtin_cpu_supports("avx512bw");
  return has;
}

void expand_bitmap_tile(const uint16_t* v, const uint16_t* v_end, const uint32_t* words, uint16_t* tile) {
  if (has_vbmi2()) expand_bitmap_tile_vbmi2(v, words, tile);
  else expand_bitmap_tile_rows(v, v_end, words, tile);
}

#include "cpu/block_gemv_avx512.inc"

#include "cpu/tile_kernel.inc"

#include "cpu/attention_kernel.inc"

template <Dtype D>
void run(const Staged& s, int64_t mt, int64_t chunk, int64_t width) {
  if (width <= kBlockGemvMaxCols && D == Dtype::kBFloat16 && has_block_gemv(s.p->format)) {
    if (s.p->format == kFormatDense) block_gemv_bf16<false>(s, mt, chunk, width);
    else block_gemv_bf16<true>(s, mt, chunk, width);
  } else if (width == 1) tile_task_gemv<Vec16, D>(s, mt, chunk);
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

void attention_rows(const AttentionProblem& p, int64_t first, int64_t count) {
  attention_rows_for<Vec16>(p, first, count);
}

}  // namespace flashllm::cpu::avx512

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // __x86_64__
