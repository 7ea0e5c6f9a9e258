// XLA FFI handler "flashllm_spmm_cpu": unpack and check buffers, run the CPU kernel, report errors.
#include "ffi/cpu_handler.h"

#include <string>

#include "cpu/spmm_cpu.h"
#include "flashllm/format.h"

namespace ffi = xla::ffi;

namespace flashllm {
namespace {

std::string dims_str(ffi::AnyBuffer::Dimensions d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + ")";
}

ffi::Error FlashllmSpmmCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer values,
                               ffi::Buffer<ffi::U16> locations, ffi::Buffer<ffi::S32> tile_offsets,
                               ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> workspace,
                               int64_t m, int64_t k, int64_t split_k) {
  (void)workspace;  // split-K is a GPU strategy; the CPU kernel parallelizes over tile rows.
  (void)split_k;
  const auto dtype = x.element_type();
  if (dtype != ffi::F16 && dtype != ffi::BF16)
    return ffi::Error::InvalidArgument("flashllm_spmm: x must be float16 or bfloat16");
  if (values.element_type() != dtype || y->element_type() != dtype)
    return ffi::Error::InvalidArgument("flashllm_spmm: x, values and y must share one dtype");
  const auto xd = x.dimensions();
  if (xd.size() != 2 || xd[1] != k)
    return ffi::Error::InvalidArgument("flashllm_spmm: x must be (N, " + std::to_string(k) + "), got " +
                                       dims_str(xd));
  const int64_t n = xd[0];
  const auto yd = y->dimensions();
  if (yd.size() != 2 || yd[0] != n || yd[1] != m)
    return ffi::Error::InvalidArgument("flashllm_spmm: y must be (N, M), got " + dims_str(yd));
  const int64_t tiles = ((m + kTileM - 1) / kTileM) * ((k + kTileK - 1) / kTileK);
  if (int64_t(tile_offsets.element_count()) != tiles + 1)
    return ffi::Error::InvalidArgument("flashllm_spmm: tile_offsets must have " + std::to_string(tiles + 1) +
                                       " entries");
  if (values.element_count() != locations.element_count())
    return ffi::Error::InvalidArgument("flashllm_spmm: values and locations differ in length");

  cpu::SpmmProblem p{static_cast<const uint16_t*>(x.untyped_data()),
                     static_cast<const uint16_t*>(values.untyped_data()),
                     locations.typed_data(),
                     tile_offsets.typed_data(),
                     static_cast<uint16_t*>(y->untyped_data()),
                     m, k, n,
                     int64_t(values.element_count()),
                     dtype == ffi::BF16 ? cpu::Dtype::kBFloat16 : cpu::Dtype::kFloat16};
  if (std::string why = cpu::check_problem(p); !why.empty())
    return ffi::Error::InvalidArgument("flashllm_spmm: malformed SparseMatrix: " + why);
  const int64_t workers = std::max<int64_t>(1, pool.num_threads());
  cpu::spmm(p, workers, [&pool](std::function<void()> task) { pool.Schedule(std::move(task)); });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace flashllm

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlashllmSpmmCpu, flashllm::FlashllmSpmmCpuImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()         // x (N, K)
                                  .Arg<ffi::AnyBuffer>()         // values (P,)
                                  .Arg<ffi::Buffer<ffi::U16>>()  // locations (P,)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // tile_offsets (T + 1,)
                                  .Ret<ffi::AnyBuffer>()         // y (N, M)
                                  .Ret<ffi::AnyBuffer>()         // split-K workspace (unused on CPU)
                                  .Attr<int64_t>("m")
                                  .Attr<int64_t>("k")
                                  .Attr<int64_t>("split_k"));
