"""generate / stream: equal to transformers' greedy generate, to greedy without a cache, to each other;
EOS and padding, seeded sampling, the padded-vocab mask, and sparse layers inside the compiled loop."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_flashllm.generation import decode_step, generate, prefill, stream
from jax_flashllm.models.checkpoint import load_pretrained
from jax_flashllm.models.opt import OPTConfig, OPTForCausalLM
from jax_flashllm.nn import densify, sparsify
from jax_flashllm.sampling import make_sampler, mask_vocab, sample

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="module", params=["opt_tiny_preln", "opt_tiny_postln"])
def hf(request):
    model = load_pretrained(os.path.join(DATA, request.param), dtype=jnp.float32)
    return model, dict(np.load(os.path.join(DATA, f"{request.param}.npz")))


def test_greedy_equals_transformers(hf):
    model, ref = hf
    n = int(ref["max_new_tokens"])
    out = generate(model, ref["input_ids"], max_new_tokens=n)
    assert out.shape == (2, n) and out.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out), ref["greedy"])
    out = generate(model, ref["padded_ids"], ref["padded_mask"], max_new_tokens=n)
    np.testing.assert_array_equal(np.asarray(out), ref["padded_greedy"])


def test_stream_yields_the_same_tokens(hf):
    model, ref = hf
    n = int(ref["max_new_tokens"])
    tokens = list(stream(model, ref["padded_ids"], ref["padded_mask"], max_new_tokens=n, eos_token_id=None))
    assert len(tokens) == n
    expected = generate(model, ref["padded_ids"], ref["padded_mask"], max_new_tokens=n, eos_token_id=None)
    np.testing.assert_array_equal(np.stack([np.asarray(t) for t in tokens], axis=1), np.asarray(expected))


def _greedy_without_cache(model, ids, mask, n):
    """Recompute the whole sequence each step with the plain forward (no KV cache). The window has a fixed
    length (extra left padding, which positions ignore) so the forward compiles once."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda ids, mask: nnx.merge(graphdef, state)(ids, mask)[:, -1])
    ids = np.concatenate([np.ones((ids.shape[0], n), ids.dtype), ids], axis=1)
    mask = np.concatenate([np.zeros((mask.shape[0], n), mask.dtype), mask], axis=1)
    out = []
    for _ in range(n):
        token = np.asarray(jnp.argmax(forward(ids, mask), axis=-1))
        out.append(token)
        ids = np.concatenate([ids[:, 1:], token[:, None]], axis=1)
        mask = np.concatenate([mask[:, 1:], np.ones_like(mask[:, :1])], axis=1)
    return np.stack(out, axis=1)


def test_greedy_with_cache_equals_recomputation():
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(3))
    ids = np.array([[1, 1, 5, 9, 20], [4, 8, 15, 16, 23]])
    mask = (ids != 1).astype(np.int32)
    out = generate(model, ids, mask, max_new_tokens=6, eos_token_id=None)
    np.testing.assert_array_equal(np.asarray(out), _greedy_without_cache(model, ids, mask, 6))


def test_eos_fills_pad_and_none_never_stops():
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))
    ids = np.array([[5, 6, 7], [8, 9, 10]])
    free = np.asarray(generate(model, ids, max_new_tokens=6, eos_token_id=None))
    eos = int(free[0, 0])  # pretend row 0's first token is EOS
    out = np.asarray(generate(model, ids, max_new_tokens=6, eos_token_id=eos))
    pad = model.config.pad_token_id
    for row in range(2):
        hits = np.flatnonzero(free[row] == eos)
        stop = hits[0] + 1 if hits.size else 6  # tokens up to and including EOS, then padding
        np.testing.assert_array_equal(out[row, :stop], free[row, :stop])
        assert (out[row, stop:] == pad).all()
    np.testing.assert_array_equal(free, np.asarray(generate(model, ids, max_new_tokens=6, eos_token_id=-1)))


def test_sampling_is_seeded():
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))
    ids = np.array([[5, 6, 7]] * 4)
    kw = dict(max_new_tokens=8, temperature=1.5, top_k=20, top_p=0.95, eos_token_id=None)
    a = np.asarray(generate(model, ids, seed=1, **kw))
    np.testing.assert_array_equal(a, np.asarray(generate(model, ids, seed=1, **kw)))
    assert (a != np.asarray(generate(model, ids, seed=2, **kw))).any()
    # identical prompts in a batch still draw different tokens
    assert len({tuple(row) for row in a}) > 1


