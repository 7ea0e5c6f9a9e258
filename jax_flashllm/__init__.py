"""jax_flashllm: unstructured-sparse matmul for JAX (Flash-LLM's Load-as-Sparse, Compute-as-Dense)."""

from jax_flashllm import _constants as constants
from jax_flashllm.format import SparseMatrix
from jax_flashllm.ops import sparse_dense

__version__ = "0.1.0"

__all__ = [
    "SparseMatrix",
    "constants",
    "sparse_dense",
]
