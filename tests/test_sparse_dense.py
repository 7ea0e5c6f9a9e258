"""sparse_dense against a float64 numpy oracle, and its error handling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flashllm as jf
from reference import DTYPES, assert_close_to_reference, random_sparse


def _case(seed, m, k, sparsity, dtype):
    rng = np.random.default_rng(seed)
    w = random_sparse(rng, (m, k), sparsity, dtype)
    return rng, w, jf.SparseMatrix.from_dense(w, format="tiled_csl")


@pytest.mark.parametrize("n", [1, 2, 7, 8, 16, 33, 100])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_matches_reference_for_every_n(n, dtype):
    rng, w, s = _case(n, 300, 200, 0.8, dtype)
    x = rng.standard_normal((n, 200)).astype(dtype)
    assert_close_to_reference(jf.sparse_dense(x, s), x, w)


@pytest.mark.parametrize("m,k", [(1, 1), (1, 300), (300, 1), (128, 64), (129, 65), (700, 1000)])
def test_shapes_off_the_tile_grid(m, k):
    rng, w, s = _case(m * 7 + k, m, k, 0.7, DTYPES[1])
    x = rng.standard_normal((5, k)).astype(DTYPES[1])
    assert_close_to_reference(jf.sparse_dense(x, s), x, w)


@pytest.mark.parametrize("lead", [(), (3,), (2, 3), (2, 1, 4), (0,), (2, 0)])
def test_leading_dims(lead):
    rng, w, s = _case(11, 96, 80, 0.5, DTYPES[0])
    x = rng.standard_normal((*lead, 80)).astype(DTYPES[0])
    y = jf.sparse_dense(x, s)
    assert y.shape == (*lead, 96) and y.dtype == x.dtype
    if x.size:
        assert_close_to_reference(np.asarray(y).reshape(-1, 96), x.reshape(-1, 80), w)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_bias(dtype):
    rng, w, s = _case(12, 150, 70, 0.9, dtype)
    x = rng.standard_normal((9, 70)).astype(dtype)
    b = rng.standard_normal(150).astype(dtype)
    assert_close_to_reference(jf.sparse_dense(x, s, b), x, w, b)


def test_empty_and_dense_tiles_and_special_values():
    w = np.zeros((256, 128), np.float32)
    w[:128, :64] = np.random.default_rng(13).standard_normal((128, 64))  # one fully dense tile
    w[200, 100] = np.inf
    s = jf.SparseMatrix.from_dense(w.astype(np.float16))
    x = np.ones((3, 128), np.float16)
    y = np.asarray(jf.sparse_dense(x, s), np.float64)
    assert np.isinf(y[:, 200]).all()
    finite = np.ones(256, bool); finite[200] = False
    assert_close_to_reference(y[:, finite], x, w.astype(np.float16)[finite])


# --- errors -----------------------------------------------------------------------------------------
def test_dtype_mismatch_is_a_type_error():
    _, _, s = _case(14, 64, 64, 0.5, DTYPES[1])
    with pytest.raises(TypeError, match="cast"):
        jf.sparse_dense(np.ones((2, 64), np.float16), s)
    with pytest.raises(TypeError, match="cast"):
        jax.jit(jf.sparse_dense)(jnp.ones((2, 64), jnp.float32), s)


def test_k_mismatch_and_rank_errors_at_trace_time():
    _, _, s = _case(15, 64, 64, 0.5, DTYPES[1])
    with pytest.raises(ValueError, match="features"):
        jax.jit(jf.sparse_dense).trace(jnp.ones((2, 63), jnp.bfloat16), s)
    with pytest.raises(ValueError, match="scalar"):
        jf.sparse_dense(jnp.ones((), jnp.bfloat16), s)
    with pytest.raises(ValueError, match="bias"):
        jf.sparse_dense(jnp.ones((2, 64), jnp.bfloat16), s, jnp.ones(63, jnp.bfloat16))
    with pytest.raises(TypeError, match="SparseMatrix"):
        jf.sparse_dense(jnp.ones((2, 64), jnp.bfloat16), np.ones((64, 64)))


def test_primitive_shape_rule_errors():
    from jax_flashllm.primitive import spmm
    _, _, s = _case(16, 64, 64, 0.5, DTYPES[0])
    x = jnp.ones((2, 64), jnp.float16)
    with pytest.raises(ValueError, match="tile_offsets"):
        spmm(x, s.values, s.locations, s.tile_offsets[:-1], m=64, k=64)
    with pytest.raises(TypeError, match="uint16"):
        spmm(x, s.values, s.locations.astype(jnp.int32), s.tile_offsets, m=64, k=64)
    with pytest.raises(ValueError, match="index of shape"):
        spmm(x, s.values, s.locations[:-8], s.tile_offsets, m=64, k=64)


def test_malformed_arrays_inside_jit_are_an_error_not_a_crash():
    # Arrays that bypass validation (pytree unflatten) reach the handler; it must refuse them.
    _, _, s = _case(17, 200, 100, 0.5, DTYPES[0])
    bad_offsets = np.array(s.tile_offsets)
    bad_offsets[1] = bad_offsets[2] + 8
    bad = jax.tree.unflatten(jax.tree.structure(s), [s.values, s.locations, bad_offsets])
    with pytest.raises(Exception, match="malformed SparseMatrix"):
        jax.block_until_ready(jf.sparse_dense(np.ones((2, 100), np.float16), bad))
