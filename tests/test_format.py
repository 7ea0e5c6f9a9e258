"""Tiled-CSL encoding: exact round trips, invariants, validation errors, persistence."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jax_flashllm import SparseMatrix
from jax_flashllm import sparse_dense as jf_sparse_dense
from jax_flashllm import _constants as C
from reference import DTYPES, random_sparse

BF16 = np.dtype(ml_dtypes.bfloat16)


def roundtrip(w, dtype=None):
    s = SparseMatrix.from_dense(w, dtype=dtype)
    s.validate()
    d = np.asarray(s.to_dense())
    assert d.shape == w.shape and d.dtype == s.dtype
    expected = np.asarray(w).astype(s.dtype)
    # Bitwise, except that -0.0 is a pruned position and comes back as +0.0.
    np.testing.assert_array_equal(d.view(np.uint16), np.where(expected == 0, 0, expected.view(np.uint16)))
    return s


def _adversarial(shape_m=300, shape_k=200):
    w_corner = np.zeros((shape_m, shape_k), np.float32)
    w_corner[-1, -1] = 3.0
    w_tile = np.zeros((shape_m, shape_k), np.float32)
    w_tile[128:256, 64:128] = np.arange(1, 128 * 64 + 1).reshape(128, 64) / 100
    return {
        "all_zero": np.zeros((shape_m, shape_k), np.float32),
        "fully_dense": np.arange(1, shape_m * shape_k + 1, dtype=np.float32).reshape(shape_m, shape_k) / 7,
        "one_in_corner": w_corner,
        "dense_tile_among_empty": w_tile,
        "m_is_1": np.arange(1, 131, dtype=np.float32)[None, :],
        "k_is_1": np.arange(1, 131, dtype=np.float32)[:, None],
        "one_by_one": np.full((1, 1), 2.5, np.float32),
        "nan_inf": np.array([[np.nan, 0, np.inf], [-np.inf, 1.0, 0]], np.float32),
    }


@pytest.mark.parametrize("name", list(_adversarial()))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_roundtrip_adversarial(name, dtype):
    roundtrip(_adversarial()[name], dtype)


@pytest.mark.parametrize("shape", [(128, 64), (129, 65), (1000, 70), (64, 1000)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_roundtrip_random(shape, sparsity):
    rng = np.random.default_rng(hash((shape, sparsity)) % 2**32)
    for dtype in DTYPES:
        roundtrip(random_sparse(rng, shape, sparsity, dtype))


def test_layout_follows_the_format():
    rng = np.random.default_rng(1)
    w = random_sparse(rng, (300, 200), 0.7, np.float16)
    s = SparseMatrix.from_dense(w, format="tiled_csl")
    mt, kt = s.tiles
    assert (mt, kt) == (3, 4)
    counts = np.diff(s.tile_offsets)
    assert (counts % C.NNZ_ALIGN == 0).all()
    assert s.tile_offsets[0] == 0 and s.tile_offsets[-1] == s.values.shape[0]
    assert s.nnz == np.count_nonzero(w)
    assert s.nbytes == 4 * s.values.shape[0] + 4 * (mt * kt + 1)
    assert s.sparsity == pytest.approx(1 - np.count_nonzero(w) / w.size)
    # Entries of tile (1, 2) decode to exactly that tile's nonzeros (+ zero-valued padding).
    t = 1 * kt + 2
    sl = slice(s.tile_offsets[t], s.tile_offsets[t + 1])
    r, c = C.unswizzle(s.locations[sl].astype(np.int64))
    padded = np.zeros((384, 256), np.float16)
    padded[:300, :200] = w
    np.testing.assert_array_equal(padded[128 + r, 128 + c], s.values[sl])
    assert np.count_nonzero(s.values[sl]) == np.count_nonzero(padded[128:256, 128:192])


def test_default_and_explicit_dtypes():
    w32 = np.eye(4, dtype=np.float32)
    assert SparseMatrix.from_dense(w32).dtype == BF16
    assert SparseMatrix.from_dense(w32, dtype=np.float16).dtype == np.float16
    assert SparseMatrix.from_dense(w32.astype(np.float16)).dtype == np.float16
    assert SparseMatrix.from_dense(jnp.eye(4, dtype=jnp.bfloat16)).dtype == BF16


@pytest.mark.parametrize("bad, exc", [
    (np.zeros((2, 2, 2), np.float32), ValueError),
    (np.zeros((0, 4), np.float32), ValueError),
    (np.ones((4, 4), np.int32), TypeError),
])
def test_from_dense_rejects_bad_input(bad, exc):
    with pytest.raises(exc):
        SparseMatrix.from_dense(bad)


def test_from_dense_rejects_bad_storage_dtype():
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        SparseMatrix.from_dense(np.eye(3, dtype=np.float32), dtype=np.float32)


def test_pytree_through_jit_and_device_put():
    s = SparseMatrix.from_dense(random_sparse(np.random.default_rng(2), (200, 100), 0.8, np.float16))
    leaves, treedef = jax.tree.flatten(s)
    assert len(leaves) == 3
    s2 = jax.device_put(s)
    assert isinstance(s2, SparseMatrix) and s2.shape == s.shape
    dense = jax.jit(lambda m: m.to_dense())(s2)
    np.testing.assert_array_equal(np.asarray(dense), np.asarray(s.to_dense()))


# --- validation -------------------------------------------------------------------------------------
def _arrays():
    s = SparseMatrix.from_dense(random_sparse(np.random.default_rng(3), (300, 200), 0.6, np.float16),
                                format="tiled_csl")
    return np.array(s.values), np.array(s.locations), np.array(s.tile_offsets), s.shape


def _mutations():
    def offsets_start(v, l, o, sh):
        o = o.copy(); o[0] = 8; return v, l, o, sh
    def offsets_decrease(v, l, o, sh):
        o = o.copy(); o[2] = o[1] - 8; return v, l, o, sh
    def offsets_length(v, l, o, sh):
        return v, l, o[:-1], sh
    def offsets_end(v, l, o, sh):
        o = o.copy(); o[-1] += 8; return v, l, o, sh
    def location_out_of_tile(v, l, o, sh):
        l = l.copy(); l[5] = C.TILE_ELEMS + 3; return v, l, o, sh
    def location_repeated(v, l, o, sh):
        l = l.copy(); l[1] = l[0]; return v, l, o, sh
    def unpadded_count(v, l, o, sh):
        o = o.copy(); o[1:] -= 1; o[-1] += 0; return v[:-1], l[:-1], o, sh
    def wrong_value_dtype(v, l, o, sh):
        return v.astype(np.float32), l, o, sh
    def wrong_location_dtype(v, l, o, sh):
        return v, l.astype(np.int32), o, sh
    def wrong_offset_dtype(v, l, o, sh):
        return v, l, o.astype(np.int64), sh
    def lengths_differ(v, l, o, sh):
        return v, l[:-8], o, sh
    def two_dimensional(v, l, o, sh):
        return v.reshape(-1, 8), l, o, sh
    def bad_shape(v, l, o, sh):
        return v, l, o, (0, sh[1])
    return {f.__name__: f for f in (offsets_start, offsets_decrease, offsets_length, offsets_end,
                                     location_out_of_tile, location_repeated, unpadded_count,
                                     wrong_value_dtype, wrong_location_dtype, wrong_offset_dtype,
                                     lengths_differ, two_dimensional, bad_shape)}


@pytest.mark.parametrize("name", list(_mutations()))
def test_validate_rejects_every_malformed_state(name):
    args = _mutations()[name](*_arrays())
    with pytest.raises(ValueError):
        SparseMatrix(*args)


def test_validate_messages_name_the_problem():
    v, l, o, sh = _arrays()
    l2 = l.copy(); l2[1] = l2[0]
    with pytest.raises(ValueError, match="repeated within tile 0"):
        SparseMatrix(v, l2, o, sh)
    o2 = o.copy(); o2[0] = 8
    with pytest.raises(ValueError, match="start at 0"):
        SparseMatrix(v, l, o2, sh)


def test_constructor_accepts_valid_arrays():
    v, l, o, sh = _arrays()
    s = SparseMatrix(v, l, o, sh)
    assert s.shape == sh and s.dtype == np.float16


# --- persistence ------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_save_load_roundtrip(tmp_path, suffix, dtype):
    s = SparseMatrix.from_dense(random_sparse(np.random.default_rng(4), (257, 130), 0.8, dtype))
    path = tmp_path / f"w{suffix}"
    s.save(path)
    t = SparseMatrix.load(path)
    assert t.shape == s.shape and t.dtype == s.dtype
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(t)):
        np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_truncated_or_corrupt_file_is_a_clear_error(tmp_path, suffix):
    s = SparseMatrix.from_dense(random_sparse(np.random.default_rng(5), (200, 200), 0.5, np.float16))
    path = tmp_path / f"w{suffix}"
    s.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        SparseMatrix.load(path)
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError):
        SparseMatrix.load(path)
    with pytest.raises(FileNotFoundError):
        SparseMatrix.load(tmp_path / "missing.safetensors")


def test_load_rejects_tampered_contents(tmp_path):
    from safetensors.numpy import load_file, save_file
    s = SparseMatrix.from_dense(random_sparse(np.random.default_rng(6), (200, 200), 0.5, np.float16),
                                format="tiled_csl")
    path = tmp_path / "w.safetensors"
    s.save(path)
    tensors = load_file(path)
    tensors["locations"][3] = tensors["locations"][2]
    save_file(tensors, path)
    with pytest.raises(ValueError, match="repeated"):
        SparseMatrix.load(path)
    tensors = s.to_tensors()
    tensors["header"][0] = 99
    save_file(tensors, path)
    with pytest.raises(ValueError, match="version"):
        SparseMatrix.load(path)


def test_encoder_is_vectorized_fast_enough():
    # Not a timing assertion (benchmarks do those): a Python loop over tiles would make this size
    # take minutes, so the test simply has to finish.
    w = random_sparse(np.random.default_rng(7), (2048, 4096), 0.8, BF16)
    s = SparseMatrix.from_dense(w)
    assert s.nnz == np.count_nonzero(w)


def test_constructor_turns_array_likes_into_arrays():
    v, l, o, sh = _arrays()
    s = SparseMatrix(list(v), list(l), list(o), sh)  # lists of numpy scalars keep their dtypes
    leaves = jax.tree.leaves(s)
    assert len(leaves) == 3 and all(isinstance(a, np.ndarray) for a in leaves)
    x = np.ones((2, sh[1]), np.float16)
    np.testing.assert_array_equal(np.asarray(jf_sparse_dense(x, s)),
                                  np.asarray(jf_sparse_dense(x, SparseMatrix(v, l, o, sh))))
    # Python floats carry no 16-bit dtype: such values must be cast first, and the error says so.
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        SparseMatrix(v.tolist(), l, o, sh)
