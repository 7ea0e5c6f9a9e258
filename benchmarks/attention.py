"""Attention over the KV cache, fused CPU kernel against the jnp reference: `python -m benchmarks.attention`.

Per decode step (batch 1, one query row, bf16 cache as a sparsified model keeps it): every layer's
attention at the OPT sizes' shapes, over a cache of `slots` slots of which `fill` hold tokens
(1.0: the worst case, nothing to skip; 0.5: half-way through generating into it). Then whole decode steps of
the 80 %-sparse models (in a loop, as generate runs them). Both ways timed interleaved (medians), with
the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import os

import numpy as np

from benchmarks import common

SIZES = ("opt-125m", "opt-350m")
SLOTS = (64, 128, 256, 512, 1024, 2048)


@contextlib.contextmanager
def _attention_impl(reference: bool):
    """FLASHLLM_ATTENTION for the functions traced inside (jax_flashllm.attention reads it at trace time)."""
    from jax_flashllm.attention import ENV

    before = os.environ.get(ENV)
    os.environ[ENV] = "reference" if reference else "kernel"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV)
        else:
            os.environ[ENV] = before


def _compiled(fn, *args, reference: bool):
    import jax

    with _attention_impl(reference):
        # A fresh function object: jit caches traces per function, and the other way's would be reused.
        compiled = jax.jit(lambda *a: fn(*a)).lower(*args).compile()
    return lambda: compiled(*args)


def attention_step(size: str, slots: int, fill: float, iters: int) -> dict[str, float]:
    """Median seconds of one step's attention (all layers) per way: {"kernel": s, "reference": s}."""
    import jax.numpy as jnp

    from jax_flashllm.models.opt import KVCache, OPTConfig, attend, mask_bias

    cfg = OPTConfig.from_name(size)
    heads, hd = cfg.num_attention_heads, cfg.head_dim
    index = max(0, int(slots * fill) - 1)
    rng = np.random.default_rng(0)
    cache = KVCache.zeros(cfg, 1, slots, jnp.bfloat16)
    cache = KVCache(tuple(jnp.asarray(rng.standard_normal(k.shape), jnp.bfloat16) for k in cache.k),
                    tuple(jnp.asarray(rng.standard_normal(v.shape), jnp.bfloat16) for v in cache.v),
                    cache.valid.at[:, :index].set(True))

    def step(cache):
        # The cache update is left out: outside the decode loop's while_loop it would copy the whole cache.
        bias = mask_bias((jnp.arange(slots) <= index)[None, None] & cache.valid[:, None])
        q = jnp.full((1, 1, heads, hd), 0.1, jnp.bfloat16)
        return [attend(q, k, v, bias) for k, v in zip(cache.k, cache.v)]

    fns = {way: _compiled(step, cache, reference=way == "reference") for way in ("kernel", "reference")}
    times = common.interleaved_times(fns, iters=iters, budget_s=20)
    return {way: float(np.median(t)) for way, t in times.items()}


def decode_steps(size: str, slot_counts, iters: int, steps: int = 8) -> dict[int, dict[str, float]]:
    """Median seconds per decode step of the 80 %-sparse model per cache size: `steps` steps in one
    fori_loop (the cache updated in place, as in generate) into the last slots of a cache otherwise full."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from benchmarks.e2e import build_ours
    from jax_flashllm.models.opt import KVCache

    model, _ = build_ours(size, "0.8")
    graphdef, state = nnx.split(model)
    out = {}
    for slots in slot_counts:
        cache = KVCache.zeros(model.config, 1, slots, model.compute_dtype)
        cache = cache._replace(valid=cache.valid.at[:, :slots - steps].set(True))

        def run(state, cache, slots=slots):
            model = nnx.merge(graphdef, state)

            def body(i, carry):
                cache, token = carry
                h, cache = model.decode(token, cache, slots - steps + i)
                return cache, jnp.argmax(model.logits(h), -1).astype(jnp.int32)

            return jax.lax.fori_loop(0, steps, body, (cache, jnp.ones((1, 1), jnp.int32)))[1]

        fns = {way: _compiled(run, state, cache, reference=way == "reference") for way in ("kernel", "reference")}
        times = common.interleaved_times(fns, iters=iters, budget_s=40)
        out[slots] = {way: float(np.median(t)) / steps for way, t in times.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, slots 64 / 512 / 2048 only")
    args = ap.parse_args()
    iters = 7 if args.quick else 21
    slot_counts = (64, 512, 2048) if args.quick else SLOTS
    load = os.getloadavg()[0]
    rows = []
    for size in SIZES:
        for fill in (1.0, 0.5):
            for slots in slot_counts:
                t = attention_step(size, slots, fill, iters)
                rows.append([size, str(slots), f"{fill:.0%}", f"{t['reference'] * 1e3:.3f}", f"{t['kernel'] * 1e3:.3f}",
                             f"{t['reference'] / t['kernel']:.2f}x"])
                print(" | ".join(rows[-1]), flush=True)
    print(common.markdown_table(["size", "slots", "filled", "reference ms", "kernel ms", "speedup"], rows))
    rows = []
    decode = {"opt-125m": (128, 512, 2048), "opt-350m": (2048,)} if not args.quick else {"opt-125m": (2048,)}
    for size, slot_counts in decode.items():
        for slots, t in decode_steps(size, slot_counts, iters).items():
            rows.append([size, str(slots), f"{t['reference'] * 1e3:.2f}", f"{t['kernel'] * 1e3:.2f}",
                         f"{t['reference'] / t['kernel']:.2f}x"])
            print(" | ".join(rows[-1]), flush=True)
    print("Decode step of the 80 %-sparse model (in a loop, cache full):")
    print(common.markdown_table(["size", "slots", "reference ms", "kernel ms", "speedup"], rows))
    print(f"load average {load:.2f} -> {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
