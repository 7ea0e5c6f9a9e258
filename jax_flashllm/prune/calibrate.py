"""Calibration statistics of one decoder layer, compiled once and reused by every layer of the same shape:

- ``layer_grams``: the Gram matrix X^T X (float32) of the inputs of chosen Linear sublayers, accumulated
  inside the jitted forward pass, so the inputs are never stored; Linears fed the same array (q, k, v) share
  one Gram, and work no statistic needs (the last Linear's product, the layer's output) is dropped by XLA;
- ``layer_norms``: the column norms ||X_j|| of the same inputs (Wanda's scores, OWL's outlier ratios) and
  the layer's outputs, in one pass;
- ``layer_outputs``: the layer's outputs, the next layer's inputs;
- ``gram``: X^T X of one batch, with the symmetry used to skip most of the work above the diagonal.

Layers are passed to jit as ``nnx.split`` (graphdef static, state traced): the layers of a model share one
graphdef, so one program serves them all.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jax_flashllm import nn as _nn

__all__ = ["gram", "layer_grams", "layer_norms", "layer_outputs"]

# Column block of the symmetric Gram: the blocks above the diagonal are computed and mirrored, the ones below
# not. 4 blocks of 768 (10 of 16 products) took 0.45 s against 0.60 s for the full 4096 x 3072 Gram (fc2's
# input, 2 cores); narrower blocks made smaller, less efficient dots and gained nothing more.
_GRAM_BLOCK = 768


def gram(x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """x: (..., K) any float dtype; valid: x.shape[:-1] bool (rows to count) -> (K, K) float32 sum of the
    outer products x_t x_t^T over the valid rows."""
    k = x.shape[-1]
    x = x.astype(jnp.float32)
    if valid is not None:
        x = jnp.where(valid[..., None], x, 0.0)
    x = x.reshape(-1, k)
    edges = [min(i * _GRAM_BLOCK, k) for i in range(-(-k // _GRAM_BLOCK) + 1)]
    parts = [x[:, a:b] for a, b in zip(edges[:-1], edges[1:])]
    hp = jax.lax.Precision.HIGHEST
    upper = {(i, j): jnp.einsum("TK,TJ->KJ", parts[i], parts[j], precision=hp)
             for i in range(len(parts)) for j in range(i, len(parts))}
    return jnp.block([[upper[i, j] if j >= i else upper[j, i].T for j in range(len(parts))]
                      for i in range(len(parts))])


def _sum_of_squares(x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """x: (..., K), valid: x.shape[:-1] bool -> (K,) float32 sum of x_tj^2 over the valid rows."""
    x = x.astype(jnp.float32)
    if valid is not None:
        x = jnp.where(valid[..., None], x, 0.0)
    return jnp.sum(x * x, axis=tuple(range(x.ndim - 1)))


_STATISTICS = {"gram": gram, "sum_of_squares": _sum_of_squares}


class _Recorder(nnx.Module):
    """Stands in for a Linear while tracing: records a statistic of its input under ``name`` and calls the
    Linear. Inputs are matched by identity: a second Linear fed the same traced array reuses the statistic."""

    def __init__(self, linear, name: str, context: dict):
        self.linear, self._name, self._context = linear, name, context

    def __call__(self, x):
        seen, stats = self._context["seen"], self._context["stats"]
        hit = seen.get(id(x))
        if hit is None or hit[0] is not x:
            hit = seen[id(x)] = (x, _STATISTICS[self._context["kind"]](x, self._context["valid"]))
        stats[self._name] = hit[1]
        return self.linear(x)


@functools.partial(jax.jit, static_argnames=("graphdef", "names", "kind", "output"))
def _accumulate(state, x, bias, valid, totals, *, graphdef, names, kind, output):
    layer = nnx.merge(graphdef, state)
    modules = dict(nnx.iter_graph(layer))
    context = {"seen": {}, "stats": {}, "valid": valid, "kind": kind}
    for name in names:
        path = tuple(name.split("."))
        _nn.set_submodule(layer, path, _Recorder(modules[path], name, context), modules)
    # Without output only the statistics are returned: XLA drops what they do not depend on (the last
    # Linear's product and the residual after it).
    y = layer(x, bias)[0]
    totals = {name: totals[name] + context["stats"][name] for name in names}
    return (totals, y) if output else totals


def _collect(layer, names, inputs, biases, valids, kind: str, output: bool):
    graphdef, state = nnx.split(layer)
    modules = dict(nnx.iter_graph(layer))
    totals, outputs = {}, []
    for name in names:
        k = modules[tuple(name.split("."))].in_features
        totals[name] = jnp.zeros((k, k) if kind == "gram" else (k,), jnp.float32)
    for x, bias, valid in zip(inputs, biases, valids):
        totals = _accumulate(state, x, bias, valid, totals, graphdef=graphdef, names=names, kind=kind,
                             output=output)
        if output:
            totals, y = totals
            outputs.append(y)
    return totals, outputs


def layer_grams(layer: nnx.Module, names: tuple[str, ...], inputs, biases, valids) -> dict[str, jax.Array]:
    """Run ``layer`` on every batch and return, for each dotted sublayer path in ``names`` (an nnx.Linear),
    the (K, K) float32 Gram X^T X of its inputs over the valid tokens of all batches.

    inputs: list of (B, T, M) hidden states; biases: list of the matching (B, 1, T, T) float32 score biases
    (``mask_bias``); valids: list of (B, T) bool, False for padding tokens (left out of the Grams).
    """
    return _collect(layer, names, inputs, biases, valids, "gram", False)[0]


def layer_norms(layer: nnx.Module, names: tuple[str, ...], inputs, biases,
                valids) -> tuple[dict[str, jax.Array], list[jax.Array]]:
    """Like ``layer_grams``, but only the (K,) float32 column norms ||X_j||_2 of each sublayer's inputs, and
    the layer's outputs (the list of (B, T, M) next inputs) from the same pass."""
    totals, outputs = _collect(layer, names, inputs, biases, valids, "sum_of_squares", True)
    return {name: jnp.sqrt(total) for name, total in totals.items()}, outputs


@functools.partial(jax.jit, static_argnames="graphdef")
def _forward(state, x, bias, *, graphdef):
    return nnx.merge(graphdef, state)(x, bias)[0]


def layer_outputs(layer: nnx.Module, inputs, biases) -> list[jax.Array]:
    """``layer(x, bias)[0]`` for every batch, through one compiled program per input shape: a list of
    (B, T, M) arrays in the inputs' dtype."""
    graphdef, state = nnx.split(layer)
    return [_forward(state, x, bias, graphdef=graphdef) for x, bias in zip(inputs, biases)]
