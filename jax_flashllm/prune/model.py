"""Whole-model pruning of an OPTForCausalLM on calibration tokens, layer by layer, as SparseGPT and Wanda do:

1. embed the calibration batch;
2. for each decoder layer: run it once on the current hidden states, accumulating the Gram matrix X^T X of
   the inputs of each of its Linear layers (q, k, v, out, fc1, fc2; ``prune.calibrate``, one compiled
   program for every layer); prune the six; run the *pruned* layer to get the next layer's inputs;
3. encode the pruned Linear layers as SparseLinear (through ``nn.sparsify``, which then prunes nothing).

Embeddings, the LM head and project_in / project_out stay dense, as published. Only the Gram matrices are
kept per layer (K x K float32), never the captured inputs: SparseGPT's Hessian is 2 G / T, Wanda's column
norms are sqrt(diag G), and the relative reconstruction error ||X (W - W_p)^T||^2 / ||X W^T||^2 of the
report is tr((W - W_p) G (W - W_p)^T) / tr(W G W^T).
"""

from __future__ import annotations

import dataclasses
import inspect
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_flashllm import nn as _nn
from jax_flashllm._log import logger, progress
from jax_flashllm.models.opt import mask_bias
from jax_flashllm.prune.calibrate import layer_grams, layer_norms, layer_outputs
from jax_flashllm.prune.magnitude import magnitude_mask
from jax_flashllm.prune.masks import check_sparsity, nm_mask, parse_nm
from jax_flashllm.prune.owl import outlier_ratio, owl_sparsities, parse_owl
from jax_flashllm.prune.sparsegpt import sparsegpt
from jax_flashllm.prune.wanda import wanda

__all__ = ["CALIBRATED_METHODS", "LayerPruneReport", "PruneReport", "prune_model"]

CALIBRATED_METHODS = ("sparsegpt", "wanda", "magnitude")
# The Linear layers of an OPT decoder layer that are pruned, in the order their inputs are produced.
_SUBLAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2")


@dataclasses.dataclass(frozen=True)
class LayerPruneReport:
    """One pruned Linear: dotted path, W's (out, in) shape, achieved sparsity, relative reconstruction error
    on the calibration inputs."""

    name: str
    shape: tuple[int, int]
    sparsity: float
    error: float


@dataclasses.dataclass(frozen=True)
class PruneReport:
    """What ``prune_model`` did; ``encoded`` is nn.sparsify's byte report (None when not encoded)."""

    method: str
    layers: tuple[LayerPruneReport, ...]
    encoded: _nn.SparsifyReport | None = None
    # With OWL, per decoder layer: its outlier ratio and the sparsity asked of its Linears.
    outlier_ratios: tuple[float, ...] | None = None
    layer_sparsities: tuple[float, ...] | None = None

    @property
    def sparsity(self) -> float:
        """Achieved sparsity over all pruned weights."""
        sizes = [r.shape[0] * r.shape[1] for r in self.layers]
        return sum(r.sparsity * n for r, n in zip(self.layers, sizes)) / max(sum(sizes), 1)

    def __str__(self) -> str:
        width = max([len("layer")] + [len(r.name) for r in self.layers])
        lines = [f"{'layer':<{width}}  {'shape (out, in)':>16}  {'sparsity':>8}  {'rel. error':>10}"]
        for r in self.layers:
            lines.append(f"{r.name:<{width}}  {r.shape[0]:>7} x {r.shape[1]:<6}  {r.sparsity:>8.3f}  "
                         f"{r.error:>10.4f}")
        lines.append(f"{'total (' + self.method + ')':<{width}}  {len(self.layers):>7} layers  "
                     f"{self.sparsity:>8.3f}")
        if self.outlier_ratios is not None:
            lines += [f"OWL: layers.{i} sparsity {s:.3f} (outlier ratio {r:.2%})"
                      for i, (r, s) in enumerate(zip(self.outlier_ratios, self.layer_sparsities))]
        if self.encoded is not None:
            ratio = self.encoded.dense_bytes / max(self.encoded.sparse_bytes, 1)
            lines.append(f"encoded: {self.encoded.dense_bytes:,} -> {self.encoded.sparse_bytes:,} bytes "
                         f"({ratio:.2f}x smaller)")
        return "\n".join(lines)


