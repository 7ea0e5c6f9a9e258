// Python module jax_flashllm._flashllm_cpu: the CPU FFI target and the format constants as compiled.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/vector.h>

#include <vector>

#include "cpu/attention_cpu.h"
#include "cpu/spmm_cpu.h"
#include "ffi/cpu_handler.h"
#include "flashllm/format.h"

namespace nb = nanobind;

NB_MODULE(_flashllm_cpu, m) {
  m.def("registrations", [] {
    nb::dict d;
    d["flashllm_spmm_cpu"] = nb::capsule(reinterpret_cast<void*>(FlashllmSpmmCpu));
    d["flashllm_attention_cpu"] = nb::capsule(reinterpret_cast<void*>(FlashllmAttentionCpu));
    return d;
  });
  // Instruction-set variant of the CPU kernel: tests and benchmarks run each one (cuda/cpu/spmm_cpu.h).
  m.def("cpu_isa", [] { return std::string(flashllm::cpu::isa_name(flashllm::cpu::active_isa())); });
  m.def("cpu_isas", [] {
    std::vector<std::string> names;
    for (auto isa : flashllm::cpu::supported_isas()) names.push_back(flashllm::cpu::isa_name(isa));
    return names;
  });
  // Every variant built, with why this CPU cannot run it ("" if it can): tests skip with the reason.
  m.def("cpu_isas_built", [] { return flashllm::cpu::all_isas(); });
  m.def("set_cpu_isa", [](const std::string& name) { return flashllm::cpu::set_active_isa(name); });
  // The bias value the attention kernel skips as masked, for the test that mask_bias writes it.
  m.def("attention_masked_bias", [] { return flashllm::cpu::kMaskedBias; });
  // The format ids (flashllm/format.h) this build's CPU kernel takes, so Python can tell what it supports.
  m.def("formats", [] { return flashllm::cpu::supported_formats(); });
  // Exposed so tests can check the Python encoder's mirror against what the kernels were built with.
  m.def("format_constants", [] {
    nb::dict d;
    d["FORMAT_VERSION"] = flashllm::kFormatVersion;
    d["FORMAT_TILED_CSL"] = flashllm::kFormatTiledCsl;
    d["FORMAT_BITMAP"] = flashllm::kFormatBitmap;
    d["FORMAT_DENSE"] = flashllm::kFormatDense;
    d["BITMAP_WORDS_PER_TILE"] = flashllm::kBitmapWordsPerTile;
    d["TILE_M"] = flashllm::kTileM;
    d["TILE_K"] = flashllm::kTileK;
    d["NNZ_ALIGN"] = flashllm::kNnzAlign;
    d["CHUNK_ELEMS"] = flashllm::kChunkElems;
    d["SWIZZLE_ROWS"] = flashllm::kSwizzleRows;
    d["BLOCK_ROWS"] = flashllm::kBlockRows;
    d["BLOCK_COLS"] = flashllm::kBlockCols;
    d["BLOCKS_PER_TILE"] = flashllm::kBlocksPerTile;
    d["SLAB_ROWS"] = flashllm::kSlabRows;
    d["K_STEP"] = flashllm::kKStep;
    d["FRAG_ROWS"] = flashllm::kFragRows;
    d["BLOCKS_PER_FRAG"] = flashllm::kBlocksPerFrag;
    d["BITMAP_HEADER_WORDS"] = flashllm::kBitmapHeaderWords;
    return d;
  });
  // The bitmap/dense value order as compiled: entry i = row-major tile position of the i-th value.
  m.def("bitmap_block_order", [] {
    std::vector<int> order;
    order.reserve(flashllm::kTileElems);
    for (int b = 0; b < flashllm::kBlocksPerTile; ++b)
      for (int bit = 0; bit < flashllm::kBlockElems; ++bit) {
        const int row = flashllm::bitmap_block_row(b) + bit / flashllm::kBlockCols;
        const int col = flashllm::bitmap_block_col(b) + bit % flashllm::kBlockCols;
        // An inverse that disagrees returns an empty order, which the test reports.
        if (flashllm::bitmap_block_index(row, col) != b || flashllm::bitmap_bit(row, col) != bit) return std::vector<int>{};
        order.push_back(row * flashllm::kTileK + col);
      }
    return order;
  });
  m.def("swizzle_table", [] {
    std::vector<int> t(flashllm::kTileElems);
    for (int r = 0; r < flashllm::kTileM; ++r)
      for (int c = 0; c < flashllm::kTileK; ++c) t[r * flashllm::kTileK + c] = flashllm::swizzle(r, c);
    return t;
  });
}
