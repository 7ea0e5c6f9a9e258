"""Where a decode step's time goes: `python -m benchmarks.e2e --profile [--quick]`.

Per generated token (batch 1, the e2e benchmark's prompt and length) and per part of the step -- the
Linear layers (sparse or dense), the LM head, attention over the KV cache (with the cache update), the
LayerNorms, the embedding gather, sampling, and the rest -- the time, the bytes the part must read, and the
resulting GB/s. Two independent measurements:

- micro: each part alone, jitted at the model's shapes (all its layers in one call), timed interleaved with
  the other parts (medians); "rest" = the fused loop's time per token minus the parts.
- trace: a jax profiler trace of the real compiled loop. Each executed XLA op is attributed to the part whose
  named scope (jax.named_scope in models/opt.py and generate.py) its HLO metadata carries; per token =
  (trace of generate(n) - trace of generate(1)) / (n - 1). Op times are summed over threads, so a part whose
  ops run in parallel may add up to more than its wall time.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common

PARTS = ("linear", "head", "attention", "norm", "embed", "sample")
_OPCODE = re.compile(r" = .*? ([a-z][a-z0-9\-]*)\(")
_SCOPE = re.compile(r'op_name="([^"]*)"')
_OPERAND = re.compile(r"%([\w.\-]+)")


def _op_parts(hlo_text: str, vocab: int) -> dict[str, str | None]:
    """HLO instruction name -> the part it belongs to (innermost known named scope); None for control flow
    (while, call, conditional), whose time is that of the ops inside it.

    XLA's CPU backend drops the metadata of the dots it rewrites: a dot producing `vocab` columns is the
    head, any other is a dense Linear layer; another op without metadata takes its first operand's part."""
    parts = {}
    for line in hlo_text.splitlines():
        if " = " not in line:
            continue
        name, rhs = line.split(" = ", 1)
        name = name.strip().removeprefix("ROOT ").lstrip("%")
        opcode = _OPCODE.search(line)
        if opcode and opcode.group(1) in ("while", "call", "conditional"):
            parts[name] = None
            continue
        scope = _SCOPE.search(line)
        found = [p for p in (scope.group(1).split("/") if scope else ()) if p in PARTS]
        if not found and not scope and opcode and opcode.group(1) == "dot":
            found = ["head" if re.search(rf"[\[,]{vocab}[\],]", rhs.split("dot(")[0]) else "linear"]
        elif not found and not scope:
            found = [parts[o] for o in _OPERAND.findall(rhs.split("metadata=")[0]) if parts.get(o)]
            found = [p for p in found if p != "rest"][:1]
        parts[name] = found[-1] if found else "rest"
    return parts


def _trace_seconds(fn, parts: dict) -> dict[str, float]:
    """Seconds per part of the XLA ops executed by fn(), from a perfetto trace."""
    import jax

    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            jax.block_until_ready(fn())
        files = sorted(Path(d).rglob("*.trace.json.gz"))
        trace = json.load(gzip.open(files[-1]))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    total = collections.Counter()
    for e in events:
        op = (e.get("args") or {}).get("hlo_op")
        if e.get("ph") == "X" and op and e["name"] == op:
            part = parts.get(op, "rest")
            if part is not None:
                total[part] += e["dur"] * 1e-6  # microseconds
    return dict(total)


