// Format constants (Tiled-CSL v1, bitmap v2, dense v3): the single source of truth for the CUDA kernel, the CPU kernel,
// the host emulation and (mirrored in jax_flashllm/_constants.py, checked by tests/test_constants.py)
// the Python encoder.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FLASHLLM_HD __host__ __device__ __forceinline__
#else
#define FLASHLLM_HD inline
#endif

namespace flashllm {

// Bumped whenever the meaning of the encoded arrays changes; saved with every matrix.
// kFormatVersion is Tiled-CSL's; every format has its own id, which is also the version saved with
// a matrix of that format and the FFI handlers' `format` attribute.
constexpr int kFormatVersion = 1;
constexpr int kFormatTiledCsl = 1;  // v1: values + uint16 swizzled locations
constexpr int kFormatBitmap = 2;    // v2: values + one 64-bit bitmap per 8 x 8 block
constexpr int kFormatDense = 3;     // every element stored, in the bitmap format's value order

// One format tile covers kTileM rows (output features) x kTileK columns (input features) of W.
// 128 x 64 is the tile that every kernel configuration can consume: a thread block whose M-extent
// is 256 simply walks two tile rows.
constexpr int kTileM = 128;
constexpr int kTileK = 64;
constexpr int kTileElems = kTileM * kTileK;  // 8192: a location fits a uint16.

// Each tile's nonzero count is padded to a multiple of this, so that every tile starts on a
// 16-byte boundary for both the 2-byte values and the 2-byte locations (vector loads).
constexpr int kNnzAlign = 8;

// Shared-memory swizzle. A tile row holds kTileK 16-bit values = 128 bytes = 8 chunks of 16 bytes.
// ldmatrix reads 8 rows at the same logical chunk; XOR-ing the chunk index with (row % 8) puts those
// 8 reads in 8 different 16-byte bank groups, so they are conflict-free.
constexpr int kChunkElems = 8;                      // 16 bytes of 16-bit values.
constexpr int kChunksPerRow = kTileK / kChunkElems;  // 8
constexpr int kSwizzleRows = 8;                     // XOR period in rows.

static_assert(kTileElems <= 65536, "locations are uint16");
static_assert(kTileElems % kNnzAlign == 0, "a fully dense tile must be a legal padded count");
static_assert(kChunksPerRow == kSwizzleRows, "XOR swizzle assumes one chunk per row of the period");

// Logical (row, col) inside a tile -> the element's offset in the swizzled shared-memory tile.
FLASHLLM_HD int swizzle(int row, int col) {
  const int chunk = (col / kChunkElems) ^ (row % kSwizzleRows);
  return row * kTileK + chunk * kChunkElems + (col % kChunkElems);
}

// Inverse of swizzle(): a stored location -> logical row.
FLASHLLM_HD int location_row(int loc) { return loc / kTileK; }

// Inverse of swizzle(): a stored location -> logical column.
FLASHLLM_HD int location_col(int loc) {
  const int row = loc / kTileK;
  const int chunk = ((loc % kTileK) / kChunkElems) ^ (row % kSwizzleRows);
  return chunk * kChunkElems + (loc % kChunkElems);
}

// ---------------------------------------------------------------------------------------------
// Bitmap format (v2) and dense format (v3): the order of values inside a tile.
//
// A tile (kTileM x kTileK) is 128 blocks of 8 x 8. Blocks are ordered for the GPU's mma.m16n8k16:
//   tile -> 64-row warp slab (2) -> 16-wide k step (4) -> 16 x 16 A fragment of the slab (4)
//        -> the fragment's 4 blocks in A-register order a0..a3: (rows 0-7, cols 0-7),
//           (rows 8-15, cols 0-7), (rows 0-7, cols 8-15), (rows 8-15, cols 8-15).
// so a warp that owns a slab walks its blocks front to back, k step by k step, and lane (g, t) of
// register ai reads bits g*8 + 2t and g*8 + 2t + 1 of block 4*fragment + i.
// Inside a block, bit r*8 + c (r, c in 0..7) marks element (r, c); the block's nonzero values are
// stored contiguously in bit order. Bitmap: a tile's values are its blocks' values back to back,
// padded at the tile's end to a multiple of kNnzAlign with zeros that no bit references. Dense: all
// 64 values of every block (zeros included), so tile t starts at t * kTileElems.
constexpr int kBlockRows = 8;
constexpr int kBlockCols = 8;
constexpr int kBlockElems = kBlockRows * kBlockCols;    // 64 bits: one uint64 bitmap
constexpr int kBlocksPerTile = kTileElems / kBlockElems;  // 128
constexpr int kSlabRows = 64;                             // rows of W one warp owns
constexpr int kSlabsPerTile = kTileM / kSlabRows;         // 2
constexpr int kKStep = 16;                                // k of one mma.m16n8k16
constexpr int kFragRows = 16;                             // m of one mma.m16n8k16 A fragment
constexpr int kFragsPerSlab = kSlabRows / kFragRows;      // 4
constexpr int kKStepsPerTile = kTileK / kKStep;           // 4
constexpr int kBlocksPerFrag = 4;
constexpr int kBlocksPerSlab = kBlocksPerTile / kSlabsPerTile;  // 64

// The bitmap index of one tile is kBitmapWordsPerTile uint32 words (16-byte aligned): a header of
// kBitmapHeaderWords words, word s < kSlabsPerTile = offset of slab s's first value from the tile's
// first value (so a warp finds its values without other warps' popcounts; word 0 is always 0,
// words kSlabsPerTile.. are reserved and 0), then for each block b its bitmap as two words: 4 + 2b = bits 0..31 (rows
// 0-3), 4 + 2b + 1 = bits 32..63 (rows 4-7).
constexpr int kBitmapHeaderWords = 4;
constexpr int kBitmapWordsPerTile = kBitmapHeaderWords + 2 * kBlocksPerTile;  // 260

static_assert(kBlocksPerSlab == kKStepsPerTile * kFragsPerSlab * kBlocksPerFrag, "block order covers the slab");
static_assert(kSlabsPerTile <= kBitmapHeaderWords, "one header word per slab");
static_assert(kBitmapWordsPerTile % 4 == 0, "every tile's bitmap index starts on 16 bytes");

// Block index b (0..127) in a tile -> the tile row / column of the block's element (0, 0).
FLASHLLM_HD int bitmap_block_row(int b) {
  const int slab = b / kBlocksPerSlab;
  const int frag = (b % (kFragsPerSlab * kBlocksPerFrag)) / kBlocksPerFrag;
  const int reg = b % kBlocksPerFrag;
  return slab * kSlabRows + frag * kFragRows + (reg & 1) * kBlockRows;
}
FLASHLLM_HD int bitmap_block_col(int b) {
  const int kstep = (b % kBlocksPerSlab) / (kFragsPerSlab * kBlocksPerFrag);
  const int reg = b % kBlocksPerFrag;
  return kstep * kKStep + (reg >> 1) * kBlockCols;
}
// Inverse: the block holding tile element (row, col).
FLASHLLM_HD int bitmap_block_index(int row, int col) {
  const int slab = row / kSlabRows, frag = (row % kSlabRows) / kFragRows;
  const int kstep = col / kKStep;
  const int reg = ((row % kFragRows) / kBlockRows) | (((col % kKStep) / kBlockCols) << 1);
  return slab * kBlocksPerSlab + kstep * (kFragsPerSlab * kBlocksPerFrag) + frag * kBlocksPerFrag + reg;
}
// Bit of tile element (row, col) inside its block's bitmap.
FLASHLLM_HD int bitmap_bit(int row, int col) { return (row % kBlockRows) * kBlockCols + col % kBlockCols; }

}  // namespace flashllm
