// The SpMM device body: y (N, M) = x (N, K) @ W^T with W in Tiled-CSL (format.h).
// Load-as-Sparse, Compute-as-Dense: per K step the next format tile(s)' values and locations
// stream global -> registers (16-byte loads) and the next X tile global -> shared (cp.async) while
// ldmatrix + mma.m16n8k16 multiply the current dense tiles; then the staged nonzeros are scattered
// into the zero-filled next W buffer (double buffering). Templated on the tiling traits and the
// dtype tag; compiles for the device with nvcc and for the host emulation with FLASHLLM_EMU.
#pragma once

#include "flashllm/numeric.h"
#include "params.cuh"
#include "ptx.cuh"
#include "splitk.cuh"
#include "traits.cuh"

namespace flashllm {
namespace kernel_detail {

// Element offset of 16-byte chunk `chunk` of row `row` in a swizzled 64-wide tile. Identical to
// format.h's swizzle() (which is what the stored locations use), phrased in chunks for ldmatrix.
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * kTileK + ((chunk ^ (row % kSwizzleRows)) * kChunkElems);
}

// Entry range [begin, end) of format tile (mt, kt); empty for tile rows past the matrix. The arrays
// are never validated on the device (a matrix rebuilt under jit skips the host checks), so a
// malformed tile (a negative, unaligned or past-the-end offset, a reversed range, more entries than
// a tile has) is treated as empty: every 16-byte load below stays aligned and inside values /
// locations whatever the offsets hold. Garbage in, garbage out, never a fault.
__device__ __forceinline__ void tile_range(const SpmmParams& p, int mt, int kt, int& begin,
                                           int& end) {
  begin = end = 0;
  if (mt >= p.m_tiles) return;
  const int64_t t = int64_t(mt) * p.k_tiles + kt;
  const int64_t b = p.tile_offsets[t];
  const int64_t e = p.tile_offsets[t + 1];
  if (b < 0 || b >= e || e > p.nnz_padded || e - b > kTileElems) return;
  if (b % kNnzAlign != 0 || e % kNnzAlign != 0) return;
  begin = int(b);
  end = int(e);
}

// Whether warp `warp` has any entry in chunk `c` of [begin, end): warp-uniform, so a warp either
// runs a chunk's collective loads/stores with all 32 lanes or skips it.
template <class T>
__device__ __forceinline__ bool chunk_active(int begin, int end, int c, int warp) {
  return begin + c * T::kChunkEntries + warp * 32 * T::kEntriesPerVec < end;
}

// 16-byte loads of 8 values and 8 locations. Lanes past the tile's end re-load the tile's last
// vector (same sectors, never past tile_offsets[t + 1]) and later re-store identical values.
template <class T>
__device__ __forceinline__ void load_chunk(const SpmmParams& p, int begin, int end, int c,
                                           int tid, uint4& vals, uint4& locs) {
  int idx = begin + c * T::kChunkEntries + tid * T::kEntriesPerVec;
  if (idx > end - T::kEntriesPerVec) idx = end - T::kEntriesPerVec;
  vals = ptx::ldg_128(p.values + idx);
  locs = ptx::ldg_128(p.locations + idx);
}

// Decode: one 16-bit scatter store per entry into the format tile's shared image. The mask keeps
// even a corrupt location inside the tile.
__device__ __forceinline__ void scatter(uint16_t* w_sub, const uint4& vals, const uint4& locs) {
  const uint32_t v[4] = {vals.x, vals.y, vals.z, vals.w};
  const uint32_t l[4] = {locs.x, locs.y, locs.z, locs.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    ptx::sts_16(w_sub + ((l[j] & 0xffffu) % kTileElems), uint16_t(v[j] & 0xffffu));
    ptx::sts_16(w_sub + ((l[j] >> 16) % kTileElems), uint16_t(v[j] >> 16));
  }
}

// Load and decode chunks [c_first, ...) of one format tile, without register staging (the part
// of a dense tile that does not fit the staging registers, and the prologue).
template <class T>
__device__ __forceinline__ void load_scatter_from(const SpmmParams& p, uint16_t* w_sub, int begin,
                                                  int end, int c_first, int tid, int warp) {
  for (int c = c_first; begin + c * T::kChunkEntries < end; ++c) {
    if (!chunk_active<T>(begin, end, c, warp)) continue;
    uint4 vals, locs;
    load_chunk<T>(p, begin, end, c, tid, vals, locs);
    scatter(w_sub, vals, locs);
  }
}

template <class T>
__device__ __forceinline__ void zero_fill(uint16_t* w, int tid) {
  uint4 z;
  z.x = z.y = z.z = z.w = 0u;
#pragma unroll
  for (int i = 0; i < T::kWZeroVecsPerThread; ++i) {
    ptx::sts_128(w + (tid + i * T::kThreads) * 8, z);
  }
}

__device__ __forceinline__ uint32_t x_elem(const SpmmParams& p, int gn, int gk) {
  return (gn < p.n && gk < p.k) ? uint32_t(p.x[int64_t(gn) * p.k + gk]) : 0u;
}

// X tile kt (kBlockN rows x 64 k) -> shared, swizzled like W. Masked rows / columns become zeros:
// cp.async's src-size zero-fills them. Rows that are not 16-byte aligned (K % 8 != 0) take a
// synchronous element-wise path instead (cp.async needs aligned sources).
template <class T>
__device__ __forceinline__ void load_x(const SpmmParams& p, uint16_t* xs, int n0, int kt,
                                       int tid) {
  const int k0 = kt * kTileK;
#pragma unroll
  for (int i = 0; i < T::kXChunksPerThread; ++i) {
    const int q = tid + i * T::kThreads;
    const int row = q / 8, c = q % 8;
    const int gn = n0 + row, gk = k0 + c * 8;
    uint16_t* dst = xs + swz(row, c);
    if (p.x_vec_ok) {
      int bytes = 0;
      const uint16_t* src = p.x;  // a valid dummy address for fully masked chunks
      if (gn < p.n && gk < p.k) {
        bytes = (p.k - gk >= 8 ? 8 : p.k - gk) * 2;
        src = p.x + int64_t(gn) * p.k + gk;
      }
      ptx::cp_async_16(dst, src, bytes);
    } else {
      uint4 v;
      v.x = x_elem(p, gn, gk + 0) | (x_elem(p, gn, gk + 1) << 16);
      v.y = x_elem(p, gn, gk + 2) | (x_elem(p, gn, gk + 3) << 16);
      v.z = x_elem(p, gn, gk + 4) | (x_elem(p, gn, gk + 5) << 16);
      v.w = x_elem(p, gn, gk + 6) | (x_elem(p, gn, gk + 7) << 16);
      ptx::sts_128(dst, v);
    }
  }
  ptx::cp_async_commit();
}

// One 64-deep K step of Tensor Core work for this warp. A (W rows x k) comes from ldmatrix.x4 in
// the A-fragment order (rows 0-7 / 8-15 x k 0-7 / 8-15); B = X^T comes from X's rows (one n per
// row, k contiguous), which is already the "col" layout mma wants, so no .trans is needed.
// m16 / n8 fragments that lie entirely past M / N are skipped (warp-uniform).
// B fragments of k16 step kk for the warp's n8 tiles, two per ldmatrix.x4 (shared by every format).
template <class T>
__device__ __forceinline__ void load_b(uint32_t (&b)[T::kFragsN][2], const uint16_t* xs, int wn,
                                       int kk, int lane, int n_rem) {
  const int mi = lane / 8, r8 = lane % 8;
#pragma unroll
  for (int jj = 0; jj < T::kFragsN / 2; ++jj) {
    if (jj * 16 >= n_rem) break;
    uint32_t r[4];
    const int row = wn * T::kWarpN + jj * 16 + (mi / 2) * 8 + r8;
    ptx::ldmatrix_x4(r, xs + swz(row, kk * 2 + mi % 2));
    b[2 * jj][0] = r[0];
    b[2 * jj][1] = r[1];
    b[2 * jj + 1][0] = r[2];
    b[2 * jj + 1][1] = r[3];
  }
}

template <class T, class Tag>
__device__ __forceinline__ void mma_tile(float (&acc)[T::kFragsM][T::kFragsN][4],
                                         const uint16_t* ws, const uint16_t* xs, int wm, int wn,
                                         int lane, int m_rem, int n_rem) {
  const int mi = lane / 8, r8 = lane % 8;
#pragma unroll
  for (int kk = 0; kk < T::kKSteps; ++kk) {
    uint32_t b[T::kFragsN][2];
    load_b<T>(b, xs, wn, kk, lane, n_rem);
#pragma unroll
    for (int i = 0; i < T::kFragsM; ++i) {
      if (i * 16 >= m_rem) break;
      uint32_t a[4];
      const int row = wm * T::kWarpM + i * 16 + (mi % 2) * 8 + r8;
      ptx::ldmatrix_x4(a, ws + swz(row, kk * 2 + mi / 2));
#pragma unroll
      for (int j = 0; j < T::kFragsN; ++j) {
        if (j * 8 >= n_rem) break;
        ptx::mma_m16n8k16<Tag>(acc[i][j], a, b[j], acc[i][j]);
      }
    }
  }
}

template <class T>
__device__ __forceinline__ void zero_acc(float (&acc)[T::kFragsM][T::kFragsN][4]) {
#pragma unroll
  for (int i = 0; i < T::kFragsM; ++i)
#pragma unroll
    for (int j = 0; j < T::kFragsN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
}

// Accumulators -> padded fp32 C tile in shared memory -> coalesced rows of y (rounded to the
// dtype) or of this split's fp32 partial in the workspace. The C tile is n-major (m contiguous) so
// the second phase reads and writes along m; the 4-float row padding makes each fragment store hit
// 32 distinct banks (lane (g, t4) -> bank 8 * t4 + g). Every shared access goes through the counted
// ptx:: wrappers, so the emulator checks this phase for races and bank conflicts too.
template <class T, class Tag>
__device__ __forceinline__ void epilogue(const SpmmParams& p, float (&acc)[T::kFragsM][T::kFragsN][4],
                                         float* cs, int m0, int n0, int wm, int wn, int tid,
                                         int lane) {
  const int g = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int i = 0; i < T::kFragsM; ++i) {
#pragma unroll
    for (int j = 0; j < T::kFragsN; ++j) {
      const int m = wm * T::kWarpM + i * 16 + g;
      const int n = wn * T::kWarpN + j * 8 + t4 * 2;
      ptx::sts_32(cs + n * T::kCStride + m, acc[i][j][0]);
      ptx::sts_32(cs + (n + 1) * T::kCStride + m, acc[i][j][1]);
      ptx::sts_32(cs + n * T::kCStride + m + 8, acc[i][j][2]);
      ptx::sts_32(cs + (n + 1) * T::kCStride + m + 8, acc[i][j][3]);
    }
  }
  __syncthreads();
  // rows * kBlockM is a multiple of 32, so every lane of a warp runs the same iterations and the
  // warp-collective load is reached by all of them; lanes past M load and drop their value.
  static_assert(T::kBlockM % 32 == 0, "epilogue loads need whole warps per C-tile row");
  const int rows = (p.n - n0 < T::kBlockN) ? p.n - n0 : T::kBlockN;
  for (int idx = tid; idx < rows * T::kBlockM; idx += T::kThreads) {
    const int n = idx / T::kBlockM, m = idx % T::kBlockM;
    const int gm = m0 + m;
    const float v = ptx::lds_32(cs + n * T::kCStride + m);
    if (gm >= p.m) continue;
    if (p.split_k == 1) {
      p.y[int64_t(n0 + n) * p.m + gm] = from_float<Tag>(v);
    } else {
      splitk_store_partial(p, n0 + n, gm, v);
    }
  }
}

}  // namespace kernel_detail

