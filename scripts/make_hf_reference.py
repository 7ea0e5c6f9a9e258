"""Write the HuggingFace reference fixtures in tests/data/ (run rarely; CI only reads the results).

Needs torch and transformers, which the project itself does not depend on. Install them into a separate venv:

    python -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch==2.13.0 transformers safetensors numpy
    /tmp/hfvenv/bin/python scripts/make_hf_reference.py

For each tiny random OPT (one pre-LayerNorm, one opt-350m style: post-LayerNorm, project_in/project_out,
no final LayerNorm) it writes a HF checkpoint directory tests/data/<name>/ (config.json + model.safetensors)
and tests/data/<name>.npz with transformers' float32 logits and greedy generate output for fixed inputs,
including a left-padded batch with an attention mask.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from transformers import OPTConfig, OPTForCausalLM

PAD, EOS = 1, 2
MAX_NEW_TOKENS = 8

CONFIGS = {
    "opt_tiny_preln": dict(hidden_size=32, word_embed_proj_dim=32, do_layer_norm_before=True),
    "opt_tiny_postln": dict(hidden_size=32, word_embed_proj_dim=16, do_layer_norm_before=False),
}


def tiny_config(**overrides) -> OPTConfig:
    return OPTConfig(vocab_size=96, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                     max_position_embeddings=64, pad_token_id=PAD, bos_token_id=EOS, eos_token_id=EOS,
                     dropout=0.0, attention_dropout=0.0, **overrides)


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that logits are far from uniform, so greedy argmax has clear winners; LayerNorm
    scales/biases randomized too, so a loader that mixes them up fails."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.3 * noise)


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    plain = rng.integers(3, 96, size=(2, 7))
    padded = rng.integers(3, 96, size=(3, 7))
    pad_mask = np.ones((3, 7), np.int64)
    pad_mask[0, :3] = 0  # left padding of different lengths
    pad_mask[1, :1] = 0
    padded[pad_mask == 0] = PAD
    return dict(input_ids=plain, padded_ids=padded, padded_mask=pad_mask)


def greedy(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers' greedy generate; new tokens only, padded with PAD to MAX_NEW_TOKENS."""
    out = model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                         max_new_tokens=MAX_NEW_TOKENS, pad_token_id=PAD, eos_token_id=EOS)
    new = out[:, ids.shape[1]:].numpy()
    full = np.full((ids.shape[0], MAX_NEW_TOKENS), PAD, np.int64)
    full[:, :new.shape[1]] = new
    return full


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data"))
    args = ap.parse_args()
    torch.manual_seed(0)
    data = inputs()
    for seed, (name, overrides) in enumerate(CONFIGS.items()):
        model = OPTForCausalLM(tiny_config(**overrides)).eval()
        randomize(model, seed)
        directory = os.path.join(args.out, name)
        model.save_pretrained(directory, safe_serialization=True)
        with torch.no_grad():
            logits = model(torch.tensor(data["input_ids"])).logits.numpy()
            padded_logits = model(torch.tensor(data["padded_ids"]),
                                  attention_mask=torch.tensor(data["padded_mask"])).logits.numpy()
        np.savez_compressed(
            os.path.join(args.out, f"{name}.npz"), **data,
            logits=logits.astype(np.float32), padded_logits=padded_logits.astype(np.float32),
            greedy=greedy(model, data["input_ids"], np.ones_like(data["input_ids"])),
            padded_greedy=greedy(model, data["padded_ids"], data["padded_mask"]),
            max_new_tokens=np.int64(MAX_NEW_TOKENS))
        print(f"wrote {directory} and {name}.npz")


if __name__ == "__main__":
    main()
