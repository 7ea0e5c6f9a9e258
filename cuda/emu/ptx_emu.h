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
using detail::CallSite;

void ldmatrix(uint32_t* regs, int num, bool trans, const void* smem_row, CallSite site);
void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b, const float* c, MmaType type,
                  CallSite site);
void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes, CallSite site);
void cp_async_commit();
void cp_async_wait(int n);
uint4 ldg_128(const void* gmem, CallSite site);
uint32_t ldg_32(const void* gmem, CallSite site);
void sts_16(void* smem, uint16_t v, CallSite site);
uint16_t lds_16(const void* smem, CallSite site);
void sts_32(void* smem, float v, CallSite site);
void sts_128(void* smem, uint4 v, CallSite site);
float lds_32(const void* smem, CallSite site);
uint4 lds_128(const void* smem, CallSite site);
float shfl_xor(float v, int lane_mask, CallSite site);

constexpr bool same_name(const char* a, const char* b) {
  return *a == *b && (*a == '\0' || same_name(a + 1, b + 1));
}

// The kernel's dtype tags (cuda/kernel/flashllm/numeric.h: Fp16 / Bf16) carry kName; the emulator decodes
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

// Every warp-collective wrapper (and cp_async_16) takes its caller's source location as defaulted
// trailing arguments (evaluated at the call site, invisible to device code), so the emulator can
// tell two call sites of the same instruction apart, report lanes of one warp that reach different
// ones, and name both sides of a shared-memory race. (Columns
// where the compiler has __builtin_COLUMN, g++ >= 13 and clang; two calls on one line are one site
// otherwise.)
#if defined(__has_builtin)
#if __has_builtin(__builtin_COLUMN)
#define FLASHLLM_EMU_SITE_COLUMN __builtin_COLUMN()
#endif
#endif
#ifndef FLASHLLM_EMU_SITE_COLUMN
#define FLASHLLM_EMU_SITE_COLUMN 0
#endif
#define FLASHLLM_EMU_SITE_ARGS \
  const char *site_file = __builtin_FILE(), int site_line = __builtin_LINE(), \
              int site_col = FLASHLLM_EMU_SITE_COLUMN
#define FLASHLLM_EMU_SITE ::flashllm::emu::detail::CallSite{site_file, site_line, site_col}

inline void ldmatrix_x1(uint32_t& r0, const void* smem_row, FLASHLLM_EMU_SITE_ARGS) {
  emu::ptx_impl::ldmatrix(&r0, 1, false, smem_row, FLASHLLM_EMU_SITE);
}
inline void ldmatrix_x2(uint32_t (&r)[2], const void* smem_row, FLASHLLM_EMU_SITE_ARGS) {
  emu::ptx_impl::ldmatrix(r, 2, false, smem_row, FLASHLLM_EMU_SITE);
}
inline void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row, FLASHLLM_EMU_SITE_ARGS) {
  emu::ptx_impl::ldmatrix(r, 4, false, smem_row, FLASHLLM_EMU_SITE);
}
inline void ldmatrix_x1_trans(uint32_t& r0, const void* smem_row, FLASHLLM_EMU_SITE_ARGS) {
  emu::ptx_impl::ldmatrix(&r0, 1, true, smem_row, FLASHLLM_EMU_SITE);
}
inline void ldmatrix_x2_trans(uint32_t (&r)[2], const void* smem_row, FLASHLLM_EMU_SITE_ARGS) {
  emu::ptx_impl::ldmatrix(r, 2, true, smem_row, FLASHLLM_EMU_SITE);
}
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row, FLASHLLM_EMU_SITE_ARGS) {
  emu::ptx_impl::ldmatrix(r, 4, true, smem_row, FLASHLLM_EMU_SITE);
}

template <class Tag>
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                         const float (&c)[4], FLASHLLM_EMU_SITE_ARGS) {
  emu::ptx_impl::mma_m16n8k16(d, a, b, c, emu::ptx_impl::mma_type<Tag>(), FLASHLLM_EMU_SITE);
}

