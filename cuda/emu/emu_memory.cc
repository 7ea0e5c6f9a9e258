// The emulator's memory checks and counters: shared/global range checks, sector identifiers, the
// statistics (totals and per instruction), per-thread cp.async state and the public configuration.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "emu_state.h"

namespace flashllm {
namespace emu {
namespace detail {

Stats g_stats;
OpStats g_ops[int(Op::kCount)];
std::vector<std::pair<uintptr_t, uintptr_t>> g_ranges;
size_t g_max_smem = 101376;
Schedule g_schedule = [] {
  const char* env = std::getenv("FLASHLLM_EMU_SCHEDULE");
  try {
    return env ? parse_schedule(env) : Schedule::kAlternate;
  } catch (const std::exception& e) {  // never fail the import over it
    std::fprintf(stderr, "flashllm emulator: %s; using 'alternate'\n", e.what());
    return Schedule::kAlternate;
  }
}();

static const char* const kOpNames[int(Op::kCount)] = {
    "ldmatrix", "sts_16", "sts_32", "sts_128", "lds_32", "lds_128", "ldg_128", "ldg_32", "cp.async",
    "lds_16"};

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

// ---- Race detector ------------------------------------------------------------------------------
// Epochs fit 26 bits of read_tag; past that the tags are cleared (all stale anyway at a barrier).
constexpr uint32_t kMaxEpoch = (1u << 26) - 1;

void prepare_race_detector(Worker& wk) {
  const size_t halfwords = (wk.smem_bytes + 1) / 2;
  if (wk.write_tag.size() >= halfwords) return;
  wk.write_tag.resize(halfwords, 0);  // new entries: epoch 0, older than any real epoch
  wk.read_tag.resize(halfwords, 0);
  wk.write_what.resize(halfwords, 0);
  wk.read_what.resize(halfwords, 0);
}

void next_epoch(Worker& wk) {
  if (++wk.epoch <= kMaxEpoch) return;
  std::fill(wk.write_tag.begin(), wk.write_tag.end(), 0u);
  std::fill(wk.read_tag.begin(), wk.read_tag.end(), 0u);
  wk.epoch = 1;
}

uint16_t access_id(const char* name, CallSite site) {
  Worker& wk = worker();
  for (size_t i = 0; i < wk.accesses.size(); ++i) {
    const auto& a = wk.accesses[i];
    if (a.first == name && a.second.file == site.file && a.second.line == site.line &&
        a.second.column == site.column)
      return uint16_t(i);
  }
  if (wk.accesses.size() >= 0xffff) return 0xffff;  // "an instruction" in messages
  wk.accesses.emplace_back(name, site);
  return uint16_t(wk.accesses.size() - 1);
}

namespace {

std::string describe(const Worker& wk, uint16_t what) {
  if (what >= wk.accesses.size()) return "an instruction";
  return where(wk.accesses[what].first, wk.accesses[what].second);
}

[[noreturn]] void report_race(const Worker& wk, size_t halfword, bool write, uint16_t what, int lane,
                              int other_warp, bool other_wrote, uint16_t other_what) {
  const std::string other =
      other_warp >= 0 ? "warp " + std::to_string(other_warp) : std::string("another warp");
  fail("shared-memory data race: " + describe(wk, what) + " (lane " + std::to_string(lane) + ") " +
       (write ? "writes" : "reads") + " offset " + std::to_string(halfword * 2) + ", which " + other +
       (other_wrote ? " wrote with " : " read with ") + describe(wk, other_what) +
       " since the last __syncthreads: no barrier orders the two accesses (missing __syncthreads)");
}

}  // namespace

std::atomic<bool> g_race_check{true};

void track_smem(uintptr_t offset, int bytes, bool write, uint16_t what, int warp, int lane) {
  if (!g_race_check.load(std::memory_order_relaxed)) return;
  Worker& wk = *tls_worker;
  const uint32_t ep = wk.epoch;
  uint32_t* const wtag = wk.write_tag.data();
  uint32_t* const rtag = wk.read_tag.data();
  const size_t end = (offset + size_t(bytes) + 1) / 2;
  for (size_t h = offset / 2; h < end; ++h) {
    const uint32_t wt = wtag[h];
    if ((wt >> 5) == ep && int(wt & 31) != warp)
      report_race(wk, h, write, what, lane, int(wt & 31), true, wk.write_what[h]);
    const uint32_t rt = rtag[h];
    const bool read_now = (rt >> 6) == ep;
    if (write) {
      if (read_now && ((rt & 32) != 0 || int(rt & 31) != warp))
        report_race(wk, h, write, what, lane, int(rt & 31) != warp ? int(rt & 31) : -1, false,
                    wk.read_what[h]);
      wtag[h] = ep << 5 | uint32_t(warp);
      wk.write_what[h] = what;
    } else if (!read_now) {
      rtag[h] = ep << 6 | uint32_t(warp);
      wk.read_what[h] = what;
    } else if (int(rt & 31) != warp) {
      rtag[h] = rt | 32;  // a second warp reads it in this epoch (first reader kept for messages)
    }
  }
}

// ---- cp.async state -----------------------------------------------------------------------------
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

void set_schedule(Schedule s) {
  std::lock_guard<std::mutex> lock(detail::g_mutex);
  detail::g_schedule = s;
}

Schedule schedule() {
  std::lock_guard<std::mutex> lock(detail::g_mutex);
  return detail::g_schedule;
}

static const char* const kScheduleNames[] = {"round_robin", "alternate", "warp_greedy"};

const char* schedule_name(Schedule s) { return kScheduleNames[int(s)]; }

Schedule parse_schedule(const std::string& name) {
  for (int i = 0; i < 3; ++i)
    if (name == kScheduleNames[i]) return Schedule(i);
  throw std::invalid_argument("unknown emulator schedule '" + name +
                              "' (round_robin, alternate or warp_greedy)");
}

void set_num_workers(int n) {
  std::lock_guard<std::mutex> lock(detail::g_mutex);
  detail::g_workers = n > 0 ? n : 1;
}

int num_workers() {
  std::lock_guard<std::mutex> lock(detail::g_mutex);
  return detail::g_workers;
}

void set_race_check(bool on) { detail::g_race_check.store(on); }
bool race_check() { return detail::g_race_check.load(); }

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
