"""Wanda and SparseGPT against float64 numpy oracles, exact N:M structure, and the reconstruction-error
ordering sparsegpt < wanda < magnitude on layers whose inputs have outlier features."""

import jax.numpy as jnp
import numpy as np
import pytest

import prune_reference as ref
from jax_flashllm import prune


def _layer(seed, m=24, k=96, t=256, outliers=0):
    """A random layer and calibration inputs with correlated features (as LLM activations are), and
    `outliers` features 20x larger."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, k)).astype(np.float32)
    mixing = np.eye(k) + rng.standard_normal((k, k)) / np.sqrt(k)
    x = (rng.standard_normal((t, k)) @ mixing).astype(np.float32)
    if outliers:
        x[:, rng.choice(k, outliers, replace=False)] *= 20.0
    return w, x


@pytest.mark.parametrize("sparsity,nm", [(0.5, None), (0.7, None), (None, (2, 4)), (None, (4, 8))])
def test_wanda_matches_float64_reference(sparsity, nm):
    w, x = _layer(0, outliers=3)
    got = np.asarray(prune.wanda(w, x, sparsity, nm=nm))
    np.testing.assert_array_equal(got, ref.wanda(w, x, sparsity, nm).astype(np.float32))


@pytest.mark.parametrize("sparsity,nm,blocksize", [(0.5, None, 32), (0.6, None, 128), (0.5, None, 40),
                                                   (None, (2, 4), 32), (None, (4, 8), 64)])
def test_sparsegpt_matches_float64_reference(sparsity, nm, blocksize):
    w, x = _layer(1, outliers=2)
    expected, keep = ref.sparsegpt(w, x, sparsity, nm, blocksize)
    got = np.asarray(prune.sparsegpt(w, x, sparsity, nm=nm, blocksize=blocksize))
    np.testing.assert_array_equal(got != 0, keep)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())


def test_sparsegpt_dead_inputs_and_precomputed_hessian():
    w, x = _layer(2)
    x[:, [3, 50]] = 0.0
    expected, _ = ref.sparsegpt(w, x, 0.5, None, 32)
    h = prune.hessian(x[:100]) * 100 + prune.hessian(x[100:]) * (len(x) - 100)  # streamed in two pieces
    got = np.asarray(prune.sparsegpt(w, None, 0.5, blocksize=32, hessian=h / len(x)))
    assert not got[:, [3, 50]].any()
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("nm", [(2, 4), (4, 8), (1, 4)])
def test_nm_structure_is_exact(method, nm):
    w, x = _layer(3, m=16, k=64)
    fn = getattr(prune, method)
    got = np.asarray(fn(jnp.asarray(w, jnp.bfloat16), x, None, nm=nm))
    assert got.dtype == jnp.bfloat16
    n, m = nm
    kept = (got != 0).reshape(16, 64 // m, m).sum(axis=-1)
    np.testing.assert_array_equal(kept, np.full_like(kept, n))


@pytest.mark.parametrize("sparsity", [0.5, 0.6, 0.8])
def test_unstructured_counts_are_exact(sparsity):
    w, x = _layer(4, m=32, k=128)
    assert (np.asarray(prune.wanda(w, x, sparsity)) == 0).sum(axis=1).tolist() == [round(sparsity * 128)] * 32
    got = np.asarray(prune.sparsegpt(w, x, sparsity, blocksize=64))
    assert [(got[:, b:b + 64] == 0).sum() for b in (0, 64)] == [round(sparsity * 32 * 64)] * 2


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("sparsity,nm", [(0.5, None), (None, (2, 4))])
def test_reconstruction_error_ordering_with_outlier_features(seed, sparsity, nm):
    w, x = _layer(10 + seed, m=64, k=128, t=512, outliers=4)
    if nm is None:
        magnitude = prune.prune(w, sparsity, "magnitude")
    else:
        magnitude = np.where(np.asarray(prune.nm_mask(jnp.abs(w), nm)), w, 0.0)
    errors = {name: ref.reconstruction_error(w, p, x) for name, p in [
        ("sparsegpt", prune.sparsegpt(w, x, sparsity, nm=nm)), ("wanda", prune.wanda(w, x, sparsity, nm=nm)),
        ("magnitude", magnitude)]}
    # Measured on such layers: sparsegpt / wanda about 0.75 unstructured, 0.63 at 2:4; wanda / magnitude
    # under 0.1. The margins leave room for rounding but not for a method that stops working.
    assert errors["sparsegpt"] < 0.85 * errors["wanda"], errors
    assert errors["wanda"] < 0.5 * errors["magnitude"], errors


def test_bad_arguments():
    w, x = _layer(5, m=8, k=32)
    with pytest.raises(ValueError, match="contradicts"):
        prune.wanda(w, x, 0.3, nm=(2, 4))
    with pytest.raises(ValueError, match="divide"):
        prune.sparsegpt(w, x, None, nm=(2, 3))
    with pytest.raises(ValueError, match=r"\(T > 0, 32\)"):
        prune.sparsegpt(w, x[:, :16], 0.5)
    with pytest.raises(ValueError, match="2:4"):
        prune.parse_nm("2-4")
    with pytest.raises(ValueError, match="sparsity"):
        prune.wanda(w, x, None)


@pytest.mark.parametrize("prune_count", [0, 1, 7, 16, 31, 32])
def test_keep_largest_counts_and_ties_by_position(prune_count):
    rng = np.random.default_rng(6)
    scores = rng.integers(0, 4, (5, 32)).astype(np.float32)  # many ties
    keep = np.asarray(prune.keep_largest(jnp.asarray(scores), prune_count))
    for row in range(5):
        order = np.argsort(scores[row], kind="stable")
        expected = np.ones(32, bool)
        expected[order[:prune_count]] = False
        np.testing.assert_array_equal(keep[row], expected)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("prune_count", [0, 1, 150, 299, 300])
def test_keep_largest_by_bisection_on_long_rows(prune_count, dtype):
    # Rows of 300 take the bit bisection; ties, signed zeros, negatives and infinities as a sort orders them.
    rng = np.random.default_rng(7)
    scores = rng.integers(-3, 4, (4, 300)).astype(np.float32) * rng.choice([0.5, 1.0], (4, 300))
    scores[0, :40] = -0.0
    scores[1, ::7] = np.inf
    scores[2, 5:9] = -np.inf
    scores[3] = rng.standard_normal(300)
    scores = np.asarray(jnp.asarray(scores, dtype).astype(jnp.float32))
    keep = np.asarray(prune.keep_largest(jnp.asarray(scores, dtype), prune_count))
    for row in range(4):
        expected = np.ones(300, bool)
        expected[np.argsort(scores[row], kind="stable")[:prune_count]] = False
        np.testing.assert_array_equal(keep[row], expected)


def test_kth_smallest_equals_the_sorted_value():
    from jax_flashllm.prune.masks import _kth_smallest

    rng = np.random.default_rng(8)
    scores = (rng.standard_normal((3, 500)) * 10.0 ** rng.integers(-30, 30, (3, 500))).astype(np.float32)
    scores[0, :3] = [np.nan, -np.nan, np.inf]
    index = np.array([[0], [250], [499]], np.int32)
    for col in (0, 17, 250, 496, 499):
        got = np.asarray(_kth_smallest(jnp.asarray(scores), jnp.asarray(index * 0 + col)))
        np.testing.assert_array_equal(got[:, 0], np.sort(scores, axis=-1)[:, col])
    got = np.asarray(_kth_smallest(jnp.asarray(scores), jnp.asarray(index)))
    np.testing.assert_array_equal(got[:, 0], np.sort(scores, axis=-1)[np.arange(3), index[:, 0]])


@pytest.mark.parametrize("block", [32, 256])
def test_inverse_hessian_factor_in_blocks_against_float64(block, monkeypatch):
    # K = 100 in blocks of 32: four diagonal blocks, the last one short; one dead input.
    import importlib

    sparsegpt_module = importlib.import_module("jax_flashllm.prune.sparsegpt")
    monkeypatch.setattr(sparsegpt_module, "_FACTOR_BLOCK", block)
    _, x = _layer(9, k=100, t=400)
    x[:, 17] = 0.0
    h = (2.0 * x.T.astype(np.float64) @ x / x.shape[0])
    u, dead = sparsegpt_module.inverse_hessian_factor(jnp.asarray(h, jnp.float32), 0.01)
    u, dead = np.asarray(u, np.float64), np.asarray(dead)
    assert dead.tolist() == [i == 17 for i in range(100)]
    h[17, 17] = 1.0
    h += 0.01 * np.mean(np.diag(h)) * np.eye(100)
    np.testing.assert_array_equal(np.tril(u, -1), 0.0)
    expected = np.linalg.cholesky(np.linalg.inv(h)).T
    np.testing.assert_allclose(u, expected, atol=2e-5 * np.abs(expected).max())


def test_sparsegpt_rejects_an_indefinite_hessian():
    w, _ = _layer(10, k=40)
    h = np.eye(40, dtype=np.float32)
    h[3, 3] = -1.0
    with pytest.raises(ValueError, match="positive definite"):
        prune.sparsegpt(w, None, 0.5, hessian=h, damp=0.0)
