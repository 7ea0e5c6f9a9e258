import os
import sys

# Tests import their shared oracle module (tests/reference.py) by name.
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

# float32 references at full precision on every platform: GPUs default to TF32 for float32 matmuls
# (10-bit mantissa), which would make float32 oracles too coarse for the kernel's tolerances.
jax.config.update("jax_default_matmul_precision", "highest")
