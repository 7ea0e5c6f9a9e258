"""Turns benchmark JSON into the markdown tables and the plot that docs/benchmarks.md and the README show.

    python -m benchmarks.report benchmarks/results/spmm_cpu.json   # re-render without re-measuring
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.common import markdown_table

# The CPU targets (issue 9, DESIGN.md "Targets"): bf16, these shapes, N in {1, 8, 16}.
HEADLINE_SHAPES = ((4096, 4096), (16384, 4096))
HEADLINE_NS = (1, 8, 16)
# sparsity -> minimum speedup over PyTorch dense bf16 linear; N = 1: a share of the read bandwidth.
TARGET_VS_TORCH = {0.5: 1.3, 0.8: 2.5, 0.9: 4.0}
TARGET_PCT_READ_BW_N1 = 60.0


def _ms(t):
    return f"{t['median_ms']:.2f}" if t else "—"


def _x(v):
    return f"{v:.2f}x" if v else "—"


def _format(row) -> str:
    return row.get("format", "tiled_csl")  # results from before the bitmap format have no field


def _misses(row) -> list[str]:
    """The targets this row carries and misses, e.g. [">= 2.50x torch (1.90x)"]."""
    misses = []
    target, got = TARGET_VS_TORCH.get(row["sparsity"]), row["speedup"].get("torch_bf16")
    if target is not None and got is not None and got < target:
        misses.append(f">= {target:.2f}x torch")
    pct = row.get("pct_read_bw")
    if row["N"] == 1 and pct is not None and pct < TARGET_PCT_READ_BW_N1:
        misses.append(f">= {TARGET_PCT_READ_BW_N1:.0f}% read BW")
    return misses


def _verdict(row) -> str:
    """'yes' / 'NO (needs ...)' for the rows that carry a target, '' otherwise."""
    carries = (row["sparsity"] in TARGET_VS_TORCH and row["speedup"].get("torch_bf16") is not None) or (
        row["N"] == 1 and row.get("pct_read_bw") is not None)
    if not carries:
        return ""
    misses = _misses(row)
    return "yes" if not misses else "NO (needs " + ", ".join(misses) + ")"


def headline_rows(rows):
    return [r for r in rows if (r["M"], r["K"]) in HEADLINE_SHAPES and r["dtype"] == "bfloat16"
            and r["N"] in HEADLINE_NS]


def _pct(v):
    return f"{v:.0f}%" if v is not None else "—"


def _row_cells(r, with_verdict: bool):
    t, sp = r["times"], r["speedup"]
    cells = [f"{r.get('layer', '')} ({r['M']}x{r['K']})", r["dtype"], _format(r), f"{r['sparsity']:.0%}",
             str(r["N"]), _ms(t["sparse"]), _ms(t.get("torch_bf16")), _x(sp.get("torch_bf16")),
             _ms(t.get("dense_f32")), _x(sp.get("dense_f32")), _ms(t.get("dense_same")), _x(sp.get("dense_same")),
             _ms(t.get("bcsr_f32")), _x(sp.get("bcsr_f32")), f"{r['effective_gbs']:.1f}",
             _pct(r.get("pct_read_bw")), _pct(r.get("pct_copy_bw"))]
    return cells + ([_verdict(r)] if with_verdict else [])


HEADER = ["layer (M x K)", "dtype", "format", "sparsity", "N", "sparse ms", "torch bf16 ms", "vs torch",
          "XLA f32 ms", "vs XLA f32", "XLA 16-bit ms", "vs XLA 16-bit", "BCSR f32 ms", "vs BCSR", "GB/s",
          "% read BW", "% copy BW"]


def machine_line(m) -> str:
    feats = " ".join(m.get("cpu_features", [])) or "unknown"
    peer = m.get("peer")
    peer_txt = (f"PyTorch {peer['torch']} ({peer['threads']} threads)" if isinstance(peer, dict)
                else f"no PyTorch peer ({m.get('no_peer_reason') or 'not run'})")
    read = f"read bandwidth {m['read_bandwidth_gbs']} GB/s, " if "read_bandwidth_gbs" in m else ""
    return (f"Machine: {m['cpu']} ({feats}), {m['cores']} cores, {m['memory_gib']} GiB; {m['device']}; jax "
            f"{m['jax']}; CPU kernel variant `{m['cpu_kernel_isa']}`; {peer_txt}; {read}copy bandwidth "
            f"{m['copy_bandwidth_gbs']} GB/s (read + write), both over all cores; commit {m['git_commit']}; "
            f"{m['date_utc']}; load average {m['load_avg_start'][0]} -> {m['load_avg_end'][0]}.")


def spmm_markdown(payload) -> str:
    m = payload["machine"]
    rows = payload["rows"]
    out = [machine_line(m), ""]
    if m.get("note"):
        out += [f"Note: {m['note']}.", ""]
    out += [f"Command: `{m['command']}`. Times are medians of interleaved runs (the PyTorch peer takes its "
            "turn in the same rounds, from its own process); speedup = baseline time / sparse time; GB/s = "
            "bytes the kernel must move (the format's arrays + x + y) / sparse time.", ""]
    head = headline_rows(rows)
    if head:
        out += ["### Targets (bf16; vs PyTorch dense bf16: >= 1.3x at 50 %, >= 2.5x at 80 %, >= 4x at 90 %; "
                "N = 1: >= 60 % of the read bandwidth)", "",
                markdown_table(HEADER + ["target met"], [_row_cells(r, True) for r in head])]
    out += ["### All rows", "", markdown_table(HEADER, [_row_cells(r, False) for r in rows])]
    return "\n".join(out)


def headline_markdown(payload) -> str:
    """The condensed target table for docs/benchmarks.md: N in {1, 8, 16}, every format."""
    rows = [r for r in headline_rows(payload["rows"]) if r["sparsity"] in TARGET_VS_TORCH or r["N"] == 1]
    cells = []
    for r in rows:
        t, sp = r["times"], r["speedup"]
        need = TARGET_VS_TORCH.get(r["sparsity"])
        vs = _x(sp.get("torch_bf16")) + (f" (>= {need:.1f}x)" if need else "")
        cells.append([f"{r['M']} x {r['K']}", _format(r), f"{r['sparsity']:.0%}", str(r["N"]), _ms(t["sparse"]),
                      _ms(t.get("torch_bf16")), vs, _x(sp.get("dense_f32")), f"{r['effective_gbs']:.1f}",
                      _pct(r.get("pct_read_bw")), _verdict(r)])
    return markdown_table(["W (M x K), bf16", "format", "sparsity", "N", "sparse ms", "torch ms", "vs torch",
                           "vs XLA f32", "GB/s", "% read BW", "met"], cells)


def spmm_plot(payload, path: Path) -> bool:
    """Speedup over PyTorch dense bf16 (XLA dense float32 for results without the peer) vs sparsity, one
    line per (format, N), one panel per headline shape (bf16). Returns False (no file) when matplotlib is
    missing or no headline rows exist."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return False
    rows = [r for r in payload["rows"] if r["dtype"] == "bfloat16"]
    base = "torch_bf16" if any(r["speedup"].get("torch_bf16") for r in rows) else "dense_f32"
    base_name = "PyTorch dense bf16" if base == "torch_bf16" else "XLA dense float32"
    shapes = [s for s in HEADLINE_SHAPES if any((r["M"], r["K"]) == s for r in rows)]
    if not shapes:
        shapes = sorted({(r["M"], r["K"]) for r in rows})[:2]
    if not shapes:
        return False
    fig, axes = plt.subplots(1, len(shapes), figsize=(5.8 * len(shapes), 4.4), squeeze=False)
    styles = {"bitmap": "-", "tiled_csl": "--", "dense": ":"}
    for ax, (mm, kk) in zip(axes[0], shapes):
        sel = [r for r in rows if (r["M"], r["K"]) == (mm, kk)]
        for ci, n in enumerate(sorted({r["N"] for r in sel})):
            for fmt in sorted({_format(r) for r in sel}):
                pts = sorted((r["sparsity"], r["speedup"].get(base)) for r in sel if r["N"] == n and _format(r) == fmt)
                pts = [(s, v) for s, v in pts if v]
                ax.plot([100 * s for s, _ in pts], [v for _, v in pts], marker="o", color=f"C{ci}",
                        linestyle=styles.get(fmt, "-"), label=f"{fmt}, N = {n}")
        if base == "torch_bf16":
            for s, target in TARGET_VS_TORCH.items():
                ax.plot([100 * s], [target], marker="_", markersize=22, color="black", linestyle="none")
        ax.axhline(1.0, color="gray", linewidth=0.8, linestyle=":")
        ax.set_title(f"W {mm} x {kk}, bf16")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel(f"speedup over {base_name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    m = payload["machine"]
    fig.suptitle(f"jax_flashllm CPU kernel ({m['cpu']}, {m['cores']} cores); black bars: targets", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return True


def write_spmm_report(payload, stem: Path) -> None:
    """stem.md (tables) and stem.png (plot)."""
    md = stem.with_suffix(".md")
    md.write_text(spmm_markdown(payload))
    print(f"wrote {md}")
    head = stem.parent / (stem.name + "_headline.md")
    head.write_text(headline_markdown(payload))
    print(f"wrote {head}")
    spmm_plot(payload, stem.with_suffix(".png"))


def main(argv=None) -> int:
    for arg in argv if argv is not None else sys.argv[1:]:
        path = Path(arg)
        payload = json.loads(path.read_text())
        if "rows" in payload and payload["rows"] and "times" in payload["rows"][0]:
            write_spmm_report(payload, path.with_suffix(""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
