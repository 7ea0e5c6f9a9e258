// Arguments of one SpMM launch, shared by the kernel body, the launcher, the FFI handler and the
// emulation entry. Plain data so it can be passed by value to a kernel (and to the emulator).
#pragma once

#include <cstdint>

#include "flashllm/format.h"

namespace flashllm {

struct SpmmParams {
  const uint16_t* x;             // (n, k) row-major, 16-bit bits of the matrix dtype
  const uint16_t* values;        // (nnz_padded,)
  const uint16_t* locations;     // (nnz_padded,) swizzled offsets inside a 128 x 64 tile (Tiled-CSL)
  const uint32_t* bitmaps;       // (index_words,) per-tile bitmap index (bitmap format, format.h)
  const int32_t* tile_offsets;   // (m_tiles * k_tiles + 1,), row-major tile order
  uint16_t* y;                   // (n, m) row-major
  float* workspace;              // (split_k, n, m_pad) fp32 partials; unused when split_k == 1
  uint32_t* splitk_counters;     // per output tile: splits that stored their partial (splitk.cuh)
  int64_t nnz_padded;            // entries in values / locations (loads never go past it)
  int64_t index_words;           // entries in bitmaps (loads never go past it)
  int format = kFormatTiledCsl;  // kFormatTiledCsl | kFormatBitmap | kFormatDense (format.h)
  int n, m, k;
  int m_tiles, k_tiles;          // ceil(m / kTileM), ceil(k / kTileK)
  int m_pad;                     // m_tiles * kTileM: row stride of the workspace
  int split_k;                   // >= 1; blocks along grid.z split the K tiles evenly
  bool x_vec_ok;                 // x rows are 16-byte aligned: X tiles stream with cp.async
};

}  // namespace flashllm
