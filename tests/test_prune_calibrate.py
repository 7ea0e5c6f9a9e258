"""prune.calibrate: the Grams of a decoder layer's Linear inputs, accumulated inside one compiled forward, against
float64 Grams of the inputs captured by running the layer eagerly; padding left out; one program for all
layers."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import prune_reference as ref
from jax_flashllm.models import OPTConfig, OPTForCausalLM
from jax_flashllm.models.opt import mask_bias
from jax_flashllm.prune import calibrate

_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2")


def _batches(model, ids, valid, sizes):
    t = ids.shape[1]
    positions = jnp.where(valid, jnp.cumsum(valid, axis=-1) - 1, -1)
    bias = mask_bias(jnp.tril(jnp.ones((t, t), bool))[None] & valid[:, None, :])
    x = model._embed(ids, positions)
    edges = np.cumsum([0] + list(sizes))
    cut = [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]
    return [x[s] for s in cut], [bias[s] for s in cut], [valid[s] for s in cut]


@pytest.mark.parametrize("post_ln", [False, True])
def test_layer_grams_match_float64_grams_of_the_captured_inputs(post_ln):
    model = OPTForCausalLM(OPTConfig.tiny(post_ln=post_ln), rngs=nnx.Rngs(3))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, 96, (5, 12)))
    valid = jnp.ones(ids.shape, bool).at[1, :4].set(False).at[4, :11].set(False)
    xs, biases, valids = _batches(model, ids, valid, [2, 2, 1])
    grams = calibrate.layer_grams(model.layers[0], _NAMES, xs, biases, valids)

    # Reference: run the layer eagerly with every Linear recording its inputs.
    paths = [("layers", 0) + tuple(name.split(".")) for name in _NAMES]
    inputs = ref.linear_inputs(model, paths, lambda: [model.layers[0](x, bias) for x, bias in zip(xs, biases)])
    mask = np.concatenate([np.asarray(v) for v in valids]).reshape(-1)
    for name, path in zip(_NAMES, paths):
        rows = inputs[path][mask]
        expected = rows.T @ rows
        np.testing.assert_allclose(np.asarray(grams[name]), expected, rtol=2e-5,
                                   atol=2e-6 * np.abs(expected).max(), err_msg=name)
    np.testing.assert_array_equal(grams["self_attn.q_proj"], grams["self_attn.v_proj"])

    norms, outputs = calibrate.layer_norms(model.layers[0], _NAMES, xs, biases, valids)
    for name, path in zip(_NAMES, paths):
        np.testing.assert_allclose(np.asarray(norms[name]), np.sqrt((inputs[path][mask] ** 2).sum(0)), rtol=2e-5,
                                   err_msg=name)
    for out, x, bias in zip(outputs, xs, biases):
        np.testing.assert_allclose(np.asarray(out), np.asarray(model.layers[0](x, bias)[0]), rtol=1e-5, atol=1e-5)


def test_layer_outputs_are_the_layer_and_one_program_serves_every_layer():
    model = OPTForCausalLM(OPTConfig.tiny(num_hidden_layers=3), rngs=nnx.Rngs(4))
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 96, (4, 10)))
    xs, biases, valids = _batches(model, ids, jnp.ones(ids.shape, bool), [2, 2])
    before = (calibrate._accumulate._cache_size(), calibrate._forward._cache_size())
    for layer in model.layers:
        calibrate.layer_grams(layer, _NAMES, xs, biases, valids)
        outs = calibrate.layer_outputs(layer, xs, biases)
        for out, x, bias in zip(outs, xs, biases):
            np.testing.assert_allclose(np.asarray(out), np.asarray(layer(x, bias)[0]), rtol=1e-5, atol=1e-5)
        xs = outs
    assert calibrate._accumulate._cache_size() - before[0] <= 1
    assert calibrate._forward._cache_size() - before[1] <= 1


def test_gram_in_column_blocks(monkeypatch):
    # Blocks of 7 over K = 20: uneven blocks, mirrored below the diagonal.
    monkeypatch.setattr(calibrate, "_GRAM_BLOCK", 7)
    x = np.random.default_rng(2).standard_normal((3, 9, 20)).astype(np.float32)
    valid = np.ones((3, 9), bool)
    valid[0, :5] = False
    got = np.asarray(calibrate.gram(jnp.asarray(x, jnp.bfloat16), jnp.asarray(valid)))
    rows = np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), np.float64)[valid]
    np.testing.assert_allclose(got, rows.T @ rows, rtol=1e-5, atol=1e-4)
