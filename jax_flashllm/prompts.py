"""Host-side checks and bucketing of a generation request, done in numpy before anything is traced.

Every bad input stops here with an error that names it and the fix, instead of tracing into NaN logits or a
silent wrap-around. Accepted prompts are brought to one canonical form: left-padded, contiguous masks, the
all-padding columns trimmed, then padded up to a bucket so that a compiled program serves many requests:
- batch: the next power of two (extra rows are one pad token each, dropped from the result);
- prompt length: the next power of two >= 32;
- max_new_tokens: the next power of two >= 64 (the loop still stops after max_new_tokens steps);
the prompt and new-token buckets are clamped so that their sum stays within max_position_embeddings.
Positions come from the mask (OPT's offset of 2 applied by the model), so the bucket's padding changes no
token.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

__all__ = ["Request", "bucket", "prepare"]

# Large minimum buckets: short requests, the common case, then share one program. Their cost is small: a
# prefill of 32 tokens costs about what one of 8 does (decode-sized work is bound by reading the weights),
# and extra cache slots add attention reads far smaller than the weights.
MIN_PROMPT_BUCKET = 32
MIN_NEW_BUCKET = 64


def bucket(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum)."""
    return 1 << (max(n, minimum) - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class Request:
    """A checked request. input_ids / valid: (B', T') int32 / bool, the bucket (left-padded); batch: the
    number of real rows B <= B'; prompt: (B, T) int32, the prompts as left-padded before trimming and
    bucketing; max_new_tokens <= new_slots, the new-token bucket."""

    input_ids: np.ndarray
    valid: np.ndarray
    batch: int
    prompt: np.ndarray
    max_new_tokens: int
    new_slots: int


def _ids(input_ids, vocab_size: int) -> np.ndarray:
    ids = np.asarray(input_ids)
    if ids.dtype == object or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
        raise TypeError(f"input_ids must be integer token ids, got dtype {ids.dtype}; tokenize text first "
                        "(or use jax_flashllm.generate_text)")
    if ids.ndim != 2:
        hint = " (for one prompt pass ids[None])" if ids.ndim == 1 else ""
        raise ValueError(f"input_ids must have shape (batch, length), got {ids.shape}{hint}")
    if ids.shape[0] < 1:
        raise ValueError(f"input_ids holds a batch of 0 prompts {ids.shape}; pass at least one prompt")
    if ids.shape[1] < 1:
        raise ValueError(f"input_ids has prompts of length 0 {ids.shape}; every prompt needs >= 1 token "
                         "(e.g. the BOS token)")
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"input_ids holds {int(bad.sum())} id(s) outside [0, {vocab_size}), the model's "
                         f"vocabulary (first: {int(ids[row, col])} at row {row}, position {col}); "
                         "was it tokenized for another model?")
    return ids.astype(np.int32)


def _mask(attention_mask, shape: tuple[int, int]) -> np.ndarray:
    if attention_mask is None:
        return np.ones(shape, bool)
    mask = np.asarray(attention_mask)
    if mask.shape != shape:
        raise ValueError(f"attention_mask has shape {mask.shape}, input_ids {shape}; they must match")
    if mask.dtype == object or not np.isin(mask, (0, 1)).all():
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
    mask = mask.astype(bool)
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"attention_mask row {empty[0]} has no token ({empty.size} empty row(s)); every "
                         "prompt needs >= 1 token")
    return mask


def _left_padded(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right padding moved to the left (HF tokenizers pad on the right by default); holes rejected."""
    t = mask.shape[1]
    first = mask.argmax(axis=1)
    last = t - 1 - mask[:, ::-1].argmax(axis=1)
    holes = np.flatnonzero(mask.sum(axis=1) != last - first + 1)
    if holes.size:
        raise ValueError(f"attention_mask row {holes[0]} has padding between tokens ({holes.size} such "
                         "row(s)); a prompt must be one contiguous run of tokens, padded on the left or right")
    shift = t - 1 - last  # 0 for rows already left-padded
    if not shift.any():
        return ids, mask
    cols = (np.arange(t)[None, :] - shift[:, None]) % t
    return np.take_along_axis(ids, cols, axis=1), np.take_along_axis(mask, cols, axis=1)


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def prepare(input_ids, attention_mask, max_new_tokens, *, vocab_size: int, max_positions: int,
            pad_token_id: int) -> Request:
    """Check a request and bucket it (see the module docstring).

    input_ids: (B, T) integer ids in [0, vocab_size); attention_mask: (B, T) 0/1 or None, each row one
    contiguous run of tokens (left or right padded); max_new_tokens: an int >= 1 with
    longest prompt + max_new_tokens <= max_positions.
    """
    ids = _ids(input_ids, vocab_size)
    mask = _mask(attention_mask, ids.shape)
    max_new_tokens = _count("max_new_tokens", max_new_tokens)
    ids, mask = _left_padded(ids, mask)
    prompt = ids
    longest = int(mask.sum(axis=1).max())
    if longest + max_new_tokens > max_positions:
        raise ValueError(f"a prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds the model's "
                         f"max_position_embeddings {max_positions}; shorten the prompt or ask for at most "
                         f"{max(max_positions - longest, 0)} new tokens")
    ids, mask = ids[:, -longest:], mask[:, -longest:]

    batch = ids.shape[0]
    t_slots = bucket(longest, MIN_PROMPT_BUCKET)
    new_slots = bucket(max_new_tokens, MIN_NEW_BUCKET)
    if t_slots + new_slots > max_positions:
        new_slots = max(max_new_tokens, max_positions - t_slots)
        t_slots = max(longest, max_positions - new_slots)
    rows = bucket(batch)
    out_ids = np.full((rows, t_slots), pad_token_id, np.int32)
    out_mask = np.zeros((rows, t_slots), bool)
    out_ids[:batch, t_slots - longest:] = ids
    out_mask[:batch, t_slots - longest:] = mask
    out_mask[batch:, -1] = True  # filler rows: one pad token, so no row attends to nothing
    return Request(out_ids, out_mask, batch, prompt, max_new_tokens, new_slots)
