"""Sampling settings as traced values: one compiled program serves greedy decoding and every temperature,
top_k and top_p.

``Sampling`` is a pytree of three scalars, so changing a setting never recompiles; ``sample`` maps logits
(B, V) float32 and a PRNG key to token ids (B,) int32. ``make_sampler`` checks the settings on the host
(before anything is traced) and warns about settings that greedy decoding ignores.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Sampling", "make_sampler", "sample", "mask_vocab"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature () float32 (0: greedy), top_k () int32 (0: off), top_p () float32 (1.0: off)."""

    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def make_sampler(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> Sampling:
    """Check sampling settings on the host and pack them as traced scalars.

    temperature >= 0 (0: greedy); top_k an integer >= 0 (0: all ids); top_p in (0, 1] (1.0: all ids).
    Greedy decoding with top_k or top_p set warns: they would have no effect.
    """
    temperature, top_p = _real("temperature", temperature), _real("top_p", top_p)
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
        raise TypeError(f"top_k must be an integer, got {type(top_k).__name__} {top_k!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 turns it off), got {top_k}")
    if top_k > np.iinfo(np.int32).max:
        raise ValueError(f"top_k must fit in int32, got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1.0 turns it off), got {top_p}")
    if temperature == 0 and (top_k != 0 or top_p != 1.0):
        warnings.warn(f"temperature=0 is greedy decoding: top_k={top_k} and top_p={top_p} have no effect; "
                      "set temperature > 0 to sample", UserWarning, stacklevel=3)
    return Sampling(np.float32(temperature), np.int32(top_k), np.float32(top_p))


def _filtered(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Set to -inf every logit outside the top_k ids (0: none) and then outside the top_p nucleus.

    top_k is traced, so it cannot size lax.top_k: one descending sort gives both thresholds."""
    v = logits.shape[-1]
    ordered = -jnp.sort(-logits, axis=-1)  # (B, V) descending
    k = jnp.where((top_k > 0) & (top_k < v), top_k, v)
    kth = ordered[..., k - 1][..., None]
    ordered = jnp.where(ordered < kth, -jnp.inf, ordered)
    probs = jax.nn.softmax(ordered, axis=-1)
    # Keep an id while the mass of the ids strictly before it is below top_p (the first always stays).
    before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.sum(before < top_p, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(ordered, kept - 1, axis=-1)
    return jnp.where(logits < jnp.maximum(threshold, kth), -jnp.inf, logits)


def _draw(logits: jax.Array, key: jax.Array, s: Sampling) -> jax.Array:
    logits = logits / s.temperature
    logits = jax.lax.cond((s.top_k > 0) | (s.top_p < 1.0), _filtered, lambda l, k, p: l,
                          logits, s.top_k, s.top_p)
    # One key per row, folded from the row index: a row's draw does not depend on the batch size, so
    # padding a batch to its bucket changes no sample.
    keys = jax.vmap(lambda row: jax.random.fold_in(key, row))(jnp.arange(logits.shape[0]))
    return jax.vmap(lambda k, l: jax.random.categorical(k, l))(keys, logits).astype(jnp.int32)


def sample(logits: jax.Array, key: jax.Array, s: Sampling) -> jax.Array:
    """logits (B, V) float32, key a PRNG key, s Sampling -> token ids (B,) int32.

    Greedy (temperature 0): argmax, ties to the lowest id as in transformers. Otherwise a draw from
    softmax(logits / temperature) restricted to the top_k ids and then to the smallest set whose probability
    reaches top_p. The branch is chosen at run time (lax.cond), so greedy steps skip the sort.
    """
    logits = logits.astype(jnp.float32)
    return jax.lax.cond(s.temperature == 0,
                        lambda l, k, s: jnp.argmax(l, axis=-1).astype(jnp.int32), _draw, logits, key, s)


def mask_vocab(logits: jax.Array, size: int) -> jax.Array:
    """Set logits of ids >= size (embedding rows that pad the vocabulary, not real tokens) to -inf."""
    if size >= logits.shape[-1]:
        return logits
    return jnp.where(jnp.arange(logits.shape[-1]) < size, logits, -jnp.inf)
