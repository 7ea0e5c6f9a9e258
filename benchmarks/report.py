"""Turns benchmark JSON into the markdown tables and the plot that docs/benchmarks.md and the README show.

    python -m benchmarks.report benchmarks/results/spmm_cpu.json   # re-render without re-measuring
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.common import markdown_table

# The CPU targets (issue 5, DESIGN.md "Targets"): bf16, these shapes, N in {1, 8, 16}.
HEADLINE_SHAPES = ((4096, 4096), (16384, 4096))
HEADLINE_NS = (1, 8, 16)
# sparsity -> minimum speedup over float32 XLA dense; 50 %: sparse time <= 1.2 x dense time.
TARGET_VS_F32 = {0.5: 1 / 1.2, 0.8: 2.5, 0.9: 4.0}
TARGET_VS_BCSR = 10.0


def _ms(t):
    return f"{t['median_ms']:.2f}" if t else "—"


def _x(v):
    return f"{v:.2f}x" if v else "—"


def _verdict(row) -> str:
    """'yes' / 'NO (needs 2.5x)' for the rows that carry a target, '' otherwise."""
    target = TARGET_VS_F32.get(row["sparsity"])
    got, bcsr = row["speedup"].get("dense_f32"), row["speedup"].get("bcsr_f32")
    misses = []
    if target is not None and got is not None and got < target:
        misses.append(f">= {target:.2f}x f32")
    if bcsr is not None and bcsr < TARGET_VS_BCSR:
        misses.append(f">= {TARGET_VS_BCSR:.0f}x BCSR")
    if target is None and bcsr is None:
        return ""
    return "yes" if not misses else "NO (needs " + ", ".join(misses) + ")"


def headline_rows(rows):
    return [r for r in rows if (r["M"], r["K"]) in HEADLINE_SHAPES and r["dtype"] == "bfloat16"
            and r["N"] in HEADLINE_NS]


def _row_cells(r, with_verdict: bool):
    t = r["times"]
    cells = [f"{r.get('layer', '')} ({r['M']}x{r['K']})", r["dtype"], f"{r['sparsity']:.0%}", str(r["N"]),
             _ms(t["sparse"]), _ms(t["dense_f32"]), _x(r["speedup"].get("dense_f32")),
             _ms(t.get("dense_same")), _x(r["speedup"].get("dense_same")), _ms(t.get("bcsr_f32")),
             _x(r["speedup"].get("bcsr_f32")), f"{r['effective_gbs']:.1f}", f"{r['pct_copy_bw']:.0f}%"]
    return cells + ([_verdict(r)] if with_verdict else [])


HEADER = ["layer (M x K)", "dtype", "sparsity", "N", "sparse ms", "dense f32 ms", "vs f32", "dense 16-bit ms",
          "vs 16-bit", "BCSR f32 ms", "vs BCSR", "GB/s", "% copy BW"]


def spmm_markdown(payload) -> str:
    m = payload["machine"]
    rows = payload["rows"]
    out = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['device']}; jax {m['jax']}; "
           f"CPU kernel variant `{m['cpu_kernel_isa']}`; copy bandwidth {m['copy_bandwidth_gbs']} GB/s "
           f"(read + write, all cores); commit {m['git_commit']}; {m['date_utc']}; load average "
           f"{m['load_avg_start'][0]} -> {m['load_avg_end'][0]}.", ""]
    if m.get("note"):
        out += [f"Note: {m['note']}.", ""]
    out += [f"Command: `{m['command']}`. Times are medians of interleaved runs; speedup = baseline time / "
            "sparse time; GB/s = bytes the kernel must move (Tiled-CSL arrays + x + y) / sparse time.", ""]
    head = headline_rows(rows)
    if head:
        out += ["### Targets (bf16; 80 %: >= 2.5x float32 dense, 90 %: >= 4x, 50 %: <= 1.2x its time; "
                ">= 10x BCSR)", "", markdown_table(HEADER + ["target met"], [_row_cells(r, True) for r in head])]
    out += ["### All rows", "", markdown_table(HEADER, [_row_cells(r, False) for r in rows])]
    return "\n".join(out)


def headline_markdown(payload) -> str:
    """The condensed target table for docs/benchmarks.md: sparsities with a target, N in {1, 8, 16}."""
    rows = [r for r in headline_rows(payload["rows"]) if r["sparsity"] in TARGET_VS_F32]
    cells = []
    for r in rows:
        t, sp = r["times"], r["speedup"]
        need = TARGET_VS_F32[r["sparsity"]]
        cells.append([f"{r['M']} x {r['K']}", f"{r['sparsity']:.0%}", str(r["N"]), _ms(t["sparse"]),
                      _ms(t["dense_f32"]), f"{_x(sp.get('dense_f32'))} (>= {need:.2f}x)",
                      f"{_x(sp.get('bcsr_f32'))} (>= {TARGET_VS_BCSR:.0f}x)", f"{r['pct_copy_bw']:.0f}%",
                      _verdict(r)])
    return markdown_table(["W (M x K), bf16", "sparsity", "N", "sparse ms", "dense f32 ms", "vs dense f32",
                           "vs BCSR f32", "% copy BW", "met"], cells)


def spmm_plot(payload, path: Path) -> bool:
    """Speedup over float32 dense vs sparsity, one line per N, one panel per headline shape (bf16).
    Returns False (no file) when matplotlib is missing or no headline rows exist."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return False
    rows = [r for r in payload["rows"] if r["dtype"] == "bfloat16"]
    shapes = [s for s in HEADLINE_SHAPES if any((r["M"], r["K"]) == s for r in rows)]
    if not shapes:
        shapes = sorted({(r["M"], r["K"]) for r in rows})[:2]
    if not shapes:
        return False
    fig, axes = plt.subplots(1, len(shapes), figsize=(5.5 * len(shapes), 4.2), squeeze=False)
    for ax, (mm, kk) in zip(axes[0], shapes):
        sel = [r for r in rows if (r["M"], r["K"]) == (mm, kk)]
        for n in sorted({r["N"] for r in sel}):
            pts = sorted((r["sparsity"], r["speedup"].get("dense_f32")) for r in sel if r["N"] == n)
            pts = [(s, v) for s, v in pts if v]
            ax.plot([100 * s for s, _ in pts], [v for _, v in pts], marker="o", label=f"N = {n}")
        for s, target in TARGET_VS_F32.items():
            ax.plot([100 * s], [target], marker="_", markersize=22, color="black", linestyle="none")
        ax.axhline(1.0, color="gray", linewidth=0.8, linestyle=":")
        ax.set_title(f"W {mm} x {kk}, bf16")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("speedup over XLA dense float32")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
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
