"""OWL (Yin et al., "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to High
Sparsity", ICML 2024): a non-uniform sparsity per decoder layer with the same mean, following the paper and its
reference code (luuyin/OWL):

- a layer's outlier ratio D_l is the fraction of its Wanda scores |W_ij| * ||X_j|| (over all its Linear
  layers together) greater than M times their mean (M = 5 in the paper);
- the ratios are mapped linearly onto [0, 2 lambda] and shifted so their mean is the target's: layers with
  more outliers keep more weights. Sparsity l = target - (that value - its mean), so the spread
  max - min is 2 lambda (lambda = 0.08 in the paper: layer sparsities within about target +- lambda).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = ["DEFAULT_OWL", "parse_owl", "outlier_ratio", "owl_sparsities"]

# (M, lambda) of the paper's LLaMA and OPT experiments.
DEFAULT_OWL = (5.0, 0.08)


def parse_owl(owl) -> tuple[float, float] | None:
    """None for False / None, DEFAULT_OWL for True, else (M, lambda) from a pair; M > 0, lambda >= 0."""
    if owl is None or owl is False:
        return None
    m, lam = DEFAULT_OWL if owl is True else (float(v) for v in owl)
    if not m > 0 or not lam >= 0:
        raise ValueError(f"OWL needs M > 0 and lambda >= 0, got M={m}, lambda={lam}")
    return m, lam


def outlier_ratio(weights, norms, m: float) -> float:
    """The fraction of the Wanda scores |W_ij| * norms_j of all ``weights`` together that exceed ``m`` times
    their mean. weights: list of (M_i, K_i) float; norms: list of the matching (K_i,) input column norms."""
    scores = [jnp.abs(jnp.asarray(w, jnp.float32)) * jnp.asarray(n, jnp.float32)[None, :]
              for w, n in zip(weights, norms)]
    count = sum(s.size for s in scores)
    mean = sum(jnp.sum(s) for s in scores) / count
    return float(sum(jnp.sum(s > m * mean) for s in scores)) / count


def owl_sparsities(ratios, target: float, lam: float) -> np.ndarray:
    """ratios: (L,) outlier ratios of the decoder layers -> (L,) float64 sparsities with mean ``target``,
    max - min = 2 lam (0 when all ratios are equal), the highest ratio getting the lowest sparsity.

    Raises ValueError when a layer would leave [0, 1] (target too close to 0 or 1 for this lambda).
    """
    r = np.asarray(ratios, np.float64)
    spread = r.max() - r.min()
    keep = np.zeros_like(r) if spread == 0 else (r - r.min()) / spread * (2.0 * lam)
    sparsities = target - (keep - keep.mean())
    if sparsities.min() < 0.0 or sparsities.max() > 1.0:
        raise ValueError(f"OWL with lambda={lam} around sparsity {target} gives layer sparsities "
                         f"{sparsities.min():.3f}..{sparsities.max():.3f}, outside [0, 1]; lower lambda")
    return sparsities
