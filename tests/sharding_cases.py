"""Multi-device checks of jax_flashllm.sharding, run by tests/test_sharding.py in a process of its own.

    python tests/sharding_cases.py [CASE ...]     (sets XLA_FLAGS=--xla_force_host_platform_device_count=4)

The flag must be set before jax creates its CPU backend, and the rest of the suite must keep seeing one
device, hence the separate process (importing this module sets nothing: test_sharding.py reads CASES).
Prints one JSON object {case: "ok" | traceback}; pytest reports each case as a test.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback

if __name__ == "__main__" and "device_count" not in os.environ.get("XLA_FLAGS", ""):
    # Before `import jax`: the flag only takes effect if it is there when jax loads.
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType  # noqa: E402

import jax_flashllm as jf  # noqa: E402
from jax_flashllm.generation import generate  # noqa: E402
from jax_flashllm.models.opt import KVCache, OPTConfig, OPTForCausalLM  # noqa: E402
from jax_flashllm.nn import sparsify  # noqa: E402
from jax_flashllm import sharding  # noqa: E402
from jax_flashllm.sharding import ShardedSparseLinear, ShardedSparseMatrix, shard_model, shard_sparse  # noqa: E402
from reference import DTYPES, dense_rounding_error, random_sparse, reference_matmul  # noqa: E402

CASES = {}
_COLLECTIVE = re.compile(r"=\s*\S+\s+(all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)"
                         r"(?:-start)?\(")


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def _mesh(size, axis_type=AxisType.Auto):
    """A (1, size) ("dp", "tp") mesh: tensor parallelism over "tp", a trivial data axis beside it."""
    return jax.make_mesh((1, size), ("dp", "tp"), axis_types=(axis_type, axis_type),
                         devices=jax.devices()[:size])


def collectives(compiled_text: str) -> list[str]:
    """Names of the cross-device ops in an optimized HLO module, in program order."""
    return [m.group(1) for m in map(_COLLECTIVE.search, compiled_text.splitlines()) if m]


def _check_matmul(y, x, w, bias, roundings):
    """y within `roundings` x the dense kernel's own rounding error of the float64 result."""
    ref = reference_matmul(x, w, bias)
    y = np.asarray(y, np.float64)
    assert y.shape == ref.shape, (y.shape, ref.shape)
    bound = roundings * dense_rounding_error(x, w, ref, bias) + 1e-6 * max(1.0, np.abs(ref).max())
    worst = np.abs(y - ref).max()
    assert worst <= bound, f"max error {worst:.3g} exceeds {bound:.3g}"


