"""The Python side of the CUDA kernel's choices (jax_flashllm/_tiling.py): config by N, split-K."""

import itertools

import pytest

from jax_flashllm import _tiling
from jax_flashllm.primitive import workspace_size


@pytest.mark.parametrize("n,name", [(1, "256x16"), (16, "256x16"), (17, "256x32"), (32, "256x32"),
                                    (33, "128x64"), (64, "128x64"), (65, "128x128"),
                                    (10**6, "128x128")])
def test_config_by_n(n, name):
    assert _tiling.choose_config(n).name == name


def test_split_k_properties():
    for m, k, n, sms, arch in itertools.product((1, 300, 4096, 28672), (1, 64, 1000, 8192, 65536),
                                                (1, 8, 33, 128, 4096), (1, 108, 132), (80, 86, 90)):
        split = _tiling.choose_split_k(m, k, n, sms, arch)
        cfg = _tiling.choose_config(n)
        slots = sms * _tiling.OCCUPANCY[arch][cfg.name].blocks
        blocks = -(-m // cfg.block_m) * -(-n // cfg.block_n)
        k_tiles = -(-k // 64)
        assert 1 <= split <= _tiling.MAX_SPLIT_K
        if split > 1:
            assert blocks * split <= slots  # at most one wave of resident blocks
            assert k_tiles // split >= _tiling.MIN_K_TILES_PER_SPLIT
        if blocks >= slots:
            assert split == 1


def test_split_k_for_decode_shapes():
    # OPT-30B attention projection at N = 8 on a 132-SM sm_90 GPU: 28 blocks of 256x16, 3 resident
    # per SM -> 14 splits make 392 of the 396 resident slots.
    assert _tiling.choose_split_k(7168, 7168, 8, 132) == 14
    # Its MLP up-projection has 112 blocks: 3 splits.
    assert _tiling.choose_split_k(28672, 7168, 8, 132) == 3
    # An A100 (108 SMs) holds only 2 such blocks per SM (164 KiB of shared memory).
    assert _tiling.choose_split_k(7168, 7168, 8, 108, 80) == 7
    # Partials, then one counter per 128 x 16 output tile.
    assert workspace_size(7168, 8, 4) == 4 * 8 * 7168 + 56
    assert workspace_size(7168, 40, 2) == 2 * 40 * 7168 + 56 * 3
    assert workspace_size(7168, 8, 1) == 0


def test_occupancy_table_follows_the_rules():
    for arch, table in _tiling.OCCUPANCY.items():
        for name, occ in table.items():
            assert occ.blocks == _tiling.blocks_per_sm(occ.registers, occ.smem_bytes, arch) >= 1
    # What the split-K choice is built on: 3 resident blocks per SM on sm_90 for N <= 64.
    assert [_tiling.OCCUPANCY[90][c.name].blocks for c in _tiling.CONFIGS] == [3, 3, 3, 2]
    # Rules spot-checked by hand: 162 registers -> 5376 per warp -> 12 warps -> 3 blocks of 4 warps;
    # 69632 + 1024 bytes of shared memory -> 2 blocks in sm_80's 164 KiB.
    assert _tiling.blocks_per_sm(162, 69632, 90) == 3
    assert _tiling.blocks_per_sm(162, 69632, 80) == 2
    assert _tiling.blocks_per_sm(255, 1024, 90) == 2


def test_degenerate_inputs():
    assert _tiling.choose_split_k(0, 100, 1, 132) == 1
    assert _tiling.choose_split_k(100, 100, 1, 0) == 1


# OPT layer shapes (M, K): q/k/v/out (h, h), fc1 (4h, h), fc2 (h, 4h) for OPT-30B / 66B / 175B.
_OPT_SHAPES = [(m, k) for h in (7168, 9216, 12288) for m, k in ((h, h), (4 * h, h), (h, 4 * h))]


@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.8, 0.9])
def test_decode_shapes_fill_an_h200(sparsity):
    # The scheduling target of issue #12 on an H200 (132 SMs, sm_90): for every OPT decode shape,
    # split-K and the grid keep >= 2 blocks resident per SM on average, and the loads those blocks
    # have in flight (each K step's staged values + locations of its format tiles, and the x tile)
    # add up to >= 24 KB per SM (Little's law: ~4.3 TB/s x ~0.7 us over 132 SMs) up to 80 %
    # sparsity (worst: 32 KB, OPT-66B fc1, whose 144 blocks take 2 splits = 2.2 per SM). At 90 % a
    # tile holds only ~820 entries (3.3 KB) and that shape reaches 18 KB: filling it would take a
    # second tile of prefetch per block (or a third split and a partial second wave), not measured.
    emu = pytest.importorskip("jax_flashllm._flashllm_emu")
    stage_entries = {row[0]: row[5] for row in emu.spmm_configs()}
    tile_entries = round((1 - sparsity) * 128 * 64)
    for (m, k), n in itertools.product(_OPT_SHAPES, (1, 8, 16, 32)):
        cfg = _tiling.choose_config(n)
        occ = _tiling.OCCUPANCY[90][cfg.name].blocks
        split = _tiling.choose_split_k(m, k, n, 132, 90)
        grid = -(-m // cfg.block_m) * -(-n // cfg.block_n) * split
        resident = min(occ, grid / 132)
        assert resident >= 2, (m, k, n, split, grid)
        per_block = (cfg.block_m // 128) * min(stage_entries[cfg.name], tile_entries) * 4 + cfg.block_n * 64 * 2
        need = 24 * 1024 if sparsity <= 0.8 else 18 * 1024
        assert resident * per_block >= need, (m, k, n, sparsity, resident, per_block)
