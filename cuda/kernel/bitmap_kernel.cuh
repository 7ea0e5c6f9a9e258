// The SpMM device body for the bitmap (v2) and dense (v3) formats: y (N, M) = x (N, K) @ W^T.
// Load-as-Sparse, Compute-as-Dense without a dense shared-memory tile: per K step the next format
// tiles' packed values (and, bitmap, their 1040-byte index) stream global -> shared with cp.async,
// next to the X tile, while the Tensor Cores work on the current stage. Each lane then builds its
// mma.m16n8k16 A fragment itself: for the two bits it owns in each 8 x 8 block, the value's index in
// the packed array is the slab's first value (tile header) + the popcounts of the blocks before it in
// the warp's walk + the popcount of the block's bits below its own (format.h's block order makes the
// warp's walk the storage order). No zero fill, no scatter, no dense W tile. Dense format: every
// block is full, so the staged values already are 8 x 8 row-major matrices and ldmatrix.x4 reads a
// fragment in one instruction. Compiles for the device and, with FLASHLLM_EMU, for the host.
#pragma once

#include "bitmap_traits.cuh"
#include "spmm_kernel.cuh"

namespace flashllm {
namespace bitmap_detail {

// Values [begin, begin + count) of format tile (mt, kt) and its index in tile order. count = 0 for
// tiles past M and for every malformed tile (negative, misaligned, overlapping or past-the-end
// offsets, more than a full tile of values, a dense tile that is not exactly full, an index shorter
// than the tiles): the GPU path treats those as empty and never loads outside a buffer.
struct TileSpan {
  int64_t begin;
  int64_t tile;
  int count;
};

template <bool kDense>
__device__ __forceinline__ TileSpan tile_span(const SpmmParams& p, int mt, int kt) {
  TileSpan s{0, 0, 0};
  if (mt >= p.m_tiles) return s;
  const int64_t t = int64_t(mt) * p.k_tiles + kt;
  const int64_t b = p.tile_offsets[t], e = p.tile_offsets[t + 1];
  if (b < 0 || e > p.nnz_padded || e <= b || b % kNnzAlign != 0 || (e - b) % kNnzAlign != 0 ||
      e - b > kTileElems)
    return s;
  if (kDense ? e - b != kTileElems : (t + 1) * kBitmapWordsPerTile > p.index_words) return s;
  s.begin = b;
  s.tile = t;
  s.count = int(e - b);
  return s;
}

template <class BT>
__device__ __forceinline__ uint16_t* stage_values(unsigned char* stage) {
  return reinterpret_cast<uint16_t*>(stage);
}
template <class BT>
__device__ __forceinline__ uint32_t* stage_index(unsigned char* stage) {
  return reinterpret_cast<uint32_t*>(stage + BT::kValElems * 2);
}
template <class BT>
__device__ __forceinline__ uint16_t* stage_x(unsigned char* stage) {
  return reinterpret_cast<uint16_t*>(stage + BT::kValElems * 2 + BT::kIndexWords * 4);
}

// Issues (and commits as one group) the cp.async copies of K step kt: each sub-tile's packed values
// (count / 8 chunks of 16 bytes, consecutive lanes on consecutive chunks: fully coalesced), its
// bitmap index, and the X tile. count[s] receives each sub-tile's value count (0: skip it).
template <class BT>
__device__ __forceinline__ void load_stage(const SpmmParams& p, unsigned char* stage, int mt0,
                                           int kt, int n0, int tid,
                                           int (&count)[BT::B::kSubTiles]) {
  using T = typename BT::B;
  uint16_t* const vals = stage_values<BT>(stage);
  uint32_t* const index = stage_index<BT>(stage);
#pragma unroll
  for (int s = 0; s < T::kSubTiles; ++s) {
    const TileSpan span = tile_span<BT::kDense>(p, mt0 + s, kt);
    count[s] = span.count;
    const uint16_t* src = p.values + span.begin;
    uint16_t* dst = vals + s * kTileElems;
    for (int q = tid; q < span.count / 8; q += T::kThreads) ptx::cp_async_16(dst + q * 8, src + q * 8, 16);
    if (!BT::kDense && span.count > 0) {
      const uint32_t* isrc = p.bitmaps + span.tile * kBitmapWordsPerTile;
      uint32_t* idst = index + s * kBitmapWordsPerTile;
      for (int q = tid; q < BT::kIndexChunks; q += T::kThreads)
        ptx::cp_async_16(idst + q * 4, isrc + q * 4, 16);
    }
  }
  kernel_detail::load_x<T>(p, stage_x<BT>(stage), n0, kt, tid);  // commits the group
}

// PRMT selectors that pack a lane's two 16-bit values (va at index i0, vb at i0 + 1, both
// zero-extended) into one A register by which of its two bits are set (pair = bit1 bit0): bytes 2-3
// of va are zero. 00 -> 0 | 0 (0x2222); 01 -> va | 0 (0x2210); 10 -> 0 | va, its one value sits at
// i0 (0x1022); 11 -> va | vb (0x5410). The four 16-bit selectors are bytes 2*pair, 2*pair + 1 of the
// 8-byte table {kPairSelHi:kPairSelLo}, so a PRMT looks one up (selector 0x22 * pair + 0x10).
constexpr uint32_t kPairSelLo = 0x22102222u;
constexpr uint32_t kPairSelHi = 0x54101022u;

// The A fragment of one 16 x 16 piece of the warp's slab from its 4 blocks (format.h order: a0..a3
// = blocks 0..3). words: the 8 index words of those blocks (lo/hi per block); next: index of the
// first value of block 0 in the staged values, advanced past the 4 blocks. A lane owns bits
// g*8 + 2t and g*8 + 2t + 1 of each block (rows 0-3 in the lo word, 4-7 in the hi word): its values
// sit at i0 = next + popc(bits below its own), adjacent when both bits are set. Every lane loads i0
// and i0 + 1 and PRMT keeps what its bits say, so the decode has no per-lane branches or selects of
// addresses: about 15 instructions per register (the issue slots this kernel is bound by at N <= 8,
// see docs/gpu_model.md). Indices wrap inside the sub-tile's kTileElems staged values (+1: the next
// region of the same stage), so even a corrupt bitmap or header reads only this stage.
__device__ __forceinline__ void decode_a(uint32_t (&a)[4], const uint16_t* vals,
                                         const uint32_t* words, int& next, int lane) {
  const uint4 w01 = ptx::lds_128(words), w23 = ptx::lds_128(words + 4);  // broadcast reads
  const uint32_t lo[4] = {w01.x, w01.z, w23.x, w23.z};
  const uint32_t hi[4] = {w01.y, w01.w, w23.y, w23.w};
  const int g = lane / 4, t = lane % 4;
  const int bit = (g % 4) * 8 + 2 * t;  // <= 30
  const uint32_t below = (1u << bit) - 1u;
  const bool upper = g >= 4;  // rows 4-7: bits in the hi word, after all of the lo word's
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const uint32_t word = upper ? hi[r] : lo[r];
    const int lo_count = ptx::popc(lo[r]);
    const int i0 = (next + ptx::popc(word & below) + (upper ? lo_count : 0)) & (kTileElems - 1);
    uint32_t va, vb;
    ptx::lds_16x2(vals, i0, va, vb);
    const uint32_t pair = (word >> bit) & 3u;
    a[r] = ptx::prmt(va, vb, ptx::prmt(kPairSelLo, kPairSelHi, pair * 0x22u + 0x10u));
    next += lo_count + ptx::popc(hi[r]);
  }
}

// One K step of this warp's Tensor Core work on a staged stage. A warp-uniform skip of an empty or
// malformed sub-tile: it adds nothing. Fragments entirely past M are skipped as in the Tiled-CSL
// kernel; their blocks are padding with no bits, so the running value index stays right.
template <class BT, class Tag>
__device__ __forceinline__ void mma_stage(float (&acc)[BT::B::kFragsM][BT::B::kFragsN][4],
                                          unsigned char* stage, int count, int sub, int slab,
                                          int wn, int lane, int m_rem, int n_rem) {
  using T = typename BT::B;
  if (count == 0) return;
  const uint16_t* vals = stage_values<BT>(stage) + sub * kTileElems;
  const uint32_t* index = stage_index<BT>(stage) + sub * kBitmapWordsPerTile;
  const uint16_t* xs = stage_x<BT>(stage);
  int next = 0;
  if (!BT::kDense) {
    const uint4 header = ptx::lds_128(index);  // word s: slab s's first value
    next = int((slab == 0 ? header.x : header.y) & (kTileElems - 1));
  }
#pragma unroll
  for (int kk = 0; kk < T::kKSteps; ++kk) {
    uint32_t b[T::kFragsN][2];
    kernel_detail::load_b<T>(b, xs, wn, kk, lane, n_rem);
#pragma unroll
    for (int i = 0; i < T::kFragsM; ++i) {
      if (i * 16 >= m_rem) break;
      const int block = slab * kBlocksPerSlab + (kk * kFragsPerSlab + i) * kBlocksPerFrag;
      uint32_t a[4];
      if (BT::kDense) {
        // Block j of the fragment = matrix j of ldmatrix.x4 = register a_j; row r of a block is
        // 16 contiguous bytes, 8 rows = 128 bytes = all 32 banks once: conflict-free.
        ptx::ldmatrix_x4(a, vals + (block + lane / 8) * kBlockElems + (lane % 8) * kBlockCols);
      } else {
        decode_a(a, vals, index + kBitmapHeaderWords + 2 * block, next, lane);
      }
#pragma unroll
      for (int j = 0; j < T::kFragsN; ++j) {
        if (j * 8 >= n_rem) break;
        ptx::mma_m16n8k16<Tag>(acc[i][j], a, b[j], acc[i][j]);
      }
    }
  }
}

}  // namespace bitmap_detail

