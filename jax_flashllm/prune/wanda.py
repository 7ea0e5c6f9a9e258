"""Wanda (Sun et al., "A Simple and Effective Pruning Approach for Large Language Models", ICLR 2024):
score each weight by |W_ij| * ||X[:, j]||_2 and prune the lowest scores of every output row. No weight
update: one pass over the calibration inputs gives the column norms.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jax_flashllm.prune.masks import check_sparsity, keep_largest, nm_mask, parse_nm

__all__ = ["wanda", "wanda_mask", "input_norms"]


@jax.jit
def input_norms(x: jax.Array) -> jax.Array:
    """x: (T, K) calibration inputs, any float dtype -> (K,) float32 column norms ||X[:, j]||_2.

    Squares are summed in float32: float16 inputs with outlier features overflow otherwise."""
    x = x.astype(jnp.float32)
    return jnp.sqrt(jnp.sum(x * x, axis=0))


# prune is traced: OWL gives every decoder layer its own count, and one program per shape serves them all.
@functools.partial(jax.jit, static_argnames="nm")
def _mask(w, norms, prune, *, nm):
    scores = jnp.abs(w.astype(jnp.float32)) * norms[None, :]
    return nm_mask(scores, nm) if nm is not None else keep_largest(scores, prune)


def wanda_mask(w: jax.Array, x: jax.Array | None, sparsity: float | None, *, nm=None,
               norms: jax.Array | None = None) -> jax.Array:
    """The Wanda keep-mask. w: (M, K) float; x: (T, K) calibration inputs of this layer (or ``norms``: (K,)
    their column norms, for inputs streamed in pieces) -> (M, K) bool, True = kept.

    Unstructured: round(sparsity * K) weights pruned in every row (the comparison group of the paper).
    nm=(n, m) or "n:m": keep the n highest scores of every m consecutive inputs of a row; sparsity may then be
    None. Ties are pruned in position order.
    """
    sparsity = check_sparsity(sparsity, nm)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D (M, K) weight, got shape {w.shape}")
    if norms is None:
        if x is None:
            raise ValueError("wanda needs the calibration inputs x or their column norms")
        if x.ndim != 2 or x.shape[1] != w.shape[1]:
            raise ValueError(f"x must be (T, {w.shape[1]}) for a weight of shape {w.shape}, got {x.shape}")
        norms = input_norms(x)
    elif norms.shape != (w.shape[1],):
        raise ValueError(f"norms must be ({w.shape[1]},), got {norms.shape}")
    nm = None if nm is None else parse_nm(nm)
    return _mask(jnp.asarray(w), jnp.asarray(norms, jnp.float32), jnp.int32(round(sparsity * w.shape[1])), nm=nm)


def wanda(w: jax.Array, x: jax.Array | None, sparsity: float | None, *, nm=None,
          norms: jax.Array | None = None) -> jax.Array:
    """Wanda-pruned w: (M, K), same dtype, the weights outside ``wanda_mask`` set to zero (the others
    unchanged). Arguments as in ``wanda_mask``."""
    w = jnp.asarray(w)
    return jnp.where(wanda_mask(w, x, sparsity, nm=nm, norms=norms), w, jnp.zeros((), w.dtype))
