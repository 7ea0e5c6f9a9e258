"""Perplexity against a hand computation: float64 log-softmax of the model's logits, window by window."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_flashllm.eval import perplexity, window_targets
from jax_flashllm.models import OPTConfig, OPTForCausalLM


@pytest.fixture(scope="module")
def model():
    return OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))


def _nll(model, ids, targets):
    """Sum of -log p(ids[p] | ids[:p]) over `targets` (positions in `ids`), float64, one plain forward."""
    logits = np.asarray(model(jnp.asarray(ids[None], jnp.int32))[0], np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    return -sum(logp[p - 1, ids[p]] for p in targets)


def test_non_overlapping_windows_match_hand_computation(model):
    ids = np.random.default_rng(0).integers(0, 96, 150)
    # max_position_embeddings 64: windows [0, 64), [64, 128), [128, 150); the first token of each unscored.
    nll = sum(_nll(model, ids[b:e], range(1, e - b)) for b, e in [(0, 64), (64, 128), (128, 150)])
    expected = math.exp(nll / (63 + 63 + 21))
    assert perplexity(model, ids, batch_size=2) == pytest.approx(expected, rel=1e-5)


def test_sliding_windows_predict_every_token_once(model):
    ids = np.random.default_rng(1).integers(0, 96, 150)
    assert window_targets(150, 64, 32) == [(0, 64, 1), (32, 96, 64), (64, 128, 96), (96, 150, 128)]
    nll = (_nll(model, ids[0:64], range(1, 64)) + _nll(model, ids[32:96], range(32, 64))
           + _nll(model, ids[64:128], range(32, 64)) + _nll(model, ids[96:150], range(32, 54)))
    expected = math.exp(nll / 149)
    assert perplexity(model, ids, window=64, stride=32) == pytest.approx(expected, rel=1e-5)


def test_rows_with_padding(model):
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 96, (3, 20))
    mask = np.ones((3, 20), int)
    mask[1, :5] = 0    # left padding
    mask[2, 12:] = 0   # right padding
    nll = (_nll(model, ids[0], range(1, 20)) + _nll(model, ids[1, 5:], range(1, 15))
           + _nll(model, ids[2, :12], range(1, 12)))
    expected = math.exp(nll / (19 + 14 + 11))
    assert perplexity(model, ids, attention_mask=mask, batch_size=2) == pytest.approx(expected, rel=1e-5)


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        perplexity(model, np.zeros(100, int), window=128)
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, np.zeros(100, int), window=16, stride=32)
    with pytest.raises(ValueError, match="at least 2"):
        perplexity(model, np.zeros(1, int))
