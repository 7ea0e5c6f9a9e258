// 16-bit float <-> float32 conversions for the CPU kernel, portable (no F16C requirement) and exact:
// round-to-nearest-even like the hardware, NaN stays NaN.
#pragma once

#include <cstdint>
#include <cstring>

namespace flashllm::cpu {

enum class Dtype { kFloat16, kBFloat16 };

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bf16_to_float(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7FFFu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

inline float f16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t man = h & 0x3FFu;
  if (exp == 0x1F) return bits_to_float(sign | 0x7F800000u | (man << 13));
  if (exp != 0) return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
  // Subnormal (or zero): value = man * 2^-24, exact in float32.
  const float mag = float(man) * 5.9604644775390625e-08f;
  return sign ? -mag : mag;
}

inline uint16_t float_to_f16(float f) {
  const uint32_t u = float_to_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return uint16_t(sign | 0x7E00u);  // NaN
  if (a >= 0x477FF000u) return uint16_t(sign | 0x7C00u);  // rounds to >= 65520: Inf
  if (a < 0x38800000u) {
    // Subnormal in fp16: scaled so the fp16 ulp (2^-24) becomes 1.0 (exact), then rounded to nearest
    // even by the FPU; a carry into 0x400 is exactly the smallest normal.
    const float v = bits_to_float(a) * 16777216.0f;  // times 2^24
    const uint32_t r = uint32_t(__builtin_nearbyintf(v));
    return uint16_t(sign | r);
  }
  // Normal: rebias exponent, round mantissa from 23 to 10 bits (RNE).
  uint32_t m = a - 0x38000000u;  // exponent bias 127 -> 15
  m += 0xFFFu + ((m >> 13) & 1u);
  return uint16_t(sign | (m >> 13));
}

template <Dtype D>
inline float to_float(uint16_t h) {
  if constexpr (D == Dtype::kBFloat16) return bf16_to_float(h);
  else return f16_to_float(h);
}

template <Dtype D>
inline uint16_t from_float(float f) {
  if constexpr (D == Dtype::kBFloat16) return float_to_bf16(f);
  else return float_to_f16(f);
}

}  // namespace flashllm::cpu
