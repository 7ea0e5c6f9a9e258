// The emulator's scheduler: blocks as sets of fibers, __syncthreads, the warp-collective rendezvous,
// launch checks and worker pooling (see emu.h for the model, emu_state.h for the records).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <thread>

#include "emu_state.h"

namespace flashllm {
namespace emu {
namespace detail {

thread_local Worker* tls_worker = nullptr;

std::mutex g_mutex;  // guards the globals of emu_state.h
int g_workers = [] {
  const char* env = std::getenv("FLASHLLM_EMU_THREADS");
  const int n = env ? std::atoi(env) : 1;
  return n > 0 ? n : 1;
}();
size_t g_stack_bytes = [] {
  const char* env = std::getenv("FLASHLLM_EMU_STACK_KB");
  const long kb = env ? std::atol(env) : 256;
  return size_t(kb > 16 ? kb : 16) * 1024;
}();

Worker& worker() {
  if (!tls_worker || !tls_worker->current) throw Error("emulated device code called outside emu::launch");
  return *tls_worker;
}

std::string block_name() {
  char buf[96];
  std::snprintf(buf, sizeof buf, "block (%u,%u,%u)", blockIdx.x, blockIdx.y, blockIdx.z);
  return buf;
}

void flush_async(Worker& wk, Warp& w) {
  int n = 0;
  for (int l = 0; l < 32; ++l) n = std::max(n, int(w.async_issued[l]));
  for (int k = 0; k < n; ++k) {
    auto& b = w.buckets[k];
    std::sort(b.begin(), b.end());
    add_gmem(wk, Op::kCpAsync, uint64_t(std::unique(b.begin(), b.end()) - b.begin()));
    b.clear();
  }
  std::memset(w.async_issued, 0, sizeof w.async_issued);
}

// "ldmatrix.x4 (spmm_kernel.cuh:153:7)": an instruction and its call site (file base name; the
// column is 0 where the compiler cannot tell it).
std::string where(const char* name, CallSite site) {
  std::string out = name;
  if (!site.file) return out;
  const char* base = std::strrchr(site.file, '/');
  out += std::string(" (") + (base ? base + 1 : site.file) + ":" + std::to_string(site.line) + ":" +
         std::to_string(site.column) + ")";
  return out;
}

namespace {

// "0-15,20" style list of the lanes of warp `w` that are in state `s`.
std::string lanes_in(const Worker& wk, int w, State s) {
  std::string out;
  int start = -1;
  for (int l = 0; l <= 32; ++l) {
    const int i = w * 32 + l;
    const bool in = l < 32 && i < wk.nthreads && wk.threads[i]->state == s;
    if (in && start < 0) start = l;
    if (!in && start >= 0) {
      if (!out.empty()) out += ",";
      out += std::to_string(start);
      if (l - 1 > start) out += "-" + std::to_string(l - 1);
      start = -1;
    }
  }
  return out;
}

bool same_site(CallSite a, CallSite b) {
  if (!a.file || !b.file) return true;  // __syncwarp: any call sites may meet
  return a.line == b.line && a.column == b.column &&
         (a.file == b.file || std::strcmp(a.file, b.file) == 0);
}

void release_barrier(Worker& wk) {
  for (int i = 0; i < wk.nthreads; ++i)
    if (wk.threads[i]->state == State::kAtBarrier) wk.threads[i]->state = State::kRunnable;
  for (auto& w : wk.warps) {
    w.at_barrier = 0;
    flush_async(wk, w);
  }
  wk.barrier_arrived = 0;
  for (uint32_t c : wk.landed_list) wk.landed_by[c] = -1;  // the barrier publishes landed copies
  wk.landed_list.clear();
  next_epoch(wk);  // accesses before and after the barrier are ordered: a new race epoch
  ++wk.block_barriers;
}

// The next runnable thread after `from` (see emu.h, Schedule): first the lanes of from's warp after
// it (all of them, cyclically, when warp-greedy), then the other warps from lane 0, in ascending
// order from from's warp, or descending in odd epochs (unless round robin). Null if none.
Thread* next_runnable(Worker& wk, const Thread& from, Schedule sched) {
  const int nwarps = int(wk.warps.size());
  const int size = wk.warps[size_t(from.warp)].size;
  const int own = sched == Schedule::kWarpGreedy ? size - 1 : size - 1 - from.lane;
  const size_t base = size_t(from.warp) * 32;
  for (int k = 1; k <= own; ++k) {
    Thread* t = wk.threads[base + size_t((from.lane + k) % size)].get();
    if (t->state == State::kRunnable) return t;
  }
  const bool descending = sched != Schedule::kRoundRobin && (wk.block_barriers & 1);
  for (int j = 1; j <= nwarps; ++j) {
    const int w = descending ? (from.warp - j + nwarps * 2) % nwarps : (from.warp + j) % nwarps;
    const int n = wk.warps[size_t(w)].size;
    for (int l = 0; l < n; ++l) {
      Thread* t = wk.threads[size_t(w) * 32 + size_t(l)].get();
      if (t->state == State::kRunnable) return t;
    }
  }
  return nullptr;
}

// Suspends `from` (already marked blocked or done) and resumes the next runnable thread directly,
// fiber to fiber (one switch per hand-over instead of two through the scheduler); when none is
// runnable the scheduler takes over (block finished, or a deadlock).
void switch_away(Worker& wk, Thread& from) {
  Thread* t = next_runnable(wk, from, wk.schedule);
  if (t == &from) return;
  if (t) {
    wk.current = t;
    threadIdx = t->tid;
    fiber::jump(from.ctx, t->ctx);
    return;  // resumed by another fiber, which set current and threadIdx for us
  }
  wk.current = nullptr;
  fiber::jump(from.ctx, wk.sched);
}

void yield(Worker& wk, Thread& t) { switch_away(wk, t); }

void thread_exit(Worker& wk, Thread& t) {
  Warp& w = wk.warps[t.warp];
  if (w.arrived > 0)
    fail("exited while lanes " + lanes_in(wk, t.warp, State::kAtWarp) + " of its warp wait at " +
         where(w.name, w.site) + " (warp divergence)");
  retire_pending(wk, t);
  t.state = State::kDone;
  --w.live;
  --wk.live;
  if (wk.live > 0 && wk.barrier_arrived == wk.live) release_barrier(wk);
}

void fiber_entry(void* arg) {
  Thread& t = *static_cast<Thread*>(arg);
  Worker& wk = *tls_worker;
  try {
    wk.thunk(wk.payload);
    thread_exit(wk, t);
  } catch (const std::exception& e) {
    if (wk.error.empty()) wk.error = e.what();
  } catch (...) {
    if (wk.error.empty()) wk.error = "unknown exception in emulated kernel";
  }
  t.state = State::kDone;
  if (wk.error.empty())
    switch_away(wk, t);  // never resumed
  else
    fiber::jump(t.ctx, wk.sched);
  std::abort();
}

std::string deadlock_report(const Worker& wk) {
  std::string s = block_name() + ": no thread can proceed (deadlock);";
  for (size_t w = 0; w < wk.warps.size(); ++w) {
    const std::string at_b = lanes_in(wk, int(w), State::kAtBarrier);
    const std::string at_w = lanes_in(wk, int(w), State::kAtWarp);
    if (!at_b.empty()) s += " warp " + std::to_string(w) + " lanes " + at_b + " at __syncthreads;";
    if (!at_w.empty())
      s += " warp " + std::to_string(w) + " lanes " + at_w + " at " +
           where(wk.warps[w].name, wk.warps[w].site) + ";";
  }
  return s;
}

void prepare(Worker& wk, dim3 block, size_t smem_bytes) {
  wk.nthreads = int(block.x * block.y * block.z);
  while (int(wk.stacks.size()) < wk.nthreads) wk.stacks.emplace_back(g_stack_bytes);
  while (int(wk.threads.size()) < wk.nthreads) wk.threads.push_back(std::make_unique<Thread>());
  wk.warps.assign(size_t((wk.nthreads + 31) / 32), Warp{});
  for (size_t w = 0; w < wk.warps.size(); ++w)
    wk.warps[w].size = std::min(32, wk.nthreads - int(w) * 32);
  if (smem_bytes > wk.smem_capacity) {
    const size_t cap = (smem_bytes + 127) / 128 * 128;
    wk.smem.reset(static_cast<unsigned char*>(std::aligned_alloc(128, cap)));
    if (!wk.smem) throw std::bad_alloc();
    wk.smem_capacity = cap;
  }
  wk.smem_bytes = smem_bytes;
  prepare_race_detector(wk);
  wk.schedule = schedule();
  wk.stats = Stats{};
  for (auto& o : wk.ops) o = OpStats{};
  wk.error.clear();
  wk.exec_warp = -1;
}

void run_block(Worker& wk, uint3 bidx) {
  blockIdx = bidx;
  const dim3 bd = blockDim;
  for (int i = 0; i < wk.nthreads; ++i) {
    Thread& t = *wk.threads[i];
    t.tid = uint3{unsigned(i) % bd.x, (unsigned(i) / bd.x) % bd.y, unsigned(i) / (bd.x * bd.y)};
    t.index = i;
    t.warp = i / 32;
    t.lane = i % 32;
    t.state = State::kRunnable;
    t.uncommitted.clear();
    t.groups.clear();
    t.pending.clear();
    fiber::make(t.ctx, wk.stacks[i], &fiber_entry, &t);
  }
  for (auto& w : wk.warps) {
    w.live = w.size;
    w.arrived = w.at_barrier = 0;
    std::memset(w.async_issued, 0, sizeof w.async_issued);
  }
  if (wk.smem_bytes) std::memset(wk.smem.get(), 0xCD, wk.smem_bytes);
  wk.inflight.assign((wk.smem_bytes + 15) / 16, 0);
  wk.landed_by.assign((wk.smem_bytes + 15) / 16, -1);
  wk.landed_list.clear();
  wk.live = wk.nthreads;
  wk.barrier_arrived = 0;
  next_epoch(wk);  // nothing of the previous block's accesses is in this block's epoch
  wk.block_barriers = 0;
  // Fibers hand over to each other; control returns here only when none is runnable.
  for (int i = 0; i < wk.nthreads; ++i) {
    Thread& t = *wk.threads[i];
    if (t.state != State::kRunnable) continue;
    wk.current = &t;
    threadIdx = t.tid;
    fiber::jump(wk.sched, t.ctx);
    wk.current = nullptr;
    if (!wk.error.empty()) throw Error(wk.error);
    i = -1;  // rescan from the start
  }
  if (wk.live > 0) throw Error(deadlock_report(wk));
  for (auto& w : wk.warps) flush_async(wk, w);
}

// Workers (fiber stacks, shared memory) are pooled across launches and host threads: helper threads
// are new for every launch, and 128 fresh stacks per thread per launch would cost more than a
// small kernel.
std::vector<std::unique_ptr<Worker>> g_pool;  // guarded by g_mutex

Worker* acquire_worker() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_pool.empty()) return new Worker();
  Worker* w = g_pool.back().release();
  g_pool.pop_back();
  return w;
}

void release_worker(Worker* w) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_pool.emplace_back(w);
}

void check_launch(dim3 grid, dim3 block, size_t smem_bytes) {
  char buf[256];
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024 || block.y > 1024 ||
      block.z > 64 || threads > 1024) {
    std::snprintf(buf, sizeof buf, "invalid launch configuration: block (%u,%u,%u)", block.x, block.y,
                  block.z);
    throw Error(buf);
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
      grid.z > 65535) {
    std::snprintf(buf, sizeof buf, "invalid launch configuration: grid (%u,%u,%u)", grid.x, grid.y,
                  grid.z);
    throw Error(buf);
  }
  if (smem_bytes > max_dynamic_smem()) {
    std::snprintf(buf, sizeof buf, "launch asks for %zu bytes of dynamic shared memory, limit %zu",
                  smem_bytes, max_dynamic_smem());
    throw Error(buf);
  }
}

}  // namespace

