"""Dense (format 3): every element of every tile, zeros included, in the bitmap format's value order.

It is the bitmap format with every bit set and the bitmaps left out, so the bitmap kernels serve it
(an all-ones block decodes to a plain copy); `auto` picks it when a matrix is too dense for the bitmap
to pay (below ~6 % zeros), and it carries dense layers such as a bf16 LM head through the same op.
Index = (0,) uint32; tile_offsets = arange(T + 1) * TILE_ELEMS. 2 bytes per weight.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jax_flashllm import _constants as C
from jax_flashllm.formats import _base

NAME = "dense"
ID = C.FORMAT_DENSE
INDEX_DTYPE = np.dtype(np.uint32)
INDEX_NAME = "index"
INDEX_PER_TILE = 0


def index_shape(tiles: int, num_values: int) -> tuple[int, ...]:
    return (0,)


def stored_bytes(counts: np.ndarray) -> int:
    """Bytes of a matrix of T tiles (their nonzero counts do not matter)."""
    t = counts.shape[0]
    return 2 * C.TILE_ELEMS * t + 4 * (t + 1)


def encode(bits: np.ndarray):
    """(M, K) uint16 bit patterns -> (value bits (T * TILE_ELEMS,) uint16, index (0,) uint32, tile_offsets).
    -0.0 is stored as +0.0, as the sparse formats treat it (a pruned position)."""
    values = _base.to_block_order(_base.padded_bits(bits)).reshape(-1)
    values = np.where((values & 0x7FFF) != 0, values, np.uint16(0))
    t = values.shape[0] // C.TILE_ELEMS
    return values, np.zeros(0, np.uint32), (np.arange(t + 1, dtype=np.int64) * C.TILE_ELEMS).astype(np.int32)


def entry_coords(index, tile_offsets, num_values: int, tiles: int):
    """(tile, row, col, None) of every stored value; jnp, works on traced arrays."""
    p = jnp.arange(num_values, dtype=jnp.int32)
    pos = jnp.asarray(C.BLOCK_ORDER)[p % C.TILE_ELEMS]
    return p // C.TILE_ELEMS, pos // C.TILE_K, pos % C.TILE_K, None


def dense_tiles(values, index, tile_offsets, tiles: int):
    """(T, TILE_ELEMS) every tile's elements in row-major order (jnp)."""
    return values.reshape(tiles, C.TILE_ELEMS)[:, _base.FROM_BLOCK_ORDER]


def validate(value_bits: np.ndarray, index: np.ndarray, counts: np.ndarray, shape) -> None:
    """Format-specific invariants (the common ones are checked by the caller)."""
    if index.shape[0] != 0:
        raise ValueError(f"a dense-format matrix has an empty index, got {index.shape[0]} words")
    bad = np.flatnonzero(counts != C.TILE_ELEMS)
    if bad.size:
        raise ValueError(f"tile {bad[0]} holds {counts[bad[0]]} values; the dense format stores all "
                         f"{C.TILE_ELEMS} of every tile")
    for tile in _base.edge_tiles(shape):
        block = value_bits[tile * C.TILE_ELEMS:(tile + 1) * C.TILE_ELEMS]
        if (block[_base.outside_mask(shape, tile)] & 0x7FFF).any():
            raise ValueError(f"tile {tile} holds nonzeros outside the logical {shape[0]}x{shape[1]} matrix")


def pad(value_bits: np.ndarray, index: np.ndarray, offsets: np.ndarray, extra: int, shape):
    """Dense matrices of one tile grid store equally many values: there is nothing to pad."""
    if extra:
        raise ValueError(f"a dense-format matrix stores all {value_bits.shape[0]} values of its tiles and "
                         f"cannot hold {extra} more")
    return value_bits, index, offsets
