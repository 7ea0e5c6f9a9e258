"""The CUDA kernel's own source, run under the host emulation (cuda/emu/), against float64 numpy.

Covers every tiling config, both dtypes, split-K off and on, N across the config boundaries, M and K
off the tile multiples (both X load paths: cp.async for K % 8 == 0, element-wise otherwise), empty
and fully dense tiles; and pins the emulator's memory statistics per config (a proxy for speed).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from jax_flashllm import SparseMatrix, _tiling
from jax_flashllm.testing import emulated_spmm, emulated_spmm_stats
from reference import DTYPES, assert_close_to_reference, random_sparse

emu = pytest.importorskip("jax_flashllm._flashllm_emu")

CONFIG_NAMES = [c.name for c in _tiling.CONFIGS]
NS = (1, 3, 8, 9, 16, 31, 32, 33, 64, 65, 128, 200)


def _check(y, x, w: SparseMatrix, w_dense):
    """Within the dense kernel's own rounding (shared oracle), and element by element within one
    ulp of the dtype plus fp32 accumulation error, so a single wrong small element also fails.
    w_dense: the (M, K) matrix w encodes, in w's dtype (numpy, to keep jax out of the loop)."""
    assert y.dtype == w.dtype and y.shape == (x.shape[0], w.shape[0])
    assert_close_to_reference(y, x, w_dense)
    x64, w64 = x.astype(np.float64), w_dense.astype(np.float64)
    ref = x64 @ w64.T
    scale = np.abs(x64) @ np.abs(w64).T
    info = ml_dtypes.finfo(w.dtype)
    bound = float(info.eps) * np.abs(ref) + 2.0**-20 * scale + float(info.smallest_normal)
    bad = np.abs(y.astype(np.float64) - ref) > bound
    assert not bad.any(), f"{bad.sum()} elements off, first at {np.argwhere(bad)[0]}"


def _case(seed, m, k, n, sparsity, dtype):
    """(w SparseMatrix, x (n, k), w_dense (m, k)) in dtype."""
    rng = np.random.default_rng(seed)
    dense = random_sparse(rng, (m, k), sparsity).astype(dtype)
    w = SparseMatrix.from_dense(dense, dtype=dtype, format="tiled_csl")
    x = rng.standard_normal((n, k)).astype(dtype)
    return w, x, dense


def test_tiling_table_matches_kernel():
    compiled = [tuple(row[:4]) for row in emu.spmm_configs()]
    assert compiled == [tuple(c) for c in _tiling.CONFIGS]


@pytest.mark.parametrize("n", NS)
def test_dispatch_uses_python_config_choice(n):
    w, x, wd = _case(0, 40, 24, n, 0.5, DTYPES[0])
    _, stats = emulated_spmm_stats(w, x, split_k=1)
    assert stats["config"] == _tiling.choose_config(n).name


