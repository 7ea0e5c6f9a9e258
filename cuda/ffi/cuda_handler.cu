// XLA FFI handler "flashllm_spmm_cuda": unpack and check buffers, launch the SpMM kernel (and the
// split-K reduce) on XLA's stream, report launch errors. Command-buffer compatible: it only
// enqueues kernels — no allocation (the split-K workspace is a result sized by the primitive's
// shape rule), no synchronization, no host reads of device data.
#include "ffi/cuda_handler.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "ffi/spmm_checks.h"
#include "flashllm/format.h"
#include "kernel/launcher.cuh"

namespace ffi = xla::ffi;

namespace flashllm {
namespace {

ffi::Error invalid(const std::string& what) {
  return ffi::Error::InvalidArgument("flashllm_spmm_cuda: " + what);
}

ffi::Error FlashllmSpmmCudaImpl(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer values,
                                ffi::AnyBuffer index,
                                ffi::Buffer<ffi::S32> tile_offsets, ffi::Result<ffi::AnyBuffer> y,
                                ffi::Result<ffi::AnyBuffer> workspace, int64_t m, int64_t k,
                                int64_t split_k, int64_t format) {
  int64_t n = 0;
  if (std::string why = check_spmm_buffers(x, values, index, tile_offsets, *y, m, k, format, n); !why.empty())
    return invalid(why);
  if (format != kFormatTiledCsl)
    return invalid("format " + std::to_string(format) + " is not implemented by this CUDA kernel build");
  const auto dtype = x.element_type();
  const int64_t m_tiles = (m + kTileM - 1) / kTileM;
  // split_k comes from jax_flashllm._tiling.choose_split_k at trace time; trust it, but make sure
  // the workspace the shape rule allocated matches it.
  if (split_k < 1 || split_k > 65535) return invalid("split_k must be in [1, 65535]");
  if (split_k > 1) {
    if (workspace->element_type() != ffi::F32) return invalid("workspace must be float32");
    const int64_t need = split_k * n * (m_tiles * kTileM);
    if (int64_t(workspace->element_count()) != need)
      return invalid("workspace must have split_k * N * M_pad = " + std::to_string(need) +
                     " elements, got " + std::to_string(workspace->element_count()));
  }

  SpmmParams p{};
  p.x = static_cast<const uint16_t*>(x.untyped_data());
  p.values = static_cast<const uint16_t*>(values.untyped_data());
  p.locations = static_cast<const uint16_t*>(index.untyped_data());
  p.tile_offsets = tile_offsets.typed_data();
  p.y = static_cast<uint16_t*>(y->untyped_data());
  p.workspace = split_k > 1 ? static_cast<float*>(workspace->untyped_data()) : nullptr;
  p.nnz_padded = int64_t(values.element_count());
  p.n = int(n);
  p.m = int(m);
  p.k = int(k);
  p.split_k = int(split_k);
  finalize_params(p);
  const Dtype kdtype = dtype == ffi::BF16 ? Dtype::kBfloat16 : Dtype::kFloat16;
  const std::string err = launch_spmm(p, kdtype, /*config=*/-1, stream);
  if (!err.empty()) return ffi::Error::Internal("flashllm_spmm_cuda: " + err);
  return ffi::Error::Success();
}

}  // namespace
}  // namespace flashllm

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlashllmSpmmCuda, flashllm::FlashllmSpmmCudaImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()         // x (N, K)
                                  .Arg<ffi::AnyBuffer>()         // values (P,)
                                  .Arg<ffi::AnyBuffer>()         // index (per format)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // tile_offsets (T + 1,)
                                  .Ret<ffi::AnyBuffer>()         // y (N, M)
                                  .Ret<ffi::AnyBuffer>()         // workspace (split_k * N * M_pad,) f32
                                  .Attr<int64_t>("m")
                                  .Attr<int64_t>("k")
                                  .Attr<int64_t>("split_k")
                                  .Attr<int64_t>("format"),      // format id (format.h)
                              {xla::ffi::Traits::kCmdBufferCompatible});
