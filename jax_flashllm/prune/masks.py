"""Mask selection shared by the calibrated methods, in JAX (jit-able, CPU or GPU): exact counts per row and
N:M groups. Ties are broken by position (the earlier entry is pruned first), as in the magnitude masks, so the
same scores always give the same mask.

Masks are boolean with True = kept.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["keep_largest", "nm_mask", "parse_nm", "check_sparsity"]


def check_sparsity(sparsity: float | None, nm: tuple[int, int] | None) -> float:
    """The sparsity a call prunes to: ``sparsity`` in [0, 1], or 1 - n/m when an N:M pattern is given
    (then ``sparsity`` may be None, or must agree)."""
    if nm is not None:
        n, m = parse_nm(nm)
        implied = 1.0 - n / m
        if sparsity is not None and abs(float(sparsity) - implied) > 1e-9:
            raise ValueError(f"sparsity {sparsity} contradicts the {n}:{m} pattern (which keeps {n} of {m}, "
                             f"sparsity {implied:g}); pass sparsity=None with nm")
        return implied
    if sparsity is None or not 0.0 <= float(sparsity) <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return float(sparsity)


def parse_nm(nm) -> tuple[int, int]:
    """(n, m) from a pair or a "n:m" string: keep n of every m consecutive inputs of a row, 0 < n <= m."""
    if isinstance(nm, str):
        try:
            n, m = (int(part) for part in nm.split(":"))
        except ValueError:
            raise ValueError(f"N:M pattern must look like '2:4', got {nm!r}") from None
    else:
        n, m = (int(part) for part in nm)
    if not 0 < n <= m:
        raise ValueError(f"N:M pattern needs 0 < n <= m, got {n}:{m}")
    return n, m


def keep_largest(scores: jax.Array, prune: int | jax.Array) -> jax.Array:
    """scores: (..., n) float -> (..., n) bool, False for the ``prune`` smallest scores of each row.

    ``prune`` may be traced (a per-block count under jit). Ties at the threshold are pruned in position order.
    One value sort and a cumsum: an argsort (twice, for ranks) cost 12x more on a 4096 x 128 SparseGPT block.
    """
    n = scores.shape[-1]
    ordered = jnp.sort(scores, axis=-1)
    index = jnp.broadcast_to(jnp.clip(jnp.asarray(prune) - 1, 0, n - 1), scores.shape[:-1] + (1,))
    threshold = jnp.take_along_axis(ordered, index, axis=-1)
    below = scores < threshold
    ties = scores == threshold
    needed = prune - jnp.sum(below, axis=-1, keepdims=True)
    return ~(below | (ties & (jnp.cumsum(ties, axis=-1) <= needed)))


def nm_mask(scores: jax.Array, nm) -> jax.Array:
    """scores: (M, K) float, K a multiple of m -> (M, K) bool keeping the n largest of every m consecutive
    scores of each row."""
    n, m = parse_nm(nm)
    rows, k = scores.shape
    if k % m:
        raise ValueError(f"{n}:{m} pruning needs in_features divisible by {m}, got {k}")
    groups = scores.reshape(rows, k // m, m)
    return keep_largest(groups, m - n).reshape(rows, k)
