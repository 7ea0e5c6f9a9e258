import os
import sys

# Tests import their shared oracle module (tests/reference.py) by name.
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402

from jax_flashllm import _flashllm_cpu  # noqa: E402


_ISAS_BUILT = dict(_flashllm_cpu.cpu_isas_built())


@pytest.fixture(params=list(_ISAS_BUILT))
def isa(request):
    """Runs the test body with one CPU-kernel instruction-set variant active, then restores the default;
    skips, saying why, for a variant this CPU cannot run."""
    if _ISAS_BUILT[request.param]:
        pytest.skip(f"CPU kernel variant {request.param}: {_ISAS_BUILT[request.param]}")
    before = _flashllm_cpu.cpu_isa()
    assert _flashllm_cpu.set_cpu_isa(request.param)
    yield request.param
    _flashllm_cpu.set_cpu_isa(before)


@pytest.fixture(params=["tiled_csl", "bitmap", "dense"])
def kernel_format(request):
    """Each storage format in turn, for tests that multiply through the kernel; skips, saying why, for a
    format this build's kernels do not multiply."""
    from jax_flashllm import formats

    if request.param not in formats.kernel_formats():
        pytest.skip(f"this build's kernels do not multiply the {request.param} format "
                    f"(they take {formats.kernel_formats()})")
    return request.param
