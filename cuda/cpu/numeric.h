// The CPU kernel's view of the 16-bit conversions: the dtype as a runtime/template enum over the one
// implementation the CUDA kernel and the emulation use (flashllm/numeric.h), so every backend rounds
// the same way.
#pragma once

#include <cstdint>

#include "flashllm/numeric.h"

namespace flashllm::cpu {

// kFloat32 only for the attention kernel's q and KV cache; the sparse matmul takes 16-bit types.
enum class Dtype { kFloat16, kBFloat16, kFloat32 };

inline float bits_to_float(uint32_t u) { return flashllm::bits_float(u); }

inline float bf16_to_float(uint16_t h) { return flashllm::to_float(h, Bf16{}); }
inline float f16_to_float(uint16_t h) { return flashllm::to_float(h, Fp16{}); }
inline uint16_t float_to_bf16(float f) { return flashllm::from_float(f, Bf16{}); }
inline uint16_t float_to_f16(float f) { return flashllm::from_float(f, Fp16{}); }

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
