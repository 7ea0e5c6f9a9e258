"""sparse_dense under jit, vmap, grad/jvp, scan and while_loop, against dense references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flashllm as jf
from reference import DTYPES, assert_close_to_reference, random_sparse

M, K = 200, 150


@pytest.fixture(params=DTYPES, ids=lambda d: d.name)
def case(request, kernel_format):
    dtype = request.param
    rng = np.random.default_rng(0)
    w = random_sparse(rng, (M, K), 0.75, dtype)
    x = rng.standard_normal((6, K)).astype(dtype)
    return w, jf.SparseMatrix.from_dense(w, format=kernel_format), x


def test_jit_equals_eager(case):
    w, s, x = case
    np.testing.assert_array_equal(np.asarray(jax.jit(jf.sparse_dense)(x, s)), np.asarray(jf.sparse_dense(x, s)))


def test_vmap_over_activations_folds_into_n(case):
    w, s, x = case
    xb = x.reshape(3, 2, K)
    y = jax.vmap(lambda xi: jf.sparse_dense(xi, s))(xb)
    assert y.shape == (3, 2, M)
    assert_close_to_reference(np.asarray(y).reshape(6, M), x, w)
    yy = jax.vmap(jax.vmap(lambda xi: jf.sparse_dense(xi, s)), in_axes=1, out_axes=1)(xb)
    np.testing.assert_array_equal(np.asarray(yy), np.asarray(y))


def test_vmap_over_weights(case):
    w, s, x = case
    w2 = (w.astype(np.float32) * 2).astype(w.dtype)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), s, jf.SparseMatrix.from_dense(w2, format=s.format))
    y = jax.vmap(lambda wi: jf.sparse_dense(x, wi))(stacked)
    assert_close_to_reference(y[0], x, w)
    assert_close_to_reference(y[1], x, w2)


def _loss_dense(x, wd):
    return jnp.sum(jnp.dot(x, wd.T, preferred_element_type=jnp.float32) ** 2)


def test_grad_wrt_x(case):
    w, s, x = case
    g = jax.grad(lambda xx: jnp.sum(jf.sparse_dense(xx, s).astype(jnp.float32) ** 2))(jnp.asarray(x))
    y = jnp.dot(x, w.T, preferred_element_type=jnp.float32).astype(x.dtype).astype(jnp.float32)
    ref = 2 * np.asarray(y, np.float64) @ w.astype(np.float64)
    err = np.abs(np.asarray(g, np.float64) - ref).max()
    assert err <= 2e-2 * np.abs(ref).max(), err


def test_grad_wrt_values_is_the_sampled_product(case):
    w, s, x = case
    gy = np.random.default_rng(1).standard_normal((6, M)).astype(np.float32)
    gv = jax.grad(lambda v: jnp.sum(jf.sparse_dense(x, s.replace_values(v)).astype(jnp.float32) * gy))(s.values)
    rows, cols, valid = (np.asarray(a) for a in s.entry_coords())
    inside = valid & (rows < M) & (cols < K)
    ref = np.einsum("np,np->p", gy[:, rows[inside]].astype(np.float64), x[:, cols[inside]].astype(np.float64))
    got = np.asarray(gv, np.float64)[inside]
    assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max()
    # The padded positions outside (M, K) see zero activations / cotangents; bitmap padding values stand
    # for no position and get no gradient.
    assert not np.asarray(gv, np.float64)[~inside].any()


def test_jvp_is_bilinear(case):
    w, s, x = case
    dx = np.ones_like(x)
    y, dy = jax.jvp(lambda xx: jf.sparse_dense(xx, s), (jnp.asarray(x),), (jnp.asarray(dx),))
    assert_close_to_reference(dy, dx, w)
    _, dyv = jax.jvp(lambda v: jf.sparse_dense(x, s.replace_values(v)), (s.values,), (s.values,))
    np.testing.assert_array_equal(np.asarray(dyv), np.asarray(y))


def test_inside_jitted_while_loop_and_scan(case):
    w, s, x = case
    sq = jf.SparseMatrix.from_dense(random_sparse(np.random.default_rng(2), (K, K), 0.8, x.dtype) * 0.05,
                                    format=s.format)

    @jax.jit
    def loop(x0, s):
        return jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, jf.sparse_dense(c[1], s)), (0, x0))[1]

    @jax.jit
    def scan(x0, s):
        return jax.lax.scan(lambda h, _: (jf.sparse_dense(h, s), None), x0, None, length=3)[0]

    h = jnp.asarray(x)
    for _ in range(3):
        h = jf.sparse_dense(h, sq)
    np.testing.assert_array_equal(np.asarray(loop(x, sq)), np.asarray(h))
    np.testing.assert_array_equal(np.asarray(scan(x, sq)), np.asarray(h))


def test_grad_through_scan(case):
    w, s, x = case
    f = lambda xx: jnp.sum(jax.lax.scan(lambda c, _: (c, jf.sparse_dense(c, s)), xx, None, length=2)[1]
                           .astype(jnp.float32))
    g = jax.jit(jax.grad(f))(jnp.asarray(x))
    ref = 2 * np.ones((6, M)) @ w.astype(np.float64)
    assert np.abs(np.asarray(g, np.float64) - ref).max() <= 2e-2 * np.abs(ref).max()


def test_cuda_lowering_is_emitted_without_a_gpu(case):
    w, s, x = case
    text = jax.jit(jf.sparse_dense).trace(x, s).lower(lowering_platforms=("cuda",)).as_text()
    assert "flashllm_spmm_cuda" in text
    assert "flashllm_spmm_cpu" not in text
    cpu_text = jax.jit(jf.sparse_dense).trace(x, s).lower(lowering_platforms=("cpu",)).as_text()
    assert "flashllm_spmm_cpu" in cpu_text


def test_vmap_keeps_the_per_example_workspace_shape(case, monkeypatch):
    # On a GPU the folded B*N problem may choose another split-K than the per-example N; the batched
    # workspace result must still have the per-example shape that bind promised.
    from jax_flashllm import primitive

    w, s, x = case
    monkeypatch.setattr(primitive, "choose_split_k", lambda m, k, n: 1 + (n > 6))
    xb = jnp.asarray(x.reshape(2, 3, K))
    ys, ws = jax.vmap(lambda xi: primitive.flashllm_spmm_p.bind(
        xi, s.values, s.index, s.tile_offsets, m=M, k=K, split_k=2, format=s.format_id))(xb)
    assert ws.shape == (2, primitive.workspace_size(M, 3, 2))
    assert_close_to_reference(np.asarray(ys).reshape(6, M), x, w)
