"""The CPU kernel's instruction-set variants (portable, AVX2, AVX-512), each forced in turn, against a
float64 oracle: every vector width and chunking of N, fp16 and bf16, entries in any order inside a tile,
runs longer than the kernel's decode block, and the variant switch itself."""

import jax
import ml_dtypes
import numpy as np
import pytest

import jax_flashllm as jf
from jax_flashllm import _flashllm_cpu
from reference import DTYPES, assert_close_to_reference, random_sparse

ISAS = _flashllm_cpu.cpu_isas()


def _run(x, s):
    # A fresh jit per call: the variant is read when the kernel runs, not when it is traced, but a
    # cached executable must not hide that.
    return np.asarray(jax.jit(jf.sparse_dense)(x, s))


def test_portable_variant_is_always_there_and_default_is_the_best():
    assert ISAS[0] == "portable"
    assert _flashllm_cpu.cpu_isa() in ISAS
    assert not _flashllm_cpu.set_cpu_isa("no-such-isa")


# N crosses every width and chunk boundary: 1 (scalar), 2-4 (4 wide), 5-8, 9-16, 17-32, 33-64, > 64.
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9, 15, 16, 17, 24, 31, 32, 33, 48, 64, 65, 100, 130])
def test_every_n(isa, n):
    rng = np.random.default_rng(n)
    dtype = DTYPES[n % 2]
    w = random_sparse(rng, (260, 200), 0.8, dtype)
    x = rng.standard_normal((n, 200)).astype(dtype)
    assert_close_to_reference(_run(x, jf.SparseMatrix.from_dense(w)), x, w)


@pytest.mark.parametrize("n", [1, 11])  # 1: the dense-tile GEMV path; 11: runs
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_sparsities_and_dtypes(isa, dtype, sparsity, n):
    rng = np.random.default_rng(int(sparsity * 100) + n)
    w = random_sparse(rng, (300, 333), sparsity, dtype)  # 0.0: dense tiles, runs > the decode block
    x = rng.standard_normal((n, 333)).astype(dtype)
    assert_close_to_reference(_run(x, jf.SparseMatrix.from_dense(w)), x, w)


def _shuffled_within_tiles(s: jf.SparseMatrix, rng) -> jf.SparseMatrix:
    """The same matrix with each tile's entries in a random order (still a valid encoding)."""
    values, locations = np.asarray(s.values), np.asarray(s.locations)
    offsets = np.asarray(s.tile_offsets)
    perm = np.concatenate([lo + rng.permutation(hi - lo) for lo, hi in zip(offsets[:-1], offsets[1:])])
    return jf.SparseMatrix(values[perm], locations[perm], offsets, s.shape)


@pytest.mark.parametrize("n", [1, 7, 16, 40])
def test_entry_order_inside_a_tile_does_not_matter(isa, n):
    rng = np.random.default_rng(100 + n)
    w = random_sparse(rng, (256, 192), 0.6, DTYPES[1])
    s = _shuffled_within_tiles(jf.SparseMatrix.from_dense(w, format="tiled_csl"), rng)
    x = rng.standard_normal((n, 192)).astype(DTYPES[1])
    assert_close_to_reference(_run(x, s), x, w)


def test_variants_agree_closely():
    # Different variants sum in different orders, but each stays within fp32 accumulation error:
    # compare them to each other at a tolerance far below the output dtype's rounding.
    rng = np.random.default_rng(7)
    w = random_sparse(rng, (384, 512), 0.8, np.float32)
    x = rng.standard_normal((20, 512)).astype(ml_dtypes.bfloat16)
    s = jf.SparseMatrix.from_dense(w.astype(ml_dtypes.bfloat16))
    before = _flashllm_cpu.cpu_isa()
    outs = []
    try:
        for name in ISAS:
            assert _flashllm_cpu.set_cpu_isa(name)
            outs.append(_run(x, s).astype(np.float64))
    finally:
        _flashllm_cpu.set_cpu_isa(before)
    scale = np.abs(outs[0]).max()
    for o in outs[1:]:
        # bf16 output: at most one ulp (2^-8 relative) apart after rounding different fp32 sums.
        np.testing.assert_allclose(o, outs[0], atol=scale * 2**-7, rtol=0)


@pytest.mark.parametrize("n", [1, 4, 8, 16])
def test_full_rows_inside_sparse_tiles(isa, n):
    # A few completely dense rows in otherwise very sparse tiles: runs of 64 entries, far longer than
    # the kernel's masked lanes per row, and rows with no entry at all.
    rng = np.random.default_rng(200 + n)
    w = random_sparse(rng, (256, 128), 0.97, DTYPES[1]).astype(np.float32)
    w[[3, 4, 70, 200]] = rng.standard_normal((4, 128))
    w[100:140] = 0.0
    w = w.astype(DTYPES[1])
    x = rng.standard_normal((n, 128)).astype(DTYPES[1])
    assert_close_to_reference(_run(x, jf.SparseMatrix.from_dense(w)), x, w)


# The dense-tile path for N >= 2 (bf16, where the CPU has AVX512_BF16): a tile takes it when it holds
# at least 64 entries per column of its chunk's padded width (8, 16, 32, 48 or 64), so these densities
# put full tiles on both sides of the switch for each width: 100 % dense tiles take it at every N,
# 30 % up to width 32, 10 % only at width 8; the matrix is off the tile grid (44-row and 13-column edge
# tiles, with few entries, take the other paths in the same call). Other variants and fp16 never take
# it and must give the same answers.
@pytest.mark.parametrize("n", [2, 5, 8, 9, 16, 17, 32, 33, 48, 64, 70])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("sparsity", [0.0, 0.7, 0.9])
def test_dense_tile_path_across_the_switch(isa, dtype, sparsity, n):
    rng = np.random.default_rng(300 + n + int(sparsity * 10))
    w = random_sparse(rng, (300, 333), sparsity, dtype)
    x = rng.standard_normal((n, 333)).astype(dtype)
    assert_close_to_reference(_run(x, jf.SparseMatrix.from_dense(w)), x, w)


@pytest.mark.parametrize("n", [8, 16, 40])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_dense_tile_path_with_unsorted_entries(isa, dtype, n):
    rng = np.random.default_rng(400 + n)
    w = random_sparse(rng, (256, 192), 0.3, dtype)
    s = _shuffled_within_tiles(jf.SparseMatrix.from_dense(w, format="tiled_csl"), rng)
    x = rng.standard_normal((n, 192)).astype(dtype)
    assert_close_to_reference(_run(x, s), x, w)
