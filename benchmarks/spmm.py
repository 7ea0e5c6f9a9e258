"""Kernel benchmark: jax_flashllm.sparse_dense (each format) vs PyTorch dense bf16 `linear` (the CPU
peer, in its own process: benchmarks.torch_peer), XLA dense (same dtype and float32) and
jax.experimental.sparse BCSR, on the linear-layer shapes of OPT models.

    python -m benchmarks.spmm --quick        # the headline: 4096 x 4096 and 16384 x 4096, bf16, N 1/8/16
    python -m benchmarks.spmm                # every OPT shape for the platform, N up to 64, bf16 and fp16

Writes <out>/spmm_<platform>.json (machine info + one row per shape/dtype/sparsity/N), spmm_<platform>.md
(the headline table against the targets, then every row) and spmm_<platform>.png (speedup vs sparsity).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.experimental import sparse as jsparse

import jax_flashllm as jf
from benchmarks import common, report, torch_peer
from jax_flashllm import _flashllm_cpu
from jax_flashllm.models.opt import OPTConfig

CPU_SIZES = ("opt-125m", "opt-1.3b", "opt-6.7b")
GPU_SIZES = CPU_SIZES + ("opt-13b", "opt-30b", "opt-66b", "opt-175b")
SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9)
QUICK_SPARSITIES = (0.5, 0.7, 0.8, 0.9)
NS = (1, 8, 16, 32, 64)
QUICK_NS = (1, 8, 16)
FORMATS = ("tiled_csl", "bitmap")
DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}


def layer_shapes(size: str) -> list[tuple[str, int, int]]:
    """(label, M, K) of an OPT size's distinct linear layers: q/k/v/out, fc1, fc2."""
    cfg = OPTConfig.from_name(size)
    h, f = cfg.hidden_size, cfg.ffn_dim
    return [(f"{size} q/k/v/out", h, h), (f"{size} fc1", f, h), (f"{size} fc2", h, f)]


def plan(quick: bool, platform: str) -> tuple[list, tuple, tuple, tuple]:
    """(shapes, sparsities, Ns, dtypes) to run."""
    if quick:
        # The two headline shapes (opt-6.7b's q/k/v/out and fc1) carry the targets.
        shapes = layer_shapes("opt-6.7b")[:2]
        if platform == "gpu":
            shapes = layer_shapes("opt-13b")[:2] + layer_shapes("opt-66b")[:2]
        return shapes, QUICK_SPARSITIES, QUICK_NS, ("bfloat16",)
    sizes = GPU_SIZES if platform == "gpu" else CPU_SIZES
    return [s for size in sizes for s in layer_shapes(size)], SPARSITIES, NS, tuple(DTYPES)


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache (sysfs), 32 MiB if unknown; the GPU's L2 on H100/H200 is 50-60 MB."""
    if jax.devices()[0].platform == "gpu":
        return 60 << 20
    best = 0
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in root.glob("index*"):
        try:
            text = (idx / "size").read_text().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
        best = max(best, int(text.rstrip("KMG")) * scale)
    return best or 32 << 20


def pruned_weight(rng, m: int, k: int, sparsity: float) -> np.ndarray:
    """(M, K) float32 normal weights with a uniformly random `sparsity` fraction of exact zeros."""
    w = rng.standard_normal((m, k), dtype=np.float32)
    w[rng.random((m, k), dtype=np.float32) < sparsity] = 0.0
    return w


def bcsr_from_dense(w: np.ndarray) -> jsparse.BCSR:
    """float32 BCSR of w built with numpy (BCSR.fromdense takes ~9 s for a 4096 x 4096 matrix)."""
    rows, cols = np.nonzero(w)
    indptr = np.zeros(w.shape[0] + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=w.shape[0]), out=indptr[1:])
    return jsparse.BCSR((jnp.asarray(w[rows, cols]), jnp.asarray(cols.astype(np.int32)), jnp.asarray(indptr)),
                        shape=w.shape)


