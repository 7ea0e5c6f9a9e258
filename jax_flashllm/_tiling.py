"""Kernel configuration choices the Python side must know at trace time.

The CUDA kernel (cuda/kernel/launcher.cuh) picks its block tile from N with the table `CONFIGS`
mirrored here (tests/test_emulated_kernel.py checks the two agree through the emulation module).
The split-K factor is chosen here, once, at trace time: it sizes the primitive's workspace result
(`split_k * N * M_pad` float32, M_pad = ceil(M / 128) * 128, empty when split_k == 1) and reaches
the CUDA handler as the `split_k` FFI attribute, which the handler trusts. CPU runs use 1.
"""

from __future__ import annotations

from typing import NamedTuple

from jax_flashllm import _constants as C

__all__ = ["CONFIGS", "TileConfig", "choose_config", "choose_split_k", "config_index"]


class TileConfig(NamedTuple):
    """One block tile of the CUDA kernel: serves N <= max_n (None: every larger N)."""

    name: str
    max_n: int | None
    block_m: int
    block_n: int


# Decode-sized N gets tall 256-row blocks: the kernel is bound by the weight stream, and fewer,
# taller blocks re-read X less. Same order and values as kConfigTable in cuda/kernel/launcher.cuh.
CONFIGS: tuple[TileConfig, ...] = (
    TileConfig("256x16", 16, 256, 16),
    TileConfig("256x32", 32, 256, 32),
    TileConfig("128x64", 64, 128, 64),
    TileConfig("128x128", None, 128, 128),
)

# Each split should still run a few K steps: the prologue (first tile loaded without overlap) and
# the fp32 partial round trip are paid per split.
MIN_K_TILES_PER_SPLIT = 4
# Caps the workspace (split_k * N * M_pad * 4 bytes) and the reduce kernel's reads.
MAX_SPLIT_K = 16


def config_index(n: int) -> int:
    """Index into CONFIGS of the block tile the CUDA kernel uses for N rows of x."""
    for i, cfg in enumerate(CONFIGS):
        if cfg.max_n is None or n <= cfg.max_n:
            return i
    return len(CONFIGS) - 1


def choose_config(n: int) -> TileConfig:
    """The block tile the CUDA kernel uses for N rows of x."""
    return CONFIGS[config_index(n)]


def choose_split_k(m: int, k: int, n: int, num_sms: int) -> int:
    """Split-K factor for y (N, M) = x (N, K) @ W^T on a GPU with `num_sms` SMs.

    Splits K only when the output tiles alone leave SMs idle (decode shapes: few, tall blocks), and
    only as far as one wave of blocks: split = num_sms // blocks, capped so that every split keeps
    MIN_K_TILES_PER_SPLIT K tiles and at MAX_SPLIT_K. 1 means no split and an empty workspace.
    """
    if m <= 0 or n <= 0 or k <= 0 or num_sms <= 0:
        return 1
    cfg = choose_config(n)
    blocks = -(-m // cfg.block_m) * -(-n // cfg.block_n)
    k_tiles = C.tile_grid(m, k)[1]
    split = min(num_sms // blocks, k_tiles // MIN_K_TILES_PER_SPLIT, MAX_SPLIT_K)
    return max(1, split)