void launch_impl(KernelThunk thunk, const void* payload, dim3 grid, dim3 block, size_t smem_bytes) {
  if (tls_worker) throw Error("emu::launch called from inside an emulated kernel");
  check_launch(grid, block, smem_bytes);
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::string first_error;
  const std::vector<uint64_t> order = block_permutation(nblocks);  // empty: linear

  auto work = [&] {
    Worker* wk = acquire_worker();
    tls_worker = wk;
    gridDim = grid;
    blockDim = block;
    try {
      prepare(*wk, block, smem_bytes);
      wk->thunk = thunk;
      wk->payload = payload;
      for (uint64_t i; !failed.load() && (i = next.fetch_add(1)) < nblocks;) {
        const uint64_t b = order.empty() ? i : order[i];
        run_block(*wk, uint3{unsigned(b % grid.x), unsigned(b / grid.x % grid.y),
                             unsigned(b / (uint64_t(grid.x) * grid.y))});
      }
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(g_mutex);
      if (!failed.exchange(true)) first_error = e.what();
    }
    land_unfenced(*wk);
    {
      std::lock_guard<std::mutex> lock(g_mutex);
      g_stats.smem_wavefronts += wk->stats.smem_wavefronts;
      g_stats.smem_requests += wk->stats.smem_requests;
      g_stats.smem_bank_conflicts += wk->stats.smem_bank_conflicts;
      g_stats.gmem_requests += wk->stats.gmem_requests;
      g_stats.gmem_sectors += wk->stats.gmem_sectors;
      for (int i = 0; i < int(Op::kCount); ++i) {
        g_ops[i].requests += wk->ops[i].requests;
        g_ops[i].wavefronts += wk->ops[i].wavefronts;
        g_ops[i].bank_conflicts += wk->ops[i].bank_conflicts;
        g_ops[i].sectors += wk->ops[i].sectors;
      }
    }
    wk->current = nullptr;
    tls_worker = nullptr;
    release_worker(wk);
  };

  const int nworkers = int(std::min<uint64_t>(uint64_t(num_workers()), nblocks));
  std::vector<std::thread> helpers;
  for (int i = 1; i < nworkers; ++i) helpers.emplace_back(work);
  work();
  for (auto& h : helpers) h.join();
  if (failed) throw Error("emulated kernel failed: " + first_error);
}

