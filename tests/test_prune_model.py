"""prune_model: sequential order (layer l calibrated on the pruned layers before it), scope, N:M structure,
the report's reconstruction errors, and the encoded model."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import prune_reference as ref
from jax_flashllm import SparseLinear, prune
from jax_flashllm.models import OPTConfig, OPTForCausalLM
from jax_flashllm.models.opt import _norm, mask_bias

_SUBLAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2")


def _get(model, dotted):
    for part in dotted.split("."):
        model = model[int(part)] if part.isdigit() else getattr(model, part)
    return model


@pytest.fixture(scope="module")
def calib():
    return np.random.default_rng(0).integers(0, 96, (5, 24))


def _model():
    return OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(1))


def test_layer_one_is_calibrated_on_the_pruned_layer_zero(calib):
    dense, model = _model(), _model()
    report = prune.prune_model(model, calib, 0.5, method="wanda", encode=False, batch_size=2)
    # Inputs of layer 1's q_proj: the embedding through the *pruned* layer 0, then layer 1's LayerNorm.
    ids = jnp.asarray(calib)
    t = ids.shape[1]
    x = model._embed(ids, jnp.broadcast_to(jnp.arange(t), ids.shape))
    x, _ = model.layers[0](x, mask_bias(jnp.tril(jnp.ones((t, t), bool))[None]))
    inputs = np.asarray(_norm(model.layers[1].self_attn_layer_norm, x)).reshape(-1, 32)
    w = np.asarray(dense.layers[1].self_attn.q_proj.kernel[...]).T
    got = np.asarray(model.layers[1].self_attn.q_proj.kernel[...]).T
    np.testing.assert_array_equal(got != 0, ref.wanda(w, inputs, 0.5) != 0)
    layer = {r.name: r for r in report.layers}["layers.1.self_attn.q_proj"]
    assert layer.error == pytest.approx(ref.reconstruction_error(w, got, inputs), rel=1e-3)
    # Out of scope: embeddings stay as they were.
    np.testing.assert_array_equal(model.embed_tokens.embedding[...], dense.embed_tokens.embedding[...])


@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "magnitude"])
def test_every_decoder_linear_is_pruned_two_of_four(method, calib):
    model = _model()
    report = prune.prune_model(model, calib, None, method=method, nm="2:4", encode=False, blocksize=16)
    assert [r.name for r in report.layers] == [f"layers.{i}.{s}" for i in range(2) for s in _SUBLAYERS]
    for r in report.layers:
        w = np.asarray(_get(model, r.name).kernel[...]).T
        assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all(), r.name
        assert r.sparsity == 0.5 and 0 < r.error < 1
    assert report.sparsity == 0.5


def test_sparsegpt_beats_magnitude_and_encoding_keeps_the_function(calib):
    errors = {}
    for method in ("sparsegpt", "magnitude"):
        model = _model()
        report = prune.prune_model(model, calib, 0.6, method=method, blocksize=16, encode=False)
        errors[method] = np.mean([r.error for r in report.layers])
    assert errors["sparsegpt"] < errors["magnitude"]
    encoded = nnx.clone(model)
    report = prune.prune_model(encoded, calib, 0.6, method="magnitude", encode=True)
    assert isinstance(encoded.layers[1].fc2, SparseLinear) and report.encoded is not None
    assert "layers.1.fc2" in str(report)
    dense_logits = np.asarray(model(jnp.asarray(calib)))
    np.testing.assert_allclose(np.asarray(encoded(jnp.asarray(calib))), dense_logits, atol=0.05 * np.abs(dense_logits).max())


def test_bad_arguments(calib):
    with pytest.raises(ValueError, match="unknown method"):
        prune.prune_model(_model(), calib, 0.5, method="obs")
    with pytest.raises(ValueError, match="T <= 64"):
        prune.prune_model(_model(), np.zeros((1, 65), int), 0.5)
    model = _model()
    prune.prune_model(model, calib, 0.5, method="magnitude")
    with pytest.raises(ValueError, match="already sparse"):
        prune.prune_model(model, calib, 0.5)