def _micro(model, slots: int, valid_slots: int) -> tuple[dict, dict]:
    """(part -> jitted function of no arguments, part -> bytes it must read) at the model's shapes."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jax_flashllm.models.opt import KVCache, _norm, attend, mask_bias
    from jax_flashllm.nn import PackedEmbed, SparseLinear
    from jax_flashllm.sampling import make_sampler, mask_vocab, sample

    cfg, dtype = model.config, model.compute_dtype
    graphdef, state = nnx.split(model)
    layers = [m for _, m in nnx.iter_graph(model) if isinstance(m, (nnx.Linear, SparseLinear))]

    def nbytes(tree):
        return sum(int(x.nbytes) for x in jax.tree.leaves(tree))

    def x_for(layer):
        return jnp.ones((1, 1, layer.in_features), dtype)

    def run_linear(state):
        m = nnx.merge(graphdef, state)
        ms = [x for _, x in nnx.iter_graph(m) if isinstance(x, (nnx.Linear, SparseLinear))]
        return [layer(x_for(layer)).astype(dtype) for layer in ms]

    h_dim = cfg.word_embed_proj_dim

    def run_head(state):
        return nnx.merge(graphdef, state).logits(jnp.ones((1, 1, h_dim), dtype))

    cache = KVCache.zeros(cfg, 1, slots, dtype)
    cache = cache._replace(valid=cache.valid.at[:, :valid_slots].set(True))
    index = valid_slots
    heads, hd = cfg.num_attention_heads, cfg.head_dim

    def run_attention(cache):
        bias = mask_bias((jnp.arange(slots) <= index)[None, None] & cache.valid[:, None])
        q = jnp.ones((1, 1, heads, hd), dtype)
        new_k, new_v = jnp.ones((1, heads, hd, 1), dtype), jnp.ones((1, heads, 1, hd), dtype)
        out = []
        for k, v in zip(cache.k, cache.v):
            k = jax.lax.dynamic_update_slice(k, new_k, (0, 0, 0, index))
            v = jax.lax.dynamic_update_slice(v, new_v, (0, 0, index, 0))
            out.append((attend(q, k, v, bias), k, v))
        return out

    norms = [layer.self_attn_layer_norm for layer in model.layers] + [layer.final_layer_norm for layer in model.layers]
    norms += [model.final_layer_norm] if model.final_layer_norm is not None else []
    m_dim = cfg.hidden_size

    def run_norm(state):
        m = nnx.merge(graphdef, state)
        lns = [layer.self_attn_layer_norm for layer in m.layers] + [layer.final_layer_norm for layer in m.layers]
        lns += [m.final_layer_norm] if m.final_layer_norm is not None else []
        return [_norm(ln, jnp.ones((1, 1, m_dim), dtype)) for ln in lns]

    ids, positions = jnp.array([[cfg.vocab_size // 2]]), jnp.array([[valid_slots]])

    def run_embed(state):
        return nnx.merge(graphdef, state)._embed(ids, positions)

    vocab = cfg.sampling_vocab_size or cfg.vocab_size
    logits = jnp.linspace(0.0, 1.0, cfg.vocab_size, dtype=jnp.float32)[None]

    greedy, key = make_sampler(0.0), jax.random.key(0)

    def run_sample(logits):
        return sample(mask_vocab(logits, vocab), key, greedy)

    jitted = {"linear": (run_linear, state), "head": (run_head, state), "attention": (run_attention, cache),
              "norm": (run_norm, state), "embed": (run_embed, state), "sample": (run_sample, logits)}
    fns = {}
    for part, (fn, arg) in jitted.items():
        fns[part] = (lambda f, a: (lambda: f(a)))(jax.jit(fn), arg)
    head = model.embed_tokens
    if isinstance(head, PackedEmbed):
        head_bytes, row_bytes = head.weight.nbytes, head.features * head.weight.dtype.itemsize
    else:
        table = head.embedding[...]
        head_bytes, row_bytes = int(table.nbytes), table.nbytes // table.shape[0]
    kv = nbytes((cache.k, cache.v)) * valid_slots // slots  # the slots holding tokens
    pos = model.embed_positions.embedding[...]
    read = {
        "linear": sum(m.weight.nbytes + (0 if m.bias is None else m.bias[...].nbytes) if isinstance(m, SparseLinear)
                      else nbytes(nnx.state(m)) for m in layers),
        "head": head_bytes,
        "attention": kv,
        "norm": nbytes([nnx.state(ln) for ln in norms]),
        "embed": row_bytes + pos.nbytes // pos.shape[0],
        "sample": cfg.vocab_size * 4,
    }
    return fns, read


def profile(size: str, kind: str, new_tokens: int) -> dict:
    """The profile of our model `kind` (benchmarks.e2e.build_ours: "f32", "bf16" or a sparsity)."""
    import jax.numpy as jnp
    from flax import nnx

    from benchmarks.e2e import PROMPT_LEN, _label, build_ours, prompt_ids
    from jax_flashllm.generation import _generate, _prepare, generate

    model, _ = build_ours(size, kind)
    cfg = model.config
    ids = jnp.asarray(prompt_ids(cfg.vocab_size))

    def gen(n):
        return lambda: generate(model, ids, max_new_tokens=n, eos_token_id=None)

    loop = common.interleaved_times({"first": gen(1), "full": gen(new_tokens)}, warmup=1, iters=5, budget_s=30)
    per_token = (float(np.median(loop["full"])) - float(np.median(loop["first"]))) / (new_tokens - 1)

    fns, read = _micro(model, PROMPT_LEN + new_tokens, PROMPT_LEN + new_tokens // 2)
    micro = {p: float(np.median(t)) for p, t in common.interleaved_times(fns, iters=30, budget_s=30).items()}

    # The trace: the HLO of the same jitted loop that generate runs, for its ops' named scopes.
    graphdef, state = nnx.split(model)
    traces = {}
    for n in (1, new_tokens):
        # The call generate makes (same arguments, same bucket), lowered instead of run.
        request, traced, static = _prepare(model, ids, None, n, 0.0, 0, 1.0, 0, None)
        hlo = _generate.lower(graphdef, state, request.input_ids, request.valid, np.int32(request.batch),
                              traced["key"], traced["sampling"], traced["eos"], np.int32(request.max_new_tokens),
                              new_slots=request.new_slots, **static).compile().as_text()
        traces[n] = _trace_seconds(gen(n), _op_parts(hlo, cfg.vocab_size))
    trace = {p: (traces[new_tokens].get(p, 0.0) - traces[1].get(p, 0.0)) / (new_tokens - 1)
             for p in (*PARTS, "rest")}

    rows = []
    for part in (*PARTS, "rest"):
        t = micro.get(part, per_token - sum(micro.values()))
        b = read.get(part)
        rows.append({"part": part, "micro_ms": round(1e3 * t, 3), "trace_ms": round(1e3 * trace[part], 3),
                     "bytes": b, "gb_s": round(b / t / 1e9, 2) if b and t > 0 else None})
    return {"size": size, "impl": _label(kind), "compute_dtype": jnp.dtype(model.compute_dtype).name,
            "new_tokens": new_tokens, "loop_ms_per_token": round(1e3 * per_token, 3),
            "trace_ms_per_token": round(1e3 * sum(trace.values()), 3), "parts": rows}


def markdown(payload) -> str:
    m = payload["machine"]
    out = [f"Machine: {m['cpu']}, {m['cores']} cores; jax {m['jax']}; CPU kernel `{m['cpu_kernel_isa']}`; commit "
           f"{m['git_commit']}; {m['date_utc']}; load average {m['load_avg_start'][0]} -> {m['load_avg_end'][0]}.",
           ""]
    if m.get("note"):
        out += [f"Note: {m['note']}.", ""]
    out += [f"Command: `{m['command']}`. Per generated token, batch 1, random weights. micro = the part alone, "
            "jitted at the model's shapes (medians, interleaved); rest = loop time - the parts. trace = XLA op "
            "time in a profiler trace of the compiled loop, by named scope (summed over threads). GB/s = bytes the "
            "part must read / micro time.", ""]
    for p in payload["profiles"]:
        out.append(f"**{p['size']}, {p['impl']}** (activations and KV cache {p['compute_dtype']}): loop "
                   f"{p['loop_ms_per_token']:.2f} ms per token, trace {p['trace_ms_per_token']:.2f} ms.\n")
        rows = [[r["part"], f"{r['micro_ms']:.3f}", f"{r['trace_ms']:.3f}",
                 f"{r['bytes'] / 1e6:.2f}" if r["bytes"] else "—",
                 f"{r['gb_s']:.1f}" if r["gb_s"] is not None else "—"] for r in p["parts"]]
        out.append(common.markdown_table(["part", "micro ms", "trace ms", "MB read", "GB/s"], rows))
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="opt-125m only")
    ap.add_argument("--new-tokens", type=int, default=33)
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    ap.add_argument("--worker", nargs=2, metavar=("SIZE", "KIND"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(profile(*args.worker, args.new_tokens)))
        return 0

    import jax

    info = common.machine_info()
    info["command"] = "python -m benchmarks.e2e --profile" + (" --quick" if args.quick else "")
    plan = [("opt-125m", "f32"), ("opt-125m", "0.8")]
    if not args.quick:
        plan += [("opt-125m", "bf16"), ("opt-125m", "0.5"), ("opt-350m", "0.8")]
    profiles = []
    for size, sp in plan:
        print(f"{size} {sp} ...", flush=True)
        t = time.perf_counter()
        profiles.append(common.run_worker("benchmarks.profile", size, sp, "--new-tokens", str(args.new_tokens)))
        print(f"  {time.perf_counter() - t:.0f} s", flush=True)
    payload = {"machine": common.finish_machine_info(info), "profiles": profiles}
    common.write_results(args.out / f"e2e_profile_{jax.devices()[0].platform}", payload, markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
