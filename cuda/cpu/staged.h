// What the per-instruction-set kernels (isa_*.cc) receive: the problem plus x already staged as fp32,
// transposed and cut into column chunks. ISA-neutral: no intrinsics here.
#pragma once

#include <atomic>
#include <cstdint>

#include "cpu/spmm_cpu.h"

namespace flashllm::cpu {

// x (N, K) is cut into chunks of at most `max_chunk` columns of N. Chunk c holds columns
// [c * max_chunk, min(N, (c + 1) * max_chunk)), staged as xt_c (K_pad, width_c) fp32, zero past K and
// past the chunk's real columns; width_c is the kernel's padded width for that many columns. Chunk c
// starts at xt + c * k_pad * max_chunk. One task = one (tile row, chunk): its (kTileM, width_c)
// accumulator stays in L1 while the row's K tiles stream through.
struct Staged {
  const SpmmProblem* p;
  const float* xt;
  int64_t k_pad;
  int64_t max_chunk;
  std::atomic<int64_t>* bad_tile;  // the lowest malformed bitmap tile seen (tile_source.inc), else INT64_MAX
};

// Every instruction-set variant (namespaces portable, avx2, avx512; isa_*.cc) implements:
//   int64_t max_chunk();                  widest chunk of N columns one task handles
//   int64_t padded_width(int64_t cols);   staging width for a chunk of 1 <= cols <= max_chunk() columns
//   void run_task(const Staged&, int64_t mt, int64_t chunk);   y[chunk's columns, tile row mt]
namespace portable {
int64_t max_chunk();
int64_t padded_width(int64_t cols);
void run_task(const Staged& s, int64_t mt, int64_t chunk);
}  // namespace portable
#if defined(__x86_64__)
namespace avx2 {
int64_t max_chunk();
int64_t padded_width(int64_t cols);
void run_task(const Staged& s, int64_t mt, int64_t chunk);
}  // namespace avx2
namespace avx512 {
int64_t max_chunk();
int64_t padded_width(int64_t cols);
void run_task(const Staged& s, int64_t mt, int64_t chunk);
}  // namespace avx512
#endif

}  // namespace flashllm::cpu
