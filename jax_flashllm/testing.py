"""Test helpers: run the CUDA kernel's own source on the CPU, under the host emulation of the CUDA
execution model (cuda/emu/), so machines without a GPU can check the kernel bit by bit."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from jax_flashllm import _tiling
from jax_flashllm.format import SparseMatrix

__all__ = ["EMULATED_NUM_SMS", "emulated_spmm", "emulated_spmm_stats"]

# SM count the default split-K choice assumes under emulation (H100 / H200), so that
# emulated_spmm(w, x) runs what sparse_dense would launch on such a GPU.
EMULATED_NUM_SMS = 132

_DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


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


def emulated_spmm_stats(w: SparseMatrix, x, *, split_k: int | None = None, config=None, validate: bool = True):
    """Like `emulated_spmm`, also returning the emulator's memory statistics.

    Returns (y, stats): y (N, M) numpy in w.dtype; stats a dict with smem_wavefronts,
    smem_requests, smem_bank_conflicts, gmem_requests, gmem_sectors (summed over the SpMM and,
    with split_k > 1, the reduce launch) and config (the tiling config's name).
    """
    from jax_flashllm import _flashllm_emu  # built with the package; imported lazily

    if w.format != "tiled_csl":
        raise NotImplementedError(f"emulated_spmm: the emulated CUDA kernel reads only the tiled_csl format "
                                  f"so far, got a {w.format}-format matrix (the bitmap CUDA kernel is "
                                  "issue #10); encode with format='tiled_csl'")
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
        split_k = _tiling.choose_split_k(m, k, n, EMULATED_NUM_SMS)
    x_bits = np.ascontiguousarray(x.astype(dtype)).view(np.uint16)
    values = np.ascontiguousarray(np.asarray(w.values).astype(dtype)).view(np.uint16)
    locations = np.ascontiguousarray(np.asarray(w.index), dtype=np.uint16)
    offsets = np.ascontiguousarray(np.asarray(w.tile_offsets), dtype=np.int32)
    y_bits, stats = _flashllm_emu.spmm(values, locations, offsets, x_bits, m, k, dtype.name,
                                       int(split_k), _config_arg(config))
    return np.asarray(y_bits).view(dtype), dict(stats)


def emulated_spmm(w: SparseMatrix, x, *, split_k: int | None = None, config=None,
                  validate: bool = True) -> np.ndarray:
    """y = x @ w.to_dense().T computed by the CUDA kernel's source under host emulation.

    w: SparseMatrix (M, K) float16 | bfloat16. x: (N, K) array-like, cast to w's dtype.
    split_k: K slices (fp32 partials + reduce kernel); None: what the GPU dispatcher would choose
    for a GPU with EMULATED_NUM_SMS SMs. config: None (chosen by N, as on the GPU), a name from
    jax_flashllm._tiling.CONFIGS (e.g. "256x16") or its index, to force a block tile.
    validate: check w first (False: hand the raw buffers over, to test the kernel's own guards).
    Returns y: (N, M) numpy array in w.dtype (fp32 accumulation, one rounding).
    """
    return emulated_spmm_stats(w, x, split_k=split_k, config=config, validate=validate)[0]