// grid = (ceil(M / kBlockM), ceil(N / kBlockN), split_k), block = kThreads, dynamic shared
// memory = BT::kSmemBytes; the same grid, split-K partition, epilogue and fused split-K reduction
// (splitk.cuh) as spmm_kernel.
template <class BT, class Tag>
__global__ void __launch_bounds__(BT::B::kThreads, BT::kMinBlocksPerSm) spmm_bitmap_kernel(const SpmmParams p) {
  using namespace bitmap_detail;
  using T = typename BT::B;
  FLASHLLM_DYNAMIC_SMEM(smem);

  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int wm = warp / T::kWarpsN, wn = warp % T::kWarpsN;
  const int m0 = int(blockIdx.x) * T::kBlockM, n0 = int(blockIdx.y) * T::kBlockN;
  const int mt0 = int(blockIdx.x) * T::kSubTiles;
  const int kt_begin = int(int64_t(blockIdx.z) * p.k_tiles / p.split_k);
  const int kt_end = int(int64_t(blockIdx.z + 1) * p.k_tiles / p.split_k);
  const int m_rem = p.m - m0 - wm * T::kWarpM;
  const int n_rem = p.n - n0 - wn * T::kWarpN;
  // This warp's rows: format sub-tile `sub` of the block, slab `slab` of that tile.
  const int sub = wm * T::kWarpM / kTileM, slab = (wm * T::kWarpM % kTileM) / kSlabRows;

  float acc[T::kFragsM][T::kFragsN][4];
  kernel_detail::zero_acc<T>(acc);

  if (kt_begin < kt_end) {
    int count[T::kSubTiles], count_next[T::kSubTiles] = {};
    load_stage<BT>(p, smem, mt0, kt_begin, n0, tid, count);
    ptx::cp_async_wait<0>();
    __syncthreads();
    for (int kt = kt_begin; kt < kt_end; ++kt) {
      // Stage pointers and the warp's count by arithmetic / unrolled select, not by indexing a
      // local array with a runtime index (that would put the array in local memory: a stack frame).
      const int cur = (kt - kt_begin) & 1;
      unsigned char* const stage = smem + cur * BT::kStageBytes;
      unsigned char* const other = smem + (cur ^ 1) * BT::kStageBytes;
      int my_count = count[0];
#pragma unroll
      for (int s = 1; s < T::kSubTiles; ++s) my_count = sub == s ? count[s] : my_count;
      // The other stage was last read before the previous step's final barrier.
      if (kt + 1 < kt_end) load_stage<BT>(p, other, mt0, kt + 1, n0, tid, count_next);
      mma_stage<BT, Tag>(acc, stage, my_count, sub, slab, wn, lane, m_rem, n_rem);
      ptx::cp_async_wait<0>();
      __syncthreads();  // next stage landed for everyone; everyone is done with this one
#pragma unroll
      for (int s = 0; s < T::kSubTiles; ++s) count[s] = count_next[s];
    }
  }
  kernel_detail::epilogue<T, Tag>(p, acc, reinterpret_cast<float*>(smem), m0, n0, wm, wn, tid,
                                  lane);
  if (p.split_k > 1) {
    splitk_finish<T::kBlockM, T::kBlockN, T::kThreads, Tag>(
        p, m0, n0, reinterpret_cast<volatile uint32_t*>(smem));
  }
}

}  // namespace flashllm
