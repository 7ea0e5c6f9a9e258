"""End-to-end benchmark: OPT decode tokens/s and memory, ours (dense and sparse bf16) against HuggingFace
transformers + PyTorch dense on the CPU, random weights of the published shapes.

    python -m benchmarks.e2e --quick     # opt-125m and opt-350m: HF f32 / bf16, ours dense f32 / bf16, 50 %, 80 %,
                                         # 80 % with the head pruned too
    python -m benchmarks.e2e             # the same with every sparsity 50-90 % and two rounds
    python -m benchmarks.e2e --profile   # where a decode step's time goes (benchmarks/profile.py)
    python -m benchmarks.e2e --sizes opt-125m --configs hf-bfloat16 ours-0.8 ours-0.8+head   # the pruned head
    python -m benchmarks.e2e --sizes opt-1.3b --hf-device cuda --configs hf-bfloat16 ours-bf16 ours-0.5 ours-0.8
                                         # on a GPU (make gpu-check's step 3): HF on torch's CUDA, ours on jax's GPU

Every configuration runs in its own process (its threads, its memory), configurations alternate in rounds,
and both sides get the same prompt (batch 1, 32 tokens), the same number of new tokens, greedy, EOS
disabled. Decode tokens/s = (new tokens - 1) / (time of generate(new tokens) - time of generate(1)): the
whole loop as users run it (ours: one jitted while_loop), prefill and first token excluded; medians over
repeats. Memory = weights (every array the model holds: parameters, buffers, sparse indices; a tied head
counted once) + the KV cache of the run. The HF side needs the `peer` extra. Writes
<out>/e2e_<platform>.json and e2e_<platform>.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import common

SIZES = ("opt-125m", "opt-350m")
# A configuration: "hf-float32" | "hf-bfloat16" (the peer) or "ours-<kind>" (see build_ours).
PEERS = ("hf-float32", "hf-bfloat16")
QUICK = PEERS + ("ours-f32", "ours-bf16", "ours-0.5", "ours-0.8", "ours-0.8+head")
FULL = PEERS + ("ours-f32", "ours-bf16", "ours-0.5", "ours-0.6", "ours-0.7", "ours-0.8", "ours-0.8+head", "ours-0.9")
# "ours-<s>+head": the tied head pruned to the same sparsity too (pack_head(s); sparsify's include). Not what
# the other rows do: the published sparse models keep the head, which is the model's whole vocabulary.
PROMPT_LEN = 32
BATCH = 1
REPEATS = 3


def prompt_ids(vocab: int) -> np.ndarray:
    """The prompt both sides decode from: (BATCH, PROMPT_LEN) ids of real tokens (not specials)."""
    return np.random.default_rng(0).integers(4, vocab - 1, (BATCH, PROMPT_LEN)).astype(np.int32)


def _model_bytes(model) -> int:
    from flax import nnx

    return sum(int(v.get_value().nbytes) for _, v in nnx.to_flat_state(nnx.state(model)))


def build_ours(size: str, kind: str):
    """Our OPT of the published shape with random weights. kind: "f32" (dense float32 nnx.Linear layers and
    table, as loaded), "bf16" (every Linear in the dense format, bf16, through our kernel) or a sparsity
    ("0.8": every Linear pruned by magnitude, format "auto"); both 16-bit kinds also pack the tied head
    (bf16, dense format; "0.8+head" prunes it to the same sparsity, format "auto") and keep the position
    table in bf16, as HF's bf16 model does. Returns the model and the bytes of its Linear layers."""
    import jax.numpy as jnp
    from flax import nnx

    from jax_flashllm.models import OPTConfig, OPTForCausalLM
    from jax_flashllm.nn import SparseLinear, sparsify

    kind, _, head = kind.partition("+")
    if head not in ("", "head") or (head and kind in ("f32", "bf16")):
        raise ValueError(f"unknown configuration ours-{kind}+{head}: '+head' follows a sparsity, as in ours-0.8+head")
    model = OPTForCausalLM(OPTConfig.from_name(size), rngs=nnx.Rngs(0))
    if kind == "bf16":
        sparsify(model, 0.0, format="dense")
    elif kind != "f32":
        sparsify(model, float(kind))
    if kind != "f32":
        model.pack_head(float(kind) if head else 0.0)
        model.cast_embeddings(jnp.bfloat16)  # the position table (the token table is packed)
    linear = [m for _, m in nnx.iter_graph(model) if isinstance(m, (nnx.Linear, SparseLinear))]
    return model, sum(m.weight.nbytes if isinstance(m, SparseLinear) else m.kernel[...].nbytes for m in linear)


