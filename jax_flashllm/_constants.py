"""Python mirror of cuda/include/flashllm/format.h (tests/test_constants.py checks they agree)."""

from __future__ import annotations

import numpy as np

FORMAT_VERSION = 1
TILE_M = 128
TILE_K = 64
TILE_ELEMS = TILE_M * TILE_K
NNZ_ALIGN = 8
CHUNK_ELEMS = 8
SWIZZLE_ROWS = 8


def tile_grid(m: int, k: int) -> tuple[int, int]:
    """(M tiles, K tiles) covering a logical (m, k) matrix."""
    return -(-m // TILE_M), -(-k // TILE_K)


def swizzle(row, col):
    """Logical (row, col) inside a tile -> offset in the swizzled shared-memory tile (numpy-vectorized)."""
    row = np.asarray(row)
    col = np.asarray(col)
    chunk = (col // CHUNK_ELEMS) ^ (row % SWIZZLE_ROWS)
    return row * TILE_K + chunk * CHUNK_ELEMS + col % CHUNK_ELEMS


def unswizzle(loc):
    """Stored location -> logical (row, col) inside the tile. Works on numpy and jax integer arrays."""
    row = loc // TILE_K
    chunk = ((loc % TILE_K) // CHUNK_ELEMS) ^ (row % SWIZZLE_ROWS)
    return row, chunk * CHUNK_ELEMS + loc % CHUNK_ELEMS


# Logical row-major position p = row * TILE_K + col -> swizzled location, for the vectorized encoder.
_ROWS, _COLS = np.divmod(np.arange(TILE_ELEMS), TILE_K)
SWIZZLE_TABLE = swizzle(_ROWS, _COLS).astype(np.uint16)
SWIZZLE_TABLE.setflags(write=False)