def _prune_weight(w, gram, tokens, method, sparsity, nm, blocksize, damp):
    """w: (M, K) float32, gram: (K, K) -> pruned w (M, K) float32."""
    if method == "sparsegpt":
        return sparsegpt(w, None, sparsity, nm=nm, blocksize=blocksize, damp=damp,
                         hessian=gram * (2.0 / tokens))
    if method == "wanda":
        return wanda(w, None, sparsity, nm=nm, norms=jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0)))
    keep = nm_mask(jnp.abs(w), nm) if nm is not None else magnitude_mask(np.asarray(w), sparsity)
    return jnp.where(keep, w, 0.0)


@jax.jit
def _relative_error(w, pruned, gram):
    """w, pruned: (M, K) float32, gram: (K, K) -> () float32 tr(D G D^T) / tr(W G W^T), D = w - pruned."""
    d = w - pruned
    hp = jax.lax.Precision.HIGHEST
    num = jnp.sum(jnp.matmul(d, gram, precision=hp) * d)
    den = jnp.sum(jnp.matmul(w, gram, precision=hp) * w)
    return num / jnp.maximum(den, jnp.finfo(jnp.float32).tiny)


def _outlier_ratios(model, modules, hidden, masks, valids, m: float) -> list[float]:
    """OWL's outlier ratio of every decoder layer, on the dense model (as the reference does): the inputs'
    column norms and each layer's dense outputs come from one pass per layer."""
    ratios = []
    for i, layer in enumerate(model.layers):
        norms, hidden = layer_norms(layer, _SUBLAYERS, hidden, masks, valids)
        weights = [modules[("layers", i) + tuple(name.split("."))].kernel[...].T for name in _SUBLAYERS]
        ratios.append(outlier_ratio(weights, [norms[name] for name in _SUBLAYERS], m))
    return ratios


