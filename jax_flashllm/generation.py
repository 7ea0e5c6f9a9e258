"""Compiled text generation for decoder models with an explicit KV cache (OPTForCausalLM).

- ``generate(model, input_ids, ...)``: prefill and the whole decode loop (``lax.while_loop``) in one jitted
  function; the KV cache is created inside it (so it is laid out like the model's sharding) and updated
  in place by the loop.
- ``stream(model, input_ids, ...)``: the step-wise form for streaming: one jitted prefill, then one jitted
  step per token, yielding each token as it is produced; each step donates the cache to the next. Same
  tokens as ``generate``.

Compile once, serve many: requests are checked and bucketed on the host (``jax_flashllm.prompts``), and the
sampling settings, max_new_tokens and the EOS id are traced values, so a program is compiled per bucket of
(batch, prompt length, max_new_tokens), not per request. Jitted functions take ``nnx.split(model)``
(graphdef static, state traced), never the model itself. Finished rows (after EOS) hold the model's pad id.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_flashllm._log import logger
from jax_flashllm.models.opt import KVCache
from jax_flashllm.prompts import Request, prepare
from jax_flashllm.sampling import Sampling, make_sampler, mask_vocab, sample

__all__ = ["Decoding", "generate", "stream", "prefill", "decode_step"]

_STATIC = ("graphdef", "vocab", "pad", "slots")  # of the jitted prefill


def _next_token(model, h, key, sampling, vocab):
    """h: (B, 1, D) last hidden state -> (B,) int32 token."""
    logits = mask_vocab(model.logits(h)[:, 0], vocab)
    return sample(logits, key, sampling)


def _is_eos(token, eos):
    return (token == eos) & (eos >= 0)


def _prefill(model, input_ids, valid, rows, key, sampling, eos, vocab, slots):
    # The cache is born inside the jitted prefill, so XLA places it where the model's sharding puts the
    # attention heads instead of first materializing it whole on one device.
    cache = KVCache.zeros(model.config, input_ids.shape[0], slots, model.dtype)
    h, cache = model.decode(input_ids, cache, 0, valid)
    token = _next_token(model, h[:, -1:], jax.random.fold_in(key, 0), sampling, vocab)
    # Filler rows of the batch bucket start out done, so they never keep the loop running.
    return token, _is_eos(token, eos) | (jnp.arange(token.shape[0]) >= rows), cache


def _step(model, i, token, done, cache, key, start, sampling, eos, vocab, pad):
    """Decode step i >= 1: feed token i-1 (at cache slot start + i - 1), return token i."""
    h, cache = model.decode(token[:, None], cache, start + i - 1)
    token = _next_token(model, h, jax.random.fold_in(key, i), sampling, vocab)
    token = jnp.where(done, pad, token)
    return token, done | _is_eos(token, eos), cache


@functools.partial(jax.jit, static_argnames=("graphdef", "vocab", "pad", "new_slots"))
def _generate(graphdef, state, input_ids, valid, rows, key, sampling, eos, max_new_tokens, *, new_slots,
              vocab, pad):
    """input_ids, valid: (B, T) bucket whose first `rows` rows are real; max_new_tokens () int32 <= new_slots
    -> (B, new_slots) int32."""
    model = nnx.merge(graphdef, state)
    batch, start = input_ids.shape
    token, done, cache = _prefill(model, input_ids, valid, rows, key, sampling, eos, vocab, start + new_slots)
    out = jnp.full((batch, new_slots), pad, jnp.int32).at[:, 0].set(token)

    def cond(carry):
        i, _, done, _, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, token, done, out, cache = carry
        token, done, cache = _step(model, i, token, done, cache, key, start, sampling, eos, vocab, pad)
        out = jax.lax.dynamic_update_slice(out, token[:, None], (0, i))
        return i + 1, token, done, out, cache

    # The cache never leaves this function: the loop updates it in place.
    return jax.lax.while_loop(cond, body, (jnp.int32(1), token, done, out, cache))[3]


@functools.partial(jax.jit, static_argnames=_STATIC)
def _prefill_jit(graphdef, state, input_ids, valid, rows, key, sampling, eos, *, vocab, pad, slots):
    del pad
    return _prefill(nnx.merge(graphdef, state), input_ids, valid, rows, key, sampling, eos, vocab, slots)


# The step API hands the cache from call to call: donating it lets XLA update it in place.
@functools.partial(jax.jit, static_argnames=("graphdef", "vocab", "pad"), donate_argnames=("cache",))
def _step_jit(graphdef, state, i, token, done, cache, key, start, sampling, eos, *, vocab, pad):
    return _step(nnx.merge(graphdef, state), i, token, done, cache, key, start, sampling, eos, vocab, pad)


def _prepare(model, input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, seed, eos_token_id
             ) -> tuple[Request, dict, dict]:
    """Host-side checks and bucketing shared by generate and stream: the request, the traced settings and
    the static ones."""
    cfg = model.config
    request = prepare(input_ids, attention_mask, max_new_tokens, vocab_size=cfg.vocab_size,
                      max_positions=cfg.max_position_embeddings, pad_token_id=cfg.pad_token_id)
    sampling = make_sampler(temperature, top_k, top_p)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}")
    if eos_token_id is not None and (isinstance(eos_token_id, bool)
                                     or not isinstance(eos_token_id, (int, np.integer))):
        raise TypeError(f"eos_token_id must be an integer or None, got {type(eos_token_id).__name__}")
    eos = -1 if eos_token_id is None or eos_token_id < 0 else int(eos_token_id)
    traced = dict(key=jax.random.key(seed), sampling=sampling, eos=np.int32(eos))
    static = dict(vocab=cfg.sampling_vocab_size or cfg.vocab_size, pad=int(cfg.pad_token_id))
    return request, traced, static


def generate(model, input_ids, attention_mask=None, *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, eos_token_id: int | None = 2,
             include_prompt: bool = False) -> jax.Array:
    """Generate up to max_new_tokens tokens after each prompt.

    model: OPTForCausalLM (dense or sparsified). input_ids: (B, T) int ids in [0, vocab_size);
    attention_mask: (B, T) 0/1, 0 on padding (None: no padding); left or right padding, one contiguous run of
    tokens per row (right padding is moved to the left). temperature 0 is greedy; otherwise sampling with
    top_k (0: off) and top_p (1.0: off), reproducible for a given seed. eos_token_id None or negative: never
    stop early. Everything is checked on the host before tracing (ValueError / TypeError naming the fix).

    Returns (B, max_new_tokens) int32, the continuations; positions after a row's EOS hold the model's pad id.
    include_prompt=True returns (B, T + max_new_tokens) int32 instead, the left-padded prompt followed by its
    continuation, like transformers' ``generate``.
    """
    request, traced, static = _prepare(model, input_ids, attention_mask, max_new_tokens, temperature, top_k,
                                       top_p, seed, eos_token_id)
    graphdef, state = nnx.split(model)
    programs, started = _generate._cache_size(), time.perf_counter()
    out = _generate(graphdef, state, request.input_ids, request.valid, np.int32(request.batch), traced["key"],
                    traced["sampling"], traced["eos"], np.int32(request.max_new_tokens),
                    new_slots=request.new_slots, **static)
    if _generate._cache_size() > programs:
        logger.info("compiled generate for a bucket of batch %d, prompt %d, new tokens %d in %.1f s",
                    *request.input_ids.shape, request.new_slots, time.perf_counter() - started)
    # Cut the bucket on the host: slicing on the device would compile one program per request shape.
    out = np.asarray(out)[:request.batch, :request.max_new_tokens]
    if include_prompt:
        out = np.concatenate([request.prompt, out], axis=1)
    return jax.device_put(out)  # not jnp.asarray: that compiles a copy program per shape


@dataclasses.dataclass(frozen=True)
class Decoding:
    """Where a step-wise generation stands: the last token (B,) int32 of the real rows, which of the bucket's
    rows are done, the KV cache, and what the jitted step needs. Made by ``prefill``, advanced by
    ``decode_step``."""

    token: jax.Array
    done: jax.Array
    cache: KVCache
    step: int  # tokens produced so far
    max_new_tokens: int
    graphdef: nnx.GraphDef
    state: nnx.State
    start: jax.Array  # prompt bucket length (cache slot of the first generated token)
    batch: int  # real rows; the bucket may hold more
    traced: dict
    static: dict
    last: jax.Array  # (B',) the bucket's last tokens, fed to the next step


def _real_rows(token: jax.Array, batch: int) -> jax.Array:
    # Sliced on the host when the bucket has filler rows: a device slice compiles a program per shape.
    return token if token.shape[0] == batch else jax.device_put(np.asarray(token)[:batch])


def prefill(model, input_ids, attention_mask=None, *, max_new_tokens: int, temperature: float = 0.0,
            top_k: int = 0, top_p: float = 1.0, seed: int = 0, eos_token_id: int | None = 2) -> Decoding:
    """First half of the step-wise API: run the prompt (one jitted call) and pick the first token.
    Arguments as for ``generate``; ``.token`` of the result is that first token, (B,) int32."""
    request, traced, static = _prepare(model, input_ids, attention_mask, max_new_tokens, temperature, top_k,
                                       top_p, seed, eos_token_id)
    graphdef, state = nnx.split(model)
    slots = request.input_ids.shape[1] + request.new_slots
    token, done, cache = _prefill_jit(graphdef, state, request.input_ids, request.valid,
                                      np.int32(request.batch), **traced, **static, slots=slots)
    return Decoding(_real_rows(token, request.batch), done, cache, 1, request.max_new_tokens, graphdef, state,
                    np.int32(request.input_ids.shape[1]), request.batch, traced, static, token)


def decode_step(decoding: Decoding) -> Decoding:
    """One jitted decode step. Consumes ``decoding`` (its cache is donated: do not reuse it) and returns
    the next one, whose ``.token`` is the new (B,) token. At most max_new_tokens - 1 steps after prefill."""
    d = decoding
    if d.step >= d.max_new_tokens:
        raise ValueError(f"already produced max_new_tokens={d.max_new_tokens} tokens")
    token, done, cache = _step_jit(d.graphdef, d.state, np.int32(d.step), d.last, d.done, d.cache,
                                   d.traced["key"], d.start, d.traced["sampling"], d.traced["eos"],
                                   **d.static)
    return dataclasses.replace(d, token=_real_rows(token, d.batch), done=done, cache=cache, step=d.step + 1, last=token)


def stream(model, input_ids, attention_mask=None, *, max_new_tokens: int, temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0, seed: int = 0, eos_token_id: int | None = 2
           ) -> Iterator[jax.Array]:
    """Yield each new token (B,) int32 as soon as it is computed; same tokens as ``generate`` with the same
    arguments. Stops after max_new_tokens tokens or when every row has produced EOS."""
    decoding = prefill(model, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                       temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, eos_token_id=eos_token_id)
    yield decoding.token
    while decoding.step < decoding.max_new_tokens and not np.all(np.asarray(decoding.done)):
        decoding = decode_step(decoding)
        yield decoding.token
