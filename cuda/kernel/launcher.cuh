// Host-side launch interface of the SpMM kernel: the tiling table (config by N), parameter setup
// and the dispatch over (config, dtype). The per-(config, dtype) launch functions are explicit
// instantiations, one small .cu each (cuda/kernel/inst/), so the CUDA build parallelizes; the
// host emulation includes launch_impl.cuh + dispatch.cuh and instantiates them implicitly.
#pragma once

#include <cstdint>
#include <string>

#include "params.cuh"
#include "traits.cuh"

#if defined(FLASHLLM_EMU)
#include "../emu/emu.h"  // cudaStream_t, dim3 (the emulator accepts and ignores the stream)
#else
#include <cuda_runtime.h>
#endif

namespace flashllm {

struct Fp16;
struct Bf16;

using StreamHandle = cudaStream_t;

enum class Dtype { kFloat16, kBfloat16 };

// The dispatcher's tiling table, mirrored by jax_flashllm/_tiling.py (CONFIGS; a test checks
// that the two agree through the emulation module). A config serves every N <= max_n that no
// earlier row serves; the last row serves all larger N. Small N (decode) gets tall 256-row blocks:
// the kernel is bound by the weight stream there, and fewer, taller blocks re-read X less.
struct SpmmConfigInfo {
  int max_n;  // -1: no upper bound
  int block_m;
  int block_n;
  int smem_bytes;  // dynamic shared memory per block
  const char* name;
  int stage_entries;       // entries of each format tile staged in registers ahead of the MMAs
  int min_blocks_per_sm;   // __launch_bounds__ occupancy
};
constexpr int kNumConfigs = 4;
constexpr SpmmConfigInfo kConfigTable[kNumConfigs] = {
    {16, Traits256x16::kBlockM, Traits256x16::kBlockN, Traits256x16::kSmemBytes, "256x16",
     Traits256x16::kStageChunks * Traits256x16::kChunkEntries, Traits256x16::kMinBlocksPerSm},
    {32, Traits256x32::kBlockM, Traits256x32::kBlockN, Traits256x32::kSmemBytes, "256x32",
     Traits256x32::kStageChunks * Traits256x32::kChunkEntries, Traits256x32::kMinBlocksPerSm},
    {64, Traits128x64::kBlockM, Traits128x64::kBlockN, Traits128x64::kSmemBytes, "128x64",
     Traits128x64::kStageChunks * Traits128x64::kChunkEntries, Traits128x64::kMinBlocksPerSm},
    {-1, Traits128x128::kBlockM, Traits128x128::kBlockN, Traits128x128::kSmemBytes, "128x128",
     Traits128x128::kStageChunks * Traits128x128::kChunkEntries, Traits128x128::kMinBlocksPerSm},
};

inline int choose_config(int n) {
  for (int c = 0; c < kNumConfigs; ++c) {
    if (kConfigTable[c].max_n < 0 || n <= kConfigTable[c].max_n) return c;
  }
  return kNumConfigs - 1;
}

// Fills the derived fields of p from its pointers and n, m, k.
inline void finalize_params(SpmmParams& p) {
  p.m_tiles = (p.m + kTileM - 1) / kTileM;
  p.k_tiles = (p.k + kTileK - 1) / kTileK;
  p.m_pad = p.m_tiles * kTileM;
  p.x_vec_ok = p.k % 8 == 0 && (reinterpret_cast<uintptr_t>(p.x) % 16) == 0;
}

// Launches one (config, dtype) instantiation on `stream` (with split_k > 1: a memset of the split-K
// counters, then the kernel, which reduces the splits itself). Returns an empty string on success,
// else a message. Never allocates or synchronizes.
template <class T, class Tag>
std::string launch_spmm_config(const SpmmParams& p, StreamHandle stream);

// The same for the bitmap (kDense = false) and dense (true) formats (bitmap_launch.cuh).
template <class T, class Tag, bool kDense>
std::string launch_spmm_bitmap_config(const SpmmParams& p, StreamHandle stream);

// Launches y = x @ W^T in p.format. config: index into kConfigTable, or -1 to choose by N. p must be
// finalized. Defined in dispatch.cuh (compiled once: launcher.cu, or the emulation entry).
std::string launch_spmm(const SpmmParams& p, Dtype dtype, int config, StreamHandle stream);

}  // namespace flashllm
