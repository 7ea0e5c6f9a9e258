// Tiling configurations of the SpMM kernel: one traits struct per block tile. Everything the
// kernel body, the launcher and the tests need to know about a configuration is derived here and
// guarded by static_asserts, so an inconsistent config fails to compile instead of miscomputing.
#pragma once

#include "../include/flashllm/format.h"

namespace flashllm {

// kBlockM x kBlockN output tile per thread block (M = output features, N = tokens), walking K in
// steps of one format tile (kTileK = 64). 4 warps arranged kWarpsM x kWarpsN; each warp owns a
// (kBlockM / kWarpsM) x (kBlockN / kWarpsN) sub-tile. kStageChunks: how many 1024-entry chunks of
// each format tile are staged in registers while the Tensor Cores work (the rest of a denser tile
// is loaded after the MMAs, not overlapped, so no density is ever dropped).
// kMinBlocksPerSm: the occupancy __launch_bounds__ asks ptxas for (registers <= 64K / (128 *
// blocks)); the shared memory allows it on sm_90 (228 KiB per SM); the occupancy table of
// jax_flashllm/_tiling.py holds what ptxas gave per architecture (checked by test_cuda_build.py).
template <int kBlockM_, int kBlockN_, int kWarpsM_, int kWarpsN_, int kStageChunks_,
          int kMinBlocksPerSm_>
struct SpmmTraits {
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kBlockK = kTileK;
  static constexpr int kWarpsM = kWarpsM_;
  static constexpr int kWarpsN = kWarpsN_;
  static constexpr int kWarps = kWarpsM * kWarpsN;
  static constexpr int kThreads = kWarps * 32;

  static constexpr int kWarpM = kBlockM / kWarpsM;
  static constexpr int kWarpN = kBlockN / kWarpsN;
  static constexpr int kMmaM = 16, kMmaN = 8, kMmaK = 16;
  static constexpr int kFragsM = kWarpM / kMmaM;  // m16 tiles per warp
  static constexpr int kFragsN = kWarpN / kMmaN;  // n8 tiles per warp
  static constexpr int kKSteps = kBlockK / kMmaK;  // k16 steps per K tile

  // A block of kBlockM rows consumes kBlockM / kTileM format tiles per K step (t = mt * Kt + kt).
  static constexpr int kSubTiles = kBlockM / kTileM;
  static constexpr int kEntriesPerVec = 8;  // one 16-byte load of values (and one of locations)
  static constexpr int kChunkEntries = kThreads * kEntriesPerVec;
  static constexpr int kMaxChunks = kTileElems / kChunkEntries;  // a fully dense tile
  static constexpr int kStageChunks = kStageChunks_;
  static constexpr int kMinBlocksPerSm = kMinBlocksPerSm_;

  // Shared memory: double-buffered dense W tile (swizzled exactly like format locations) and X
  // tile (kBlockN rows of 64 k-values, same swizzle); the epilogue reuses it as an fp32 C tile
  // whose row stride is padded by 4 floats so the fragment stores hit 32 distinct banks.
  static constexpr int kWTileElems = kBlockM * kBlockK;
  static constexpr int kXTileElems = kBlockN * kBlockK;
  static constexpr int kMainSmemBytes = 2 * (kWTileElems + kXTileElems) * 2;
  static constexpr int kCStride = kBlockM + 4;
  static constexpr int kEpilogueSmemBytes = kBlockN * kCStride * 4;
  static constexpr int kSmemBytes =
      kMainSmemBytes > kEpilogueSmemBytes ? kMainSmemBytes : kEpilogueSmemBytes;

  // X chunks of 16 bytes per K tile, and per thread.
  static constexpr int kXChunks = kBlockN * (kBlockK / 8);
  static constexpr int kXChunksPerThread = kXChunks / kThreads;
  static constexpr int kWZeroVecsPerThread = kWTileElems / 8 / kThreads;

  static_assert(kWarps == 4, "the launcher and register budget assume 4 warps (128 threads)");
  static_assert(kBlockM % kTileM == 0, "a block must consume whole format tiles");
  static_assert(kWarpM % kMmaM == 0 && kWarpN % 16 == 0,
                "B fragments are loaded with ldmatrix.x4, two n8 tiles at a time");
  static_assert(kBlockK % kMmaK == 0, "K tile must be a multiple of the MMA K");
  static_assert(kTileElems % kChunkEntries == 0, "register chunks must tile a dense tile");
  static_assert(kStageChunks >= 1 && kStageChunks <= kMaxChunks, "staging depth out of range");
  static_assert(kXChunks % kThreads == 0, "every thread copies the same number of X chunks");
  static_assert((kWTileElems / 8) % kThreads == 0, "zero fill must split evenly");
  static_assert(kSmemBytes <= 99 * 1024, "must fit sm_86/sm_89's 99 KiB per-block shared memory");
};

// The configurations the dispatcher uses (chosen by N, see launcher.cuh and
// jax_flashllm/_tiling.py). Occupancy first: a decode-shaped SpMM is bound by the weight stream,
// and bytes in flight per SM come from resident blocks, so every config asks __launch_bounds__ for
// the blocks per SM its shared memory allows on sm_90 (3; 2 for 128x128, whose 128 accumulators
// per thread leave no room) and stages as many register chunks (1024 entries each of a format tile)
// as fit without spilling (ptxas 13.0, sm_80 and sm_90, registers <= 168):
//   256x16: 4 chunks (162 registers); 256x32: 2 (3 spilled 56 bytes); 128x64: 3 (4 spilled 12
//   bytes on sm_80); 128x128: 2 at 2 blocks per SM.
// Entries beyond the staged chunks are loaded after the MMAs, not overlapped, so no density is
// ever dropped; at 80 % sparsity a tile has ~1640 entries, which 2 chunks cover.
using Traits256x16 = SpmmTraits<256, 16, 4, 1, 4, 3>;
using Traits256x32 = SpmmTraits<256, 32, 4, 1, 2, 3>;
using Traits128x64 = SpmmTraits<128, 64, 2, 2, 3, 3>;
using Traits128x128 = SpmmTraits<128, 128, 2, 2, 2, 2>;

}  // namespace flashllm
