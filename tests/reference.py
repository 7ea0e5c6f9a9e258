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
