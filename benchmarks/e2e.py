"""End-to-end benchmark: OPT decode tokens/s, prefill time and peak memory, dense float32 vs sparse bf16
(every Linear layer pruned and encoded) at 50-90 %, with random weights of the published shapes.

    python -m benchmarks.e2e --quick   # opt-125m dense / 50 / 80 / 90 %, opt-350m dense / 80 %
    python -m benchmarks.e2e           # opt-125m and opt-350m, dense and every sparsity

Each configuration runs in its own process, so its peak resident memory (ru_maxrss) is its own. Writes
<out>/e2e_<platform>.json and e2e_<platform>.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import common

SIZES = ("opt-125m", "opt-350m")
SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9)
QUICK = {"opt-125m": (None, 0.5, 0.8, 0.9), "opt-350m": (None, 0.8)}
PROMPT_LEN = 32
BATCH = 1


def _rss_mib() -> float:
    """Current resident memory of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_config(size: str, sparsity: float | None, steps: int) -> dict:
    """Builds the model (sparsity None: dense float32), compiles, then measures prefill and decode."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jax_flashllm.generation import decode_step, prefill
    from jax_flashllm.models import OPTConfig, OPTForCausalLM
    from jax_flashllm.nn import sparsify

    cfg = OPTConfig.from_name(size)
    model = OPTForCausalLM(cfg, rngs=nnx.Rngs(0))
    linear_bytes = sum(int(m.kernel[...].nbytes) for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Linear))
    if sparsity is not None:
        report = sparsify(model, sparsity)
        linear_bytes = report.sparse_bytes
    ids = jnp.asarray(np.random.default_rng(0).integers(4, cfg.vocab_size - 1, (BATCH, PROMPT_LEN)), jnp.int32)
    kw = dict(max_new_tokens=steps + 1, eos_token_id=None)

    t = time.perf_counter()
    d = prefill(model, ids, **kw)
    d = decode_step(d)
    jax.block_until_ready(d.token)
    compile_s = time.perf_counter() - t

    prefill_s = []
    for _ in range(3):
        t = time.perf_counter()
        d = prefill(model, ids, **kw)
        jax.block_until_ready(d.token)
        prefill_s.append(time.perf_counter() - t)
    step_s = []
    for _ in range(steps):
        t = time.perf_counter()
        d = decode_step(d)
        jax.block_until_ready(d.token)
        step_s.append(time.perf_counter() - t)
    step_med = float(np.median(step_s))
    gc.collect()
    # What the process holds in arrays while decoding (weights, KV cache, ...): unlike RSS, not inflated by
    # the dense float32 model the sparse one was pruned from, whose freed pages malloc may keep.
    live_bytes = sum(a.nbytes for a in jax.live_arrays())
    return {
        "size": size, "sparsity": sparsity, "batch": BATCH, "prompt_len": PROMPT_LEN, "decode_steps": steps,
        "linear_weight_mib": round(linear_bytes / 2**20, 1), "compile_s": round(compile_s, 2),
        "prefill_ms": round(1e3 * float(np.median(prefill_s)), 2),
        "decode_ms_per_token": round(1e3 * step_med, 3), "decode_tokens_per_s": round(BATCH / step_med, 2),
        "live_arrays_mib": round(live_bytes / 2**20, 1),
        "rss_decoding_mib": round(_rss_mib(), 1),
        # The peak includes building the model: the sparse one is pruned from a dense float32 model.
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def markdown(payload) -> str:
    m = payload["machine"]
    out = [f"Machine: {m['cpu']}, {m['cores']} cores; jax {m['jax']}; CPU kernel `{m['cpu_kernel_isa']}`; commit "
           f"{m['git_commit']}; {m['date_utc']}; load average {m['load_avg_start'][0]} -> "
           f"{m['load_avg_end'][0]}.", ""]
    if m.get("note"):
        out += [f"Note: {m['note']}.", ""]
    out += [f"Command: `{m['command']}`. Batch {BATCH}, prompt {PROMPT_LEN} tokens, random weights; decode = "
            "median time of one jitted decode step; sparse = every Linear layer bf16 Tiled-CSL (embeddings and "
            "the tied LM head stay dense float32). Live arrays: bytes of all jax arrays alive while decoding (weights, "
            "KV cache). RSS decoding: resident memory during decode; peak RSS includes "
            "building the model (the sparse one is pruned from a dense float32 model first). Target: sparse decode "
            ">= 2x dense at 80 %.", ""]
    rows = []
    for r in payload["rows"]:
        dense = next((d for d in payload["rows"] if d["size"] == r["size"] and d["sparsity"] is None), None)
        speed = r["decode_tokens_per_s"] / dense["decode_tokens_per_s"] if dense else None
        rows.append([r["size"], "dense f32" if r["sparsity"] is None else f"sparse {r['sparsity']:.0%}",
                     f"{r['linear_weight_mib']:.1f}", f"{r['prefill_ms']:.1f}", f"{r['decode_tokens_per_s']:.1f}",
                     f"{speed:.2f}x" if speed else "—", f"{r.get('live_arrays_mib', float('nan')):.0f}",
                     f"{r['rss_decoding_mib']:.0f}", f"{r['peak_rss_mib']:.0f}",
                     f"{r['compile_s']:.1f}"])
    out.append(common.markdown_table(["model", "weights", "Linear MiB", "prefill ms", "decode tok/s",
                                      "vs dense f32", "live arrays MiB", "RSS decoding MiB", "peak RSS MiB", "compile s"], rows))
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    ap.add_argument("--steps", type=int, default=None, help="decode steps timed per configuration")
    ap.add_argument("--worker", nargs=2, metavar=("SIZE", "SPARSITY"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    steps = args.steps or (16 if args.quick else 32)
    if args.worker:
        size, sp = args.worker
        print(json.dumps(run_config(size, None if sp == "dense" else float(sp), steps)))
        return 0

    import jax

    info = common.machine_info()
    info["command"] = "python -m benchmarks.e2e" + (" --quick" if args.quick else "")
    plan = QUICK if args.quick else {s: (None, *SPARSITIES) for s in SIZES}
    rows = []
    for size, configs in plan.items():
        for sp in configs:
            label = "dense" if sp is None else str(sp)
            print(f"{size} {label} ...", flush=True)
            proc = subprocess.run([sys.executable, "-m", "benchmarks.e2e", "--worker", size, label,
                                   "--steps", str(steps)], capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-2000:])
                raise SystemExit(f"{size} {label} failed")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"  prefill {row['prefill_ms']} ms, decode {row['decode_tokens_per_s']} tok/s, "
                  f"RSS {row['rss_decoding_mib']} MiB (peak {row['peak_rss_mib']} MiB)")
            rows.append(row)
    payload = {"machine": common.finish_machine_info(info), "rows": rows}
    stem = args.out / f"e2e_{jax.devices()[0].platform}"
    common.write_json(stem.with_suffix(".json"), payload)
    stem.with_suffix(".md").write_text(markdown(payload))
    print(f"wrote {stem.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
