// Python module jax_flashllm._flashllm_cuda: the CUDA FFI target "flashllm_spmm_cuda".
#include <nanobind/nanobind.h>

#include "ffi/cuda_handler.h"

namespace nb = nanobind;

NB_MODULE(_flashllm_cuda, m) {
  m.def("registrations", [] {
    nb::dict d;
    d["flashllm_spmm_cuda"] = nb::capsule(reinterpret_cast<void*>(FlashllmSpmmCuda));
    return d;
  });
}
