"""Perplexity of a causal LM (OPTForCausalLM, dense or sparsified) on a token stream or a batch of rows.

ppl = exp(sum of the next-token negative log-likelihoods / the number of predicted tokens). By default the
text is cut into non-overlapping windows of the model's maximum positions, the protocol of the published
SparseGPT and Wanda tables (every window's first token has no context and is not predicted; unlike those
scripts, a shorter last window is kept rather than dropped). ``stride`` < ``window`` gives HuggingFace's
sliding-window variant: windows start every ``stride`` tokens and each predicts only the tokens the previous
window did not, with up to ``window - stride`` tokens of context.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_flashllm._log import progress

__all__ = ["perplexity", "window_targets"]


def window_targets(length: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows over a row of ``length`` tokens: (begin, end, first predicted position). Every position
    1 .. length-1 is predicted exactly once."""
    if window < 2 or not 1 <= stride <= window:
        raise ValueError(f"need window >= 2 and 1 <= stride <= window, got window={window}, stride={stride}")
    out, done = [], 0
    for begin in range(0, max(length - 1, 1), stride):
        end = min(begin + window, length)
        out.append((begin, end, max(done, begin + 1)))
        done = end
        if end == length:
            break
    return out


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _window_nll(graphdef, state, ids, valid, counted):
    """ids, valid: (B, W); counted: (B, W) bool, True at targets to score -> (sum NLL, count) float32."""
    model = nnx.merge(graphdef, state)
    logits = model(ids, valid.astype(jnp.int32))[:, :-1]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    weight = counted[:, 1:].astype(jnp.float32)
    return jnp.sum(nll * weight), jnp.sum(weight)


def perplexity(model, ids, *, attention_mask=None, window: int | None = None, stride: int | None = None,
               batch_size: int = 8, show_progress: bool | None = None) -> float:
    """Perplexity of ``model`` on ``ids``.

    ids: (N,) int, one token stream, or (B, T) int, independent rows; attention_mask: (B, T) 0/1, same shape
    as ids (padding anywhere in a row: a token is predicted when it is real and some real token precedes it
    in its window). window: tokens per forward pass (default the model's max_position_embeddings); stride:
    distance between window starts (default ``window``: non-overlapping). Windows are run ``batch_size`` at
    a time through one compiled forward. Returns a Python float; NLLs are summed in float64 on the host.
    """
    ids = np.asarray(ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] < 2:
        raise ValueError(f"ids must be (N,) or (B, T) with at least 2 tokens per row, got shape {ids.shape}")
    mask = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} differs from ids shape {ids.shape}")
    window = int(window or model.config.max_position_embeddings)
    if window > model.config.max_position_embeddings:
        raise ValueError(f"window {window} exceeds the model's max_position_embeddings "
                         f"{model.config.max_position_embeddings}")
    stride = int(stride or window)
    window_targets(ids.shape[1], window, stride)  # argument checks
    # Rows shorter than a window: one window of the row's length, so no compute is spent on padding.
    width = min(window, ids.shape[1])
    stride = min(stride, width)

    rows_ids, rows_valid, rows_counted = [], [], []
    for row in range(ids.shape[0]):
        for begin, end, first in window_targets(ids.shape[1], width, stride):
            piece = np.zeros(width, np.int32)
            valid = np.zeros(width, bool)
            piece[:end - begin] = ids[row, begin:end]
            valid[:end - begin] = mask[row, begin:end]
            has_context = (np.cumsum(valid) - valid) > 0
            counted = valid & has_context & (np.arange(begin, begin + width) >= first)
            rows_ids.append(piece)
            rows_valid.append(valid)
            rows_counted.append(counted)
    total = len(rows_ids)
    batch_size = max(1, min(batch_size, total))
    # Pad the list of windows to whole batches with windows that score nothing: one compiled shape.
    for _ in range(-total % batch_size):
        rows_ids.append(np.zeros(width, np.int32))
        rows_valid.append(np.ones(width, bool))
        rows_counted.append(np.zeros(width, bool))
    graphdef, state = nnx.split(model)
    nll, count = 0.0, 0.0
    starts = range(0, len(rows_ids), batch_size)
    for s in progress(starts, desc="perplexity", total=len(starts), unit="batch", show=show_progress):
        batch = slice(s, s + batch_size)
        part_nll, part_count = _window_nll(graphdef, state, jnp.asarray(np.stack(rows_ids[batch])),
                                           jnp.asarray(np.stack(rows_valid[batch])),
                                           jnp.asarray(np.stack(rows_counted[batch])))
        nll += float(part_nll)
        count += float(part_count)
    if count == 0:
        raise ValueError("no token to predict: every row has fewer than 2 real tokens")
    return math.exp(nll / count)
