"""The public op: `sparse_dense(x, w, bias)` = x @ w.T (+ bias) with w a SparseMatrix (any format)."""

from __future__ import annotations

import math
from typing import Callable

import jax.numpy as jnp

from jax_flashllm.format import SparseMatrix
from jax_flashllm.primitive import choose_split_k, spmm

__all__ = ["sparse_dense", "register_weight_type"]

# Weight types built on SparseMatrix (jax_flashllm.sharding.ShardedSparseMatrix) register their multiply
# here, so this op dispatches on the type without importing the modules that build on it.
_MULTIPLY: dict[type, Callable] = {}


def register_weight_type(cls: type, multiply: Callable) -> None:
    """Route ``sparse_dense(x, w, bias)`` for weights of type ``cls`` to ``multiply(x, w, bias)``."""
    _MULTIPLY[cls] = multiply


def check_inputs(x, shape, dtype, bias):
    """The argument checks of sparse_dense, shared with its sharded form. Returns (x, bias) as arrays.

    x: (..., K) of `dtype`; shape: the weight's (M, K); bias: None or (M,)."""
    x = jnp.asarray(x)
    m, k = shape
    if x.ndim < 1:
        raise ValueError(f"sparse_dense: x must have shape (..., {k}), got a scalar")
    if x.shape[-1] != k:
        raise ValueError(f"sparse_dense: x has {x.shape[-1]} features, the weight {tuple(shape)} expects {k}")
    if x.dtype != dtype:
        raise TypeError(f"sparse_dense: x is {x.dtype} but the weight is {dtype}; cast one of them "
                        "(the kernel multiplies equal 16-bit types)")
    if bias is not None:
        bias = jnp.asarray(bias)
        if bias.shape != (m,):
            raise ValueError(f"sparse_dense: bias must have shape ({m},), got {bias.shape}")
    return x, bias


def sparse_dense(x, w: SparseMatrix, bias=None):
    """y = x @ w.to_dense().T + bias, reading only w's nonzeros.

    x:    (..., K) float16 | bfloat16, the same dtype as w (any leading dims, none, or zero-size).
    w:    SparseMatrix of shape (M, K) = (out_features, in_features), or a ShardedSparseMatrix
          (jax_flashllm.sharding: tensor-parallel over a mesh axis, multiplied shard by shard).
    bias: optional (M,), added in x's dtype.
    Returns (..., M) in x's dtype; products are accumulated in float32.
    Differentiable w.r.t. x and w.values; composes with jit, vmap, scan and while_loop.
    """
    if not isinstance(w, SparseMatrix):
        multiply = _MULTIPLY.get(type(w))
        if multiply is None:
            raise TypeError(f"sparse_dense expects a SparseMatrix weight, got {type(w).__name__}")
        return multiply(x, w, bias)
    x, bias = check_inputs(x, w.shape, w.values.dtype, bias)
    m, k = w.shape
    lead = x.shape[:-1]
    n = math.prod(lead)
    if n == 0:
        y = jnp.zeros((*lead, m), x.dtype)
    else:
        y = spmm(x.reshape(n, k), w.values, w.index, w.tile_offsets, m=m, k=k,
                 split_k=choose_split_k(m, k, n), format=w.format_id)
        y = y.reshape(*lead, m)
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y
