"""Sparse layers for flax.nnx: ``SparseLinear`` (a drop-in for ``nnx.Linear`` holding a SparseMatrix weight) and
``sparsify(model, sparsity)``, which prunes and swaps the Linear layers of any nnx model in place.

The SparseMatrix arrays are nnx state: values are an ``nnx.Param`` (trainable, castable, shardable), the
integer structure (index, tile_offsets) a non-trainable ``SparseIndex`` variable, so nnx.split / jit /
nnx.state(model, nnx.Param) treat a sparsified model like any other.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_flashllm import formats as _formats
from jax_flashllm.prune import magnitude as _prune
from jax_flashllm._log import logger, progress as _progress
from jax_flashllm.format import SparseMatrix, _host
from jax_flashllm.ops import sparse_dense

__all__ = ["SparseIndex", "SparseLinear", "PackedEmbed", "LayerReport", "SparsifyReport", "sparsify", "densify",
           "set_submodule"]


class SparseIndex(nnx.Variable):
    """Integer structure of a sparse weight (index, tile offsets): state, but never trained."""


class _HeldMatrix(nnx.Module):
    """A SparseMatrix held as module state: values trainable (nnx.Param), index and tile offsets as
    SparseIndex, the format static; shared by every layer built on one."""

    def _hold(self, weight: SparseMatrix) -> None:
        self.values = nnx.Param(jnp.asarray(weight.values))
        self.index = SparseIndex(jnp.asarray(weight.index))
        self.tile_offsets = SparseIndex(jnp.asarray(weight.tile_offsets))
        self.format = weight.format  # static: "tiled_csl" | "bitmap" | "dense"

    def _matrix(self, shape: tuple[int, int]) -> SparseMatrix:
        """The SparseMatrix view of the state (no copy, no validation: safe under jit)."""
        values = self.values[...]
        aux = (shape, jnp.dtype(values.dtype).name, self.format)
        return SparseMatrix.tree_unflatten(aux, (values, self.index[...], self.tile_offsets[...]))


class SparseLinear(_HeldMatrix):
    """y = x @ W.T + bias with W a SparseMatrix (out_features, in_features); the call of ``nnx.Linear``.

    x: (..., in_features) any float dtype; it is cast to W's dtype (float16 | bfloat16) for the kernel
    (float32 accumulation) and the result cast back. The bias is stored in its own dtype and added in W's.
    """

    def __init__(self, weight: SparseMatrix, bias: jax.Array | None = None):
        self._hold(weight)
        self.bias = None if bias is None else nnx.Param(jnp.asarray(bias))
        self.out_features, self.in_features = weight.shape

    @property
    def weight(self) -> SparseMatrix:
        """The SparseMatrix view of the layer's state (no copy, no validation: safe under jit)."""
        return self._matrix((self.out_features, self.in_features))

    @property
    def use_bias(self) -> bool:
        return self.bias is not None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (..., in_features) -> (..., out_features) in x's dtype."""
        w = self.weight
        # The bias is added in W's dtype, as nnx.Linear(dtype=W's dtype) does: then the dense reference
        # (to_linear) rounds exactly where this layer does and only the summation order differs.
        bias = None if self.bias is None else self.bias[...].astype(w.dtype)
        return sparse_dense(x.astype(w.dtype), w, bias).astype(x.dtype)

    @classmethod
    def from_linear(cls, linear: nnx.Linear, sparsity: float, method: str = "magnitude",
                    dtype=None, *, seed: int = 0, format: str = "auto") -> "SparseLinear":
        """Prune ``linear``'s kernel (in, out) to ``sparsity`` with ``method`` (see jax_flashllm.prune.METHODS)
        and encode W = kernel.T as a SparseMatrix of ``dtype`` (float16 | bfloat16; None: the kernel's own
        dtype when it is one of those, else bfloat16) in ``format`` (see SparseMatrix.from_dense; "auto":
        the fewest bytes). The bias is kept as is."""
        kernel = linear.kernel[...]
        if dtype is None:
            # A float16 model keeps float16 weights; a float32 one gets bfloat16 (same exponent range).
            dtype = kernel.dtype if jnp.dtype(kernel.dtype) in (jnp.float16, jnp.bfloat16) else jnp.bfloat16
        w = _host(kernel).T
        w = _prune.prune(w, sparsity, method, seed=seed)
        bias = None if linear.bias is None else linear.bias[...]
        return cls(SparseMatrix.from_dense(w, dtype=dtype, format=format), bias)

    def to_linear(self, dtype=None) -> nnx.Linear:
        """A dense nnx.Linear with the same weights (W.to_dense()): the pure-JAX reference path.

        dtype None: W's dtype for the kernel and the computation, so x is rounded as in __call__ and only the
        summation order differs (output in W's dtype, bias added there). dtype float32: the same (exactly
        representable) weights in a float32 layer, the fastest dense option on CPU.
        """
        dtype = self.weight.dtype if dtype is None else jnp.dtype(dtype)
        dense = nnx.eval_shape(lambda: nnx.Linear(self.in_features, self.out_features, use_bias=self.use_bias,
                                                  dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
        dense.kernel = nnx.Param(self.weight.to_dense().T.astype(dtype))
        if self.bias is not None:
            dense.bias = nnx.Param(self.bias[...].astype(dtype))
        return dense

    def spec(self) -> dict:
        """Everything but the arrays' contents: enough to rebuild an abstract layer (see ``abstract``)."""
        return dict(shape=[self.out_features, self.in_features], dtype=jnp.dtype(self.values.dtype).name,
                    entries=int(self.values.shape[0]), tiles=int(self.tile_offsets.shape[0]) - 1,
                    bias_dtype=None if self.bias is None else jnp.dtype(self.bias.dtype).name,
                    format=self.format)

    @classmethod
    def abstract(cls, spec: dict) -> "SparseLinear":
        """A layer of the given ``spec()`` whose arrays are shapes only (to be filled from a checkpoint).
        Specs saved before formats had names carry "version": 1, which is Tiled-CSL."""
        m, k = spec["shape"]
        fmt = _formats.get(spec.get("format", spec.get("version")))

        def build():
            w = SparseMatrix.tree_unflatten(
                ((m, k), spec["dtype"], fmt.NAME),
                (jnp.zeros(spec["entries"], spec["dtype"]),
                 jnp.zeros(fmt.index_shape(spec["tiles"], spec["entries"]), fmt.INDEX_DTYPE),
                 jnp.zeros(spec["tiles"] + 1, jnp.int32)))
            bias = None if spec["bias_dtype"] is None else jnp.zeros(m, spec["bias_dtype"])
            return cls(w, bias)

        return nnx.eval_shape(build)


class PackedEmbed(_HeldMatrix):
    """An embedding table W (num_embeddings, features) stored once as a SparseMatrix (state as in
    SparseLinear), serving both the token lookup and a tied output projection (an LM head).

    Decode reads a tied head whole every token; as an ``nnx.Embed`` in float32 that is 4 bytes per weight
    through XLA's dot (whose CPU bf16 path is ~10x slower than its f32 one). In the "dense" format (bf16,
    2 bytes per weight) the head runs through ``sparse_dense``; pruned (bitmap / Tiled-CSL) it reads fewer.
    ``embed(ids)`` / ``__call__``: (...) int -> (..., features) in W's dtype. A dense-format table gathers
    the rows from its values by index arithmetic; the sparse formats have no direct row address, so their
    lookup decodes the table (``to_dense``), the price of pruning a tied head.
    ``attend(h)``: (..., features) -> (..., num_embeddings) float32, the kernel's output (rounded to W's
    dtype, as HF's bf16 head rounds its logits).
    """

    def __init__(self, weight: SparseMatrix):
        self._hold(weight)
        self.num_embeddings, self.features = weight.shape

    @property
    def weight(self) -> SparseMatrix:
        """The SparseMatrix view of the state (no copy, no validation: safe under jit)."""
        return self._matrix((self.num_embeddings, self.features))

    @classmethod
    def from_embed(cls, embed: "nnx.Embed | PackedEmbed", sparsity: float = 0.0, *, method: str = "magnitude",
                   dtype=jnp.bfloat16, format: str | None = None, seed: int = 0) -> "PackedEmbed":
        """Encode ``embed``'s table pruned to ``sparsity`` with ``method`` (0: kept whole) as ``dtype``
        (float16 | bfloat16) in ``format`` (None: "dense" when nothing is pruned, else "auto")."""
        table = embed.weight.to_dense() if isinstance(embed, PackedEmbed) else embed.embedding[...]
        table = _host(table).astype(np.float32)
        if sparsity > 0:
            table = _prune.prune(table, sparsity, method, seed=seed)
        fmt = format if format not in (None, "auto") or sparsity > 0 else "dense"
        return cls(SparseMatrix.from_dense(table, dtype=dtype or jnp.bfloat16, format=fmt or "auto"))

    def embed(self, ids: jax.Array) -> jax.Array:
        if self.format == "dense":
            return _formats.dense.rows(self.values[...], self.features, ids)
        return jnp.take(self.weight.to_dense(), ids, axis=0)

    __call__ = embed

    def attend(self, h: jax.Array) -> jax.Array:
        w = self.weight
        return sparse_dense(h.astype(w.dtype), w).astype(jnp.float32)

    def spec(self) -> dict:
        """Everything but the arrays' contents (see ``abstract``); "kind" tells checkpoints the class."""
        return dict(kind="PackedEmbed", shape=[self.num_embeddings, self.features],
                    dtype=jnp.dtype(self.values.dtype).name, entries=int(self.values.shape[0]),
                    tiles=int(self.tile_offsets.shape[0]) - 1, format=self.format)

    @classmethod
    def abstract(cls, spec: dict) -> "PackedEmbed":
        """A table of the given ``spec()`` whose arrays are shapes only (to be filled from a checkpoint)."""
        fmt = _formats.get(spec["format"])
        return nnx.eval_shape(lambda: cls(SparseMatrix.tree_unflatten(
            (tuple(spec["shape"]), spec["dtype"], fmt.NAME),
            (jnp.zeros(spec["entries"], spec["dtype"]),
             jnp.zeros(fmt.index_shape(spec["tiles"], spec["entries"]), fmt.INDEX_DTYPE),
             jnp.zeros(spec["tiles"] + 1, jnp.int32)))))


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """One replaced layer: its dotted path, W's (out, in) shape, achieved sparsity and weight bytes."""

    name: str
    shape: tuple[int, int]
    sparsity: float
    dense_bytes: int
    sparse_bytes: int


@dataclasses.dataclass(frozen=True)
class SparsifyReport:
    """What ``sparsify`` did, layer by layer; ``str(report)`` is a table."""

    layers: tuple[LayerReport, ...]

    @property
    def dense_bytes(self) -> int:
        return sum(layer.dense_bytes for layer in self.layers)

    @property
    def sparse_bytes(self) -> int:
        return sum(layer.sparse_bytes for layer in self.layers)

    def __str__(self) -> str:
        width = max([len("layer")] + [len(layer.name) for layer in self.layers])
        lines = [f"{'layer':<{width}}  {'shape (out, in)':>16}  {'sparsity':>8}  {'dense B':>12}  "
                 f"{'sparse B':>12}"]
        for r in self.layers:
            shape = f"{r.shape[0]} x {r.shape[1]}"
            lines.append(f"{r.name:<{width}}  {shape:>16}  {r.sparsity:>8.3f}  {r.dense_bytes:>12,}  "
                         f"{r.sparse_bytes:>12,}")
        ratio = self.dense_bytes / max(self.sparse_bytes, 1)
        count = f"{len(self.layers)} layers"
        lines.append(f"{'total':<{width}}  {count:>16}  {'':>8}  {self.dense_bytes:>12,}  "
                     f"{self.sparse_bytes:>12,}  ({ratio:.2f}x smaller)")
        return "\n".join(lines)


Selector = str | Iterable[str] | Callable[[str], bool] | None


def _matcher(selector: Selector, default: bool) -> Callable[[str], bool]:
    """A predicate on dotted layer paths: a regex (searched), a list of regexes (any), or a callable."""
    if selector is None:
        return lambda name: default
    if callable(selector):
        return selector
    patterns = [re.compile(selector)] if isinstance(selector, str) else [re.compile(p) for p in selector]
    return lambda name: any(p.search(name) for p in patterns)


def _path_name(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def set_submodule(model: nnx.Module, path: tuple, layer: nnx.Module, modules: dict | None = None) -> None:
    """Put ``layer`` at ``path`` (as yielded by nnx.iter_graph, e.g. ("layers", 0, "fc1")) inside ``model``.

    modules: ``dict(nnx.iter_graph(model))``, built once by a caller that replaces many layers; without it
    every call walks the whole model, and replacing n layers costs O(n^2). Replacing leaf layers keeps the
    map's parents valid.
    """
    if modules is None:
        modules = dict(nnx.iter_graph(model))
    parent, attr = modules[path[:-1]], path[-1]
    if isinstance(attr, int):
        parent[attr] = layer
    else:
        setattr(parent, attr, layer)


def sparsify(model: nnx.Module, sparsity: float, *, method: str = "magnitude", include: Selector = None,
             exclude: Selector = None, dtype=None, seed: int = 0, format: str = "auto",
             progress: bool | None = None) -> SparsifyReport:
    """Prune and replace ``nnx.Linear`` layers of ``model`` by SparseLinear layers, in place.

    include / exclude select layers by dotted path ("layers.0.self_attn.q_proj"): a regex searched in the
    path, a list of regexes, or a callable; default all Linear layers, none excluded. Embedding tables
    (``nnx.Embed``, ``PackedEmbed``; a tied LM head) are pruned into a PackedEmbed only when an explicit
    ``include`` matches their path (e.g. "embed_tokens"); by default they stay as they are.
    method: "magnitude" | "magnitude_row" | "random" (layer i uses seed + i). dtype: float16 | bfloat16
    storage of the sparse weights; None: each Linear's own parameter dtype when it is float16 | bfloat16,
    else bfloat16 (so a float32 model gets bfloat16; tables always get it).
    format: "tiled_csl" | "bitmap" | "dense" | "auto" (per layer, the fewest bytes; see SparseMatrix.from_dense).
    Returns a SparsifyReport (per layer: shape, achieved sparsity, bytes before and after). progress: a bar
    over the layers (None: on a terminal, unless JAX_FLASHLLM_PROGRESS=0).
    """
    take, drop = _matcher(include, True), _matcher(exclude, False)
    modules = dict(nnx.iter_graph(model))
    chosen = [(path, m) for path, m in modules.items()
              if isinstance(m, nnx.Linear) and take(_path_name(path)) and not drop(_path_name(path))]
    # Embedding tables (a tied LM head) are pruned only when an explicit `include` names them.
    tables = [(path, m) for path, m in modules.items() if include is not None
              and isinstance(m, (nnx.Embed, PackedEmbed)) and take(_path_name(path)) and not drop(_path_name(path))]
    reports = []
    started = time.perf_counter()
    for i, (path, linear) in enumerate(_progress(chosen, desc="sparsify", unit="layer", show=progress)):
        sparse = SparseLinear.from_linear(linear, sparsity, method, dtype, seed=seed + i, format=format)
        set_submodule(model, path, sparse, modules)
        w = sparse.weight
        reports.append(LayerReport(_path_name(path), w.shape, w.sparsity, int(linear.kernel[...].nbytes),
                                   w.nbytes))
    for i, (path, table) in enumerate(tables, start=len(chosen)):
        before = table.weight.nbytes if isinstance(table, PackedEmbed) else int(table.embedding[...].nbytes)
        packed = PackedEmbed.from_embed(table, sparsity, method=method, dtype=dtype, seed=seed + i,
                                        format=None if format == "auto" else format)
        set_submodule(model, path, packed, modules)
        w = packed.weight
        reports.append(LayerReport(_path_name(path), w.shape, w.sparsity, before, w.nbytes))
    logger.info("sparsified %d layers to %.0f%% (%s) in %.1f s", len(reports), 100 * sparsity, method,
                time.perf_counter() - started)
    return SparsifyReport(tuple(reports))


def densify(model: nnx.Module, dtype=None) -> None:
    """Replace every SparseLinear of ``model`` by the equivalent dense nnx.Linear, in place (see
    ``SparseLinear.to_linear`` for ``dtype``)."""
    modules = dict(nnx.iter_graph(model))
    for path, m in [(p, m) for p, m in modules.items() if isinstance(m, SparseLinear)]:
        set_submodule(model, path, m.to_linear(dtype), modules)
