"""Greedy generation with a sparse OPT split over several devices (jax_flashllm.sharding.shard_model).

    # a checkpoint across 8 GPUs: a HuggingFace OPT directory (pruned here) or a save_model() directory
    python examples/generate_sharded.py --checkpoint /models/opt-66b --sparsity 0.8 --devices 8 \\
        --save /models/opt-66b-sparse80 --prompt-ids 2 133 812 9 --max-new-tokens 32
    # no GPU: a random tiny OPT on 4 host CPU devices, checked against one device
    python examples/generate_sharded.py --tiny --cpu-devices 4 --devices 4

The model is loaded and pruned on the host CPU; only each device's shards move to the accelerators.
"""

from __future__ import annotations

import argparse
import os
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="HuggingFace OPT directory, or one written by save_model")
    src.add_argument("--tiny", action="store_true", help="random 2-layer OPT (for a CPU smoke run)")
    p.add_argument("--sparsity", type=float, default=0.8, help="prune dense checkpoints to this (default 0.8)")
    p.add_argument("--save", help="save the pruned model here (load it next time with --checkpoint)")
    p.add_argument("--devices", type=int, default=None, help="tensor-parallel degree (default: all devices)")
    p.add_argument("--vocab-parallel", action="store_true", help="split the token embedding / LM head too")
    p.add_argument("--cpu-devices", type=int, default=None, help="simulate this many host CPU devices")
    p.add_argument("--prompt-ids", type=int, nargs="+", default=[2, 13, 37, 61, 85])
    p.add_argument("--max-new-tokens", type=int, default=16)
    return p.parse_args()


def load(args):
    import jax
    from flax import nnx

    from jax_flashllm.models.checkpoint import CheckpointError, load_model, load_pretrained, save_model
    from jax_flashllm.models.opt import OPTConfig, OPTForCausalLM
    from jax_flashllm.nn import sparsify

    # Build on the host: a 66B/175B model does not fit one accelerator before it is split.
    with jax.default_device(jax.devices("cpu")[0]):
        if args.tiny:
            model = OPTForCausalLM(OPTConfig.tiny(hidden_size=128, ffn_dim=512), rngs=nnx.Rngs(0))
            sparsify(model, args.sparsity)
            return model
        try:
            return load_model(args.checkpoint)  # already pruned and encoded
        except (CheckpointError, FileNotFoundError):  # a HF directory (single or sharded safetensors)
            model = load_pretrained(args.checkpoint)
        print(sparsify(model, args.sparsity))
        if args.save:
            save_model(model, args.save)
        return model


def main():
    args = parse()
    if args.cpu_devices:  # must precede jax's first device query
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.cpu_devices}")
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType

    from jax_flashllm.generation import generate
    from jax_flashllm.sharding import shard_model

    devices = jax.devices()[: args.devices or len(jax.devices())]
    prompt = jnp.asarray([args.prompt_ids], jnp.int32)
    model = load(args)
    expected = None
    if args.tiny:
        expected = generate(model, prompt, max_new_tokens=args.max_new_tokens)
    mesh = jax.make_mesh((len(devices),), ("tp",), axis_types=(AxisType.Auto,), devices=devices)
    shard_model(model, mesh, "tp", vocab_parallel=args.vocab_parallel)
    start = time.perf_counter()
    tokens = generate(model, prompt, max_new_tokens=args.max_new_tokens)
    tokens.block_until_ready()
    print(f"{len(devices)} x {devices[0].device_kind}: {time.perf_counter() - start:.1f} s (compile included)")
    print("tokens:", np.asarray(tokens)[0].tolist())
    if expected is not None:
        same = np.array_equal(np.asarray(tokens), np.asarray(expected))
        print("same tokens as on one device:", same)
        raise SystemExit(0 if same else 1)


if __name__ == "__main__":
    main()
