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
// (values, <a format's index>, tile_offsets), else what is wrong; the index is the format's to check.
// Sets n on success.
inline std::string check_spmm_operands(const xla::ffi::AnyBuffer& x, const xla::ffi::AnyBuffer& values,
                                       const xla::ffi::Buffer<xla::ffi::S32>& tile_offsets,
                                       const xla::ffi::AnyBuffer& y, int64_t m, int64_t k, int64_t& n) {
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
  if (int64_t(values.element_count()) > kIntMax - kTileElems) return "too many stored entries for int32 indexing";
  return {};
}

// check_spmm_operands for Tiled-CSL, whose index is one uint16 location per value.
inline std::string check_spmm_buffers(const xla::ffi::AnyBuffer& x, const xla::ffi::AnyBuffer& values,
                                      const xla::ffi::Buffer<xla::ffi::U16>& locations,
                                      const xla::ffi::Buffer<xla::ffi::S32>& tile_offsets,
                                      const xla::ffi::AnyBuffer& y, int64_t m, int64_t k, int64_t& n) {
  if (std::string why = check_spmm_operands(x, values, tile_offsets, y, m, k, n); !why.empty()) return why;
  if (values.element_count() != locations.element_count()) return "values and locations differ in length";
  return {};
}

}  // namespace flashllm