unsigned char* current_smem() { return worker().smem.get(); }
size_t current_smem_bytes() { return worker().smem_bytes; }

int lane_id() { return worker().current->lane; }
int warp_id() { return worker().current->warp; }

void fail(const std::string& what) {
  std::string prefix = block_name();
  if (tls_worker && tls_worker->exec_warp >= 0) {
    prefix += ", warp " + std::to_string(tls_worker->exec_warp) + ": ";
  } else if (tls_worker && tls_worker->current) {
    const Thread& t = *tls_worker->current;
    char buf[96];
    std::snprintf(buf, sizeof buf, ", thread (%u,%u,%u) [warp %d lane %d]: ", t.tid.x, t.tid.y,
                  t.tid.z, t.warp, t.lane);
    prefix += buf;
  } else {
    prefix += ": ";
  }
  throw Error(prefix + what);
}

void syncthreads() {
  Worker& wk = worker();
  Thread& t = *wk.current;
  Warp& w = wk.warps[t.warp];
  if (w.arrived > 0)
    fail("reached __syncthreads while lanes " + lanes_in(wk, t.warp, State::kAtWarp) +
         " of its warp wait at " + where(w.name, w.site) + " (warp divergence)");
  ++wk.barrier_arrived;
  if (wk.barrier_arrived == wk.live) {
    release_barrier(wk);
    return;
  }
  ++w.at_barrier;
  t.state = State::kAtBarrier;
  yield(wk, t);
}

