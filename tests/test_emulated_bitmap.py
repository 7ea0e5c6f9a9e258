"""The bitmap (v2) and dense (v3) CUDA kernel's own source under the host emulation (cuda/emu/).

Against float64 numpy within the fp32-accumulation bound, and bit for bit against the Tiled-CSL kernel
(same fragments, same mma order): every tiling config, both dtypes, split-K, N across the config
boundaries, ragged M and K (both X load paths), empty / single-entry / fully dense tiles, 50-99 %
sparsity. Malformed arrays (tampered offsets, bitmaps, headers) never fault and a malformed tile counts
as empty. Memory statistics per config are printed and their access-pattern properties pinned.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from jax_flashllm import SparseMatrix, _constants, _tiling
from jax_flashllm.testing import emulated_spmm, emulated_spmm_stats
from reference import (DTYPES, assert_close_to_reference, encode_bitmap_reference, mixed_density_dense,
                       random_sparse)

emu = pytest.importorskip("jax_flashllm._flashllm_emu")

CONFIG_NAMES = [c.name for c in _tiling.CONFIGS]
FORMATS = ("bitmap", "dense")
NS = (1, 3, 8, 16, 17, 32, 33, 64, 65, 130)


def _matrix(dense, dtype, fmt):
    """SparseMatrix.from_dense in format `fmt`; its arrays must be exactly what format.h defines
    (reference.encode_bitmap_reference, an encoder written independently of jax_flashllm.formats)."""
    w = SparseMatrix.from_dense(dense, dtype=dtype, format=fmt)
    values, index, offsets = encode_bitmap_reference(dense, dtype, fmt)
    np.testing.assert_array_equal(np.asarray(w.values).view(np.uint16), values.view(np.uint16))
    np.testing.assert_array_equal(np.asarray(w.index), index)
    np.testing.assert_array_equal(np.asarray(w.tile_offsets), offsets)
    return w


def _tampered(w, **arrays):
    """w with some of its arrays replaced, unvalidated (as a matrix rebuilt under jit would be)."""
    leaves = {**dict(values=w.values, index=w.index, tile_offsets=w.tile_offsets), **arrays}
    return SparseMatrix.tree_unflatten((w.shape, w.dtype.name, w.format),
                                       (leaves["values"], leaves["index"], leaves["tile_offsets"]))


def _check(y, x, w_dense):
    """Within the dense kernel's own rounding (shared oracle) and, element by element, within one
    ulp of the dtype plus fp32 accumulation error of sum |x||w|."""
    assert y.shape == (x.shape[0], w_dense.shape[0])
    assert_close_to_reference(y, x, w_dense)
    x64, w64 = x.astype(np.float64), w_dense.astype(np.float64)
    ref = x64 @ w64.T
    info = ml_dtypes.finfo(y.dtype)
    bound = float(info.eps) * np.abs(ref) + 2.0**-20 * (np.abs(x64) @ np.abs(w64).T) + float(info.smallest_normal)
    bad = np.abs(y.astype(np.float64) - ref) > bound
    assert not bad.any(), f"{bad.sum()} elements off, first at {np.argwhere(bad)[0]}"


def _case(seed, m, k, n, sparsity, dtype, fmt):
    rng = np.random.default_rng(seed)
    dense = random_sparse(rng, (m, k), sparsity).astype(dtype)
    x = rng.standard_normal((n, k)).astype(dtype)
    return _matrix(dense, dtype, fmt), x, dense


def _bits(y):
    return np.asarray(y).view(np.uint16)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("split_k", [1, 3], ids=["nosplit", "split3"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("n", NS)
def test_matches_reference_and_tiled_csl(n, dtype, split_k, fmt):
    # M = 300: three tile rows, no multiple of a block. K = 197: element-wise X loads (K % 8 != 0);
    # K = 264: cp.async with a masked tail.
    k = 197 if split_k == 1 else 264
    w, x, dense = _case(n * 11 + split_k, 300, k, n, 0.6, dtype, fmt)
    y, stats = emulated_spmm_stats(w, x, split_k=split_k)
    assert stats["config"] == _tiling.choose_config(n).name
    _check(y, x, dense)
    # Same A fragments, same mma order, same epilogue as the Tiled-CSL kernel: identical bits.
    y_csl = emulated_spmm(SparseMatrix.from_dense(dense, dtype=dtype, format="tiled_csl"), x, split_k=split_k)
    np.testing.assert_array_equal(_bits(y), _bits(y_csl))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("split_k", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_every_config_any_n(config, dtype, split_k, fmt):
    for n in (5, 40, 133):
        w, x, dense = _case(n + split_k, 259, 136, n, 0.8, dtype, fmt)
        y, stats = emulated_spmm_stats(w, x, split_k=split_k, config=config)
        assert stats["config"] == config
        _check(y, x, dense)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.7, 0.9, 0.99])
def test_sparsity_range(sparsity):
    w, x, dense = _case(int(sparsity * 100), 256, 320, 9, sparsity, DTYPES[1], "bitmap")
    _check(emulated_spmm(w, x, split_k=2), x, dense)


def _mixed_density(rng, dtype):
    """reference.mixed_density_dense plus a tile whose second slab (rows 64-127) alone has values
    (the header's slab offset matters)."""
    w = mixed_density_dense(rng)
    w[256 + 64:256 + 128, 192:256] = rng.standard_normal((64, 64)) * (rng.random((64, 64)) < 0.3)
    return w.astype(dtype)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_empty_and_fully_dense_tiles(config, dtype, fmt):
    rng = np.random.default_rng(3)
    dense = _mixed_density(rng, dtype)
    w = _matrix(dense, dtype, fmt)
    if fmt == "bitmap":
        counts = np.diff(np.asarray(w.tile_offsets))
        assert counts.max() == 128 * 64 and 0 in counts
    x = rng.standard_normal((20, 256)).astype(dtype)
    for split_k in (1, 2):
        _check(emulated_spmm(w, x, split_k=split_k, config=config), x, dense)
    d2 = np.ascontiguousarray(dense[:301, :250])
    x2 = rng.standard_normal((7, 250)).astype(dtype)
    _check(emulated_spmm(_matrix(d2, dtype, fmt), x2, split_k=1, config=config), x2, d2)


@pytest.mark.parametrize("fmt", FORMATS)
def test_all_zero_matrix_and_more_splits_than_tiles(fmt):
    w = _matrix(np.zeros((130, 70), np.float32), DTYPES[0], fmt)
    x = np.ones((4, 70), DTYPES[0])
    for split_k in (1, 2, 5):
        y = emulated_spmm(w, x, split_k=split_k)
        assert y.shape == (4, 130) and not np.any(y.astype(np.float32))
    w, x, dense = _case(11, 150, 100, 6, 0.5, DTYPES[1], fmt)  # 2 K tiles, 5 splits
    _check(emulated_spmm(w, x, split_k=5), x, dense)


@pytest.mark.parametrize("schedule", ["round_robin", "alternate", "warp_greedy"])
def test_same_bits_under_every_schedule(schedule):
    w, x, dense = _case(5, 256, 256, 24, 0.5, DTYPES[0], "bitmap")
    before = emu.schedule() if hasattr(emu, "schedule") else "alternate"
    emu.set_schedule(schedule)
    try:
        y = emulated_spmm(w, x, split_k=2)
    finally:
        emu.set_schedule(before)
    np.testing.assert_array_equal(_bits(y), _bits(emulated_spmm(w, x, split_k=2)))


# ---- malformed arrays: the GPU path never faults; a malformed tile counts as empty --------------
def _tiles_zeroed(dense, tiles, k_tiles):
    out = dense.copy()
    for t in tiles:
        mt, kt = divmod(t, k_tiles)
        out[mt * 128:(mt + 1) * 128, kt * 64:(kt + 1) * 64] = 0
    return out


# tamper -> (how tile_offsets change, the tiles (row-major, 2 x 3 grid) that become malformed).
# Tile 4 is the target; its neighbours 3 and 5 share its begin / end offset.
TAMPERS = {
    "odd": (lambda off, n: off.__setitem__(4, off[4] + 3), {3, 4}),         # misaligned
    "negative": (lambda off, n: off.__setitem__(4, -8), {3, 4}),
    "past_end": (lambda off, n: off.__setitem__(5, n + 8), {4, 5}),         # past the values
    "overlap": (lambda off, n: off.__setitem__(5, off[4] - 8), {4, 5}),     # 5 would be over-full
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_malformed_offsets_make_the_tile_empty(fmt, tamper):
    # Sparsity 0.45: two neighbouring tiles hold > 8192 values together, so "overlap" makes tile 5
    # over-full rather than a shorter valid range.
    w, x, dense = _case(21, 256, 192, 5, 0.45, DTYPES[1], fmt)
    change, bad_tiles = TAMPERS[tamper]
    off = np.array(w.tile_offsets)
    change(off, len(w.values))
    y = emulated_spmm(_tampered(w, tile_offsets=off), x, split_k=1, validate=False)
    _check(y, x, _tiles_zeroed(dense, bad_tiles, 3))


@pytest.mark.parametrize("fmt", FORMATS)
def test_overfull_and_short_tiles_are_empty(fmt):
    # A single tile claiming 8200 values (more than 128 x 64), and one claiming 8 (a dense-format
    # tile must be exactly full).
    rng = np.random.default_rng(4)
    dense = random_sparse(rng, (128, 64), 0.3).astype(DTYPES[0])
    w = _matrix(dense, DTYPES[0], fmt)
    x = rng.standard_normal((3, 64)).astype(DTYPES[0])
    values = np.asarray(w.values)
    over = _tampered(w, values=np.concatenate([values, np.zeros(8200 - len(values), values.dtype)]),
                     tile_offsets=np.array([0, 8200], np.int32))
    assert not np.any(emulated_spmm(over, x, split_k=1, validate=False).astype(np.float32))
    short = _tampered(w, tile_offsets=np.array([0, 8], np.int32))
    y = emulated_spmm(short, x, split_k=1, validate=False)
    if fmt == "dense":
        assert not np.any(y.astype(np.float32))
    # bitmap: a legal 8-value tile whose bitmap claims more; lanes past the 8 values read whatever
    # the stage holds (garbage in, garbage out), but only inside the stage: the emulator checks.


@pytest.mark.parametrize("seed", range(6))
def test_random_garbage_never_faults(seed):
    # Random bitmap words and headers (popcounts far beyond the tile's values), shuffled offsets:
    # every global read stays inside the registered buffers (the emulator checks) and no exception.
    rng = np.random.default_rng(seed)
    w, x, _ = _case(seed, 256, 256, 3, 0.7, DTYPES[0], "bitmap")
    index = np.array(w.index)
    pick = rng.random(index.shape) < 0.3
    index[pick] = rng.integers(0, 2**32, pick.sum(), dtype=np.uint64).astype(np.uint32)
    off = np.array(w.tile_offsets)
    if seed % 2:
        off[1:-1] = rng.permutation(off[1:-1]) + rng.integers(-9, 9, len(off) - 2)
    bad = _tampered(w, index=index, tile_offsets=off.astype(np.int32))
    assert emulated_spmm(bad, x, split_k=2, validate=False).shape == (3, 256)
    short = _tampered(w, index=np.asarray(w.index)[:300])  # index shorter than the tiles need
    assert emulated_spmm(short, x, split_k=1, validate=False).shape == (3, 256)


# ---- memory statistics: the access patterns, per config ---------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_memory_statistics(config, fmt, record_property):
    cfg = next(c for c in _tiling.CONFIGS if c.name == config)
    w, x, _ = _case(2024, 512, 512, cfg.block_n, 0.5, DTYPES[1], fmt)
    _, stats = emulated_spmm_stats(w, x, split_k=1, config=config)
    ops = stats.pop("ops")
    stats.pop("config")
    for key, value in stats.items():
        record_property(key, value)
    print(f"\n{fmt} {config}: {stats}\n  per instruction: {ops}")
    # ldmatrix (X, and dense-format W) conflict-free; no zero fill, no scatter, no register loads.
    assert ops["ldmatrix"]["bank_conflicts"] == 0
    assert not {"sts_16", "ldg_128", "ldg_32"} & ops.keys()
    # Index header / bitmap words: broadcast 16-byte reads, one wavefront each.
    if fmt == "bitmap":
        assert ops["lds_128"]["bank_conflicts"] == 0
        # A lane's values lie in its block's <= 128 contiguous bytes: at most 2 wavefronts.
        assert ops["lds_16"]["wavefronts"] <= 2 * ops["lds_16"]["requests"]
    # Values, index and X arrive with cp.async only, every 16-byte chunk used: W bytes / 32 + X.
    blocks = (512 // cfg.block_m) * (512 // cfg.block_n)
    w_bytes = 2 * len(w.values) + 4 * len(w.index)
    x_sectors = blocks * (512 // 64) * cfg.block_n * 64 * 2 // 32
    assert ops["cp.async"]["sectors"] <= (w_bytes // 32) * (512 // cfg.block_n) + x_sectors + 8 * blocks * 8
