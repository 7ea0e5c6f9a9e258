"""SparseLinear and sparsify: the call of nnx.Linear, nnx state handling, layer selection and the report."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from jax_flashllm import SparseMatrix, prune
from jax_flashllm.models.opt import OPTConfig, OPTForCausalLM
from jax_flashllm.nn import SparseIndex, SparseLinear, densify, sparsify


def _linear(din=64, dout=48, bias=True, seed=0):
    layer = nnx.Linear(din, dout, use_bias=bias, rngs=nnx.Rngs(seed))
    if bias:
        layer.bias[...] = jax.random.normal(jax.random.key(seed + 1), (dout,))
    return layer


def _reference(layer: SparseLinear, x):
    """float64 y = round16(x) @ W.T + b from the layer's own decoded weights."""
    w = np.asarray(layer.weight.to_dense(), np.float64)
    x16 = np.asarray(jnp.asarray(x).astype(layer.weight.dtype), np.float64)
    y = x16 @ w.T
    return y if layer.bias is None else y + np.asarray(layer.bias[...], np.float64)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_matches_reference(dtype, bias):
    layer = SparseLinear.from_linear(_linear(bias=bias), 0.7, dtype=dtype)
    x = jax.random.normal(jax.random.key(5), (2, 3, 64), jnp.float32)
    y = layer(x)
    assert y.shape == (2, 3, 48) and y.dtype == jnp.float32
    tol = 4 * float(jnp.finfo(dtype).eps) * np.abs(_reference(layer, x)).max()
    np.testing.assert_allclose(np.asarray(y, np.float64), _reference(layer, x), atol=tol)
    # activations already in the weight dtype stay in it
    assert layer(x.astype(dtype)).dtype == dtype


def test_from_linear_prunes_the_transposed_kernel():
    linear = _linear(bias=False)
    layer = SparseLinear.from_linear(linear, 0.8, method="magnitude_row")
    w = np.asarray(linear.kernel[...]).T  # (out, in)
    expected = prune.prune(w, 0.8, "magnitude_row").astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(np.asarray(layer.weight.to_dense()), expected)
    assert layer.weight.shape == (48, 64)
    assert abs(layer.weight.sparsity - 0.8) < 0.01


def test_state_types_and_jit_through_split():
    layer = SparseLinear.from_linear(_linear(), 0.5)
    params = nnx.state(layer, nnx.Param)
    assert set(params.keys()) == {"values", "bias"}
    assert set(nnx.state(layer, SparseIndex).keys()) == {"index", "tile_offsets"}
    graphdef, state = nnx.split(layer)
    x = jnp.ones((4, 64))
    y = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
    # XLA may skip the bf16 rounding between the kernel output and the bias add when it fuses them under
    # jit (excess precision), so eager and jit agree to bf16 precision, not bit for bit.
    np.testing.assert_allclose(np.asarray(y), np.asarray(layer(x)), rtol=2 ** -7, atol=2 ** -7)


def test_grad_reaches_sparse_values():
    layer = SparseLinear.from_linear(_linear(), 0.5)
    x = jax.random.normal(jax.random.key(0), (3, 64))

    def loss(m):
        return jnp.sum(m(x) ** 2)

    grads = nnx.grad(loss)(layer)
    g = grads["values"][...]
    assert g.shape == layer.values.shape and bool(jnp.any(g != 0))


def _model():
    return OPTForCausalLM(OPTConfig.tiny(post_ln=True), rngs=nnx.Rngs(0))


