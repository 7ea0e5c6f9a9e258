"""Bitmap (format 2): one 64-bit bitmap per 8 x 8 block, the nonzero values packed in block order.

Index = (T * BITMAP_WORDS_PER_TILE,) uint32; per tile a header (word s < SLABS_PER_TILE: offset of
slab s's first value from the tile's first value, so word 0 is 0; the other header words are reserved
and 0), then for block b the words 4 + 2b (bits 0..31) and 4 + 2b + 1 (bits 32..63); bit r*8 + c marks
block element (r, c). A tile's values are its blocks' nonzeros in block order, each block's in bit
order, then zeros up to a multiple of NNZ_ALIGN that no bit references. 0.125 bytes per weight + 2 per
nonzero (+ 16 header bytes per tile).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jax_flashllm import _constants as C
from jax_flashllm.formats import _base

NAME = "bitmap"
ID = C.FORMAT_BITMAP
INDEX_DTYPE = np.dtype(np.uint32)
INDEX_NAME = "index"
INDEX_PER_TILE = C.BITMAP_WORDS_PER_TILE
_HEADER = C.BITMAP_HEADER_WORDS
_BLOCK_ROW0, _BLOCK_COL0 = (a.astype(np.int32) for a in C.bitmap_block_origin(np.arange(C.BLOCKS_PER_TILE)))


def index_shape(tiles: int, num_values: int) -> tuple[int, ...]:
    return (tiles * C.BITMAP_WORDS_PER_TILE,)


def stored_bytes(counts: np.ndarray) -> int:
    """Bytes of a matrix whose T tiles hold `counts` nonzeros each."""
    t = counts.shape[0]
    return 2 * int(_base.round_up(counts).sum()) + 4 * C.BITMAP_WORDS_PER_TILE * t + 4 * (t + 1)


def _pack(nonzero: np.ndarray) -> np.ndarray:
    """(T, TILE_ELEMS) bool in block order -> (T, 2 * BLOCKS_PER_TILE) uint32 bitmap words."""
    t = nonzero.shape[0]
    packed = np.packbits(nonzero.reshape(t, C.BLOCKS_PER_TILE, C.BLOCK_ELEMS), axis=-1, bitorder="little")
    return packed.reshape(t, -1).view("<u4").astype(np.uint32, copy=False)


def encode(bits: np.ndarray):
    """(M, K) uint16 bit patterns -> (value bits (P,) uint16, index (T * 260,) uint32, tile_offsets)."""
    # Each tile row carries NNZ_ALIGN spare zeros: its padding is the first `need` of them, so one boolean
    # gather yields every tile's values followed by its padding.
    ordered = _base.to_block_order(_base.padded_bits(bits), spare=C.NNZ_ALIGN)
    t = ordered.shape[0]
    keep = (ordered & 0x7FFF) != 0  # -0.0 is a zero; NaN/Inf are not.
    nonzero = keep[:, :C.TILE_ELEMS]
    counts = nonzero.sum(axis=1, dtype=np.int64)
    need = _base.round_up(counts) - counts
    keep[:, C.TILE_ELEMS:] = np.arange(C.NNZ_ALIGN) < need[:, None]
    index = np.zeros((t, C.BITMAP_WORDS_PER_TILE), np.uint32)
    index[:, _HEADER:] = _pack(nonzero)
    slab_counts = nonzero.reshape(t, C.SLABS_PER_TILE, -1).sum(axis=2, dtype=np.int64)
    index[:, 1:C.SLABS_PER_TILE] = np.cumsum(slab_counts, axis=1)[:, :-1]
    return ordered[keep], index.reshape(-1), _base.offsets_from_counts(counts + need)


def _popcount(words):
    return jax.lax.population_count(words).astype(jnp.int32)


def _select_bit(word, j):
    """Position (0..31) of the j-th (0-based) set bit of each uint32 word, by halving the search window."""
    pos = jnp.zeros(word.shape, jnp.int32)
    for width in (16, 8, 4, 2, 1):
        low = _popcount(jnp.right_shift(word, pos.astype(jnp.uint32)) & jnp.uint32((1 << width) - 1))
        step = j >= low
        j = jnp.where(step, j - low, j)
        pos = jnp.where(step, pos + width, pos)
    return pos


def entry_coords(index, tile_offsets, num_values: int, tiles: int):
    """(tile, row, col, valid) of every stored value, (P,) each; valid False for padding values (their
    coordinates are meaningless). jnp, O(P log T) work with no M x K scratch; works on traced arrays."""
    words = index.reshape(tiles, C.BITMAP_WORDS_PER_TILE)[:, _HEADER:].reshape(-1, 2)
    lo, hi = words[:, 0], words[:, 1]
    pop_lo = _popcount(lo)
    pop = (pop_lo + _popcount(hi)).reshape(tiles, C.BLOCKS_PER_TILE)
    # First value of every block (T * 128,), non-decreasing: blocks in order, each tile from its offset.
    start = (tile_offsets[:-1, None].astype(jnp.int32) + jnp.cumsum(pop, axis=1) - pop).reshape(-1)
    pop = pop.reshape(-1)
    p = jnp.arange(num_values, dtype=jnp.int32)
    # The last block starting at or before p (empty blocks share their successor's start).
    g = jnp.clip(jnp.searchsorted(start, p, side="right").astype(jnp.int32) - 1, 0, start.shape[0] - 1)
    j = p - start[g]
    valid = (j >= 0) & (j < pop[g])
    upper = j >= pop_lo[g]
    bit = _select_bit(jnp.where(upper, hi[g], lo[g]), jnp.where(upper, j - pop_lo[g], j)) + 32 * upper
    b = g % C.BLOCKS_PER_TILE
    row = jnp.asarray(_BLOCK_ROW0)[b] + bit // C.BLOCK_COLS
    col = jnp.asarray(_BLOCK_COL0)[b] + bit % C.BLOCK_COLS
    return g // C.BLOCKS_PER_TILE, row, col, valid


def dense_tiles(values, index, tile_offsets, tiles: int):
    """(T, TILE_ELEMS) every tile's elements in row-major order (jnp): each set bit takes the value at its
    tile's offset + its rank among the tile's set bits. O(M x K) work, like the result."""
    if values.shape[0] == 0:
        return jnp.zeros((tiles, C.TILE_ELEMS), values.dtype)
    words = index.reshape(tiles, C.BITMAP_WORDS_PER_TILE)[:, _HEADER:]
    shifts = jnp.arange(32, dtype=jnp.uint32)
    stored = ((words[:, :, None] >> shifts) & 1).reshape(tiles, C.TILE_ELEMS).astype(jnp.bool_)
    source = tile_offsets[:-1, None] + jnp.cumsum(stored, axis=1, dtype=jnp.int32) - 1
    ordered = jnp.where(stored, values[jnp.clip(source, 0, values.shape[0] - 1)], jnp.zeros((), values.dtype))
    return ordered[:, _base.FROM_BLOCK_ORDER]


def validate(value_bits: np.ndarray, index: np.ndarray, counts: np.ndarray, shape) -> None:
    """Format-specific invariants (the common ones are checked by the caller). Memory O(P + T)."""
    t = counts.shape[0]
    if index.shape[0] != t * C.BITMAP_WORDS_PER_TILE:
        raise ValueError(f"bitmap index must have {t * C.BITMAP_WORDS_PER_TILE} uint32 words "
                         f"({C.BITMAP_WORDS_PER_TILE} per tile, {t} tiles), got {index.shape[0]}")
    words = index.reshape(t, C.BITMAP_WORDS_PER_TILE)
    header, bitmaps = words[:, :_HEADER], words[:, _HEADER:]
    pop = np.bitwise_count(bitmaps).reshape(t, C.SLABS_PER_TILE, -1).sum(axis=2, dtype=np.int64)
    slab_start = np.cumsum(pop, axis=1) - pop
    bad = np.flatnonzero((header[:, :C.SLABS_PER_TILE] != slab_start).any(axis=1))
    if bad.size:
        raise ValueError(f"tile {bad[0]}: header slab offsets {header[bad[0], :C.SLABS_PER_TILE].tolist()} "
                         f"disagree with its bitmaps' popcounts (expected {slab_start[bad[0]].tolist()})")
    bad = np.flatnonzero((header[:, C.SLABS_PER_TILE:] != 0).any(axis=1))
    if bad.size:
        raise ValueError(f"tile {bad[0]}: reserved header words {header[bad[0], C.SLABS_PER_TILE:].tolist()} "
                         "must be 0")
    marked = pop.sum(axis=1)
    bad = np.flatnonzero(_base.round_up(marked) != counts)
    if bad.size:
        raise ValueError(f"tile {bad[0]}: its bitmaps mark {marked[bad[0]]} values, so tile_offsets must give it "
                         f"{_base.round_up(marked[bad[0]])} (padded to a multiple of {C.NNZ_ALIGN}), not "
                         f"{counts[bad[0]]}")
    for tile in _base.edge_tiles(shape):
        outside = _pack(_base.outside_mask(shape, tile)[None])[0]
        if (bitmaps[tile] & outside).any():
            raise ValueError(f"tile {tile} has bits set outside the logical {shape[0]}x{shape[1]} matrix")
    # Values past a tile's marked count are padding that no bit references: they must be zeros.
    within = np.arange(value_bits.shape[0]) - np.repeat(np.cumsum(counts) - counts, counts)
    padding = within >= np.repeat(marked, counts)
    if (value_bits[padding] != 0).any():
        bad = int(np.flatnonzero(padding & (value_bits != 0))[0])
        raise ValueError(f"value {bad} is tile padding (no bit references it) but holds bits "
                         f"0x{int(value_bits[bad]):04x}, not 0")


def pad(value_bits: np.ndarray, index: np.ndarray, offsets: np.ndarray, extra: int, shape):
    """The same matrix with `extra` more values (see _base.pad_plan): zeros stored explicitly at zero
    elements inside the logical matrix (their bits set), since a tile holds exactly its marked values
    rounded up to NNZ_ALIGN. A tile can grow to its logical element count rounded up, the same for
    every shard of one grid and shape, so the largest shard always fits."""
    counts = np.diff(offsets.astype(np.int64))
    rows_in, cols_in = _base.edge_limits(shape)
    add = _base.pad_plan(counts, _base.round_up(rows_in * cols_in) - counts, extra)
    if extra == 0:
        return value_bits, index, offsets
    words = index.reshape(-1, C.BITMAP_WORDS_PER_TILE).copy()
    parts = [value_bits[offsets[t]:offsets[t + 1]] for t in range(counts.shape[0])]
    for t in np.flatnonzero(add):
        stored = np.unpackbits(words[t, _HEADER:].view(np.uint8), bitorder="little").astype(np.bool_)
        tile = np.zeros(C.TILE_ELEMS, np.uint16)
        tile[stored] = parts[t][: int(stored.sum())]
        target = min(int(counts[t] + add[t]), int(rows_in[t] * cols_in[t]))  # rounds up to counts + add
        free = np.flatnonzero(~stored & ~_base.outside_mask(shape, t))
        stored[free[: target - int(stored.sum())]] = True
        words[t, _HEADER:] = _pack(stored[None])[0]
        words[t, 1:C.SLABS_PER_TILE] = np.cumsum(stored.reshape(C.SLABS_PER_TILE, -1).sum(axis=1))[:-1]
        parts[t] = np.zeros(int(counts[t] + add[t]), np.uint16)
        parts[t][:target] = tile[stored]
    return np.concatenate(parts), words.reshape(-1), _base.offsets_from_counts(counts + add)
