// XLA FFI handler "flashllm_spmm_cuda": unpack and check buffers, launch the SpMM kernel (and the
// split-K reduce) on XLA's stream, report launch errors. Command-buffer compatible: it only
// enqueues kernels — no allocation (the split-K workspace is a result sized by the primitive's
// shape rule), no synchronization, no host reads of device data.
#include "ffi/cuda_handler.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <string>

#include "flashllm/format.h"
#include "kernel/launcher.cuh"

namespace ffi = xla::ffi;

namespace flashllm {
namespace {

std::string dims_str(ffi::AnyBuffer::Dimensions d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + ")";
}

ffi::Error invalid(const std::string& what) {
  return ffi::Error::InvalidArgument("flashllm_spmm_cuda: " + what);
}

ffi::Error FlashllmSpmmCudaImpl(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer values,
                                ffi::Buffer<ffi::U16> locations,
                                ffi::Buffer<ffi::S32> tile_offsets, ffi::Result<ffi::AnyBuffer> y,
                                ffi::Result<ffi::AnyBuffer> workspace, int64_t m, int64_t k,
                                int64_t split_k) {
  const auto dtype = x.element_type();
  if (dtype != ffi::F16 && dtype != ffi::BF16) return invalid("x must be float16 or bfloat16");
  if (values.element_type() != dtype || y->element_type() != dtype)
    return invalid("x, values and y must share one dtype");
  const auto xd = x.dimensions();
  if (xd.size() != 2 || xd[1] != k)
    return invalid("x must be (N, " + std::to_string(k) + "), got " + dims_str(xd));
  const int64_t n = xd[0];
  const auto yd = y->dimensions();
  if (yd.size() != 2 || yd[0] != n || yd[1] != m)
    return invalid("y must be (N, M), got " + dims_str(yd));
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  if (m < 0 || k < 0 || m > kIntMax - kTileM || k > kIntMax - kTileK || n > kIntMax)
    return invalid("M, K and N must fit in int32");
  const int64_t m_tiles = (m + kTileM - 1) / kTileM;
  const int64_t k_tiles = (k + kTileK - 1) / kTileK;
  if (int64_t(tile_offsets.element_count()) != m_tiles * k_tiles + 1)
    return invalid("tile_offsets must have " + std::to_string(m_tiles * k_tiles + 1) + " entries");
  if (values.element_count() != locations.element_count())
    return invalid("values and locations differ in length");
  // The kernel indexes entries with int32 (tile offsets are int32 anyway); keep a tile's worth of
  // headroom so chunk arithmetic past the last offset cannot overflow.
  if (int64_t(values.element_count()) > kIntMax - kTileElems)
    return invalid("too many stored entries for int32 indexing");
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
  p.locations = locations.typed_data();
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
                                  .Arg<ffi::Buffer<ffi::U16>>()  // locations (P,)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // tile_offsets (T + 1,)
                                  .Ret<ffi::AnyBuffer>()         // y (N, M)
                                  .Ret<ffi::AnyBuffer>()         // workspace (split_k * N * M_pad,) f32
                                  .Attr<int64_t>("m")
                                  .Attr<int64_t>("k")
                                  .Attr<int64_t>("split_k"),
                              {xla::ffi::Traits::kCmdBufferCompatible});
