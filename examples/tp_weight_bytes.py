"""Weight bytes per device of a tensor-parallel sparse OPT (jax_flashllm.sharding.shard_model).

    python examples/tp_weight_bytes.py                          # OPT-66B and OPT-175B, 80 %, 1/2/4/8 devices
    python examples/tp_weight_bytes.py --models opt-30b --sparsity 0.7 0.9 --devices 1 2 4 8 16
    python examples/tp_weight_bytes.py --vocab-parallel         # shard_model(..., vocab_parallel=True)

The layer shapes come from the model code itself (OPTForCausalLM.abstract: shapes only, no memory), split the
way shard_model splits them (jax_flashllm.sharding.OPT_PLAN). Tiled-CSL bytes per shard follow the format: 4
per stored entry + 4 per tile offset, each 128 x 64 tile keeping (1 - sparsity) of its elements rounded up to
a multiple of 8 (uniform density; shards then need no padding to a common entry count). Everything outside the
decoder layers' projections — token/position embeddings (the tied LM head), LayerNorms, row-parallel biases —
is replicated on every device in float16 (the token embedding is split with --vocab-parallel); column-parallel
biases are split.
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_flashllm import _constants as C
from jax_flashllm.models.opt import OPTConfig, OPTForCausalLM
from jax_flashllm.sharding import COLUMN, OPT_PLAN

GIB = 2**30
DENSE_BYTES = 2  # float16 / bfloat16


def _tile_extents(n: int, tile: int) -> np.ndarray:
    full, rest = divmod(n, tile)
    return np.array([tile] * full + ([rest] if rest else []), np.int64)


def tiled_csl_bytes(m: int, k: int, sparsity: float) -> int:
    """Bytes of a (m, k) Tiled-CSL matrix at uniform `sparsity`: 4 * padded entries + 4 * (tiles + 1)."""
    elements = np.outer(_tile_extents(m, C.TILE_M), _tile_extents(k, C.TILE_K))
    kept = np.ceil(elements * (1.0 - sparsity))
    entries = int((np.ceil(kept / C.NNZ_ALIGN) * C.NNZ_ALIGN).sum())
    return 4 * entries + 4 * (elements.size + 1)


_PLAN = {(parent, name) if parent else (name,): kind for parent, name, kind in OPT_PLAN}


def per_device_bytes(model: OPTForCausalLM, devices: int, sparsity: float | None,
                     vocab_parallel: bool = False) -> dict[str, int]:
    """{"split": projection weights + split biases, "replicated": the rest} on one of `devices` devices;
    sparsity None: dense 16-bit projections. model: an abstract OPTForCausalLM (shapes only).
    vocab_parallel: the token embedding (tied LM head) is split by rows too (shard_model's option)."""
    split = replicated = 0
    for path, var in nnx.to_flat_state(nnx.state(model)):
        # path: ("layers", i, "self_attn", "q_proj", "kernel"), ("embed_tokens", "embedding"), ...
        kind = _PLAN.get(tuple(path[2:-1])) if path[0] == "layers" else None
        if vocab_parallel and path[0] == "embed_tokens":
            split += int(np.prod(var.shape)) * DENSE_BYTES // devices
        elif kind is None:
            replicated += int(np.prod(var.shape)) * DENSE_BYTES
        elif path[-1] == "bias":
            bias = var.shape[0] * DENSE_BYTES
            split, replicated = (split + bias // devices, replicated) if kind == COLUMN else (split, replicated + bias)
        else:
            k, m = var.shape  # nnx.Linear kernels are (in, out)
            shard = (m // devices, k) if kind == COLUMN else (m, k // devices)
            split += shard[0] * shard[1] * DENSE_BYTES if sparsity is None else tiled_csl_bytes(*shard, sparsity)
    return {"split": split, "replicated": replicated}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["opt-66b", "opt-175b"])
    parser.add_argument("--sparsity", nargs="+", type=float, default=[0.8])
    parser.add_argument("--devices", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--vocab-parallel", action="store_true", help="split the token embedding / LM head too")
    args = parser.parse_args()
    print(f"{'model':<9} {'devices':>7} {'weights':>14} {'GiB/device':>11} {'split':>8} {'replicated':>10} "
          f"{'fits 80 GB':>10} {'fits 141 GB':>11}")
    for name in args.models:
        model = OPTForCausalLM.abstract(OPTConfig.from_name(name), jnp.float16)
        for sparsity in [None, *args.sparsity]:
            label = "dense fp16" if sparsity is None else f"{sparsity:.0%} Tiled-CSL"
            for devices in args.devices:
                b = per_device_bytes(model, devices, sparsity, args.vocab_parallel)
                total = b["split"] + b["replicated"]
                print(f"{name:<9} {devices:>7} {label:>14} {total / GIB:>11.1f} {b['split'] / GIB:>8.1f} "
                      f"{b['replicated'] / GIB:>10.2f} {'yes' if total <= 80e9 else 'no':>10} "
                      f"{'yes' if total <= 141e9 else 'no':>11}")


if __name__ == "__main__":
    main()