void warp_collective(int kind, const char* name, WarpExec exec, void* my_data, CallSite site) {
  Worker& wk = worker();
  Thread& t = *wk.current;
  Warp& w = wk.warps[t.warp];
  if (w.size != 32 || w.live != 32)
    fail(std::string(name) + " needs all 32 lanes of the warp, but only " + std::to_string(w.live) +
         " are running (partial warp or exited lanes)");
  if (w.at_barrier > 0)
    fail("reached " + where(name, site) + " while lanes " + lanes_in(wk, t.warp, State::kAtBarrier) +
         " of its warp wait at __syncthreads (warp divergence)");
  if (w.arrived == 0) {
    w.kind = kind;
    w.name = name;
    w.site = site;
    w.exec = exec;
  } else if (w.kind != kind || !same_site(w.site, site)) {
    fail("reached " + where(name, site) + " while lanes " + lanes_in(wk, t.warp, State::kAtWarp) +
         " of its warp wait at " + where(w.name, w.site) +
         (w.kind == kind ? " (warp divergence: two call sites of one instruction)" : " (warp divergence)"));
  }
  w.call.lane_data[t.lane] = my_data;
  if (++w.arrived < 32) {
    t.state = State::kAtWarp;
    yield(wk, t);
    return;
  }
  // Last lane: every lane's operands are in place (their stacks are suspended, not gone).
  flush_async(wk, w);
  w.call.warp = t.warp;
  w.call.name = w.name;
  w.call.site = w.site;
  w.arrived = 0;
  for (int l = 0; l < 32; ++l) {
    Thread& o = *wk.threads[t.warp * 32 + l];
    if (o.state == State::kAtWarp) o.state = State::kRunnable;
  }
  wk.exec_warp = t.warp;
  w.exec(w.call);
  wk.exec_warp = -1;
}

}  // namespace detail
}  // namespace emu
}  // namespace flashllm
