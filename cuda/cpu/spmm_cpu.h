// CPU kernel: y (N, M) = x (N, K) @ W^T for W in Tiled-CSL (v1), bitmap (v2) or dense (v3) format.
// Knows nothing of XLA.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "cpu/numeric.h"
#include "cpu/parallel.h"

namespace flashllm::cpu {

struct SpmmProblem {
  const uint16_t* x;             // (n, k) 16-bit floats, row-major
  const uint16_t* values;        // (num_entries,) same dtype as x
  const uint16_t* locations;     // tiled_csl: (num_entries,) swizzled in-tile offsets; else null
  const uint32_t* bitmaps;       // bitmap: (tiles * kBitmapWordsPerTile,) per-tile index; else null
  const int32_t* tile_offsets;   // (tiles_m * tiles_k + 1,)
  uint16_t* y;                   // (n, m) 16-bit floats, row-major
  int64_t m, k, n;
  int64_t num_entries;
  int64_t index_count;           // elements of the format's index (locations or bitmap words)
  Dtype dtype;
  int format;                    // kFormatTiledCsl | kFormatBitmap | kFormatDense (flashllm/format.h)
};

// The format ids this build's kernels take.
std::vector<int> supported_formats();

// Checks the parts of the format the kernel's memory safety depends on and that cost O(tiles): the
// format id, the index length, tile offsets in range and non-decreasing (dense: exactly t * kTileElems).
// Returns an empty string when the problem is safe to run, else the reason. What costs a pass over
// the index (a bitmap tile's bits against its value count) is checked by the kernel as it decodes.
std::string check_problem(const SpmmProblem& p);

// Computes the product with fp32 accumulation; work is shared over `num_workers` via `schedule`.
// Returns "" or, for a bitmap matrix whose bits disagree with its value counts or slab offsets, the
// first such tile (such a tile is skipped: y is then unspecified, but nothing is read out of bounds).
std::string spmm(const SpmmProblem& p, int64_t num_workers, const Scheduler& schedule);

// Instruction-set variants of the kernel, chosen once at run time (never by compile flags, so one
// build runs on any x86-64 and on arm64): the best the CPU supports, or FLASHLLM_CPU_ISA=portable|avx2|
// avx512|amx in the environment at first use (capped at what the CPU supports). amx is avx512 with AMX
// tiles for the dense-tile multiply (N >= 16, bf16).
enum class Isa { kPortable, kAvx2, kAvx512, kAmx };

const char* isa_name(Isa isa);
// The variants this CPU can run, portable first.
std::vector<Isa> supported_isas();
// Every variant this build has, portable first: (name, "" if this CPU runs it, else why not).
std::vector<std::pair<std::string, std::string>> all_isas();
Isa active_isa();
// Switches the variant used by later calls (tests, benchmarks). Returns false (and changes nothing)
// if the CPU lacks it or the name is unknown.
bool set_active_isa(const std::string& name);

}  // namespace flashllm::cpu
