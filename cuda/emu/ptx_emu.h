// Host implementations of the PTX wrappers of cuda/kernel/ptx.cuh (same names and signatures, see
// /work/ptx_contract.md). ptx.cuh includes this file instead of its inline PTX when FLASHLLM_EMU is
// defined. Warp-collective wrappers rendezvous all 32 lanes (emu::detail::warp_collective) and the
// last lane executes the instruction for the warp with the PTX ISA's fragment layouts; the
// instruction semantics live in ptx_emu.cc.
#pragma once

#include <cstdint>

#include "emu.h"

namespace flashllm {
namespace emu {
namespace ptx_impl {

enum class MmaType { kF16, kBF16 };

void ldmatrix(uint32_t* regs, int num, bool trans, const void* smem_row);
void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b, const float* c, MmaType type);
void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes);
void cp_async_commit();
void cp_async_wait(int n);
uint4 ldg_128(const void* gmem);
uint32_t ldg_32(const void* gmem);
void sts_16(void* smem, uint16_t v);
void sts_128(void* smem, uint4 v);
uint4 lds_128(const void* smem);
float shfl_xor(float v, int lane_mask);

constexpr bool same_name(const char* a, const char* b) {
  return *a == *b && (*a == '\0' || same_name(a + 1, b + 1));
}

// The kernel's dtype tags (cuda/kernel/numeric.cuh: Fp16 / Bf16) carry kName; the emulator decodes
// the 16-bit inputs itself (like the hardware) rather than through the kernel's conversions.
template <class Tag>
constexpr MmaType mma_type() {
  static_assert(same_name(Tag::kName, "float16") || same_name(Tag::kName, "bfloat16"),
                "mma_m16n8k16: Tag::kName must be \"float16\" or \"bfloat16\"");
  return same_name(Tag::kName, "bfloat16") ? MmaType::kBF16 : MmaType::kF16;
}

}  // namespace ptx_impl
}  // namespace emu

namespace ptx {

inline void ldmatrix_x1(uint32_t& r0, const void* smem_row) {
  emu::ptx_impl::ldmatrix(&r0, 1, false, smem_row);
}
inline void ldmatrix_x2(uint32_t (&r)[2], const void* smem_row) {
  emu::ptx_impl::ldmatrix(r, 2, false, smem_row);
}
inline void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  emu::ptx_impl::ldmatrix(r, 4, false, smem_row);
}
inline void ldmatrix_x1_trans(uint32_t& r0, const void* smem_row) {
  emu::ptx_impl::ldmatrix(&r0, 1, true, smem_row);
}
inline void ldmatrix_x2_trans(uint32_t (&r)[2], const void* smem_row) {
  emu::ptx_impl::ldmatrix(r, 2, true, smem_row);
}
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  emu::ptx_impl::ldmatrix(r, 4, true, smem_row);
}

template <class Tag>
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                         const float (&c)[4]) {
  emu::ptx_impl::mma_m16n8k16(d, a, b, c, emu::ptx_impl::mma_type<Tag>());
}

inline void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes) {
  emu::ptx_impl::cp_async_16(smem_dst, gmem_src, src_bytes);
}
inline void cp_async_commit() { emu::ptx_impl::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
  static_assert(N >= 0, "cp.async.wait_group needs N >= 0");
  emu::ptx_impl::cp_async_wait(N);
}

inline uint4 ldg_128(const void* gmem) { return emu::ptx_impl::ldg_128(gmem); }
inline uint32_t ldg_32(const void* gmem) { return emu::ptx_impl::ldg_32(gmem); }
inline void sts_16(void* smem, uint16_t v) { emu::ptx_impl::sts_16(smem, v); }
inline void sts_128(void* smem, uint4 v) { emu::ptx_impl::sts_128(smem, v); }
inline uint4 lds_128(const void* smem) { return emu::ptx_impl::lds_128(smem); }
inline float shfl_xor(float v, int lane_mask) { return emu::ptx_impl::shfl_xor(v, lane_mask); }

}  // namespace ptx
}  // namespace flashllm
