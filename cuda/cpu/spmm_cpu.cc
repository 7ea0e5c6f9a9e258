// CPU kernel driver: checks, instruction-set choice, staging of x, and the task split over the pool.
// The per-entry work lives in tile_kernel.inc, compiled per instruction set by isa_*.cc.
#include "cpu/spmm_cpu.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>

#if defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "cpu/staged.h"
#include "flashllm/format.h"

namespace flashllm::cpu {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

constexpr Isa kAllIsas[] = {Isa::kPortable, Isa::kAvx2, Isa::kAvx512, Isa::kAmx};

#if defined(__x86_64__)
// AMX-TILE and AMX-BF16: CPUID leaf 7, sub-leaf 0, EDX bits 24 and 22 (GCC 12's __builtin_cpu_supports
// does not know them).
bool cpuid_has_amx_bf16() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return ((d >> 24) & 1u) && ((d >> 22) & 1u);
}
#endif

// Linux hands out the 8 KB AMX tile-data state only to processes that ask (once, for all threads);
// without it the first tile instruction faults.
bool os_grants_amx() {
#if defined(__linux__) && defined(__x86_64__)
  static const bool granted = [] {
    constexpr long kArchReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return granted;
#else
  return false;
#endif
}

// "" when this CPU runs the variant, else the features it lacks.
std::string missing_features(Isa isa) {
  std::string missing;
#if defined(__x86_64__)
  const auto need = [&](bool has, const char* name) {
    if (!has) missing += (missing.empty() ? "" : ", ") + std::string(name);
  };
  switch (isa) {
    case Isa::kPortable: break;
    case Isa::kAmx:
      need(cpuid_has_amx_bf16(), "amx-tile/amx-bf16");
      need(__builtin_cpu_supports("avx512bf16"), "avx512bf16");
      if (missing.empty()) need(os_grants_amx(), "the OS's AMX permission (arch_prctl ARCH_REQ_XCOMP_PERM)");
      [[fallthrough]];
    case Isa::kAvx512:
      need(__builtin_cpu_supports("avx512f"), "avx512f");
      need(__builtin_cpu_supports("avx512vl"), "avx512vl");
      [[fallthrough]];
    case Isa::kAvx2:
      need(__builtin_cpu_supports("avx2"), "avx2");
      need(__builtin_cpu_supports("fma"), "fma");
      need(__builtin_cpu_supports("f16c"), "f16c");
      need(__builtin_cpu_supports("popcnt"), "popcnt");
      break;
  }
#else
  if (isa != Isa::kPortable) missing = "an x86-64 CPU";
#endif
  return missing;
}

bool cpu_has(Isa isa) { return missing_features(isa).empty(); }

bool parse_isa(const std::string& name, Isa* isa) {
  for (Isa i : kAllIsas) {
    if (name == isa_name(i)) {
      *isa = i;
      return true;
    }
  }
  return false;
}

Isa initial_isa() {
  const std::vector<Isa> have = supported_isas();
  Isa best = have.back();
  if (const char* env = std::getenv("FLASHLLM_CPU_ISA")) {
    Isa wanted;
    if (parse_isa(env, &wanted) && int(wanted) < int(best)) best = wanted;
  }
  return best;
}

std::atomic<Isa>& isa_slot() {
  static std::atomic<Isa> slot{initial_isa()};
  return slot;
}

struct IsaOps {
  int64_t (*max_chunk)();
  int64_t (*padded_width)(int64_t);
  void (*run_task)(const Staged&, int64_t, int64_t);
};

IsaOps ops_for(Isa isa) {
#if defined(__x86_64__)
  // amx runs the avx512 code, whose dense-tile multiply checks the active variant.
  if (isa == Isa::kAvx512 || isa == Isa::kAmx) return {avx512::max_chunk, avx512::padded_width, avx512::run_task};
  if (isa == Isa::kAvx2) return {avx2::max_chunk, avx2::padded_width, avx2::run_task};
#endif
  (void)isa;
  return {portable::max_chunk, portable::padded_width, portable::run_task};
}

// x (N, K) 16-bit -> chunk-major fp32 x^T (see Staged), zero-padded. The buffer is the calling thread's
// and is reused across calls: a fresh allocation of this size would be an mmap + page faults per call.
const float* stage_x(const SpmmProblem& p, const IsaOps& ops, int64_t k_pad, int64_t max_chunk) {
  static thread_local std::vector<float> buffer;
  const int64_t chunks = ceil_div(p.n, max_chunk);
  const size_t floats = size_t(chunks * k_pad * max_chunk) + 16;  // + 16: room to align to 64 bytes
  if (buffer.size() < floats) buffer.resize(floats);
  const uintptr_t base = reinterpret_cast<uintptr_t>(buffer.data());
  float* xt = buffer.data() + ((64 - base % 64) % 64) / sizeof(float);
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t n0 = c * max_chunk;
    const int64_t cols = std::min(max_chunk, p.n - n0);
    const int64_t width = ops.padded_width(cols);
    float* dst = xt + c * k_pad * max_chunk;
    std::fill(dst, dst + k_pad * width, 0.0f);
    for (int64_t j = 0; j < cols; ++j) {
      const uint16_t* xj = p.x + (n0 + j) * p.k;
      if (p.dtype == Dtype::kBFloat16)
        for (int64_t i = 0; i < p.k; ++i) dst[i * width + j] = bf16_to_float(xj[i]);
      else
        for (int64_t i = 0; i < p.k; ++i) dst[i * width + j] = f16_to_float(xj[i]);
    }
  }
  return xt;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kPortable: return "portable";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kAmx: return "amx";
  }
  return "?";
}

