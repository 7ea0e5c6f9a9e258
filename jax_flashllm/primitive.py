"""The `flashllm_spmm` primitive: shape rule, FFI lowering per platform, batching and autodiff.

    flashllm_spmm(x (N, K), values (P,), index, tile_offsets (T+1,) int32;
                  m, k, split_k, format) -> (y (N, M) x.dtype, workspace (split_k * N * M_pad,) float32)

`format` is the weight's format id (jax_flashllm.formats: 1 tiled_csl, 2 bitmap, 3 dense), which fixes
the index's dtype and shape; the FFI handlers pick their kernel by it.

The workspace is the CUDA kernel's split-K scratch: a result sized here so the handler allocates
nothing (empty when split_k == 1). Public code calls `jax_flashllm.sparse_dense`, not this.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jax_flashllm import _constants as C
from jax_flashllm import _ffi, _tiling
from jax_flashllm import formats as F
from jax_flashllm.format import SparseMatrix

__all__ = ["choose_split_k", "flashllm_spmm_p", "spmm", "workspace_size"]

flashllm_spmm_p = Primitive("flashllm_spmm")
flashllm_spmm_p.multiple_results = True

_FLOAT16 = (np.dtype(jnp.float16), np.dtype(jnp.bfloat16))


def workspace_size(m: int, n: int, split_k: int) -> int:
    """Float32 elements of split-K scratch: one (N, M_pad) partial per K slice."""
    m_pad = C.tile_grid(m, 1)[0] * C.TILE_M
    return split_k * n * m_pad if split_k > 1 else 0


def choose_split_k(m: int, k: int, n: int) -> int:
    """Split-K factor for an (N, K) x (M, K)^T product on the default device: the CUDA kernel's choice
    on a GPU, 1 (no workspace) elsewhere. Decided at trace time: the workspace it implies is part of
    the program."""
    device = jax.devices()[0]
    if device.platform != "gpu":
        return 1
    return _tiling.choose_split_k(m, k, n, getattr(device, "core_count", 132))


def spmm(x, values, index, tile_offsets, *, m: int, k: int, split_k: int = 1, format: int = F.tiled_csl.ID):
    """y (N, M) = x (N, K) @ W.T for W = (values, index, tile_offsets) of logical shape (m, k) in the
    format with id `format`."""
    y, _ = flashllm_spmm_p.bind(x, values, index, tile_offsets, m=int(m), k=int(k), split_k=int(split_k),
                                format=int(format))
    return y


# --- shape rule ---------------------------------------------------------------------------------------
def _abstract_eval(x, values, index, tile_offsets, *, m, k, split_k, format):
    if x.ndim != 2:
        raise ValueError(f"flashllm_spmm: x must be 2-D (N, K), got shape {x.shape}")
    if x.shape[1] != k:
        raise ValueError(f"flashllm_spmm: x has K = {x.shape[1]}, the weight has K = {k}")
    if x.dtype not in _FLOAT16:
        raise TypeError(f"flashllm_spmm: x must be float16 or bfloat16, got {x.dtype}")
    if values.dtype != x.dtype:
        raise TypeError(f"flashllm_spmm: x is {x.dtype} but the weight values are {values.dtype}")
    fmt = F.get(format)
    if index.dtype != fmt.INDEX_DTYPE or tile_offsets.dtype != np.int32:
        raise TypeError(f"flashllm_spmm: a {fmt.NAME} index must be {fmt.INDEX_DTYPE} and tile_offsets int32, "
                        f"got {index.dtype} and {tile_offsets.dtype}")
    tiles = math.prod(C.tile_grid(m, k))
    if values.ndim != 1 or index.shape != fmt.index_shape(tiles, values.shape[0]):
        raise ValueError(f"flashllm_spmm: a {fmt.NAME} weight of {tiles} tiles with values {values.shape} "
                         f"needs an index of shape {fmt.index_shape(tiles, values.shape[0])}, got {index.shape}")
    if tile_offsets.shape != (tiles + 1,):
        raise ValueError(f"flashllm_spmm: tile_offsets must have shape ({tiles + 1},) for a ({m}, {k}) "
                         f"weight, got {tile_offsets.shape}")
    if split_k < 1:
        raise ValueError(f"flashllm_spmm: split_k must be >= 1, got {split_k}")
    n = x.shape[0]
    return (jax.core.ShapedArray((n, m), x.dtype),
            jax.core.ShapedArray((workspace_size(m, n, split_k),), jnp.float32))


flashllm_spmm_p.def_abstract_eval(_abstract_eval)


@functools.lru_cache(maxsize=None)
def _jitted(m, k, split_k, format):
    return jax.jit(functools.partial(flashllm_spmm_p.bind, m=m, k=k, split_k=split_k, format=format))


# Eager calls compile a one-op program, the same path as jit.
flashllm_spmm_p.def_impl(lambda *args, m, k, split_k, format: _jitted(m, k, split_k, format)(*args))

mlir.register_lowering(flashllm_spmm_p, jax.ffi.ffi_lowering(_ffi.CPU_TARGET), platform="cpu")
mlir.register_lowering(flashllm_spmm_p, jax.ffi.ffi_lowering(_ffi.CUDA_TARGET), platform="cuda")


# --- batching: a batch of activations folds into N; a batch of weights loops -----------------------------
def _batch(args, dims, *, m, k, split_k, format):
    x, values, index, tile_offsets = args
    bx, bv, bl, bo = dims
    params = dict(m=m, k=k, split_k=split_k, format=format)
    if bv is None and bl is None and bo is None:
        x = jnp.moveaxis(x, bx, 0)
        b, n = x.shape[:2]
        # The folded problem has B*N rows and may want another split; the per-example workspace the
        # caller sees is never read (XLA drops the zeros), only its shape must stay what bind promised.
        y = spmm(x.reshape(b * n, k), values, index, tile_offsets, m=m, k=k,
                 split_k=choose_split_k(m, k, b * n), format=format)
        ws = jnp.zeros((b, workspace_size(m, n, split_k)), jnp.float32)
        return (y.reshape(b, n, m), ws), (0, 0)
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    moved = [batching.bdim_at_front(a, d, size) for a, d in zip(args, dims)]
    y, ws = jax.lax.map(lambda a: tuple(flashllm_spmm_p.bind(*a, **params)), tuple(moved))
    return (y, ws), (0, 0)


batching.primitive_batchers[flashllm_spmm_p] = _batch


# --- autodiff: bilinear in (x, values) --------------------------------------------------------------
def _jvp(primals, tangents, *, m, k, split_k, format):
    x, values, index, tile_offsets = primals
    dx, dvalues = tangents[:2]
    params = dict(m=m, k=k, split_k=split_k, format=format)
    y, ws = flashllm_spmm_p.bind(*primals, **params)
    dy = None
    if type(dx) is not ad.Zero:
        dy = flashllm_spmm_p.bind(dx, values, index, tile_offsets, **params)[0]
    if type(dvalues) is not ad.Zero:
        term = flashllm_spmm_p.bind(x, dvalues, index, tile_offsets, **params)[0]
        dy = term if dy is None else dy + term
    dy = ad.Zero(jax.typeof(y).to_tangent_aval()) if dy is None else dy
    return (y, ws), (dy, ad.Zero(jax.typeof(ws).to_tangent_aval()))


def _aval(a):
    return a.aval if ad.is_undefined_primal(a) else jax.typeof(a)


def _transpose(cts, x, values, index, tile_offsets, *, m, k, split_k, format):
    ct_y = cts[0]
    x_aval, v_aval = _aval(x), _aval(values)
    if ad.is_undefined_primal(x) and ad.is_undefined_primal(values):
        raise ValueError("flashllm_spmm is bilinear: it cannot be transposed in x and values at once")
    if type(ct_y) is ad.Zero:
        return (ad.Zero(x_aval) if ad.is_undefined_primal(x) else None,
                ad.Zero(v_aval) if ad.is_undefined_primal(values) else None, None, None)
    w = SparseMatrix._unchecked(values if not ad.is_undefined_primal(values) else jnp.zeros(v_aval.shape, v_aval.dtype),
                                index, tile_offsets, (m, k), v_aval.dtype, format)
    if ad.is_undefined_primal(x):
        # dL/dx = g @ W. Densifying costs M*K memory but stays exact; gradients w.r.t. activations are a
        # training-time path, the kernel serves inference.
        ct_x = jnp.dot(ct_y, w.to_dense(), preferred_element_type=jnp.float32)
        return ct_x.astype(x_aval.dtype), None, None, None
    # dL/dvalues[i] = sum_n g[n, row_i] * x[n, col_i]: the sampled dense-dense product at the stored
    # positions (Tiled-CSL's padding positions included: they lie in the padded rows/cols when outside
    # (M, K)); bitmap padding values stand for no position, and the kernels never read them: gradient 0.
    rows, cols, valid = w.entry_coords()
    mp, kp = w.padded_shape
    g = jnp.pad(ct_y.astype(jnp.float32), ((0, 0), (0, mp - m)))
    xx = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, kp - k)))
    ct_v = jnp.where(valid, jnp.einsum("np,np->p", g[:, rows], xx[:, cols]), 0.0)
    return None, ct_v.astype(v_aval.dtype), None, None


ad.primitive_jvps[flashllm_spmm_p] = _jvp
ad.primitive_transposes[flashllm_spmm_p] = _transpose
