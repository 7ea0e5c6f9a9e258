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
    for m, k, n, sms in itertools.product((1, 300, 4096, 28672), (1, 64, 1000, 8192, 65536),
                                          (1, 8, 33, 128, 4096), (1, 108, 132)):
        split = _tiling.choose_split_k(m, k, n, sms)
        cfg = _tiling.choose_config(n)
        blocks = -(-m // cfg.block_m) * -(-n // cfg.block_n)
        k_tiles = -(-k // 64)
        assert 1 <= split <= _tiling.MAX_SPLIT_K
        if split > 1:
            assert blocks * split <= sms  # at most one wave
            assert k_tiles // split >= _tiling.MIN_K_TILES_PER_SPLIT
        if blocks >= sms:
            assert split == 1


def test_split_k_for_decode_shapes():
    # OPT-30B attention projection at N = 8 on a 132-SM GPU: 28 blocks -> 4 splits fill the GPU.
    assert _tiling.choose_split_k(7168, 7168, 8, 132) == 4
    # Its MLP up-projection already has 112 blocks.
    assert _tiling.choose_split_k(28672, 7168, 8, 132) == 1
    assert workspace_size(7168, 8, 4) == 4 * 8 * 7168
    assert workspace_size(7168, 8, 1) == 0


def test_degenerate_inputs():
    assert _tiling.choose_split_k(0, 100, 1, 132) == 1
    assert _tiling.choose_split_k(100, 100, 1, 0) == 1
