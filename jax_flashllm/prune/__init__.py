"""Choosing which weights become zero, and correcting the rest.

- ``magnitude``: host-side masks by |w| (per layer, per row) and seeded random masks (used by nn.sparsify);
- ``wanda``: |W_ij| * ||X_j|| per output row, calibrated, no update;
- ``sparsegpt``: OBS column-by-column pruning with weight updates, calibrated;
- ``masks``: exact-count and N:M selection shared by the calibrated methods;
- ``calibrate``: Gram matrices of a decoder layer's Linear inputs, accumulated in one compiled forward;
- ``model``: ``prune_model``, layer-by-layer pruning of a whole OPT model on calibration tokens.

Weights are (M, K) = (out_features, in_features); masks are boolean with True = kept.
"""

from jax_flashllm.prune.magnitude import METHODS, magnitude_mask, mask, prune, random_mask
from jax_flashllm.prune.masks import keep_largest, nm_mask, parse_nm
from jax_flashllm.prune.sparsegpt import hessian, sparsegpt
from jax_flashllm.prune.wanda import input_norms, wanda, wanda_mask

__all__ = ["METHODS", "LayerPruneReport", "PruneReport", "hessian", "input_norms", "keep_largest",
           "magnitude_mask", "mask", "nm_mask", "parse_nm", "prune", "prune_model", "random_mask",
           "sparsegpt", "wanda", "wanda_mask"]

_MODEL_NAMES = ("prune_model", "PruneReport", "LayerPruneReport")


def __getattr__(name):
    # prune_model encodes through jax_flashllm.nn, and nn builds on prune.magnitude: importing the model
    # module on first use keeps the graph one-directional (nn -> prune.magnitude, prune.model -> nn) and
    # importing nn never loads prune.model half-way.
    if name in _MODEL_NAMES:
        from jax_flashllm.prune import model

        return getattr(model, name)
    raise AttributeError(f"module 'jax_flashllm.prune' has no attribute {name!r}")
