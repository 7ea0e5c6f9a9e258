// Single-warp and single-block probe kernels for tests/test_emu_ptx.py: each runs one emulated PTX
// wrapper (or a barrier pattern) on inputs built in numpy and returns what the lanes got plus the
// emulator's counters, so the tests can pin the instruction semantics against the PTX ISA formulas.
// The kernels are written as device code (__global__, threadIdx, FLASHLLM_DYNAMIC_SMEM) on purpose:
// they exercise the same runtime model the real kernel uses.
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <cstring>
#include <string>

#include "emu.h"
#include "ptx_emu.h"
#include "py_util.h"

namespace flashllm {
namespace emu {
namespace {

namespace nb = nanobind;
using py::stats_dict;
using py::to_numpy;

template <class T>
using In1 = nb::ndarray<const T, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
template <class T>
using In2 = nb::ndarray<const T, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

// Input dtype tags with the kName convention of cuda/kernel/flashllm/numeric.h.
struct ProbeF16 {
  static constexpr const char* kName = "float16";
};
struct ProbeBf16 {
  static constexpr const char* kName = "bfloat16";
};

// Copies `init` into the block's shared memory (plain, uncounted stores), then a barrier.
__device__ void load_smem(unsigned char* smem, const uint8_t* init, int bytes) {
  for (int i = int(threadIdx.x); i < bytes; i += int(blockDim.x)) smem[i] = init[i];
  __syncthreads();
}

// ---- ldmatrix ---------------------------------------------------------------------------------
__global__ void ldmatrix_probe(const uint8_t* init, int bytes, const int64_t* offsets, int num,
                               bool trans, uint32_t* out) {
  FLASHLLM_DYNAMIC_SMEM(smem);
  load_smem(smem, init, bytes);
  const int lane = int(threadIdx.x);
  const void* row = smem + offsets[lane];
  uint32_t r[4] = {0, 0, 0, 0};
  if (num == 1 && !trans) ptx::ldmatrix_x1(r[0], row);
  if (num == 1 && trans) ptx::ldmatrix_x1_trans(r[0], row);
  if (num == 2 && !trans) ptx::ldmatrix_x2(reinterpret_cast<uint32_t(&)[2]>(r), row);
  if (num == 2 && trans) ptx::ldmatrix_x2_trans(reinterpret_cast<uint32_t(&)[2]>(r), row);
  if (num == 4 && !trans) ptx::ldmatrix_x4(r, row);
  if (num == 4 && trans) ptx::ldmatrix_x4_trans(r, row);
  for (int j = 0; j < num; ++j) out[lane * num + j] = r[j];
}

nb::tuple warp_ldmatrix(In1<uint8_t> smem, In1<int64_t> offsets, int num, bool trans) {
  if (offsets.shape(0) != 32) throw std::invalid_argument("offsets: need 32 (one per lane)");
  if (num != 1 && num != 2 && num != 4) throw std::invalid_argument("num must be 1, 2 or 4");
  std::vector<uint32_t> out(size_t(32 * num));
  reset_stats();
  launch(ldmatrix_probe, dim3(1), dim3(32), smem.shape(0), smem.data(), int(smem.shape(0)),
         offsets.data(), num, trans, out.data());
  return nb::make_tuple(to_numpy(std::move(out), {32, size_t(num)}), stats_dict(stats()));
}

// ---- mma ---------------------------------------------------------------------------------------
template <class Tag>
__global__ void mma_probe(const uint32_t* a, const uint32_t* b, const float* c, float* d) {
  const int lane = int(threadIdx.x);
  uint32_t ra[4], rb[2];
  float rc[4];
  for (int i = 0; i < 4; ++i) ra[i] = a[lane * 4 + i], rc[i] = c[lane * 4 + i];
  for (int i = 0; i < 2; ++i) rb[i] = b[lane * 2 + i];
  ptx::mma_m16n8k16<Tag>(rc, ra, rb, rc);  // d aliasing c, as the kernel's accumulators do
  for (int i = 0; i < 4; ++i) d[lane * 4 + i] = rc[i];
}

nb::ndarray<nb::numpy, float> warp_mma(In2<uint32_t> a, In2<uint32_t> b, In2<float> c,
                                       const std::string& dtype) {
  if (a.shape(0) != 32 || a.shape(1) != 4 || b.shape(0) != 32 || b.shape(1) != 2 ||
      c.shape(0) != 32 || c.shape(1) != 4)
    throw std::invalid_argument("need a (32, 4) uint32, b (32, 2) uint32, c (32, 4) float32");
  std::vector<float> d(32 * 4);
  if (dtype == "float16")
    launch(mma_probe<ProbeF16>, dim3(1), dim3(32), 0, a.data(), b.data(), c.data(), d.data());
  else if (dtype == "bfloat16")
    launch(mma_probe<ProbeBf16>, dim3(1), dim3(32), 0, a.data(), b.data(), c.data(), d.data());
  else
    throw std::invalid_argument("dtype must be 'float16' or 'bfloat16'");
  return to_numpy(std::move(d), {32, 4});
}

// ---- counted shared loads / stores -------------------------------------------------------------
// op 0: sts_16 (value = low 16 bits of values[lane][0]), 1: sts_128, 2: lds_128, 3: sts_32 (the
// bits of values[lane][0] as a float), 4: lds_32 (its bits in loaded[lane][0]).
__global__ void smem_probe(const uint8_t* init, int bytes, const int64_t* offsets, int op,
                           const uint32_t* values, uint8_t* smem_out, uint32_t* loaded) {
  FLASHLLM_DYNAMIC_SMEM(smem);
  load_smem(smem, init, bytes);
  const int lane = int(threadIdx.x);
  void* p = smem + offsets[lane];
  const uint32_t* v = values + lane * 4;
  if (op == 0) ptx::sts_16(p, uint16_t(v[0]));
  if (op == 1) ptx::sts_128(p, make_uint4(v[0], v[1], v[2], v[3]));
  if (op == 2) {
    const uint4 r = ptx::lds_128(p);
    loaded[lane * 4 + 0] = r.x, loaded[lane * 4 + 1] = r.y;
    loaded[lane * 4 + 2] = r.z, loaded[lane * 4 + 3] = r.w;
  }
  float f;
  std::memcpy(&f, v, 4);
  if (op == 3) ptx::sts_32(p, f);
  if (op == 4) f = ptx::lds_32(p), std::memcpy(loaded + lane * 4, &f, 4);
  __syncthreads();
  for (int i = lane; i < bytes; i += 32) smem_out[i] = smem[i];
}

nb::tuple warp_smem(const std::string& op, In1<uint8_t> smem, In1<int64_t> offsets,
                    In2<uint32_t> values) {
  static const char* const kOps[] = {"sts_16", "sts_128", "lds_128", "sts_32", "lds_32"};
  int code = -1;
  for (int i = 0; i < 5; ++i) code = op == kOps[i] ? i : code;
  if (code < 0)
    throw std::invalid_argument("op must be sts_16, sts_32, sts_128, lds_32 or lds_128");
  if (offsets.shape(0) != 32 || values.shape(0) != 32 || values.shape(1) != 4)
    throw std::invalid_argument("need 32 offsets and values of shape (32, 4)");
  const size_t bytes = smem.shape(0);
  std::vector<uint8_t> after(bytes);
  std::vector<uint32_t> loaded(32 * 4);
  reset_stats();
  launch(smem_probe, dim3(1), dim3(32), bytes, smem.data(), int(bytes), offsets.data(), code,
         values.data(), after.data(), loaded.data());
  return nb::make_tuple(to_numpy(std::move(after), {bytes}), to_numpy(std::move(loaded), {32, 4}),
                        stats_dict(stats()));
}

// ---- counted global loads ----------------------------------------------------------------------
__global__ void ldg_probe(const uint8_t* gmem, const int64_t* offsets, bool wide, uint32_t* out) {
  const int lane = int(threadIdx.x);
  if (wide) {
    const uint4 r = ptx::ldg_128(gmem + offsets[lane]);
    out[lane * 4 + 0] = r.x, out[lane * 4 + 1] = r.y, out[lane * 4 + 2] = r.z, out[lane * 4 + 3] = r.w;
  } else {
    out[lane] = ptx::ldg_32(gmem + offsets[lane]);
  }
}

nb::tuple warp_ldg(const std::string& op, In1<uint8_t> gmem, In1<int64_t> offsets, bool check_bounds) {
  if (op != "ldg_128" && op != "ldg_32") throw std::invalid_argument("op must be ldg_128 or ldg_32");
  if (offsets.shape(0) != 32) throw std::invalid_argument("offsets: need 32 (one per lane)");
  const bool wide = op == "ldg_128";
  const size_t words = wide ? 4 : 1;
  std::vector<uint32_t> out(32 * words);
  GlobalRanges ranges;
  if (check_bounds) ranges.add(gmem.data(), gmem.shape(0));
  reset_stats();
  launch(ldg_probe, dim3(1), dim3(32), 0, gmem.data(), offsets.data(), wide, out.data());
  return nb::make_tuple(to_numpy(std::move(out), {32, words}), stats_dict(stats()));
}

// ---- shfl.xor ----------------------------------------------------------------------------------
__global__ void shfl_probe(const float* v, const int32_t* masks, float* out) {
  const int lane = int(threadIdx.x);
  out[lane] = ptx::shfl_xor(v[lane], masks[lane]);
}

nb::ndarray<nb::numpy, float> warp_shfl_xor(In1<float> values, In1<int32_t> masks) {
  if (values.shape(0) != 32 || masks.shape(0) != 32) throw std::invalid_argument("need 32 lanes");
  std::vector<float> out(32);
  launch(shfl_probe, dim3(1), dim3(32), 0, values.data(), masks.data(), out.data());
  return to_numpy(std::move(out), {32});
}

// ---- cp.async ----------------------------------------------------------------------------------
// Lane l issues group 0 (dst[0][l], src[0][l], nbytes[0][l]; dst < 0: no copy), commits, then group
// 1, commits. Snapshots of shared memory: before any wait, after wait_group 1, after wait_group 0.
__global__ void cp_async_probe(const uint8_t* gmem, int bytes, const int64_t* dst, const int64_t* src,
                               const int32_t* nbytes, uint8_t* snaps) {
  FLASHLLM_DYNAMIC_SMEM(smem);
  const int lane = int(threadIdx.x);
  for (int g = 0; g < 2; ++g) {
    const int i = g * 32 + lane;
    if (dst[i] >= 0) ptx::cp_async_16(smem + dst[i], gmem + src[i], nbytes[i]);
    ptx::cp_async_commit();
  }
  for (int step = 0; step < 3; ++step) {
    if (step == 1) ptx::cp_async_wait<1>();
    if (step == 2) ptx::cp_async_wait<0>();
    __syncthreads();
    for (int i = lane; i < bytes; i += 32) snaps[step * bytes + i] = smem[i];
    __syncthreads();
  }
}

nb::tuple cp_async(In1<uint8_t> gmem, int smem_bytes, In2<int64_t> dst, In2<int64_t> src,
                   In2<int32_t> nbytes) {
  for (auto shape : {std::pair{dst.shape(0), dst.shape(1)}, {src.shape(0), src.shape(1)},
                     {nbytes.shape(0), nbytes.shape(1)}})
    if (shape.first != 2 || shape.second != 32) throw std::invalid_argument("need (2, 32) arrays");
  std::vector<uint8_t> snaps(3 * size_t(smem_bytes));
  GlobalRanges ranges;
  ranges.add(gmem.data(), gmem.shape(0));
  reset_stats();
  launch(cp_async_probe, dim3(1), dim3(32), size_t(smem_bytes), gmem.data(), smem_bytes, dst.data(),
         src.data(), nbytes.data(), snaps.data());
  return nb::make_tuple(to_numpy(std::move(snaps), {3, size_t(smem_bytes)}), stats_dict(stats()));
}

// ---- block barrier -----------------------------------------------------------------------------
// Thread t (linear index) holds v = init[t]; each round it publishes v, waits, adds the value of
// thread (t + 32 * round + 1) % n (another warp when n > 32) and waits again. Without a real
// barrier some thread would read a neighbour's stale value.
__global__ void barrier_probe(const int64_t* init, int rounds, int64_t* out) {
  FLASHLLM_DYNAMIC_SMEM(smem);
  auto* slots = reinterpret_cast<int64_t*>(smem);
  const int n = int(blockDim.x * blockDim.y * blockDim.z);
  const int t = int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
  const int base = int(blockIdx.x) * n;
  int64_t v = init[base + t];
  for (int r = 0; r < rounds; ++r) {
    slots[t] = v;
    __syncthreads();
    v += slots[(t + 32 * r + 1) % n];
    __syncthreads();
  }
  out[base + t] = v;
}

nb::ndarray<nb::numpy, int64_t> block_barrier(In1<int64_t> init, int blocks, std::tuple<int, int, int> block,
                                              int rounds) {
  const dim3 bd(unsigned(std::get<0>(block)), unsigned(std::get<1>(block)), unsigned(std::get<2>(block)));
  const size_t n = size_t(bd.x) * bd.y * bd.z;
  if (init.shape(0) != n * size_t(blocks)) throw std::invalid_argument("init: need blocks * threads values");
  std::vector<int64_t> out(init.shape(0));
  launch(barrier_probe, dim3(unsigned(blocks)), bd, n * sizeof(int64_t), init.data(), rounds, out.data());
  return to_numpy(std::move(out), {init.shape(0)});
}

// ---- built-in indices --------------------------------------------------------------------------
// Every thread writes (blockIdx, threadIdx) at its global linear position, read after a barrier so
// the values must survive fiber switches.
__global__ void ids_probe(uint32_t* out) {
  const unsigned n = blockDim.x * blockDim.y * blockDim.z;
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  __syncthreads();
  uint32_t* o = out + (size_t(b) * n + t) * 6;
  o[0] = blockIdx.x, o[1] = blockIdx.y, o[2] = blockIdx.z;
  o[3] = threadIdx.x, o[4] = threadIdx.y, o[5] = threadIdx.z;
}

nb::ndarray<nb::numpy, uint32_t> launch_ids(std::tuple<int, int, int> grid, std::tuple<int, int, int> block,
                                            size_t smem_bytes) {
  const dim3 g(unsigned(std::get<0>(grid)), unsigned(std::get<1>(grid)), unsigned(std::get<2>(grid)));
  const dim3 b(unsigned(std::get<0>(block)), unsigned(std::get<1>(block)), unsigned(std::get<2>(block)));
  const size_t total = size_t(g.x) * g.y * g.z * b.x * b.y * b.z;
  std::vector<uint32_t> out(total * 6 > 0 && total < (size_t(1) << 26) ? total * 6 : 0);
  uint32_t* p = out.data();
  FLASHLLM_LAUNCH(ids_probe, g, b, smem_bytes, nullptr, p);
  return to_numpy(std::move(out), {total, 6});
}

// ---- failure scenarios -------------------------------------------------------------------------
__global__ void scenario_probe(int which, uint8_t* out) {
  FLASHLLM_DYNAMIC_SMEM(smem);
  const int t = int(threadIdx.x);
  const int lane = t % 32;
  uint32_t r[4];
  float acc[4] = {0, 0, 0, 0};
  const uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  switch (which) {
    case 0:  // lanes of one warp at two different collectives
      if (lane < 16) ptx::ldmatrix_x4(r, smem);
      else ptx::mma_m16n8k16<ProbeF16>(acc, a, b, acc);
      break;
    case 1:  // half a warp at a shuffle, half at a barrier
      if (lane < 16) ptx::shfl_xor(1.0f, 1);
      else __syncthreads();
      break;
    case 2:  // half a warp exits while the other half waits at a shuffle
      if (lane < 16) return;
      ptx::shfl_xor(1.0f, 1);
      break;
    case 3:  // ldmatrix row past the end of shared memory
      ptx::ldmatrix_x4(r, smem + 256);
      break;
    case 4:  // misaligned ldmatrix row
      ptx::ldmatrix_x4(r, smem + 8);
      break;
    case 5:  // read shared memory nobody wrote: the 0xCD fill pattern
      for (int i = t; i < 256; i += int(blockDim.x)) out[i] = smem[i];
      break;
    case 6:  // warp 1 exits, the others still meet at barriers (legal, as on the GPU)
      if (t / 32 == 1) return;
      __syncthreads();
      __syncthreads();
      out[t] = 1;
      break;
    case 7:  // cp.async into shared memory from a source outside the registered buffers
      ptx::cp_async_16(smem, out + 4096, 16);
      break;
    case 8:  // ldmatrix of rows a committed but not yet awaited cp.async is still filling
      ptx::cp_async_16(smem + 16 * (lane % 16), out, 16);
      ptx::cp_async_commit();
      ptx::ldmatrix_x4(r, smem + 16 * (lane % 16));
      break;
    case 10:  // warp 1 reads rows warp 0 copied and awaited, without a barrier in between
      if (t < 32) {
        ptx::cp_async_16(smem + 16 * (lane % 16), out, 16);
        ptx::cp_async_commit();
        ptx::cp_async_wait<0>();
      }
      if (t >= 32) ptx::ldmatrix_x4(r, smem + 16 * (lane % 16));
      break;
    case 11: {  // a static __shared__ array (per block, shared by its threads) and __syncwarp
      __shared__ int32_t buf[256];
      buf[t] = 3 * t;
      __syncthreads();
      __syncwarp();
      out[t] = uint8_t(buf[(t + 1) % int(blockDim.x)]);
      break;
    }
    case 12:  // the same instruction at two call sites in divergent branches (two instructions)
      if (lane < 16)
        ptx::ldmatrix_x4(r, smem + 16 * (lane % 8));
      else
        ptx::ldmatrix_x4(r, smem + 16 * (lane % 8));
      break;
    case 13:  // one call site reached by every lane from a helper in a loop: legal
      for (int i = 0; i < 3; ++i) ptx::shfl_xor(float(i), 1 + i);
      break;
    // ---- shared-memory races between warps 0 and 1 (64 threads), and legal sharing -------------
    case 14:  // warp 1 stores into chunks warp 0 stored, no barrier: write-after-write race
      if (t < 32) ptx::sts_128(smem + 16 * (lane % 16), make_uint4(1, 2, 3, 4));
      else ptx::sts_16(smem + 2 * lane, uint16_t(lane));
      break;
    case 15:  // warp 1 loads what warp 0 stored, no barrier: read-after-write race
      if (t < 32) ptx::sts_128(smem + 16 * (lane % 16), make_uint4(1, 2, 3, 4));
      else ptx::lds_128(smem + 16 * (lane % 16));
      break;
    case 16:  // warp 1 overwrites rows warp 0 reads with ldmatrix, no barrier (write-after-read)
      if (t < 32) ptx::ldmatrix_x4(r, smem + 16 * (lane % 16));
      else ptx::sts_128(smem + 16 * (lane % 16), make_uint4(0, 0, 0, 0));
      break;
    case 17: {  // the same store / load with a barrier in between: legal, warp 1 sees warp 0's data
      if (t < 32) ptx::sts_128(smem + 16 * (lane % 16), make_uint4(uint32_t(lane % 16), 7, 8, 9));
      __syncthreads();
      if (t >= 32) {
        const uint4 v = ptx::lds_128(smem + 16 * (lane % 16));
        out[lane] = uint8_t(v.x + v.y + v.z + v.w);
      }
      break;
    }
    case 18:  // warps 0 and 1 store the two halves of the same 4-byte words: legal (disjoint bytes)
      ptx::sts_16(smem + 4 * lane + 2 * (t / 32), uint16_t(0x0101 * (t / 32 + 1)));
      __syncthreads();
      for (int i = t; i < 128; i += int(blockDim.x)) out[i] = smem[i];
      break;
    case 19:  // each warp stores, loads and re-stores its own half, no barrier: legal
      ptx::sts_128(smem + 128 * (t / 32) + 16 * (lane % 8), make_uint4(1, 1, 1, 1));
      ptx::lds_128(smem + 128 * (t / 32) + 16 * (lane % 8));
      ptx::sts_16(smem + 128 * (t / 32) + 2 * lane, uint16_t(5));
      break;
    case 20:  // warp 1 issues a cp.async into rows warp 0 just read, no barrier (write-after-read)
      if (t < 32) {
        ptx::lds_128(smem + 16 * (lane % 16));
      } else {
        ptx::cp_async_16(smem + 16 * (lane % 16), out, 16);
        ptx::cp_async_commit();
        ptx::cp_async_wait<0>();
      }
      break;
    case 21:  // both warps read the same rows, barrier, then warp 1 overwrites them: legal
      ptx::ldmatrix_x4(r, smem + 16 * (lane % 16));
      __syncthreads();
      if (t >= 32) ptx::sts_128(smem + 16 * (lane % 16), make_uint4(0, 0, 0, 0));
      break;
    case 22:  // the kernel epilogue without its barrier: warp 1 loads floats warp 0 stored (RAW)
    case 24:  // ... and with it: legal, warp 1 sees warp 0's floats
      if (t < 32) ptx::sts_32(smem + 4 * lane, 0.5f * float(lane));
      if (which == 24) __syncthreads();
      if (t >= 32) out[lane] = uint8_t(4.0f * ptx::lds_32(smem + 4 * lane));
      break;
    case 23:  // warp 1 stores floats over words warp 0 loads, no barrier (write-after-read)
      if (t < 32) ptx::lds_32(smem + 4 * lane);
      else ptx::sts_32(smem + 4 * lane, 1.0f);
      break;
    case 9:  // the same, correctly awaited: legal
      ptx::cp_async_16(smem + 16 * (lane % 16), out, 16);
      ptx::cp_async_commit();
      ptx::cp_async_wait<0>();
      ptx::ldmatrix_x4(r, smem + 16 * (lane % 16));
      for (int j = 0; j < 4; ++j) out[16 * (t % 16) + j] = uint8_t(r[j]);
      break;
  }
}

nb::ndarray<nb::numpy, uint8_t> scenario(const std::string& name, int threads) {
  static const char* const kNames[] = {"collective_mismatch", "collective_vs_barrier",
                                       "exit_at_collective",  "ldmatrix_out_of_range",
                                       "ldmatrix_misaligned", "uninitialized_smem",
                                       "early_exit_barrier",  "cp_async_out_of_bounds",
                                       "ldmatrix_reads_inflight", "ldmatrix_after_wait",
                                       "missing_barrier_after_wait", "static_shared",
                                       "two_call_sites",      "one_call_site_in_loop",
                                       "race_write_write",    "race_read_after_write",
                                       "race_write_after_read", "barrier_orders_sharing",
                                       "halves_of_one_word",  "same_warp_reuse",
                                       "race_cp_async_after_read", "readers_barrier_writer",
                                       "race_f32_read_after_write", "race_f32_write_after_read",
                                       "barrier_orders_f32"};
  int which = -1;
  for (int i = 0; i < int(sizeof kNames / sizeof kNames[0]); ++i)
    if (name == kNames[i]) which = i;
  if (which < 0) throw std::invalid_argument("unknown scenario " + name);
  std::vector<uint8_t> out(256, 0);
  GlobalRanges ranges;
  ranges.add(out.data(), out.size());
  launch(scenario_probe, dim3(1), dim3(unsigned(threads)), 256, which, out.data());
  return to_numpy(std::move(out), {256});
}

// ---- schedules ---------------------------------------------------------------------------------
// `warps` warps; in each of two barrier epochs every warp runs `rounds` shuffles, and after each
// its lane 0 appends the warp index to a log in shared memory (plain accesses: they are ordered by
// the emulator's schedule only, which is what this probe shows).
__global__ void schedule_probe(int rounds, int32_t* out) {
  FLASHLLM_DYNAMIC_SMEM(smem);
  auto* count = reinterpret_cast<int32_t*>(smem);
  int32_t* log = count + 1;
  const int t = int(threadIdx.x), lane = t % 32;
  if (t == 0) *count = 0;
  __syncthreads();
  for (int epoch = 0; epoch < 2; ++epoch) {
    for (int r = 0; r < rounds; ++r) {
      ptx::shfl_xor(0.0f, 1);
      if (lane == 0) log[(*count)++] = t / 32;
    }
    __syncthreads();
  }
  for (int i = t; i < *count; i += int(blockDim.x)) out[i] = log[i];
}

nb::ndarray<nb::numpy, int32_t> schedule_log(int warps, int rounds) {
  const size_t n = size_t(2 * warps * rounds);
  std::vector<int32_t> out(n, -1);
  launch(schedule_probe, dim3(1), dim3(unsigned(32 * warps)), (n + 1) * sizeof(int32_t), rounds,
         out.data());
  return to_numpy(std::move(out), {2, size_t(rounds) * size_t(warps)});
}

// ---- throughput probe (benchmarks only) -------------------------------------------------------
// 128 threads per block; each iteration: one ldmatrix.x4, two mma, one __syncthreads — roughly the
// instruction mix of one k16 step of the spmm kernel, to measure the emulator's per-instruction cost.
__global__ void spin_probe(int iters, float* out) {
  FLASHLLM_DYNAMIC_SMEM(smem);
  const int t = int(threadIdx.x), lane = t % 32;
  for (int i = t; i < 4096; i += int(blockDim.x)) smem[i] = uint8_t(i * 7);
  __syncthreads();
  float acc[4] = {0, 0, 0, 0};
  uint32_t a[4];
  const uint32_t b[2] = {0x3c003c00u, 0x3c003c00u};
  for (int it = 0; it < iters; ++it) {
    ptx::ldmatrix_x4(a, smem + (lane % 8) * 128 + ((lane / 8) ^ (lane % 8)) * 16);
    ptx::mma_m16n8k16<ProbeF16>(acc, a, b, acc);
    ptx::mma_m16n8k16<ProbeF16>(acc, a, b, acc);
    __syncthreads();
  }
  out[blockIdx.x * blockDim.x + t] = acc[0] + acc[1] + acc[2] + acc[3];
}

nb::ndarray<nb::numpy, float> spin(int blocks, int iters) {
  std::vector<float> out(size_t(blocks) * 128);
  {
    nb::gil_scoped_release release;
    launch(spin_probe, dim3(unsigned(blocks)), dim3(128), 4096, iters, out.data());
  }
  return to_numpy(std::move(out), {size_t(blocks), 128});
}

}  // namespace

void bind_warp_probes(nb::module_& m) {
  m.def("warp_ldmatrix", &warp_ldmatrix, nb::arg("smem"), nb::arg("offsets"), nb::arg("num"),
        nb::arg("trans"),
        "One warp: lane l passes smem + offsets[l] to ldmatrix.x{num}[.trans]. smem: (S,) uint8 "
        "initial shared memory; offsets: (32,) int64 bytes. Returns (regs (32, num) uint32, stats).");
  m.def("warp_mma", &warp_mma, nb::arg("a"), nb::arg("b"), nb::arg("c"), nb::arg("dtype"),
        "One warp: mma.m16n8k16 with per-lane fragments a (32, 4) uint32, b (32, 2) uint32, "
        "c (32, 4) float32; dtype 'float16' | 'bfloat16'. Returns d (32, 4) float32.");
  m.def("warp_smem", &warp_smem, nb::arg("op"), nb::arg("smem"), nb::arg("offsets"), nb::arg("values"),
        "One warp: op in sts_16 | sts_32 | sts_128 | lds_32 | lds_128 at smem + offsets[l] with values (32, 4) uint32. "
        "Returns (shared memory after (S,) uint8, loaded (32, 4) uint32, stats).");
  m.def("warp_ldg", &warp_ldg, nb::arg("op"), nb::arg("gmem"), nb::arg("offsets"),
        nb::arg("check_bounds") = true,
        "One warp: op in ldg_128 | ldg_32 at gmem + offsets[l]. Returns (words (32, 4|1) uint32, stats).");
  m.def("warp_shfl_xor", &warp_shfl_xor, nb::arg("values"), nb::arg("masks"),
        "One warp: lane l returns shfl_xor(values[l], masks[l]). (32,) float32 -> (32,) float32.");
  m.def("cp_async", &cp_async, nb::arg("gmem"), nb::arg("smem_bytes"), nb::arg("dst"), nb::arg("src"),
        nb::arg("nbytes"),
        "One warp, two cp.async groups (dst/src/nbytes (2, 32); dst < 0 skips). Returns (snapshots "
        "(3, smem_bytes) uint8 before any wait / after wait_group 1 / after wait_group 0, stats).");
  m.def("block_barrier", &block_barrier, nb::arg("init"), nb::arg("blocks"), nb::arg("block"),
        nb::arg("rounds"), "Barrier exchange pattern over `blocks` blocks of shape `block`.");
  m.def("launch_ids", &launch_ids, nb::arg("grid"), nb::arg("block"), nb::arg("smem_bytes") = 0,
        "(blockIdx, threadIdx) of every thread, (blocks * threads, 6) uint32, via FLASHLLM_LAUNCH.");
  m.def("schedule_log", &schedule_log, nb::arg("warps"), nb::arg("rounds"),
        "Order in which warps pass `rounds` shuffles in two barrier epochs under the current "
        "schedule: (2, warps * rounds) int32 warp indices.");
  m.def("spin", &spin, nb::arg("blocks"), nb::arg("iters"),
        "Throughput probe: blocks x 128 threads, iters x (ldmatrix.x4 + 2 mma + barrier).");
  m.def("scenario", &scenario, nb::arg("name"), nb::arg("threads") = 32,
        "Runs a named failure (or legal edge-case) scenario; returns 256 bytes of its output.");
}

}  // namespace emu
}  // namespace flashllm
