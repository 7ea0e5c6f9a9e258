// Emulated launch of the CUDA SpMM kernel: the same launcher and kernel source as the CUDA build,
// compiled for the host with FLASHLLM_EMU. Adds `spmm` and `spmm_configs` to the _flashllm_emu
// module (called by the emulation bindings).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <cmath>
#include <cstring>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "../kernel/bitmap_launch.cuh"
#include "../kernel/dispatch.cuh"
#include "../kernel/launch_impl.cuh"
#include "py_util.h"

namespace nb = nanobind;

namespace flashllm {
namespace {

template <class T>
using Vec = nb::ndarray<const T, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Mat16 = nb::ndarray<const uint16_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
// The format's index: uint16 locations (Tiled-CSL), uint32 bitmap words (bitmap), empty (dense).
using Index = nb::ndarray<nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// Copy of a host array at a 256-byte boundary, like a CUDA / XLA device buffer, so that the
// emulator's 32-byte sector counts do not depend on where numpy happened to allocate.
template <class T>
class AlignedCopy {
 public:
  AlignedCopy(const T* src, size_t count) : storage_(count * sizeof(T) + 256 + 16) {
    const uintptr_t base = reinterpret_cast<uintptr_t>(storage_.data());
    data_ = reinterpret_cast<T*>((base + 255) & ~uintptr_t{255});
    if (count) std::memcpy(data_, src, count * sizeof(T));
  }
  const T* data() const { return data_; }

 private:
  std::vector<unsigned char> storage_;
  T* data_;
};

Dtype parse_dtype(const std::string& name) {
  if (name == "float16") return Dtype::kFloat16;
  if (name == "bfloat16") return Dtype::kBfloat16;
  throw std::invalid_argument("spmm: dtype must be 'float16' or 'bfloat16', got '" + name + "'");
}

nb::tuple spmm(Vec<uint16_t> values, Index index, Vec<int32_t> tile_offsets, Mat16 x, int m, int k,
               const std::string& dtype_name, int split_k, int config, int format) {
  const Dtype dtype = parse_dtype(dtype_name);
  if (m < 0 || k < 0) throw std::invalid_argument("spmm: m and k must be >= 0");
  if (split_k < 1) throw std::invalid_argument("spmm: split_k must be >= 1");
  if (config < -1 || config >= kNumConfigs) throw std::invalid_argument("spmm: unknown config");
  if (int64_t(x.shape(1)) != k) throw std::invalid_argument("spmm: x must have shape (N, k)");
  const size_t nnz = values.shape(0), index_len = index.shape(0);
  if (format == kFormatTiledCsl) {
    if (index.dtype() != nb::dtype<uint16_t>() || index_len != nnz)
      throw std::invalid_argument("spmm: Tiled-CSL locations must be uint16 of values' length");
  } else if (format == kFormatBitmap) {
    if (index.dtype() != nb::dtype<uint32_t>())
      throw std::invalid_argument("spmm: the bitmap index must be uint32");
  } else if (format != kFormatDense) {
    throw std::invalid_argument("spmm: unknown format id " + std::to_string(format));
  }

  const AlignedCopy<uint16_t> x_copy(x.data(), x.shape(0) * x.shape(1));
  const AlignedCopy<uint16_t> values_copy(values.data(), nnz);
  const AlignedCopy<uint16_t> locations_copy(
      static_cast<const uint16_t*>(index.data()), format == kFormatTiledCsl ? index_len : 0);
  const AlignedCopy<uint32_t> bitmaps_copy(
      static_cast<const uint32_t*>(index.data()), format == kFormatBitmap ? index_len : 0);

  SpmmParams p{};
  p.format = format;
  p.x = x_copy.data();
  p.values = values_copy.data();
  p.locations = locations_copy.data();
  p.bitmaps = bitmaps_copy.data();
  p.tile_offsets = tile_offsets.data();
  p.nnz_padded = int64_t(nnz);
  p.index_words = format == kFormatBitmap ? int64_t(index_len) : 0;
  p.n = int(x.shape(0));
  p.m = m;
  p.k = k;
  p.split_k = split_k;
  finalize_params(p);
  const int64_t tiles = int64_t(p.m_tiles) * p.k_tiles;
  if (int64_t(tile_offsets.shape(0)) != tiles + 1)
    throw std::invalid_argument("spmm: tile_offsets must have ceil(m/128)*ceil(k/64)+1 entries");

  std::vector<uint16_t> y(size_t(p.n) * size_t(m));
  // The workspace as the primitive sizes it (splitk.cuh's layout). Partials NaN-filled, so a reduce
  // that reads a partial nobody wrote (or published) shows up in the result; the counters are filled
  // with garbage, which the launch's own memset must clear.
  const int64_t ws_words = splitk_workspace_words(split_k, p.n, p.m_tiles);
  std::vector<float> workspace(size_t(ws_words), std::numeric_limits<float>::quiet_NaN());
  p.y = y.data();
  if (ws_words > 0) {
    p.workspace = workspace.data();
    p.splitk_counters =
        reinterpret_cast<uint32_t*>(workspace.data() + splitk_partial_words(split_k, p.n, p.m_pad));
  }

  std::string err;
  emu::Stats stats;
  std::vector<emu::OpStats> op_stats;
  {
    nb::gil_scoped_release release;
    emu::reset_stats();
    // Every counted global read must stay inside these exact arrays (the emulator checks).
    emu::GlobalRanges ranges;
    ranges.add(p.values, size_t(p.nnz_padded) * 2);
    if (format == kFormatTiledCsl) ranges.add(p.locations, size_t(p.nnz_padded) * 2);
    if (format == kFormatBitmap) ranges.add(p.bitmaps, size_t(p.index_words) * 4);
    ranges.add(p.x, size_t(p.n) * size_t(k) * 2);
    if (!workspace.empty()) ranges.add(workspace.data(), workspace.size() * 4);
    err = launch_spmm(p, dtype, config, nullptr);
    stats = emu::stats();
    op_stats = emu::op_stats();
  }
  if (!err.empty()) throw std::runtime_error(err);

  nb::dict stats_dict = emu::py::stats_dict(stats);
  stats_dict["ops"] = emu::py::op_stats_dict(op_stats);
  const int used = config >= 0 ? config : choose_config(p.n);
  stats_dict["config"] = kConfigTable[used].name;
  return nb::make_tuple(emu::py::to_numpy(std::move(y), {size_t(p.n), size_t(m)}), stats_dict);
}

// splitk.cuh's workspace size in float32 words, so Python can check its mirror (_tiling.workspace_size).
int64_t spmm_workspace_words(int64_t m, int64_t n, int64_t split_k) {
  return splitk_workspace_words(split_k, n, (m + kTileM - 1) / kTileM);
}

// The dispatcher's tiling table, so Python can check its mirror (jax_flashllm/_tiling.py).
nb::list spmm_configs() {
  nb::list out;
  for (const auto& c : kConfigTable) {
    nb::object max_n = c.max_n < 0 ? nb::none() : nb::cast(c.max_n);
    out.append(nb::make_tuple(c.name, max_n, c.block_m, c.block_n, c.smem_bytes, c.stage_entries,
                              c.min_blocks_per_sm));
  }
  return out;
}

// Dynamic shared memory and __launch_bounds__ blocks per SM of the bitmap / dense kernels per config
// (bitmap_traits.cuh), in the order of kConfigTable, so the ptxas test can check them.
template <class T>
nb::tuple bitmap_smem_row(const char* name) {
  return nb::make_tuple(name, BitmapTraits<T, false>::kSmemBytes, BitmapTraits<T, true>::kSmemBytes,
                        BitmapTraits<T, false>::kMinBlocksPerSm, BitmapTraits<T, true>::kMinBlocksPerSm);
}
nb::list spmm_bitmap_smem() {
  nb::list out;
  out.append(bitmap_smem_row<Traits256x16>(kConfigTable[0].name));
  out.append(bitmap_smem_row<Traits256x32>(kConfigTable[1].name));
  out.append(bitmap_smem_row<Traits128x64>(kConfigTable[2].name));
  out.append(bitmap_smem_row<Traits128x128>(kConfigTable[3].name));
  return out;
}

// flashllm/numeric.h's conversions over whole arrays, so tests can compare them bit for bit with numpy.
nb::ndarray<nb::numpy, uint16_t> round_float32(Vec<float> src, const std::string& dtype_name) {
  const Dtype dtype = parse_dtype(dtype_name);
  std::vector<uint16_t> out(src.shape(0));
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = dtype == Dtype::kFloat16 ? from_float<Fp16>(src.data()[i])
                                      : from_float<Bf16>(src.data()[i]);
  }
  return emu::py::to_numpy(std::move(out), {src.shape(0)});
}

nb::ndarray<nb::numpy, float> widen_bits(Vec<uint16_t> src, const std::string& dtype_name) {
  const Dtype dtype = parse_dtype(dtype_name);
  std::vector<float> out(src.shape(0));
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = dtype == Dtype::kFloat16 ? to_float<Fp16>(src.data()[i])
                                      : to_float<Bf16>(src.data()[i]);
  }
  return emu::py::to_numpy(std::move(out), {src.shape(0)});
}

}  // namespace

