"""Single-warp and single-block tests of the host emulation of the CUDA execution model (cuda/emu/).

The emulated kernel is only a proof if the emulated instructions are right, so every PTX wrapper is
pinned here against numpy, using the fragment formulas of the PTX ISA sections "ldmatrix" and
"Matrix Fragments for mma.m16n8k16 with floating point type" written out independently below.
Bank-conflict and sector counts are checked on patterns whose counts follow from first principles.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from jax_flashllm import _constants
from jax_flashllm import _flashllm_emu as emu

BF16 = np.dtype(ml_dtypes.bfloat16)
LANES = np.arange(32)
GROUP, TIG = LANES >> 2, LANES % 4  # groupID, threadID_in_group


def _pack(lo, hi):
    return (np.asarray(hi, np.uint32) << 16) | np.asarray(lo, np.uint32)


# ---- PTX ISA fragment layouts, as numpy index arrays ----------------------------------------------

def a_frag_index(i):
    """mma.m16n8k16 A (16x16) element a_i of every lane -> (row, col)."""
    row = np.where((i < 2) or (4 <= i < 6), GROUP, GROUP + 8)
    col = TIG * 2 + (i & 1) + (8 if i >= 4 else 0)
    return row, col


def b_frag_index(i):
    """mma.m16n8k16 B (16x8, K x N) element b_i of every lane -> (row k, col n)."""
    return TIG * 2 + (i & 1) + (8 if i >= 2 else 0), GROUP


def c_frag_index(i):
    """mma.m16n8k16 C/D (16x8) element c_i of every lane -> (row, col)."""
    return np.where(i < 2, GROUP, GROUP + 8), TIG * 2 + (i & 1)


def pack_a(a_bits):
    """(16, 16) uint16 -> (32, 4) uint32 A fragments (a_{2r} low half, a_{2r+1} high half of reg r)."""
    return np.stack([_pack(a_bits[a_frag_index(2 * r)], a_bits[a_frag_index(2 * r + 1)])
                     for r in range(4)], axis=1)


def pack_b(b_bits):
    return np.stack([_pack(b_bits[b_frag_index(2 * r)], b_bits[b_frag_index(2 * r + 1)])
                     for r in range(2)], axis=1)


def pack_c(c):
    return np.stack([c[c_frag_index(i)] for i in range(4)], axis=1).astype(np.float32)


def unpack_d(d):
    out = np.zeros((16, 8), np.float32)
    for i in range(4):
        out[c_frag_index(i)] = d[:, i]
    return out


def ldmatrix_expected(smem_u16, offsets, num, trans):
    """ISA ldmatrix: matrix j's row r is at the address of lane 8j + r; lane l receives row l/4,
    columns 2(l%4), 2(l%4)+1 of matrix j in register j (transposed: column l/4, rows 2(l%4), +1)."""
    regs = np.zeros((32, num), np.uint32)
    for j in range(num):
        rows = np.stack([smem_u16[offsets[8 * j + r] // 2:][:8] for r in range(8)])  # (8, 8)
        m = rows.T if trans else rows
        regs[:, j] = _pack(m[GROUP, 2 * TIG], m[GROUP, 2 * TIG + 1])
    return regs


# ---- ldmatrix ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("num", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True])
def test_ldmatrix_matches_isa_layout(num, trans):
    rng = np.random.default_rng(num * 2 + trans)
    smem = rng.integers(0, 1 << 16, size=1024, dtype=np.uint16)  # 2 KiB = 128 rows of 16 bytes
    # Every lane names an arbitrary, distinct 16-byte row: the result must follow the addresses.
    offsets = rng.permutation(128)[:32].astype(np.int64) * 16
    regs, stats = emu.warp_ldmatrix(smem.view(np.uint8), offsets, num, trans)
    np.testing.assert_array_equal(regs, ldmatrix_expected(smem, offsets, num, trans))
    assert stats["smem_requests"] == 1


def test_ldmatrix_x4_gives_mma_a_fragment_and_trans_gives_b_fragment():
    """The two ISA sections agree: ldmatrix.x4 of a row-major 16x16 tile (matrices: rows 0-7/8-15 x
    cols 0-7, then cols 8-15) is the A fragment; ldmatrix.x2.trans of a row-major (K, N) = 16x8 tile
    is the B fragment."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 1 << 16, size=(16, 16), dtype=np.uint16)
    row = (LANES % 8) + 8 * ((LANES // 8) % 2)
    col = 8 * (LANES // 16)
    regs, _ = emu.warp_ldmatrix(a.view(np.uint8).ravel(), (row * 16 + col) * 2, 4, False)
    np.testing.assert_array_equal(regs, pack_a(a))

    b = rng.integers(0, 1 << 16, size=(16, 8), dtype=np.uint16)  # row-major K x N
    k_rows = (LANES % 8) + 8 * ((LANES // 8) % 2)
    regs, _ = emu.warp_ldmatrix(b.view(np.uint8).ravel(), k_rows * 16, 2, True)
    np.testing.assert_array_equal(regs, pack_b(b))
    # N x K storage ("col" B operand, as the kernel keeps X) needs no transpose.
    bt = np.ascontiguousarray(b.T)  # (8, 16)
    offs = np.where(LANES < 8, LANES * 32, (LANES - 8) * 32 + 16)
    regs, _ = emu.warp_ldmatrix(bt.view(np.uint8).ravel(), offs, 2, False)
    np.testing.assert_array_equal(regs, pack_b(b))


# ---- mma ----------------------------------------------------------------------------------------

def _operands(rng, dtype, scale=1.0):
    a = (rng.standard_normal((16, 16)) * scale).astype(dtype)
    b = (rng.standard_normal((16, 8)) * scale).astype(dtype)
    c = (rng.standard_normal((16, 8)) * 4).astype(np.float32)
    return a, b, c


@pytest.mark.parametrize("dtype", [np.dtype(np.float16), BF16], ids=["float16", "bfloat16"])
def test_mma_matches_exactly_rounded_product(dtype):
    """D = A B + C with the inputs' exact values, summed exactly and rounded once to float32 (the
    documented rounding choice): bit-exact against numpy in float64."""
    rng = np.random.default_rng(7)
    for trial in range(5):
        a, b, c = _operands(rng, dtype, scale=[1.0, 0.01, 30.0, 1.0, 1.0][trial])
        if trial == 3:
            c[:] = 0
        d = emu.warp_mma(pack_a(a.view(np.uint16)), pack_b(b.view(np.uint16)), pack_c(c), dtype.name)
        ref = (a.astype(np.float64) @ b.astype(np.float64) + c).astype(np.float32)
        np.testing.assert_array_equal(unpack_d(d), ref)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_mma_nan_results_are_canonical(dtype):
    """Any NaN result is the canonical 0x7fffffff (documented choice, see docs/emulation.md): a NaN
    input with a payload and a sign, inf * 0, and inf - inf all give the same bits; rows and
    columns without NaNs are untouched."""
    one, inf, nan = (0x3C00, 0x7C00, 0xFE01) if dtype == "float16" else (0x3F80, 0x7F80, 0xFFC1)
    a = np.zeros((16, 16), np.uint16)
    b = np.zeros((16, 8), np.uint16)
    a[0, 0] = nan          # row 0: NaN payload * 1
    b[0, :] = one
    a[1, 1] = inf          # row 1: inf * 0 (b[1, :] = 0)
    a[2, 0] = inf          # row 2: inf * 1 + (-inf) * 1
    a[2, 2] = inf
    b[2, 0] = one | 0x8000
    a[3, 0] = one          # row 3: finite
    c = np.zeros((16, 8), np.float32)
    d = unpack_d(emu.warp_mma(pack_a(a), pack_b(b), pack_c(c), dtype)).view(np.uint32)
    assert (d[0] == 0x7FFFFFFF).all() and (d[1] == 0x7FFFFFFF).all()
    assert d[2, 0] == 0x7FFFFFFF
    np.testing.assert_array_equal(d[3].view(np.float32), np.ones(8, np.float32))
    assert (d[4:] == 0).all()


def test_mma_decodes_bits_by_dtype():
    """The tag picks how register bits are decoded: 0x3F80 is 1.0 as bfloat16, 1.875 as float16."""
    a = np.zeros((16, 16), np.uint16)
    b = np.zeros((16, 8), np.uint16)
    a[3, 5] = 0x3F80
    b[5, 2] = 0x3F80
    c = np.zeros((16, 8), np.float32)
    for dtype, expect in [("bfloat16", 1.0), ("float16", 1.875 * 1.875)]:
        d = unpack_d(emu.warp_mma(pack_a(a), pack_b(b), pack_c(c), dtype))
        assert d[3, 2] == np.float32(expect)
        assert np.count_nonzero(d) == 1


def test_mma_fp16_subnormals_and_signs():
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((16, 16)) * 1e-5).astype(np.float16)  # many fp16 subnormals
    assert np.any(np.abs(a) < np.float16(6.1e-5))
    b = np.where(rng.random((16, 8)) < 0.5, -1, 1).astype(np.float16) * np.float16(1024)
    c = np.full((16, 8), -0.25, np.float32)
    d = emu.warp_mma(pack_a(a.view(np.uint16)), pack_b(b.view(np.uint16)), pack_c(c), "float16")
    ref = (a.astype(np.float64) @ b.astype(np.float64) + c).astype(np.float32)
    np.testing.assert_array_equal(unpack_d(d), ref)


def test_mma_bf16_inputs_are_taken_as_rounded_bits():
    """Values not representable in bf16 enter as their round-to-nearest-even bf16 bits: the result
    equals the product of the rounded inputs, not of the float32 originals."""
    a32 = np.full((16, 16), 1 + 2.0**-8 + 2.0**-10, np.float32)  # rounds up to 1 + 2^-7 in bf16
    b32 = np.full((16, 8), 3.0 + 2.0**-7, np.float32)             # a tie: rounds to even, 3.0
    a, b = a32.astype(BF16), b32.astype(BF16)
    assert float(a[0, 0]) == 1 + 2.0**-7 and float(b[0, 0]) == 3.0
    c = np.zeros((16, 8), np.float32)
    d = unpack_d(emu.warp_mma(pack_a(a.view(np.uint16)), pack_b(b.view(np.uint16)), pack_c(c),
                              "bfloat16"))
    np.testing.assert_array_equal(d, np.full((16, 8), 16 * 3 * (1 + 2.0**-7), np.float32))


# ---- cp.async -------------------------------------------------------------------------------------

def test_cp_async_zero_fill_and_wait_group_semantics():
    rng = np.random.default_rng(5)
    gmem = rng.integers(1, 256, size=1024, dtype=np.uint8)  # no zero bytes: zero fill is visible
    dst = np.stack([LANES * 16, np.where(LANES < 16, 512 + LANES * 16, -1)]).astype(np.int64)
    src = np.stack([LANES * 16, 512 + LANES * 16]).astype(np.int64)
    nbytes = np.stack([LANES % 17, np.full(32, 16)]).astype(np.int32)
    snaps, stats = emu.cp_async(gmem, 1024, dst, src, nbytes)

    group0 = np.full(1024, 0xCD, np.uint8)
    for lane in range(32):
        n = lane % 17
        group0[lane * 16:lane * 16 + 16] = 0
        group0[lane * 16:lane * 16 + n] = gmem[lane * 16:lane * 16 + n]
    both = group0.copy()
    both[512:768] = gmem[512:768]
    # Nothing lands before a wait (a kernel that forgets to wait reads stale data) ...
    np.testing.assert_array_equal(snaps[0], np.full(1024, 0xCD, np.uint8))
    # ... wait_group 1 retires the older group only, wait_group 0 everything.
    np.testing.assert_array_equal(snaps[1], group0)
    np.testing.assert_array_equal(snaps[2], both)
    # Two warp instructions: group 0 reads bytes of 32 lanes (sectors of the bytes actually read),
    # group 1 (16 lanes, 256 contiguous bytes) 8 sectors.
    read0 = {s for lane in range(32) for s in range(lane * 16 // 32, (lane * 16 + max(lane % 17, 1) - 1) // 32 + 1)
             if lane % 17}
    assert stats["gmem_requests"] == 2
    assert stats["gmem_sectors"] == len(read0) + 8
    assert emu.op_stats() == {"cp.async": dict(requests=2, wavefronts=0, bank_conflicts=0,
                                               sectors=len(read0) + 8)}


def test_cp_async_source_outside_buffers_is_an_error():
    with pytest.raises(RuntimeError, match="cp.async: lane 0 reads 16 bytes .* outside every global buffer"):
        emu.scenario("cp_async_out_of_bounds")


# ---- counted global loads -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "op, offsets, sectors",
    [
        ("ldg_128", LANES * 16, 16),        # 512 contiguous bytes
        ("ldg_128", LANES * 128, 32),       # one 16-byte piece per 128 bytes: a sector per lane
        ("ldg_128", LANES * 0, 1),          # broadcast
        ("ldg_32", LANES * 4, 4),           # 128 contiguous bytes
        ("ldg_32", LANES * 64, 32),         # strided
        ("ldg_32", (LANES // 8) * 32, 4),   # 8 lanes per word, 4 words in 4 sectors
    ],
)
def test_ldg_data_and_sector_counts(op, offsets, sectors):
    rng = np.random.default_rng(11)
    gmem = rng.integers(0, 256, size=4096 + 16, dtype=np.uint8)
    words, stats = emu.warp_ldg(op, gmem, offsets.astype(np.int64))
    width = 16 if op == "ldg_128" else 4
    expect = np.stack([gmem[o:o + width].view(np.uint32) for o in offsets])
    np.testing.assert_array_equal(words, expect)
    assert (stats["gmem_requests"], stats["gmem_sectors"]) == (1, sectors)
    assert emu.op_stats() == {op: dict(requests=1, wavefronts=0, bank_conflicts=0, sectors=sectors)}


def test_ldg_bounds_and_alignment_errors():
    gmem = np.zeros(512, np.uint8)
    with pytest.raises(RuntimeError, match="ldg_128: lane 31 reads 16 bytes .* outside"):
        emu.warp_ldg("ldg_128", gmem, (LANES * 16 + (LANES == 31) * 16).astype(np.int64))
    with pytest.raises(RuntimeError, match="ldg_32: lane 0's address .* not 4-byte aligned"):
        emu.warp_ldg("ldg_32", gmem, (LANES * 4 + 2).astype(np.int64))


# ---- bank conflicts -------------------------------------------------------------------------------

def _fragment_rows(k_chunk):
    """Rows and 8-column chunk each lane addresses when ldmatrix.x4 loads a 16x16 A fragment."""
    return (LANES % 8) + 8 * ((LANES // 8) % 2), k_chunk + LANES // 16


@pytest.mark.parametrize("k_chunk", [0, 2, 6])
def test_swizzled_tile_ldmatrix_is_conflict_free(k_chunk):
    tile = np.zeros(_constants.TILE_ELEMS, np.uint16)
    row, chunk = _fragment_rows(k_chunk)
    offsets = _constants.swizzle(row + 16, chunk * 8).astype(np.int64) * 2
    _, stats = emu.warp_ldmatrix(tile.view(np.uint8), offsets, 4, False)
    assert stats == dict(stats, smem_requests=1, smem_wavefronts=4, smem_bank_conflicts=0)


def test_unswizzled_tile_ldmatrix_conflicts_8_way():
    tile = np.zeros(_constants.TILE_ELEMS, np.uint16)
    # x1: 8 rows of 128 bytes at the same column -> all in the same 4 banks: 8 wavefronts, not 1.
    offsets = (LANES % 8) * 128
    _, stats = emu.warp_ldmatrix(tile.view(np.uint8), offsets.astype(np.int64), 1, False)
    assert (stats["smem_wavefronts"], stats["smem_bank_conflicts"]) == (8, 7)
    # x4 over 32 rows of one column chunk: 32 wavefronts instead of 4.
    _, stats = emu.warp_ldmatrix(tile.view(np.uint8), (LANES * 128).astype(np.int64), 4, False)
    assert (stats["smem_wavefronts"], stats["smem_bank_conflicts"]) == (32, 28)
    # The A-fragment pattern without swizzle: 16 rows share each column chunk's 4 banks.
    row, chunk = _fragment_rows(0)
    _, stats = emu.warp_ldmatrix(tile.view(np.uint8), (row * 128 + chunk * 16).astype(np.int64), 4, False)
    assert (stats["smem_wavefronts"], stats["smem_bank_conflicts"]) == (16, 12)


def test_whole_request_bank_model():
    """16 rows 32 bytes apart (ldmatrix.x2): 256 contiguous bytes, 2 wavefronts, no conflict — the
    whole-request model, as a third-party Nsight Compute measurement reports it (not reproduced
    here: re-check on the first GPU, docs/emulation.md); a per-8-address-phase model would count 4."""
    mem = np.zeros(4096, np.uint8)
    offsets = np.where(LANES < 16, (LANES % 8) * 32 + (LANES // 8) * 16, 0).astype(np.int64)
    _, stats = emu.warp_ldmatrix(mem, offsets, 2, False)
    assert (stats["smem_wavefronts"], stats["smem_bank_conflicts"]) == (2, 0)


@pytest.mark.parametrize(
    "op, offsets, wavefronts, conflicts",
    [
        ("sts_16", LANES * 2, 1, 0),                                     # 64 contiguous bytes
        ("sts_16", LANES * 128, 32, 31),                                 # a column of 64-wide rows
        ("sts_16", _constants.swizzle(LANES, 5) * 2, 4, 3),              # the same column, swizzled
        ("sts_16", (LANES // 2) * 4, 1, 0),                              # lane pairs: one address
        ("sts_128", LANES * 16, 4, 0),                                   # 512 contiguous bytes
        ("sts_128", LANES * 128, 32, 28),
        ("lds_128", LANES * 16, 4, 0),
        ("lds_128", _constants.swizzle(LANES % 8, 0) * 2 + (LANES // 8) * 1024, 4, 0),
        ("sts_32", LANES * 4, 1, 0),                                     # 128 contiguous bytes
        ("sts_32", (2 * TIG * 132 + GROUP) * 4, 1, 0),                   # epilogue: padded C rows
        ("sts_32", (2 * TIG * 128 + GROUP) * 4, 4, 3),                   # the same rows unpadded
        ("lds_32", LANES * 4, 1, 0),
        ("lds_32", (LANES // 2) * 4, 1, 0),                              # lane pairs: one word
        ("lds_32", LANES * 128, 32, 31),                                 # a column of 128-byte rows
        ("lds_32", (LANES % 8) * 4 + (LANES // 8) * 132 * 4, 2, 1),      # 8 words of 4 rows 4 banks apart
    ],
)
def test_shared_store_load_counts(op, offsets, wavefronts, conflicts):
    rng = np.random.default_rng(13)
    init = rng.integers(0, 256, size=8192, dtype=np.uint8)
    values = rng.integers(0, 1 << 32, size=(32, 4), dtype=np.uint32)
    offsets = np.asarray(offsets, np.int64)
    after, loaded, stats = emu.warp_smem(op, init, offsets, values)
    assert (stats["smem_requests"], stats["smem_wavefronts"], stats["smem_bank_conflicts"]) == (
        1, wavefronts, conflicts)
    assert emu.op_stats() == {op: dict(requests=1, wavefronts=wavefronts, bank_conflicts=conflicts,
                                       sectors=0)}
    expect = init.copy()
    if op == "sts_16":
        for lane in range(32):  # lane order decides between lanes writing one address
            expect[offsets[lane]:offsets[lane] + 2] = values[lane, :1].astype(np.uint16).view(np.uint8)
    elif op.startswith("sts_"):  # sts_128 / sts_32: the first 16 / 4 bytes of the lane's values
        size = int(op[4:]) // 8
        for lane in range(32):
            expect[offsets[lane]:offsets[lane] + size] = values[lane].view(np.uint8)[:size]
    else:
        words = int(op[4:]) // 32
        np.testing.assert_array_equal(loaded[:, :words],
                                      np.stack([init[o:o + 4 * words].view(np.uint32) for o in offsets]))
        assert not loaded[:, words:].any()
    np.testing.assert_array_equal(after, expect)


def test_f32_store_load_keep_the_bits():
    """sts_32 / lds_32 move a float's 32 bits unchanged: NaN payloads (quiet and signalling), -0,
    subnormals and infinities survive a round trip through shared memory."""
    special = np.array([0x7fa00001, 0xffc12345, 0x7fc00000, 0x80000000, 0x00000001, 0x807fffff,
                        0x7f800000, 0xff800000], np.uint32)
    bits = np.resize(special, 32) ^ np.where(LANES < 8, 0, LANES << 4).astype(np.uint32)
    values = np.zeros((32, 4), np.uint32)
    values[:, 0] = bits
    offsets = (LANES * 4).astype(np.int64)
    after, _, _ = emu.warp_smem("sts_32", np.zeros(128, np.uint8), offsets, values)
    np.testing.assert_array_equal(after.view(np.uint32), bits)
    _, loaded, _ = emu.warp_smem("lds_32", bits.view(np.uint8), offsets, values * 0)
    np.testing.assert_array_equal(loaded[:, 0], bits)


@pytest.mark.parametrize("op", ["sts_32", "lds_32"])
def test_f32_alignment_and_range_errors(op):
    values = np.zeros((32, 4), np.uint32)
    with pytest.raises(RuntimeError, match=f"{op}: lane 0's shared-memory offset 2 is not 4-byte aligned"):
        emu.warp_smem(op, np.zeros(256, np.uint8), (LANES * 4 + 2).astype(np.int64), values)
    with pytest.raises(RuntimeError, match=f"{op}: lane 31's address .* outside the block's 128 bytes"):
        emu.warp_smem(op, np.zeros(128, np.uint8), (LANES * 4 + 4).astype(np.int64), values)


# ---- shuffles -------------------------------------------------------------------------------------

@pytest.mark.parametrize("masks", [np.full(32, 1), np.full(32, 16), np.arange(32) % 5, np.full(32, 31),
                                   np.full(32, 33), np.full(32, 0x7fff_ffe4), np.full(32, -1),
                                   np.arange(32) * 37 - 500])
def test_shfl_xor(masks):
    """shfl.sync.bfly: lane l reads lane l ^ b[4:0] (the ISA takes only the low 5 bits of the lane
    mask operand), so masks >= 32 or negative ones still exchange values instead of returning the
    lane's own."""
    values = np.random.default_rng(2).standard_normal(32).astype(np.float32)
    masks = masks.astype(np.int32)
    np.testing.assert_array_equal(emu.warp_shfl_xor(values, masks), values[LANES ^ (masks & 31)])


# ---- launches, barriers, divergence ---------------------------------------------------------------

def _barrier_reference(init, blocks, n, rounds):
    out = init.reshape(blocks, n).copy()
    for r in range(rounds):
        out = out + out[:, (np.arange(n) + 32 * r + 1) % n]
    return out.ravel()


@pytest.mark.parametrize("block", [(128, 1, 1), (32, 2, 3), (96, 1, 1), (40, 1, 1)])
@pytest.mark.parametrize("workers", [1, 2])
def test_barrier_exchange_across_warps(block, workers):
    n = int(np.prod(block))
    blocks, rounds = 3, 7
    init = np.random.default_rng(0).integers(-1000, 1000, size=blocks * n).astype(np.int64)
    old = emu.num_workers()
    emu.set_num_workers(workers)
    try:
        out = emu.block_barrier(init, blocks, block, rounds)
    finally:
        emu.set_num_workers(old)
    np.testing.assert_array_equal(out, _barrier_reference(init, blocks, n, rounds))


def test_launch_indices():
    grid, block = (3, 2, 2), (8, 4, 2)
    ids = emu.launch_ids(grid, block)
    b = np.arange(12)
    t = np.arange(64)
    bx, by, bz = b % 3, (b // 3) % 2, b // 6
    tx, ty, tz = t % 8, (t // 8) % 4, t // 32
    expect = np.stack([np.repeat(bx, 64), np.repeat(by, 64), np.repeat(bz, 64),
                       np.tile(tx, 12), np.tile(ty, 12), np.tile(tz, 12)], axis=1)
    np.testing.assert_array_equal(ids, expect)


@pytest.mark.parametrize(
    "grid, block, smem, match",
    [
        ((1, 1, 1), (2048, 1, 1), 0, "invalid launch configuration: block"),
        ((1, 70000, 1), (1, 1, 1), 0, "invalid launch configuration: grid"),
        ((1, 1, 1), (32, 1, 1), 101377, "101377 bytes of dynamic shared memory, limit 101376"),
    ],
)
def test_launch_limits(grid, block, smem, match):
    with pytest.raises(RuntimeError, match=match):
        emu.launch_ids(grid, block, smem)


@pytest.mark.parametrize(
    "name, match",
    [
        ("collective_mismatch", r"warp 0 lane 16\]: reached mma.m16n8k16.f16 \(warp_probes.cc:\d+:\d+\) "
                                r"while lanes 0-15 of its warp wait at ldmatrix.x4 \(warp_probes.cc:\d+:\d+\) "
                                r"\(warp divergence\)"),
        ("collective_vs_barrier", r"reached __syncthreads while lanes 0-15 of its warp wait at "
                                  r"shfl.sync.bfly \(warp_probes.cc"),
        ("exit_at_collective", r"shfl.sync.bfly needs all 32 lanes of the warp, but only 16"),
        ("ldmatrix_out_of_range", r"warp 0: ldmatrix: lane 0's address .* outside the block's 256 bytes"),
        ("ldmatrix_misaligned", r"ldmatrix: lane 0's shared-memory offset 8 is not 16-byte aligned"),
        ("ldmatrix_reads_inflight", r"ldmatrix: lane 0 accesses shared offset 0 while a cp.async into "
                                    r"it is in flight"),
        ("missing_barrier_after_wait", r"warp 1: ldmatrix: lane 0 accesses shared offset 0, which warp 0's "
                                       r"cp.async landed with no __syncthreads since"),
    ],
)
def test_divergence_and_bad_addresses_are_reported(name, match):
    with pytest.raises(RuntimeError, match=match):
        emu.scenario(name, 64)


def test_same_instruction_at_two_call_sites_is_divergence():
    """.sync.aligned instructions must be the same instruction for every lane: two ldmatrix.x4 calls in
    divergent branches are reported (they used to be merged into one), while one call site reached
    repeatedly by all lanes is fine."""
    with pytest.raises(RuntimeError, match=r"warp 0 lane 16\]: reached ldmatrix.x4 \(warp_probes.cc:(\d+):\d+\) "
                                           r"while lanes 0-15 of its warp wait at ldmatrix.x4 "
                                           r"\(warp_probes.cc:(?!\1:)\d+:\d+\) \(warp divergence: two call "
                                           r"sites of one instruction\)"):
        emu.scenario("two_call_sites", 32)
    emu.scenario("one_call_site_in_loop", 64)


def test_shared_memory_starts_as_0xcd_and_exited_threads_leave_barriers():
    np.testing.assert_array_equal(emu.scenario("uninitialized_smem", 64), np.full(256, 0xCD, np.uint8))
    out = emu.scenario("early_exit_barrier", 96)
    np.testing.assert_array_equal(out[:96], np.where(np.arange(96) // 32 == 1, 0, 1))


def test_static_shared_array_and_syncwarp():
    t = np.arange(64)
    np.testing.assert_array_equal(emu.scenario("static_shared", 64)[:64], ((t + 1) % 64 * 3) % 256)


def test_ldmatrix_after_wait_sees_the_copied_bytes():
    out = emu.scenario("ldmatrix_after_wait", 32)
    # Every row holds out[0:16] (all zero before the copy lands, 0xCD if it never did).
    np.testing.assert_array_equal(out[:256], np.zeros(256, np.uint8))


# ---- schedules and the shared-memory race detector --------------------------------------------------

SCHEDULES = ["round_robin", "alternate", "warp_greedy"]


@pytest.fixture(params=SCHEDULES)
def schedule(request):
    old = emu.schedule()
    emu.set_schedule(request.param)
    yield request.param
    emu.set_schedule(old)


def test_schedules_order_warps_as_documented():
    """Log of which warp passed each shuffle, in the two barrier epochs of the probe (the first is
    the block's second epoch, an odd one): lockstep in thread order; lockstep with the order reversed
    in odd epochs (starting after the warp whose thread released the barrier); one warp at a time."""
    expect = {
        "round_robin": [[0, 1, 2, 3] * 3, [0, 1, 2, 3] * 3],
        "alternate": [[2, 1, 0, 3] * 3, [0, 1, 2, 3] * 3],
        "warp_greedy": [[3, 3, 3, 2, 2, 2, 1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]],
    }
    old = emu.schedule()
    try:
        for name, log in expect.items():
            emu.set_schedule(name)
            np.testing.assert_array_equal(emu.schedule_log(4, 3), log, err_msg=name)
    finally:
        emu.set_schedule(old)
    with pytest.raises(ValueError, match="unknown emulator schedule 'fifo'"):
        emu.set_schedule("fifo")


_RACE = r"warp 1.*shared-memory data race: {this} \(warp_probes.cc:\d+:\d+\) \(lane 0\) {verb} offset 0, " \
        r"which warp 0 {past} with {that} \(warp_probes.cc:\d+:\d+\) since the last __syncthreads"


@pytest.mark.parametrize(
    "name, match",
    [
        ("race_write_write", _RACE.format(this="sts_16", verb="writes", past="wrote", that="sts_128")),
        ("race_read_after_write", _RACE.format(this="lds_128", verb="reads", past="wrote", that="sts_128")),
        ("race_write_after_read", _RACE.format(this="sts_128", verb="writes", past="read",
                                               that="ldmatrix.x4")),
        ("race_cp_async_after_read", _RACE.format(this="cp.async", verb="writes", past="read",
                                                  that="lds_128")),
        # The kernel epilogue's fp32 C tile without its barrier, both ways round.
        ("race_f32_read_after_write", _RACE.format(this="lds_32", verb="reads", past="wrote", that="sts_32")),
        ("race_f32_write_after_read", _RACE.format(this="sts_32", verb="writes", past="read",
                                                   that="lds_32")),
    ],
)
def test_shared_memory_races_between_warps_are_reported(schedule, name, match):
    """Two warps touching the same shared bytes with no __syncthreads between them, one of them
    writing, is a race whatever order the emulator happened to run them in: the error names both
    warps, the offset and both instructions with their call sites, under every schedule."""
    with pytest.raises(RuntimeError, match=match):
        emu.scenario(name, 64)


def test_ordered_or_disjoint_sharing_is_not_a_race(schedule):
    out = emu.scenario("barrier_orders_sharing", 64)
    np.testing.assert_array_equal(out[:32], 24 + np.arange(32) % 16)
    out = emu.scenario("halves_of_one_word", 64)  # 2-byte granularity: no false sharing
    np.testing.assert_array_equal(out[:128].reshape(32, 4), np.tile([1, 1, 2, 2], (32, 1)))
    emu.scenario("same_warp_reuse", 64)
    emu.scenario("readers_barrier_writer", 64)
    out = emu.scenario("barrier_orders_f32", 64)  # warp 1 reads warp 0's floats 0.5 * lane, times 4
    np.testing.assert_array_equal(out[:32], 2 * np.arange(32))


def test_kernel_result_does_not_depend_on_schedule():
    """The race-free kernel gives bit-identical results under every schedule."""
    from jax_flashllm import SparseMatrix
    from jax_flashllm.testing import emulated_spmm

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((256, 192)) * (rng.random((256, 192)) < 0.3)).astype(np.float16)
    x = rng.standard_normal((40, 192)).astype(np.float16)
    sw = SparseMatrix.from_dense(w, format="tiled_csl")
    old = emu.schedule()
    try:
        ys = []
        for name in SCHEDULES:
            emu.set_schedule(name)
            ys.append(emulated_spmm(sw, x, split_k=2))
    finally:
        emu.set_schedule(old)
    for y in ys[1:]:
        np.testing.assert_array_equal(y.view(np.uint16), ys[0].view(np.uint16))


def test_a_failed_launch_leaves_the_emulator_usable():
    with pytest.raises(RuntimeError):
        emu.scenario("collective_mismatch", 128)
    init = np.arange(256, dtype=np.int64)
    np.testing.assert_array_equal(emu.block_barrier(init, 2, (128, 1, 1), 3),
                                  _barrier_reference(init, 2, 128, 3))
