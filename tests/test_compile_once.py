"""Compile once, serve many: bucketing changes no greedy token, varied requests share one program, and a
model from load_model reuses the original's programs."""

import numpy as np
import pytest
from flax import nnx

from jax_flashllm import generation
from jax_flashllm.generation import generate, stream
from jax_flashllm.models.checkpoint import load_model, save_model
from jax_flashllm.models.opt import OPTConfig, OPTForCausalLM
from jax_flashllm.nn import sparsify


def _compiles() -> int:
    return generation._generate._cache_size()


def _greedy_unpadded(model, ids, n):
    """The plain forward on the exact, unpadded prompt, one more token each step: no bucket, no cache."""
    ids = np.asarray(ids)[None]
    for _ in range(n):
        token = np.asarray(model(ids)[:, -1].argmax(-1))
        ids = np.concatenate([ids, token[:, None]], axis=1)
    return ids[0, -n:]


@pytest.mark.parametrize("post_ln", [False, True])
def test_padded_and_bucketed_prompts_give_the_unpadded_tokens(post_ln):
    model = OPTForCausalLM(OPTConfig.tiny(post_ln=post_ln), rngs=nnx.Rngs(4))
    prompts = [[5, 9, 20], [4, 8, 15, 16, 23, 42, 7], [11]]
    n = 6
    expected = [_greedy_unpadded(model, p, n) for p in prompts]
    # alone: each prompt padded up to its length bucket (8) inside generate
    for p, e in zip(prompts, expected):
        np.testing.assert_array_equal(np.asarray(generate(model, [p], max_new_tokens=n, eos_token_id=None))[0], e)
    # together, with extra left padding (12 columns) and a batch bucket of 4 (one filler row)
    ids = np.ones((3, 12), np.int32)
    mask = np.zeros((3, 12), np.int32)
    for row, p in enumerate(prompts):
        ids[row, 12 - len(p):] = p
        mask[row, 12 - len(p):] = 1
    out = np.asarray(generate(model, ids, mask, max_new_tokens=n, eos_token_id=None))
    np.testing.assert_array_equal(out, np.stack(expected))
    tokens = np.stack([np.asarray(t) for t in stream(model, ids, mask, max_new_tokens=n, eos_token_id=None)], 1)
    np.testing.assert_array_equal(tokens, out)


def test_varied_requests_compile_one_program():
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    generate(model, [[5, 6, 7]], max_new_tokens=3)
    before = _compiles()
    for i in range(8):  # every length, max_new_tokens and sampler setting within the (1, 8, 16) bucket
        ids = rng.integers(3, 96, size=(1, 1 + i))
        kw = dict(max_new_tokens=int(rng.integers(1, 17)), seed=i, eos_token_id=None if i % 2 else 2)
        if i % 3:
            kw.update(temperature=0.5 + i / 4, top_k=int(i), top_p=1.0 - i / 20)
        out = generate(model, ids, **kw)
        assert out.shape == (1, kw["max_new_tokens"])
    assert _compiles() == before
    generate(model, np.full((5, 9), 5), max_new_tokens=20)  # a new bucket: batch 8
    assert _compiles() == before + 1


def test_loaded_model_compiles_nothing_new(tmp_path):
    model = OPTForCausalLM(OPTConfig.tiny(post_ln=True), rngs=nnx.Rngs(1))
    sparsify(model, 0.5)
    ids = [[5, 6, 7, 8]]
    a = np.asarray(generate(model, ids, max_new_tokens=5, eos_token_id=None))
    before = _compiles()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert nnx.graphdef(loaded) == nnx.graphdef(model) and hash(nnx.graphdef(loaded)) == hash(nnx.graphdef(model))
    b = np.asarray(generate(loaded, ids, max_new_tokens=5, eos_token_id=None))
    np.testing.assert_array_equal(a, b)
    assert _compiles() == before


def test_include_prompt_returns_prompt_then_continuation():
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))
    ids, mask = [[5, 6, 1], [7, 8, 9]], [[1, 1, 0], [1, 1, 1]]  # right padding comes back on the left
    new = np.asarray(generate(model, ids, mask, max_new_tokens=4))
    full = np.asarray(generate(model, ids, mask, max_new_tokens=4, include_prompt=True))
    np.testing.assert_array_equal(full, np.concatenate([[[1, 5, 6], [7, 8, 9]], new], axis=1))
