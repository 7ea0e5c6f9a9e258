"""Sampling strategies: small frozen dataclasses (hashable, so they are static arguments of jitted code).

Each maps logits (B, V) float32 and a PRNG key to token ids (B,) int32.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["Greedy", "Sample", "make_sampler", "mask_vocab"]


@dataclasses.dataclass(frozen=True)
class Greedy:
    """argmax; ties go to the lowest id (as in transformers)."""

    def __call__(self, logits: jax.Array, key: jax.Array) -> jax.Array:
        del key
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Sample:
    """Draw from softmax(logits / temperature), restricted to the top_k ids (0: all) and then to the
    smallest set whose probability reaches top_p (1.0: all)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def __call__(self, logits: jax.Array, key: jax.Array) -> jax.Array:
        logits = logits.astype(jnp.float32) / self.temperature
        if 0 < self.top_k < logits.shape[-1]:
            kth = jax.lax.top_k(logits, self.top_k)[0][..., -1:]
            logits = jnp.where(logits < kth, -jnp.inf, logits)
        if self.top_p < 1.0:
            ordered = jnp.sort(logits, axis=-1)[..., ::-1]
            probs = jax.nn.softmax(ordered, axis=-1)
            # Keep an id while the mass of the ids strictly before it is below top_p (the first always stays).
            before = jnp.cumsum(probs, axis=-1) - probs
            kept = jnp.sum(before < self.top_p, axis=-1, keepdims=True)
            threshold = jnp.take_along_axis(ordered, kept - 1, axis=-1)
            logits = jnp.where(logits < threshold, -jnp.inf, logits)
        return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def make_sampler(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> Greedy | Sample:
    """Greedy when temperature == 0, else Sample(temperature, top_k, top_p)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return Greedy()
    return Sample(float(temperature), int(top_k), float(top_p))


def mask_vocab(logits: jax.Array, size: int) -> jax.Array:
    """Set logits of ids >= size (embedding rows that pad the vocabulary, not real tokens) to -inf."""
    if size >= logits.shape[-1]:
        return logits
    return jnp.where(jnp.arange(logits.shape[-1]) < size, logits, -jnp.inf)
