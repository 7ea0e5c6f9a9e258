// Thin PTX wrappers: the only way the kernel touches warp-collective hardware (ldmatrix, mma,
// shuffles) and the memory accesses whose efficiency we measure. The signatures are fixed by
// /work/ptx_contract.md: with FLASHLLM_EMU defined the same names come from the host emulation
// (cuda/emu/ptx_emu.h), so the kernel body compiles unchanged for the CPU.
#pragma once

#if defined(FLASHLLM_EMU)
#include "flashllm/numeric.h"
#include "../emu/emu.h"
#include "../emu/ptx_emu.h"
#else

#include <cstdint>
#include <tuple>
#include <utility>

#include <cuda_runtime.h>

#include "flashllm/numeric.h"

// Dynamic shared memory only (the emulator allocates it per block); 16-byte aligned for cp.async
// and 128-bit shared accesses.
#define FLASHLLM_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
// Evaluates to the cudaError_t of this launch itself (cudaLaunchKernel's return value), not
// cudaGetLastError's, which may hold, and would clear, another library's earlier error.
#define FLASHLLM_LAUNCH(kernel, grid, block, smem_bytes, stream, ...) \
  ::flashllm::ptx::launch_kernel((kernel), (grid), (block), (smem_bytes), (stream), __VA_ARGS__)

// ldmatrix, mma.m16n8k16 with bf16 and cp.async all need sm_80; failing the build is better than a
// kernel that silently computes nothing on an older architecture.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "jax_flashllm's CUDA kernel needs sm_80 or newer"
#endif

namespace flashllm {
namespace ptx {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x1(uint32_t& r0, const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
               : "=r"(r0)
               : "r"(smem_addr(smem_row)));
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(smem_row)));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem_row)));
}

__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(smem_row)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem_row)));
}

// d = a * b + c on one warp; Tag (Fp16 / Bf16) picks the input type, accumulation is fp32.
template <class Tag>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2], const float (&c)[4]);

template <>
__device__ __forceinline__ void mma_m16n8k16<Fp16>(float (&d)[4], const uint32_t (&a)[4],
                                                   const uint32_t (&b)[2], const float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
}

template <>
__device__ __forceinline__ void mma_m16n8k16<Bf16>(float (&d)[4], const uint32_t (&a)[4],
                                                   const uint32_t (&b)[2], const float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
}

// cp.async.cg (L2 only: X is streamed once per K step) with src-size: bytes past src_bytes are
// zero-filled, which is how the kernel masks the N and K edges without branches.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem_dst)),
               "l"(gmem_src), "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Non-coherent (read-only path) loads: the sparse arrays are never written by the kernel.
__device__ __forceinline__ uint4 ldg_128(const void* gmem) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(gmem));
  return v;
}

__device__ __forceinline__ uint32_t ldg_32(const void* gmem) {
  uint32_t v;
  asm volatile("ld.global.nc.u32 %0, [%1];\n" : "=r"(v) : "l"(gmem));
  return v;
}

// Two 16-bit shared loads of base[index] and base[index + 1] (zero-extended): the bitmap kernel's
// decode reads a lane's values at its popcount offset in the staged packed values (no dense tile to
// ldmatrix from). One 32-bit shared address for both: base's conversion is loop-invariant, the
// second load uses the immediate offset.
__device__ __forceinline__ void lds_16x2(const uint16_t* base, int index, uint32_t& va, uint32_t& vb) {
  const uint32_t addr = smem_addr(base) + uint32_t(index) * 2u;
  uint16_t a, b;
  asm volatile("ld.shared.u16 %0, [%2];\n\tld.shared.u16 %1, [%2+2];\n" : "=h"(a), "=h"(b) : "r"(addr));
  va = a;
  vb = b;
}

// Population count (one POPC instruction): the bitmap decode's value offsets.
__device__ __forceinline__ int popc(uint32_t v) { return __popc(v); }

