"""Pruning speed: SparseGPT and Wanda on one 4096 x 4096 layer with 2048 calibration tokens (target SparseGPT
<= 20 s on the 2-core CPU), and prune_model on opt-125m shapes with 128 x 512 calibration tokens (target
<= 10 min), random weights and tokens.

    python -m benchmarks.prune            # both
    python -m benchmarks.prune --quick    # the layer, and prune_model on 16 x 512 tokens

The layer times are the second call (the first includes compilation, reported separately); prune_model runs
once, compilation included (that is what a user waits for). Writes <out>/prune_<platform>.json and .md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import common
from jax_flashllm import prune
from jax_flashllm.models import OPTConfig, OPTForCausalLM


def _timed(fn):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def layer_times(size: int, tokens: int) -> list[dict]:
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.standard_normal((size, size)), jnp.float32)
    # Correlated features, as activations are: the Hessian is not close to a multiple of the identity.
    x = jnp.asarray(rng.standard_normal((tokens, size)) @ (np.eye(size) + rng.standard_normal((size, size))
                                                            / np.sqrt(size)), jnp.float32)
    rows = []
    for name, fn in [("sparsegpt 50%", lambda: prune.sparsegpt(w, x, 0.5)),
                     ("sparsegpt 2:4", lambda: prune.sparsegpt(w, x, None, nm="2:4")),
                     ("wanda 50%", lambda: prune.wanda(w, x, 0.5))]:
        first = _timed(fn)
        second = _timed(fn)
        rows.append({"case": f"{name}, {size}x{size}, {tokens} tokens", "first_s": round(first, 2),
                     "seconds": round(second, 2)})
        print(rows[-1], flush=True)
    return rows


def model_times(samples: int, length: int, methods: list[str]) -> list[dict]:
    rows = []
    ids = np.random.default_rng(0).integers(0, 50265, (samples, length))
    for method in methods:
        model = OPTForCausalLM(OPTConfig.from_name("opt-125m"), rngs=nnx.Rngs(0))
        start = time.perf_counter()
        report = prune.prune_model(model, ids, 0.5, method=method)
        seconds = time.perf_counter() - start
        rows.append({"case": f"prune_model {method} 50%, opt-125m shapes, {samples}x{length} tokens",
                     "seconds": round(seconds, 1), "sparsity": round(report.sparsity, 4)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--methods", nargs="+", default=["sparsegpt", "wanda"])
    p.add_argument("--out", default=str(common.RESULTS_DIR))
    args = p.parse_args()
    info = common.machine_info()
    rows = layer_times(4096, 2048)
    rows += model_times(16 if args.quick else 128, 512, args.methods)
    info = common.finish_machine_info(info)
    name = f"prune_{jax.default_backend()}"
    common.write_json(Path(args.out) / f"{name}.json", {"machine": info, "results": rows})
    table = common.markdown_table(["case", "seconds", "first call (compile) s"],
                                  [[r["case"], f"{r['seconds']}", str(r.get("first_s", "-"))] for r in rows])
    note = f"\n{info['note']}\n" if "note" in info else ""
    (Path(args.out) / f"{name}.md").write_text(f"# Pruning speed ({info['cpu']}, {info['cores']} cores)\n\n"
                                               f"{table}{note}")
    print(table + note)


if __name__ == "__main__":
    main()