void emu_bind_spmm(nb::module_& m) {
  m.def("round_float32", &round_float32, nb::arg("x"), nb::arg("dtype"),
        "flashllm/numeric.h from_float: (P,) float32 -> (P,) uint16 bits of dtype (round to nearest even).");
  m.def("widen_bits", &widen_bits, nb::arg("bits"), nb::arg("dtype"),
        "flashllm/numeric.h to_float: (P,) uint16 bits of dtype -> (P,) float32.");
  m.def("spmm", &spmm, nb::arg("values"), nb::arg("index"), nb::arg("tile_offsets"),
        nb::arg("x"), nb::arg("m"), nb::arg("k"), nb::arg("dtype"), nb::arg("split_k") = 1,
        nb::arg("config") = -1, nb::arg("format") = int(kFormatTiledCsl),
        "Runs the CUDA SpMM kernel's source under the host emulation: y (N, m) = x (N, k) @ W^T.\n"
        "values: (P,) uint16; index: the format's (locations (P,) uint16 | bitmap words uint32 |\n"
        "empty); tile_offsets: (T+1,) int32; x: (N, k) uint16 bits of dtype; format: format id.\n"
        "Returns (y (N, m) uint16 bits, stats dict: totals, 'ops' per instruction, 'config')).");
  m.def("spmm_bitmap_smem", &spmm_bitmap_smem,
        "Bitmap and dense kernels: [(config name, smem bitmap, smem dense, min blocks/SM bitmap, dense), ...].");
  m.def("spmm_workspace_words", &spmm_workspace_words, nb::arg("m"), nb::arg("n"), nb::arg("split_k"),
        "Float32 words of the split-K workspace (partials + arrival counters) for y (n, m).");
  m.def("spmm_configs", &spmm_configs,
        "The kernel's tiling table: [(name, max_n or None, block_m, block_n, smem_bytes, "
        "stage_entries, min_blocks_per_sm), ...].");
}

}  // namespace flashllm