def prune_model(model, calib_ids, sparsity: float | None, *, method: str = "sparsegpt", nm=None,
                attention_mask=None, blocksize: int = 128, damp: float = 0.01, encode: bool = True,
                dtype=None, batch_size: int = 8, owl=False, show_progress: bool | None = None) -> PruneReport:
    """Prune the decoder Linear layers of ``model`` (an OPTForCausalLM) in place, layer by layer.

    calib_ids: (S, T) int calibration sequences (T <= max_position_embeddings); attention_mask: (S, T) 0/1,
    padding excluded from the statistics. sparsity: fraction pruned per Linear; nm=(n, m) or "n:m" keeps n of
    every m inputs per row instead (sparsity may then be None). method: "sparsegpt" (blocksize, damp as in
    ``prune.sparsegpt``), "wanda" or "magnitude" (per layer, or per N:M group). batch_size: calibration
    sequences per forward pass. owl: True or (M, lambda) (default (5, 0.08)) gives each decoder layer its
    own sparsity by OWL (``prune.owl``; mean ``sparsity``, not with nm), from one extra dense pass over the
    calibration data. encode: replace the pruned Linears by SparseLinear (``dtype`` float16 |
    bfloat16 storage, None: nn.sparsify's default; format "auto" where sparsify offers it); otherwise they
    stay dense nnx.Linear with zeros.

    Returns a PruneReport (per layer: achieved sparsity and relative reconstruction error; with OWL the
    outlier ratio and sparsity of each decoder layer).
    """
    if method not in CALIBRATED_METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(CALIBRATED_METHODS)}")
    sparsity = check_sparsity(sparsity, nm)
    owl = parse_owl(owl)
    if owl is not None and nm is not None:
        raise ValueError("OWL gives each layer its own sparsity; an N:M pattern fixes it (use one of them)")
    nm = None if nm is None else parse_nm(nm)
    ids = jnp.asarray(calib_ids, jnp.int32)
    if ids.ndim != 2 or ids.shape[1] > model.config.max_position_embeddings:
        raise ValueError(f"calib_ids must be (S, T) with T <= {model.config.max_position_embeddings}, "
                         f"got shape {ids.shape}")
    valid = jnp.ones(ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
    if valid.shape != ids.shape:
        raise ValueError(f"attention_mask shape {valid.shape} differs from calib_ids shape {ids.shape}")
    tokens = int(valid.sum())
    batches = [slice(s, s + batch_size) for s in range(0, ids.shape[0], batch_size)]
    positions = jnp.where(valid, jnp.cumsum(valid, axis=-1) - 1, -1)
    causal = jnp.tril(jnp.ones((ids.shape[1],) * 2, bool))
    # A decoder layer takes the additive score bias (B, 1, T, T) that OPT builds once per call.
    masks = [mask_bias(causal[None] & valid[b][:, None, :]) for b in batches]
    hidden = [model._embed(ids[b], positions[b]) for b in batches]
    valids = [valid[b] for b in batches]

    reports = []
    modules = dict(nnx.iter_graph(model))
    done = [".".join(map(str, p)) for p, m in modules.items()
            if p[:1] == ("layers",) and isinstance(m, _nn.SparseLinear)]
    if done:
        raise ValueError(f"the model is already sparse ({done[0]} is a SparseLinear); prune its dense original")
    ratios, targets = None, [sparsity] * len(model.layers)
    if owl is not None:
        ratios = _outlier_ratios(model, modules, hidden, masks, valids, owl[0])
        targets = [float(s) for s in owl_sparsities(ratios, sparsity, owl[1])]
        logger.info("OWL (M=%g, lambda=%g): layer sparsities %s", *owl, ", ".join(f"{s:.3f}" for s in targets))
    for i, layer in enumerate(progress(model.layers, desc=f"pruning ({method})", total=len(model.layers),
                                       unit="layer", show=show_progress)):
        started = time.perf_counter()
        grams = jax.block_until_ready(layer_grams(layer, _SUBLAYERS, hidden, masks, valids))
        calibrated = time.perf_counter()
        for name in _SUBLAYERS:
            linear = modules[("layers", i) + tuple(name.split("."))]
            w = linear.kernel[...].astype(jnp.float32).T
            pruned = _prune_weight(w, grams[name], tokens, method, targets[i], nm, blocksize, damp)
            linear.kernel = nnx.Param(pruned.T.astype(linear.kernel[...].dtype))
            report = LayerPruneReport(f"layers.{i}.{name}", tuple(w.shape),
                                      float(jnp.mean(linear.kernel[...] == 0)),
                                      float(_relative_error(w, pruned, grams[name])))
            logger.info("%s: sparsity %.3f, relative error %.4g", report.name, report.sparsity, report.error)
            reports.append(report)
        solved = time.perf_counter()
        # The last layer's outputs feed nothing that is pruned.
        if i + 1 < len(model.layers):
            hidden = layer_outputs(layer, hidden, masks)
            jax.block_until_ready(hidden)
        logger.info("layer %d: calibration %.1f s, pruning %.1f s, pruned forward %.1f s", i,
                    calibrated - started, solved - calibrated, time.perf_counter() - solved)

    encoded = None
    if encode:
        names = {r.name for r in reports}
        kwargs = {"format": "auto"} if "format" in inspect.signature(_nn.sparsify).parameters else {}
        # sparsity 0: the zeros chosen above are the pruned positions; sparsify only encodes.
        encoded = _nn.sparsify(model, 0.0, include=lambda path: path in names, dtype=dtype, **kwargs)
    return PruneReport(method, tuple(reports), encoded, None if ratios is None else tuple(ratios),
                       None if ratios is None else tuple(targets))
