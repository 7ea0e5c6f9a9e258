// Internal state of the emulator shared by its scheduler (emu_runtime.cc) and its memory checks and
// counters (emu_memory.cc): the per-block thread, warp and worker records. Not for device code.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "emu.h"
#include "emu_fiber.h"

namespace flashllm {
namespace emu {
namespace detail {

enum class State : uint8_t { kRunnable, kAtBarrier, kAtWarp, kDone };

struct Thread {
  fiber::Context ctx;
  uint3 tid{};
  int index = 0;  // linear thread index in the block
  int warp = 0;
  int lane = 0;
  State state = State::kDone;
  std::vector<AsyncCopy> uncommitted;             // cp.async issued since the last commit
  std::vector<std::vector<AsyncCopy>> groups;     // committed, not yet landed (oldest first)
  std::vector<PendingStore> pending;              // global stores not yet published by a fence
};

struct Warp {
  int size = 0;        // lanes that exist (32 except in a partial last warp)
  int live = 0;        // lanes that have not exited
  int arrived = 0;     // lanes waiting at the current collective
  int at_barrier = 0;  // lanes waiting at __syncthreads
  int kind = -1;
  const char* name = "";
  CallSite site;  // call site of the current collective (the first lane's)
  WarpExec exec = nullptr;
  WarpCall call{};
  uint8_t async_issued[32] = {};                 // cp.async count per lane since the last sync
  std::vector<std::vector<uint64_t>> buckets;    // sectors per cp.async instruction
};

struct Worker {
  std::vector<fiber::Stack> stacks;
  std::vector<std::unique_ptr<Thread>> threads;
  std::vector<Warp> warps;
  fiber::Context sched;
  std::unique_ptr<unsigned char, decltype(&std::free)> smem{nullptr, &std::free};
  size_t smem_capacity = 0;
  std::vector<uint16_t> inflight;  // per 16-byte shared chunk: cp.async copies not yet landed
  std::vector<int16_t> landed_by;  // per chunk: warp whose cp.async landed it since the last barrier
  std::vector<uint32_t> landed_list;  // chunks with landed_by >= 0 (reset at the next barrier)
  // Race detector (emu.h, track_smem), per 2-byte halfword of shared memory:
  //   write_tag = epoch << 5 | warp of the last write; read_tag = epoch << 6 | several << 5 | warp
  //   of the first reader in that epoch (several: another warp read it too);
  //   write_what / read_what = access_id of that write / read.
  // `epoch` counts barriers over the worker's whole life (it never restarts at a block or launch),
  // so tags left by earlier blocks are always stale; the arrays are cleared if it would overflow.
  std::vector<uint32_t> write_tag, read_tag;
  std::vector<uint16_t> write_what, read_what;
  uint32_t epoch = 1;
  int block_barriers = 0;  // barriers released in the current block (parity picks the warp order)
  Schedule schedule = Schedule::kAlternate;  // this launch's (read once per launch)
  std::vector<std::pair<const char*, CallSite>> accesses;  // access_id -> (instruction, call site)
  size_t smem_bytes = 0;
  int nthreads = 0;
  int live = 0;
  int barrier_arrived = 0;
  Thread* current = nullptr;
  int exec_warp = -1;  // warp whose collective is executing (errors then name the warp, not a lane)
  KernelThunk thunk = nullptr;
  const void* payload = nullptr;
  std::string error;
  Stats stats;
  OpStats ops[int(Op::kCount)];
  std::vector<PendingStore> unfenced;  // stores of exited threads never fenced: land at launch end
};

// The worker running on this host thread (null outside a launch).
extern thread_local Worker* tls_worker;

extern std::mutex g_mutex;  // guards the globals below
extern Stats g_stats;
extern OpStats g_ops[int(Op::kCount)];
extern std::vector<std::pair<uintptr_t, uintptr_t>> g_ranges;  // registered global [begin, end)
extern size_t g_max_smem;
extern int g_workers;
extern size_t g_stack_bytes;
extern Schedule g_schedule;
extern BlockOrder g_block_order;
extern uint64_t g_block_seed;

// The order in which a launch hands out its blocks (set_block_order): position -> linear block index.
// Empty for the linear order.
std::vector<uint64_t> block_permutation(uint64_t nblocks);
// Makes stores of exited threads that no fence published visible (end of a worker's share of a launch).
void land_unfenced(Worker& wk);
// Thread exit: its unfenced stores stay invisible to other blocks until the launch ends.
void retire_pending(Worker& wk, Thread& t);

// The calling fiber's worker; throws when called outside an emulated kernel.
Worker& worker();
// "block (x,y,z)" of the block being run.
std::string block_name();
// "ldmatrix.x4 (spmm_kernel.cuh:153:7)": an instruction and its call site, for messages.
std::string where(const char* name, CallSite site);
// Counts one warp-level global request of `sectors` sectors.
void add_gmem(Worker& wk, Op op, uint64_t sectors);
// Counts the cp.async instructions warp `w` issued since its last synchronization point.
void flush_async(Worker& wk, Warp& w);
// Sizes the race detector's arrays for this launch's shared memory (keeping their tags).
void prepare_race_detector(Worker& wk);
// Starts a new barrier epoch (a released __syncthreads, or a new block).
void next_epoch(Worker& wk);

}  // namespace detail
}  // namespace emu
}  // namespace flashllm
