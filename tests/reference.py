"""Numpy oracles and dtype-tied tolerances shared by the tests."""

from __future__ import annotations

import ml_dtypes
import numpy as np

DTYPES = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))


def random_sparse(rng, shape, sparsity, dtype=np.float32):
    """A dense (M, K) matrix with about `sparsity` of its entries exactly zero."""
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) < sparsity] = 0.0
    return w.astype(dtype)


def reference_matmul(x, w_dense, bias=None):
    """float64 x @ w.T (+ bias)."""
    y = np.asarray(x, np.float64) @ np.asarray(w_dense, np.float64).T
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y


def dense_rounding_error(x, w_dense, ref, bias=None):
    """Max error of the best a dense kernel can do: fp32 accumulation, one rounding to x's dtype
    (and one more for the bias add in that dtype)."""
    y = (np.asarray(x, np.float32) @ np.asarray(w_dense, np.float32).T).astype(x.dtype)
    if bias is not None:
        y = (y.astype(np.float32) + np.asarray(bias, np.float32)).astype(x.dtype)
    return float(np.max(np.abs(y.astype(np.float64) - ref), initial=0.0))


def assert_close_to_reference(y, x, w_dense, bias=None):
    """y must be within 2x the dense kernel's own rounding error of the float64 result."""
    y = np.asarray(y)
    ref = reference_matmul(x, w_dense, bias)
    assert y.shape == ref.shape, (y.shape, ref.shape)
    bound = 2 * dense_rounding_error(x, w_dense, ref, bias) + 1e-6 * max(1.0, float(np.max(np.abs(ref), initial=0)))
    err = np.abs(y.astype(np.float64) - ref)
    finite = np.isfinite(ref)
    assert np.array_equal(np.isnan(y.astype(np.float64)), np.isnan(ref)), "NaN pattern differs"
    worst = float(np.max(err[finite], initial=0.0))
    assert worst <= bound, f"max error {worst:.3g} exceeds bound {bound:.3g}"


def encode_bitmap_reference(dense, dtype, fmt="bitmap"):
    """(values (P,) dtype, index (uint32), tile_offsets (T+1,) int32) of format v2 ("bitmap") or
    v3 ("dense"), written straight from format.h's definition (block order, bit order, slab header,
    per-tile padding to 8) with plain loops over tiles: an oracle independent of jax_flashllm.format."""
    from jax_flashllm import _constants as c

    dense = np.asarray(dense).astype(dtype)
    m, k = dense.shape
    mt, kt = c.tile_grid(m, k)
    padded = np.zeros((mt * c.TILE_M, kt * c.TILE_K), dtype)
    padded[:m, :k] = dense
    values, index, offsets = [], [], [0]
    for i in range(mt):
        for j in range(kt):
            tile = padded[i * c.TILE_M:(i + 1) * c.TILE_M, j * c.TILE_K:(j + 1) * c.TILE_K]
            ordered = tile.reshape(-1)[c.BLOCK_ORDER].reshape(c.BLOCKS_PER_TILE, c.BLOCK_ELEMS)
            ordered[ordered == 0] = 0  # -0.0 is a pruned zero too: stored (dense) as +0.0
            if fmt == "dense":
                vals = ordered.reshape(-1)
            else:
                mask = ordered != 0
                vals = ordered[mask]
                words = np.zeros(c.BITMAP_WORDS_PER_TILE, np.uint32)
                bits = (mask.astype(np.uint64) << np.arange(64, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
                words[c.BITMAP_HEADER_WORDS::2] = (bits & 0xFFFFFFFF).astype(np.uint32)
                words[c.BITMAP_HEADER_WORDS + 1::2] = (bits >> np.uint64(32)).astype(np.uint32)
                per_slab = mask.reshape(c.SLABS_PER_TILE, -1).sum(axis=1)
                words[1:c.SLABS_PER_TILE] = np.cumsum(per_slab)[:-1]
                index.append(words)
                vals = np.concatenate([vals, np.zeros(-len(vals) % c.NNZ_ALIGN, dtype)])
            values.append(vals)
            offsets.append(offsets[-1] + len(vals))
    return (np.concatenate(values).astype(dtype),
            np.concatenate(index) if index else np.zeros(0, np.uint32),
            np.asarray(offsets, np.int32))


def mixed_density_dense(rng):
    """(384, 256) float32: 3 x 4 tiles that are empty, fully dense, half-dense, sparse and nearly
    full, plus a single-entry tile (one real entry + 7 padding entries in Tiled-CSL)."""
    w = np.zeros((384, 256), np.float32)
    dens = [[0.0, 1.0, 0.5, 0.05], [1.0, 0.0, 0.0, 1.0], [0.2, 1.0, 0.999, 0.0]]
    for mt, row in enumerate(dens):
        for kt, d in enumerate(row):
            blk = rng.standard_normal((128, 64)).astype(np.float32) * (rng.random((128, 64)) < d)
            w[mt * 128:(mt + 1) * 128, kt * 64:(kt + 1) * 64] = blk
    w[128 + 77, 64 + 5] = 3.0
    return w
