// Semantics of the emulated PTX instructions. Every warp-collective instruction is executed once per
// warp, by the last lane to arrive, over all 32 lanes' operands (emu::detail::warp_collective).
// Fragment layouts follow the PTX ISA, sections "Warp-level matrix load instruction: ldmatrix" and
// "Matrix Fragments for mma.m16n8k16 with floating point type"; the formulas are quoted at each use.
#include "ptx_emu.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace flashllm {
namespace emu {
namespace ptx_impl {
namespace {

using detail::WarpCall;
using emu::Op;

// Collective kinds: lanes of one warp must all be at the same kind (else: divergence error).
enum Kind : int {
  kLdmatrix = 0,  // + 2 * num + trans  (0..9)
  kMmaF16 = 16,
  kMmaBF16,
  kLdg128,
  kLdg32,
  kSts16,
  kSts128,
  kLds128,
  kShflXor,
  kSts32,
  kLds32,
  kLds16,
};

uint16_t load_u16(const unsigned char* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

uintptr_t smem_offset(const void* p) {
  return reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(detail::current_smem());
}

// ---- Bank conflicts ---------------------------------------------------------------------------
// Shared memory has 32 banks of 4 bytes; word w (byte offset / 4) lives in bank w % 32. One
// wavefront serves at most one distinct word per bank (lanes reading the same word share it), so a
// warp request needs max over banks of (distinct words in that bank) wavefronts, and at least
// ceil(distinct words / 32). Conflicts = wavefronts - that minimum.
//
// The whole warp request is analysed at once, also for ldmatrix and 16-byte accesses. This is an
// unverified modelling choice (docs/emulation.md): a third-party Nsight Compute measurement reports
// a conflict-free 2-wavefront ldmatrix.x2 for 16 rows 32 bytes apart (rows 0 and 4 of each 8-row
// matrix share banks), which a strict per-8-address-phase model would count as 2 extra wavefronts;
// not reproduced here, so re-check on the first GPU. For 128-byte swizzled rows (the kernel's
// tiles) both models agree.
void count_bank_conflicts(Op op, const uint32_t* words, int n) {
  uint32_t seen[32][32 * 4];  // distinct words per bank (a request touches at most 128 words)
  int per_bank[32] = {};
  int distinct = 0, worst = 0;
  for (int i = 0; i < n; ++i) {
    const uint32_t w = words[i], bank = w % 32;
    bool dup = false;
    for (int j = 0; j < per_bank[bank] && !dup; ++j) dup = seen[bank][j] == w;
    if (dup) continue;
    seen[bank][per_bank[bank]++] = w;
    worst = std::max(worst, per_bank[bank]);
    ++distinct;
  }
  detail::count_smem(op, uint64_t(worst), uint64_t((distinct + 31) / 32));
}

// Words [off/4, (off+bytes-1)/4] of one lane's access appended to `words`.
int append_words(uint32_t* words, int n, uintptr_t off, int bytes) {
  for (uintptr_t w = off / 4; w <= (off + bytes - 1) / 4; ++w) words[n++] = uint32_t(w);
  return n;
}

// A counted shared access must not touch a 16-byte chunk that a cp.async still has in flight (a
// missing or too weak cp.async.wait_group, or a store into a buffer that is still being filled), nor
// one that another warp's wait_group landed after the last __syncthreads (the copy is visible only
// to the waiting thread until a barrier). Both are races on the GPU; the emulator would silently
// give stale or lucky data, so it reports them.
void check_chunks(uintptr_t off, int bytes, const char* op, int lane, int warp) {
  const uint16_t* inflight = detail::inflight_chunks();
  const int16_t* landed = detail::landed_by_warp();
  for (uintptr_t c = off / 16; c <= (off + bytes - 1) / 16; ++c) {
    char buf[240];
    if (inflight[c] != 0) {
      std::snprintf(buf, sizeof buf,
                    "%s: lane %d accesses shared offset %zu while a cp.async into it is in flight "
                    "(missing cp.async.wait_group, or a store racing the copy)",
                    op, lane, size_t(off));
      detail::fail(buf);
    }
    if (landed[c] >= 0 && landed[c] != warp) {
      std::snprintf(buf, sizeof buf,
                    "%s: lane %d accesses shared offset %zu, which warp %d's cp.async landed with no "
                    "__syncthreads since (missing barrier after cp.async.wait_group)",
                    op, lane, size_t(off), int(landed[c]));
      detail::fail(buf);
    }
  }
}

// ---- Global sectors ---------------------------------------------------------------------------
// A warp's global request is served in 32-byte sectors; count the distinct ones its lanes touch
// (at most 2 per lane: accesses are at most 16 bytes and naturally aligned).
void count_sectors(Op op, const void* const* addr, int bytes) {
  uint64_t sectors[64];
  int n = 0;
  for (int l = 0; l < 32; ++l) {
    const auto* a = static_cast<const unsigned char*>(addr[l]);
    for (uint64_t s = detail::sector_of(a), last = detail::sector_of(a + bytes - 1); s <= last; ++s)
      sectors[n++] = s;
  }
  std::sort(sectors, sectors + n);
  detail::count_gmem(op, uint64_t(std::unique(sectors, sectors + n) - sectors));
}

// ---- ldmatrix ---------------------------------------------------------------------------------
struct LdmatrixLane {
  const void* row;  // this lane's row address (used if lane < 8 * num)
  uint32_t* regs;
  int num;
  bool trans;
};

// PTX ISA, ldmatrix (.m8n8, .b16): matrix j (0 <= j < num) has its 8 rows of 16 bytes at the
// addresses given by lanes 8j .. 8j+7 (row r from lane 8j + r). Destination register j of every lane
// holds a fragment of matrix j: lane l gets row (l / 4), elements (l % 4) * 2 and (l % 4) * 2 + 1,
// the lower-numbered element in the lower 16 bits. With .trans the matrix is transposed on the way:
// lane l gets column (l / 4), rows (l % 4) * 2 and (l % 4) * 2 + 1, i.e. element [row][col] below
// is read as M[col][row] of the stored matrix.
void exec_ldmatrix(const WarpCall& call) {
  const auto& lane0 = *static_cast<const LdmatrixLane*>(call.lane_data[0]);
  const int num = lane0.num;
  const bool trans = lane0.trans;
  const unsigned char* rows[32];
  uint32_t words[32 * 4];
  int nwords = 0;
  const uint16_t what = detail::access_id(call.name, call.site);
  for (int i = 0; i < 8 * num; ++i) {
    const auto& li = *static_cast<const LdmatrixLane*>(call.lane_data[i]);
    detail::check_smem(li.row, 16, 16, "ldmatrix", i);
    check_chunks(smem_offset(li.row), 16, "ldmatrix", i, call.warp);
    detail::track_smem(smem_offset(li.row), 16, false, what, call.warp, i);
    rows[i] = static_cast<const unsigned char*>(li.row);
    nwords = append_words(words, nwords, smem_offset(li.row), 16);
  }
  count_bank_conflicts(Op::kLdmatrix, words, nwords);
  for (int l = 0; l < 32; ++l) {
    const auto& ll = *static_cast<const LdmatrixLane*>(call.lane_data[l]);
    const int group = l / 4, pair = (l % 4) * 2;
    for (int j = 0; j < num; ++j) {
      const unsigned char* const* m = rows + 8 * j;  // m[r] + 2 * c = &M_j[r][c]
      uint16_t lo, hi;
      if (!trans) {
        lo = load_u16(m[group] + 2 * pair);
        hi = load_u16(m[group] + 2 * (pair + 1));
      } else {
        lo = load_u16(m[pair] + 2 * group);
        hi = load_u16(m[pair + 1] + 2 * group);
      }
      ll.regs[j] = uint32_t(lo) | (uint32_t(hi) << 16);
    }
  }
}

// ---- mma.m16n8k16 -----------------------------------------------------------------------------
struct MmaLane {
  const uint32_t* a;
  const uint32_t* b;
  const float* c;
  float* d;
};

// fp16 / bf16 bits -> float (exact: every fp16 and bf16 value is a float).
float decode_f16_bits(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const int exp = (h >> 10) & 0x1f;
  const uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | (uint32_t(exp + 112) << 23) | (man << 13);
  } else {
    const float mag = float(man) * 0x1p-24f;  // subnormal: exact in float
    return sign ? -mag : mag;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

struct DecodeF16 {
  float operator()(uint16_t h) const {
    static const std::vector<float> table = [] {  // 256 KiB; decoding was 10% of mma's time
      std::vector<float> t(65536);
      for (uint32_t i = 0; i < 65536; ++i) t[i] = decode_f16_bits(uint16_t(i));
      return t;
    }();
    return table[h];
  }
};

struct DecodeBf16 {
  float operator()(uint16_t h) const {
    const uint32_t bits = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
};

// NaN results leave as the canonical single-precision NaN 0x7fffffff, whatever the inputs' payloads
// (a NaN input, inf * 0, inf - inf): the CUDA Programming Guide documents that bit pattern for
// results of float operations involving NaNs, and the tensor cores are reported to do the same for
// f32 outputs. Not yet confirmed on our GPUs (no device here): re-check on the first one (see
// docs/emulation.md). Without this the emulator would pass input payloads through (or x86's
// negative default NaN 0xffc00000), which no GPU produces.
float canonical_nan(float v) {
  if (v == v) return v;
  const uint32_t bits = 0x7fffffffu;
  std::memcpy(&v, &bits, 4);
  return v;
}

// Element i of a register fragment: register i / 2, low half for even i ("Elements (low to high)").
uint16_t element(const uint32_t* regs, int i) { return uint16_t(regs[i / 2] >> (16 * (i % 2))); }

// PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type", with
// groupID = %laneid >> 2 and threadID_in_group = %laneid % 4:
//   A (16x16, .f16/.bf16, a0..a7):  row = groupID      for ai with 0 <= i < 2 || 4 <= i < 6,
//                                         groupID + 8  otherwise;
//                                   col = threadID_in_group * 2 + (i & 1)      for i < 4,
//                                         threadID_in_group * 2 + (i & 1) + 8  for i >= 4.
//   B (16x8, b0..b3):               row = threadID_in_group * 2 + (i & 1)      for i < 2,
//                                         threadID_in_group * 2 + (i & 1) + 8  for i >= 2;
//                                   col = groupID.
//   C, D (16x8, .f32, c0..c3):      row = groupID for i < 2, groupID + 8 for i >= 2;
//                                   col = threadID_in_group * 2 + (i & 1).
// Rounding: the products of two f16 (11-bit significands) or bf16 (8-bit) values are exact in
// float; each D element is c + sum over k = 0..15 of A[row][k] * B[k][col], accumulated in double
// in k order and rounded once to float (round to nearest even). That is the exactly rounded
// result whenever the terms span fewer than 2^29 in magnitude (always in practice); the hardware
// adds with fp32-or-better internal precision but an unspecified order and truncation, so the
// emulator is at least as accurate as any GPU: tolerances must be met by the kernel's algorithm
// (fp32 accumulation across K steps, final rounding to 16 bits), not by luck in the tensor core.
template <class Decode>
void exec_mma(const WarpCall& call) {
  const Decode decode;
  float a[16][16], b[16][8], c[16][8];
  for (int l = 0; l < 32; ++l) {
    const auto& ml = *static_cast<const MmaLane*>(call.lane_data[l]);
    const int g = l >> 2, t = l % 4;
    for (int i = 0; i < 8; ++i) {
      const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
      const int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      a[row][col] = decode(element(ml.a, i));
    }
    for (int i = 0; i < 4; ++i) {
      const int row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
      b[row][g] = decode(element(ml.b, i));
      c[i < 2 ? g : g + 8][t * 2 + (i & 1)] = ml.c[i];
    }
  }
  // k outermost keeps each element's additions in k order while the 8 columns are independent
  // accumulators (vectorizable; a k-innermost chain of dependent adds was the emulator's hot spot).
  double acc[16][8];
  for (int row = 0; row < 16; ++row)
    for (int col = 0; col < 8; ++col) acc[row][col] = c[row][col];
  for (int k = 0; k < 16; ++k)
    for (int row = 0; row < 16; ++row) {
      const double ark = a[row][k];
      for (int col = 0; col < 8; ++col) acc[row][col] += ark * double(b[k][col]);
    }
  for (int l = 0; l < 32; ++l) {
    const auto& ml = *static_cast<const MmaLane*>(call.lane_data[l]);
    const int g = l >> 2, t = l % 4;
    for (int i = 0; i < 4; ++i)  // all lanes' operands were read above, so d may alias c
      ml.d[i] = canonical_nan(float(acc[i < 2 ? g : g + 8][t * 2 + (i & 1)]));
  }
}

// ---- Counted global loads ---------------------------------------------------------------------
template <class T>
struct LdgLane {
  const void* p;
  T out;
};

template <class T, Op kOp, const char* kName>
void exec_ldg(const WarpCall& call) {
  const void* addr[32];
  for (int l = 0; l < 32; ++l) {
    auto& ll = *static_cast<LdgLane<T>*>(call.lane_data[l]);
    if (reinterpret_cast<uintptr_t>(ll.p) % sizeof(T) != 0) {
      char buf[128];
      std::snprintf(buf, sizeof buf, "%s: lane %d's address %p is not %zu-byte aligned", kName, l,
                    ll.p, sizeof(T));
      detail::fail(buf);
    }
    detail::check_global(ll.p, sizeof(T), kName, l);
    std::memcpy(&ll.out, ll.p, sizeof(T));
    addr[l] = ll.p;
  }
  count_sectors(kOp, addr, int(sizeof(T)));
}

constexpr char kLdg128Name[] = "ldg_128";
constexpr char kLdg32Name[] = "ldg_32";

// ---- Counted shared loads / stores ------------------------------------------------------------
template <class T>
struct SmemLane {
  void* p;
  T v;
};

template <class T, bool kStore, Op kOp, const char* kName>
void exec_smem(const WarpCall& call) {
  uint32_t words[32 * 4];
  int n = 0;
  const uint16_t what = detail::access_id(call.name, call.site);
  for (int l = 0; l < 32; ++l) {
    const auto& sl = *static_cast<SmemLane<T>*>(call.lane_data[l]);
    detail::check_smem(sl.p, sizeof(T), sizeof(T), kName, l);
    check_chunks(smem_offset(sl.p), int(sizeof(T)), kName, l, call.warp);
    detail::track_smem(smem_offset(sl.p), int(sizeof(T)), kStore, what, call.warp, l);
    n = append_words(words, n, smem_offset(sl.p), int(sizeof(T)));
  }
  count_bank_conflicts(kOp, words, n);
  // Lanes are applied in lane order; two lanes storing to one address is a race on the GPU.
  for (int l = 0; l < 32; ++l) {
    auto& sl = *static_cast<SmemLane<T>*>(call.lane_data[l]);
    if (kStore)
      std::memcpy(sl.p, &sl.v, sizeof(T));
    else
      std::memcpy(&sl.v, sl.p, sizeof(T));
  }
}

constexpr char kSts16Name[] = "sts_16";
constexpr char kLds16Name[] = "lds_16";
constexpr char kSts32Name[] = "sts_32";
constexpr char kLds32Name[] = "lds_32";
constexpr char kSts128Name[] = "sts_128";
constexpr char kLds128Name[] = "lds_128";

// ---- shfl.sync.bfly ---------------------------------------------------------------------------
struct ShflLane {
  float v;
  int mask;
  float out;
};

// shfl.sync.bfly.b32 with c = 0x1f (what __shfl_xor_sync with width 32 emits) and membermask
// 0xffffffff. PTX ISA, shfl.sync: "bval[4:0] = b[4:0]; ... case .bfly: j = lane[4:0] ^ bval[4:0];
// pval = (j <= maxLane)" with maxLane = 31 for c = 0x1f: only the low 5 bits of the mask count
// and the source is always inside the warp.
void exec_shfl_xor(const WarpCall& call) {
  float v[32];
  for (int l = 0; l < 32; ++l) v[l] = static_cast<const ShflLane*>(call.lane_data[l])->v;
  for (int l = 0; l < 32; ++l) {
    auto& sl = *static_cast<ShflLane*>(call.lane_data[l]);
    sl.out = v[l ^ (sl.mask & 31)];
  }
}

}  // namespace

void ldmatrix(uint32_t* regs, int num, bool trans, const void* smem_row, CallSite site) {
  static const char* const kNames[10] = {
      "", "", "ldmatrix.x1", "ldmatrix.x1.trans", "ldmatrix.x2", "ldmatrix.x2.trans",
      "", "", "ldmatrix.x4", "ldmatrix.x4.trans"};
  LdmatrixLane lane{smem_row, regs, num, trans};
  const int kind = kLdmatrix + 2 * num + (trans ? 1 : 0);
  detail::warp_collective(kind, kNames[kind], &exec_ldmatrix, &lane, site);
}

void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b, const float* c, MmaType type,
                  CallSite site) {
  MmaLane lane{a, b, c, d};
  if (type == MmaType::kBF16)
    detail::warp_collective(kMmaBF16, "mma.m16n8k16.bf16",
                            &exec_mma<DecodeBf16>, &lane, site);
  else
    detail::warp_collective(kMmaF16, "mma.m16n8k16.f16",
                            &exec_mma<DecodeF16>, &lane, site);
}

// cp.async.cg.shared.global [dst], [src], 16, src_bytes: reads src_bytes bytes (the source is read
// now: the kernel never writes its inputs) and zero-fills the rest, but the 16 bytes land in shared
// memory only when a cp.async.wait_group retires their group. A kernel that reads the destination
// before waiting therefore sees stale data (0xCD or the previous tile) and fails.
//
// Race detector: the copy is checked as a write when issued (against other warps' accesses earlier
// in the epoch; later ones hit the in-flight check) and recorded as this warp's write when it lands.
void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes, CallSite site) {
  const int lane = detail::lane_id();
  if (src_bytes < 0 || src_bytes > 16)
    detail::fail("cp.async: src_bytes " + std::to_string(src_bytes) + " is not in [0, 16]");
  detail::check_smem(smem_dst, 16, 16, "cp.async (shared destination)", lane);
  if (reinterpret_cast<uintptr_t>(gmem_src) % 16 != 0)
    detail::fail("cp.async: global source address is not 16-byte aligned");
  detail::AsyncCopy copy;
  copy.dst = static_cast<unsigned char*>(smem_dst);
  copy.what = detail::access_id("cp.async", site);
  detail::track_smem(smem_offset(smem_dst), 16, true, copy.what, detail::warp_id(), lane);
  std::memset(copy.data, 0, sizeof copy.data);
  if (src_bytes > 0) {
    detail::check_global(gmem_src, size_t(src_bytes), "cp.async", lane);
    std::memcpy(copy.data, gmem_src, size_t(src_bytes));
  }
  detail::note_async_read(gmem_src, src_bytes);
  detail::async_uncommitted().push_back(copy);
  ++detail::inflight_chunks()[smem_offset(smem_dst) / 16];
}

// cp.async.commit_group: everything issued since the last commit becomes one group (possibly empty).
void cp_async_commit() {
  auto& pending = detail::async_uncommitted();
  detail::async_groups().push_back(pending);
  pending.clear();
}

// cp.async.wait_group n: all but the n most recent committed groups have landed on return.
void cp_async_wait(int n) {
  auto& groups = detail::async_groups();
  if (int(groups.size()) <= n) return;
  const size_t land = groups.size() - size_t(n);
  uint16_t* inflight = detail::inflight_chunks();
  const int warp = detail::warp_id(), lane = detail::lane_id();
  for (size_t g = 0; g < land; ++g)
    for (const auto& c : groups[g]) {
      detail::track_smem(smem_offset(c.dst), 16, true, c.what, warp, lane);
      std::memcpy(c.dst, c.data, 16);
      --inflight[smem_offset(c.dst) / 16];
      detail::mark_landed(smem_offset(c.dst) / 16);
    }
  groups.erase(groups.begin(), groups.begin() + long(land));
}

uint4 ldg_128(const void* gmem, CallSite site) {
  LdgLane<uint4> lane{gmem, {}};
  detail::warp_collective(kLdg128, kLdg128Name, &exec_ldg<uint4, Op::kLdg128, kLdg128Name>, &lane, site);
  return lane.out;
}

uint32_t ldg_32(const void* gmem, CallSite site) {
  LdgLane<uint32_t> lane{gmem, 0};
  detail::warp_collective(kLdg32, kLdg32Name, &exec_ldg<uint32_t, Op::kLdg32, kLdg32Name>, &lane, site);
  return lane.out;
}

void sts_16(void* smem, uint16_t v, CallSite site) {
  SmemLane<uint16_t> lane{smem, v};
  detail::warp_collective(kSts16, kSts16Name, &exec_smem<uint16_t, true, Op::kSts16, kSts16Name>, &lane, site);
}

uint16_t lds_16(const void* smem, CallSite site) {
  SmemLane<uint16_t> lane{const_cast<void*>(smem), 0};
  detail::warp_collective(kLds16, kLds16Name, &exec_smem<uint16_t, false, Op::kLds16, kLds16Name>, &lane, site);
  return lane.v;
}

// 32-bit float accesses (the kernel epilogue's fp32 C tile): 4-byte aligned, bits moved unchanged.
void sts_32(void* smem, float v, CallSite site) {
  SmemLane<float> lane{smem, v};
  detail::warp_collective(kSts32, kSts32Name, &exec_smem<float, true, Op::kSts32, kSts32Name>, &lane, site);
}

float lds_32(const void* smem, CallSite site) {
  SmemLane<float> lane{const_cast<void*>(smem), 0.0f};
  detail::warp_collective(kLds32, kLds32Name, &exec_smem<float, false, Op::kLds32, kLds32Name>, &lane, site);
  return lane.v;
}

void sts_128(void* smem, uint4 v, CallSite site) {
  SmemLane<uint4> lane{smem, v};
  detail::warp_collective(kSts128, kSts128Name, &exec_smem<uint4, true, Op::kSts128, kSts128Name>, &lane, site);
}

uint4 lds_128(const void* smem, CallSite site) {
  SmemLane<uint4> lane{const_cast<void*>(smem), {}};
  detail::warp_collective(kLds128, kLds128Name, &exec_smem<uint4, false, Op::kLds128, kLds128Name>, &lane, site);
  return lane.v;
}

float shfl_xor(float v, int lane_mask, CallSite site) {
  ShflLane lane{v, lane_mask, 0.0f};
  detail::warp_collective(kShflXor, "shfl.sync.bfly", &exec_shfl_xor, &lane, site);
  return lane.out;
}

}  // namespace ptx_impl
}  // namespace emu
}  // namespace flashllm