def _label(kind: str) -> str:
    sparsity, _, head = kind.partition("+")
    return ({"f32": "ours dense f32", "bf16": "ours dense bf16"}.get(kind)
            or f"ours sparse {float(sparsity):.0%}" + (" + head" if head else ""))


def run_ours(size: str, kind: str, new_tokens: int, repeats: int = REPEATS) -> dict:
    """Builds the model (see build_ours), compiles, times generate."""
    import jax
    import jax.numpy as jnp

    from jax_flashllm.generation import _prepare, generate
    from jax_flashllm.models import KVCache

    model, linear_bytes = build_ours(size, kind)
    cfg = model.config
    ids = jnp.asarray(prompt_ids(cfg.vocab_size))

    def timed(n):
        t = time.perf_counter()
        jax.block_until_ready(generate(model, ids, max_new_tokens=n, eos_token_id=None))
        return time.perf_counter() - t

    t = time.perf_counter()
    timed(1), timed(new_tokens)
    compile_s = time.perf_counter() - t
    first, full = [], []
    for _ in range(repeats):
        first.append(timed(1))
        full.append(timed(new_tokens))
    decode_s = float(np.median(full)) - float(np.median(first))
    # The cache generate allocates: prompt and new tokens rounded up to its length buckets.
    request = _prepare(model, ids, None, new_tokens, 0.0, 0, 1.0, 0, None)[0]
    slots = request.input_ids.shape[1] + request.new_slots
    cache = jax.eval_shape(lambda: KVCache.zeros(cfg, BATCH, slots, model.compute_dtype))
    cache_bytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in (*cache.k, *cache.v))
    return {
        "impl": _label(kind), "sparsity": None if kind in ("f32", "bf16") else float(kind.partition("+")[0]),
        "compute_dtype": jnp.dtype(model.compute_dtype).name,
        "compile_s": round(compile_s, 2), "prefill_ms": round(1e3 * float(np.median(first)), 2),
        "decode_tokens_per_s": round(BATCH * (new_tokens - 1) / decode_s, 2),
        "linear_mib": round(linear_bytes / 2**20, 1), "weight_mib": round(_model_bytes(model) / 2**20, 1),
        "kv_cache_mib": round(cache_bytes / 2**20, 2),
    }


def run_config(size: str, config: str, new_tokens: int, hf_device: str = "cpu") -> dict:
    """One configuration in this process (the worker side)."""
    if config.startswith("hf-"):
        from benchmarks import hf_peer
        from jax_flashllm.models import OPTConfig

        row = hf_peer.run(size, config[3:], prompt_ids(OPTConfig.from_name(size).vocab_size), new_tokens,
                          device=hf_device)
    else:
        row = run_ours(size, config[5:], new_tokens)
    row.update(size=size, config=config, batch=BATCH, prompt_len=PROMPT_LEN, new_tokens=new_tokens)
    row["memory_mib"] = round(row["weight_mib"] + row["kv_cache_mib"], 1)
    return row


def summarize(rows: list[dict]) -> list[dict]:
    """One row per (size, config): median tokens/s over rounds; speed and memory against the HF peer."""
    out = []
    for key in dict.fromkeys((r["size"], r["config"]) for r in rows):
        runs = [r for r in rows if (r["size"], r["config"]) == key]
        row = dict(runs[0])
        row["decode_tokens_per_s_runs"] = [r["decode_tokens_per_s"] for r in runs]
        row["decode_tokens_per_s"] = round(float(np.median(row["decode_tokens_per_s_runs"])), 2)
        out.append(row)
    for row in out:
        peers = {r["config"]: r for r in out if r["size"] == row["size"] and r["config"] in PEERS}
        if peers:
            best = max(peers.values(), key=lambda r: r["decode_tokens_per_s"])
            row["hf_best"] = best["config"]
            row["vs_hf_best"] = round(row["decode_tokens_per_s"] / best["decode_tokens_per_s"], 3)
        if "hf-bfloat16" in peers:
            row["memory_vs_hf_bf16"] = round(row["memory_mib"] / peers["hf-bfloat16"]["memory_mib"], 3)
    return out


