"""What every format shares: the padded tile grid, the tile-offset checks, and padding for stacking.

Every format keeps W's (M, K) elements in the same TILE_M x TILE_K row-major tile grid with int32
`tile_offsets` (T + 1,) over `values`, each tile's count a multiple of NNZ_ALIGN. Formats differ only in
the order of a tile's values and in the `index` array that says where they go.
"""

from __future__ import annotations

import numpy as np

from jax_flashllm import _constants as C


def padded_bits(bits: np.ndarray) -> np.ndarray:
    """(M, K) uint16 -> (M_pad, K_pad) uint16, zero-extended to whole tiles (no copy when already whole)."""
    m, k = bits.shape
    mt, kt = C.tile_grid(m, k)
    if (m, k) == (mt * C.TILE_M, kt * C.TILE_K):
        return bits
    out = np.zeros((mt * C.TILE_M, kt * C.TILE_K), np.uint16)
    out[:m, :k] = bits
    return out


def round_up(counts: np.ndarray) -> np.ndarray:
    """Per-tile counts padded to whole NNZ_ALIGN vectors."""
    return -(-counts // C.NNZ_ALIGN) * C.NNZ_ALIGN


def offsets_from_counts(counts: np.ndarray) -> np.ndarray:
    """(T,) counts -> (T + 1,) int32 prefix sums; ValueError when they overflow int32."""
    if int(counts.sum()) >= 2**31:
        raise ValueError("matrix has too many stored values for int32 tile offsets")
    offsets = np.zeros(counts.shape[0] + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def check_offsets(offsets: np.ndarray, tiles: int, num_values: int) -> np.ndarray:
    """The tile-offset invariants of every format. Returns the (T,) int64 counts."""
    if offsets.shape[0] != tiles + 1:
        raise ValueError(f"tile_offsets must have {tiles + 1} entries ({tiles} tiles), got {offsets.shape[0]}")
    if offsets[0] != 0:
        raise ValueError(f"tile_offsets must start at 0, got {offsets[0]}")
    counts = np.diff(offsets.astype(np.int64))
    if (counts < 0).any():
        bad = int(np.flatnonzero(counts < 0)[0])
        raise ValueError(f"tile_offsets must be non-decreasing (tile {bad} has a negative count)")
    if offsets[-1] != num_values:
        raise ValueError(f"tile_offsets[-1] = {offsets[-1]} does not match the {num_values} stored values")
    if (counts % C.NNZ_ALIGN).any():
        bad = int(np.flatnonzero(counts % C.NNZ_ALIGN)[0])
        raise ValueError(f"tile {bad} holds {counts[bad]} values, not padded to a multiple of {C.NNZ_ALIGN}")
    if (counts > C.TILE_ELEMS).any():
        bad = int(np.flatnonzero(counts > C.TILE_ELEMS)[0])
        raise ValueError(f"tile {bad} holds {counts[bad]} values, more than a tile has ({C.TILE_ELEMS})")
    return counts


def edge_limits(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(T,) number of logical rows and columns of each tile (TILE_M / TILE_K except in edge tiles)."""
    m, k = shape
    mt, kt = C.tile_grid(m, k)
    rows = np.minimum(m - np.arange(mt) * C.TILE_M, C.TILE_M)
    cols = np.minimum(k - np.arange(kt) * C.TILE_K, C.TILE_K)
    return np.repeat(rows, kt), np.tile(cols, mt)


def tile_of_values(counts: np.ndarray) -> np.ndarray:
    """(P,) tile index of every stored value."""
    return np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)


def pad_plan(counts: np.ndarray, room: np.ndarray, extra: int) -> np.ndarray:
    """How many more values each tile stores so that `extra` more are stored in all: the last tile takes
    up to its `room` (a multiple of NNZ_ALIGN) first, then the one before it. Used to stack shards of
    different lengths."""
    if extra < 0 or extra % C.NNZ_ALIGN or extra > int(room.sum()):
        raise ValueError(f"cannot pad {int(counts.sum())} values by {extra}: need a multiple of {C.NNZ_ALIGN} "
                         f"up to the {int(room.sum())} more that {counts.shape[0]} tiles can hold")
    room = room[::-1]
    before = np.cumsum(room) - room
    return np.clip(extra - before, 0, room)[::-1]


def insert_at_tile_ends(a: np.ndarray, offsets: np.ndarray, add: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """a (P,) with fill's entries inserted at the end of each tile's segment (add[t] of them for tile t)."""
    tiles = np.flatnonzero(add)
    return np.insert(a, np.repeat(offsets[tiles + 1], add[tiles]), fill)


# --- the bitmap / dense value order (format.h: tile -> slab -> k step -> A fragment -> block -> bit) ---
def to_block_order(padded: np.ndarray, spare: int = 0) -> np.ndarray:
    """(M_pad, K_pad) -> (T, TILE_ELEMS + spare): each row one tile, its elements in C.BLOCK_ORDER, then
    `spare` zeros (room for a tile's padding, so callers need no second copy).

    One strided copy instead of a gather: the row index splits as (slab, fragment, 8-row half, row in
    block) and the column as (k step, 8-col half, col in block); block order is slab, k step, fragment,
    then register a0..a3 = (col half, row half), then bit order (row, col) in the block."""
    mp, kp = padded.shape
    mt, kt = mp // C.TILE_M, kp // C.TILE_K
    a = padded.reshape(mt, C.SLABS_PER_TILE, C.FRAGS_PER_SLAB, C.FRAG_ROWS // C.BLOCK_ROWS, C.BLOCK_ROWS,
                       kt, C.K_STEPS_PER_TILE, C.K_STEP // C.BLOCK_COLS, C.BLOCK_COLS)
    out = np.zeros((mt * kt, C.TILE_ELEMS + spare), padded.dtype)
    view = out[:, :C.TILE_ELEMS].reshape(mt, kt, C.SLABS_PER_TILE, C.K_STEPS_PER_TILE, C.FRAGS_PER_SLAB,
                                         C.K_STEP // C.BLOCK_COLS, C.FRAG_ROWS // C.BLOCK_ROWS, C.BLOCK_ROWS,
                                         C.BLOCK_COLS)
    np.copyto(view, a.transpose(0, 5, 1, 6, 2, 7, 3, 4, 8))
    return out


# The transpose above must be the order format.h defines; checked once here, cheaply, at import.
assert np.array_equal(to_block_order(np.arange(C.TILE_ELEMS).reshape(C.TILE_M, C.TILE_K))[0], C.BLOCK_ORDER)


# Block order -> row-major tile order: rowmajor[..., BLOCK_ORDER[i]] = ordered[..., i].
FROM_BLOCK_ORDER = np.argsort(C.BLOCK_ORDER).astype(np.int32)
FROM_BLOCK_ORDER.setflags(write=False)


def select_tiles(fmt, values: np.ndarray, index: np.ndarray, offsets: np.ndarray, tiles: np.ndarray):
    """The encoding of a sub-grid of tiles (a shard made of whole tiles), in the order of `tiles`."""
    starts, counts = offsets[tiles].astype(np.int64), np.diff(offsets)[tiles].astype(np.int64)
    new_offsets = offsets_from_counts(counts)
    take = np.arange(new_offsets[-1]) + np.repeat(starts - new_offsets[:-1], counts)
    if fmt.INDEX_PER_TILE is None:
        index = index[take]
    elif fmt.INDEX_PER_TILE:
        index = index.reshape(-1, fmt.INDEX_PER_TILE)[tiles].reshape(-1)
    return values[take], index, new_offsets


def outside_mask(shape: tuple[int, int], tile: int) -> np.ndarray:
    """(TILE_ELEMS,) bool in block order: True where tile `tile`'s element lies outside the logical M x K."""
    rows_in, cols_in = edge_limits(shape)
    r, c = np.divmod(C.BLOCK_ORDER, C.TILE_K)
    return (r >= rows_in[tile]) | (c >= cols_in[tile])


def edge_tiles(shape: tuple[int, int]) -> np.ndarray:
    """Indices of the tiles that extend past the logical M x K."""
    rows_in, cols_in = edge_limits(shape)
    return np.flatnonzero((rows_in < C.TILE_M) | (cols_in < C.TILE_K))
