"""The format constants agree between the C++ header (as compiled) and the Python mirror."""

import re
from pathlib import Path

import numpy as np

from jax_flashllm import _constants as C
from jax_flashllm import _flashllm_cpu

HEADER = Path(__file__).resolve().parents[1] / "cuda" / "include" / "flashllm" / "format.h"


def test_compiled_constants_match_python_mirror():
    compiled = _flashllm_cpu.format_constants()
    for name, value in compiled.items():
        assert getattr(C, name) == value, name


def test_header_constants_match_python_mirror():
    text = HEADER.read_text()
    names = {"kFormatVersion": "FORMAT_VERSION", "kTileM": "TILE_M", "kTileK": "TILE_K",
             "kNnzAlign": "NNZ_ALIGN", "kChunkElems": "CHUNK_ELEMS", "kSwizzleRows": "SWIZZLE_ROWS"}
    for cpp, py in names.items():
        m = re.search(rf"constexpr int {cpp} = (\d+);", text)
        assert m, f"{cpp} not found in {HEADER}"
        assert int(m.group(1)) == getattr(C, py), cpp


def test_swizzle_table_matches_compiled_kernel():
    table = np.asarray(_flashllm_cpu.swizzle_table())
    np.testing.assert_array_equal(table, C.SWIZZLE_TABLE)


def test_swizzle_is_a_bijection_and_inverts():
    assert np.array_equal(np.sort(C.SWIZZLE_TABLE), np.arange(C.TILE_ELEMS))
    rows, cols = C.unswizzle(C.SWIZZLE_TABLE.astype(np.int64))
    np.testing.assert_array_equal(rows * C.TILE_K + cols, np.arange(C.TILE_ELEMS))


def test_swizzle_spreads_ldmatrix_rows_over_banks():
    # 8 consecutive rows at the same logical 16-byte chunk land in 8 distinct physical chunks.
    for chunk in range(C.TILE_K // C.CHUNK_ELEMS):
        locs = C.swizzle(np.arange(8), chunk * C.CHUNK_ELEMS)
        assert len(set((locs % C.TILE_K) // C.CHUNK_ELEMS)) == 8


def test_format_ids_and_bitmap_constants_match_header():
    text = HEADER.read_text()
    names = {"kFormatTiledCsl": "FORMAT_TILED_CSL", "kFormatBitmap": "FORMAT_BITMAP", "kFormatDense": "FORMAT_DENSE",
             "kBlockRows": "BLOCK_ROWS", "kBlockCols": "BLOCK_COLS", "kSlabRows": "SLAB_ROWS", "kKStep": "K_STEP",
             "kFragRows": "FRAG_ROWS", "kBlocksPerFrag": "BLOCKS_PER_FRAG",
             "kBitmapHeaderWords": "BITMAP_HEADER_WORDS"}
    for cpp, py in names.items():
        m = re.search(rf"constexpr int {cpp} = (\d+);", text)
        assert m, f"{cpp} not found in {HEADER}"
        assert int(m.group(1)) == getattr(C, py), cpp
    compiled = _flashllm_cpu.format_constants()
    for name in ("FORMAT_TILED_CSL", "FORMAT_BITMAP", "FORMAT_DENSE", "BLOCKS_PER_TILE", "BITMAP_WORDS_PER_TILE"):
        assert compiled[name] == getattr(C, name), name


def test_block_order_matches_compiled_kernel():
    # The binding walks format.h's bitmap_block_row/col and checks bitmap_block_index/bitmap_bit invert
    # them (an empty list when they do not).
    np.testing.assert_array_equal(np.asarray(_flashllm_cpu.bitmap_block_order()), C.BLOCK_ORDER)


def test_format_ids_name_the_format_modules():
    from jax_flashllm import formats

    assert [formats.get(n).ID for n in formats.NAMES] == [C.FORMAT_TILED_CSL, C.FORMAT_BITMAP, C.FORMAT_DENSE]
    assert C.FORMAT_VERSION == C.FORMAT_TILED_CSL  # v1 files record the Tiled-CSL id as their version