// grid = (ceil(M / kBlockM), ceil(N / kBlockN), split_k), block = kThreads, dynamic shared
// memory = T::kSmemBytes. Split z handles K tiles [z * Kt / split_k, (z + 1) * Kt / split_k); with
// split_k > 1 the last split to finish an output tile reduces the partials (splitk.cuh).
template <class T, class Tag>
__global__ void __launch_bounds__(T::kThreads, T::kMinBlocksPerSm) spmm_kernel(const SpmmParams p) {
  using namespace kernel_detail;
  FLASHLLM_DYNAMIC_SMEM(smem);
  uint16_t* const w_buf0 = reinterpret_cast<uint16_t*>(smem);
  uint16_t* const w_buf1 = w_buf0 + T::kWTileElems;
  uint16_t* const x_buf0 = w_buf1 + T::kWTileElems;
  uint16_t* const x_buf1 = x_buf0 + T::kXTileElems;

  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int wm = warp / T::kWarpsN, wn = warp % T::kWarpsN;
  const int m0 = int(blockIdx.x) * T::kBlockM, n0 = int(blockIdx.y) * T::kBlockN;
  const int mt0 = int(blockIdx.x) * T::kSubTiles;
  const int kt_begin = int(int64_t(blockIdx.z) * p.k_tiles / p.split_k);
  const int kt_end = int(int64_t(blockIdx.z + 1) * p.k_tiles / p.split_k);
  const int m_rem = p.m - m0 - wm * T::kWarpM;  // rows of this warp's sub-tile inside M
  const int n_rem = p.n - n0 - wn * T::kWarpN;

  float acc[T::kFragsM][T::kFragsN][4];
  zero_acc<T>(acc);

  if (kt_begin < kt_end) {
    // Prologue: first tile straight into buffer 0.
    zero_fill<T>(w_buf0, tid);
    load_x<T>(p, x_buf0, n0, kt_begin, tid);
    __syncthreads();  // zeros visible before any thread scatters
#pragma unroll
    for (int s = 0; s < T::kSubTiles; ++s) {
      int begin, end;
      tile_range(p, mt0 + s, kt_begin, begin, end);
      load_scatter_from<T>(p, w_buf0 + s * kTileElems, begin, end, 0, tid, warp);
    }
    ptx::cp_async_wait<0>();
    __syncthreads();

    for (int kt = kt_begin; kt < kt_end; ++kt) {
      const bool odd = ((kt - kt_begin) & 1) != 0;
      const uint16_t* w_cur = odd ? w_buf1 : w_buf0;
      const uint16_t* x_cur = odd ? x_buf1 : x_buf0;
      uint16_t* w_nxt = odd ? w_buf0 : w_buf1;
      uint16_t* x_nxt = odd ? x_buf0 : x_buf1;
      const bool has_next = kt + 1 < kt_end;

      // Issue the next step's loads; they land while the Tensor Cores work on this step.
      // w_nxt / x_nxt were last read before the previous step's final barrier.
      int begin[T::kSubTiles], end[T::kSubTiles];
      uint4 st_vals[T::kSubTiles][T::kStageChunks], st_locs[T::kSubTiles][T::kStageChunks];
      if (has_next) {
        zero_fill<T>(w_nxt, tid);
        load_x<T>(p, x_nxt, n0, kt + 1, tid);
#pragma unroll
        for (int s = 0; s < T::kSubTiles; ++s) {
          tile_range(p, mt0 + s, kt + 1, begin[s], end[s]);
#pragma unroll
          for (int c = 0; c < T::kStageChunks; ++c) {
            if (chunk_active<T>(begin[s], end[s], c, warp)) {
              load_chunk<T>(p, begin[s], end[s], c, tid, st_vals[s][c], st_locs[s][c]);
            }
          }
        }
      }

      mma_tile<T, Tag>(acc, w_cur, x_cur, wm, wn, lane, m_rem, n_rem);

      if (has_next) {
        __syncthreads();  // every thread's zero fill of w_nxt is done before the scatter
#pragma unroll
        for (int s = 0; s < T::kSubTiles; ++s) {
          uint16_t* w_sub = w_nxt + s * kTileElems;
#pragma unroll
          for (int c = 0; c < T::kStageChunks; ++c) {
            if (chunk_active<T>(begin[s], end[s], c, warp)) {
              scatter(w_sub, st_vals[s][c], st_locs[s][c]);
            }
          }
          load_scatter_from<T>(p, w_sub, begin[s], end[s], T::kStageChunks, tid, warp);
        }
      }
      ptx::cp_async_wait<0>();
      __syncthreads();  // next tiles complete; everyone is done reading the current ones
    }
  }
  epilogue<T, Tag>(p, acc, reinterpret_cast<float*>(smem), m0, n0, wm, wn, tid, lane);
  if (p.split_k > 1) {
    splitk_finish<T::kBlockM, T::kBlockN, T::kThreads, Tag>(
        p, m0, n0, reinterpret_cast<volatile uint32_t*>(smem));
  }
}

}  // namespace flashllm