def _forward(model, ids):
    """One compiled forward (much faster than hundreds of eager ops on a busy CPU)."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda state: nnx.merge(graphdef, state)(ids))(state)


def test_sparsify_all_linears_and_report():
    model = _model()
    report = sparsify(model, 0.75)
    # per layer: q, k, v, out, fc1, fc2; plus project_in / project_out
    assert len(report.layers) == 2 * 6 + 2
    assert not [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Linear)]
    for r in report.layers:
        assert abs(r.sparsity - 0.75) < 0.02
        assert r.dense_bytes == r.shape[0] * r.shape[1] * 4
        assert r.sparse_bytes < r.dense_bytes
    assert report.dense_bytes == sum(r.dense_bytes for r in report.layers)
    text = str(report)
    assert "layers.1.fc2" in text and "total" in text
    logits = _forward(model, jnp.array([[3, 4, 5, 6]]))
    assert logits.shape == (1, 4, 96) and bool(jnp.all(jnp.isfinite(logits)))


def test_sparsify_include_exclude():
    model = _model()
    report = sparsify(model, 0.5, include=r"fc\d", exclude=["layers\\.1\\."])
    assert [r.name for r in report.layers] == ["layers.0.fc1", "layers.0.fc2"]
    assert isinstance(model.layers[0].fc1, SparseLinear)
    assert isinstance(model.layers[1].fc1, nnx.Linear)
    report = sparsify(model, 0.5, include=lambda name: name.endswith("q_proj"))
    assert [r.name for r in report.layers] == ["layers.0.self_attn.q_proj", "layers.1.self_attn.q_proj"]


def test_sparsify_random_is_seeded():
    a, b = _model(), _model()
    sparsify(a, 0.9, method="random", seed=7)
    sparsify(b, 0.9, method="random", seed=7)
    np.testing.assert_array_equal(np.asarray(a.layers[0].fc1.index[...]),
                                  np.asarray(b.layers[0].fc1.index[...]))


def test_densify_gives_the_same_function():
    model = _model()
    sparsify(model, 0.8)
    ids = jnp.array([[3, 4, 5, 6, 7]])
    sparse_logits = _forward(model, ids)
    densify(model)
    assert isinstance(model.layers[0].fc1, nnx.Linear)
    np.testing.assert_allclose(np.asarray(_forward(model, ids)), np.asarray(sparse_logits), atol=0.05)


def test_sparse_linear_wraps_a_given_matrix():
    w = np.zeros((130, 70), np.float32)
    w[::3, ::5] = 1.5
    layer = SparseLinear(SparseMatrix.from_dense(w, dtype=jnp.float16))
    y = layer(jnp.ones((1, 70), jnp.float32))
    np.testing.assert_allclose(np.asarray(y)[0], w.sum(axis=1))


@pytest.mark.parametrize("param_dtype,expected", [(jnp.float16, jnp.float16), (jnp.bfloat16, jnp.bfloat16),
                                                  (jnp.float32, jnp.bfloat16)])
def test_default_storage_dtype_follows_the_linear(param_dtype, expected):
    linear = nnx.Linear(64, 48, param_dtype=param_dtype, rngs=nnx.Rngs(0))
    assert SparseLinear.from_linear(linear, 0.5).weight.dtype == expected
    assert SparseLinear.from_linear(linear, 0.5, dtype=jnp.float16).weight.dtype == jnp.float16
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0), dtype=param_dtype)
    sparsify(model, 0.5)
    assert model.layers[0].fc1.weight.dtype == expected
    explicit = _model()
    sparsify(explicit, 0.5, dtype=jnp.float16)
    assert explicit.layers[0].fc1.weight.dtype == jnp.float16


def _count_graph_walks(monkeypatch) -> list:
    """Count the nnx.iter_graph walks made through the nnx namespace (one walk costs O(model size))."""
    calls, walk = [], nnx.iter_graph

    def counting(node, *args, **kwargs):
        calls.append(1)
        return walk(node, *args, **kwargs)

    monkeypatch.setattr(nnx, "iter_graph", counting)
    return calls


def test_sparsify_and_densify_walk_the_graph_once(monkeypatch):
    # One walk per replaced layer would make replacing n layers cost O(n^2) (seconds for opt-175b).
    model = _model()
    calls = _count_graph_walks(monkeypatch)
    report = sparsify(model, 0.5)
    assert len(report.layers) > 2 and len(calls) == 1
    densify(model)
    assert len(calls) == 2


def test_sparsify_in_each_format_and_auto():
    from jax_flashllm import formats

    for format in ("tiled_csl", "bitmap", "dense"):
        model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))
        report = sparsify(model, 0.5, format=format)
        layers = [m for _, m in nnx.iter_graph(model) if isinstance(m, SparseLinear)]
        assert layers and all(m.format == format and m.weight.format == format for m in layers)
        assert report.sparse_bytes == sum(m.weight.nbytes for m in layers)
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))
    sparsify(model, 0.5)  # "auto": the format with the fewest bytes the kernels take
    w = model.layers[0].fc1.weight
    candidates = {f: SparseMatrix.from_dense(np.asarray(w.to_dense()), format=f).nbytes
                  for f in formats.kernel_formats()}
    assert w.nbytes == min(candidates.values())