def _layer_case(kind, size, dtype, m=300, k=384, lead=(3, 5), seed=0, axis_type=AxisType.Auto, format="auto"):
    rng = np.random.default_rng(seed)
    w = random_sparse(rng, (m, k), 0.8, dtype)
    x = rng.standard_normal((*lead, k)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    sw = shard_sparse(jf.SparseMatrix.from_dense(w, format=format), _mesh(size, axis_type), "tp", kind)
    y = jax.jit(jf.sparse_dense)(x, sw, b)
    # Column-parallel: each output comes whole from one device, the unsharded bound holds. Row-parallel: each
    # of the `size` partials is rounded to x's dtype once before the float32 psum, the sum once more.
    roundings = 2 if kind == "column" else size + 2
    _check_matmul(np.asarray(y).reshape(-1, m), x.reshape(-1, k), w, b, roundings)
    return sw, y


@case
def column_parallel_matches_reference():
    for size in (2, 4):
        for dtype in DTYPES:
            sw, y = _layer_case("column", size, dtype, m=300)  # 150 / 75 rows per shard: off the tile grid
            assert y.sharding.spec[-1] == "tp", y.sharding  # the output stays split over the devices


@case
def row_parallel_matches_reference():
    for size in (2, 4):
        for dtype in DTYPES:
            _layer_case("row", size, dtype, k=400)  # 200 / 100 columns per shard: off the tile grid


@case
def every_format_matches_reference_on_both_splits():
    for format in jf.formats.kernel_formats():
        for kind, shape in (("column", dict(m=300)), ("row", dict(k=400))):  # shards off the tile grid
            sw, _ = _layer_case(kind, 2, DTYPES[1], format=format, **shape)
            assert sw.format == format and all(sw.shard(i).format == format for i in range(2))


@case
def shards_are_valid_and_round_trip():
    rng = np.random.default_rng(1)
    # Uneven density: shard 0 is far denser, so the others need many padding entries.
    w = random_sparse(rng, (256, 512), 0.9, DTYPES[1])
    w[:64] = rng.standard_normal((64, 512)).astype(DTYPES[1])
    for format in jf.formats.NAMES:
        s = jf.SparseMatrix.from_dense(w, format=format)
        for kind in ("column", "row"):
            sw = shard_sparse(s, _mesh(4), "tp", kind).validate()
            assert sw.values.shape[0] == 4 and sw.values.sharding.spec[0] == "tp"
            np.testing.assert_array_equal(np.asarray(sw.to_dense()), np.asarray(s.to_dense()))
            assert sum(sw.shard(i).nnz for i in range(4)) == s.nnz, (format, kind)


@case
def validate_and_to_dense_fetch_each_array_once():
    w = random_sparse(np.random.default_rng(2), (256, 256), 0.8, DTYPES[0])
    sw = shard_sparse(jf.SparseMatrix.from_dense(w), _mesh(4), "tp", "column")
    fetches, host = [], sharding._host  # the module's one device-to-host fetch
    sharding._host = lambda a: fetches.append(1) or host(a)
    try:
        sw.validate()
        assert len(fetches) == 3, f"validate fetched {len(fetches)} arrays, not 3"  # not 3 per shard
        np.testing.assert_array_equal(np.asarray(sw.to_dense()), w)
        assert len(fetches) == 6, f"to_dense fetched {len(fetches) - 3} arrays, not 3"
    finally:
        sharding._host = host
    offsets = np.asarray(sw.tile_offsets).copy()
    offsets[2, 1] += 8  # shard 2's first tile overlaps its second
    bad = ShardedSparseMatrix(sw.values, sw.index, offsets, sw.shape, sw.dtype, sw.kind, sw.mesh, sw.axis,
                              sw.format)
    try:
        bad.validate()
    except ValueError as e:
        assert str(e).startswith("shard 2 of 4: "), e
    else:
        raise AssertionError("a corrupt shard passed validate()")


@case
def one_dimensional_and_explicit_meshes():
    for axis_type in (AxisType.Auto, AxisType.Explicit):
        mesh = jax.make_mesh((4,), ("tp",), axis_types=(axis_type,))
        rng = np.random.default_rng(2)
        w = random_sparse(rng, (256, 128), 0.8, DTYPES[0])
        x = rng.standard_normal((7, 128)).astype(DTYPES[0])
        for kind in ("column", "row"):
            y = jax.jit(jf.sparse_dense)(x, shard_sparse(w, mesh, "tp", kind))
            _check_matmul(y, x, w, None, 6)


@case
def grad_wrt_x_through_both_splits():
    rng = np.random.default_rng(4)
    w = random_sparse(rng, (256, 128), 0.8, DTYPES[1])
    x = rng.standard_normal((3, 128)).astype(DTYPES[1])
    for kind in ("column", "row"):
        sw = shard_sparse(w, _mesh(4), "tp", kind)
        g = jax.jit(jax.grad(lambda x, w: jf.sparse_dense(x, w).astype(jnp.float32).sum()))(x, sw)
        # d/dx sum(x @ W.T) = ones @ W; the column split sums 4 per-device partials.
        _check_matmul(g, np.ones((3, 256), DTYPES[1]), w.T, None, 6)


@case
def hlo_column_parallel_has_no_collective():
    sw, _ = _layer_case("column", 4, DTYPES[1])
    x = jnp.zeros((3, 5, sw.shape[1]), sw.dtype)
    text = jax.jit(jf.sparse_dense).lower(x, sw).compile().as_text()
    assert collectives(text) == [], collectives(text)


@case
def hlo_row_parallel_has_one_all_reduce():
    sw, _ = _layer_case("row", 4, DTYPES[1])
    x = jnp.zeros((3, 5, sw.shape[1]), sw.dtype)
    b = jnp.zeros(sw.shape[0], sw.dtype)
    text = jax.jit(jf.sparse_dense).lower(x, sw, b).compile().as_text()
    assert collectives(text) == ["all-reduce"], collectives(text)


@case
def hlo_mlp_pair_has_one_all_reduce():
    """fc1 (column) -> relu -> fc2 (row): the hidden activations never leave their device."""
    rng = np.random.default_rng(3)
    mesh = _mesh(4)
    w1 = shard_sparse(random_sparse(rng, (512, 128), 0.8, DTYPES[1]), mesh, "tp", "column")
    w2 = shard_sparse(random_sparse(rng, (128, 512), 0.8, DTYPES[1]), mesh, "tp", "row")

    def mlp(x, w1, w2):
        return jf.sparse_dense(jax.nn.relu(jf.sparse_dense(x, w1)), w2)

    x = rng.standard_normal((4, 128)).astype(DTYPES[1])
    text = jax.jit(mlp).lower(x, w1, w2).compile().as_text()
    assert collectives(text) == ["all-reduce"], collectives(text)
    dense = [np.asarray(w.to_dense(), np.float32) for w in (w1, w2)]
    ref = np.maximum(x.astype(np.float32) @ dense[0].T, 0) @ dense[1].T
    np.testing.assert_allclose(np.asarray(jax.jit(mlp)(x, w1, w2), np.float32), ref, rtol=0.05, atol=0.5)


def _opt(sparse, post_ln=False, seed=0):
    cfg = OPTConfig.tiny(post_ln=post_ln, hidden_size=64, ffn_dim=256)
    model = OPTForCausalLM(cfg, rngs=nnx.Rngs(seed))
    if sparse:
        sparsify(model, 0.8)
    return model


_PROMPTS = jnp.array([[1, 1, 7, 8, 9], [5, 6, 7, 8, 9]], jnp.int32)  # row 0 left-padded
_MASK = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], jnp.int32)


