// Global memory between blocks (emu.h, detail::global_store): pending stores published by fences,
// atomics, and the order in which a launch runs its blocks (set_block_order).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>

#include "emu_state.h"

namespace flashllm {
namespace emu {
namespace detail {

BlockOrder g_block_order = BlockOrder::kLinear;
uint64_t g_block_seed = 0;

namespace {

Thread& current_thread() { return *worker().current; }

void check_aligned(const void* p, int bytes, const char* op) {
  if (reinterpret_cast<uintptr_t>(p) % uintptr_t(bytes) != 0) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "%s: address %p is not %d-byte aligned", op, p, bytes);
    fail(buf);
  }
}

void land(const PendingStore& s) { std::memcpy(s.dst, &s.data, size_t(s.bytes)); }

}  // namespace

void global_store(void* dst, const void* src, int bytes, const char* op) {
  check_aligned(dst, bytes, op);
  check_global(dst, size_t(bytes), op, lane_id());
  PendingStore s{static_cast<unsigned char*>(dst), 0, bytes};
  std::memcpy(&s.data, src, size_t(bytes));
  current_thread().pending.push_back(s);
}

void global_load(void* out, const void* src, int bytes, const char* op) {
  check_aligned(src, bytes, op);
  check_global(src, size_t(bytes), op, lane_id());
  // Acquire-strength read of memory (the fences and atomics around it are what the kernel relies
  // on; this keeps the host's own memory model out of the picture).
  std::atomic_thread_fence(std::memory_order_acquire);
  std::memcpy(out, src, size_t(bytes));
  const auto& pending = current_thread().pending;  // a thread always sees its own stores
  for (auto it = pending.rbegin(); it != pending.rend(); ++it) {
    if (it->dst == src && it->bytes == bytes) {
      std::memcpy(out, &it->data, size_t(bytes));
      break;
    }
  }
}

void global_fence() {
  auto& pending = current_thread().pending;
  for (const auto& s : pending) land(s);
  pending.clear();
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

uint32_t global_atomic_add_u32(uint32_t* p, uint32_t v, const char* op) {
  check_aligned(p, 4, op);
  check_global(p, 4, op, lane_id());
  return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}

void global_store_relaxed_u32(uint32_t* p, uint32_t v, const char* op) {
  check_aligned(p, 4, op);
  check_global(p, 4, op, lane_id());
  __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
}

void retire_pending(Worker& wk, Thread& t) {
  wk.unfenced.insert(wk.unfenced.end(), t.pending.begin(), t.pending.end());
  t.pending.clear();
}

void land_unfenced(Worker& wk) {
  for (const auto& s : wk.unfenced) land(s);
  wk.unfenced.clear();
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

std::vector<uint64_t> block_permutation(uint64_t nblocks) {
  BlockOrder order;
  uint64_t seed;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    order = g_block_order;
    seed = g_block_seed;
  }
  std::vector<uint64_t> perm;
  if (order == BlockOrder::kLinear) return perm;
  perm.resize(nblocks);
  std::iota(perm.begin(), perm.end(), uint64_t{0});
  if (order == BlockOrder::kReverse) {
    std::reverse(perm.begin(), perm.end());
  } else {
    // Fisher-Yates with our own draws: std::shuffle's sequence differs between standard libraries.
    std::mt19937_64 rng(seed);
    for (uint64_t i = nblocks; i > 1; --i) std::swap(perm[i - 1], perm[rng() % i]);
  }
  return perm;
}

}  // namespace detail

void set_block_order(BlockOrder order, uint64_t seed) {
  std::lock_guard<std::mutex> lock(detail::g_mutex);
  detail::g_block_order = order;
  detail::g_block_seed = seed;
}

BlockOrder block_order() {
  std::lock_guard<std::mutex> lock(detail::g_mutex);
  return detail::g_block_order;
}

const char* block_order_name(BlockOrder o) {
  switch (o) {
    case BlockOrder::kLinear: return "linear";
    case BlockOrder::kReverse: return "reverse";
    default: return "shuffle";
  }
}

BlockOrder parse_block_order(const std::string& name) {
  if (name == "linear") return BlockOrder::kLinear;
  if (name == "reverse") return BlockOrder::kReverse;
  if (name == "shuffle") return BlockOrder::kShuffle;
  throw std::invalid_argument("block order must be 'linear', 'reverse' or 'shuffle', got '" + name + "'");
}

}  // namespace emu
}  // namespace flashllm
