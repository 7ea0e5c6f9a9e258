// Host emulation of the CUDA execution model: just enough of the CUDA runtime model for the
// kernel's device code (cuda/kernel/*.cuh) to compile unchanged with a host C++ compiler and run on
// a machine without a GPU. ptx.cuh includes this header (and ptx_emu.h) when FLASHLLM_EMU is defined.
//
// Execution model: emu::launch runs every thread block of the grid with its blockDim threads as
// fibers (user-space stacks switched in emu_fiber.cc) on one host thread per worker. A fiber runs
// until it reaches a synchronization point — __syncthreads (a real block barrier) or a warp
// collective (ldmatrix, mma, shuffles, counted loads/stores: all 32 lanes hand over their operands,
// the last lane to arrive executes the instruction for the whole warp). Scheduling is deterministic
// (see Schedule: lockstep with the warp order alternating by barrier epoch, by default), so a
// failing kernel fails the same way every time. A warp whose lanes wait at different collectives
// (or call sites), or at a collective and a barrier, is reported as an error (emu::Error) naming the
// block, warp, lanes and instructions; it never hangs. Counted shared-memory accesses of different
// warps to the same bytes with no barrier between them (one of them a write) are reported as data
// races whatever order the schedule ran them in (track_smem).
#pragma once

#ifndef FLASHLLM_EMU
#define FLASHLLM_EMU 1
#endif

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- CUDA built-in vector types (layout and alignment as in CUDA's vector_types.h) -------------
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
struct alignas(8) uint2 {
  unsigned int x, y;
};
struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};
struct alignas(8) int2 {
  int x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline uint2 make_uint2(unsigned int x, unsigned int y) { return uint2{x, y}; }
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) {
  return uint4{x, y, z, w};
}
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }

// CUDA's device-side min/max overloads (plain host functions here).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return a < b ? a : b; }
inline float max(float a, float b) { return a > b ? a : b; }

// ---- Function and variable qualifiers ---------------------------------------------------------
// __restrict__ is a GNU extension g++ already understands.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Static __shared__ arrays become per-worker-thread statics: shared by the fibers of the block being
// run, reused (uninitialised, as on the GPU) by the next block. The contract asks for dynamic shared
// memory only; this keeps stray helpers compiling.
#define __shared__ static thread_local

// Each block gets its own buffer of the launch's smem_bytes, filled with 0xCD (never zero), so a
// kernel that reads shared memory it never wrote computes garbage and fails its test.
#define FLASHLLM_DYNAMIC_SMEM(name) \
  unsigned char* const name = ::flashllm::emu::detail::current_smem()

// The stream is accepted and ignored: the host runs the grid to completion before returning.
// Evaluates to cudaSuccess: a failed emulated launch throws emu::Error instead.
#define FLASHLLM_LAUNCH(kernel, grid, block, smem_bytes, stream, ...) \
  ((void)(stream), ::flashllm::emu::launch(kernel, grid, block, smem_bytes, __VA_ARGS__), cudaSuccess)

using cudaStream_t = struct CUstream_st*;
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;

// ---- Per-thread built-ins ---------------------------------------------------------------------
// One copy per host worker thread; the scheduler writes threadIdx before it resumes a fiber, so the
// value a fiber reads is its own. (Reads after any synchronization point reload the variable: the
// fiber switch is an opaque call.)
inline thread_local uint3 threadIdx{};
inline thread_local uint3 blockIdx{};
inline thread_local dim3 blockDim{};
inline thread_local dim3 gridDim{};

