"""The storage formats of a SparseMatrix, one module each, behind one small interface.

Each format module defines:
  NAME, ID (the id in format.h, saved with a matrix and passed to the kernels as the `format` attribute),
  INDEX_DTYPE, INDEX_NAME (the index tensor's name in files), INDEX_PER_TILE (None: one index entry per
  value; n: n words per tile),
  index_shape(tiles, num_values), stored_bytes(counts) (bytes for given per-tile nonzero counts),
  encode(bits (M, K) uint16) -> (value bits, index, tile_offsets),
  entry_coords(index, tile_offsets, num_values, tiles) -> (tile, row, col, valid | None) in jnp,
  dense_tiles(values, index, tile_offsets, tiles) -> (T, TILE_ELEMS) row-major tiles in jnp,
  validate(value_bits, index, counts, shape) (after the shared checks) and pad(...).
Everything else (SparseMatrix, the primitive, layers, sharding) looks a format up here once.
"""

from __future__ import annotations

import numpy as np

from jax_flashllm.formats import bitmap, dense, tiled_csl

__all__ = ["AUTO", "NAMES", "choose", "get", "kernel_formats"]

_MODULES = (tiled_csl, bitmap, dense)
NAMES = tuple(m.NAME for m in _MODULES)
AUTO = "auto"
_BY_NAME = {m.NAME: m for m in _MODULES}
_BY_ID = {m.ID: m for m in _MODULES}


def get(fmt):
    """The module of a format given by name ("tiled_csl" | "bitmap" | "dense") or id (1 | 2 | 3)."""
    if isinstance(fmt, str):
        if fmt in _BY_NAME:
            return _BY_NAME[fmt]
    elif isinstance(fmt, (int, np.integer)) and int(fmt) in _BY_ID:
        return _BY_ID[int(fmt)]
    elif fmt in _MODULES:
        return fmt
    raise ValueError(f"unknown SparseMatrix format {fmt!r}; choose one of {NAMES} (ids "
                     f"{sorted(_BY_ID)}) or {AUTO!r}")


def kernel_formats() -> tuple[str, ...]:
    """Names of the formats every kernel of this build multiplies: the CPU kernel's, and the CUDA kernel's
    too where it is built (kernels that predate the `formats()` query know only tiled_csl)."""
    from jax_flashllm import _ffi  # loads the compiled modules; imported when first needed

    ids = set(getattr(_ffi._flashllm_cpu, "formats", lambda: [tiled_csl.ID])())
    if _ffi._flashllm_cuda is not None:
        ids &= set(getattr(_ffi._flashllm_cuda, "formats", lambda: [tiled_csl.ID])())
    return tuple(m.NAME for m in _MODULES if m.ID in ids)


def choose(counts: np.ndarray, candidates=NAMES) -> str:
    """The candidate format that stores T tiles holding `counts` (T,) nonzeros in the fewest bytes
    (ties go to the earlier name in NAMES)."""
    return min((get(name) for name in candidates), key=lambda m: (m.stored_bytes(counts), NAMES.index(m.NAME))).NAME
