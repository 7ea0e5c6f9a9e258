"""Compiled text generation for decoder models with an explicit KV cache (OPTForCausalLM).

- ``generate(model, input_ids, ...)``: prefill and the whole decode loop (``lax.while_loop``) in one jitted
  function; the KV cache is created inside it (so it is laid out like the model's sharding) and updated
  in place by the loop.
- ``stream(model, input_ids, ...)``: the step-wise form for streaming: one jitted prefill, then one jitted
  step per token, yielding each token as it is produced; each step donates the cache to the next. Same
  tokens as ``generate``.

Jitted functions take ``nnx.split(model)`` (graphdef static, state traced), never the model itself. Prompts
are left-padded: ``attention_mask`` (B, T) is 0 on the padding at the start of a row. Finished rows (after
EOS) are filled with the model's pad id.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from jax_flashllm.models.opt import KVCache
from jax_flashllm.sampling import make_sampler, mask_vocab

__all__ = ["Decoding", "generate", "stream", "prefill", "decode_step"]

_STATIC = ("graphdef", "sampler", "vocab", "eos", "pad", "slots")


def _next_token(model, h, key, sampler, vocab):
    """h: (B, 1, D) last hidden state -> (B,) int32 token."""
    logits = model.logits(h)[:, 0]
    with jax.named_scope("sample"):
        return sampler(mask_vocab(logits, vocab), key)


def _is_eos(token, eos):
    return token == eos if eos >= 0 else jnp.zeros(token.shape, bool)


def _prefill(model, input_ids, valid, key, sampler, vocab, eos, slots):
    # The cache is born inside the jitted prefill, so XLA places it where the model's sharding puts the
    # attention heads instead of first materializing it whole on one device.
    cache = KVCache.zeros(model.config, input_ids.shape[0], slots, model.compute_dtype)
    h, cache = model.decode(input_ids, cache, 0, valid)
    token = _next_token(model, h[:, -1:], jax.random.fold_in(key, 0), sampler, vocab)
    return token, _is_eos(token, eos), cache


def _step(model, i, token, done, cache, key, start, sampler, vocab, eos, pad):
    """Decode step i >= 1: feed token i-1 (at cache slot start + i - 1), return token i."""
    h, cache = model.decode(token[:, None], cache, start + i - 1)
    token = _next_token(model, h, jax.random.fold_in(key, i), sampler, vocab)
    token = jnp.where(done, pad, token)
    return token, done | _is_eos(token, eos), cache


@functools.partial(jax.jit, static_argnames=_STATIC + ("max_new_tokens",))
def _generate(graphdef, state, input_ids, valid, key, *, max_new_tokens, sampler, vocab, eos, pad, slots):
    model = nnx.merge(graphdef, state)
    batch, start = input_ids.shape
    token, done, cache = _prefill(model, input_ids, valid, key, sampler, vocab, eos, slots)
    out = jnp.full((batch, max_new_tokens), pad, jnp.int32).at[:, 0].set(token)

    def cond(carry):
        i, _, done, _, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, token, done, out, cache = carry
        token, done, cache = _step(model, i, token, done, cache, key, start, sampler, vocab, eos, pad)
        out = jax.lax.dynamic_update_slice(out, token[:, None], (0, i))
        return i + 1, token, done, out, cache

    # The cache never leaves this function: the loop updates it in place.
    return jax.lax.while_loop(cond, body, (jnp.int32(1), token, done, out, cache))[3]


@functools.partial(jax.jit, static_argnames=_STATIC)
def _prefill_jit(graphdef, state, input_ids, valid, key, *, sampler, vocab, eos, pad, slots):
    del pad
    return _prefill(nnx.merge(graphdef, state), input_ids, valid, key, sampler, vocab, eos, slots)


# The step API hands the cache from call to call: donating it lets XLA update it in place.
@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnames=("cache",))
def _step_jit(graphdef, state, i, token, done, cache, key, start, *, sampler, vocab, eos, pad, slots):
    del slots
    return _step(nnx.merge(graphdef, state), i, token, done, cache, key, start, sampler, vocab, eos, pad)


def _prepare(model, input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, seed, eos_token_id):
    """Checks and the static settings shared by generate and stream."""
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if input_ids.ndim != 2 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must have shape (B, T) with T >= 1, got {input_ids.shape}")
    if attention_mask is None:
        valid = jnp.ones(input_ids.shape, bool)
    else:
        valid = jnp.asarray(attention_mask).astype(bool)
        if valid.shape != input_ids.shape:
            raise ValueError(f"attention_mask {valid.shape} must match input_ids {input_ids.shape}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    cfg = model.config
    slots = input_ids.shape[1] + max_new_tokens
    if slots > cfg.max_position_embeddings:
        raise ValueError(f"prompt length {input_ids.shape[1]} + max_new_tokens {max_new_tokens} exceeds the "
                         f"model's {cfg.max_position_embeddings} positions")
    static = dict(sampler=make_sampler(temperature, top_k, top_p),
                  vocab=cfg.sampling_vocab_size or cfg.vocab_size,
                  eos=-1 if eos_token_id is None else int(eos_token_id), pad=int(cfg.pad_token_id), slots=slots)
    return input_ids, valid, jax.random.key(seed), static


def generate(model, input_ids, attention_mask=None, *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, eos_token_id: int | None = 2) -> jax.Array:
    """Generate up to max_new_tokens tokens after each (left-padded) prompt.

    model: OPTForCausalLM (dense or sparsified). input_ids: (B, T) int; attention_mask: (B, T) 0/1, 0 on the
    left padding (None: no padding). temperature 0 is greedy; otherwise sampling with top_k (0: off) and
    top_p (1.0: off), reproducible for a given seed. eos_token_id None or negative: never stop early.
    Returns (B, max_new_tokens) int32; positions after a row's EOS hold the model's pad id.
    """
    input_ids, valid, key, static = _prepare(model, input_ids, attention_mask, max_new_tokens,
                                             temperature, top_k, top_p, seed, eos_token_id)
    graphdef, state = nnx.split(model)
    return _generate(graphdef, state, input_ids, valid, key, max_new_tokens=max_new_tokens, **static)


@dataclasses.dataclass(frozen=True)
class Decoding:
    """Where a step-wise generation stands: the last token (B,) int32, which rows are done (B,) bool, the
    KV cache, and what the jitted step needs. Made by ``prefill``, advanced by ``decode_step``."""

    token: jax.Array
    done: jax.Array
    cache: KVCache
    step: int  # tokens produced so far
    max_new_tokens: int
    graphdef: nnx.GraphDef
    state: nnx.State
    key: jax.Array
    start: jax.Array  # prompt length (cache slot of the first generated token)
    static: dict


def prefill(model, input_ids, attention_mask=None, *, max_new_tokens: int, temperature: float = 0.0,
            top_k: int = 0, top_p: float = 1.0, seed: int = 0, eos_token_id: int | None = 2) -> Decoding:
    """First half of the step-wise API: run the prompt (one jitted call) and pick the first token.
    Arguments as for ``generate``; ``.token`` of the result is that first token."""
    input_ids, valid, key, static = _prepare(model, input_ids, attention_mask, max_new_tokens,
                                             temperature, top_k, top_p, seed, eos_token_id)
    graphdef, state = nnx.split(model)
    token, done, cache = _prefill_jit(graphdef, state, input_ids, valid, key, **static)
    return Decoding(token, done, cache, 1, max_new_tokens, graphdef, state, key,
                    jnp.int32(input_ids.shape[1]), static)


def decode_step(decoding: Decoding) -> Decoding:
    """One jitted decode step. Consumes ``decoding`` (its cache is donated: do not reuse it) and returns
    the next one, whose ``.token`` is the new (B,) token. At most max_new_tokens - 1 steps after prefill."""
    d = decoding
    if d.step >= d.max_new_tokens:
        raise ValueError(f"already produced max_new_tokens={d.max_new_tokens} tokens")
    token, done, cache = _step_jit(d.graphdef, d.state, jnp.int32(d.step), d.token, d.done, d.cache, d.key,
                                   d.start, **d.static)
    return dataclasses.replace(d, token=token, done=done, cache=cache, step=d.step + 1)


def stream(model, input_ids, attention_mask=None, *, max_new_tokens: int, temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0, seed: int = 0, eos_token_id: int | None = 2
           ) -> Iterator[jax.Array]:
    """Yield each new token (B,) int32 as soon as it is computed; same tokens as ``generate`` with the same
    arguments. Stops after max_new_tokens tokens or when every row has produced EOS."""
    decoding = prefill(model, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                       temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, eos_token_id=eos_token_id)
    yield decoding.token
    while decoding.step < max_new_tokens and not bool(jnp.all(decoding.done)):
        decoding = decode_step(decoding)
        yield decoding.token
