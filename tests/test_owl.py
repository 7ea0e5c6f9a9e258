"""OWL: the layer sparsities against a float64 transcription of the reference's allocation (mean kept, spread
2 lambda, more outliers -> fewer pruned), the outlier ratio against numpy, and prune_model / the CLI with OWL."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import prune_reference as ref
from jax_flashllm import prune
from jax_flashllm.models import OPTConfig, OPTForCausalLM
from jax_flashllm.prune.owl import outlier_ratio, owl_sparsities, parse_owl

_SUBLAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2")


def _reference_sparsities(ratios, target, lam):
    # As the reference code allocates: ratios rescaled to [0, 2 lambda], then densities centred on 1 - target.
    r = np.asarray(ratios, np.float64)
    density = (r - r.min()) * (1.0 / (r.max() - r.min()) * lam * 2)
    density = density - np.mean(density) + (1.0 - target)
    return 1.0 - density


@pytest.mark.parametrize("target,lam", [(0.5, 0.08), (0.7, 0.05), (0.6, 0.2)])
def test_allocation_keeps_the_mean_and_spreads_two_lambda(target, lam):
    ratios = np.random.default_rng(int(target * 10)).random(12) * 0.05
    got = owl_sparsities(ratios, target, lam)
    np.testing.assert_allclose(got, _reference_sparsities(ratios, target, lam), rtol=0, atol=1e-12)
    assert abs(got.mean() - target) < 1e-12
    assert got.max() - got.min() == pytest.approx(2 * lam, abs=1e-12)
    assert np.all(np.abs(got - target) <= 2 * lam + 1e-12)
    # More outliers, fewer pruned weights: the order of the sparsities reverses that of the ratios.
    np.testing.assert_array_equal(np.argsort(got), np.argsort(-ratios))


def test_allocation_edge_cases():
    np.testing.assert_array_equal(owl_sparsities([0.01, 0.01, 0.01], 0.5, 0.08), [0.5, 0.5, 0.5])
    np.testing.assert_allclose(owl_sparsities([0.0, 1.0], 0.5, 0.08), [0.58, 0.42], atol=1e-12)
    with pytest.raises(ValueError, match="outside"):
        owl_sparsities([0.0, 1.0], 0.95, 0.08)
    assert parse_owl(False) is None and parse_owl(True) == (5.0, 0.08) and parse_owl((3, 0.1)) == (3.0, 0.1)
    with pytest.raises(ValueError, match="M > 0"):
        parse_owl((0, 0.1))


def test_outlier_ratio_against_numpy():
    rng = np.random.default_rng(3)
    weights = [rng.standard_normal((8, 16)), rng.standard_normal((24, 16)) * 3, rng.standard_normal((16, 24))]
    norms = [rng.random(16) * 2, rng.random(16), rng.random(24) * 10]
    weights[0][2, 3] = 400.0
    scores = np.concatenate([(np.abs(w) * n[None, :]).ravel() for w, n in zip(weights, norms)])
    for m in (1.0, 2.5, 5.0):
        expected = np.mean(scores > m * scores.mean())
        assert outlier_ratio(weights, norms, m) == pytest.approx(expected, abs=1e-12)


def _model():
    return OPTForCausalLM(OPTConfig.tiny(num_hidden_layers=3), rngs=nnx.Rngs(5))


@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "magnitude"])
def test_prune_model_with_owl(method):
    calib = np.random.default_rng(4).integers(0, 96, (6, 16))
    dense, model = _model(), _model()
    report = prune.prune_model(model, calib, 0.6, method=method, owl=(2.0, 0.05), encode=False, blocksize=16)
    targets = np.asarray(report.layer_sparsities)
    assert abs(targets.mean() - 0.6) < 1e-12 and targets.max() - targets.min() == pytest.approx(0.1)

    # Outlier ratios of the dense model, from its Linears' inputs captured in float64.
    paths = [("layers", i) + tuple(name.split(".")) for i in range(3) for name in _SUBLAYERS]
    inputs = ref.linear_inputs(dense, paths, lambda: dense(jnp.asarray(calib)))
    modules = dict(nnx.iter_graph(dense))
    for i, ratio in enumerate(report.outlier_ratios):
        scores = np.concatenate([(np.abs(np.asarray(modules[p].kernel[...], np.float64)).T
                                  * np.sqrt((inputs[p] ** 2).sum(0))[None, :]).ravel() for p in paths[6 * i:6 * i + 6]])
        assert ratio == pytest.approx(np.mean(scores > 2.0 * scores.mean()), abs=1e-9)
    for r in report.layers:
        layer = int(r.name.split(".")[1])
        assert r.sparsity == pytest.approx(targets[layer], abs=0.02), r.name
    assert "OWL" in str(report)


def test_owl_rejects_nm():
    with pytest.raises(ValueError, match="N:M"):
        prune.prune_model(_model(), np.zeros((2, 8), int), None, nm="2:4", owl=True)
