"""The GPU bundle's case list (make gpu-bundle): OUT/cases.txt and the golden correctness files
OUT/golden/*.bin, produced here by the host emulation.

cases.txt, one case a line (read by cuda/harness/harness.cu):
  golden <name> <file>
  speed <name> <format id> <dtype> <m> <k> <n> <sparsity> <split_k>
Speed cases are OPT-30B/66B/175B layer shapes at 50-90 % sparsity and N in {1, 8, 16, 32}, with the
split-K that jax_flashllm._tiling.choose_split_k picks for an H200 (132 SMs, sm_90), plus a split_k
sweep; the harness generates their matrices on the device.

Each golden case is one file (little-endian; read by cuda/harness/golden.h):
  magic "FLMGOLD1"; int32 format, dtype (0 float16, 1 bfloat16), m, k, n, split_k, config (-1:
  chosen by N), flags (1: arrays deliberately malformed); int64 value count, index bytes;
  then values u16[P], index bytes, tile_offsets i32[T+1], x u16[n*k], ref f32[n*m] (float64
  x @ W^T as the kernel sees W, rounded to f32), scale f32[n*m] (sum_k |x||w|), emu u16[n*m] (the
  emulated kernel's y bits).
A GPU result passes when, per output, |y - ref| <= eps(dtype) |ref| + 2^-14 scale + tiny(dtype)
(tensor cores accumulate in fp32 in an order of their own, so the bound scales with sum |x||w|,
not |y|), NaN exactly where ref is NaN, and exactly zero where scale is 0. The emulator's own
result is held to the same test here, so the bound is never tighter than a correct kernel needs.

    python scripts/gpu_bundle_cases.py OUT_DIR
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np

from jax_flashllm import SparseMatrix, _constants as C, _tiling
from jax_flashllm.testing import EMULATED_NUM_SMS, emulated_spmm, kernel_view_dense

# The formats with a CUDA kernel (and its emulation), and their case-name tags. The bitmap (v2) and
# dense (v3) kernels add "bitmap": "v2", "dense": "v3" here, and their entries in
# cuda/harness/formats.cuh (launch, device generator); every case line carries its format id.
FORMATS = {"tiled_csl": "v1", "bitmap": "v2", "dense": "v3"}
FORMAT_IDS = {"tiled_csl": C.FORMAT_TILED_CSL, "bitmap": C.FORMAT_BITMAP, "dense": C.FORMAT_DENSE}
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
DTYPE_CODE = {F16: 0, BF16: 1}
MAGIC = b"FLMGOLD1"
# The bound's constants, mirrored by cuda/harness/golden.h (kAccumRel, eps and tiny per dtype).
ACCUM_REL = 2.0**-14


def bound(ref, scale, dtype):
    info = ml_dtypes.finfo(dtype)
    return float(info.eps) * np.abs(ref) + ACCUM_REL * scale + float(info.smallest_normal)


def check(y, ref, scale, dtype, name):
    y64 = y.astype(np.float64)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(y64), nan), f"{name}: NaN pattern"
    assert np.all(y64[scale == 0] == 0), f"{name}: zero pattern"
    ok = nan | (np.abs(y64 - ref) <= bound(ref, scale, dtype))
    assert ok.all(), f"{name}: {np.count_nonzero(~ok)} outputs outside the bound"


def sparse(rng, m, k, sparsity, dtype):
    w = rng.standard_normal((m, k)).astype(np.float32)
    w[rng.random((m, k)) < sparsity] = 0
    return w.astype(dtype)


def mixed(rng, m, k, dtype):
    """Tiles from empty to fully dense."""
    w = np.zeros((m, k), np.float32)
    for mt in range(-(-m // C.TILE_M)):
        for kt in range(-(-k // C.TILE_K)):
            blk = w[mt * C.TILE_M:(mt + 1) * C.TILE_M, kt * C.TILE_K:(kt + 1) * C.TILE_K]
            blk[...] = rng.standard_normal(blk.shape) * (rng.random(blk.shape) < rng.choice([0, .05, .5, 1]))
    return w.astype(dtype)


def cases(rng):
    """(name, w SparseMatrix, x, split_k, config, flags) for every format of FORMATS."""
    out = []
    for fmt, tag in FORMATS.items():
        for dtype in (BF16, F16):
            dn = "bf16" if dtype == BF16 else "fp16"
            # Every N class and its edges; ragged M, K % 8 != 0 (element-wise x path), K % 64 != 0.
            for i, n in enumerate((1, 8, 16, 17, 33, 65, 130)):
                m, k = (300, 700, 129)[i % 3], (1000, 197, 520)[i % 3]
                split = (1, 2, 3, 5, 8, 11, 16)[i]
                w = SparseMatrix.from_dense(sparse(rng, m, k, (0.5, 0.7, 0.8, 0.9)[i % 4], dtype), dtype=dtype, format=fmt)
                out.append((f"{tag}_{dn}_n{n}_m{m}_k{k}_split{split}", w, rng.standard_normal((n, k)).astype(dtype), split, -1, 0))
            # Forced configs on dense and empty tiles, split-K up to 16.
            for ci, cfg in enumerate(_tiling.CONFIGS):
                split = (1, 4, 16, 2)[ci]
                w = SparseMatrix.from_dense(mixed(rng, 301, 250, dtype), dtype=dtype, format=fmt)
                out.append((f"{tag}_{dn}_{cfg.name}_mixed_split{split}", w, rng.standard_normal((20, 250)).astype(dtype), split, ci, 0))
        # A decode shape at the split the dispatcher picks for an H200.
        # (256 rows for the dense format, which stores every element: the bundle stays <= 48 MiB.)
        rows = 256 if fmt == "dense" else 2048
        w = SparseMatrix.from_dense(sparse(rng, rows, 4096, 0.9, BF16), dtype=BF16, format=fmt)
        split = _tiling.choose_split_k(rows, 4096, 8, EMULATED_NUM_SMS, format=fmt)
        out.append((f"{tag}_bf16_decode{rows}x4096_n8_split{split}", w, rng.standard_normal((8, 4096)).astype(BF16), split, -1, 0))
        # NaN in x: NaN rows in y exactly where float64 has them.
        w = SparseMatrix.from_dense(sparse(rng, 260, 512, 0.8, BF16), dtype=BF16, format=fmt)
        x = rng.standard_normal((5, 512)).astype(BF16)
        x[2, 7] = np.nan
        out.append((f"{tag}_bf16_nan_split4", w, x, 4, -1, 0))
    # Malformed arrays (what a matrix rebuilt under jit may hold): the GPU must not fault, and
    # malformed tiles count as empty (expected values from testing.kernel_view_dense, Tiled-CSL).
    for split in (1, 3):
        w = SparseMatrix.from_dense(mixed(rng, 384, 320, BF16), dtype=BF16, format="tiled_csl")
        offs = np.asarray(w.tile_offsets).copy()
        t = offs.size // 2
        offs[t] += 4  # tiles t-1 and t unaligned
        offs[-1] = np.asarray(w.values).size + 64  # last tile past the end
        offs[2] = -8  # tiles 1 and 2 negative / reversed
        bad = SparseMatrix.tree_unflatten(w.tree_flatten()[1], (w.values, w.index, offs.astype(np.int32)))
        out.append((f"v1_bf16_malformed_split{split}", bad, rng.standard_normal((9, 320)).astype(BF16), split, -1, 1))
    return out


def write(path: Path, w, x, split, config, flags, y):
    # What the kernel multiplies by: malformed Tiled-CSL tiles count as empty; the other formats'
    # cases are valid matrices.
    wd = kernel_view_dense(w) if w.format == "tiled_csl" else np.asarray(w.to_dense())
    assert wd is not None
    x64 = x.astype(np.float64)
    ref = x64 @ wd.astype(np.float64).T
    scale = np.abs(np.nan_to_num(x64)) @ np.abs(wd.astype(np.float64)).T
    check(y, ref, scale, w.dtype, path.stem)
    m, k = w.shape
    values = np.ascontiguousarray(np.asarray(w.values)).view(np.uint16)
    index = np.ascontiguousarray(np.asarray(w.index)).view(np.uint8)  # the format's index, as raw bytes
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<8i", w.format_id,
                            DTYPE_CODE[np.dtype(w.dtype)], m, k, x.shape[0], split, config, flags))
        f.write(struct.pack("<2q", values.size, index.size))
        for a in (values, index, np.asarray(w.tile_offsets, np.int32), x.view(np.uint16),
                  ref.astype(np.float32), scale.astype(np.float32), y.view(np.uint16)):
            f.write(np.ascontiguousarray(a).tobytes())


# OPT layer shapes (hidden, ffn): q/k/v/out (h, h), fc1 (f, h), fc2 (h, f) as (M, K).
OPT_SIZES = {"opt-30b": (7168, 28672), "opt-66b": (9216, 36864), "opt-175b": (12288, 49152)}
SPEED_SPARSITIES = (0.8, 0.9, 0.7, 0.5)  # most telling first: a run cut short still has them
SPEED_NS = (1, 8, 16, 32)
H200_SMS, H200_ARCH = 132, 90


def speed_cases() -> list[str]:
    lines = []
    h = OPT_SIZES["opt-66b"][0]
    for fmt, tag in FORMATS.items():
        fid = FORMAT_IDS[fmt]
        for split in (1, 2, 3, 4, 6, 8, 11, 12, 16):  # split_k sweep: OPT-66B q/k/v/out, N = 8, 80 %
            lines.append(f"speed sweep_{tag}_opt-66b_qkvo_n8_s80_split{split} {fid} bfloat16 {h} {h} 8 0.8 {split}")
        for sparsity in SPEED_SPARSITIES:
            for model, (hid, f) in OPT_SIZES.items():
                for layer, (m, k) in (("qkvo", (hid, hid)), ("fc1", (f, hid)), ("fc2", (hid, f))):
                    for n in SPEED_NS:
                        split = _tiling.choose_split_k(m, k, n, H200_SMS, H200_ARCH, format=fmt)
                        name = f"{tag}_{model}_{layer}_n{n}_s{round(sparsity * 100)}"
                        lines.append(f"speed {name} {fid} bfloat16 {m} {k} {n} {sparsity} {split}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    (args.out / "golden").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2026)
    t0 = time.time()
    lines = ["# kind name ... (see scripts/gpu_bundle_cases.py)"]
    for name, w, x, split, config, flags in cases(rng):
        y = emulated_spmm(w, x, split_k=split, config=None if config < 0 else config, validate=not flags)
        path = args.out / "golden" / f"{name}.bin"
        write(path, w, x, split, config, flags, y)
        lines.append(f"golden {name} golden/{name}.bin")
        print(f"{name}: {path.stat().st_size / 1e6:.2f} MB", flush=True)
    lines += speed_cases()
    (args.out / "cases.txt").write_text("\n".join(lines) + "\n")
    print(f"{len(lines) - 1} cases written in {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
