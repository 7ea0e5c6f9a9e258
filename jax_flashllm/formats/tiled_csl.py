"""Tiled-CSL (format 1): per stored value a uint16 location, the value's offset in the kernel's swizzled
shared-memory tile. Index = locations (P,) uint16, one per value. 4 bytes per nonzero.

A tile's count is padded to a multiple of NNZ_ALIGN with value-0 entries at zero positions of that tile
(never a duplicate location: the GPU's scatter would overwrite a real value)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jax_flashllm import _constants as C
from jax_flashllm.formats import _base

NAME = "tiled_csl"
ID = C.FORMAT_TILED_CSL
INDEX_DTYPE = np.dtype(np.uint16)
INDEX_NAME = "locations"  # the v1 file layout, kept so old files and old readers still agree
INDEX_PER_TILE = None     # one index entry per stored value
_TILES_PER_CHECK = 4096   # duplicate check: 4096 tiles x 8192 positions = 32 MiB of bools at a time


def index_shape(tiles: int, num_values: int) -> tuple[int, ...]:
    return (num_values,)


def stored_bytes(counts: np.ndarray) -> int:
    """Bytes of a matrix whose T tiles hold `counts` nonzeros each."""
    return 4 * int(_base.round_up(counts).sum()) + 4 * (counts.shape[0] + 1)


def encode(bits: np.ndarray):
    """(M, K) uint16 bit patterns -> (value bits (P,) uint16, locations (P,) uint16, tile_offsets)."""
    m, k = bits.shape
    mt, kt = C.tile_grid(m, k)
    # (Mt, TILE_M, Kt, TILE_K) -> (T, TILE_ELEMS): each row one tile in row-major order.
    tiles = _base.padded_bits(bits).reshape(mt, C.TILE_M, kt, C.TILE_K).transpose(0, 2, 1, 3)
    tiles = tiles.reshape(mt * kt, C.TILE_ELEMS)
    nonzero = (tiles & 0x7FFF) != 0  # -0.0 is a zero; NaN/Inf are not.
    counts = nonzero.sum(axis=1, dtype=np.int64)
    need = _base.round_up(counts) - counts
    keep = nonzero
    if need.any():
        # Pad with the first `need` (< NNZ_ALIGN) zero positions of each tile: a zero position can
        # never collide with a real value, so the GPU's scatter stays a plain store.
        rows = np.flatnonzero(need)
        zeros = ~nonzero[rows]
        rank = np.cumsum(zeros, axis=1, dtype=np.int16)
        keep = nonzero.copy()
        keep[rows] |= zeros & (rank <= need[rows, None])
    offsets = _base.offsets_from_counts(counts + need)
    flat = np.flatnonzero(keep)
    values = tiles.reshape(-1)[flat]
    values[(values & 0x7FFF) == 0] = 0  # padding at a -0.0 position stores +0.0, as every zero decodes
    return values, C.SWIZZLE_TABLE[flat & (C.TILE_ELEMS - 1)], offsets


def entry_coords(index, tile_offsets, num_values: int, tiles: int):
    """(tile, row, col, valid) of every stored value: (P,) int32 each, valid None (all are positions).
    jnp: works on traced arrays."""
    counts = jnp.diff(tile_offsets)
    tile = jnp.repeat(jnp.arange(tiles, dtype=jnp.int32), counts, total_repeat_length=num_values)
    r, c = C.unswizzle(index.astype(jnp.int32))
    return tile, r, c, None


def dense_tiles(values, index, tile_offsets, tiles: int):
    """(T, TILE_ELEMS) every tile's elements in row-major order (jnp): one scatter of the values."""
    tile, r, c, _ = entry_coords(index, tile_offsets, values.shape[0], tiles)
    flat = jnp.zeros(tiles * C.TILE_ELEMS, values.dtype)
    return flat.at[tile * C.TILE_ELEMS + r * C.TILE_K + c].set(values, unique_indices=True).reshape(tiles, -1)


def validate(value_bits: np.ndarray, index: np.ndarray, counts: np.ndarray, shape) -> None:
    """Format-specific invariants (the common ones are checked by the caller). O(P) memory."""
    if index.shape != value_bits.shape:
        raise ValueError(f"values ({value_bits.shape[0]}) and locations ({index.shape[0]}) differ in length")
    if index.size and int(index.max()) >= C.TILE_ELEMS:
        bad = int(np.flatnonzero(index >= C.TILE_ELEMS)[0])
        raise ValueError(f"location {index[bad]} at entry {bad} is outside the {C.TILE_M}x{C.TILE_K} tile")
    # A repeated location within a tile would make the GPU's scatter keep only one of the values.
    # One bool per position of a bounded group of tiles at a time: O(P) time, memory O(P) + 32 MiB.
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for first in range(0, counts.shape[0], _TILES_PER_CHECK):
        last = min(first + _TILES_PER_CHECK, counts.shape[0])
        part = slice(offsets[first], offsets[last])
        if part.start == part.stop:
            continue
        key = np.repeat(np.arange(last - first, dtype=np.int64) * C.TILE_ELEMS, counts[first:last]) + index[part]
        seen = np.zeros((last - first) * C.TILE_ELEMS, np.bool_)
        seen[key] = True
        if np.count_nonzero(seen) != key.size:
            key = np.sort(key)
            where = int(key[np.flatnonzero(np.diff(key) == 0)[0]])
            raise ValueError(f"location {where % C.TILE_ELEMS} is repeated within tile "
                             f"{first + where // C.TILE_ELEMS}")
    # Positions in the padding of edge tiles are outside W: only zeros may sit there.
    rows_in, cols_in = _base.edge_limits(shape)
    for tile in _base.edge_tiles(shape):
        part = slice(offsets[tile], offsets[tile + 1])
        r, c = C.unswizzle(index[part].astype(np.int64))
        outside = ((r >= rows_in[tile]) | (c >= cols_in[tile])) & ((value_bits[part] & 0x7FFF) != 0)
        if outside.any():
            bad = int(np.flatnonzero(outside)[0])
            raise ValueError(f"entry {offsets[tile] + bad} (tile {tile}, row {r[bad]}, col {c[bad]}) is a nonzero "
                             f"outside the logical {shape[0]}x{shape[1]} matrix")


def pad(value_bits: np.ndarray, index: np.ndarray, offsets: np.ndarray, extra: int, shape):
    """The same matrix with `extra` more zero entries (see _base.pad_plan), each at a position unused in
    its tile so no location repeats."""
    counts = np.diff(offsets.astype(np.int64))
    add = _base.pad_plan(counts, C.TILE_ELEMS - counts, extra)
    if extra == 0:
        return value_bits, index, offsets
    new = []
    for t in np.flatnonzero(add):
        used = np.zeros(C.TILE_ELEMS, np.bool_)
        used[index[offsets[t]:offsets[t + 1]]] = True
        new.append(np.flatnonzero(~used)[: add[t]].astype(np.uint16))
    values = _base.insert_at_tile_ends(value_bits, offsets, add, np.zeros(extra, value_bits.dtype))
    index = _base.insert_at_tile_ends(index, offsets, add, np.concatenate(new))
    return values, index, _base.offsets_from_counts(counts + add)
