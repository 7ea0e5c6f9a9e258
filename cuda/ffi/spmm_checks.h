// Buffer checks shared by the CPU and CUDA handlers of flashllm_spmm: everything that can be known
// from shapes and dtypes alone (the CUDA handler can read no device data; the CPU one checks the tile
// offsets' values too, in the kernel's check_problem).
#pragma once

#include <cstdint>
#include <limits>
#include <string>

#include "flashllm/format.h"
#include "xla/ffi/api/ffi.h"

namespace flashllm {

inline std::string dims_str(xla::ffi::AnyBuffer::Dimensions d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + ")";
}

// Returns "" when y (N, M) = x (N, K) @ W^T is well-formed for W of logical shape (m, k) stored in
// format `format` as (values, index, tile_offsets), else what is wrong. Sets n on success. The index
// is per format: Tiled-CSL uint16 (P,), bitmap uint32 (T * kBitmapWordsPerTile,), dense uint32 (0,).
inline std::string check_spmm_buffers(const xla::ffi::AnyBuffer& x, const xla::ffi::AnyBuffer& values,
                                      const xla::ffi::AnyBuffer& index,
                                      const xla::ffi::Buffer<xla::ffi::S32>& tile_offsets,
                                      const xla::ffi::AnyBuffer& y, int64_t m, int64_t k, int64_t format,
                                      int64_t& n) {
  namespace ffi = xla::ffi;
  const auto dtype = x.element_type();
  if (dtype != ffi::F16 && dtype != ffi::BF16) return "x must be float16 or bfloat16";
  if (values.element_type() != dtype || y.element_type() != dtype)
    return "x, values and y must share one dtype";
  const auto xd = x.dimensions();
  if (xd.size() != 2 || xd[1] != k) return "x must be (N, " + std::to_string(k) + "), got " + dims_str(xd);
  n = xd[0];
  const auto yd = y.dimensions();
  if (yd.size() != 2 || yd[0] != n || yd[1] != m) return "y must be (N, M), got " + dims_str(yd);
  // Kernels index rows, columns and entries with int32; keep a tile of headroom for chunk arithmetic.
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  if (m < 1 || k < 1 || m > kIntMax - kTileM || k > kIntMax - kTileK || n > kIntMax)
    return "M, K must be >= 1 and M, K, N must fit in int32";
  const int64_t tiles = ((m + kTileM - 1) / kTileM) * ((k + kTileK - 1) / kTileK);
  if (int64_t(tile_offsets.element_count()) != tiles + 1)
    return "tile_offsets must have " + std::to_string(tiles + 1) + " entries";
  const int64_t count = int64_t(index.element_count());
  if (format == kFormatTiledCsl) {
    if (index.element_type() != ffi::U16) return "a Tiled-CSL index (locations) must be uint16";
    if (count != int64_t(values.element_count())) return "values and locations differ in length";
  } else if (format == kFormatBitmap) {
    if (index.element_type() != ffi::U32) return "a bitmap index must be uint32";
    if (count != tiles * kBitmapWordsPerTile)
      return "a bitmap index must have " + std::to_string(tiles * kBitmapWordsPerTile) + " words";
  } else if (format == kFormatDense) {
    if (index.element_type() != ffi::U32 || count != 0) return "a dense-format index must be empty uint32";
    if (int64_t(values.element_count()) != tiles * kTileElems)
      return "a dense-format weight must have " + std::to_string(tiles * kTileElems) + " values";
  } else {
    return "unknown format id " + std::to_string(format);
  }
  if (int64_t(values.element_count()) > kIntMax - kTileElems) return "too many stored entries for int32 indexing";
  return {};
}

}  // namespace flashllm