def _generation_matches(sparse, post_ln, sizes=(2, 4), axis_type=AxisType.Auto, vocab_parallel=False):
    expected = generate(_opt(sparse, post_ln), _PROMPTS, _MASK, max_new_tokens=8, eos_token_id=None)
    for size in sizes:
        model = shard_model(_opt(sparse, post_ln), _mesh(size, axis_type), vocab_parallel=vocab_parallel)
        if sparse:
            layer = model.layers[0]
            assert isinstance(layer.fc2, ShardedSparseLinear) and layer.fc2.values.shape[0] == size
        got = generate(model, _PROMPTS, _MASK, max_new_tokens=8, eos_token_id=None)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected), err_msg=f"mesh 1x{size}")


@case
def opt_dense_generation_matches_one_device():
    _generation_matches(sparse=False, post_ln=False)


@case
def opt_sparse_generation_matches_one_device():
    _generation_matches(sparse=True, post_ln=False)


@case
def opt_sparse_post_ln_generation_matches_one_device():
    # jax.make_mesh's default Explicit axes: shard_model uses the same devices as Auto axes.
    _generation_matches(sparse=True, post_ln=True, sizes=(4,), axis_type=AxisType.Explicit)


@case
def opt_vocab_parallel_generation_matches_one_device():
    _generation_matches(sparse=True, post_ln=False, sizes=(4,), vocab_parallel=True)


@case
def hlo_opt_two_all_reduces_per_layer():
    """A prefill of the sharded model: one all-reduce per out_proj and per fc2 (and one for a vocab-split
    embedding), nothing else crosses devices — no weight is gathered, the KV cache and the heads stay split."""
    for sparse, vocab_parallel in ((False, False), (True, False), (True, True)):
        model = shard_model(_opt(sparse), _mesh(4), vocab_parallel=vocab_parallel)
        graphdef, state = nnx.split(model)
        cache = KVCache.zeros(model.config, 2, 16, model.dtype)

        def prefill(state, ids, cache):
            return nnx.merge(graphdef, state).decode(ids, cache, 0)

        text = jax.jit(prefill).lower(state, _PROMPTS, cache).compile().as_text()
        # A vocab-split embedding adds one all-reduce: each device looks up the ids in its own rows.
        expected = ["all-reduce"] * (2 * model.config.num_hidden_layers + vocab_parallel)
        assert collectives(text) == expected, (sparse, vocab_parallel, collectives(text))


def main(names):
    results = {}
    for name in names or CASES:
        try:
            CASES[name]()
            results[name] = "ok"
        except Exception:  # report every case, not just the first failure
            results[name] = traceback.format_exc()
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