class Rotating:
    """Calls fn(x, w_i) with w_0, w_1, ... in turn: enough copies of the weight that consecutive calls
    never find it in the last-level cache, as in a model whose layers together exceed the cache."""

    def __init__(self, fn, x, weight, nbytes: int, cache_bytes: int):
        copies = max(1, -(-2 * cache_bytes // max(nbytes, 1)))
        self.weights = [weight] + [jax.tree.map(lambda a: jnp.array(a, copy=True), weight)
                                   for _ in range(copies - 1)]
        self.fn, self.x, self.i = fn, x, 0

    def __call__(self):
        self.i += 1
        return self.fn(self.x, self.weights[self.i % len(self.weights)])


BASELINES = {
    "sparse": "jax_flashllm.sparse_dense(x, W): W in the row's format and dtype, fp32 accumulation",
    "torch_bf16": "PyTorch dense bf16 torch.nn.functional.linear(x, W), W (M, K), in its own process (oneDNN)",
    "dense_same": "XLA x @ W^T, x and W in the row's dtype (bf16/fp16), W stored (K, M)",
    "dense_f32": "XLA x @ W^T in float32, W stored (K, M) (nnx.Linear's layout; the fast one on CPU)",
    "bcsr_f32": "jax.experimental.sparse BCSR (block 1x1) of W in float32, W @ x^T (its faster dtype)",
}

_sparse_fn = jax.jit(jf.sparse_dense)
# Dense baselines take W as (K, M), the layout nnx.Linear stores: XLA's CPU dot is fast for it, while
# x @ W.T with W (M, K) hits a path ~20x slower at N = 1 (measured 77 ms vs 3.9 ms for 4096 x 4096).
_dense_fn = jax.jit(lambda x, w_t: x @ w_t)
_bcsr_fn = jax.jit(lambda x, w: (w @ x.T).T)


def bench_case(rng, m, k, sparsity, dtype_name, ns, formats, cache_bytes, bandwidth, budget_s, with_bcsr,
               peer=None):
    """Rows (one per N and format) for one weight: times of every implementation, interleaved, and
    derived numbers. `bandwidth`: {"copy": GB/s, "read": GB/s}; `peer`: a torch_peer.PeerProcess or None."""
    dtype = DTYPES[dtype_name]
    w = pruned_weight(rng, m, k, sparsity)
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype_name == "bfloat16" else np.dtype(np.float16)
    w16 = w.astype(np_dtype)
    sws = {fmt: jax.device_put(jf.SparseMatrix.from_dense(w16, format=fmt)) for fmt in formats}
    w16_t = np.ascontiguousarray(w16.T)  # (K, M)
    dense16, dense32 = jnp.asarray(w16_t), jnp.asarray(w16_t.astype(np.float32))
    bcsr = bcsr_from_dense(w16.astype(np.float32)) if with_bcsr else None
    actual = float(np.mean(w16.astype(np.float32) == 0))
    rows = []
    for n in ns:
        x = jnp.asarray(rng.standard_normal((n, k), dtype=np.float32).astype(np_dtype))
        x32 = x.astype(jnp.float32)
        fns = {f"sparse_{fmt}": Rotating(_sparse_fn, x, sw, sw.nbytes, cache_bytes) for fmt, sw in sws.items()}
        fns.update({
            "dense_same": Rotating(_dense_fn, x, dense16, dense16.nbytes, cache_bytes),
            "dense_f32": Rotating(_dense_fn, x32, dense32, dense32.nbytes, cache_bytes),
        })
        if bcsr is not None:
            fns["bcsr_f32"] = Rotating(_bcsr_fn, x32, bcsr, 8 * bcsr.nse, cache_bytes)
        external = {}
        if peer is not None and dtype_name == "bfloat16":
            peer.load(m, k, n, cache_bytes)
            external["torch_bf16"] = lambda: peer.time(1)[0]
        samples = common.interleaved_times(fns, budget_s=budget_s, external=external)
        times = {name: common.summarize(t) for name, t in samples.items()}
        baselines = {name: t for name, t in times.items() if not name.startswith("sparse_")}
        line = f"  N={n:3d} "
        for fmt, sw in sws.items():
            sparse_ms = times[f"sparse_{fmt}"]["median_ms"]
            moved = sw.nbytes + 2 * n * (k + m)  # the kernel reads W and x once, writes y once
            speedup = {name: (t["median_ms"] / sparse_ms if t else None) for name, t in baselines.items()}
            eff = moved / (sparse_ms * 1e-3) / 1e9
            rows.append({
                "M": m, "K": k, "N": n, "dtype": dtype_name, "format": fmt, "sparsity": sparsity,
                "sparsity_actual": round(actual, 4), "sparse_bytes": int(sw.nbytes),
                "dense_bytes": int(dense16.nbytes), "bytes_moved": int(moved),
                "times": {"sparse": times[f"sparse_{fmt}"], **baselines}, "speedup": speedup,
                "effective_gbs": round(eff, 2), "pct_copy_bw": round(100 * eff / bandwidth["copy"], 1),
                "pct_read_bw": round(100 * eff / bandwidth["read"], 1),
            })
            line += f" {fmt} {sparse_ms:7.3f} ms {eff:5.1f} GB/s " + " ".join(
                f"{name} {v:5.2f}x" for name, v in speedup.items() if v) + " |"
        print(line, flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="headline shapes, N in {1, 8, 16}, bf16 only")
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR, help="output directory")
    ap.add_argument("--budget", type=float, default=None, help="max seconds of timing per (weight, N)")
    ap.add_argument("--no-bcsr", action="store_true", help="skip the jax.experimental.sparse baseline")
    ap.add_argument("--isa", choices=[name for name, _ in _flashllm_cpu.cpu_isas_built()],
                    help="force a CPU kernel variant")
    ap.add_argument("--formats", default=",".join(FORMATS), help="comma-separated sparse formats to time")
    ap.add_argument("--no-peer", action="store_true", help="skip the PyTorch peer (needs `make peer`)")
    args = ap.parse_args(argv)

    platform = jax.devices()[0].platform
    if args.isa and not _flashllm_cpu.set_cpu_isa(args.isa):
        ap.error(f"this CPU cannot run the {args.isa} variant (it has {_flashllm_cpu.cpu_isas()})")
    shapes, sparsities, ns, dtypes = plan(args.quick, platform)
    budget = args.budget or (3.0 if args.quick else 6.0)
    info = common.machine_info()
    cache_bytes = last_level_cache_bytes()
    formats = tuple(args.formats.split(","))
    if platform == "gpu":
        copy_gbs = common.device_copy_bandwidth_gbs()
        bandwidth = {"copy": copy_gbs, "read": copy_gbs}
    else:
        bandwidth = {"copy": common.copy_bandwidth_gbs(), "read": common.read_bandwidth_gbs()}
    peer, why_no_peer = None, "--no-peer" if args.no_peer else None
    if platform == "cpu" and not args.no_peer:
        why_no_peer = torch_peer.available()
        if why_no_peer is None:
            peer = torch_peer.PeerProcess(threads=info["cores"])
        else:
            print(f"no PyTorch peer ({why_no_peer}); `make peer` installs it")
    command = "python -m benchmarks.spmm" + (" --quick" if args.quick else "")
    info.update(copy_bandwidth_gbs=round(bandwidth["copy"], 2), read_bandwidth_gbs=round(bandwidth["read"], 2),
                last_level_cache_bytes=cache_bytes, formats=list(formats), command=command,
                cpu_features=common.cpu_features(), peer=None if peer is None else "starting",
                no_peer_reason=why_no_peer)
    print(f"{info['cpu']} x{info['cores']} ({' '.join(info['cpu_features'])}), kernel {info['cpu_kernel_isa']}, "
          f"copy {bandwidth['copy']:.1f} GB/s, read {bandwidth['read']:.1f} GB/s, load {info['load_avg_start'][0]}")
    rng = np.random.default_rng(0)
    rows = []
    stem = args.out / f"spmm_{platform}"
    try:
        for dtype_name in dtypes:
            for label, m, k in shapes:
                for sparsity in sparsities:
                    print(f"{label} ({m} x {k}) {dtype_name} sparsity {sparsity:.0%}", flush=True)
                    for row in bench_case(rng, m, k, sparsity, dtype_name, ns, formats, cache_bytes, bandwidth,
                                          budget, with_bcsr=not args.no_bcsr, peer=peer):
                        rows.append({"layer": label, **row})
                    if peer is not None:
                        info["peer"] = {k_: peer.info.get(k_) for k_ in ("torch", "threads")}
                # Rows so far, after every shape: a run cut short by a time limit (gpu-check) keeps them.
                common.write_json(stem.with_suffix(".json"), {"machine": info, "baselines": BASELINES, "rows": rows})
    finally:
        if peer is not None:
            peer.close()
    info = common.finish_machine_info(info)
    payload = {"machine": info, "baselines": BASELINES, "rows": rows}
    common.write_json(stem.with_suffix(".json"), payload)
    report.write_spmm_report(payload, stem)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
