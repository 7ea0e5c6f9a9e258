// Python module jax_flashllm._flashllm_cpu: the CPU FFI target and the format constants as compiled.
#include <nanobind/nanobind.h>
#include <nanobind/stl/vector.h>

#include <vector>

#include "ffi/cpu_handler.h"
#include "flashllm/format.h"

namespace nb = nanobind;

NB_MODULE(_flashllm_cpu, m) {
  m.def("registrations", [] {
    nb::dict d;
    d["flashllm_spmm_cpu"] = nb::capsule(reinterpret_cast<void*>(FlashllmSpmmCpu));
    return d;
  });
  // Exposed so tests can check the Python encoder's mirror against what the kernels were built with.
  m.def("format_constants", [] {
    nb::dict d;
    d["FORMAT_VERSION"] = flashllm::kFormatVersion;
    d["TILE_M"] = flashllm::kTileM;
    d["TILE_K"] = flashllm::kTileK;
    d["NNZ_ALIGN"] = flashllm::kNnzAlign;
    d["CHUNK_ELEMS"] = flashllm::kChunkElems;
    d["SWIZZLE_ROWS"] = flashllm::kSwizzleRows;
    return d;
  });
  m.def("swizzle_table", [] {
    std::vector<int> t(flashllm::kTileElems);
    for (int r = 0; r < flashllm::kTileM; ++r)
      for (int c = 0; c < flashllm::kTileK; ++c) t[r * flashllm::kTileK + c] = flashllm::swizzle(r, c);
    return t;
  });
}
