"""Python mirror of cuda/include/flashllm/format.h (tests/test_constants.py checks they agree)."""

from __future__ import annotations

import numpy as np

FORMAT_VERSION = 1
FORMAT_TILED_CSL = 1
FORMAT_BITMAP = 2
FORMAT_DENSE = 3
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


# --- bitmap (v2) and dense (v3) value order; see format.h for the why ---------------------------
BLOCK_ROWS = 8
BLOCK_COLS = 8
BLOCK_ELEMS = BLOCK_ROWS * BLOCK_COLS
BLOCKS_PER_TILE = TILE_ELEMS // BLOCK_ELEMS
SLAB_ROWS = 64
SLABS_PER_TILE = TILE_M // SLAB_ROWS
K_STEP = 16
FRAG_ROWS = 16
FRAGS_PER_SLAB = SLAB_ROWS // FRAG_ROWS
K_STEPS_PER_TILE = TILE_K // K_STEP
BLOCKS_PER_FRAG = 4
BLOCKS_PER_SLAB = BLOCKS_PER_TILE // SLABS_PER_TILE
BITMAP_HEADER_WORDS = 4
BITMAP_WORDS_PER_TILE = BITMAP_HEADER_WORDS + 2 * BLOCKS_PER_TILE


def bitmap_block_origin(b):
    """Block index b (0..127, numpy-vectorized) -> (row, col) of the block's element (0, 0) in its tile."""
    b = np.asarray(b)
    slab, within = np.divmod(b, BLOCKS_PER_SLAB)
    kstep, rest = np.divmod(within, FRAGS_PER_SLAB * BLOCKS_PER_FRAG)
    frag, reg = np.divmod(rest, BLOCKS_PER_FRAG)
    return (slab * SLAB_ROWS + frag * FRAG_ROWS + (reg & 1) * BLOCK_ROWS,
            kstep * K_STEP + (reg >> 1) * BLOCK_COLS)


# Value order of the bitmap/dense formats: BLOCK_ORDER[i] = row-major tile position (row * TILE_K + col)
# of the i-th element when a tile's 128 blocks are laid out in block order, each block in bit order.
_BR, _BC = bitmap_block_origin(np.arange(BLOCKS_PER_TILE))
_IR, _IC = np.divmod(np.arange(BLOCK_ELEMS), BLOCK_COLS)
BLOCK_ORDER = ((_BR[:, None] + _IR[None, :]) * TILE_K + _BC[:, None] + _IC[None, :]).reshape(-1).astype(np.int32)
BLOCK_ORDER.setflags(write=False)
