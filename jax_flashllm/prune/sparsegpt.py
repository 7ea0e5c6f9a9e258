"""SparseGPT (Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
ICML 2023), following the paper's Algorithm 1 and its reference code (IST-DASLab/sparsegpt):

- H = 2 X^T X / T over the layer's calibration inputs; dead inputs (H_jj = 0) get H_jj = 1 and zero weights;
  H += damp * mean(diag H) * I.
- U = the upper Cholesky factor of H^-1, so that row i of U holds the OBS update of the columns after i.
- Columns left to right in blocks of ``blocksize``: a block's mask is chosen when the block is reached
  (unstructured: the lowest w^2 / U_jj^2 over the whole M x blocksize block; N:M: per row within each group
  of m columns, chosen when the group is reached), each pruned weight's error is spread over the columns
  after it within the block, and the block's accumulated error updates all later columns at once (the lazy
  batch update).

Everything runs in one jit (float32); memory O(K^2 + M K).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jax_flashllm.prune.masks import check_sparsity, keep_largest, parse_nm

__all__ = ["sparsegpt", "hessian", "inverse_hessian_factor"]


@jax.jit
def hessian(x: jax.Array) -> jax.Array:
    """x: (T, K) calibration inputs, any float dtype -> H = 2 X^T X / T, (K, K) float32.

    To stream calibration data, sum ``hessian(x_i) * T_i`` over the pieces and divide by the total T."""
    x = x.astype(jnp.float32)
    return (2.0 / x.shape[0]) * jnp.einsum("TK,TJ->KJ", x, x, precision=jax.lax.Precision.HIGHEST)


_hessian = hessian  # sparsegpt's `hessian=` argument shadows the function's name


# Diagonal block of the blocked factorisation. Through LAPACK (scipy's OpenBLAS) the K = 3072 factor took
# 1.2-2.8 s on the 2 shared cores, its threads contending with XLA's; blocked, XLA's dot does the K^3 / 3
# work and the 256-wide diagonal blocks are two short loops each: 0.2-0.5 s.
_FACTOR_BLOCK = 256


def _small_inverse_cholesky(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """a: (b, b) float32 symmetric positive definite -> (L, L^-1), a = L L^T, by column and row loops."""
    b = a.shape[0]
    idx = jnp.arange(b)

    def column(j, carry):
        a, lower = carry
        d = jnp.sqrt(a[j, j])
        below = jnp.where(idx > j, a[:, j] / d, 0.0)
        a = a - below[:, None] * below[None, :]
        return a, lower.at[:, j].set(jnp.where(idx == j, d, below))

    _, lower = jax.lax.fori_loop(0, b, column, (a, jnp.zeros_like(a)))
    eye = jnp.eye(b, dtype=a.dtype)

    def row(i, inverse):
        # Rows >= i of the inverse are still zero, so the whole row of L can be used.
        return inverse.at[i].set((eye[i] - lower[i] @ inverse) / lower[i, i])

    return lower, jax.lax.fori_loop(0, b, row, jnp.zeros_like(a))


def _blocked_inverse_cholesky(a: jax.Array) -> jax.Array:
    """a: (K, K) float32 symmetric positive definite -> L^-1 (K, K) lower triangular, a = L L^T.

    Right-looking blocked Cholesky, then the inverse block row by block row (X_ii = L_ii^-1,
    X_i,<i = -X_ii L_i,<i X_<i,<i). A non-positive pivot gives NaN (sparsegpt reports it).
    """
    k = a.shape[0]
    edges = list(range(0, k, _FACTOR_BLOCK)) + [k]
    hp = jax.lax.Precision.HIGHEST
    panels, inverses = [], []
    for a0, a1 in zip(edges[:-1], edges[1:]):
        _, inv = _small_inverse_cholesky(a[a0:a1, a0:a1])
        # The columns of L below this block, and the Schur complement left for the next blocks.
        below = jnp.matmul(a[a1:, a0:a1], inv.T, precision=hp)
        a = a.at[a1:, a1:].add(-jnp.matmul(below, below.T, precision=hp))
        panels.append(below)
        inverses.append(inv)
    out = jnp.zeros_like(a)
    for i, (a0, a1) in enumerate(zip(edges[:-1], edges[1:])):
        out = out.at[a0:a1, a0:a1].set(inverses[i])
        if i:
            # L_i,<i, gathered from the panels of the blocks before i.
            left = jnp.concatenate([panels[j][a0 - edges[j + 1]:a1 - edges[j + 1]] for j in range(i)], axis=1)
            part = jnp.matmul(left, out[:a0, :a0], precision=hp)
            out = out.at[a0:a1, :a0].set(-jnp.matmul(inverses[i], part, precision=hp))
    return out


def inverse_hessian_factor(h: jax.Array, damp: float) -> tuple[jax.Array, jax.Array]:
    """h: (K, K) float32 -> (U (K, K) upper triangular with U^T U = (H')^-1, dead (K,) bool), where H' is h
    with dead inputs' diagonal set to 1 and damp * mean(diag) added to the diagonal."""
    k = h.shape[0]
    eye = jnp.eye(k, dtype=jnp.float32)
    dead = jnp.diag(h) == 0
    h = h + jnp.diag(dead.astype(jnp.float32))
    h = h + damp * jnp.mean(jnp.diag(h)) * eye
    # The reference factors twice (H -> H^-1 -> chol). With J the order-reversing permutation and
    # J H J = L L^T, U = J L^-1 J is upper triangular and U^T U = J (J H J)^-1 J = H^-1: one Cholesky and one
    # triangular inverse, about half the flops at K = 4096.
    inverse = _blocked_inverse_cholesky(jax.lax.optimization_barrier(h)[::-1, ::-1])
    return jnp.triu(jax.lax.optimization_barrier(inverse)[::-1, ::-1]), dead


# The lazy update of a block touches every later column; running the blocks in a few segments, each on the
# columns from its first block on, skips most of the columns already final (full width: 2 M K^2 flops; four
# segments: 1.25 M K^2).
_SEGMENTS = 4


def _blocks(w, u, k, count, *, sparsity, nm, blocksize):
    """Prune the first ``count`` blocks of w (M, kp) in order and apply their updates to all later columns;
    u (kp, kp) is w's factor, columns >= k are padding."""
    rows, kp = w.shape
    cols = jnp.arange(kp)

    def block(b, w):
        i1 = b * blocksize
        w1 = jax.lax.dynamic_slice(w, (0, i1), (rows, blocksize))
        u1 = jax.lax.dynamic_slice(u, (i1, i1), (blocksize, blocksize))
        d1 = jnp.diag(u1)
        if nm is None:
            real = jax.lax.dynamic_slice(cols, (i1,), (blocksize,)) < k
            scores = jnp.where(real[None, :], w1 * w1 / (d1 * d1)[None, :], jnp.inf)
            count = rows * jnp.minimum(blocksize, k - i1)
            pruned = jnp.round(sparsity * count.astype(jnp.float32)).astype(jnp.int32)
            keep1 = keep_largest(scores.reshape(1, -1), pruned).reshape(rows, blocksize)
        else:
            keep1 = jnp.ones((rows, blocksize), bool)

        def column(i, carry):
            w1, keep1, err1 = carry
            if nm is not None:
                n, m = nm
                group = jax.lax.dynamic_slice(w1, (0, i), (rows, m))
                dg = jax.lax.dynamic_slice(d1, (i,), (m,))
                chosen = keep_largest(group * group / (dg * dg)[None, :], m - n)
                keep1 = jnp.where(i % m == 0, jax.lax.dynamic_update_slice(keep1, chosen, (0, i)), keep1)
            col = w1[:, i]
            q = jnp.where(keep1[:, i], col, 0.0)
            err = (col - q) / u1[i, i]
            # u1 is upper triangular: row i changes only columns >= i; column i itself becomes q.
            w1 = (w1 - err[:, None] * u1[i][None, :]).at[:, i].set(q)
            return w1, keep1, err1.at[:, i].set(err)

        err1 = jnp.zeros((rows, blocksize), jnp.float32)
        w1, _, err1 = jax.lax.fori_loop(0, blocksize, column, (w1, keep1, err1))
        w = jax.lax.dynamic_update_slice(w, w1, (0, i1))
        later = jax.lax.dynamic_slice(u, (i1, 0), (blocksize, kp))
        update = jnp.einsum("MB,BK->MK", err1, later, precision=jax.lax.Precision.HIGHEST)
        return w - jnp.where(cols[None, :] >= i1 + blocksize, update, 0.0)

    return jax.lax.fori_loop(0, count, block, w)


# sparsity is traced: OWL gives every decoder layer its own, and one program per shape serves them all.
@functools.partial(jax.jit, static_argnames=("nm", "blocksize", "damp"))
def _sparsegpt(w, h, sparsity, *, nm, blocksize, damp):
    rows, k = w.shape
    u, dead = inverse_hessian_factor(h, damp)
    w = jnp.where(dead[None, :], 0.0, w.astype(jnp.float32))
    # Pad K to whole blocks: zero weights over an identity factor produce no error and are never chosen.
    kp = -(-k // blocksize) * blocksize
    w = jnp.pad(w, ((0, 0), (0, kp - k)))
    u = jax.scipy.linalg.block_diag(u, jnp.eye(kp - k, dtype=jnp.float32)) if kp > k else u
    nb = kp // blocksize
    bounds = sorted({round(i * nb / min(_SEGMENTS, nb)) for i in range(min(_SEGMENTS, nb) + 1)})
    for b0, b1 in zip(bounds[:-1], bounds[1:]):
        c0 = b0 * blocksize
        # This segment's blocks, on the columns from c0 on (the earlier ones are final).
        done = _blocks(w[:, c0:], u[c0:, c0:], k - c0, b1 - b0, sparsity=sparsity, nm=nm, blocksize=blocksize)
        w = w.at[:, c0:].set(done)
    return w[:, :k]


def sparsegpt(w: jax.Array, x: jax.Array | None, sparsity: float | None, *, nm=None, blocksize: int = 128,
              damp: float = 0.01, hessian: jax.Array | None = None) -> jax.Array:
    """SparseGPT-pruned and updated w. w: (M, K) float (any dtype); x: (T, K) this layer's calibration inputs,
    or None with ``hessian`` (K, K) float32 = 2 X^T X / T accumulated elsewhere. Returns (M, K) in w's dtype
    (computed in float32).

    Unstructured: each M x blocksize block prunes exactly round(sparsity * M * block width) weights (the
    reference prunes one more, ``<=`` the threshold); ties in position order. nm=(n, m) or "n:m": keep n of
    every m consecutive inputs per row (m must divide K and blocksize); sparsity may then be None.
    Raises ValueError when H + damp is not positive definite (raise damp).
    """
    sparsity = check_sparsity(sparsity, nm)
    w = jnp.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D (M, K) weight, got shape {w.shape}")
    k = w.shape[1]
    if hessian is None:
        if x is None:
            raise ValueError("sparsegpt needs the calibration inputs x or their hessian")
        if x.ndim != 2 or x.shape[1] != k or x.shape[0] == 0:
            raise ValueError(f"x must be (T > 0, {k}) for a weight of shape {w.shape}, got {x.shape}")
        h = _hessian(x)
    else:
        h = jnp.asarray(hessian, jnp.float32)
        if h.shape != (k, k):
            raise ValueError(f"hessian must be ({k}, {k}), got {h.shape}")
    if nm is not None:
        nm = parse_nm(nm)
        if k % nm[1] or blocksize % nm[1]:
            raise ValueError(f"{nm[0]}:{nm[1]} pruning needs m={nm[1]} to divide in_features {k} and "
                             f"blocksize {blocksize}")
    out = _sparsegpt(w, h, jnp.float32(sparsity), nm=nm, blocksize=int(blocksize), damp=float(damp))
    if not bool(jnp.all(jnp.isfinite(out))):
        raise ValueError("SparseGPT: the damped Hessian is not positive definite (non-finite update); "
                         f"raise damp (now {damp}) or use more calibration tokens")
    return out.astype(w.dtype)
