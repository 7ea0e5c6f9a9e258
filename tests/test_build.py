"""The compiled extensions that the build produced load, and register their FFI targets.

Without a GPU nothing else would notice a CUDA module that fails to import (an undefined symbol, a
stale object): every GPU test skips and `sparse_dense` silently has no CUDA kernel.
"""

import importlib
import importlib.util
import shutil

import pytest


def _built(name):
    # Finds the compiled file without importing it (editable installs keep it outside the source tree).
    return importlib.util.find_spec(f"jax_flashllm.{name}") is not None


@pytest.mark.parametrize("name, targets", [
    ("_flashllm_cpu", {"flashllm_spmm_cpu", "flashllm_attention_cpu"}),
    ("_flashllm_cuda", {"flashllm_spmm_cuda"}),
    ("_flashllm_emu", None),
])
def test_every_built_extension_imports(name, targets):
    if not _built(name):
        if name == "_flashllm_cuda" and shutil.which("nvcc") is None:
            pytest.skip("built without nvcc: no CUDA extension expected")
        pytest.fail(f"{name} was not built (nvcc on PATH: {shutil.which('nvcc')})")
    module = importlib.import_module(f"jax_flashllm.{name}")
    if targets is not None:
        assert set(module.registrations()) == targets


def test_cuda_kernel_is_registered_when_built():
    from jax_flashllm import _ffi

    assert _ffi.has_cuda_kernel() == bool(_built("_flashllm_cuda"))