// Byte permute (one PRMT, default mode): result byte i = byte (sel >> 4i) & 7 of the 8 bytes {b:a}
// (a = bytes 0-3). The bitmap decode packs (or zeroes) a lane's two 16-bit values with it. Inline
// PTX rather than __byte_perm, which masks the selector first (callers pass selectors whose nibbles
// have bit 3 clear, so the mask is an instruction for nothing).
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
}

__device__ __forceinline__ void sts_16(void* smem, uint16_t v) {
  asm volatile("st.shared.u16 [%0], %1;\n" ::"r"(smem_addr(smem)), "h"(v));
}

// 32-bit float accesses for the epilogue's fp32 C tile (accumulators in, rows of y out). volatile
// keeps them on their side of __syncthreads, as for the other shared accesses.
__device__ __forceinline__ void sts_32(void* smem, float v) {
  asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(smem_addr(smem)), "f"(v));
}

__device__ __forceinline__ float lds_32(const void* smem) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];\n" : "=f"(v) : "r"(smem_addr(smem)));
  return v;
}

__device__ __forceinline__ void sts_128(void* smem, uint4 v) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_addr(smem)), "r"(v.x),
               "r"(v.y), "r"(v.z), "r"(v.w));
}

__device__ __forceinline__ uint4 lds_128(const void* smem) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(smem_addr(smem)));
  return v;
}

__device__ __forceinline__ float shfl_xor(float v, int lane_mask) {
  return __shfl_xor_sync(0xffffffffu, v, lane_mask);
}

// ---- Inter-block communication (the fused split-K reduction, splitk.cuh) -----------------------
// Per-thread, not warp-collective. PTX memory model ("Memory Consistency Model", release and
// acquire patterns): a fence.acq_rel followed by a relaxed atomic is a release; a relaxed atomic
// followed by a fence.acq_rel is an acquire. gpu scope: the blocks of one grid.

// Plain global store of an fp32 partial (made visible to other blocks by a later fence).
__device__ __forceinline__ void stg_f32(float* gmem, float v) {
  asm volatile("st.global.f32 [%0], %1;\n" ::"l"(gmem), "f"(v) : "memory");
}

// Load of another block's partial: .cg caches in L2 only, so no stale L1 line can be hit (and the
// partials, read once, do not evict anything useful from L1).
__device__ __forceinline__ float ldcg_f32(const float* gmem) {
  float v;
  asm volatile("ld.global.cg.f32 %0, [%1];\n" : "=f"(v) : "l"(gmem) : "memory");
  return v;
}

__device__ __forceinline__ void fence_acq_rel_gpu() { asm volatile("fence.acq_rel.gpu;\n" ::: "memory"); }

// Returns the value before the addition.
__device__ __forceinline__ uint32_t atom_add_relaxed_gpu(uint32_t* gmem, uint32_t v) {
  uint32_t old;
  asm volatile("atom.relaxed.gpu.global.add.u32 %0, [%1], %2;\n"
               : "=r"(old)
               : "l"(gmem), "r"(v)
               : "memory");
  return old;
}

__device__ __forceinline__ void st_relaxed_gpu_u32(uint32_t* gmem, uint32_t v) {
  asm volatile("st.relaxed.gpu.global.u32 [%0], %1;\n" ::"l"(gmem), "r"(v) : "memory");
}

// Host side of FLASHLLM_LAUNCH: kernel arguments by address, as cudaLaunchKernel wants them.
template <class... Params, class... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                          cudaStream_t stream, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "kernel launched with the wrong argument count");
  auto params = std::tuple<Params...>(std::forward<Args>(args)...);
  return std::apply(
      [&](auto&... p) {
        void* ptrs[] = {static_cast<void*>(&p)...};
        return cudaLaunchKernel(reinterpret_cast<const void*>(kernel), grid, block, ptrs, smem_bytes,
                                stream);
      },
      params);
}

}  // namespace ptx
}  // namespace flashllm

#endif  // FLASHLLM_EMU
