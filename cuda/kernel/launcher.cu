// The dispatch (dispatch.cuh). The SpMM instantiations are declared extern here and compiled one
// per file in inst/, so this file stays small (it holds no kernel).
#include "launch_impl.cuh"

namespace flashllm {

#define FLASHLLM_EXTERN_SPMM(TRAITS)                                                     \
  extern template std::string launch_spmm_config<TRAITS, Fp16>(const SpmmParams&,        \
                                                               StreamHandle);            \
  extern template std::string launch_spmm_config<TRAITS, Bf16>(const SpmmParams&, StreamHandle);
FLASHLLM_EXTERN_SPMM(Traits256x16)
FLASHLLM_EXTERN_SPMM(Traits256x32)
FLASHLLM_EXTERN_SPMM(Traits128x64)
FLASHLLM_EXTERN_SPMM(Traits128x128)
#undef FLASHLLM_EXTERN_SPMM
#define FLASHLLM_EXTERN_BITMAP(TRAITS, DENSE)                                                  \
  extern template std::string launch_spmm_bitmap_config<TRAITS, Fp16, DENSE>(const SpmmParams&, \
                                                                             StreamHandle);     \
  extern template std::string launch_spmm_bitmap_config<TRAITS, Bf16, DENSE>(const SpmmParams&, \
                                                                             StreamHandle);
FLASHLLM_EXTERN_BITMAP(Traits256x16, false)
FLASHLLM_EXTERN_BITMAP(Traits256x32, false)
FLASHLLM_EXTERN_BITMAP(Traits128x64, false)
FLASHLLM_EXTERN_BITMAP(Traits128x128, false)
FLASHLLM_EXTERN_BITMAP(Traits256x16, true)
FLASHLLM_EXTERN_BITMAP(Traits256x32, true)
FLASHLLM_EXTERN_BITMAP(Traits128x64, true)
FLASHLLM_EXTERN_BITMAP(Traits128x128, true)
#undef FLASHLLM_EXTERN_BITMAP

}  // namespace flashllm

#include "dispatch.cuh"
