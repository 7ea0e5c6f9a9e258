"""The fused CPU attention kernel (jax_flashllm.attention), each instruction-set variant forced in turn,
against a float64 numpy oracle: random shapes (head dims and slot counts off every vector width), float32 /
bfloat16 / float16, causal and left-padded masks, rows that see no key; its jnp reference, gradients,
vmap, loops and the GPU lowering."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jax_flashllm import _flashllm_cpu
from jax_flashllm.attention import attention, attention_over_heads, attention_reference
from jax_flashllm.models.opt import mask_bias

DTYPES = (np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16))
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def oracle(q, k, v, mask):
    """float64 attention with mask_bias's semantics: softmax over the visible keys; a row that sees none is
    the uniform average of v. q (B, T, H, D), k (B, H, D, S), v (B, H, S, D), mask (B, T, S) bool."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scores = np.einsum("bthd,bhds->bhts", q, k)
    visible = np.broadcast_to(mask[:, None], scores.shape)
    blind = ~visible.any(-1, keepdims=True)
    scores = np.where(visible | blind, np.where(blind, 0.0, scores), -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhts,bhsd->bthd", weights, v)


def inputs(rng, b, t, h, d, s, dtype, kv_dtype=None):
    kv_dtype = dtype if kv_dtype is None else kv_dtype
    q = (rng.standard_normal((b, t, h, d)) * d ** -0.5 * 3).astype(dtype)
    k = rng.standard_normal((b, h, d, s)).astype(kv_dtype)
    v = rng.standard_normal((b, h, s, d)).astype(kv_dtype)
    return q, k, v


def masks(rng, b, t, s, kind):
    """(B, T, S) bool: "random", "causal" (query i at slot s - t + i, left padding of random length per
    batch row), or "none" (every key masked)."""
    if kind == "none":
        return np.zeros((b, t, s), bool)
    if kind == "random":
        m = rng.random((b, t, s)) < 0.5
        m[0, 0] = False  # one row that sees nothing
        return m
    pad = rng.integers(0, s + 1, size=b)
    slots = np.arange(s)
    causal = slots[None, :] <= (s - t + np.arange(t))[:, None]
    return causal[None] & (slots[None, None, :] >= pad[:, None, None])


def assert_close_to_oracle(y, q, k, v, mask):
    """Within half an ulp of the output dtype (its rounding) of the float64 result, plus float32 accumulation
    error."""
    want = oracle(q, k, v, mask)
    got = np.asarray(y).astype(np.float64)
    assert y.dtype == q.dtype and y.shape == q.shape
    scale = np.abs(np.asarray(v, np.float64)).max(initial=0.0)
    tol = 0.5 * ml_dtypes.finfo(q.dtype).eps * np.abs(want) + 64 * np.finfo(np.float32).eps * scale
    np.testing.assert_array_less(np.abs(got - want), tol + 1e-30)


def run(q, k, v, mask):
    return jax.jit(attention)(q, k, v, mask_bias(jnp.asarray(mask)))


def test_the_masked_bias_the_kernel_skips_is_mask_bias():
    assert _flashllm_cpu.attention_masked_bias() == float(np.asarray(mask_bias(jnp.zeros((1, 1, 1), bool))).item())


@SETTINGS
@given(b=st.integers(1, 2), t=st.integers(1, 4), h=st.integers(1, 3), d=st.integers(1, 70),
       s=st.sampled_from([1, 2, 7, 15, 16, 17, 31, 33, 64, 127, 129, 200, 300]),
       dtype=st.sampled_from(DTYPES), kind=st.sampled_from(["random", "causal", "none"]), seed=st.integers(0, 2**16))
def test_kernel_matches_float64_oracle(isa, b, t, h, d, s, dtype, kind, seed):
    rng = np.random.default_rng(seed)
    q, k, v = inputs(rng, b, t, h, d, s, dtype)
    mask = masks(rng, b, t, s, kind)
    assert_close_to_oracle(run(q, k, v, mask), q, k, v, mask)


@pytest.mark.parametrize("d", [64, 80, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_decode_over_a_long_left_padded_cache(isa, dtype, d):
    # One query row over 2048 slots, most of them the cache's empty tail and some left padding: the skipped
    # blocks at every boundary of every variant's block (32, 64 or 128 slots).
    rng = np.random.default_rng(d)
    b, h, s = 2, 3, 2048
    q, k, v = inputs(rng, b, 1, h, d, s, dtype)
    slots = np.arange(s)
    mask = np.stack([(slots >= 5) & (slots <= 300), (slots >= 128) & (slots <= 1000)])[:, None]
    assert_close_to_oracle(run(q, k, v, mask), q, k, v, mask)


@pytest.mark.parametrize("q_dtype,kv_dtype", [(np.float32, ml_dtypes.bfloat16), (ml_dtypes.bfloat16, np.float32),
                                              (np.float16, ml_dtypes.bfloat16)])
def test_query_and_cache_dtypes_may_differ(q_dtype, kv_dtype):
    rng = np.random.default_rng(3)
    q, k, v = inputs(rng, 2, 3, 2, 24, 50, np.dtype(q_dtype), np.dtype(kv_dtype))
    mask = masks(rng, 2, 3, 50, "causal")
    assert_close_to_oracle(run(q, k, v, mask), q, k, v, mask)


def test_equals_the_jnp_reference_and_reference_switch():
    rng = np.random.default_rng(4)
    q, k, v = inputs(rng, 2, 5, 3, 16, 40, np.dtype(np.float32))
    bias = mask_bias(jnp.asarray(masks(rng, 2, 5, 40, "causal")))
    ref = attention_reference(q, k, v, bias)
    np.testing.assert_allclose(np.asarray(jax.jit(attention)(q, k, v, bias)), np.asarray(ref), atol=1e-6, rtol=1e-6)
    forced = jax.jit(lambda *a: attention(*a, reference=True))
    np.testing.assert_array_equal(np.asarray(forced(q, k, v, bias)), np.asarray(jax.jit(attention_reference)(q, k, v, bias)))
    assert "flashllm_attention_cpu" in jax.jit(attention).lower(q, k, v, bias).as_text()
    assert "flashllm_attention_cpu" not in forced.lower(q, k, v, bias).as_text()


def test_a_bias_shared_by_the_batch_broadcasts():
    rng = np.random.default_rng(5)
    q, k, v = inputs(rng, 3, 4, 2, 8, 4, np.dtype(np.float32))
    bias = mask_bias(jnp.tril(jnp.ones((4, 4), bool))[None])  # (1, 1, T, S)
    np.testing.assert_allclose(np.asarray(jax.jit(attention)(q, k, v, bias)),
                               np.asarray(attention_reference(q, k, v, bias)), atol=1e-6)


def test_a_nonfinite_value_in_a_skipped_slot_does_not_reach_the_output(isa):
    # The one documented difference from the reference (whose weight 0 times inf is NaN): a slot whose whole
    # aligned block is masked for a row that sees other keys is not read (slot 200: its 128-slot block, and so
    # every variant's block, is masked). With no visible key every slot is read, as the reference does.
    rng = np.random.default_rng(6)
    q, k, v = inputs(rng, 1, 2, 1, 8, 256, np.dtype(np.float32))
    k[..., 200], v[:, :, 200] = np.inf, np.nan
    mask = np.zeros((1, 2, 256), bool)
    mask[0, 0, :100] = True
    y = np.asarray(run(q, k, v, mask))
    assert np.isfinite(y[0, 0]).all() and np.isnan(y[0, 1]).all()
    k[..., 200], v[:, :, 200] = 0.0, 0.0
    np.testing.assert_allclose(y[0, 0], oracle(q, k, v, mask)[0, 0], atol=1e-5)
    # A masked slot in an aligned 32-slot block the row partly sees is read on every variant (all their blocks
    # are multiples of 32), as the reference reads it: NaN.
    v[:, :, 100] = np.nan
    y = np.asarray(run(q, k, v, mask))
    assert np.isnan(y[0, 0]).all()


def test_minus_inf_biases_are_masked_keys(isa):
    # Two added mask biases overflow to -inf where both mask. Those keys are masked, not visible: a row of
    # -inf and float32-minimum keys is the reference's average over the float32-minimum ones, and a row of -inf
    # only is NaN in both.
    rng = np.random.default_rng(7)
    q, k, v = inputs(rng, 1, 3, 2, 8, 256, np.dtype(np.float32))
    a = np.zeros((1, 3, 256), bool)
    a[0, 0, :100] = True  # row 0: keys 0..99 visible
    a[0, 1, 100:] = True  # row 1: keys 100.. visible in a, none in b
    b = np.zeros((1, 3, 256), bool)
    b[0, 0] = True
    bias = mask_bias(jnp.asarray(a)) + mask_bias(jnp.asarray(b))
    assert np.isneginf(np.asarray(bias)[0, 0, 1, :100]).all()
    got = np.asarray(jax.jit(attention)(q, k, v, bias))
    want = np.asarray(attention_reference(q, k, v, bias))
    assert np.isnan(want[0, 2]).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(got[0, 1], np.asarray(v, np.float64)[0, :, 100:].mean(axis=1), rtol=1e-4, atol=1e-5)


def test_gradients_are_the_references():
    rng = np.random.default_rng(7)
    q, k, v = (jnp.asarray(a) for a in inputs(rng, 2, 3, 2, 8, 12, np.dtype(np.float32)))
    bias = mask_bias(jnp.asarray(masks(rng, 2, 3, 12, "causal")))
    w = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)

    def loss(f):
        return lambda q, k, v, bias: jnp.sum(f(q, k, v, bias) * w)

    got = jax.jit(jax.grad(loss(attention), argnums=(0, 1, 2, 3)))(q, k, v, bias)
    want = jax.grad(loss(attention_reference), argnums=(0, 1, 2, 3))(q, k, v, bias)
    for g, r in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-6, rtol=1e-5)
    _, dy = jax.jvp(attention, (q, k, v, bias), (q, k, v, jnp.zeros_like(bias)))
    _, dy_ref = jax.jvp(attention_reference, (q, k, v, bias), (q, k, v, jnp.zeros_like(bias)))
    np.testing.assert_allclose(np.asarray(dy), np.asarray(dy_ref), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("axes", [(0, 0, 0, None), (1, None, None, 0), (0, 2, 3, None)])
def test_vmap_folds_into_the_batch(axes):
    rng = np.random.default_rng(8)
    n, b, t, h, d, s = 3, 2, 2, 2, 8, 10
    shapes = {"q": (b, t, h, d), "k": (b, h, d, s), "v": (b, h, s, d)}
    args = []
    for name, axis in zip("qkv", axes):
        shape = list(shapes[name])
        if axis is not None:
            shape.insert(axis, n)
        args.append(jnp.asarray(rng.standard_normal(shape), jnp.float32))
    bias_shape = (b, 1, t, s) if axes[3] is None else (n, b, 1, t, s)
    args.append(jnp.where(jnp.asarray(rng.random(bias_shape) < 0.6), 0.0, jnp.finfo(jnp.float32).min))
    got = jax.jit(jax.vmap(attention, in_axes=axes))(*args)
    want = jax.vmap(attention_reference, in_axes=axes)(*args)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_inside_a_while_loop():
    rng = np.random.default_rng(9)
    q, k, v = (jnp.asarray(a) for a in inputs(rng, 1, 1, 2, 8, 16, np.dtype(ml_dtypes.bfloat16)))

    def steps(f):
        def body(i, acc):
            bias = mask_bias((jnp.arange(16) <= i)[None, None])
            return acc + f(q, k, v, bias).astype(jnp.float32)
        return jax.jit(lambda: jax.lax.fori_loop(0, 16, body, jnp.zeros(q.shape, jnp.float32)))()

    np.testing.assert_allclose(np.asarray(steps(attention)), np.asarray(steps(attention_reference)), atol=0.05)


def test_gpu_lowers_to_the_reference():
    q, k, v = (jnp.ones(s, jnp.bfloat16) for s in ((1, 1, 2, 8), (1, 2, 8, 4), (1, 2, 4, 8)))
    bias = jnp.zeros((1, 1, 1, 4), jnp.float32)
    text = jax.jit(attention).trace(q, k, v, bias).lower(lowering_platforms=("cuda",)).as_text()
    assert "custom_call" not in text and "exponential" in text


def test_rejects_a_boolean_mask_and_mismatched_shapes():
    q, k, v = jnp.ones((1, 1, 2, 8)), jnp.ones((1, 2, 8, 4)), jnp.ones((1, 2, 4, 8))
    with pytest.raises(TypeError, match="float32"):
        attention(q, k, v, jnp.ones((1, 1, 1, 4), bool))
    with pytest.raises(ValueError, match="k must be"):
        attention(q, k[:, :, :4], v, jnp.zeros((1, 1, 1, 4)))


def test_attention_over_heads_is_attention_per_device():
    # One device here; tests/sharding_cases.py runs the sharded model on four (no collective for attention).
    rng = np.random.default_rng(10)
    q, k, v = (jnp.asarray(a) for a in inputs(rng, 2, 3, 4, 8, 12, np.dtype(np.float32)))
    bias = mask_bias(jnp.asarray(masks(rng, 2, 3, 12, "causal")))
    mesh = jax.make_mesh((1,), ("tp",), axis_types=(jax.sharding.AxisType.Auto,))
    got = jax.jit(lambda *a: attention_over_heads(*a, mesh, "tp"))(q, k, v, bias)
    np.testing.assert_allclose(np.asarray(got), np.asarray(attention(q, k, v, bias)), atol=1e-6)