inline void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes, FLASHLLM_EMU_SITE_ARGS) {
  emu::ptx_impl::cp_async_16(smem_dst, gmem_src, src_bytes, FLASHLLM_EMU_SITE);
}
inline void cp_async_commit() { emu::ptx_impl::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
  static_assert(N >= 0, "cp.async.wait_group needs N >= 0");
  emu::ptx_impl::cp_async_wait(N);
}

inline uint4 ldg_128(const void* gmem, FLASHLLM_EMU_SITE_ARGS) {
  return emu::ptx_impl::ldg_128(gmem, FLASHLLM_EMU_SITE);
}
inline uint32_t ldg_32(const void* gmem, FLASHLLM_EMU_SITE_ARGS) {
  return emu::ptx_impl::ldg_32(gmem, FLASHLLM_EMU_SITE);
}
// Two warp requests, as on the GPU (two ld.shared.u16 instructions).
inline void lds_16x2(const uint16_t* base, int index, uint32_t& va, uint32_t& vb, FLASHLLM_EMU_SITE_ARGS) {
  va = emu::ptx_impl::lds_16(base + index, FLASHLLM_EMU_SITE);
  ::flashllm::emu::detail::CallSite second{site_file, site_line, site_col + 1};
  vb = emu::ptx_impl::lds_16(base + index + 1, second);
}
// popc is a per-thread ALU instruction, not a collective: nothing to count or synchronize.
inline int popc(uint32_t v) { return __builtin_popcount(v); }
// __byte_perm (PRMT, default mode): byte i of the result = byte (sel >> 4i) & 7 of {b:a}.
inline uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  const uint64_t bytes = uint64_t(a) | (uint64_t(b) << 32);
  uint32_t out = 0;
  for (int i = 0; i < 4; ++i) out |= uint32_t((bytes >> (8 * ((sel >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
  return out;
}
inline void sts_16(void* smem, uint16_t v, FLASHLLM_EMU_SITE_ARGS) {
  emu::ptx_impl::sts_16(smem, v, FLASHLLM_EMU_SITE);
}
inline void sts_32(void* smem, float v, FLASHLLM_EMU_SITE_ARGS) {
  emu::ptx_impl::sts_32(smem, v, FLASHLLM_EMU_SITE);
}
inline void sts_128(void* smem, uint4 v, FLASHLLM_EMU_SITE_ARGS) {
  emu::ptx_impl::sts_128(smem, v, FLASHLLM_EMU_SITE);
}
inline float lds_32(const void* smem, FLASHLLM_EMU_SITE_ARGS) {
  return emu::ptx_impl::lds_32(smem, FLASHLLM_EMU_SITE);
}
inline uint4 lds_128(const void* smem, FLASHLLM_EMU_SITE_ARGS) {
  return emu::ptx_impl::lds_128(smem, FLASHLLM_EMU_SITE);
}
inline float shfl_xor(float v, int lane_mask, FLASHLLM_EMU_SITE_ARGS) {
  return emu::ptx_impl::shfl_xor(v, lane_mask, FLASHLLM_EMU_SITE);
}

// Inter-block communication (per thread, not collective; the memory model is emu.h's, see
// detail::global_store).
inline void stg_f32(float* gmem, float v) { emu::detail::global_store(gmem, &v, 4, "stg_f32"); }
inline float ldcg_f32(const float* gmem) {
  float v;
  emu::detail::global_load(&v, gmem, 4, "ldcg_f32");
  return v;
}
inline void fence_acq_rel_gpu() { emu::detail::global_fence(); }
inline uint32_t atom_add_relaxed_gpu(uint32_t* gmem, uint32_t v) {
  return emu::detail::global_atomic_add_u32(gmem, v, "atom_add_relaxed_gpu");
}
inline void st_relaxed_gpu_u32(uint32_t* gmem, uint32_t v) {
  emu::detail::global_store_relaxed_u32(gmem, v, "st_relaxed_gpu_u32");
}

#undef FLASHLLM_EMU_SITE_ARGS
#undef FLASHLLM_EMU_SITE

}  // namespace ptx
}  // namespace flashllm
