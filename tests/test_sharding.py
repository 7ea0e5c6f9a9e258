"""jax_flashllm.sharding: host-side splitting and padding here; the multi-device cases (sharded sparse_dense
vs the oracle, compiled-HLO collective counts, sharded OPT generation) in tests/sharding_cases.py, run once in
a subprocess with 4 host CPU devices so that this process keeps seeing one device."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from jax_flashllm import SparseMatrix, sparse_dense
from jax_flashllm import _constants as C
from jax_flashllm.models.checkpoint import save_model
from jax_flashllm.models.opt import OPTConfig, OPTForCausalLM
from jax_flashllm.nn import sparsify
from jax_flashllm.sharding import pad_entries, shard_linear, shard_model, shard_sparse, split_sparse
from reference import DTYPES, assert_close_to_reference, random_sparse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sharding_cases  # noqa: E402  (only its case names: jax is already up with one device here)


def _sparse(seed, shape, sparsity=0.8, dtype=DTYPES[1]):
    w = random_sparse(np.random.default_rng(seed), shape, sparsity, dtype)
    return w, SparseMatrix.from_dense(w)


@pytest.mark.parametrize("kind,shards", [("column", 2), ("column", 3), ("row", 2), ("row", 5)])
def test_split_gives_the_blocks(kind, shards):
    w, s = _sparse(0, (300, 200))
    blocks = split_sparse(s, shards, kind)
    expected = np.split(w, shards, axis=0 if kind == "column" else 1)
    for block, ref in zip(blocks, expected):
        block.validate()
        np.testing.assert_array_equal(np.asarray(block.to_dense()), ref)


@pytest.mark.parametrize("kind,shards", [("column", 2), ("column", 4), ("row", 2), ("row", 4)])
def test_split_along_tile_boundaries_copies_the_tiles(kind, shards):
    # Blocks of whole tiles (256 / 128 rows, 128 / 64 columns): the block encodings are w's own tiles, which
    # is exactly what encoding each dense block afresh gives.
    w, s = _sparse(7, (512, 256))
    blocks = split_sparse(s, shards, kind)
    for block, ref in zip(blocks, np.split(w, shards, axis=0 if kind == "column" else 1)):
        block.validate()
        fresh = SparseMatrix.from_dense(ref)
        np.testing.assert_array_equal(block.values.view(np.uint16), fresh.values.view(np.uint16))
        np.testing.assert_array_equal(block.index, fresh.index)
        np.testing.assert_array_equal(block.tile_offsets, fresh.tile_offsets)


def test_split_needs_equal_shards():
    _, s = _sparse(1, (300, 200))
    with pytest.raises(ValueError, match="300.*into 7 equal shards"):
        split_sparse(s, 7, "column")
    with pytest.raises(ValueError, match="kind must be"):
        split_sparse(s, 2, "diagonal")


def _tile_counts(s):
    return np.diff(np.asarray(s.tile_offsets))


def test_pad_goes_to_the_last_tile():
    w, s = _sparse(2, (256, 128), 0.9)
    padded = pad_entries(s, s.values.shape[0] + 64).validate()
    np.testing.assert_array_equal(np.asarray(padded.to_dense()), w)
    added = _tile_counts(padded) - _tile_counts(s)
    assert added.tolist() == [0] * (s.num_tiles - 1) + [64]
    assert padded.nnz == s.nnz


def test_pad_spills_to_earlier_tiles_when_the_last_is_full():
    w = random_sparse(np.random.default_rng(3), (256, 128), 0.9, DTYPES[0])
    w[128:, 64:] = 1.0  # the last tile is fully dense: no room there
    s = SparseMatrix.from_dense(w)
    room_before_last = C.TILE_ELEMS - _tile_counts(s)[-2]
    extra = room_before_last + 16
    padded = pad_entries(s, s.values.shape[0] + extra).validate()
    np.testing.assert_array_equal(np.asarray(padded.to_dense()), w)
    assert (_tile_counts(padded) - _tile_counts(s)).tolist() == [0, 16, room_before_last, 0]


def test_pad_limits():
    _, s = _sparse(4, (128, 64), 0.5)
    p = s.values.shape[0]
    for bad in (p - 8, p + 3, C.TILE_ELEMS + 8):
        with pytest.raises(ValueError, match="cannot pad"):
            pad_entries(s, bad)
    full = pad_entries(s, C.TILE_ELEMS).validate()  # every position of the one tile stored
    assert full.values.shape[0] == C.TILE_ELEMS


@pytest.mark.parametrize("kind", ["column", "row"])
def test_one_device_mesh(kind):
    w, s = _sparse(5, (200, 192), dtype=DTYPES[0])
    mesh = jax.make_mesh((1,), ("tp",))
    sw = shard_sparse(s, mesh, "tp", kind).validate()
    x = np.random.default_rng(6).standard_normal((4, 192)).astype(DTYPES[0])
    assert_close_to_reference(jax.jit(sparse_dense)(x, sw), x, w)
    assert sw.nbytes_per_device == s.nbytes
    with pytest.raises(ValueError, match="no axis 'model'"):
        shard_sparse(s, mesh, "model", kind)


@pytest.fixture(scope="module")
def multi_device_results():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "sharding_cases.py")], env=env, cwd=HERE,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(sharding_cases.CASES))
def test_on_four_devices(multi_device_results, name):
    assert multi_device_results.get(name) == "ok", multi_device_results.get(name, "case did not run")


def _sharded_tiny_opt():
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))
    sparsify(model, 0.5, include="fc1")
    return shard_model(model, jax.make_mesh((1,), ("tp",)), "tp")


def test_save_model_rejects_a_sharded_model(tmp_path):
    with pytest.raises(ValueError, match="before shard_model"):
        save_model(_sharded_tiny_opt(), tmp_path / "m")


def test_sharding_twice_is_rejected():
    model = _sharded_tiny_opt()
    with pytest.raises(ValueError, match="already sharded"):
        shard_model(model, jax.make_mesh((1,), ("tp",)), "tp")
    with pytest.raises(ValueError, match="already sharded"):
        shard_linear(model.layers[0].fc1, jax.make_mesh((1,), ("tp",)), "tp")
    with pytest.raises(TypeError, match="already sharded"):
        shard_sparse(model.layers[0].fc1.weight, jax.make_mesh((1,), ("tp",)), "tp")
