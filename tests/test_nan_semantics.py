"""NaN / Inf in x: an output that reaches a NaN or an Inf through a stored nonzero entry of W is NaN, or
non-finite (the IEEE result) for an Inf; every other output is unspecified (kernels that multiply whole dense
tiles turn 0 x NaN into NaN). Checked on every CPU path: N = 1 and N >= 2, each instruction-set variant,
tiles with no entry, every format the kernel reads, and the CUDA kernel's source through the emulator (split-K included)."""

import jax
import ml_dtypes
import numpy as np
import pytest

import jax_flashllm as jf
from jax_flashllm.testing import emulated_spmm

M, K = 300, 200


def _weight(dtype, seed=0):
    """(M, K) at 80 % sparsity with empty tiles: rows 0-127 x columns 64-127, and rows 256-299 entirely."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((M, K)).astype(np.float32)
    w[rng.random((M, K)) < 0.8] = 0.0
    w[:128, 64:128] = 0.0
    w[256:] = 0.0
    return w.astype(dtype)


def _poisoned_x(n, dtype, seed=1):
    """x (n, K) with NaN / +Inf / -Inf in a few columns of every row, one of them (70) in the empty tiles."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, K)).astype(np.float32)
    for row in range(n):
        x[row, (3 + row) % K] = np.nan
        x[row, 70] = np.nan
        x[row, (150 + row) % K] = np.inf if row % 2 else -np.inf
    return x.astype(dtype)


def check(y, x, w):
    """The guarantee: y[n, m] is NaN where a stored nonzero W[m, c] meets a NaN x[n, c]; non-finite where it
    meets only infinities. Nothing is required of the other outputs."""
    y = np.asarray(y, np.float64)
    x64, stored = np.asarray(x, np.float64), np.asarray(w, np.float64) != 0
    nan = (np.isnan(x64).astype(np.int64) @ stored.T.astype(np.int64)) > 0
    inf = (np.isinf(x64).astype(np.int64) @ stored.T.astype(np.int64)) > 0
    assert np.isnan(y[nan]).all(), f"{int((~np.isnan(y[nan])).sum())} outputs fed by a NaN are not NaN"
    assert not np.isfinite(y[inf & ~nan]).any(), "outputs fed by an Inf are finite"
    assert nan.any() and (inf & ~nan).any()  # the case is not vacuous


@pytest.mark.parametrize("fmt", ["tiled_csl", "bitmap", "dense"])
@pytest.mark.parametrize("n", [1, 2, 8, 33])
@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16], ids=["bf16", "fp16"])
def test_cpu_kernel(isa, n, dtype, fmt):
    w = _weight(dtype, seed=n)
    x = _poisoned_x(n, dtype, seed=n)
    y = jax.jit(jf.sparse_dense)(x, jf.SparseMatrix.from_dense(w, format=fmt))
    check(y, x, w)


def test_leading_dims_and_bias():
    w = _weight(ml_dtypes.bfloat16)
    x = _poisoned_x(6, ml_dtypes.bfloat16).reshape(2, 3, K)
    bias = np.ones(M, ml_dtypes.bfloat16)
    y = jf.sparse_dense(x, jf.SparseMatrix.from_dense(w, format="tiled_csl"), bias)
    check(np.asarray(y).reshape(6, M), x.reshape(6, K), w)


@pytest.mark.parametrize("n, split_k", [(1, 1), (8, 2)])
def test_cuda_kernel_source_in_the_emulator(n, split_k):
    w = _weight(ml_dtypes.bfloat16, seed=10 + n)
    x = _poisoned_x(n, ml_dtypes.bfloat16, seed=n)
    check(emulated_spmm(jf.SparseMatrix.from_dense(w, format="tiled_csl"), x, split_k=split_k), x, w)
