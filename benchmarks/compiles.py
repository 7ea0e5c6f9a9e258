"""How many programs `generate` compiles over 20 varied requests (batch size, prompt length, max_new_tokens,
temperature, top_k, top_p, seed), with an 80 %-sparse OPT of random weights.

    python -m benchmarks.compiles               # opt-125m shapes
    python -m benchmarks.compiles --size tiny   # a 2-layer model: seconds
    python -m benchmarks.compiles --requests 1 --dtype float16   # the first compile of a float16 model

Counts every XLA backend compile in the process (jax.monitoring), so helper programs count too, and
reports the wall time of each request (a request that compiles is slow, the others are not). Writes
<out>/compiles_<platform>.json and .md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks import common

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def requests(vocab: int, positions: int, n: int = 20, seed: int = 0) -> list[dict]:
    """n requests as a server might see them: batch 1-4, prompts of 3-40 tokens, 4-48 new tokens (less for a
    model with fewer than 88 positions), half greedy, half sampled with varied settings."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        batch, length = int(rng.integers(1, 5)), int(rng.integers(3, min(40, positions // 2) + 1))
        lengths = rng.integers(1, length + 1, size=batch)
        lengths[0] = length
        ids = np.ones((batch, length), np.int32)
        mask = np.zeros((batch, length), np.int32)
        for row, n_row in enumerate(lengths):
            ids[row, length - n_row:] = rng.integers(3, vocab, size=n_row)
            mask[row, length - n_row:] = 1
        kw = dict(max_new_tokens=int(rng.integers(4, min(48, positions - length) + 1)), seed=i)
        if i % 2:
            kw.update(temperature=float(rng.uniform(0.5, 1.5)), top_k=int(rng.integers(0, 50)),
                      top_p=float(rng.uniform(0.8, 1.0)))
        out.append(dict(ids=ids, mask=mask, kw=kw))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="opt-125m", help="opt-125m | opt-350m | tiny")
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--dtype", default="float32", help="model dtype (sparse weights: bfloat16 for float32)")
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    args = ap.parse_args(argv)

    import jax
    from flax import nnx

    import jax_flashllm as jfl
    from jax_flashllm.models import OPTConfig, OPTForCausalLM

    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: compiles.append(secs) if event == BACKEND_COMPILE_EVENT else None)
    info = common.machine_info()
    info["command"] = (f"python -m benchmarks.compiles --size {args.size} --sparsity {args.sparsity} "
                       f"--dtype {args.dtype} --requests {args.requests}")
    cfg = OPTConfig.tiny() if args.size == "tiny" else OPTConfig.from_name(args.size)
    model = OPTForCausalLM(cfg, rngs=nnx.Rngs(0), dtype=args.dtype)
    model.cast_embeddings("bfloat16")
    jfl.sparsify(model, args.sparsity)
    rows = []
    vocab = cfg.sampling_vocab_size or cfg.vocab_size
    for i, r in enumerate(requests(vocab, cfg.max_position_embeddings, args.requests)):
        before, start = len(compiles), time.perf_counter()
        out = jfl.generate(model, r["ids"], r["mask"], **r["kw"])
        jax.block_until_ready(out)
        row = dict(request=i, batch=r["ids"].shape[0], prompt=r["ids"].shape[1], **r["kw"],
                   compiles=len(compiles) - before, compile_s=round(sum(compiles[before:]), 2),
                   wall_s=round(time.perf_counter() - start, 2))
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    total = dict(requests=len(rows), compiles=sum(r["compiles"] for r in rows),
                 requests_that_compiled=sum(r["compiles"] > 0 for r in rows),
                 compile_s=round(sum(r["compile_s"] for r in rows), 1),
                 wall_s=round(sum(r["wall_s"] for r in rows), 1))
    print(f"\n{total['requests']} requests: {total['compiles']} program compiles in {total['compile_s']} s "
          f"({total['requests_that_compiled']} requests compiled anything), {total['wall_s']} s in all")
    payload = {"machine": common.finish_machine_info(info), "size": args.size, "sparsity": args.sparsity,
               "dtype": args.dtype,
               "total": total, "rows": rows}
    suffix = "" if (args.dtype, args.requests) == ("float32", 20) else f"_{args.dtype}_{args.requests}"
    stem = args.out / f"compiles_{jax.devices()[0].platform}{suffix}"
    common.write_json(stem.with_suffix(".json"), payload)
    lines = [f"# generate: program compiles over {total['requests']} varied requests", "",
             f"`{info['command']}`", "",
             "| request | batch | prompt | max_new_tokens | temperature | compiles | compile s | wall s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['request']} | {r['batch']} | {r['prompt']} | {r['max_new_tokens']} | "
                     f"{r.get('temperature', 0.0):.2f} | {r['compiles']} | {r['compile_s']} | {r['wall_s']} |")
    lines += ["", f"Total: {total['compiles']} compiles in {total['compile_s']} s; "
              f"{total['requests_that_compiled']} of {total['requests']} requests compiled anything."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
