"""Loads the compiled extensions and registers their XLA FFI targets (once, at import).

The CPU module always exists; the CUDA module only where the package was built with nvcc, so its
import is allowed to fail and the CUDA lowering is still emitted (it only needs the target's name).
"""

from __future__ import annotations

import jax

from jax_flashllm import _flashllm_cpu

try:
    from jax_flashllm import _flashllm_cuda
except ImportError:
    _flashllm_cuda = None

CPU_TARGET = "flashllm_spmm_cpu"
CUDA_TARGET = "flashllm_spmm_cuda"
ATTENTION_CPU_TARGET = "flashllm_attention_cpu"


def _register() -> None:
    for name, capsule in _flashllm_cpu.registrations().items():
        jax.ffi.register_ffi_target(name, capsule, platform="cpu")
    if _flashllm_cuda is not None:
        for name, capsule in _flashllm_cuda.registrations().items():
            jax.ffi.register_ffi_target(name, capsule, platform="CUDA")


def has_cuda_kernel() -> bool:
    """True when the CUDA extension was built and loaded."""
    return _flashllm_cuda is not None


_register()
