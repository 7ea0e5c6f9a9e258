"""The CPU kernel for the bitmap (v2) and dense (v3) formats, each instruction-set variant forced in turn
(the `isa` fixture, conftest.py),
against a float64 oracle: shapes off the tile grid, empty and full tiles, N across the kernel's paths,
fp16 and bf16; NaN in x; malformed matrices give clear errors."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import jax_flashllm as jf
from jax_flashllm import _constants as C
from jax_flashllm import _flashllm_cpu
from reference import DTYPES, assert_close_to_reference, random_sparse

ISAS = _flashllm_cpu.cpu_isas()
FORMATS = {"bitmap": C.FORMAT_BITMAP, "dense": C.FORMAT_DENSE}


def _encode(w, fmt):
    """(values, index, tile_offsets) of w in the format with id `fmt`, as numpy arrays."""
    name = {C.FORMAT_BITMAP: "bitmap", C.FORMAT_DENSE: "dense"}[fmt]
    s = jf.SparseMatrix.from_dense(w, format=name)
    return tuple(np.asarray(a) for a in (s.values, s.index, s.tile_offsets))


def _spmm(x, values, index, offsets, m, k, fmt):
    out = (jax.ShapeDtypeStruct((x.shape[0], m), x.dtype), jax.ShapeDtypeStruct((0,), jnp.float32))
    call = jax.ffi.ffi_call("flashllm_spmm_cpu", out)
    y, _ = call(x, values, index, offsets, m=np.int64(m), k=np.int64(k), split_k=np.int64(1), format=np.int64(fmt))
    return np.asarray(y)


def _check(x, w, fmt):
    # Through the public op, fresh jit per call: the variant is read when the kernel runs.
    name = {C.FORMAT_BITMAP: "bitmap", C.FORMAT_DENSE: "dense"}[fmt]
    y = jax.jit(jf.sparse_dense)(x, jf.SparseMatrix.from_dense(w, format=name))
    assert_close_to_reference(np.asarray(y), x, w)


def test_formats_lists_all_three():
    assert sorted(_flashllm_cpu.formats()) == [C.FORMAT_TILED_CSL, C.FORMAT_BITMAP, C.FORMAT_DENSE]


def _with_empty_and_full_tiles(rng, shape, sparsity, dtype):
    w = random_sparse(rng, shape, sparsity, np.float32)
    w[: C.TILE_M, : C.TILE_K] = 0.0  # one empty tile
    w[-min(shape[0], C.TILE_M):, -min(shape[1], C.TILE_K):] = rng.standard_normal((min(shape[0], C.TILE_M), min(shape[1], C.TILE_K)))
    return w.astype(dtype)


# N = 1-4 go column by column through the tile (bf16 with AVX512_BF16), 7-17 cross the 8/16-wide chunks of
# the dense-tile multiply, 64 is the widest chunk, 67 = 64 + a 3-column chunk.
@pytest.mark.parametrize("n", [1, 2, 4, 7, 8, 16, 17, 64, 67])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("fmt", FORMATS)
def test_against_oracle(isa, fmt, dtype, n):
    rng = np.random.default_rng(n + 17 * len(fmt))
    w = _with_empty_and_full_tiles(rng, (300, 333), 0.6, dtype)  # 44-row and 13-column edge tiles
    x = rng.standard_normal((n, 333)).astype(dtype)
    _check(x, w, FORMATS[fmt])


@pytest.mark.parametrize("shape", [(1, 1), (7, 9), (128, 64), (129, 65), (256, 200)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.95, 1.0])
@pytest.mark.parametrize("fmt", FORMATS)
def test_shapes_and_sparsities(isa, fmt, sparsity, shape):
    rng = np.random.default_rng(int(sparsity * 100) + shape[0])
    dtype = DTYPES[shape[1] % 2]
    w = random_sparse(rng, shape, sparsity, dtype)
    for n in (1, 9):
        _check(rng.standard_normal((n, shape[1])).astype(dtype), w, FORMATS[fmt])


@pytest.mark.parametrize("n", [1, 8, 16])
@pytest.mark.parametrize("fmt", FORMATS)
def test_nan_in_x_reaches_rows_with_a_stored_entry(isa, fmt, n):
    rng = np.random.default_rng(n)
    dtype = DTYPES[1]
    w = random_sparse(rng, (256, 192), 0.7, dtype)
    x = rng.standard_normal((n, 192)).astype(dtype)
    x[:, 70] = np.nan
    y = _spmm(x, *_encode(w, FORMATS[fmt]), 256, 192, FORMATS[fmt]).astype(np.float32)
    stored = w[:, 70].astype(np.float32) != 0 if fmt == "bitmap" else np.ones(256, bool)
    assert np.isnan(y[:, stored]).all()


def _bitmap(rng, shape=(256, 128)):
    w = random_sparse(rng, shape, 0.7, DTYPES[1])
    return w, *_encode(w, C.FORMAT_BITMAP)


def _error(x, values, index, offsets, m, k, fmt):
    with pytest.raises(Exception) as info:
        _spmm(x, values, index, offsets, m, k, fmt)
    return str(info.value)


@pytest.mark.parametrize("n", [1, 16])
def test_malformed_bitmap_is_a_clear_error(isa, n):
    rng = np.random.default_rng(3)
    w, values, index, offsets = _bitmap(rng)
    x = rng.standard_normal((n, 128)).astype(DTYPES[1])
    words = index.reshape(-1, C.BITMAP_WORDS_PER_TILE)
    t = 2
    more_bits = words.copy()
    more_bits[t, C.BITMAP_HEADER_WORDS + 200] = 0xFFFFFFFF  # more bits than the tile has values
    assert "bitmap tile 2" in _error(x, values, more_bits.reshape(-1), offsets, 256, 128, C.FORMAT_BITMAP)
    # Every tile claims every bit: a kernel trusting the bits would read far past the values.
    all_bits = words.copy()
    all_bits[:, C.BITMAP_HEADER_WORDS:] = 0xFFFFFFFF
    assert "bitmap tile 0" in _error(x, values, all_bits.reshape(-1), offsets, 256, 128, C.FORMAT_BITMAP)
    bad_header = words.copy()
    bad_header[t, 1] += 1
    assert "slab offsets" in _error(x, values, bad_header.reshape(-1), offsets, 256, 128, C.FORMAT_BITMAP)
    assert "words" in _error(x, values, index[:-4], offsets, 256, 128, C.FORMAT_BITMAP)
    assert "uint32" in _error(x, values, index.astype(np.uint16), offsets, 256, 128, C.FORMAT_BITMAP)
    short = offsets.copy()
    short[-1] -= 8
    assert "tile_offsets" in _error(x, values, index, short, 256, 128, C.FORMAT_BITMAP)
    assert "format id 9" in _error(x, values, index, offsets, 256, 128, 9)


def test_malformed_dense_is_a_clear_error(isa):
    rng = np.random.default_rng(4)
    w = random_sparse(rng, (256, 128), 0.0, DTYPES[0])
    values, index, offsets = _encode(w, C.FORMAT_DENSE)
    x = rng.standard_normal((3, 128)).astype(DTYPES[0])
    shifted = offsets.copy()
    shifted[1] -= 8
    assert "dense tile_offsets" in _error(x, values, index, shifted, 256, 128, C.FORMAT_DENSE)
    assert "empty" in _error(x, values, np.zeros(4, np.uint32), offsets, 256, 128, C.FORMAT_DENSE)


def test_variants_agree_closely():
    rng = np.random.default_rng(7)
    w = random_sparse(rng, (384, 512), 0.5, np.float32).astype(ml_dtypes.bfloat16)
    x = rng.standard_normal((20, 512)).astype(ml_dtypes.bfloat16)
    enc = _encode(w, C.FORMAT_BITMAP)
    before = _flashllm_cpu.cpu_isa()
    outs = []
    try:
        for name in ISAS:
            assert _flashllm_cpu.set_cpu_isa(name)
            outs.append(_spmm(x, *enc, 384, 512, C.FORMAT_BITMAP).astype(np.float64))
    finally:
        _flashllm_cpu.set_cpu_isa(before)
    scale = np.abs(outs[0]).max()
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], atol=scale * 2**-7, rtol=0)
