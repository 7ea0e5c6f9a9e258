"""jax_flashllm: unstructured-sparse matmul for JAX (Flash-LLM's Load-as-Sparse, Compute-as-Dense).

The format and the op load eagerly; layers, models, pruning and generation (which pull in flax, safetensors
and tqdm) load on first use, so ``import jax_flashllm`` stays cheap for users of the op alone.
"""

import importlib

from jax_flashllm import _constants as constants
from jax_flashllm import formats
from jax_flashllm.format import SparseMatrix
from jax_flashllm.ops import sparse_dense

__version__ = "0.1.0"

# name -> (module, attribute or None for the module itself)
_LAZY = {
    "SparseLinear": ("jax_flashllm.nn", "SparseLinear"),
    "generate": ("jax_flashllm.generation", "generate"),
    "generate_text": ("jax_flashllm.text", "generate_text"),
    "generation": ("jax_flashllm.generation", None),
    "models": ("jax_flashllm.models", None),
    "nn": ("jax_flashllm.nn", None),
    "perplexity": ("jax_flashllm.eval", "perplexity"),
    "prune": ("jax_flashllm.prune", None),
    "sparsify": ("jax_flashllm.nn", "sparsify"),
    "stream": ("jax_flashllm.generation", "stream"),
}

__all__ = ["SparseMatrix", "constants", "formats", "sparse_dense", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'jax_flashllm' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
