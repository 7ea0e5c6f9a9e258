"""The dense peer of the end-to-end benchmark: HuggingFace transformers' OPTForCausalLM on PyTorch (the CPU;
torch's CUDA build on a GPU machine).

Runs in its own process (benchmarks.e2e starts it), so PyTorch's OpenMP workers never compete with XLA's
threads. Random weights of the published shape, the same prompt and number of new tokens as our side,
greedy, EOS disabled. Needs the pinned extra `peer` (torch, transformers); `make test` never installs it.
"""

from __future__ import annotations

import time

import numpy as np

_TORCH_DTYPES = ("float32", "bfloat16")


def _hf_config(size: str):
    """transformers' OPTConfig with the shapes of our OPTConfig.from_name(size)."""
    from transformers import OPTConfig as HFConfig

    from jax_flashllm.models import OPTConfig

    cfg = OPTConfig.from_name(size)
    return HFConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                    num_hidden_layers=cfg.num_hidden_layers, ffn_dim=cfg.ffn_dim,
                    num_attention_heads=cfg.num_attention_heads,
                    max_position_embeddings=cfg.max_position_embeddings,
                    word_embed_proj_dim=cfg.word_embed_proj_dim, do_layer_norm_before=cfg.do_layer_norm_before,
                    activation_function=cfg.activation_function, pad_token_id=cfg.pad_token_id,
                    bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id)


def _cache_bytes(cache) -> int:
    """Bytes of the keys and values a transformers Cache holds (every layer)."""
    import torch

    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def run(size: str, dtype: str, prompt: np.ndarray, new_tokens: int, repeats: int = 3, device: str = "cpu") -> dict:
    """Decode tokens/s and memory of HF OPT in `dtype` ("float32" | "bfloat16") on `device` ("cpu" | "cuda").

    prompt: (B, T) int token ids. Decode time = generate(new_tokens) - generate(1), medians over `repeats`,
    so prefill and the first token are not counted (as on our side).
    """
    import torch
    import transformers
    from transformers import OPTForCausalLM as HFOPT

    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"dtype must be one of {_TORCH_DTYPES}, got {dtype!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--hf-device cuda: this torch build sees no CUDA device")
    torch.manual_seed(0)
    model = HFOPT(_hf_config(size)).eval().to(device=device, dtype=getattr(torch, dtype))
    # EOS off: every run produces exactly the tokens asked for, as on our side.
    model.generation_config.eos_token_id = None
    ids = torch.as_tensor(np.asarray(prompt), dtype=torch.long, device=device)
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=1, eos_token_id=None)

    def generate(n):
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, return_dict_in_generate=True, **kw)
        if device == "cuda":  # generate returns once the last kernel is queued
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t
        if out.sequences.shape[1] != ids.shape[1] + n:
            raise RuntimeError(f"HF generated {out.sequences.shape[1] - ids.shape[1]} tokens, not {n}")
        return out, elapsed

    t = time.perf_counter()
    with torch.inference_mode():
        generate(new_tokens)  # warm-up: first-call costs (oneDNN primitives, allocator)
        warmup_s = time.perf_counter() - t
        first, full = [], []
        for _ in range(repeats):
            first.append(generate(1)[1])
            out, elapsed = generate(new_tokens)
            full.append(elapsed)
    decode_s = float(np.median(full)) - float(np.median(first))
    # parameters() lists the tied head/embedding once.
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    batch = ids.shape[0]
    return {
        "impl": f"hf {dtype}" + (" cuda" if device == "cuda" else ""), "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(), "warmup_s": round(warmup_s, 2),
        "prefill_ms": round(1e3 * float(np.median(first)), 2),
        "decode_tokens_per_s": round(batch * (new_tokens - 1) / decode_s, 2),
        "weight_mib": round((params + buffers) / 2**20, 1),
        "kv_cache_mib": round(_cache_bytes(out.past_key_values) / 2**20, 2),
    }
