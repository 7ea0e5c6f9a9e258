"""Softmax attention over a KV cache: a fused CPU kernel behind an XLA FFI call, and its jnp reference.

    flashllm_attention(q (B, T, H, D), k (B, H, D, S), v (B, H, S, D), bias (B | 1, 1, T, S) float32)
        -> y (B, T, H, D) in q's dtype

On the CPU the primitive lowers to the FFI target ``flashllm_attention_cpu`` (cuda/cpu/attention_cpu.h):
one query row's S scores live in a thread's scratch, so no (B, H, T, S) buffer goes through XLA, and a
16-bit cache is widened in registers instead of copied to float32. Every other platform (GPU) lowers the
primitive to `attention_reference`, the same computation in jnp. Gradients are the reference's: the
primitive's JVP is the reference's JVP, so training differentiates exactly what it did before.
``FLASHLLM_ATTENTION=reference`` in the environment (read when a function is traced) makes `attention`
trace the reference instead of the primitive.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir
from jax.sharding import Mesh, PartitionSpec as P

from jax_flashllm import _ffi

__all__ = ["attention", "attention_over_heads", "attention_reference", "flashllm_attention_p"]

flashllm_attention_p = Primitive("flashllm_attention")

_DTYPES = tuple(np.dtype(d) for d in (jnp.float32, jnp.bfloat16, jnp.float16))
# The environment variable that, set to "reference", makes `attention` trace the jnp reference.
ENV = "FLASHLLM_ATTENTION"


def attention_reference(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array) -> jax.Array:
    """The jnp formulation `attention` must equal (shapes and dtypes as there).

    Both dots and the softmax in float32; the probabilities stay unnormalised until after the second dot.
    XLA's CPU backend writes four (B, H, T, S) float32 buffers for it (scores, masked scores, their
    exponentials, a relaid copy for the second dot) and widens a 16-bit cache to a float32 copy.
    """
    f32 = jnp.float32
    # (B, H, T, S)
    scores = jnp.einsum("BTHD,BHDS->BHTS", q.astype(f32), k.astype(f32)) + bias
    weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    # (B, H, T)
    total = jnp.sum(weights, axis=-1)
    # (B, T, H, D)
    y = jnp.einsum("BHTS,BHSD->BTHD", weights, v.astype(f32))
    return (y / jnp.swapaxes(total, 1, 2)[..., None]).astype(q.dtype)


def _check(q, k, v, bias) -> None:
    if bias.dtype != jnp.float32 or bias.ndim != 4:
        # A boolean mask would broadcast into the scores as 0/1 and silently attend everywhere.
        raise TypeError(f"attention bias must be float32 (B, 1, T, S) from mask_bias(mask), got "
                        f"{bias.dtype} {bias.shape}")
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention: q, k, v must be 4-D, got {q.shape}, {k.shape}, {v.shape}")
    b, t, h, d = q.shape
    s = k.shape[3]
    if k.shape != (b, h, d, s) or v.shape != (b, h, s, d):
        raise ValueError(f"attention: for q (B, T, H, D) = {q.shape}, k must be (B, H, D, S) and v (B, H, S, D); "
                         f"got k {k.shape}, v {v.shape}")
    if k.dtype != v.dtype:
        raise TypeError(f"attention: k and v must share one dtype, got {k.dtype} and {v.dtype}")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, *,
              reference: bool | None = None) -> jax.Array:
    """Softmax attention, y = softmax(q k + bias) v per (batch, head, query row).

    q: (B, T, H, D) float32 | bfloat16 | float16, already scaled by D ** -0.5;
    k: (B, H, D, S) and v: (B, H, S, D), one dtype of the three (the cache's); other float dtypes (float64)
    take the reference;
    bias: (B or 1, 1, T, S) float32, added to the scores (models.opt.mask_bias: 0 where a key is visible,
    the float32 minimum where it is masked; a row with no visible key is the uniform average of v).
    Returns (B, T, H, D) in q's dtype; scores, softmax and sums in float32.

    reference: True traces `attention_reference` instead of the fused kernel; None (default) does so only
    when FLASHLLM_ATTENTION=reference is set. Composes with jit, vmap, grad, jvp and while_loop.
    """
    _check(q, k, v, bias)
    if reference is None:
        reference = os.environ.get(ENV, "") == "reference"
    if reference or 0 in (*q.shape, k.shape[3]) or not {q.dtype, k.dtype} <= set(_DTYPES):
        return attention_reference(q, k, v, bias)
    if bias.shape[0] not in (1, q.shape[0]) or bias.shape[1:] != (1, q.shape[1], k.shape[3]):
        bias = jnp.broadcast_to(bias, (q.shape[0], 1, q.shape[1], k.shape[3]))
    return _attention(q, k, v, bias)


def attention_over_heads(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, mesh: Mesh,
                         axis: str) -> jax.Array:
    """`attention` with the heads split over mesh axis `axis` (tensor parallelism, sharding.shard_model):
    each device attends with its own heads of q, k and v (shard_map), so nothing crosses devices. XLA's
    partitioner cannot split an FFI call by itself: it would gather every head onto every device.
    Shapes and dtypes as `attention`; H must be a multiple of the axis size."""
    heads_q, heads_kv = P(None, None, axis, None), P(None, axis, None, None)
    # check_vma=False: the FFI primitive has no varying-manual-axes rule; the specs say it all.
    return jax.shard_map(attention, mesh=mesh, in_specs=(heads_q, heads_kv, heads_kv, P()), out_specs=heads_q,
                         check_vma=False)(q, k, v, bias)


@jax.custom_jvp
def _attention(q, k, v, bias):
    return flashllm_attention_p.bind(q, k, v, bias)


@_attention.defjvp
def _attention_jvp(primals, tangents):
    # The reference's JVP (its primal part recomputed), so grad transposes exactly the reference's ops.
    _, dy = jax.jvp(attention_reference, primals, tangents)
    return _attention(*primals), dy


# --- shape rule -------------------------------------------------------------------------------------
def _abstract_eval(q, k, v, bias):
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.dtype not in _DTYPES:
            raise TypeError(f"flashllm_attention: {name} must be float32, bfloat16 or float16, got {a.dtype}")
    b, t, h, d = q.shape
    s = k.shape[3]
    if k.shape != (b, h, d, s) or v.shape != (b, h, s, d) or k.dtype != v.dtype:
        raise ValueError(f"flashllm_attention: k (B, H, D, S) and v (B, H, S, D) of one dtype for q {q.shape}, "
                         f"got {k.shape} {k.dtype}, {v.shape} {v.dtype}")
    if bias.dtype != jnp.float32 or bias.shape[0] not in (1, b) or bias.shape[1:] != (1, t, s):
        raise ValueError(f"flashllm_attention: bias must be float32 (B or 1, 1, T, S), got {bias.dtype} {bias.shape}")
    return jax.core.ShapedArray(q.shape, q.dtype)


flashllm_attention_p.def_abstract_eval(_abstract_eval)


@functools.lru_cache(maxsize=None)
def _jitted():
    return jax.jit(flashllm_attention_p.bind)


# Eager calls compile a one-op program, the same path as jit.
flashllm_attention_p.def_impl(lambda *args: _jitted()(*args))

mlir.register_lowering(flashllm_attention_p, mlir.lower_fun(attention_reference, multiple_results=False))
mlir.register_lowering(flashllm_attention_p, jax.ffi.ffi_lowering(_ffi.ATTENTION_CPU_TARGET), platform="cpu")


# --- batching: a batch of problems folds into B ----------------------------------------------------------
def _batch(args, dims):
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    q, k, v, bias = (batching.bdim_at_front(a, d, size) for a, d in zip(args, dims))
    n, b = q.shape[:2]
    if bias.shape[1] != b:  # a bias shared by the batch of B is not shared across the vmapped axis
        bias = jnp.broadcast_to(bias, (n, b, *bias.shape[2:]))
    fold = lambda a: a.reshape(n * b, *a.shape[2:])  # noqa: E731
    y = flashllm_attention_p.bind(fold(q), fold(k), fold(v), fold(bias))
    return y.reshape(n, b, *y.shape[1:]), 0


batching.primitive_batchers[flashllm_attention_p] = _batch