namespace flashllm {
namespace emu {

// Any failure inside an emulated kernel (divergence at a collective, misaligned or out-of-range
// address, launch limits): the launch stops and throws this (Python sees RuntimeError).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Memory-efficiency counters, accumulated over launches until reset_stats().
struct Stats {
  uint64_t smem_wavefronts = 0;      // shared-memory wavefronts over all counted warp requests
  uint64_t smem_requests = 0;        // warp-level shared-memory requests (ldmatrix, sts_*, lds_*)
  uint64_t smem_bank_conflicts = 0;  // wavefronts beyond the minimum each request needed
  uint64_t gmem_requests = 0;        // warp-level global requests (ldg_*, cp.async per instruction)
  uint64_t gmem_sectors = 0;         // distinct 32-byte sectors those requests touched
};

// The same counters broken down by instruction, for finding where conflicts come from.
enum class Op : int {
  kLdmatrix, kSts16, kSts32, kSts128, kLds32, kLds128, kLdg128, kLdg32, kCpAsync, kLds16, kCount
};
struct OpStats {
  const char* op;  // "ldmatrix", "sts_16", "sts_32", "sts_128", "lds_32", "lds_128", "ldg_128", ..., "lds_16"
  uint64_t requests = 0;
  uint64_t wavefronts = 0;      // shared-memory instructions
  uint64_t bank_conflicts = 0;  // shared-memory instructions
  uint64_t sectors = 0;         // global-memory instructions
};

void reset_stats();
Stats stats();
std::vector<OpStats> op_stats();  // one entry per Op, in enum order
// (name, value) pairs in declaration order, for bindings that turn Stats into a dict.
std::vector<std::pair<const char*, uint64_t>> stats_fields(const Stats& s);

// Largest dynamic shared memory a launch may ask for. Default 101376 bytes (99 KiB), the opt-in
// per-block limit of sm_86/sm_89, the smallest of the architectures the kernel targets, so a config
// that would fail to launch on some supported GPU fails here too.
void set_max_dynamic_smem(size_t bytes);
size_t max_dynamic_smem();

// Host worker threads that run blocks in parallel (default: env FLASHLLM_EMU_THREADS, else 1).
// Blocks never share state, so the result does not depend on it.
void set_num_workers(int n);
int num_workers();

// The order in which the fibers of a block run between synchronization points. All are
// deterministic; a race-free kernel gives the same result under each, so tests run several to make
// order-dependent bugs (races through plain, unchecked accesses) show.
//   kRoundRobin: thread order; every warp advances one collective at a time, in lockstep.
//   kAlternate (default): like kRoundRobin, but warps take turns in descending order between odd
//     and even barriers of the block (epochs), so "warp 0 always goes first" is not baked in.
//   kWarpGreedy: one warp runs until it blocks at a barrier (or exits) before the next starts; warp
//     order alternates by epoch as in kAlternate.
// Default: env FLASHLLM_EMU_SCHEDULE ("round_robin" | "alternate" | "warp_greedy"), else kAlternate.
enum class Schedule : int { kRoundRobin, kAlternate, kWarpGreedy };
void set_schedule(Schedule s);
Schedule schedule();
// Name <-> Schedule ("round_robin", "alternate", "warp_greedy"); parse throws std::invalid_argument.
const char* schedule_name(Schedule s);
Schedule parse_schedule(const std::string& name);

// The order in which a launch runs its blocks. On a GPU blocks run in any order and concurrently;
// a kernel whose blocks communicate (the fused split-K reduction: the last block to arrive reduces)
// must give the same result for every order, so tests run several.
//   kLinear (default): x fastest, then y, then z.  kReverse: the opposite.
//   kShuffle: a fixed pseudo-random permutation drawn from `seed`.
enum class BlockOrder : int { kLinear, kReverse, kShuffle };
void set_block_order(BlockOrder order, uint64_t seed = 0);
BlockOrder block_order();
const char* block_order_name(BlockOrder o);
BlockOrder parse_block_order(const std::string& name);

// The shared-memory race detector (detail::track_smem) is on by default. A corrupt matrix may
// repeat a location inside one tile, making two warps' scatter stores collide: a write-write race
// on the GPU too (either value wins; no fault), which tests of garbage inputs switch the detector
// off for.
void set_race_check(bool on);
bool race_check();

// Optional global-memory bounds checking: while at least one range is registered, every counted
// global read (ldg_*, cp.async with src_bytes > 0) must lie inside a registered range, else Error.
// Registered ranges also anchor sector counting (each range starts a sector, as cudaMalloc does).
void register_global(const void* ptr, size_t bytes);
void clear_globals();

// RAII helper: registers ranges for one scope (e.g. the duration of a launch).
class GlobalRanges {
 public:
  GlobalRanges() = default;
  GlobalRanges(const GlobalRanges&) = delete;
  GlobalRanges& operator=(const GlobalRanges&) = delete;
  void add(const void* ptr, size_t bytes) { register_global(ptr, bytes); }
  ~GlobalRanges() { clear_globals(); }
};

namespace detail {

using KernelThunk = void (*)(const void* payload);

// Runs the grid: every block with its blockDim threads as fibers; throws Error on any failure.
void launch_impl(KernelThunk thunk, const void* payload, dim3 grid, dim3 block, size_t smem_bytes);

unsigned char* current_smem();
size_t current_smem_bytes();

// Block barrier (bar.sync 0): returns when every thread of the block that has not exited arrived.
void syncthreads();

// Source location of a wrapper call (filled by defaulted __builtin_FILE/LINE/COLUMN arguments of
// the ptx:: wrappers, so it is the device code's call site). file == nullptr: no call site.
struct CallSite {
  const char* file = nullptr;
  int line = 0;
  int column = 0;
};

// Warp collective core. Every lane of the calling thread's warp calls it with the same `kind` from
// the same call site (a .sync.aligned instruction must be the same instruction for all lanes: two
// ldmatrix calls in divergent branches are divergence even though both are ldmatrix); the last lane
// to arrive runs exec(lane_data, ctx) for the whole warp while the others wait.
struct WarpCall;
using WarpExec = void (*)(const WarpCall& call);
struct WarpCall {
  void* lane_data[32];  // what each lane passed, indexed by lane
  int warp;             // warp index within the block
  const char* name;     // the instruction, and where the device code called it (for messages)
  CallSite site;
};
void warp_collective(int kind, const char* name, WarpExec exec, void* my_data, CallSite site = {});

// Which lane / warp the calling thread is.
int lane_id();
int warp_id();

// Throws Error with the block/warp/lane of the calling thread prefixed.
[[noreturn]] void fail(const std::string& what);

// Shared-memory range check for counted accesses: [p, p+bytes) inside this block's dynamic smem.
void check_smem(const void* p, size_t bytes, size_t align, const char* op, int lane);
// Global range check (no-op unless ranges are registered).
void check_global(const void* p, size_t bytes, const char* op, int lane);
// Identifier of the 32-byte sector holding byte p. Sectors are counted from the start of the
// registered range that contains p (device allocations are at least 256-byte aligned; host buffers
// need not be), from address 0 otherwise.
uint64_t sector_of(const void* p);

// Accounting hooks used by ptx_emu.cc.
void count_smem(Op op, uint64_t wavefronts, uint64_t min_wavefronts);
void count_gmem(Op op, uint64_t sectors);
// cp.async issued by one lane outside a collective: the k-th cp.async of each lane since the warp's
// last synchronization point is taken to be the same warp instruction (sectors counted per bucket).
void note_async_read(const void* src, int bytes);

// Shared-memory race detector. Each 2-byte halfword of the block's shared memory remembers the
// last warp that wrote it and the warps that read it, with the barrier epoch (number of
// __syncthreads released so far) of those accesses. An access by warp W is a data race when
// another warp wrote the halfword in the current epoch (read-after-write, write-after-write), or,
// for a write, another warp read it in the current epoch (write-after-read): with no barrier in
// between, the GPU gives no order between the two warps. Every counted access checks this:
// ldmatrix, lds_32, lds_128 (reads), sts_16, sts_32, sts_128 and cp.async (writes; a cp.async is checked when it
// is issued and recorded when its wait_group lands it). Plain C++ accesses are not tracked.
// `what` identifies the instruction and call site for messages (see access_id).
void track_smem(uintptr_t offset, int bytes, bool write, uint16_t what, int warp, int lane);
// A small number naming (instruction, call site), interned per worker thread for race messages.
uint16_t access_id(const char* name, CallSite site);

// Global memory shared between blocks (emu_global.cc). A plain global store (ptx::stg_f32) is held
// in its thread's pending list, invisible to every other thread, until that thread executes a fence
// (ptx::fence_acq_rel_gpu), or, if it never does, until the launch ends: the weakest visibility the
// PTX memory model allows, so a kernel that forgets its release fence reads stale data (and fails
// its test) instead of passing by luck. Atomics act on memory at once (sequentially consistent, at
// least as strong as any scope the kernel asks for). Loads see the thread's own pending stores.
struct PendingStore {
  unsigned char* dst;
  uint64_t data;
  int bytes;
};
void global_store(void* dst, const void* src, int bytes, const char* op);
void global_load(void* out, const void* src, int bytes, const char* op);
void global_fence();
uint32_t global_atomic_add_u32(uint32_t* p, uint32_t v, const char* op);
void global_store_relaxed_u32(uint32_t* p, uint32_t v, const char* op);

// Per-thread cp.async state (pending groups), owned by the runtime.
struct AsyncCopy {
  unsigned char* dst;
  unsigned char data[16];
  uint16_t what;  // access_id of the issuing cp.async
};
std::vector<AsyncCopy>& async_uncommitted();
// Per 16-byte chunk of the block's shared memory: how many cp.async copies into it are in flight.
uint16_t* inflight_chunks();
// Per chunk: the warp whose cp.async.wait_group landed it since the last __syncthreads, or -1.
// cp.async data is visible to the waiting thread only until a barrier publishes it.
const int16_t* landed_by_warp();
void mark_landed(size_t chunk);
std::vector<std::vector<AsyncCopy>>& async_groups();

}  // namespace detail

// Runs kernel<<<grid, block, smem_bytes>>>(args...) on the host. Arguments are converted to the
// kernel's parameter types once, then every thread receives its own copy, as on the GPU.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "kernel launched with the wrong argument count");
  struct Payload {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> args;
  };
  const Payload payload{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
  detail::launch_impl(
      [](const void* p) {
        const Payload& pl = *static_cast<const Payload*>(p);
        std::apply(pl.kernel, pl.args);
      },
      &payload, grid, block, smem_bytes);
}

}  // namespace emu
}  // namespace flashllm

inline void __syncthreads() { ::flashllm::emu::detail::syncthreads(); }

// __syncwarp(): a rendezvous of the 32 lanes (partial masks are not supported and not needed by a
// kernel that keeps its warps converged). No call site: lanes may meet at different __syncwarp calls.
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) ::flashllm::emu::detail::fail("__syncwarp: only the full mask is emulated");
  ::flashllm::emu::detail::warp_collective(
      /*kind=*/1000, "__syncwarp", [](const ::flashllm::emu::detail::WarpCall&) {}, nullptr);
}

template <class T>
inline T __ldg(const T* p) {
  return *p;
}
