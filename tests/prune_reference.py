"""Float64 numpy oracles of the calibrated pruning methods, written straight from the papers' algorithms
(plain loops, an explicit inverse): slow, obviously correct, independent of the JAX code paths."""

import numpy as np


def lowest(scores, count):
    """Indices of the `count` smallest entries of a 1-D array, ties by position."""
    return np.argsort(scores, kind="stable")[:count]


def wanda(w, x, sparsity=None, nm=None):
    w = np.asarray(w, np.float64)
    x = np.asarray(x, np.float64)
    score = np.abs(w) * np.sqrt((x ** 2).sum(axis=0))[None, :]
    out = w.copy()
    for r in range(w.shape[0]):
        if nm is None:
            out[r, lowest(score[r], round(sparsity * w.shape[1]))] = 0.0
        else:
            n, m = nm
            for g in range(0, w.shape[1], m):
                out[r, g + lowest(score[r, g:g + m], m - n)] = 0.0
    return out


def sparsegpt(w, x, sparsity=None, nm=None, blocksize=128, damp=0.01):
    """Algorithm 1 of the SparseGPT paper with the reference code's choices (dead inputs, damping, mask by
    w^2 / U_jj^2 chosen per block or per N:M group when reached), one column at a time."""
    w = np.array(w, np.float64)
    x = np.asarray(x, np.float64)
    rows, k = w.shape
    h = 2.0 * x.T @ x / x.shape[0]
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * np.mean(np.diag(h)) * np.eye(k)
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper, U^T U = H^-1
    keep = np.ones((rows, k), bool)
    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        if nm is None:
            scores = (w[:, i1:i2] ** 2 / np.diag(u)[None, i1:i2] ** 2).ravel()
            flat = np.ones(scores.size, bool)
            flat[lowest(scores, round(sparsity * scores.size))] = False
            keep[:, i1:i2] = flat.reshape(rows, i2 - i1)
        for i in range(i1, i2):
            if nm is not None and (i - i1) % nm[1] == 0:
                n, m = nm
                for r in range(rows):
                    s = w[r, i:i + m] ** 2 / np.diag(u)[i:i + m] ** 2
                    keep[r, i + lowest(s, m - n)] = False
            err = np.where(keep[:, i], 0.0, w[:, i]) / u[i, i]
            # OBS update of every later column (the lazy batching of the paper is only a reordering of this)
            w[:, i:] -= np.outer(err, u[i, i:])
            w[~keep[:, i], i] = 0.0
    return w, keep


def reconstruction_error(w, w_pruned, x):
    """||X W^T - X W_p^T||_F^2 / ||X W^T||_F^2 in float64."""
    x = np.asarray(x, np.float64)
    ref = x @ np.asarray(w, np.float64).T
    return float(((ref - x @ np.asarray(w_pruned, np.float64).T) ** 2).sum() / (ref ** 2).sum())


def linear_inputs(model, paths, run):
    """Call run() with the Linears of `model` at `paths` (nnx.iter_graph paths) recording their inputs, then
    put them back. Returns {path: (N, K) float64, the rows of every call in order}."""
    from flax import nnx

    from jax_flashllm.nn import set_submodule

    class Capture(nnx.Module):
        def __init__(self, linear, rows):
            self.linear, self._rows = linear, rows

        @property
        def kernel(self):  # OPT reads its Linears' dtype from here
            return self.linear.kernel

        def __call__(self, x):
            self._rows.append(np.asarray(x, np.float64).reshape(-1, x.shape[-1]))
            return self.linear(x)

    modules = dict(nnx.iter_graph(model))
    rows = {path: [] for path in paths}
    for path in paths:
        set_submodule(model, path, Capture(modules[path], rows[path]), modules)
    try:
        run()
    finally:
        for path in paths:
            set_submodule(model, path, modules[path], modules)
    return {path: np.concatenate(r) for path, r in rows.items()}
