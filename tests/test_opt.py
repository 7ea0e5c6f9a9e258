"""OPT: configs of every size (shapes checked with no weights), equality with transformers' logits on the
fixtures of scripts/make_hf_reference.py, and the cached decode path against the plain forward."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_flashllm import attention
from jax_flashllm.generation import prefill
from jax_flashllm.models.checkpoint import load_pretrained
from jax_flashllm.models.opt import KVCache, OPTConfig, OPTForCausalLM
from jax_flashllm.nn import sparsify

DATA = os.path.join(os.path.dirname(__file__), "data")
FIXTURES = ["opt_tiny_preln", "opt_tiny_postln"]

# Parameter counts of the published checkpoints (tied head counted once), from their safetensors files.
PUBLISHED_PARAMS = {"opt-125m": 125_239_296, "opt-350m": 331_196_416, "opt-1.3b": 1_315_758_080}


def _param_count(cfg: OPTConfig) -> int:
    model = OPTForCausalLM.abstract(cfg)
    return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model)))


@pytest.mark.parametrize("name", OPTConfig.names())
def test_every_size_builds_abstractly(name):
    cfg = OPTConfig.from_name(name)
    assert cfg.vocab_size == 50272 and cfg.sampling_vocab_size == 50265
    assert cfg.has_projections == (name == "opt-350m")
    assert cfg.has_final_layer_norm == (name != "opt-350m")
    count = _param_count(cfg)
    if name in PUBLISHED_PARAMS:
        assert count == PUBLISHED_PARAMS[name]
    else:
        nominal = float(name.split("-")[1][:-1])  # "6.7b" -> 6.7
        assert abs(count / 1e9 - nominal) / nominal < 0.05


def test_abstract_forward_shapes_of_a_large_size():
    model = OPTForCausalLM.abstract(OPTConfig.from_name("facebook/opt-30b"), jnp.bfloat16)
    graphdef, state = nnx.split(model)
    out = jax.eval_shape(lambda s, ids: nnx.merge(graphdef, s)(ids), state,
                         jax.ShapeDtypeStruct((2, 5), jnp.int32))
    assert out.shape == (2, 5, 50272) and out.dtype == jnp.float32


def test_config_errors_and_json_round_trip(tmp_path):
    with pytest.raises(ValueError, match="unknown OPT size"):
        OPTConfig.from_name("opt-7b")
    with pytest.raises(ValueError, match="multiple"):
        OPTConfig(hidden_size=30, num_attention_heads=4)
    cfg = OPTConfig.from_name("opt-350m")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert OPTConfig.from_json(tmp_path) == cfg
    path.write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not 'opt'"):
        OPTConfig.from_json(path)


def test_from_json_reads_hf_config():
    cfg = OPTConfig.from_json(os.path.join(DATA, "opt_tiny_postln", "config.json"))
    assert (cfg.hidden_size, cfg.word_embed_proj_dim, cfg.do_layer_norm_before) == (32, 16, False)
    assert cfg.sampling_vocab_size is None and cfg.vocab_size == 96


@pytest.mark.parametrize("name", FIXTURES)
def test_logits_equal_transformers(name):
    model = load_pretrained(os.path.join(DATA, name), dtype=jnp.float32)
    ref = np.load(os.path.join(DATA, f"{name}.npz"))
    logits = model(jnp.asarray(ref["input_ids"]))
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-4, rtol=0)
    padded = model(jnp.asarray(ref["padded_ids"]), jnp.asarray(ref["padded_mask"]))
    real = ref["padded_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(padded)[real], ref["padded_logits"][real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("post_ln", [False, True])
def test_cached_decode_equals_plain_forward(post_ln):
    cfg = OPTConfig.tiny(post_ln=post_ln)
    model = OPTForCausalLM(cfg, rngs=nnx.Rngs(1))
    ids = jnp.array([[5, 6, 7, 8, 9, 10], [1, 1, 7, 8, 9, 10]])
    mask = jnp.array([[1] * 6, [0, 0, 1, 1, 1, 1]])
    graphdef, state = nnx.split(model)

    @jax.jit
    def both(state):  # one compile instead of hundreds of eager dispatches
        model = nnx.merge(graphdef, state)
        cache = KVCache.zeros(cfg, 2, 9)
        h0, cache = model.decode(ids[:, :4], cache, 0, mask[:, :4].astype(bool))
        h1, cache = model.decode(ids[:, 4:5], cache, 4)
        h2, cache = model.decode(ids[:, 5:6], cache, 5)
        return model(ids, mask), model.logits(jnp.concatenate([h0, h1, h2], axis=1)), cache

    full, stepwise, cache = both(state)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(stepwise)[real], np.asarray(full)[real], atol=1e-5)
    assert np.asarray(cache.valid).sum() == real.sum()


def test_half_precision_forward_is_close():
    model32 = load_pretrained(os.path.join(DATA, "opt_tiny_preln"), dtype=jnp.float32)
    model16 = load_pretrained(os.path.join(DATA, "opt_tiny_preln"))  # default float16
    assert model16.layers[0].fc1.kernel[...].dtype == jnp.float16
    ids = jnp.array([[3, 50, 7, 8]])
    a, b = np.asarray(model32(ids)), np.asarray(model16(ids))
    assert b.dtype == np.float32
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()


def test_cast_embeddings_keeps_activations_and_halves_the_head():
    model = load_pretrained(os.path.join(DATA, "opt_tiny_postln"), dtype=jnp.float32)
    ids = jnp.array([[3, 50, 7, 8]])
    before = np.asarray(model(ids))
    model.cast_embeddings(jnp.bfloat16)
    assert model.embed_tokens.embedding[...].dtype == jnp.bfloat16
    assert model.embed_positions.embedding[...].dtype == jnp.bfloat16
    assert model.hidden_states(ids).dtype == jnp.float32
    after = np.asarray(model(ids))
    assert after.dtype == np.float32
    assert np.abs(after - before).max() < 0.05 * np.abs(before).max()


def test_sparse_model_computes_and_caches_in_its_weight_dtype():
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))
    ids = np.array([[5, 6, 7]])
    assert model.compute_dtype == jnp.float32
    assert prefill(model, ids, max_new_tokens=2).cache.k[0].dtype == jnp.float32
    sparsify(model, 0.5, exclude="layers.1.fc2")
    assert model.compute_dtype == jnp.float32  # a float32 Linear left: activations stay float32
    sparsify(model, 0.5)
    assert model.compute_dtype == jnp.bfloat16
    cache = prefill(model, ids, max_new_tokens=2).cache
    assert {a.dtype for a in (*cache.k, *cache.v)} == {jnp.dtype(jnp.bfloat16)}
    assert model.hidden_states(jnp.asarray(ids)).dtype == jnp.bfloat16


def _float32_buffers_of_a_decode_step(cfg, model, slots):
    """The non-unit dims (sorted) of every float32 buffer a compiled decode step writes (bitcasts aside)."""
    graphdef, state = nnx.split(model)
    step = jax.jit(lambda state, cache, token: nnx.merge(graphdef, state).decode(token, cache, 5))
    cache = KVCache.zeros(cfg, 1, slots, model.compute_dtype)
    text = step.lower(state, cache, jnp.ones((1, 1), jnp.int32)).compile().as_text()
    lines = [line for line in text[text.index("ENTRY"):].splitlines() if " = f32[" in line and " bitcast(" not in line]
    # "%x = f32[1,4,1,200]{...} op(...)" -> [4, 200]
    return [sorted(int(d) for d in line.split(" = f32[")[1].split("]")[0].split(",") if d and int(d) != 1)
            for line in lines]


@pytest.mark.parametrize("reference", [False, True], ids=["kernel", "reference"])
def test_decode_step_writes_no_score_sized_buffers_and_no_float32_cache(monkeypatch, reference):
    """A compiled decode step of a bf16 (sparsified) model on the CPU: the fused attention kernel writes no
    (B, H, 1, S) float32 buffer and no float32 copy of the (B, H, D, S) / (B, H, S, D) cache. The jnp
    reference writes up to four score-sized buffers per layer and a widened cache copy: the check sees them."""
    if reference:
        monkeypatch.setenv(attention.ENV, "reference")
    cfg = OPTConfig.tiny(max_position_embeddings=512)
    model = OPTForCausalLM(cfg, rngs=nnx.Rngs(0))
    sparsify(model, 0.5)
    assert model.compute_dtype == jnp.bfloat16
    slots = 200
    buffers = _float32_buffers_of_a_decode_step(cfg, model, slots)
    scores = [b for b in buffers if b == sorted([cfg.num_attention_heads, slots])]
    cache = [b for b in buffers if b == sorted([cfg.num_attention_heads, cfg.head_dim, slots])]
    if reference:
        assert 0 < len(scores) <= 4 * cfg.num_hidden_layers and cache, buffers
    else:
        assert not scores and not cache, buffers