std::vector<std::pair<std::string, std::string>> all_isas() {
  std::vector<std::pair<std::string, std::string>> out;
  for (Isa i : kAllIsas) {
    const std::string missing = missing_features(i);
    out.emplace_back(isa_name(i), missing.empty() ? "" : "this CPU lacks " + missing);
  }
  return out;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa i : kAllIsas)
    if (cpu_has(i)) out.push_back(i);
  return out;
}

Isa active_isa() { return isa_slot().load(); }

bool set_active_isa(const std::string& name) {
  Isa isa;
  if (!parse_isa(name, &isa) || !cpu_has(isa)) return false;
  isa_slot().store(isa);
  return true;
}

std::vector<int> supported_formats() { return {kFormatTiledCsl, kFormatBitmap, kFormatDense}; }

std::string check_problem(const SpmmProblem& p) {
  const int64_t tiles = ceil_div(p.m, kTileM) * ceil_div(p.k, kTileK);
  const auto expect_index = [&](int64_t want, const char* what) -> std::string {
    if (p.index_count == want) return {};
    return std::string("the index must hold ") + std::to_string(want) + " " + what + ", got " + std::to_string(p.index_count);
  };
  std::string why;
  switch (p.format) {
    case kFormatTiledCsl: why = expect_index(p.num_entries, "uint16 locations (one per value)"); break;
    case kFormatBitmap: why = expect_index(tiles * kBitmapWordsPerTile, "uint32 words (tiles * 260)"); break;
    case kFormatDense:
      why = expect_index(0, "words (the dense format has no index)");
      for (int64_t t = 0; why.empty() && t <= tiles; ++t)
        if (p.tile_offsets[t] != t * kTileElems)
          why = "dense tile_offsets must be t * " + std::to_string(kTileElems) + " (tile " + std::to_string(t) + ")";
      break;
    default: return "unknown format id " + std::to_string(p.format);
  }
  if (!why.empty()) return why;
  if (p.tile_offsets[0] != 0) return "tile_offsets[0] must be 0";
  for (int64_t t = 0; t < tiles; ++t) {
    if (p.tile_offsets[t + 1] < p.tile_offsets[t])
      return "tile_offsets must be non-decreasing (tile " + std::to_string(t) + ")";
  }
  if (p.tile_offsets[tiles] != p.num_entries)
    return "tile_offsets[-1] = " + std::to_string(p.tile_offsets[tiles]) + " but there are " +
           std::to_string(p.num_entries) + " entries";
  return {};
}

std::string spmm(const SpmmProblem& p, int64_t num_workers, const Scheduler& schedule) {
  if (p.n == 0 || p.m == 0) return {};
  const IsaOps ops = ops_for(active_isa());
  const int64_t max_chunk = ops.max_chunk();
  const int64_t k_pad = ceil_div(p.k, kTileK) * kTileK;
  std::atomic<int64_t> bad_tile{std::numeric_limits<int64_t>::max()};
  const Staged s{&p, stage_x(p, ops, k_pad, max_chunk), k_pad, max_chunk, &bad_tile};
  const int64_t tiles_m = ceil_div(p.m, kTileM);
  const int64_t chunks = ceil_div(p.n, max_chunk);
  // A helper only pays off with enough work to amortize waking it (and, on a loaded machine, waiting
  // for it to be scheduled): layers under ~0.1 M entries (times chunks of N) run on the calling thread.
  // Measured, opt-125m decode (72 layers of 0.1-0.5 M entries, N = 1): 8.3 ms per token with this
  // value, 10.7 ms with 150000 (which keeps its 768 x 768 layers on one thread).
  constexpr int64_t kWorkPerHelper = 50000;  // ~40 us of kernel time, in entry-passes
  const int64_t work = std::max<int64_t>(p.num_entries, 1) * chunks;
  const int64_t workers = std::clamp<int64_t>(work / kWorkPerHelper, 1, std::max<int64_t>(num_workers, 1));
  // Chunks of one tile row are adjacent task ids, so a worker re-reads that row's entries from cache.
  parallel_for(tiles_m * chunks, workers, schedule,
               [&](int64_t task) { ops.run_task(s, task / chunks, task % chunks); });
  const int64_t bad = bad_tile.load();
  if (bad == std::numeric_limits<int64_t>::max()) return {};
  return "bitmap tile " + std::to_string(bad) +
         ": its bits disagree with its value count (tile_offsets) or its slab offsets (header words)";
}

}  // namespace flashllm::cpu
