"""Bytes per weight of each storage format, and what "auto" picks, across sparsities (no timing).

    python -m benchmarks.format_bytes [--shape 4096 4096] [--dtype bfloat16]

Unstructured random sparsity on a Gaussian matrix; bytes are SparseMatrix.nbytes (values + index +
tile offsets) divided by M * K, so 2.0 is dense 16-bit.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from jax_flashllm import SparseMatrix, formats

SPARSITIES = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(4096, 4096), metavar=("M", "K"))
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    args = parser.parse_args()
    m, k = args.shape
    rng = np.random.default_rng(0)
    w = rng.standard_normal((m, k)).astype(np.float32)
    order = rng.random((m, k))
    print(f"{m} x {k} {args.dtype}, bytes per weight (dense 16-bit = 2.0)")
    print(f"| sparsity | {' | '.join(formats.NAMES)} | auto picks | bitmap encode s |")
    print("|---" * (len(formats.NAMES) + 3) + "|")
    for s in SPARSITIES:
        ws = np.where(order < s, 0.0, w).astype(np.float32)
        per_weight, encode_s = {}, 0.0
        for name in formats.NAMES:
            start = time.perf_counter()
            per_weight[name] = SparseMatrix.from_dense(ws, args.dtype, format=name).nbytes / (m * k)
            if name == "bitmap":
                encode_s = time.perf_counter() - start
        auto = SparseMatrix.from_dense(ws, args.dtype).format
        cells = " | ".join(f"{per_weight[n]:.3f}" for n in formats.NAMES)
        print(f"| {s:.0%} | {cells} | {auto} | {encode_s:.2f} |")


if __name__ == "__main__":
    main()
