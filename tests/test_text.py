"""generate_text: text in, text out, with a tokenizers.Tokenizer or a tokenizer.json path."""

import numpy as np
import pytest
from flax import nnx

import jax_flashllm
from jax_flashllm.models.opt import OPTConfig, OPTForCausalLM
from jax_flashllm.text import load_tokenizer

tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def tokenizer():
    # A word-level tokenizer over the tiny model's 96 ids: "</s>" is id 2 (OPT's BOS/EOS, prepended as OPT's
    # tokenizer does), "<pad>" 1, words are "w<id>".
    vocab = {f"w{i}": i for i in range(3, 96)}
    vocab.update({"<unk>": 0, "<pad>": 1, "</s>": 2})
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(["</s>", "<pad>"])
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 2)])
    return tok


@pytest.fixture(scope="module")
def model():
    return OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))


def test_text_equals_ids(model, tokenizer, tmp_path):
    prompts = ["w5 w17 w40", "w8", "w9 w10 w11 w12 w13"]  # ragged: left-padded into one batch
    texts = jax_flashllm.generate_text(model, tokenizer, prompts, max_new_tokens=5, eos_token_id=None)
    assert isinstance(texts, list) and len(texts) == 3
    for prompt, text in zip(prompts, texts):
        ids = [2] + [int(w[1:]) for w in prompt.split()]
        tokens = np.asarray(jax_flashllm.generate(model, [ids], max_new_tokens=5, eos_token_id=None))[0]
        assert text == tokenizer.decode(tokens.tolist(), skip_special_tokens=True)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    assert jax_flashllm.generate_text(model, str(path), "w5 w17 w40", max_new_tokens=5,
                                      eos_token_id=None) == texts[:1]
    assert jax_flashllm.generate_text(model, tmp_path, "w5 w17 w40", max_new_tokens=5,
                                      eos_token_id=None) == texts[:1]


def test_text_stops_at_eos(model, tokenizer):
    ids = np.asarray(jax_flashllm.generate(model, [[2, 5, 17, 40]], max_new_tokens=6, eos_token_id=None))[0]
    eos = int(ids[2])  # pretend the third new token is EOS
    text = jax_flashllm.generate_text(model, tokenizer, "w5 w17 w40", max_new_tokens=6, eos_token_id=eos)[0]
    assert text == " ".join(f"w{t}" for t in ids[:2] if t > 2)


def test_text_argument_errors(model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        jax_flashllm.generate_text(model, tokenizer, [])
    with pytest.raises(TypeError, match="must be str"):
        jax_flashllm.generate_text(model, tokenizer, [[5, 6]])
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "nothing")
    with pytest.raises(TypeError, match="tokenizers.Tokenizer"):
        load_tokenizer(42)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        load_tokenizer(bad)
    bare = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<unk>": 0, "w5": 5}, unk_token="<unk>"))
    with pytest.raises(ValueError, match="encodes to no tokens"):
        jax_flashllm.generate_text(model, bare, [""])
