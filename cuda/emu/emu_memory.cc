// The emulator's memory checks and counters: shared/global range checks, sector identifiers, the
// statistics (totals and per instruction), per-thread cp.async state and the public configuration.
#include <algorithm>
#include <cstdio>
#include <cstring>

#include "emu_state.h"

namespace flashllm {
namespace emu {
namespace detail {

Stats g_stats;
OpStats g_ops[int(Op::kCount)];
std::vector<std::pair<uintptr_t, uintptr_t>> g_ranges;
size_t g_max_smem = 101376;

static const char* const kOpNames[int(Op::kCount)] = {"ldmatrix", "sts_16", "sts_128", "lds_128",
                                                      "ldg_128",  "ldg_32", "cp.async"};

void add_gmem(Worker& wk, Op op, uint64_t sectors) {
  wk.stats.gmem_requests += 1;
  wk.stats.gmem_sectors += sectors;
  OpStats& o = wk.ops[int(op)];
  o.requests += 1;
  o.sectors += sectors;
}

void check_smem(const void* p, size_t bytes, size_t align, const char* op, int lane) {
  Worker& wk = worker();
  const auto base = reinterpret_cast<uintptr_t>(wk.smem.get());
  const auto a = reinterpret_cast<uintptr_t>(p);
  char buf[200];
  if (a < base || a - base + bytes > wk.smem_bytes) {
    std::snprintf(buf, sizeof buf,
                  "%s: lane %d's address %p is outside the block's %zu bytes of dynamic shared memory "
                  "(offset %lld)",
                  op, lane, p, wk.smem_bytes, (long long)(a - base));
    fail(buf);
  }
  if ((a - base) % align != 0) {
    std::snprintf(buf, sizeof buf, "%s: lane %d's shared-memory offset %zu is not %zu-byte aligned",
                  op, lane, size_t(a - base), align);
    fail(buf);
  }
}

void check_global(const void* p, size_t bytes, const char* op, int lane) {
  if (g_ranges.empty()) return;
  const auto a = reinterpret_cast<uintptr_t>(p);
  for (const auto& r : g_ranges)
    if (a >= r.first && a + bytes <= r.second) return;
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s: lane %d reads %zu bytes at %p, outside every global buffer",
                op, lane, bytes, p);
  fail(buf);
}

uint64_t sector_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  for (const auto& r : g_ranges)
    if (a >= r.first && a < r.second) return r.first + (a - r.first) / 32;
  return a / 32;
}

void count_smem(Op op, uint64_t wavefronts, uint64_t min_wavefronts) {
  Worker& wk = worker();
  wk.stats.smem_requests += 1;
  wk.stats.smem_wavefronts += wavefronts;
  wk.stats.smem_bank_conflicts += wavefronts - min_wavefronts;
  OpStats& o = wk.ops[int(op)];
  o.requests += 1;
  o.wavefronts += wavefronts;
  o.bank_conflicts += wavefronts - min_wavefronts;
}

void count_gmem(Op op, uint64_t sectors) { add_gmem(worker(), op, sectors); }

void note_async_read(const void* src, int bytes) {
  Worker& wk = worker();
  Thread& t = *wk.current;
  Warp& w = wk.warps[t.warp];
  const int k = w.async_issued[t.lane];
  if (k == 255) flush_async(wk, w);  // a pathological loop with no sync: count what we have
  w.async_issued[t.lane] = uint8_t(w.async_issued[t.lane] + 1);
  if (int(w.buckets.size()) <= k) w.buckets.resize(size_t(k) + 1);
  if (bytes <= 0) return;
  const auto* a = static_cast<const unsigned char*>(src);
  for (uint64_t s = sector_of(a), last = sector_of(a + bytes - 1); s <= last; ++s)
    w.buckets[k].push_back(s);
}

uint16_t* inflight_chunks() { return worker().inflight.data(); }

const int16_t* landed_by_warp() { return worker().landed_by.data(); }

void mark_landed(size_t chunk) {
  Worker& wk = worker();
  if (wk.landed_by[chunk] < 0) wk.landed_list.push_back(uint32_t(chunk));
  wk.landed_by[chunk] = int16_t(wk.current->warp);
}

std::vector<AsyncCopy>& async_uncommitted() { return worker().current->uncommitted; }
std::vector<std::vector<AsyncCopy>>& async_groups() { return worker().current->groups; }

}  // namespace detail

void reset_stats() {
  std::lock_guard<std::mutex> lock(detail::g_mutex);
  detail::g_stats = Stats{};
  for (auto& o : detail::g_ops) o = OpStats{};
}

std::vector<OpStats> op_stats() {
  std::lock_guard<std::mutex> lock(detail::g_mutex);
  std::vector<OpStats> out(detail::g_ops, detail::g_ops + int(Op::kCount));
  for (int i = 0; i < int(Op::kCount); ++i) out[size_t(i)].op = detail::kOpNames[i];
  return out;
}

Stats stats() {
  std::lock_guard<std::mutex> lock(detail::g_mutex);
  return detail::g_stats;
}

std::vector<std::pair<const char*, uint64_t>> stats_fields(const Stats& s) {
  return {{"smem_wavefronts", s.smem_wavefronts},
          {"smem_requests", s.smem_requests},
          {"smem_bank_conflicts", s.smem_bank_conflicts},
          {"gmem_requests", s.gmem_requests},
          {"gmem_sectors", s.gmem_sectors}};
}

void set_max_dynamic_smem(size_t bytes) {
  std::lock_guard<std::mutex> lock(detail::g_mutex);
  detail::g_max_smem = bytes;
}

size_t max_dynamic_smem() {
  std::lock_guard<std::mutex> lock(detail::g_mutex);
  return detail::g_max_smem;
}

void set_num_workers(int n) {
  std::lock_guard<std::mutex> lock(detail::g_mutex);
  detail::g_workers = n > 0 ? n : 1;
}

int num_workers() {
  std::lock_guard<std::mutex> lock(detail::g_mutex);
  return detail::g_workers;
}

void register_global(const void* ptr, size_t bytes) {
  std::lock_guard<std::mutex> lock(detail::g_mutex);
  const auto a = reinterpret_cast<uintptr_t>(ptr);
  detail::g_ranges.emplace_back(a, a + bytes);
}

void clear_globals() {
  std::lock_guard<std::mutex> lock(detail::g_mutex);
  detail::g_ranges.clear();
}

}  // namespace emu
}  // namespace flashllm
