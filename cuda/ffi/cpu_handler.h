#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <utility>

#include "cpu/parallel.h"
#include "xla/ffi/api/ffi.h"

XLA_FFI_DECLARE_HANDLER_SYMBOL(FlashllmSpmmCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FlashllmAttentionCpu);

namespace flashllm {

// XLA's intra-op thread pool as the CPU kernels see it: a worker count and a Scheduler. The pool is the
// handler's argument; the kernels return only after every scheduled task has run, so the reference stays valid.
inline int64_t pool_workers(xla::ffi::ThreadPool& pool) { return std::max<int64_t>(1, pool.num_threads()); }

inline cpu::Scheduler pool_scheduler(xla::ffi::ThreadPool& pool) {
  return [&pool](std::function<void()> task) { pool.Schedule(std::move(task)); };
}

}  // namespace flashllm