@pytest.mark.parametrize("split_k", [1, 3], ids=["nosplit", "split3"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("n", NS)
def test_matches_reference(n, dtype, split_k):
    # M = 300: three format tile rows, not a multiple of any block. K alternates between an
    # unaligned width (element-wise X loads) and a 16-byte multiple (cp.async with masked tail).
    k = 197 if split_k == 1 else 264
    w, x, wd = _case(n * 7 + split_k, 300, k, n, 0.7, dtype)
    _check(emulated_spmm(w, x, split_k=split_k), x, w, wd)


@pytest.mark.parametrize("split_k", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_every_config_any_n(config, dtype, split_k):
    # A forced config sees N below, at and above its block width (several blocks along N).
    for n in (5, 40, 133):
        w, x, wd = _case(n + split_k, 259, 136, n, 0.8, dtype)
        y, stats = emulated_spmm_stats(w, x, split_k=split_k, config=config)
        assert stats["config"] == config
        _check(y, x, w, wd)


def _mixed_density_matrix(rng, dtype):
    """(384, 256): tile rows x tile cols with empty, fully dense, half-dense and sparse tiles, and
    single-entry tiles (one real entry + 7 padding entries)."""
    w = np.zeros((384, 256), np.float32)
    dens = [[0.0, 1.0, 0.5, 0.05], [1.0, 0.0, 0.0, 1.0], [0.2, 1.0, 0.999, 0.0]]
    for mt, row in enumerate(dens):
        for kt, d in enumerate(row):
            blk = rng.standard_normal((128, 64)).astype(np.float32) * (rng.random((128, 64)) < d)
            w[mt * 128:(mt + 1) * 128, kt * 64:(kt + 1) * 64] = blk
    w[128 + 77, 64 + 5] = 3.0  # an otherwise empty tile with one entry
    dense = w.astype(dtype)
    return SparseMatrix.from_dense(dense, dtype=dtype, format="tiled_csl"), dense


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_empty_and_fully_dense_tiles(config, dtype):
    rng = np.random.default_rng(3)
    w, wd = _mixed_density_matrix(rng, dtype)
    counts = np.diff(np.asarray(w.tile_offsets))
    assert counts.max() == 128 * 64 and 0 in counts  # really has dense and empty tiles
    x = rng.standard_normal((20, 256)).astype(dtype)
    for split_k in (1, 2):
        _check(emulated_spmm(w, x, split_k=split_k, config=config), x, w, wd)
    # Cropped to an unaligned shape: partial tiles at both edges.
    wd2 = np.ascontiguousarray(wd[:301, :250])
    w2 = SparseMatrix.from_dense(wd2, dtype=dtype, format="tiled_csl")
    x2 = rng.standard_normal((7, 250)).astype(dtype)
    _check(emulated_spmm(w2, x2, split_k=1, config=config), x2, w2, wd2)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_all_zero_matrix(dtype):
    w = SparseMatrix.from_dense(np.zeros((130, 70), np.float32), dtype=dtype, format="tiled_csl")
    assert w.values.shape[0] == 0
    x = np.ones((4, 70), dtype)
    for split_k in (1, 2):
        y = emulated_spmm(w, x, split_k=split_k)
        assert y.shape == (4, 130) and not np.any(y.astype(np.float32))


def test_more_splits_than_k_tiles():
    # Splits with no K tiles must still write (zero) partials for the reduce.
    w, x, wd = _case(11, 150, 100, 6, 0.5, DTYPES[1])  # 2 K tiles
    _check(emulated_spmm(w, x, split_k=5), x, w, wd)


def test_default_split_follows_choose_split_k():
    w, x, wd = _case(12, 200, 1024, 4, 0.8, DTYPES[0])
    split = _tiling.choose_split_k(200, 1024, 4, 132)
    assert split > 1  # a decode shape: 1 block along M, 16 K tiles
    y_default = emulated_spmm(w, x)
    np.testing.assert_array_equal(y_default.view(np.uint16),
                                  emulated_spmm(w, x, split_k=split).view(np.uint16))
    _check(y_default, x, w, wd)


def test_rejects_bad_arguments():
    w, x, wd = _case(13, 64, 64, 2, 0.5, DTYPES[0])
    with pytest.raises(ValueError):
        emulated_spmm(w, x[:, :32])
    with pytest.raises(ValueError):
        emulated_spmm(w, x, config="64x64")
    with pytest.raises(ValueError):
        emu.spmm(np.asarray(w.values).view(np.uint16), np.asarray(w.locations),
                 np.zeros(5, np.int32), x.view(np.uint16), 64, 64, "float16", 1, -1)


# ---- memory statistics: a regression check on the access patterns ------------------------------
# Per config: one fixed 80 %-sparse (512, 512) bf16 matrix, N = the config's block width. Bank
# conflicts come from the sparse scatter (random locations) only: ldmatrix reads, cp.async / zero
# fill / X stores are conflict-free by the swizzle, the epilogue's fp32 C-tile stores and loads
# (sts_32 / lds_32) by the padded row stride (test_dense_paths_conflict_free). Update these
# numbers only for an intended change of the access pattern, and say why in the commit.
EXPECTED_STATS = {
    "256x16": {"smem_wavefronts": 15580, "smem_requests": 4608, "smem_bank_conflicts": 4060,
               "gmem_requests": 512, "gmem_sectors": 7784},
    "256x32": {"smem_wavefronts": 17116, "smem_requests": 5376, "smem_bank_conflicts": 4060,
               "gmem_requests": 576, "gmem_sectors": 8808},
    "128x64": {"smem_wavefronts": 24284, "smem_requests": 7936, "smem_bank_conflicts": 4060,
               "gmem_requests": 960, "gmem_sectors": 14952},
    "128x128": {"smem_wavefronts": 30428, "smem_requests": 11008, "smem_bank_conflicts": 4060,
                "gmem_requests": 1472, "gmem_sectors": 23144},
}


def _stats_case(config):
    cfg = next(c for c in _tiling.CONFIGS if c.name == config)
    w, x, wd = _case(2024, 512, 512, cfg.block_n, 0.8, DTYPES[1])
    _, stats = emulated_spmm_stats(w, x, split_k=1, config=config)
    stats.pop("config")
    return stats


@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_memory_statistics_regression(config, record_property):
    stats = _stats_case(config)
    ops = stats.pop("ops")
    for key, value in stats.items():
        record_property(key, value)
    print(f"\n{config}: {stats}\n  per instruction: {ops}")
    # Only the data-dependent scatter may conflict; the swizzle keeps ldmatrix and the zero fill
    # conflict-free. The 16-byte sparse loads waste at most one sector per warp request.
    assert ops["ldmatrix"]["bank_conflicts"] == 0 and ops["sts_128"]["bank_conflicts"] == 0
    assert stats["smem_bank_conflicts"] == ops["sts_16"]["bank_conflicts"]
    assert ops["ldg_128"]["sectors"] <= 17 * ops["ldg_128"]["requests"]
    # Epilogue: each block's block_m x block_n fp32 C tile is stored and loaded once, one float per
    # lane, in single-wavefront requests (N here is a whole block, so no row is skipped).
    cfg = next(c for c in _tiling.CONFIGS if c.name == config)
    requests = (512 // cfg.block_m) * cfg.block_m * cfg.block_n // 32
    for op in ("sts_32", "lds_32"):
        assert ops[op] == dict(requests=requests, wavefronts=requests, bank_conflicts=0, sectors=0)
    assert stats == EXPECTED_STATS[config]


@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_dense_paths_conflict_free(config):
    # With W all zero there is nothing to scatter: the remaining shared accesses (zero fill,
    # ldmatrix of W and X, the epilogue's C tile) must have no bank conflicts, and the X loads no
    # wasted sectors.
    cfg = next(c for c in _tiling.CONFIGS if c.name == config)
    w = SparseMatrix.from_dense(np.zeros((256, 256), np.float32), dtype=DTYPES[0], format="tiled_csl")
    x = np.ones((cfg.block_n, 256), DTYPES[0])
    _, stats = emulated_spmm_stats(w, x, split_k=1, config=config)
    assert stats["smem_requests"] > 0 and "sts_16" not in stats["ops"]
    assert {"sts_32", "lds_32"} <= stats["ops"].keys()
    assert stats["smem_bank_conflicts"] == 0
    # Each cp.async warp request moves 32 x 16 contiguous-by-row bytes = 16 sectors.
    assert stats["gmem_sectors"] == 16 * stats["gmem_requests"]


# ---- flashllm/numeric.h: the kernel's own 16-bit conversions, bit for bit against numpy / ml_dtypes ---
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_kernel_conversions_match_numpy(dtype):
    bits = np.arange(1 << 16, dtype=np.uint16)
    widened = emu.widen_bits(bits, dtype.name)
    expected = bits.view(dtype).astype(np.float32)
    same = widened.view(np.uint32) == expected.view(np.uint32)
    same |= np.isnan(widened) & np.isnan(expected)
    assert same.all()

    rng = np.random.default_rng(0)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN / inf neighbours, overflow to inf
        f, want = _rounding_cases(rng, widened, dtype)
    got = emu.round_float32(f, dtype.name)
    assert np.array_equal(got, want), np.flatnonzero(got != want)[:10]
    nan = emu.round_float32(np.array([np.nan], np.float32), dtype.name).view(dtype)
    assert np.isnan(nan).all()


def _rounding_cases(rng, widened, dtype):
    """float32 inputs (random magnitudes, exact ties, edges) and numpy's rounding of them."""
    scale = np.float32(2.0) ** rng.integers(-30, 20, 100_000)
    f = np.concatenate([
        rng.standard_normal(100_000).astype(np.float32) * scale,
        # exact ties between neighbouring 16-bit values, subnormals, overflow edges, specials
        (widened[:-1].astype(np.float64) / 2 + widened[1:].astype(np.float64) / 2).astype(np.float32),
        np.array([0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.99, 65520.0, 1e-8, -6e-8, 3e38],
                 np.float32),
    ])
    f = f[~np.isnan(f)]
    return f, f.astype(dtype).view(np.uint16)
