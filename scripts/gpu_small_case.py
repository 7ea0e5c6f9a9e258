"""A small sparse_dense run on the default device, checked against numpy (for compute-sanitizer)."""

import jax
import ml_dtypes
import numpy as np

import jax_flashllm as jf


def main() -> None:
    rng = np.random.default_rng(0)
    for dtype in (np.float16, ml_dtypes.bfloat16):
        for m, k, n in ((300, 200, 1), (257, 129, 33), (1000, 700, 128)):
            w = rng.standard_normal((m, k)).astype(np.float32)
            w[rng.random((m, k)) < 0.8] = 0
            w = w.astype(dtype)
            x = rng.standard_normal((n, k)).astype(dtype)
            y = np.asarray(jax.jit(jf.sparse_dense)(x, jf.SparseMatrix.from_dense(w)), np.float64)
            ref = x.astype(np.float64) @ w.astype(np.float64).T
            err = np.abs(y - ref).max() / max(1.0, np.abs(ref).max())
            assert err < 2e-2, (dtype, m, k, n, err)
            print(f"{np.dtype(dtype).name} ({m},{k}) N={n}: max rel err {err:.2e} on {jax.devices()[0].platform}")


if __name__ == "__main__":
    main()
