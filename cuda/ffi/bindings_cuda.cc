// Python module jax_flashllm._flashllm_cuda: the CUDA FFI target "flashllm_spmm_cuda".
#include <nanobind/nanobind.h>
#include <nanobind/stl/vector.h>

#include <vector>

#include "flashllm/format.h"

#include "ffi/cuda_handler.h"

namespace nb = nanobind;

NB_MODULE(_flashllm_cuda, m) {
  // The format ids the CUDA kernel multiplies (launch_spmm dispatches on each).
  m.def("formats", [] {
    return std::vector<int>{flashllm::kFormatTiledCsl, flashllm::kFormatBitmap, flashllm::kFormatDense};
  });
  m.def("registrations", [] {
    nb::dict d;
    d["flashllm_spmm_cuda"] = nb::capsule(reinterpret_cast<void*>(FlashllmSpmmCuda));
    return d;
  });
}
