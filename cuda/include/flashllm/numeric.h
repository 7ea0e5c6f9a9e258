// 16-bit float <-> float32 conversions by plain bit manipulation (round-to-nearest-even), so the
// device and the host emulation produce bit-identical results. Device code keeps 16-bit values as
// raw uint16_t bits; the dtype is a tag type (Fp16 / Bf16) chosen at compile time.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FLASHLLM_NUM_HD __host__ __device__ __forceinline__
#else
#define FLASHLLM_NUM_HD inline
#endif

namespace flashllm {

// Tag types: they select mma's input type and the epilogue's rounding. No storage, no conversions
// through __half / __nv_bfloat16 objects (the host emulation has none).
struct Fp16 {
  static constexpr const char* kName = "float16";
};
struct Bf16 {
  static constexpr const char* kName = "bfloat16";
};

FLASHLLM_NUM_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

FLASHLLM_NUM_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

FLASHLLM_NUM_HD float to_float(uint16_t bits, Bf16) { return bits_float(uint32_t(bits) << 16); }

FLASHLLM_NUM_HD uint16_t from_float(float f, Bf16) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t(((u >> 16) & 0x8000u) | 0x7fc0u);  // NaN
  const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);  // RNE; overflow carries into inf
  return uint16_t(rounded >> 16);
}

FLASHLLM_NUM_HD float to_float(uint16_t bits, Fp16) {
  const uint32_t sign = uint32_t(bits & 0x8000u) << 16;
  const uint32_t exp = (bits >> 10) & 0x1fu;
  uint32_t mant = bits & 0x3ffu;
  if (exp == 0x1fu) return bits_float(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  if (exp != 0) return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return bits_float(sign);
  // Subnormal half: normalise into a float32 normal.
  int e = 113;
  while ((mant & 0x400u) == 0) {
    mant <<= 1;
    --e;
  }
  return bits_float(sign | (uint32_t(e) << 23) | ((mant & 0x3ffu) << 13));
}

FLASHLLM_NUM_HD uint16_t from_float(float f, Fp16) {
  const uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u);   // NaN (quiet)
  if (a >= 0x47800000u) return uint16_t(sign | 0x7c00u);  // >= 65536 (or inf): inf
  if (a >= 0x38800000u) {                                 // normal half range (>= 2^-14)
    uint32_t h = (a >> 13) - (112u << 10);
    const uint32_t rem = a & 0x1fffu;
    h += (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ? 1u : 0u;  // may round up to inf
    return uint16_t(sign | h);
  }
  // Subnormal half: value = m * 2^-24 with m = mantissa >> shift, rounded to nearest even.
  const int shift = 126 - int(a >> 23);
  if (shift > 24) return uint16_t(sign);  // below half of the smallest subnormal
  const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
  uint32_t m = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  m += (rem > half || (rem == half && (m & 1u))) ? 1u : 0u;
  return uint16_t(sign | m);
}

template <class Tag>
FLASHLLM_NUM_HD float to_float(uint16_t bits) {
  return to_float(bits, Tag{});
}

template <class Tag>
FLASHLLM_NUM_HD uint16_t from_float(float f) {
  return from_float(f, Tag{});
}

}  // namespace flashllm
