"""jax_flashllm: unstructured-sparse matmul for JAX (Flash-LLM's Load-as-Sparse, Compute-as-Dense)."""

from jax_flashllm import _constants as constants
from jax_flashllm.format import SparseMatrix
from jax_flashllm.ops import sparse_dense

# Layers, pruning, models and generation (the `generate` function shadows its module's attribute name;
# `from jax_flashllm.generate import stream` still reaches the module).
from jax_flashllm import models, nn, prune
from jax_flashllm.eval import perplexity
from jax_flashllm.generate import generate, stream
from jax_flashllm.nn import SparseLinear, sparsify

__version__ = "0.1.0"

__all__ = [
    "SparseLinear",
    "SparseMatrix",
    "constants",
    "generate",
    "models",
    "nn",
    "perplexity",
    "prune",
    "sparse_dense",
    "sparsify",
    "stream",
]
