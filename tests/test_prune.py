"""jax_flashllm.prune: exact counts, the largest magnitudes kept, deterministic tie-breaking, seeded masks."""

import numpy as np
import pytest

from jax_flashllm import prune


def _brute_force_keep(scores, k):
    """Keep-mask pruning the k smallest scores, ties broken by position (stable sort)."""
    order = np.argsort(scores, kind="stable")
    keep = np.ones(scores.size, bool)
    keep[order[:k]] = False
    return keep


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.8, 0.9, 1.0])
def test_magnitude_per_layer_matches_sorting(sparsity):
    w = np.random.default_rng(0).standard_normal((37, 53)).astype(np.float32)
    keep = prune.magnitude_mask(w, sparsity)
    k = round(sparsity * w.size)
    assert keep.sum() == w.size - k
    np.testing.assert_array_equal(keep.ravel(), _brute_force_keep(np.abs(w).ravel(), k))


def test_magnitude_per_row_prunes_each_row_equally():
    w = np.random.default_rng(1).standard_normal((16, 40)).astype(np.float32)
    keep = prune.magnitude_mask(w, 0.75, per_row=True)
    np.testing.assert_array_equal(keep.sum(axis=1), np.full(16, 10))
    for row in range(16):
        np.testing.assert_array_equal(keep[row], _brute_force_keep(np.abs(w[row]), 30))


def test_ties_are_broken_by_position_and_deterministic():
    w = np.ones((4, 8), np.float32)
    w[0, 0] = 5.0
    keep = prune.magnitude_mask(w, 0.5)
    assert keep.sum() == 16
    # the 16 pruned are the first 16 ones in row-major order (skipping the large entry)
    expected = np.ones(32, bool)
    expected[1:17] = False
    np.testing.assert_array_equal(keep.ravel(), expected)
    np.testing.assert_array_equal(keep, prune.magnitude_mask(w.copy(), 0.5))


def test_random_mask_is_seeded_and_exact():
    a = prune.random_mask((64, 32), 0.8, seed=3)
    assert a.sum() == 64 * 32 - round(0.8 * 64 * 32)
    np.testing.assert_array_equal(a, prune.random_mask((64, 32), 0.8, seed=3))
    assert (a != prune.random_mask((64, 32), 0.8, seed=4)).any()


def test_prune_zeroes_outside_mask_and_keeps_dtype():
    w = np.random.default_rng(2).standard_normal((8, 8)).astype(np.float16)
    for method in prune.METHODS:
        p = prune.prune(w, 0.5, method, seed=1)
        assert p.dtype == w.dtype
        keep = prune.mask(w, 0.5, method, seed=1)
        np.testing.assert_array_equal(p[keep], w[keep])
        assert not p[~keep].any()


def test_bad_arguments():
    w = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="sparsity"):
        prune.magnitude_mask(w, 1.5)
    with pytest.raises(ValueError, match="unknown pruning method"):
        prune.mask(w, 0.5, "wanda")
    with pytest.raises(ValueError, match="2-D"):
        prune.magnitude_mask(np.ones(4), 0.5)
