// Shared-memory plan of the bitmap (v2) and dense (v3) kernel for one tiling config. The block tile,
// warp layout and X staging are the Tiled-CSL config's (traits.cuh: the dispatcher picks the same
// config by N for every format); what changes is what a pipeline stage holds for W:
//   packed values of the block's format tiles  (kSubTiles x up to kTileElems 16-bit values)
//   their bitmap index                          (kSubTiles x kBitmapWordsPerTile uint32; bitmap only)
// instead of a zero-filled dense W tile. The values region is sized for a fully dense tile, so no
// density is ever dropped and a tile always arrives in one cp.async wave.
#pragma once

#include "../include/flashllm/format.h"
#include "traits.cuh"

namespace flashllm {

template <class Base, bool kDense_>
struct BitmapTraits {
  using B = Base;
  static constexpr bool kDense = kDense_;  // dense format: no index, A fragments via ldmatrix

  static constexpr int kValElems = B::kSubTiles * kTileElems;
  static constexpr int kIndexWords = kDense ? 0 : B::kSubTiles * kBitmapWordsPerTile;
  static constexpr int kIndexChunks = kBitmapWordsPerTile / 4;  // 16-byte cp.async per tile: 65
  static constexpr int kStageBytes = kValElems * 2 + kIndexWords * 4 + B::kXTileElems * 2;
  static constexpr int kMainSmemBytes = 2 * kStageBytes;  // double buffered
  static constexpr int kSmemBytes =
      kMainSmemBytes > B::kEpilogueSmemBytes ? kMainSmemBytes : B::kEpilogueSmemBytes;

  // __launch_bounds__ occupancy: as many blocks as sm_90's shared memory allows (with no register
  // staging these kernels need fewer registers than Tiled-CSL's), at most 4 (128 registers: ptxas
  // 13.0 fits every config but 128x128 in that without spills), and 128x128 keeps its config's 2
  // (128 accumulators per thread). The per-SM figures mirror jax_flashllm/_tiling.py ARCH_LIMITS[90]
  // and its 1 KiB per-block reserve (tests/test_cuda_build.py checks the occupancy ptxas gives).
  static constexpr int kSm90SmemPerSm = 233472;
  static constexpr int kSmemReservedPerBlock = 1024;
  static constexpr int kSmemBlocksSm90 = kSm90SmemPerSm / (kSmemBytes + kSmemReservedPerBlock);
  static constexpr int kRegisterBlocks = B::kBlockN >= 128 ? B::kMinBlocksPerSm : 4;
  static constexpr int kMinBlocksPerSm =
      kSmemBlocksSm90 < kRegisterBlocks ? kSmemBlocksSm90 : kRegisterBlocks;

  // A warp's M extent is exactly one 64-row slab of one format tile: the block order of format.h
  // puts that slab's blocks back to back, so the warp walks its own values front to back and needs
  // nobody else's popcounts (the tile header gives the slab's first value).
  static_assert(B::kWarpM == kSlabRows, "a warp must own exactly one slab of a format tile");
  static_assert(B::kFragsM == kFragsPerSlab && B::kKSteps == kKStepsPerTile,
                "the warp's fragment walk must be the format's block order");
  static_assert(kStageBytes % 16 == 0, "stages start on 16 bytes (cp.async, lds_128)");
  static_assert(kSmemBytes <= 99 * 1024, "must fit sm_86/sm_89's 99 KiB per-block shared memory");
  static_assert(kMinBlocksPerSm >= 1, "at least one block per SM");
};

}  // namespace flashllm
