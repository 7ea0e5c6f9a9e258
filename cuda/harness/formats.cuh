// The harness's per-format table: how a matrix of each format is laid out on the device, launched,
// and generated at random on the device for the speed cases (so no large file travels with the
// bundle). One entry per format id of format.h (Tiled-CSL, bitmap, dense), and the case list
// (cases.txt) names the format of every case.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "flashllm/format.h"
#include "flashllm/numeric.h"
#include "kernel/launcher.cuh"
#include "kernel/splitk.cuh"

namespace flashllm {
namespace harness {

// One encoded matrix on the device. index: the format's index array (Tiled-CSL: uint16 locations,
// one per value; bitmap: kBitmapWordsPerTile uint32 words per tile; dense: none).
struct DeviceMatrix {
  int format = kFormatTiledCsl;
  int m = 0, k = 0;
  const uint16_t* values = nullptr;
  const void* index = nullptr;
  const int32_t* tile_offsets = nullptr;
  int64_t value_count = 0;
  int64_t index_bytes = 0;
};

// Launches y (n, m) = x (n, k) @ W^T; workspace: splitk_workspace_words(...) floats (or null with
// split_k == 1). Returns "" or the launch's error.
inline std::string launch_matrix(const DeviceMatrix& w, const uint16_t* x, int n, uint16_t* y,
                                 float* workspace, int split_k, bool bf16, int config,
                                 cudaStream_t stream) {
  if (w.format != kFormatTiledCsl && w.format != kFormatBitmap && w.format != kFormatDense)
    return "format " + std::to_string(w.format) + " has no kernel in this build";
  SpmmParams p{};
  p.format = w.format;
  p.x = x;
  p.values = w.values;
  p.locations = w.format == kFormatTiledCsl ? static_cast<const uint16_t*>(w.index) : nullptr;
  p.bitmaps = w.format == kFormatBitmap ? static_cast<const uint32_t*>(w.index) : nullptr;
  p.index_words = w.format == kFormatBitmap ? w.index_bytes / 4 : 0;
  p.tile_offsets = w.tile_offsets;
  p.y = y;
  p.nnz_padded = w.value_count;
  p.n = n;
  p.m = w.m;
  p.k = w.k;
  p.split_k = split_k;
  finalize_params(p);
  if (split_k > 1) {
    p.workspace = workspace;
    p.splitk_counters =
        reinterpret_cast<uint32_t*>(workspace + splitk_partial_words(split_k, n, p.m_pad));
  }
  return launch_spmm(p, bf16 ? Dtype::kBfloat16 : Dtype::kFloat16, config, stream);
}

// ---- Random matrices generated on the device --------------------------------------------------
__host__ __device__ inline uint32_t mix32(uint64_t v) {
  v ^= v >> 33;
  v *= 0xff51afd7ed558ccdull;
  v ^= v >> 33;
  v *= 0xc4ceb9fe1a85ec53ull;
  v ^= v >> 33;
  return uint32_t(v);
}

// A value in [-1, 1) as 16-bit bits.
__device__ inline uint16_t random_value(uint64_t i, uint32_t seed, bool bf16) {
  const float f = float(mix32(i * 0x9e3779b97f4a7c15ull + seed) >> 8) * (2.f / 16777216.f) - 1.f;
  return bf16 ? from_float<Bf16>(f) : from_float<Fp16>(f);
}

__global__ void fill_random(uint16_t* out, int64_t count, uint32_t seed, bool bf16) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = random_value(uint64_t(i), seed, bf16);
}

// Tiled-CSL with `per_tile` entries in every tile (a multiple of kNnzAlign): entry j of tile t sits
// at row-major position (a_t * j + b_t) mod 8192, a_t odd (a bijection), so positions in a tile are
// distinct and scattered; the stored location is that position swizzled, as the encoder stores it.
__global__ void fill_tiled_csl(uint16_t* values, uint16_t* locations, int64_t tiles, int per_tile,
                               uint32_t seed, bool bf16) {
  const int64_t total = tiles * per_tile;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / per_tile;
    const int j = int(i % per_tile);
    const uint32_t h = mix32(uint64_t(t) * 2654435761ull + seed);
    const int pos = int((uint32_t((h | 1u) & (kTileElems - 1)) * uint32_t(j) + (h >> 16)) & (kTileElems - 1));
    locations[i] = uint16_t(swizzle(pos / kTileK, pos % kTileK));
    values[i] = random_value(uint64_t(i), seed ^ 0x5bd1e995u, bf16);
  }
}

// Bitmap with exactly `bits` set bits in every 8 x 8 block (a run of `bits` ones rotated by a hashed
// amount: scattered over the block, same count everywhere, so every tile holds 128 * bits values and
// tile t starts at t * 128 * bits). index: tiles * kBitmapWordsPerTile words (header: slab offsets).
__global__ void fill_bitmap_index(uint32_t* index, int64_t tiles, int bits, uint32_t seed) {
  const int64_t total = tiles * kBitmapWordsPerTile;
  const uint64_t run = bits >= 64 ? ~0ull : (uint64_t(1) << bits) - 1;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / kBitmapWordsPerTile;
    const int w = int(i % kBitmapWordsPerTile);
    if (w < kBitmapHeaderWords) {
      index[i] = w < kSlabsPerTile ? uint32_t(w * kBlocksPerSlab * bits) : 0u;
      continue;
    }
    const int b = (w - kBitmapHeaderWords) / 2;
    const int rot = int(mix32(uint64_t(t) * kBlocksPerTile + b + seed) & 63u);
    const uint64_t word = rot == 0 ? run : (run << rot) | (run >> (64 - rot));
    index[i] = (w - kBitmapHeaderWords) % 2 == 0 ? uint32_t(word) : uint32_t(word >> 32);
  }
}

// Set bits per 8 x 8 block for a target sparsity (a multiple of 8 values per tile automatically).
inline int bitmap_bits_per_block(double sparsity) {
  const int bits = int((1.0 - sparsity) * kBlockElems + 0.5);
  return bits < 1 ? 1 : (bits > kBlockElems ? kBlockElems : bits);
}

inline unsigned grid_for(int64_t count) {
  const int64_t blocks = (count + 255) / 256;
  return unsigned(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096);
}

// Entries per tile for a target sparsity: round to the format's alignment, at least one vector.
inline int entries_per_tile(double sparsity) {
  int c = int((1.0 - sparsity) * kTileElems + 0.5) / kNnzAlign * kNnzAlign;
  return c < kNnzAlign ? kNnzAlign : c;
}

}  // namespace harness
}  // namespace flashllm
