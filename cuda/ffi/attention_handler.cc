// XLA FFI handler "flashllm_attention_cpu": check the buffers' shapes and dtypes, run the fused CPU
// attention kernel (cuda/cpu/attention_cpu.h).
#include <string>

#include "cpu/attention_cpu.h"
#include "ffi/cpu_handler.h"
#include "ffi/spmm_checks.h"

namespace ffi = xla::ffi;

namespace flashllm {
namespace {

bool to_dtype(ffi::DataType t, cpu::Dtype* out) {
  switch (t) {
    case ffi::F32: *out = cpu::Dtype::kFloat32; return true;
    case ffi::BF16: *out = cpu::Dtype::kBFloat16; return true;
    case ffi::F16: *out = cpu::Dtype::kFloat16; return true;
    default: return false;
  }
}

// "" when q (B, T, H, D), k (B, H, D, S), v (B, H, S, D), bias (B | 1, 1, T, S) float32 and y like q agree.
std::string check_attention_buffers(const ffi::AnyBuffer& q, const ffi::AnyBuffer& k, const ffi::AnyBuffer& v,
                                    const ffi::AnyBuffer& bias, const ffi::AnyBuffer& y) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions(), bd = bias.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4 || bd.size() != 4)
    return "q, k, v and bias must be 4-D";
  const int64_t b = qd[0], t = qd[1], h = qd[2], d = qd[3], s = kd[3];
  if (kd[0] != b || kd[1] != h || kd[2] != d)
    return "k must be (B, H, D, S) for q " + dims_str(qd) + ", got " + dims_str(kd);
  if (vd[0] != b || vd[1] != h || vd[2] != s || vd[3] != d)
    return "v must be (B, H, S, D) = (" + std::to_string(b) + ", " + std::to_string(h) + ", " + std::to_string(s) +
           ", " + std::to_string(d) + "), got " + dims_str(vd);
  if ((bd[0] != b && bd[0] != 1) || bd[1] != 1 || bd[2] != t || bd[3] != s)
    return "bias must be (B or 1, 1, T, S), got " + dims_str(bd);
  if (bias.element_type() != ffi::F32) return "bias must be float32";
  if (k.element_type() != v.element_type()) return "k and v must share one dtype";
  if (y.element_type() != q.element_type() || y.dimensions().size() != 4) return "y must be like q";
  for (int i = 0; i < 4; ++i)
    if (y.dimensions()[i] != qd[i]) return "y must be like q";
  return {};
}

ffi::Error FlashllmAttentionCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                                    ffi::AnyBuffer bias, ffi::Result<ffi::AnyBuffer> y) {
  if (std::string why = check_attention_buffers(q, k, v, bias, *y); !why.empty())
    return ffi::Error::InvalidArgument("flashllm_attention_cpu: " + why);
  cpu::Dtype q_dtype, kv_dtype;
  if (!to_dtype(q.element_type(), &q_dtype) || !to_dtype(k.element_type(), &kv_dtype))
    return ffi::Error::InvalidArgument("flashllm_attention_cpu: q, k and v must be float32, bfloat16 or float16");
  const auto qd = q.dimensions();
  const cpu::AttentionProblem p{q.untyped_data(), k.untyped_data(), v.untyped_data(),
                                static_cast<const float*>(bias.untyped_data()), y->untyped_data(),
                                qd[0], qd[1], qd[2], qd[3], k.dimensions()[3],
                                bias.dimensions()[0] != qd[0], q_dtype, kv_dtype};
  cpu::attention(p, pool_workers(pool), pool_scheduler(pool));
  return ffi::Error::Success();
}

}  // namespace
}  // namespace flashllm

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlashllmAttentionCpu, flashllm::FlashllmAttentionCpuImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // q (B, T, H, D), scaled
                                  .Arg<ffi::AnyBuffer>()  // k (B, H, D, S)
                                  .Arg<ffi::AnyBuffer>()  // v (B, H, S, D)
                                  .Arg<ffi::AnyBuffer>()  // bias (B | 1, 1, T, S) float32
                                  .Ret<ffi::AnyBuffer>());  // y (B, T, H, D), q's dtype
