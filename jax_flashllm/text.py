"""Text in, text out: ``generate_text(model, tokenizer, prompts)`` tokenizes with a HuggingFace
``tokenizers.Tokenizer``, left-pads the ragged batch, generates and decodes the continuations."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["generate_text", "load_tokenizer"]


def load_tokenizer(tokenizer):
    """A ``tokenizers.Tokenizer`` as is, or one read from a tokenizer.json path (or a directory holding one,
    such as a HuggingFace checkpoint directory)."""
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise ImportError("text generation needs the `tokenizers` package: pip install tokenizers") from e
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if not isinstance(tokenizer, (str, os.PathLike)):
        raise TypeError(f"tokenizer must be a tokenizers.Tokenizer or a path to tokenizer.json, got "
                        f"{type(tokenizer).__name__} (for a transformers tokenizer pass its .backend_tokenizer)")
    path = os.fspath(tokenizer)
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer file not found: {path} (a HuggingFace checkpoint directory "
                                "holds one as tokenizer.json)")
    try:
        return Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
        raise ValueError(f"{path} is not a valid tokenizer.json: {e}") from e


def _encode(tokenizer, prompts: list[str], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded (B, T) int32 ids and 0/1 mask of the prompts, with the tokenizer's special tokens (OPT's
    BOS). Padding configured on the tokenizer itself is dropped: generation pads on the left."""
    rows = []
    for i, encoding in enumerate(tokenizer.encode_batch(prompts)):
        ids = [t for t, m in zip(encoding.ids, encoding.attention_mask) if m]
        if not ids:
            raise ValueError(f"prompt {i} ({prompts[i]!r}) encodes to no tokens; give it some text or use a "
                             "tokenizer that adds a BOS token")
        rows.append(ids)
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


def generate_text(model, tokenizer, prompts: str | list[str], *, max_new_tokens: int = 32,
                  skip_special_tokens: bool = True, **sampling) -> list[str]:
    """Continue each prompt: text in, text out.

    model: OPTForCausalLM (dense or sparsified). tokenizer: a ``tokenizers.Tokenizer`` or a tokenizer.json
    path (or its directory). prompts: one str or a list of str (a ragged batch, left-padded). sampling:
    temperature, top_k, top_p, seed, eos_token_id (default the model's), as for ``jax_flashllm.generate``.
    Returns one continuation per prompt, list[str], cut at the first EOS.
    """
    from jax_flashllm.generation import generate

    tokenizer = load_tokenizer(tokenizer)
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; pass a str or a list of at least one str")
    wrong = [type(p).__name__ for p in prompts if not isinstance(p, str)]
    if wrong:
        raise TypeError(f"prompts must be str, got {wrong[0]} ({len(wrong)} non-str prompt(s)); token ids go "
                        "to jax_flashllm.generate")
    cfg = model.config
    sampling.setdefault("eos_token_id", cfg.eos_token_id)
    ids, mask = _encode(tokenizer, prompts, cfg.pad_token_id)
    out = np.asarray(generate(model, ids, mask, max_new_tokens=max_new_tokens, **sampling))
    eos = sampling["eos_token_id"]
    texts = []
    for row in out.tolist():
        if eos is not None and eos >= 0 and eos in row:
            row = row[:row.index(eos)]
        texts.append(tokenizer.decode(row, skip_special_tokens=skip_special_tokens))
    return texts
