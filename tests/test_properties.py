"""Property tests over shapes, sparsities and dtypes: the format round-trips and the op matches numpy."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jax_flashllm as jf
from jax_flashllm import _constants as C
from reference import DTYPES, assert_close_to_reference

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):
    m = draw(st.integers(1, 300))
    k = draw(st.integers(1, 200))
    n = draw(st.integers(1, 20))
    sparsity = draw(st.sampled_from([0.0, 0.5, 0.8, 0.95, 1.0]))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    return m, k, n, sparsity, dtype, seed


def _make(m, k, n, sparsity, dtype, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, k)).astype(np.float32)
    w[rng.random((m, k)) < sparsity] = 0
    x = rng.standard_normal((n, k)).astype(dtype)
    return w.astype(dtype), x


@SETTINGS
@given(problems())
def test_format_roundtrip_and_invariants(p):
    w, _ = _make(*p)
    s = jf.SparseMatrix.from_dense(w).validate()
    np.testing.assert_array_equal(np.asarray(s.to_dense()), w)
    counts = np.diff(s.tile_offsets)
    assert (counts % C.NNZ_ALIGN == 0).all() and (counts <= C.TILE_ELEMS).all()
    assert s.nnz == np.count_nonzero(w)


@SETTINGS
@given(problems())
def test_sparse_dense_matches_numpy(p):
    w, x = _make(*p)
    assert_close_to_reference(jf.sparse_dense(x, jf.SparseMatrix.from_dense(w)), x, w)
