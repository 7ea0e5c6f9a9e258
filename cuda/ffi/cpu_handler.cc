// XLA FFI handler "flashllm_spmm_cpu": unpack and check buffers, run the CPU kernel for the matrix's
// format, report errors.
#include "ffi/cpu_handler.h"

#include <string>

#include "cpu/spmm_cpu.h"
#include "ffi/spmm_checks.h"

namespace ffi = xla::ffi;

namespace flashllm {
namespace {

ffi::Error FlashllmSpmmCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer values,
                               ffi::AnyBuffer index, ffi::Buffer<ffi::S32> tile_offsets,
                               ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> workspace,
                               int64_t m, int64_t k, int64_t split_k, int64_t format) {
  (void)workspace;  // split-K is a GPU strategy; the CPU kernel parallelizes over tile rows.
  (void)split_k;
  int64_t n = 0;
  if (std::string why = check_spmm_buffers(x, values, index, tile_offsets, *y, m, k, format, n); !why.empty())
    return ffi::Error::InvalidArgument("flashllm_spmm_cpu: " + why);
  const auto dtype = x.element_type();

  cpu::SpmmProblem p{static_cast<const uint16_t*>(x.untyped_data()),
                     static_cast<const uint16_t*>(values.untyped_data()),
                     format == kFormatTiledCsl ? static_cast<const uint16_t*>(index.untyped_data()) : nullptr,
                     format == kFormatBitmap ? static_cast<const uint32_t*>(index.untyped_data()) : nullptr,
                     tile_offsets.typed_data(),
                     static_cast<uint16_t*>(y->untyped_data()),
                     m, k, n,
                     int64_t(values.element_count()),
                     int64_t(index.element_count()),
                     dtype == ffi::BF16 ? cpu::Dtype::kBFloat16 : cpu::Dtype::kFloat16,
                     int(format)};
  if (std::string bad = cpu::check_problem(p); !bad.empty())
    return ffi::Error::InvalidArgument("flashllm_spmm_cpu: malformed SparseMatrix: " + bad);
  if (std::string bad = cpu::spmm(p, pool_workers(pool), pool_scheduler(pool)); !bad.empty())
    return ffi::Error::InvalidArgument("flashllm_spmm_cpu: malformed SparseMatrix: " + bad);
  return ffi::Error::Success();
}

}  // namespace
}  // namespace flashllm

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlashllmSpmmCpu, flashllm::FlashllmSpmmCpuImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()         // x (N, K)
                                  .Arg<ffi::AnyBuffer>()         // values (P,)
                                  .Arg<ffi::AnyBuffer>()         // index: locations (P,) u16 | bitmap (T * 260,) u32 | (0,) u32
                                  .Arg<ffi::Buffer<ffi::S32>>()  // tile_offsets (T + 1,)
                                  .Ret<ffi::AnyBuffer>()         // y (N, M)
                                  .Ret<ffi::AnyBuffer>()         // split-K workspace (unused on CPU)
                                  .Attr<int64_t>("m")
                                  .Attr<int64_t>("k")
                                  .Attr<int64_t>("split_k")
                                  .Attr<int64_t>("format"));      // format id (flashllm/format.h)
