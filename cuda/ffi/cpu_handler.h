#pragma once

#include "xla/ffi/api/ffi.h"

XLA_FFI_DECLARE_HANDLER_SYMBOL(FlashllmSpmmCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FlashllmAttentionCpu);
