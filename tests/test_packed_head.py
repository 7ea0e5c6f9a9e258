"""PackedEmbed: a table stored once serving the lookup and the tied LM head; OPT.pack_head; pruning the
head through sparsify's include; checkpoints of a packed head."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from jax_flashllm.format import SparseMatrix
from jax_flashllm.formats import dense
from jax_flashllm.generation import generate
from jax_flashllm.models import OPTConfig, OPTForCausalLM, load_model, save_model
from jax_flashllm.nn import PackedEmbed, SparseLinear, sparsify


@pytest.mark.parametrize("shape", [(300, 200), (128, 64), (50, 768)])
def test_dense_rows_are_the_matrix_rows(shape):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    packed = SparseMatrix.from_dense(w, dtype=jnp.bfloat16, format="dense")
    ids = jnp.asarray(rng.integers(0, shape[0], (3, 7)))
    ids = ids.at[0, :2].set(jnp.array([0, shape[0] - 1]))
    rows = jax.jit(dense.rows, static_argnums=1)(packed.values, shape[1], ids)
    assert rows.shape == (3, 7, shape[1]) and rows.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(rows), np.asarray(packed.to_dense())[np.asarray(ids)])


def _bf16(a):
    return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


@pytest.mark.parametrize("post_ln", [False, True])
def test_pack_head_stores_the_table_once_and_matches_bf16(post_ln):
    model = OPTForCausalLM(OPTConfig.tiny(post_ln=post_ln), rngs=nnx.Rngs(0))
    table = np.asarray(model.embed_tokens.embedding[...])
    before = sum(v.get_value().nbytes for _, v in nnx.to_flat_state(nnx.state(model)))
    ids = jnp.array([[5, 6, 7, 8], [9, 10, 11, 95]])
    model.pack_head()
    head = model.embed_tokens
    assert isinstance(head, PackedEmbed) and head.format == "dense" and head.weight.dtype == jnp.bfloat16
    # One copy of the table, in bf16 and padded to whole tiles, replaces the float32 one: no second copy.
    after = sum(v.get_value().nbytes for _, v in nnx.to_flat_state(nnx.state(model)))
    assert after - before == head.weight.nbytes - table.nbytes
    # The lookup is the bf16 table's rows, exactly.
    np.testing.assert_array_equal(np.asarray(head(ids), np.float32), _bf16(table)[np.asarray(ids)])
    # The head is h @ W.T on bf16 operands with float32 accumulation, rounded once to bf16.
    h = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, table.shape[1])), jnp.float32)
    expected = _bf16(_bf16(h) @ _bf16(table).T)
    got = np.asarray(model.logits(h))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=2 ** -7, atol=1e-6)


def test_packed_head_generates_like_the_bf16_einsum():
    """The packed head and a bf16 table multiplied by XLA differ only in summation order (and the final
    rounding): on the tiny model's well-separated logits they pick the same greedy tokens."""
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(2))
    sparsify(model, 0.5)
    reference = nnx.clone(model)
    reference.cast_embeddings(jnp.bfloat16)
    model.pack_head()
    ids = np.array([[1, 5, 6, 7], [9, 10, 11, 12]])
    mask = np.array([[0, 1, 1, 1], [1, 1, 1, 1]])
    a = generate(model, ids, mask, max_new_tokens=8, eos_token_id=None)
    b = generate(reference, ids, mask, max_new_tokens=8, eos_token_id=None)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sparsify_prunes_the_head_only_when_included():
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))
    report = sparsify(model, 0.5)
    assert isinstance(model.embed_tokens, nnx.Embed) and "embed_tokens" not in {r.name for r in report.layers}
    table = np.asarray(model.embed_tokens.embedding[...])
    report = sparsify(model, 0.7, include="embed_tokens")
    head = model.embed_tokens
    assert isinstance(head, PackedEmbed) and isinstance(model.embed_positions, nnx.Embed)
    assert [r.name for r in report.layers] == ["embed_tokens"] and head.format != "dense"
    assert abs(head.weight.sparsity - 0.7) < 0.01
    kept = _bf16(table) * (np.asarray(head.weight.to_dense(), np.float32) != 0)
    ids = jnp.array([[3, 4, 50]])
    np.testing.assert_array_equal(np.asarray(head(ids), np.float32), kept[np.asarray(ids)])
    out = generate(model, np.array([[5, 6, 7]]), max_new_tokens=4, eos_token_id=None)
    assert out.shape == (1, 4)


def test_packed_head_checkpoint_roundtrip(tmp_path):
    model = OPTForCausalLM(OPTConfig.tiny(post_ln=True), rngs=nnx.Rngs(0))
    sparsify(model, 0.5)
    model.pack_head()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded.embed_tokens, PackedEmbed) and loaded.embed_tokens.format == "dense"
    assert isinstance(loaded.layers[0].fc1, SparseLinear)
    ids = np.array([[5, 6, 7, 8]])
    np.testing.assert_array_equal(np.asarray(generate(loaded, ids, max_new_tokens=5, eos_token_id=None)),
                                  np.asarray(generate(model, ids, max_new_tokens=5, eos_token_id=None)))
