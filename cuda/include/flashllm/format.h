// Tiled-CSL format constants: the single source of truth for the CUDA kernel, the CPU kernel,
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
constexpr int kFormatVersion = 1;

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

}  // namespace flashllm
