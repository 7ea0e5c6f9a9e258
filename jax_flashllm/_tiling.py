"""Kernel configuration choices the Python side must know at trace time.

The CUDA kernel (cuda/kernel/launcher.cuh) picks its block tile from N with the table `CONFIGS`
mirrored here (tests/test_emulated_kernel.py checks the two agree through the emulation module).
The split-K factor is chosen here, once, at trace time: it sizes the primitive's workspace result
(`workspace_size`: split_k fp32 (N, M_pad) partials and one arrival counter per output tile, the
layout of cuda/kernel/splitk.cuh; empty when split_k == 1) and reaches the CUDA handler as the
`split_k` FFI attribute, which the handler checks against the workspace. CPU runs use 1.

Occupancy: `OCCUPANCY` holds, per GPU architecture, each config's registers per thread (ptxas -v,
CUDA 13.0), dynamic shared memory and the resulting resident blocks per SM; tests/test_cuda_build.py
recompiles the kernels and checks every entry. split-K sizes the grid so those blocks fill every SM.
"""

from __future__ import annotations

from typing import NamedTuple

from jax_flashllm import _constants as C

__all__ = ["CONFIGS", "FORMAT_OCCUPANCY", "OCCUPANCY", "TileConfig", "choose_config", "choose_split_k", "config_index",
           "blocks_per_sm", "workspace_size"]


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
# Caps the workspace (split_k * N * M_pad * 4 bytes) and the last block's reduction reads.
MAX_SPLIT_K = 16
# splitk.cuh: counters are sized for blocks of TILE_M x this many columns (the narrowest config).
SPLITK_COUNTER_BLOCK_N = 16


class ArchLimits(NamedTuple):
    """Per-SM resources of one compute capability (CUDA C++ Programming Guide, "Technical
    Specifications per Compute Capability"; shared memory = the largest carve-out)."""

    smem_per_sm: int
    max_blocks: int
    max_threads: int


ARCH_LIMITS = {
    80: ArchLimits(167936, 32, 2048),
    86: ArchLimits(102400, 16, 1536),
    89: ArchLimits(102400, 24, 1536),
    90: ArchLimits(233472, 32, 2048),
}
# The runtime reserves 1 KiB of shared memory per resident block (sm_80 and newer).
_SMEM_RESERVED_PER_BLOCK = 1024
_REGS_PER_SM = 65536
_REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256
_THREADS = 128  # every config runs 4 warps (traits.cuh)


