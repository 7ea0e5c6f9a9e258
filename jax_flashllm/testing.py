"""Test helpers: run the CUDA kernel's own source on the CPU, under the host emulation of the CUDA
execution model (cuda/emu/), so machines without a GPU can check the kernel bit by bit."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from jax_flashllm import _constants as C
from jax_flashllm import _tiling, formats
from jax_flashllm.format import SparseMatrix

__all__ = ["EMULATED_NUM_SMS", "emulated_spmm", "emulated_spmm_stats", "kernel_view_dense"]

# SM count the default split-K choice assumes under emulation (H100 / H200), so that
# emulated_spmm(w, x) runs what sparse_dense would launch on such a GPU.
EMULATED_NUM_SMS = 132

_DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def _index_array(w: SparseMatrix):
    """(format id, the format's index as a contiguous numpy array of its dtype)."""
    fmt = formats.get(w.format)
    return fmt.ID, np.ascontiguousarray(np.asarray(w.index), dtype=fmt.INDEX_DTYPE)


def _config_arg(config) -> int:
    if config is None:
        return -1
    if isinstance(config, str):
        names = [c.name for c in _tiling.CONFIGS]
        if config not in names:
            raise ValueError(f"unknown tiling config {config!r}; choose from {names}")
        return names.index(config)
    if not 0 <= int(config) < len(_tiling.CONFIGS):
        raise ValueError(f"config index {config} out of range")
    return int(config)


def emulated_spmm_stats(w: SparseMatrix, x, *, split_k: int | None = None, config=None,
                        validate: bool = True):
    """Like `emulated_spmm`, also returning the emulator's memory statistics.

    Returns (y, stats): y (N, M) numpy in w.dtype; stats a dict with smem_wavefronts,
    smem_requests, smem_bank_conflicts, gmem_requests, gmem_sectors and config (the tiling
    config's name).
    """
    from jax_flashllm import _flashllm_emu  # built with the package; imported lazily

    if validate:
        w.validate()  # the emulated kernel, like the real one, trusts its buffers
    dtype = _DTYPES.get(np.dtype(w.dtype).name)
    if dtype is None:
        raise TypeError(f"emulated_spmm: unsupported matrix dtype {w.dtype}")
    m, k = w.shape
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != k:
        raise ValueError(f"emulated_spmm: x must have shape (N, {k}), got {x.shape}")
    n = x.shape[0]
    if split_k is None:
        split_k = _tiling.choose_split_k(m, k, n, EMULATED_NUM_SMS, format=w.format)
    x_bits = np.ascontiguousarray(x.astype(dtype)).view(np.uint16)
    values = np.ascontiguousarray(np.asarray(w.values).astype(dtype)).view(np.uint16)
    fid, index = _index_array(w)
    offsets = np.ascontiguousarray(np.asarray(w.tile_offsets), dtype=np.int32)
    y_bits, stats = _flashllm_emu.spmm(values, index, offsets, x_bits, m, k, dtype.name,
                                       int(split_k), _config_arg(config), fid)
    return np.asarray(y_bits).view(dtype), dict(stats)


def emulated_spmm(w: SparseMatrix, x, *, split_k: int | None = None, config=None,
                  validate: bool = True) -> np.ndarray:
    """y = x @ w.to_dense().T computed by the CUDA kernel's source under host emulation.

    w: SparseMatrix (M, K) float16 | bfloat16 in any format (tiled_csl, bitmap, dense: the GPU
    dispatcher's kernel for that format). x: (N, K) array-like, cast to w's dtype.
    split_k: K slices (fp32 partials, reduced in split order by the last block of each output
    tile); None: what the GPU dispatcher would choose for a GPU with EMULATED_NUM_SMS SMs (sm_90).
    config: None (chosen by N, as on the GPU), a name from jax_flashllm._tiling.CONFIGS (e.g.
    "256x16") or its index, to force a block tile.
    validate: check w's arrays first (SparseMatrix.validate, ValueError), as the CPU path does.
    False hands the arrays to the kernel unchecked, as the GPU path must (it cannot read device
    data on the host): a malformed tile then counts as empty, and the emulator's address checks
    prove that no load leaves the arrays (an emulated fault raises RuntimeError).
    Returns y: (N, M) numpy array in w.dtype (fp32 accumulation, one rounding).
    """
    return emulated_spmm_stats(w, x, split_k=split_k, config=config, validate=validate)[0]


def kernel_view_dense(w: SparseMatrix) -> np.ndarray | None:
    """The (M, K) matrix the GPU kernel multiplies by for w's arrays, valid or not (Tiled-CSL).

    A tile whose range [tile_offsets[t], tile_offsets[t + 1]) is negative, reversed, past the end
    of the arrays, not a multiple of 8 at either end or longer than a tile counts as empty; a
    location is taken modulo the tile. For a valid matrix this is w.to_dense(). None where the
    kernel's result is not defined: a location repeated inside one range (the scatter keeps either
    value). Returns a numpy array in w.dtype.
    """
    values = np.asarray(w.values).astype(np.float32)
    locs = np.asarray(w.index).astype(np.int64) % C.TILE_ELEMS
    offs = np.asarray(w.tile_offsets).astype(np.int64)
    mt_n, kt_n = w.tiles
    out = np.zeros((mt_n * C.TILE_M, kt_n * C.TILE_K), np.float32)
    for t in range(mt_n * kt_n):
        b, e = offs[t], offs[t + 1]
        if b < 0 or b >= e or e > values.size or e - b > C.TILE_ELEMS or b % C.NNZ_ALIGN or e % C.NNZ_ALIGN:
            continue
        loc = locs[b:e]
        if np.unique(loc).size != loc.size:
            return None
        rows, cols = C.unswizzle(loc)
        mt, kt = divmod(t, kt_n)
        out[mt * C.TILE_M + rows, kt * C.TILE_K + cols] = values[b:e]
    return out[:w.shape[0], :w.shape[1]].astype(w.dtype)
