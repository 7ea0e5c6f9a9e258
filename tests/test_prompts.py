"""Host-side checks of a generation request: every bad input is a clear error before anything is traced;
right padding is moved left; buckets are powers of two clamped at max_position_embeddings."""

import numpy as np
import pytest
from flax import nnx

from jax_flashllm.generation import generate
from jax_flashllm.models.opt import OPTConfig, OPTForCausalLM
from jax_flashllm.prompts import bucket, prepare
from jax_flashllm.sampling import make_sampler

KW = dict(vocab_size=96, max_positions=64, pad_token_id=1)


@pytest.fixture(scope="module")
def model():
    return OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("ids, error, match", [
    ([[5, 96, 7]], ValueError, r"outside \[0, 96\).*first: 96 at row 0, position 1"),  # out of vocabulary
    ([[5, -1, 7]], ValueError, r"outside \[0, 96\).*first: -1"),  # negative ids would wrap around
    (np.zeros((0, 3), np.int32), ValueError, "batch of 0"),
    (np.zeros((2, 0), np.int32), ValueError, "length 0"),
    ([5, 6, 7], ValueError, r"ids\[None\]"),
    ([[5.0, 6.0]], TypeError, "integer token ids"),
    ([["a", "b"]], TypeError, "integer token ids"),
])
def test_bad_ids(ids, error, match):
    with pytest.raises(error, match=match):
        prepare(ids, None, 4, **KW)


@pytest.mark.parametrize("n, error, match", [
    (0, ValueError, ">= 1"), (-3, ValueError, ">= 1"), (2.0, TypeError, "integer"), (True, TypeError, "integer"),
    (None, TypeError, "integer"), (62, ValueError, "at most 61 new tokens"),
])
def test_bad_max_new_tokens(n, error, match):
    with pytest.raises(error, match=match):
        prepare([[5, 6, 7]], None, n, **KW)


@pytest.mark.parametrize("mask, match", [
    ([[1, 0, 1]], "padding between tokens"),  # a hole
    ([[0, 0, 0]], "no token"),
    ([[1, 2, 1]], "only 0"),
    ([[1, 1]], "shape"),
])
def test_bad_masks(mask, match):
    with pytest.raises(ValueError, match=match):
        prepare([[5, 6, 7]], mask, 4, **KW)


def test_right_padding_is_moved_left_and_buckets():
    r = prepare([[5, 6, 1, 1], [7, 8, 9, 10], [11, 1, 1, 1]], [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], 5, **KW)
    np.testing.assert_array_equal(r.prompt, [[1, 1, 5, 6], [7, 8, 9, 10], [1, 1, 1, 11]])
    # prompt bucket 32 and new-token bucket 64, clamped to the 64 positions: 32 + 32
    assert r.input_ids.shape == (4, 32) and r.batch == 3 and r.new_slots == 32 and r.max_new_tokens == 5
    np.testing.assert_array_equal(r.valid[:3].sum(axis=1), [2, 4, 1])
    np.testing.assert_array_equal(r.input_ids[0, -4:], [1, 1, 5, 6])
    assert r.valid[3].tolist() == [False] * 31 + [True]  # the filler row attends to one pad token
    # all-padding columns are trimmed before bucketing: a 20-wide left-padded batch of 3-token prompts
    ids = np.ones((1, 20), np.int32)
    ids[0, -3:] = [5, 6, 7]
    assert prepare(ids, (ids != 1).astype(int), 4, **dict(KW, max_positions=2048)).input_ids.shape == (1, 32)
    r = prepare(ids, None, 70, **dict(KW, vocab_size=96, max_positions=2048))
    assert r.input_ids.shape == (1, 32) and r.new_slots == 128
    # clamped: prompt 40 + 20 new fits 64 positions, the buckets 64 + 64 would not
    r = prepare(np.full((1, 40), 5), None, 20, **KW)
    assert r.input_ids.shape[1] + r.new_slots <= 64 and r.new_slots >= 20 and r.input_ids.shape[1] >= 40
    assert [bucket(n, 8) for n in (1, 8, 9, 100)] == [8, 8, 16, 128]


@pytest.mark.parametrize("kw, error, match", [
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "finite"),
    (dict(temperature="hot"), TypeError, "temperature"),
    (dict(temperature=1.0, top_k=-1), ValueError, "top_k"),
    (dict(temperature=1.0, top_k=2.5), TypeError, "top_k"),
    (dict(temperature=1.0, top_p=0.0), ValueError, "top_p"),
    (dict(temperature=1.0, top_p=1.5), ValueError, "top_p"),
])
def test_bad_sampler_arguments(kw, error, match):
    with pytest.raises(error, match=match):
        make_sampler(**kw)


def test_greedy_with_top_p_warns():
    with pytest.warns(UserWarning, match="no effect"):
        make_sampler(0.0, top_p=0.9)
    with pytest.warns(UserWarning, match="no effect"):
        make_sampler(0.0, top_k=5)


def test_generate_checks_before_tracing(model):
    # Each of these used to trace (or crash) inside jit; now generate stops on the host.
    with pytest.raises(ValueError, match="outside"):
        generate(model, [[5, 200]], max_new_tokens=2)
    with pytest.raises(ValueError, match="batch of 0"):
        generate(model, np.zeros((0, 4), np.int32), max_new_tokens=2)
    with pytest.raises(TypeError, match="seed"):
        generate(model, [[5, 6]], max_new_tokens=2, seed=1.5)
    with pytest.raises(ValueError, match="padding between tokens"):
        generate(model, [[5, 6, 7]], [[1, 0, 1]], max_new_tokens=2)


def test_right_padded_prompt_gives_left_padded_tokens(model):
    left = np.asarray(generate(model, [[1, 1, 5, 6], [7, 8, 9, 10]], [[0, 0, 1, 1], [1, 1, 1, 1]],
                               max_new_tokens=5, eos_token_id=None))
    right = np.asarray(generate(model, [[5, 6, 1, 1], [7, 8, 9, 10]], [[1, 1, 0, 0], [1, 1, 1, 1]],
                                max_new_tokens=5, eos_token_id=None))
    np.testing.assert_array_equal(left, right)
