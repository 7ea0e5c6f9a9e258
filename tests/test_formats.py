"""The three storage formats behind one SparseMatrix: exact round trips (hypothesis), the bitmap/dense
layout against a loop over format.h's block order, bytes, "auto", validation of every malformed state,
files (each format, v1 files, crafted sizes), overflow, and the kernel path for every format."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jax_flashllm import SparseMatrix, formats, sparse_dense
from jax_flashllm import _constants as C
from reference import DTYPES, assert_close_to_reference, random_sparse

FORMATS = formats.NAMES
SPECIAL = np.array([np.nan, np.inf, -np.inf, -0.0], np.float32)


def _expected_bits(w, dtype):
    """What to_dense must return: w in `dtype`, bit for bit, except -0.0 (a pruned position) -> +0.0."""
    e = np.asarray(w).astype(dtype)
    return np.where(e == 0, 0, e.view(np.uint16)).astype(np.uint16)


@st.composite
def dense_matrices(draw):
    m, k = draw(st.integers(1, 300)), draw(st.integers(1, 200))
    sparsity = draw(st.sampled_from([0.0, 0.3, 0.5, 0.8, 0.97, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = random_sparse(rng, (m, k), sparsity, np.float32)
    if draw(st.booleans()):  # NaN / Inf / -0 at random places
        at = rng.integers(0, m * k, size=min(4, m * k))
        w.reshape(-1)[at] = SPECIAL[: at.size]
    return w


@settings(max_examples=30, deadline=None)
@given(w=dense_matrices(), fmt=st.sampled_from(FORMATS), dtype=st.sampled_from(DTYPES))
def test_roundtrip_is_exact_for_every_format(w, fmt, dtype):
    s = SparseMatrix.from_dense(w, dtype, format=fmt).validate()
    assert s.format == fmt and s.format_id == formats.get(fmt).ID and s.shape == w.shape
    assert isinstance(s.to_dense(), jax.Array)
    np.testing.assert_array_equal(np.asarray(s.to_dense()).view(np.uint16), _expected_bits(w, dtype))
    assert s.nnz == np.count_nonzero(_expected_bits(w, dtype) & 0x7FFF)
    counts = np.diff(s.tile_offsets)
    assert (counts % C.NNZ_ALIGN == 0).all() and s.tile_offsets[-1] == s.values.shape[0]
    # Under jit too (to_dense is traceable for every format).
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda m: m.to_dense())(s)).view(np.uint16),
                                  _expected_bits(w, dtype))


def _bitmap_by_loops(w):
    """The bitmap encoding of w spelled out from format.h's definitions, one tile and block at a time."""
    m, k = w.shape
    mt, kt = C.tile_grid(m, k)
    wp = np.zeros((mt * C.TILE_M, kt * C.TILE_K), w.dtype)
    wp[:m, :k] = w
    values, index, offsets = [], [], [0]
    for t in range(mt * kt):
        tile = wp[(t // kt) * C.TILE_M:][:C.TILE_M, (t % kt) * C.TILE_K:][:, :C.TILE_K]
        words, vals, slab_starts = [], [], []
        for b in range(C.BLOCKS_PER_TILE):
            if b % C.BLOCKS_PER_SLAB == 0:
                slab_starts.append(len(vals))
            r0, c0 = (int(v) for v in C.bitmap_block_origin(b))
            bits = 0
            for bit in range(C.BLOCK_ELEMS):
                v = tile[r0 + bit // C.BLOCK_COLS, c0 + bit % C.BLOCK_COLS]
                if v != 0:
                    bits |= 1 << bit
                    vals.append(v)
            words += [bits & 0xFFFFFFFF, bits >> 32]
        vals += [0] * (-len(vals) % C.NNZ_ALIGN)
        index += slab_starts + [0] * (C.BITMAP_HEADER_WORDS - len(slab_starts)) + words
        values += vals
        offsets.append(len(values))
    return np.array(values, w.dtype), np.array(index, np.uint32), np.array(offsets, np.int32)


@pytest.mark.parametrize("shape, sparsity", [((130, 70), 0.6), ((128, 64), 0.0), ((5, 3), 0.5)])
def test_bitmap_layout_follows_format_h(shape, sparsity):
    w = random_sparse(np.random.default_rng(1), shape, sparsity, np.float16)
    s = SparseMatrix.from_dense(w, format="bitmap")
    values, index, offsets = _bitmap_by_loops(w)
    np.testing.assert_array_equal(np.asarray(s.values).view(np.uint16), values.view(np.uint16))
    np.testing.assert_array_equal(s.index, index)
    np.testing.assert_array_equal(s.tile_offsets, offsets)


def test_dense_layout_is_every_element_in_block_order():
    w = random_sparse(np.random.default_rng(2), (200, 100), 0.5, np.float16)
    s = SparseMatrix.from_dense(w, format="dense")
    t = s.num_tiles
    assert s.index.shape == (0,) and s.index.dtype == np.uint32
    np.testing.assert_array_equal(s.tile_offsets, np.arange(t + 1) * C.TILE_ELEMS)
    wp = np.zeros((256, 128), np.float16)
    wp[:200, :100] = w
    tile3 = wp[128:, 64:].reshape(-1)  # tile (1, 1), row-major
    np.testing.assert_array_equal(np.asarray(s.values)[3 * C.TILE_ELEMS:], tile3[C.BLOCK_ORDER])


@pytest.mark.parametrize("shape", [(4096, 4096), (300, 200), (1, 1), (129, 65)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.7, 0.8, 0.9, 1.0])
def test_bitmap_bytes_within_the_issue_bound(shape, sparsity):
    w = random_sparse(np.random.default_rng(3), shape, sparsity, ml_dtypes.bfloat16)
    s = SparseMatrix.from_dense(w, format="bitmap")
    mp, kp = s.padded_shape
    t = s.num_tiles
    bound = 0.125 * mp * kp + 2 * (s.nnz + 7 * t) + 4 * (t + 1) + 0.01 * mp * kp
    assert s.nbytes <= bound


@pytest.mark.parametrize("sparsity", [0.0, 0.03, 0.1, 0.5, 0.9, 0.95, 0.99, 1.0])
def test_auto_picks_the_fewest_bytes(sparsity):
    w = random_sparse(np.random.default_rng(4), (512, 512), sparsity, np.float16)
    sizes = {f: SparseMatrix.from_dense(w, format=f).nbytes for f in FORMATS}
    chosen = SparseMatrix.from_dense(w)  # "auto" is the default
    usable = {f: b for f, b in sizes.items() if f in formats.kernel_formats()}
    assert chosen.nbytes == min(usable.values()) and chosen.format == min(usable, key=usable.get)


def test_choose_by_counts():
    t = 4
    assert formats.choose(np.zeros(t, np.int64)) == "tiled_csl"        # empty: offsets only
    assert formats.choose(np.full(t, C.TILE_ELEMS // 2)) == "bitmap"    # 50 %
    assert formats.choose(np.full(t, C.TILE_ELEMS // 50)) == "tiled_csl"  # 98 % sparse
    assert formats.choose(np.full(t, C.TILE_ELEMS)) == "dense"
    assert formats.choose(np.full(t, C.TILE_ELEMS), candidates=("tiled_csl", "bitmap")) == "bitmap"


def test_format_names_and_errors():
    w = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="unknown SparseMatrix format 'csr'"):
        SparseMatrix.from_dense(w, format="csr")
    s = SparseMatrix.from_dense(w, format="bitmap")
    with pytest.raises(AttributeError, match="SparseMatrix.index"):
        s.locations
    t = SparseMatrix.from_dense(w, format="tiled_csl")
    assert t.locations is t.index
    assert "format='bitmap'" in repr(s)


def test_pytree_aux_carries_the_format():
    s = SparseMatrix.from_dense(np.eye(70, dtype=np.float32), format="dense")
    leaves, treedef = jax.tree.flatten(s)
    assert len(leaves) == 3
    assert jax.tree.unflatten(treedef, leaves).format == "dense"
    assert jax.device_put(s).format == "dense"


def test_entry_coords_mark_bitmap_padding_invalid():
    w = random_sparse(np.random.default_rng(5), (130, 70), 0.9, np.float16)
    s = SparseMatrix.from_dense(w, format="bitmap")
    rows, cols, valid = (np.asarray(a) for a in s.entry_coords())
    assert valid.sum() == s.nnz and valid.size == s.values.shape[0]
    np.testing.assert_array_equal(w[rows[valid], cols[valid]], np.asarray(s.values)[valid])


@pytest.mark.parametrize("fmt", FORMATS)
def test_replace_values_and_astype_keep_the_format(fmt):
    s = SparseMatrix.from_dense(random_sparse(np.random.default_rng(6), (100, 90), 0.6, np.float16), format=fmt)
    b = s.astype(jnp.bfloat16)
    assert b.format == fmt and b.dtype == ml_dtypes.bfloat16 and b.index is s.index
    np.testing.assert_array_equal(np.asarray(b.to_dense()), np.asarray(s.to_dense()).astype(ml_dtypes.bfloat16))
    assert s.replace_values(s.values * 2).format == fmt


# --- overflow (issue #13) -----------------------------------------------------------------------------------
def test_overflow_is_an_error_naming_count_and_magnitude():
    w = np.array([[1e6, 1.0], [-7e4, 0.0]], np.float32)
    with pytest.raises(ValueError, match=r"2 value\(s\) overflow float16 \(largest magnitude 1e\+06"):
        SparseMatrix.from_dense(w, dtype=np.float16)
    s = SparseMatrix.from_dense(w, dtype=np.float16, allow_overflow=True)
    assert np.isinf(np.asarray(s.to_dense(), np.float32)).sum() == 2
    assert SparseMatrix.from_dense(w).dtype == ml_dtypes.bfloat16  # bfloat16 holds them
    # Inf that was already inf is not an overflow.
    SparseMatrix.from_dense(np.array([[np.inf, np.nan]], np.float32), dtype=np.float16)


# --- the kernel, every format --------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (130, 70), (256, 192)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_sparse_dense_every_format(kernel_format, shape, dtype):
    rng = np.random.default_rng(7)
    w = random_sparse(rng, shape, 0.6, dtype)
    x = rng.standard_normal((5, shape[1])).astype(dtype)
    s = SparseMatrix.from_dense(w, format=kernel_format)
    assert_close_to_reference(sparse_dense(x, s), x, w)


def test_emulated_kernel_names_what_it_lacks():
    from jax_flashllm.testing import emulated_spmm

    s = SparseMatrix.from_dense(np.eye(64, dtype=np.float16), format="bitmap")
    with pytest.raises(NotImplementedError, match="tiled_csl"):
        emulated_spmm(s, np.ones((2, 64), np.float16))


# --- validation: every malformed state is a clear ValueError -------------------------------------------
def _arrays(fmt, shape=(300, 200), sparsity=0.6):
    s = SparseMatrix.from_dense(random_sparse(np.random.default_rng(8), shape, sparsity, np.float16), format=fmt)
    return np.array(s.values), np.array(s.index), np.array(s.tile_offsets), s.shape


def _words(i):
    return i.reshape(-1, C.BITMAP_WORDS_PER_TILE)


def _bitmap_mutations():
    h = C.BITMAP_HEADER_WORDS

    def slab_offset(v, i, o):
        _words(i)[0, 1] += 1; return v, i, o
    def header_word0(v, i, o):
        _words(i)[1, 0] = 8; return v, i, o
    def reserved_word(v, i, o):
        _words(i)[0, 3] = 1; return v, i, o
    def popcount_vs_offsets(v, i, o):  # a bit cleared: 8 fewer would be needed only sometimes, so clear 9
        w = _words(i)[0, h:].view(np.uint8)
        cleared = np.unpackbits(w, bitorder="little").astype(bool)
        cleared[np.flatnonzero(cleared)[:9]] = False
        _words(i)[0, h:] = np.packbits(cleared, bitorder="little").view(np.uint32)
        _words(i)[0, 1] = np.bitwise_count(_words(i)[0, h:h + 2 * C.BLOCKS_PER_SLAB]).sum()
        return v, i, o
    def offsets_not_monotonic(v, i, o):
        o[2] = o[1] - 8; return v, i, o
    def offsets_misaligned(v, i, o):
        o[1:-1] += 1; return v, i, o
    def offsets_start(v, i, o):
        o[0] = 8; return v, i, o
    def offsets_end(v, i, o):
        o[-1] += 8; return v, i, o
    def bit_outside_edge_tile(v, i, o):
        # Tile (2, 3) holds rows 256..299 and cols 192..199: set the bit of tile element (127, 63), in
        # slab 1, where one more marked value still rounds up to the same count (so only this is wrong).
        t = 2 * 4 + 3
        assert np.bitwise_count(_words(i)[t, h:]).sum() % C.NNZ_ALIGN != 0
        p = int(np.flatnonzero(C.BLOCK_ORDER == 127 * 64 + 63)[0])
        _words(i)[t, h + 2 * (p // 64) + (p % 64) // 32] |= np.uint32(1 << (p % 32))
        return v, i, o
    def padding_value_nonzero(v, i, o):
        counts = np.diff(o)
        marked = [int(np.bitwise_count(_words(i)[t, h:]).sum()) for t in range(counts.size)]
        t = next(t for t in range(counts.size) if counts[t] > marked[t])
        v[o[t] + marked[t]] = 1.0
        return v, i, o
    def index_dtype(v, i, o):
        return v, i.astype(np.uint16), o
    def index_length(v, i, o):
        return v, i[:-4], o
    def values_dtype(v, i, o):
        return v.astype(np.float32), i, o
    def offsets_dtype(v, i, o):
        return v, i, o.astype(np.int64)
    return [(slab_offset, "header slab offsets"), (header_word0, "header slab offsets"),
            (reserved_word, "reserved header words"), (popcount_vs_offsets, "bitmaps mark"),
            (offsets_not_monotonic, "non-decreasing"), (offsets_misaligned, "multiple of 8"),
            (offsets_start, "start at 0"), (offsets_end, r"tile_offsets\[-1\]"),
            (bit_outside_edge_tile, "bits set outside the logical 300x200"),
            (padding_value_nonzero, "tile padding"), (index_dtype, "must be uint32"),
            (index_length, "uint32 words"), (values_dtype, "float16 or bfloat16"), (offsets_dtype, "int32")]


@pytest.mark.parametrize("mutate, message", _bitmap_mutations(), ids=lambda f: getattr(f, "__name__", ""))
def test_bitmap_validate_rejects(mutate, message):
    v, i, o, shape = _arrays("bitmap")
    SparseMatrix(v, i, o, shape, format="bitmap")  # the untouched arrays are valid
    with pytest.raises(ValueError, match=message):
        SparseMatrix(*mutate(v, i, o), shape, format="bitmap")


def _dense_mutations():
    def index_not_empty(v, i, o):
        return v, np.zeros(4, np.uint32), o
    def offsets_not_whole_tiles(v, i, o):
        o[1:] -= 8; return v[:-8], i, o  # tile 0 short by one vector, the rest shifted
    def nonzero_outside_edge_tile(v, i, o):
        t = 2 * 4 + 3
        v[t * C.TILE_ELEMS + int(np.flatnonzero(C.BLOCK_ORDER == 127 * 64 + 63)[0])] = 1.0
        return v, i, o
    def values_short(v, i, o):
        return v[:-8], i, o
    return [(index_not_empty, "empty index"), (offsets_not_whole_tiles, "stores all"),
            (nonzero_outside_edge_tile, "outside the logical 300x200"), (values_short, r"tile_offsets\[-1\]")]


@pytest.mark.parametrize("mutate, message", _dense_mutations(), ids=lambda f: getattr(f, "__name__", ""))
def test_dense_validate_rejects(mutate, message):
    v, i, o, shape = _arrays("dense")
    SparseMatrix(v, i, o, shape, format="dense")
    with pytest.raises(ValueError, match=message):
        SparseMatrix(*mutate(v, i, o), shape, format="dense")


def test_tiled_csl_rejects_a_nonzero_outside_the_matrix():
    v, i, o, shape = _arrays("tiled_csl", shape=(300, 200))
    t = 2 * 4 + 3  # rows 256..299, cols 192..199
    i[o[t]] = C.SWIZZLE_TABLE[127 * 64 + 63]
    v[o[t]] = 1.0
    with pytest.raises(ValueError, match="outside the logical 300x200"):
        SparseMatrix(v, i, o, shape)


def test_validate_messages_name_the_problem():
    v, i, o, shape = _arrays("bitmap")
    _words(i)[0, 3] = 5
    with pytest.raises(ValueError, match="tile 0: reserved header words"):
        SparseMatrix(v, i, o, shape, format="bitmap")


def test_validate_memory_is_o_of_the_stored_values():
    import tracemalloc

    # 65536 x 65536 (4 Gi elements, 2^19 tiles) with no nonzeros: validation must not touch M * K.
    t = 512 * 1024
    tracemalloc.start()
    try:
        SparseMatrix(np.zeros(0, np.float16), np.zeros(0, np.uint16), np.zeros(t + 1, np.int32), (65536, 65536))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"validate peaked at {peak / 2**20:.0f} MiB"


# --- files -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_save_load_every_format(tmp_path, fmt, suffix):
    s = SparseMatrix.from_dense(random_sparse(np.random.default_rng(9), (257, 130), 0.7, np.float16), format=fmt)
    path = tmp_path / f"w{suffix}"
    s.save(path)
    t = SparseMatrix.load(path)
    assert t.format == fmt and t.shape == s.shape and t.dtype == s.dtype
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(t)):
        np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


def test_v1_files_still_load(tmp_path):
    from safetensors.numpy import save_file

    s = SparseMatrix.from_dense(random_sparse(np.random.default_rng(10), (200, 100), 0.8, np.float16),
                                format="tiled_csl")
    # The layout and metadata release 0.1 wrote: header [version 1, M, K, dtype code 1 = float16].
    old = {"header": np.array([1, 200, 100, 1], np.int64), "values": np.asarray(s.values).view(np.uint16),
           "locations": np.asarray(s.index), "tile_offsets": np.asarray(s.tile_offsets)}
    save_file(old, tmp_path / "v1.safetensors", metadata={"format": "jax_flashllm.tiled_csl", "version": "1"})
    np.savez(tmp_path / "v1.npz", **old)
    for name in ("v1.safetensors", "v1.npz"):
        t = SparseMatrix.load(tmp_path / name)
        assert t.format == "tiled_csl"
        np.testing.assert_array_equal(np.asarray(t.to_dense()), np.asarray(s.to_dense()))


def test_load_of_a_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="is a directory.*SparseMatrix.save.*load_model"):
        SparseMatrix.load(tmp_path)


def test_crafted_files_claiming_huge_shapes_are_value_errors(tmp_path):
    from safetensors.numpy import save_file

    small = SparseMatrix.from_dense(np.eye(64, dtype=np.float16), format="bitmap")
    tensors = small.to_tensors()
    tensors["header"] = np.array([C.FORMAT_BITMAP, 2**30, 2**30, 1], np.int64)  # 2^48 elements claimed
    save_file(tensors, tmp_path / "huge.safetensors")
    with pytest.raises(ValueError, match="huge.safetensors.*tile_offsets must have"):
        SparseMatrix.load(tmp_path / "huge.safetensors")
    # An .npz member whose array header claims far more bytes than the archive holds.
    import io
    import zipfile

    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as z:
        for name, a in small.to_tensors().items():
            buf = io.BytesIO()
            if name == "values":
                np.lib.format.write_array_header_1_0(buf, {"descr": "<u2", "fortran_order": False,
                                                           "shape": (10**12,)})
                buf.write(a.tobytes())
            else:
                np.save(buf, a)
            z.writestr(f"{name}.npy", buf.getvalue())
    with pytest.raises(ValueError, match="huge.npz.*claims shape"):
        SparseMatrix.load(path)