def blocks_per_sm(registers: int, smem_bytes: int, arch: int) -> int:
    """Resident blocks per SM of a 128-thread kernel (the CUDA occupancy calculator's rules)."""
    lim = ARCH_LIMITS[arch]
    warp_regs = -(-registers * 32 // _REG_ALLOC_UNIT) * _REG_ALLOC_UNIT
    by_regs = (_REGS_PER_SM // warp_regs) // (_THREADS // 32)
    by_smem = lim.smem_per_sm // (smem_bytes + _SMEM_RESERVED_PER_BLOCK)
    return min(by_regs, by_smem, lim.max_blocks, lim.max_threads // _THREADS)


class Occupancy(NamedTuple):
    registers: int  # per thread, ptxas -v (CUDA 13.0), the bf16 and fp16 instantiations alike
    smem_bytes: int  # dynamic shared memory per block (traits.cuh kSmemBytes)
    blocks: int  # resident blocks per SM = blocks_per_sm(registers, smem_bytes, arch)


_SMEM = {"256x16": 69632, "256x32": 73728, "128x64": 49152, "128x128": 67584}
_REGISTERS = {
    80: {"256x16": 162, "256x32": 166, "128x64": 166, "128x128": 252},
    86: {"256x16": 162, "256x32": 166, "128x64": 166, "128x128": 252},
    89: {"256x16": 162, "256x32": 166, "128x64": 166, "128x128": 252},
    90: {"256x16": 162, "256x32": 168, "128x64": 168, "128x128": 251},
}
OCCUPANCY: dict[int, dict[str, Occupancy]] = {
    arch: {name: Occupancy(regs[name], _SMEM[name], blocks_per_sm(regs[name], _SMEM[name], arch))
           for name in _SMEM}
    for arch, regs in _REGISTERS.items()
}
# The bitmap / dense kernel (cuda/kernel/bitmap_kernel.cuh) of each config: its own shared memory
# (bitmap_traits.cuh: a full tile of values per sub-tile and stage, plus the bitmap index) and
# registers (ptxas -v, CUDA 13.0, the larger of fp16 / bf16 and of the architectures; 128x64 is held
# to 128 by its __launch_bounds__), so its own resident blocks per SM.
_FORMAT_SMEM = {
    "bitmap": {"256x16": 73792, "256x32": 77888, "128x64": 51232, "128x128": 67616},
    "dense": {"256x16": 69632, "256x32": 73728, "128x64": 49152, "128x128": 67584},
}
_FORMAT_REGISTERS = {
    "bitmap": {"256x16": 92, "256x32": 139, "128x64": 128, "128x128": 234},
    "dense": {"256x16": 80, "256x32": 125, "128x64": 125, "128x128": 222},
}
# format name -> arch -> config -> Occupancy; "tiled_csl" is OCCUPANCY.
FORMAT_OCCUPANCY: dict[str, dict[int, dict[str, Occupancy]]] = {
    "tiled_csl": OCCUPANCY,
    **{fmt: {arch: {name: Occupancy(_FORMAT_REGISTERS[fmt][name], smem[name],
                                    blocks_per_sm(_FORMAT_REGISTERS[fmt][name], smem[name], arch))
                    for name in smem}
             for arch in _REGISTERS}
       for fmt, smem in _FORMAT_SMEM.items()},
}
DEFAULT_ARCH = 90  # H100 / H200, what the emulation and the split-K choice assume by default


def workspace_size(m: int, n: int, split_k: int) -> int:
    """Float32 words of split-K workspace (cuda/kernel/splitk.cuh): split_k (N, M_pad) fp32 partials,
    then one uint32 arrival counter per (TILE_M x SPLITK_COUNTER_BLOCK_N) output tile. 0 without
    a split."""
    if split_k <= 1:
        return 0
    m_tiles = C.tile_grid(m, 1)[0]
    return split_k * n * m_tiles * C.TILE_M + m_tiles * -(-n // SPLITK_COUNTER_BLOCK_N)


def config_index(n: int) -> int:
    """Index into CONFIGS of the block tile the CUDA kernel uses for N rows of x."""
    for i, cfg in enumerate(CONFIGS):
        if cfg.max_n is None or n <= cfg.max_n:
            return i
    return len(CONFIGS) - 1


def choose_config(n: int) -> TileConfig:
    """The block tile the CUDA kernel uses for N rows of x."""
    return CONFIGS[config_index(n)]


def choose_split_k(m: int, k: int, n: int, num_sms: int, arch: int = DEFAULT_ARCH,
                   format: str = "tiled_csl") -> int:
    """Split-K factor for y (N, M) = x (N, K) @ W^T on a GPU with `num_sms` SMs of compute
    capability `arch` (major * 10 + minor; unknown ones use the nearest lower known one).

    Decode shapes have few, tall output tiles; the weight stream needs bytes in flight on every SM
    (Little's law: ~3 MB on an H200, ~24 KB per SM), which only resident blocks provide. So K is
    split until the grid holds every SM's resident blocks (OCCUPANCY) once: split = resident slots //
    output blocks, capped so each split keeps MIN_K_TILES_PER_SPLIT K tiles and at MAX_SPLIT_K.
    1 means no split and an empty workspace. format: the weight's format name (each kernel family
    has its own occupancy, FORMAT_OCCUPANCY).
    """
    if m <= 0 or n <= 0 or k <= 0 or num_sms <= 0:
        return 1
    cfg = choose_config(n)
    table = FORMAT_OCCUPANCY[format]
    known = [a for a in sorted(table) if a <= arch] or [min(table)]
    slots = num_sms * table[known[-1]][cfg.name].blocks
    blocks = -(-m // cfg.block_m) * -(-n // cfg.block_n)
    k_tiles = C.tile_grid(m, k)[1]
    split = min(slots // blocks, k_tiles // MIN_K_TILES_PER_SPLIT, MAX_SPLIT_K)
    return max(1, split)
