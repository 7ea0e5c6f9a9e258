"""A GPU performance model of the SpMM kernels (Tiled-CSL v1, bitmap v2, dense-format v3) from the host
emulator's counts, for OPT decoder layers on A100 / H100 / H200 — a prediction until a GPU measures it.

    PYTHONPATH=. python -m benchmarks.gpu_model            # counts (cached) -> table + plot in docs/
    PYTHONPATH=. python -m benchmarks.gpu_model --recount  # re-run the emulator (about 2 minutes)
    PYTHONPATH=. python -m benchmarks.gpu_model --measured report.json   # a GPU bundle run's report

Per (format, N, sparsity) the emulator runs the real kernel source on a 512 x K matrix at two K; the
difference gives the per-(block, K step) counts — shared-memory wavefronts, 32-byte global sectors
(cp.async / ldg) — and the rest the per-block fixed cost (prologue, epilogue). Issue slots come from
PTX instruction counts of the kernels' inner pieces (benchmarks/gpu_model_probe.cu, compiled when nvcc
is here, else the recorded counts below), mma counts from the tiling. Those per-step counts scale to a
full layer: blocks = ceil(M / BM) * ceil(N / BN) * split_k (split_k as the dispatcher chooses it), each
walking Kt / split_k K steps. Time = the slowest of five resources, each spread over all SMs:
  HBM       bytes (weights in the format, x, y, split-K partials) / min(90 % of the copy rate,
            bytes in flight / latency)
  L2 -> SM  the emulator's global sectors (W stages and x tiles as every block reads them) / L2 bandwidth
  shared    wavefronts / (SMs * clock)                      (1 wavefront = 128 B per clock per SM)
  issue     warp instructions / (SMs * clock * 4 schedulers)
  tensor    mma.m16n8k16 / (SMs * clock * mma rate)
the per-SM ones scaled to the busiest SM (ceil(blocks / SMs) blocks), plus a fixed launch cost. The dense baseline is a GEMV/GEMM that reads
the fp16 weight at 90 % of the copy rate (same launch cost). Assumptions and what a GPU run must
calibrate: docs/gpu_model.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jax_flashllm import _constants as C
from jax_flashllm import _tiling

ROOT = Path(__file__).resolve().parents[1]
COUNTS_FILE = Path(__file__).resolve().parent / "results" / "gpu_model_counts.json"
DOC_TABLE = ROOT / "docs" / "gpu_model_table.md"
DOC_PLOT = ROOT / "docs" / "gpu_model.png"

FORMATS = ("tiled_csl", "bitmap", "dense")
NS = (1, 8, 16, 32)
SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9)
EMU_M, EMU_K = 512, (512, 1024)  # two K: per-step counts are the difference


class Gpu(NamedTuple):
    """Published rates (datasheets) and the assumed ones (see docs/gpu_model.md, 'calibrate')."""

    name: str
    arch: int
    sms: int
    clock_ghz: float  # boost clock; a memory-bound kernel keeps it
    hbm_tbs: float  # datasheet
    copy_tbs: float  # device-to-device copy a GPU reaches: H200 measured (issue #12), others assumed
    l2_tbs: float  # L2 -> SM bandwidth (assumed: published microbenchmarks, order of magnitude)
    mma_per_clk: float  # mma.sync.m16n8k16 per clock per SM (dense fp16 peak; mma.sync on Hopper ~2/3)
    latency_ns: float  # loaded HBM latency for Little's law (assumed)
    launch_us: float  # launch + ramp + drain of one kernel (assumed, same for the dense baseline)


GPUS = {
    # A100 SXM4 80GB: 108 SMs, 1.41 GHz, 2.039 TB/s HBM2e, 312 TFLOPS fp16 dense = 0.5 mma/clk/SM.
    "A100": Gpu("A100", 80, 108, 1.41, 2.039, 1.75, 5.0, 0.5, 600.0, 3.0),
    # H100 SXM5: 132 SMs, 1.98 GHz, 3.35 TB/s HBM3, 989 TFLOPS fp16 dense (wgmma) ~ 1 mma/clk/SM.
    "H100": Gpu("H100", 90, 132, 1.98, 3.35, 2.95, 8.0, 0.67, 600.0, 3.0),
    # H200 SXM: H100's SMs with 4.8 TB/s HBM3e; ~4.3 TB/s device-to-device copy measured (issue #12).
    "H200": Gpu("H200", 90, 132, 1.98, 4.8, 4.3, 8.0, 0.67, 600.0, 3.0),
}
DENSE_FRACTION_OF_COPY = 0.9

# OPT decoder-layer weights (M = out_features, K = in_features): q, k, v, out, fc1, fc2.
OPT_HIDDEN = {"opt-13b": 5120, "opt-30b": 7168, "opt-66b": 9216, "opt-175b": 12288}


def layer_shapes(hidden: int) -> list[tuple[int, int]]:
    return [(hidden, hidden)] * 4 + [(4 * hidden, hidden), (hidden, 4 * hidden)]


# --- issue slots per piece of device code (PTX instructions per warp, benchmarks/gpu_model_probe.cu) ---
# Recorded with nvcc 13.0, sm_90; re-measured whenever nvcc is on PATH.
RECORDED_PROBES = {"bitmap_fragment": 96, "ldmatrix_fragment": 11, "csl_chunk": 46}
_PROBE_SOURCE = Path(__file__).resolve().parent / "gpu_model_probe.cu"


def probe_counts() -> tuple[dict[str, int], str]:
    """(PTX instructions of each probe minus probe_null's, where they came from)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return dict(RECORDED_PROBES), "recorded (nvcc 13.0, sm_90)"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probe.ptx"
        subprocess.run([nvcc, "-std=c++17", "-ptx", "-arch=sm_90", "-I", str(ROOT / "cuda" / "include"),
                        "-I", str(ROOT / "cuda"), str(_PROBE_SOURCE), "-o", str(out)], check=True,
                       capture_output=True)
        txt = out.read_text()
    counts = {}
    for m in re.finditer(r"\.entry (\w+)\((.*?)\n\}", txt, re.S):
        # Instructions, not directives; zero-extending cvt.u32.u16 after a 16-bit load is free in SASS.
        counts[m.group(1).removeprefix("probe_")] = sum(
            1 for line in m.group(2).splitlines()
            if re.match(r"\s+(@%p\d+\s+)?[a-z]", line) and not re.match(r"\s+(\.|cvt\.u32\.u16)", line))
    null = counts.pop("null")
    return {k: v - null for k, v in counts.items()}, "nvcc -ptx now (sm_90)"


# --- emulator counts ------------------------------------------------------------------------------------
def _emulate(fmt: str, n: int, sparsity: float, k: int) -> dict:
    """Emulator counts of the first k columns of one fixed random matrix (so both K see the same
    tiles and the difference is exactly the extra K steps)."""
    from jax_flashllm import SparseMatrix
    from jax_flashllm.testing import emulated_spmm_stats

    rng = np.random.default_rng(int(sparsity * 100) + n)
    full = rng.standard_normal((EMU_M, max(EMU_K))).astype(np.float32)
    full[rng.random(full.shape) < sparsity] = 0
    dense = np.ascontiguousarray(full[:, :k])
    w = SparseMatrix.from_dense(dense, dtype=np.float16, format=fmt)
    x = rng.standard_normal((n, max(EMU_K))).astype(np.float16)[:, :k]
    _, stats = emulated_spmm_stats(w, x, split_k=1)
    return {"smem_wavefronts": stats["smem_wavefronts"], "gmem_sectors": stats["gmem_sectors"],
            "config": stats["config"], "values": int(np.asarray(w.values).size)}


def count_table(recount: bool) -> dict:
    """{f"{fmt}/{n}/{sparsity}": per-step and fixed counts per block}, cached in COUNTS_FILE."""
    if COUNTS_FILE.exists() and not recount:
        return json.loads(COUNTS_FILE.read_text())
    table = {}
    for fmt in FORMATS:
        for n in NS:
            for s in SPARSITIES:
                lo, hi = (_emulate(fmt, n, s, k) for k in EMU_K)
                cfg = next(c for c in _tiling.CONFIGS if c.name == lo["config"])
                blocks = -(-EMU_M // cfg.block_m) * -(-n // cfg.block_n)
                steps = (EMU_K[1] - EMU_K[0]) // C.TILE_K
                per_step = {key: (hi[key] - lo[key]) / (blocks * steps)
                            for key in ("smem_wavefronts", "gmem_sectors")}
                # Per block, whatever K: prologue and epilogue. Clamped at 0: the two halves of K hold
                # different random tiles, so the difference carries a little sampling noise.
                fixed = {key: max(0.0, lo[key] / blocks - per_step[key] * EMU_K[0] // C.TILE_K)
                         for key in ("smem_wavefronts", "gmem_sectors")}
                table[f"{fmt}/{n}/{s}"] = {"config": cfg.name, "per_step": per_step, "fixed": fixed}
                print(f"  {fmt:9s} N={n:2d} {s:.0%}: {cfg.name} per step {per_step}")
    COUNTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    COUNTS_FILE.write_text(json.dumps(table, indent=1))
    return table


# --- the model ------------------------------------------------------------------------------------------
def stored_bytes(fmt: str, m: int, k: int, sparsity: float) -> float:
    """Expected bytes of W in the format, random unstructured pruning (per-tile padding to 8 values)."""
    tiles = math.prod(C.tile_grid(m, k))
    nnz_tile = C.TILE_ELEMS * (1 - sparsity)
    padded = math.ceil(nnz_tile / C.NNZ_ALIGN) * C.NNZ_ALIGN
    if fmt == "tiled_csl":
        return tiles * (4 * padded + 4)
    if fmt == "bitmap":
        return tiles * (2 * padded + 4 * C.BITMAP_WORDS_PER_TILE + 4)
    return tiles * (2 * C.TILE_ELEMS + 4)


def warp_instructions_per_step(fmt: str, cfg, n: int, sparsity: float, probes: dict) -> float:
    """Issue slots (warp instructions) of one block's K step: A fragments, mma, B fragments, W staging."""
    warps_m = cfg.block_m // 64
    warps_n = 4 // warps_m
    n_frags = max(1, min(-(-n // 8), cfg.block_n // warps_n // 8))  # n8 tiles a warp multiplies
    frags = 4 * 16  # 4 warps x (4 m16 x 4 k16) fragments
    mma = frags * n_frags
    b_loads = 4 * 4 * max(1, n_frags // 2) * 3  # ldmatrix.x4 + address per 16 columns
    sub_tiles = cfg.block_m // C.TILE_M
    values = C.TILE_ELEMS * (1 - sparsity) * sub_tiles
    if fmt == "bitmap":
        a = frags * probes["bitmap_fragment"]
        staging = (values / 8 + 65 * sub_tiles) / 32 * 5  # cp.async chunks / 32 lanes x ~5 instructions
    elif fmt == "dense":
        a = frags * probes["ldmatrix_fragment"]
        staging = C.TILE_ELEMS * sub_tiles / 8 / 32 * 5
    else:  # Tiled-CSL: zero fill, load + scatter 8 entries per thread per chunk, ldmatrix
        a = frags * probes["ldmatrix_fragment"]
        staging = values / 8 / 32 * probes["csl_chunk"] + C.TILE_ELEMS * sub_tiles / 8 / 32 * 2
    return a + mma + b_loads + staging


class Prediction(NamedTuple):
    time_us: float
    dense_us: float
    bound: str
    resources_us: dict


def predict(gpu: Gpu, fmt: str, m: int, k: int, n: int, sparsity: float, counts: dict,
            probes: dict, sass_per_ptx: float = 1.0) -> Prediction:
    entry = counts[f"{fmt}/{n}/{sparsity}"]
    cfg = next(c for c in _tiling.CONFIGS if c.name == entry["config"])
    split = _tiling.choose_split_k(m, k, n, gpu.sms, gpu.arch, format=fmt)
    kt = C.tile_grid(m, k)[1]
    blocks = -(-m // cfg.block_m) * -(-n // cfg.block_n) * split
    steps = blocks * kt / split  # block-K-steps over the launch
    occ = _tiling.FORMAT_OCCUPANCY[fmt][gpu.arch][cfg.name].blocks
    resident = min(blocks, gpu.sms * occ)
    # Per-SM resources are as busy as the busiest SM: ceil(blocks / SMs) blocks of work (resident
    # blocks of one SM share its pipes; blocks run to completion, so the last wave's imbalance counts).
    sm_share = math.ceil(blocks / gpu.sms) / (blocks / gpu.sms)

    clock = gpu.clock_ghz * 1e9
    w_bytes = stored_bytes(fmt, m, k, sparsity)
    x_bytes, y_bytes = 2 * n * k, 2 * n * m
    ws_bytes = 0 if split == 1 else 2 * 4 * split * n * C.tile_grid(m, 1)[0] * C.TILE_M
    hbm = w_bytes + x_bytes + y_bytes + ws_bytes
    # Bytes in flight: one stage per resident block (its K step's W share + its X tile), Little's law.
    stage = w_bytes / (C.tile_grid(m, k)[0] * kt) * (cfg.block_m // C.TILE_M) + 2 * cfg.block_n * C.TILE_K
    # The same streaming efficiency as the dense baseline, unless too few bytes are in flight.
    bw = min(DENSE_FRACTION_OF_COPY * gpu.copy_tbs * 1e12, resident * stage / (gpu.latency_ns * 1e-9))
    # L2 -> SM: the emulator's 32-byte sectors per block-K-step (W share + X tile) and per block.
    l2 = 32 * (steps * entry["per_step"]["gmem_sectors"] + blocks * entry["fixed"]["gmem_sectors"]) + ws_bytes
    smem = steps * entry["per_step"]["smem_wavefronts"] + blocks * entry["fixed"]["smem_wavefronts"]
    issue = steps * warp_instructions_per_step(fmt, cfg, n, sparsity, probes)
    n_frags = max(1, min(-(-n // 8), cfg.block_n // (4 // (cfg.block_m // 64)) // 8))
    mma = steps * 4 * 16 * n_frags
    res = {
        "hbm": hbm / bw,
        "l2": l2 / (gpu.l2_tbs * 1e12),
        "shared": smem / (gpu.sms * clock),
        "issue": sass_per_ptx * issue / (gpu.sms * clock * 4),
        "tensor": mma / (gpu.sms * clock * gpu.mma_per_clk),
    }
    for key in ("shared", "issue", "tensor"):
        res[key] *= sm_share
    res = {key: v * 1e6 for key, v in res.items()}
    bound = max(res, key=res.get)
    dense = ((2 * m * k + x_bytes + y_bytes) / (DENSE_FRACTION_OF_COPY * gpu.copy_tbs * 1e12)) * 1e6
    return Prediction(res[bound] + gpu.launch_us, dense + gpu.launch_us, bound,
                      {**res, "split_k": split, "in_flight_mb": resident * stage / 1e6})


def block_prediction(gpu: Gpu, fmt: str, hidden: int, n: int, sparsity: float, counts, probes,
                     sass_per_ptx: float = 1.0):
    """(kernel time, dense time, binding resources) summed over one decoder layer's six matmuls."""
    preds = [predict(gpu, fmt, m, k, n, sparsity, counts, probes, sass_per_ptx)
             for m, k in layer_shapes(hidden)]
    bounds = sorted({p.bound for p in preds})
    return sum(p.time_us for p in preds), sum(p.dense_us for p in preds), "/".join(bounds)


def markdown(counts, probes, probe_source) -> str:
    lines = [f"Generated by `PYTHONPATH=. python -m benchmarks.gpu_model` (issue slots: {probe_source}: "
             f"{probes}). Speedup = dense fp16 GEMV/GEMM at {DENSE_FRACTION_OF_COPY:.0%} of the copy rate / "
             "kernel, per OPT decoder layer (q, k, v, out, fc1, fc2); the binding resource follows "
             "each speedup (h = HBM, s = shared memory, i = issue, t = tensor, l = L2).", ""]
    short = {"hbm": "h", "shared": "s", "issue": "i", "tensor": "t", "l2": "l"}
    for gpu_name in ("H200", "H100", "A100"):
        gpu = GPUS[gpu_name]
        models = ("opt-13b", "opt-30b", "opt-175b") if gpu_name == "H200" else ("opt-66b",)
        for model in models:
            hidden = OPT_HIDDEN[model]
            lines.append(f"**{gpu_name}, {model}** (d = {hidden})")
            lines.append("")
            header = "| N | format | " + " | ".join(f"{s:.0%}" for s in SPARSITIES) + " |"
            lines += [header, "|" + "---|" * (2 + len(SPARSITIES))]
            for n in NS:
                for fmt in FORMATS:
                    cells = []
                    for s in SPARSITIES:
                        t, d, b = block_prediction(gpu, fmt, hidden, n, s, counts, probes)
                        cells.append(f"{d / t:.2f}x {''.join(short[x] for x in b.split('/'))}")
                    lines.append(f"| {n} | {fmt} | " + " | ".join(cells) + " |")
            lines.append("")
    # Sensitivity: issue slots are PTX counts (an upper bound); ptxas fuses some into fewer SASS.
    lines.append("**Sensitivity to the issue count** (H200, opt-175b, bitmap, N = 1): speedup when SASS "
                 "has the given fraction of the PTX instructions (to calibrate: cuobjdump -sass on a GPU machine)")
    lines.append("")
    lines += ["| SASS / PTX | " + " | ".join(f"{s:.0%}" for s in SPARSITIES) + " |",
              "|" + "---|" * (1 + len(SPARSITIES))]
    for ratio in (1.0, 0.75, 0.5):
        cells = []
        for s in SPARSITIES:
            t, d, b = block_prediction(GPUS["H200"], "bitmap", OPT_HIDDEN["opt-175b"], 1, s, counts, probes, ratio)
            cells.append(f"{d / t:.2f}x {''.join(short[x] for x in b.split('/'))}")
        lines.append(f"| {ratio:.2f} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def plot(counts, probes, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    sp = np.linspace(0.5, 0.9, 5)
    for ax, n in zip(axes, (1, 16)):
        for fmt, style in zip(FORMATS, ("o-", "s-", "^-")):
            ys = [block_prediction(GPUS["H200"], fmt, OPT_HIDDEN["opt-175b"], n, round(s, 1), counts, probes)
                  for s in sp]
            ax.plot(sp * 100, [d / t for t, d, _ in ys], style, label=fmt)
        ideal = [2.0 / (stored_bytes("bitmap", 128, 64, round(s, 1)) / C.TILE_ELEMS) for s in sp]
        ax.plot(sp * 100, ideal, "k:", label="bitmap bytes bound")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set_title(f"H200, OPT-175B layer, N = {n} (modelled)")
        ax.set_xlabel("sparsity (%)")
    axes[0].set_ylabel("speedup vs dense at 90 % of copy rate")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def compare_measured(path: Path, counts, probes) -> None:
    """Predicted / measured for every speed case of a GPU bundle report (harness --out JSON: a header
    with device, copy_gbs, and "cases" with format id, m, k, n, sparsity, us, cublas_us). The device
    name picks the GPU's rates; its measured copy rate replaces the assumed one."""
    from jax_flashllm import formats

    data = json.loads(path.read_text())
    gpu = next((g for name, g in GPUS.items() if name in str(data.get("device", ""))), GPUS["H200"])
    if data.get("copy_gbs"):
        gpu = gpu._replace(copy_tbs=float(data["copy_gbs"]) / 1000)
    print(f"{gpu.name} rates, copy {gpu.copy_tbs:.2f} TB/s")
    for rec in data.get("cases", []):
        if rec.get("kind") != "speed" or "us" not in rec:
            continue
        fmt = formats.get(int(rec["format"])).NAME
        if f"{fmt}/{rec['n']}/{rec['sparsity']}" not in counts:
            continue
        p = predict(gpu, fmt, rec["m"], rec["k"], rec["n"], rec["sparsity"], counts, probes)
        line = (f"{rec['name']:40s} predicted {p.time_us:8.1f} us ({p.bound}), measured {rec['us']:8.1f} us, "
                f"ratio {p.time_us / rec['us']:.2f}")
        if rec.get("cublas_us"):
            line += f"; dense predicted {p.dense_us:.1f} vs cuBLAS {rec['cublas_us']:.1f} us"
        print(line)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recount", action="store_true", help="re-run the emulator for the counts")
    ap.add_argument("--measured", type=Path, help="a GPU run's JSON to compare the predictions with")
    args = ap.parse_args(argv)
    counts = count_table(args.recount)
    probes, source = probe_counts()
    if args.measured:
        compare_measured(args.measured, counts, probes)
        return
    text = markdown(counts, probes, source)
    DOC_TABLE.write_text(text + "\n")
    plot(counts, probes, DOC_PLOT)
    print(text)


if __name__ == "__main__":
    main()