def markdown(payload) -> str:
    m = payload["machine"]
    device = "" if m["device"].lower().startswith("cpu") else f"; device {m['device']}"
    out = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB{device}; jax {m['jax']}; CPU kernel "
           f"`{m['cpu_kernel_isa']}`; torch {m.get('torch', '?')}, transformers {m.get('transformers', '?')}; "
           f"commit {m['git_commit']}; {m['date_utc']}; load average {m['load_avg_start'][0]} -> "
           f"{m['load_avg_end'][0]}.", ""]
    if m.get("note"):
        out += [f"Note: {m['note']}.", ""]
    out += [f"Command: `{m['command']}`. Batch {BATCH}, prompt {PROMPT_LEN} tokens, "
            f"{payload['new_tokens']} new tokens, greedy, EOS disabled, random weights; each configuration in "
            f"its own process, {payload['rounds']} round(s) alternating. Decode tok/s = (new - 1) / "
            "(generate(new) - generate(1)), medians. Weights: every array the model holds (tied head once); "
            "memory = weights + KV cache. vs HF = against the faster of HF float32 / bfloat16; memory against "
            "HF bfloat16.", ""]
    rows = []
    for r in payload["rows"]:
        rows.append([r["size"], r["impl"], f"{r['decode_tokens_per_s']:.1f}",
                     f"{r['vs_hf_best']:.2f}x" if "vs_hf_best" in r else "—",
                     f"{r['weight_mib']:.0f}", f"{r['kv_cache_mib']:.1f}", f"{r['memory_mib']:.0f}",
                     f"{r['memory_vs_hf_bf16']:.2f}x" if "memory_vs_hf_bf16" in r else "—",
                     f"{r['prefill_ms']:.0f}"])
    out.append(common.markdown_table(["model", "implementation", "decode tok/s", "vs HF", "weights MiB",
                                      "KV cache MiB", "memory MiB", "memory vs HF bf16", "prefill ms"], rows))
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", action="store_true", help="decode-step profile instead (benchmarks/profile.py)")
    ap.add_argument("--sizes", nargs="+", default=list(SIZES))
    ap.add_argument("--configs", nargs="+", default=None, help=f"subset of {FULL}")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 1 quick, 2 full)")
    ap.add_argument("--new-tokens", type=int, default=33)
    ap.add_argument("--hf-device", default="cpu", choices=("cpu", "cuda"),
                    help="where the HF peer runs (cuda: torch's GPU build, as on the GPU machine)")
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    ap.add_argument("--worker", nargs=2, metavar=("SIZE", "CONFIG"), help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args(argv)
    if args.profile:
        from benchmarks import profile

        return profile.main(rest + (["--quick"] if args.quick else []) + ["--out", str(args.out),
                                                                         "--new-tokens", str(args.new_tokens)])
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.worker:
        print(json.dumps(run_config(*args.worker, args.new_tokens, args.hf_device)))
        return 0

    import jax

    info = common.machine_info()
    info["command"] = "python -m benchmarks.e2e" + (" " + " ".join(argv if argv is not None else sys.argv[1:])
                                                     if (argv if argv is not None else sys.argv[1:]) else "")
    configs = args.configs or (QUICK if args.quick else FULL)
    rounds = args.rounds or (1 if args.quick else 2)
    rows = []
    for r in range(rounds):
        for size in args.sizes:
            # Alternate the order each round so a load change does not always hit the same side.
            for config in (configs if r % 2 == 0 else configs[::-1]):
                print(f"round {r + 1}: {size} {config} ...", flush=True)
                row = common.run_worker("benchmarks.e2e", size, config, "--new-tokens", str(args.new_tokens),
                                        "--hf-device", args.hf_device)
                print(f"  decode {row['decode_tokens_per_s']} tok/s, memory {row['memory_mib']} MiB", flush=True)
                for key in ("torch", "transformers"):
                    if key in row:
                        info[key] = row[key]
                rows.append(row)
                # Saved after every row: an interrupted run keeps what it measured.
                payload = {"machine": common.finish_machine_info(dict(info)), "new_tokens": args.new_tokens,
                           "rounds": rounds, "rows": summarize(rows), "runs": rows}
                common.write_results(args.out / f"e2e_{jax.devices()[0].platform}", payload, markdown(payload),
                                     show=False)
    print((args.out / f"e2e_{jax.devices()[0].platform}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
