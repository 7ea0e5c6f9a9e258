// Instruction-count probes for benchmarks/gpu_model.py: the per-fragment / per-chunk device code of the
// SpMM kernels, each wrapped in a minimal kernel, compiled to PTX. gpu_model.py counts the PTX
// instructions of each probe minus those of probe_null (parameter loads, the store that keeps the
// result alive), which gives the issue slots the code costs per warp (PTX, before ptxas: an upper
// estimate; ptxas fuses some, e.g. LOP3 / IADD3 / LEA, and zero-extending cvt are free).
//   nvcc -std=c++17 -ptx -arch=sm_90 -I cuda/include -I cuda benchmarks/gpu_model_probe.cu -o probe.ptx
#include "kernel/bitmap_kernel.cuh"

using namespace flashllm;

extern "C" __global__ void probe_null(const uint32_t* in, uint32_t* out) {
  extern __shared__ __align__(16) unsigned char smem[];
  out[threadIdx.x] = in[0] ^ reinterpret_cast<const uint32_t*>(smem)[threadIdx.x];
}

// Bitmap: one 16 x 16 A fragment decoded from its 4 blocks (bitmap_kernel.cuh decode_a).
extern "C" __global__ void probe_bitmap_fragment(const uint32_t* in, uint32_t* out) {
  extern __shared__ __align__(16) unsigned char smem[];
  const uint16_t* vals = reinterpret_cast<const uint16_t*>(smem);
  const uint32_t* words = reinterpret_cast<const uint32_t*>(smem + 16384);
  int next = int(in[0]);
  uint32_t a[4];
  bitmap_detail::decode_a(a, vals, words, next, int(threadIdx.x % 32));
  out[threadIdx.x] = in[0] ^ a[0] ^ a[1] ^ a[2] ^ a[3] ^ uint32_t(next);
}

// Dense format / Tiled-CSL: one A fragment by ldmatrix.x4 from shared memory.
extern "C" __global__ void probe_ldmatrix_fragment(const uint32_t* in, uint32_t* out) {
  extern __shared__ __align__(16) unsigned char smem[];
  const uint16_t* vals = reinterpret_cast<const uint16_t*>(smem);
  uint32_t a[4];
  const int lane = int(threadIdx.x % 32), block = int(in[0]);
  ptx::ldmatrix_x4(a, vals + (block + lane / 8) * kBlockElems + (lane % 8) * kBlockCols);
  out[threadIdx.x] = in[0] ^ a[0] ^ a[1] ^ a[2] ^ a[3];
}

// Tiled-CSL: one 8-entry chunk per thread loaded (values + locations) and scattered (spmm_kernel.cuh).
extern "C" __global__ void probe_csl_chunk(const uint32_t* in, uint32_t* out) {
  extern __shared__ __align__(16) unsigned char smem[];
  const uint16_t* v = reinterpret_cast<const uint16_t*>(in);
  uint4 vals = ptx::ldg_128(v + 8 * threadIdx.x), locs = ptx::ldg_128(v + 4096 + 8 * threadIdx.x);
  kernel_detail::scatter(reinterpret_cast<uint16_t*>(smem), vals, locs);
  out[threadIdx.x] = in[0];
}
