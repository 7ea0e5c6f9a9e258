"""Magnitude pruning (per layer or per output row) and a seeded random mask for benchmarks. Host-side numpy, deterministic: ties are broken by position, so the same input always
gives the same mask, and exactly round(sparsity * n) entries are pruned per group.

Masks are boolean with True = kept. Weights are (M, K) = (out_features, in_features).
"""

from __future__ import annotations

import numpy as np

__all__ = ["METHODS", "magnitude_mask", "random_mask", "mask", "prune"]

METHODS = ("magnitude", "magnitude_row", "random")


def _check(sparsity: float) -> float:
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return float(sparsity)


def _keep_largest(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """scores: (R, n) -> (R, n) bool, False for the round(sparsity * n) smallest scores of each row.

    O(n) with np.partition; among equal scores at the threshold the earliest positions are pruned first.
    """
    n = scores.shape[-1]
    k = int(round(sparsity * n))
    if k == 0:
        return np.ones(scores.shape, bool)
    if k >= n:
        return np.zeros(scores.shape, bool)
    kth = np.partition(scores, k - 1, axis=-1)[:, k - 1:k]
    pruned = scores < kth
    needed = k - pruned.sum(axis=-1)
    # Ties at the threshold: prune the first `needed` of each row. Working on the tie positions only
    # (np.nonzero lists them row by row, in order) avoids a full-size cumsum: 8 bytes per weight, 4.8 GB
    # for one OPT-175B fc1.
    rows, cols = np.nonzero(scores == kth)
    rank = np.arange(rows.size) - np.searchsorted(rows, rows)
    take = rank < needed[rows]
    pruned[rows[take], cols[take]] = True
    return ~pruned


def magnitude_mask(w, sparsity: float, *, per_row: bool = False) -> np.ndarray:
    """Keep the largest |w|. w: (M, K) any float dtype -> (M, K) bool.

    per_row=False prunes round(sparsity * M * K) entries over the whole layer; per_row=True prunes
    round(sparsity * K) entries in every output row (a uniform load per row).
    """
    sparsity = _check(sparsity)
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D (M, K) weight, got shape {w.shape}")
    scores = np.abs(w.astype(np.float32))
    scores = scores if per_row else scores.reshape(1, -1)
    return _keep_largest(scores, sparsity).reshape(w.shape)


def random_mask(shape: tuple[int, int], sparsity: float, *, seed: int = 0) -> np.ndarray:
    """A uniformly random mask with exactly round(sparsity * M * K) False entries, fixed by ``seed``."""
    sparsity = _check(sparsity)
    scores = np.random.default_rng(seed).random(int(np.prod(shape)), dtype=np.float32)
    return _keep_largest(scores.reshape(1, -1), sparsity).reshape(shape)


def mask(w, sparsity: float, method: str = "magnitude", *, seed: int = 0) -> np.ndarray:
    """The keep-mask of ``method``: "magnitude" (per layer), "magnitude_row" (per output row) or "random"."""
    if method == "magnitude":
        return magnitude_mask(w, sparsity)
    if method == "magnitude_row":
        return magnitude_mask(w, sparsity, per_row=True)
    if method == "random":
        return random_mask(np.shape(w), sparsity, seed=seed)
    raise ValueError(f"unknown pruning method {method!r}; known: {', '.join(METHODS)}")


def prune(w, sparsity: float, method: str = "magnitude", *, seed: int = 0) -> np.ndarray:
    """w with the entries outside ``mask(w, sparsity, method)`` set to zero. w: (M, K) -> (M, K) numpy,
    same dtype."""
    w = np.asarray(w)
    return np.where(mask(w, sparsity, method, seed=seed), w, np.zeros((), w.dtype))