def test_samplers():
    logits = jnp.array([[0.0, 3.0, 1.0, 2.5], [5.0, 0.0, 0.0, 0.0]])
    key = jax.random.key(0)
    np.testing.assert_array_equal(np.asarray(sample(logits, key, make_sampler())), [1, 0])
    # top_k=1 and a tiny top_p reduce to greedy
    np.testing.assert_array_equal(np.asarray(sample(logits, key, make_sampler(1.0, top_k=1))), [1, 0])
    np.testing.assert_array_equal(np.asarray(sample(logits, key, make_sampler(1.0, top_p=1e-3))), [1, 0])
    # top_k=2 only ever draws the two best ids; the settings are traced (one compile for all of them)
    draw = jax.jit(jax.vmap(lambda k, s: sample(logits, k, s), in_axes=(0, None)))
    draws = draw(jax.random.split(key, 200), make_sampler(5.0, top_k=2))
    assert set(np.asarray(draws)[:, 0].tolist()) == {1, 3}
    draws = draw(jax.random.split(key, 200), make_sampler(5.0, top_k=3))
    assert set(np.asarray(draws)[:, 0].tolist()) == {1, 2, 3}
    assert draw._cache_size() == 1
    masked = mask_vocab(logits, 2)
    assert np.isneginf(np.asarray(masked)[:, 2:]).all()


def test_padded_vocab_is_never_sampled():
    cfg = OPTConfig.tiny(sampling_vocab_size=40)
    model = OPTForCausalLM(cfg, rngs=nnx.Rngs(0))
    out = generate(model, np.array([[5, 6, 7]] * 8), max_new_tokens=10, temperature=5.0, eos_token_id=None)
    assert int(jnp.max(out)) < 40


def test_step_api_and_argument_checks():
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))
    ids = np.array([[5, 6, 7]])
    decoding = prefill(model, ids, max_new_tokens=2, eos_token_id=None)
    decoding = decode_step(decoding)
    with pytest.raises(ValueError, match="already produced"):
        decode_step(decoding)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(model, ids, max_new_tokens=model.config.max_position_embeddings)
    with pytest.raises(ValueError, match="attention_mask"):
        generate(model, ids, np.ones((1, 4)), max_new_tokens=2)


def test_sparse_model_generates_like_its_dense_copy():
    model = OPTForCausalLM(OPTConfig.tiny(post_ln=True), rngs=nnx.Rngs(0))
    sparsify(model, 0.8)
    dense = nnx.clone(model)
    densify(dense)
    ids, mask = np.array([[1, 5, 6, 7], [9, 10, 11, 12]]), np.array([[0, 1, 1, 1], [1, 1, 1, 1]])
    a = generate(model, ids, mask, max_new_tokens=8, eos_token_id=None)
    b = generate(dense, ids, mask, max_new_tokens=8, eos_token_id=None)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _example():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "examples", "generate_opt.py")
    spec = importlib.util.spec_from_file_location("generate_opt", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


@pytest.mark.slow  # six small compiles: three models, generate and prefill each
def test_example_runs_and_sparse_equals_dense(capsys):
    assert _example().main(["--size", "tiny", "--batch", "2", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "tokens IDENTICAL" in out and "sparse bf16" in out


@pytest.mark.slow
def test_example_with_checkpoint_and_tokenizer(tmp_path, capsys):
    tokenizers = pytest.importorskip("tokenizers")
    # A word-level tokenizer over the fixture's 96 ids: "</s>" is id 2 (OPT's BOS/EOS), words are "w<id>".
    vocab = {f"w{i}": i for i in range(3, 96)}
    vocab.update({"<pad>": 1, "</s>": 2, "<unk>": 0})
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.add_special_tokens(["</s>", "<pad>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    args = ["--model", os.path.join(DATA, "opt_tiny_preln"), "--tokenizer", str(tmp_path),
            "--prompt", "w5 w17 w40", "--sparsity", "0.5", "--max-new-tokens", "4"]
    assert _example().main(args) == 0
    out = capsys.readouterr().out
    assert "'w5 w17 w40' ->" in out and "tokens IDENTICAL" in out


def test_example_near_tie_check():
    example = _example()
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(2))
    sparsify(model, 0.8)
    dense = nnx.clone(model)
    densify(dense)
    ids, mask = np.array([[1, 5, 6, 7], [9, 10, 11, 12]]), np.array([[0, 1, 1, 1], [1, 1, 1, 1]])
    tokens = np.asarray(generate(model, ids, mask, max_new_tokens=5, eos_token_id=None))
    delta, gap = example.near_tie_check(model, dense, ids, mask, tokens, 96)
    assert gap <= 2 * delta + 1e-6  # the greedy choices are the dense argmax
    wrong = tokens.copy()
    wrong[1, 3] = (wrong[1, 3] + 1) % 96  # not the argmax: far from a tie
    delta, gap = example.near_tie_check(model, dense, ids, mask, wrong, 96)
    assert gap > 2 * delta + 1e-3
