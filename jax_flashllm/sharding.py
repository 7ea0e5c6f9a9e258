"""Tensor parallelism for SparseMatrix weights (any format) on JAX's own SPMD machinery (Mesh, NamedSharding, shard_map).

A (M, K) weight is split over one mesh axis of S devices in one of two ways (Megatron-LM's pair):
- column-parallel (``kind="column"``): along M (out_features). Each device holds a (M/S, K) block and
  computes M/S outputs from the whole x; no communication, the output stays sharded on its last dim.
- row-parallel (``kind="row"``): along K (in_features). Each device holds a (M, K/S) block, multiplies its
  K/S slice of x, and the S partial (..., M) outputs are summed by one psum (one all-reduce).
A column-parallel layer followed by a row-parallel one (q/k/v -> out_proj, fc1 -> fc2) needs exactly one
all-reduce per pair, and no device ever holds or gathers another device's weights.

Every shard is an independent, valid matrix of w's format (its own tiles and tile_offsets). To stack the S
encodings into one array with a leading shard axis, each is padded to the largest value count with zeros in
its tiles — the last tile first, then the one before it when the last is full — stored as explicit zeros at
zero positions: Tiled-CSL entries at *unused locations* (never duplicates), bitmap bits set for zero elements.
Every tile count stays a multiple of NNZ_ALIGN, so ``validate()`` passes for every shard and the kernels read
the padding as ordinary zeros. Room always suffices: the shards have equal tile grids and shapes, so the
largest shard fits in any shard's tiles.

On top of that: ``ShardedSparseLinear`` (a SparseLinear holding a ShardedSparseMatrix), ``shard_linear`` (one
nnx.Linear or SparseLinear made tensor-parallel; dense kernels are placed with NamedSharding and left to XLA's
SPMD partitioner) and ``shard_model`` (Megatron-style tensor parallelism for OPTForCausalLM). docs/sharding.md
has the whole story, with the weight bytes per device of OPT-66B and OPT-175B.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jax_flashllm import _constants as C
from jax_flashllm import formats as _formats
from jax_flashllm.format import SparseMatrix, _host
from jax_flashllm.nn import SparseLinear
from jax_flashllm.ops import check_inputs, register_weight_type, sparse_dense

__all__ = ["COLUMN", "ROW", "OPT_PLAN", "ShardedSparseMatrix", "ShardedSparseLinear", "shard_sparse",
           "split_sparse", "pad_entries", "sharded_sparse_dense", "shard_linear", "shard_model"]

COLUMN = "column"
ROW = "row"
_KINDS = (COLUMN, ROW)


def _check_kind(kind: str) -> str:
    if kind not in _KINDS:
        raise ValueError(f"kind must be {COLUMN!r} (split out_features) or {ROW!r} (split in_features), "
                         f"got {kind!r}")
    return kind


# --- host-side splitting and padding ---------------------------------------------------------------------
def split_sparse(w: SparseMatrix, num_shards: int, kind: str) -> list[SparseMatrix]:
    """Cut w (M, K) into num_shards contiguous blocks, each re-encoded as its own SparseMatrix.

    kind "column": blocks of M/num_shards rows (out_features); "row": blocks of K/num_shards columns.
    The split dimension must be a multiple of num_shards. When the blocks are whole tiles (OPT-1.3B and larger
    on up to 8 devices) each block is a subset of w's tiles and its encoding is copied as is; otherwise only
    w's real nonzeros move (one block densified at a time and re-encoded). Works on the host.
    """
    _check_kind(kind)
    m, k = w.shape
    dim = m if kind == COLUMN else k
    if num_shards < 1 or dim % num_shards:
        side = "M (out_features)" if kind == COLUMN else "K (in_features)"
        raise ValueError(f"cannot split {side} = {dim} of a {w.shape} weight into {num_shards} equal shards")
    size = dim // num_shards
    if size % (C.TILE_M if kind == COLUMN else C.TILE_K) == 0:
        return _split_by_tiles(w, num_shards, kind)
    with jax.default_device(jax.devices("cpu")[0]):
        rows, cols, valid = (_host(a) for a in w.entry_coords())
    values = _host(w.values)
    real = valid & ((values.view(np.uint16) & 0x7FFF) != 0)  # padding / explicit zeros go; NaN and Inf stay
    rows, cols, values = rows[real], cols[real], values[real]
    split_coord = rows if kind == COLUMN else cols
    shard_of = split_coord // size
    shape = (size, k) if kind == COLUMN else (m, size)
    shards = []
    for s in range(num_shards):
        sel = shard_of == s
        block = np.zeros(shape, w.dtype)
        if kind == COLUMN:
            block[rows[sel] - s * size, cols[sel]] = values[sel]
        else:
            block[rows[sel], cols[sel] - s * size] = values[sel]
        shards.append(SparseMatrix.from_dense(block, dtype=w.dtype, format=w.format))
    return shards


def _split_by_tiles(w: SparseMatrix, num_shards: int, kind: str) -> list[SparseMatrix]:
    """split_sparse for blocks made of whole tiles: every format places values relative to their tile, so a
    block's encoding is its tiles' value ranges (and index), gathered in the block's own row-major order."""
    fmt = _formats.get(w.format)
    values, index, offsets = (_host(a) for a in (w.values, w.index, w.tile_offsets))
    mt, kt = w.tiles
    grid = np.arange(mt * kt).reshape(mt, kt)
    m, k = w.shape
    shape = (m // num_shards, k) if kind == COLUMN else (m, k // num_shards)
    return [SparseMatrix._unchecked(*_formats._base.select_tiles(fmt, values, index, offsets, tiles.reshape(-1)),
                                    shape, w.dtype, w.format)
            for tiles in np.split(grid, num_shards, axis=0 if kind == COLUMN else 1)]


def pad_entries(w: SparseMatrix, entries: int) -> SparseMatrix:
    """The same matrix stored with exactly ``entries`` values (a multiple of NNZ_ALIGN, >= w's count).

    The extra values are zeros given to the last tile until it is full, then to the tile before it, and so
    on, at zero positions of the logical matrix: Tiled-CSL entries at locations unused in their tile, bitmap
    bits set for explicitly stored zeros (the dense format is never padded: equal grids store equal counts).
    The result passes ``validate()``.
    """
    values, index, offsets = (_host(a) for a in (w.values, w.index, w.tile_offsets))
    bits, index, offsets = _formats.get(w.format).pad(values.view(np.uint16), index, offsets,
                                                      entries - values.shape[0], w.shape)
    return SparseMatrix._unchecked(bits.view(values.dtype), index, offsets, w.shape, w.dtype, w.format)


# --- the sharded matrix ----------------------------------------------------------------------------------
@jax.tree_util.register_pytree_node_class
class ShardedSparseMatrix:
    """A (M, K) SparseMatrix split over mesh axis ``axis`` into S equal, independently encoded shards, each
    a valid matrix of the same format.

    Leaves (each sharded along its leading axis over ``axis``, so device s holds row s only):
      values:       (S, P) float16 | bfloat16 — shard s's values, padded to the common count P.
      index:        (S, I) — shard s's index (tiled_csl (S, P) uint16; bitmap (S, T_s * 260) uint32;
                    dense (S, 0) uint32).
      tile_offsets: (S, T_s + 1) int32 — T_s tiles of one (M/S, K) or (M, K/S) shard.
    Static: shape (M, K) of the whole matrix, dtype, format, kind ("column" | "row"), mesh, axis.
    Build with ``shard_sparse``; multiply with ``jax_flashllm.sparse_dense`` (jit, via shard_map).
    """

    __slots__ = ("values", "index", "tile_offsets", "shape", "dtype", "format", "kind", "mesh", "axis")

    def __init__(self, values, index, tile_offsets, shape, dtype, kind: str, mesh: Mesh, axis: str,
                 format: str | int = "tiled_csl"):
        self.values, self.index, self.tile_offsets = values, index, tile_offsets
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.format = _formats.get(format).NAME
        self.kind = _check_kind(kind)
        self.mesh, self.axis = mesh, axis

    def tree_flatten(self):
        aux = (self.shape, self.dtype.name, self.kind, self.mesh, self.axis, self.format)
        return (self.values, self.index, self.tile_offsets), aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        shape, dtype, kind, mesh, axis, format = aux
        return cls(*children, shape, dtype, kind, mesh, axis, format)

    @property
    def num_shards(self) -> int:
        return self.mesh.shape[self.axis]

    @property
    def shard_shape(self) -> tuple[int, int]:
        """(M/S, K) for column-parallel, (M, K/S) for row-parallel."""
        m, k = self.shape
        s = self.num_shards
        return (m // s, k) if self.kind == COLUMN else (m, k // s)

    def local(self, values, index, tile_offsets) -> SparseMatrix:
        """One shard's SparseMatrix from its (1, P) / (1, I) / (1, T_s + 1) blocks (used inside shard_map)."""
        return SparseMatrix._unchecked(values[0], index[0], tile_offsets[0], self.shard_shape,
                                       self.dtype, self.format)

    def shard(self, s: int) -> SparseMatrix:
        """Shard s as a standalone SparseMatrix (fetched to the host)."""
        return self.local(*(_host(a)[s:s + 1] for a in (self.values, self.index, self.tile_offsets)))

    def _shards(self) -> list[SparseMatrix]:
        """Every shard as a standalone SparseMatrix, each of the three arrays fetched to the host once."""
        values, index, offsets = (_host(a) for a in (self.values, self.index, self.tile_offsets))
        return [self.local(values[s:s + 1], index[s:s + 1], offsets[s:s + 1]) for s in range(self.num_shards)]

    def validate(self) -> "ShardedSparseMatrix":
        """Check every shard is a valid matrix of the format; returns self."""
        for s, shard in enumerate(self._shards()):
            try:
                shard.validate()
            except ValueError as e:
                raise ValueError(f"shard {s} of {self.num_shards}: {e}") from e
        return self

    def to_dense(self) -> jax.Array:
        """The whole dense (M, K) matrix (for tests and reference paths; gathers every shard)."""
        blocks = [shard.to_dense() for shard in self._shards()]
        return jnp.concatenate(blocks, axis=0 if self.kind == COLUMN else 1)

    @property
    def nbytes(self) -> int:
        """Bytes of all shards together, padding included."""
        return int(sum(a.size * a.dtype.itemsize for a in (self.values, self.index, self.tile_offsets)))

    @property
    def nbytes_per_device(self) -> int:
        """Bytes one device holds of this weight (one shard)."""
        return self.nbytes // self.num_shards

    def __repr__(self) -> str:
        return (f"ShardedSparseMatrix(shape={self.shape}, dtype={self.dtype.name}, kind={self.kind!r}, "
                f"axis={self.axis!r}, shards={self.num_shards}, entries_per_shard={self.values.shape[-1]})")


def shard_sparse(w, mesh: Mesh, axis: str = "tp", kind: str = COLUMN, *, dtype=None,
                 format: str = "auto") -> ShardedSparseMatrix:
    """Split w over mesh axis ``axis`` and place shard s on the devices at position s of that axis.

    w: SparseMatrix (M, K), or a dense (M, K) array whose zeros are the pruned positions (encoded in
    ``dtype`` and ``format``, see SparseMatrix.from_dense). kind "column" splits M, "row" splits K; the split dimension
    must be a multiple of the axis size. Other mesh axes hold replicas.
    """
    _check_kind(kind)
    if axis not in mesh.shape:
        raise ValueError(f"mesh has no axis {axis!r} (axes: {tuple(mesh.shape)})")
    if isinstance(w, ShardedSparseMatrix):
        raise TypeError("shard_sparse: the weight is already sharded; shard the SparseMatrix it came from")
    if not isinstance(w, SparseMatrix):
        w = SparseMatrix.from_dense(w, dtype=dtype, format=format)
    shards = split_sparse(w, mesh.shape[axis], kind)
    entries = max(s.values.shape[0] for s in shards)
    shards = [pad_entries(s, entries) for s in shards]
    placement = NamedSharding(mesh, P(axis))
    values, index, offsets = (jax.device_put(np.stack([_host(getattr(s, name)) for s in shards]), placement)
                              for name in ("values", "index", "tile_offsets"))
    return ShardedSparseMatrix(values, index, offsets, w.shape, w.dtype, kind, mesh, axis, w.format)


def _is_explicit(mesh: Mesh, axis: str) -> bool:
    return mesh.axis_types[mesh.axis_names.index(axis)] == jax.sharding.AxisType.Explicit


# --- the sharded op --------------------------------------------------------------------------------------
def sharded_sparse_dense(x, w: ShardedSparseMatrix, bias=None):
    """y = x @ W.T (+ bias) with W split over its mesh axis; each device multiplies only its own shard.

    x: (..., K) in w.dtype (float16 | bfloat16), any sharding (it is resharded to what the layer needs).
    bias: optional (M,). Returns (..., M) in x's dtype:
      column-parallel — sharded over the axis along its last dim, no communication;
      row-parallel — replicated, after one psum of the per-device partial outputs. The partials are summed
      in float32 (decode activations are small, and each partial is already rounded to x's dtype once).
    """
    x, bias = check_inputs(x, w.shape, w.dtype, bias)
    lead = (None,) * (x.ndim - 1)
    if w.kind == COLUMN:
        x_spec, y_spec, b_spec = P(*lead, None), P(*lead, w.axis), P(w.axis)
    else:
        x_spec, y_spec, b_spec = P(*lead, w.axis), P(*lead, None), P(None)
    w_spec = P(w.axis)
    args = [x, w.values, w.index, w.tile_offsets]
    specs = [x_spec, w_spec, w_spec, w_spec]
    if bias is not None:
        args.append(bias)
        specs.append(b_spec)

    if _is_explicit(w.mesh, w.axis):
        # Explicit-sharding meshes check specs against each input's type-level sharding: reshard the
        # activations (never the weights, which shard_sparse placed on P(axis) already).
        args = [jax.reshard(a, NamedSharding(w.mesh, spec)) for a, spec in zip(args, specs)]

    def per_device(x, values, index, tile_offsets, *b):
        y = sparse_dense(x, w.local(values, index, tile_offsets))
        if w.kind == ROW:
            y = jax.lax.psum(y.astype(jnp.float32), w.axis).astype(x.dtype)
        return y + b[0].astype(y.dtype) if b else y

    # check_vma=False: the FFI primitive has no varying-manual-axes rule; the specs above say it all.
    return jax.shard_map(per_device, mesh=w.mesh, in_specs=tuple(specs), out_specs=y_spec,
                         check_vma=False)(*args)


register_weight_type(ShardedSparseMatrix, sharded_sparse_dense)


# --- layers and models -----------------------------------------------------------------------------------
class ShardedSparseLinear(SparseLinear):
    """A SparseLinear whose weight is a ShardedSparseMatrix: same call, same state names (values,
    index, tile_offsets, bias), arrays with a leading shard axis placed over the mesh axis."""

    def __init__(self, weight: ShardedSparseMatrix, bias: jax.Array | None = None):
        super().__init__(weight, bias)  # jnp.asarray keeps the arrays' placement on the mesh
        self.kind, self.mesh, self.axis = weight.kind, weight.mesh, weight.axis

    @property
    def weight(self) -> ShardedSparseMatrix:
        values = self.values[...]
        aux = ((self.out_features, self.in_features), jnp.dtype(values.dtype).name, self.kind, self.mesh,
               self.axis, self.format)
        return ShardedSparseMatrix.tree_unflatten(aux, (values, self.index[...], self.tile_offsets[...]))

    def spec(self) -> dict:
        """Not saveable: the arrays hold S padded encodings that SparseLinear.abstract cannot describe."""
        raise ValueError(f"a {type(self).__name__} ({self.kind}-parallel over mesh axis {self.axis!r}) cannot "
                         "be saved: save the model before shard_model / shard_linear, then shard the "
                         "loaded model")


def _bias_spec(kind: str, axis: str) -> P:
    # A column-parallel layer's bias follows its output features; a row-parallel one is added once, after
    # the psum, so every device holds all of it.
    return P(axis) if kind == COLUMN else P()


def shard_linear(layer, mesh: Mesh, axis: str = "tp", kind: str = COLUMN):
    """Tensor-parallel version of one layer: nnx.Linear (in place, returned) or SparseLinear (a new
    ShardedSparseLinear). Dense kernels (in, out) are placed with NamedSharding — P(None, axis) for
    "column", P(axis, None) for "row" — and XLA's SPMD partitioner splits the matmul the same way the
    sparse layers split theirs with shard_map."""
    _check_kind(kind)
    if isinstance(layer, ShardedSparseLinear):
        raise ValueError(f"shard_linear: the layer is already sharded ({layer.kind}-parallel over mesh axis "
                         f"{layer.axis!r}); shard_model / shard_linear a model once")
    bias = None if layer.bias is None else jax.device_put(layer.bias[...],
                                                          NamedSharding(mesh, _bias_spec(kind, axis)))
    if isinstance(layer, SparseLinear):
        return ShardedSparseLinear(shard_sparse(layer.weight, mesh, axis, kind), bias)
    if isinstance(layer, nnx.Linear):
        size, (k, m) = mesh.shape[axis], layer.kernel.shape
        dim = m if kind == COLUMN else k
        if dim % size:
            raise ValueError(f"cannot split {dim} features of a ({k}, {m}) kernel over {size} devices")
        spec = P(None, axis) if kind == COLUMN else P(axis, None)
        layer.kernel.set_value(jax.device_put(layer.kernel[...], NamedSharding(mesh, spec)))
        if bias is not None:
            layer.bias.set_value(bias)
        return layer
    raise TypeError(f"shard_linear expects an nnx.Linear or a SparseLinear, got {type(layer).__name__}")


# Megatron-LM's split of a transformer block: the projections that fan out are column-parallel, the ones that
# fan back in are row-parallel, so each attention and each MLP block costs one all-reduce.
OPT_PLAN = (("self_attn", "q_proj", COLUMN), ("self_attn", "k_proj", COLUMN), ("self_attn", "v_proj", COLUMN),
            ("self_attn", "out_proj", ROW), (None, "fc1", COLUMN), (None, "fc2", ROW))


def _on_mesh(a, mesh: Mesh) -> bool:
    sharding = getattr(a, "sharding", None)
    return isinstance(sharding, NamedSharding) and sharding.mesh == mesh


def shard_model(model, mesh: Mesh, axis: str = "tp", *, vocab_parallel: bool = False):
    """Megatron-style tensor parallelism for an OPTForCausalLM (dense, sparse or mixed layers), in place.

    Every decoder layer's q/k/v_proj and fc1 become column-parallel and out_proj and fc2 row-parallel over
    mesh axis ``axis`` (attention heads and FFN columns split across its devices); everything else
    (positions, LayerNorms, project_in/out) is replicated, and so is the token embedding (= the tied LM
    head) unless ``vocab_parallel``: then its rows are split too (vocab_size / S per device), at the cost
    of one more all-reduce per forward (the lookup) and a small all-gather to pick the next token. Returns the
    model; ``jax_flashllm.generate`` runs on it as on one device. Load (and sparsify) the model on the host
    CPU first — only the shards go to the accelerators. The mesh's axes are used as Auto axes whatever
    their type (the model's activations and KV cache are sharded by XLA's propagation).
    """
    if axis not in mesh.shape:
        raise ValueError(f"mesh has no axis {axis!r} (axes: {tuple(mesh.shape)})")
    if any(isinstance(m, ShardedSparseLinear) for _, m in nnx.iter_graph(model)):
        raise ValueError("shard_model: the model is already sharded; shard_model a model once")
    # The model code is written in the global view and leaves the activations' (and KV cache's) sharding to
    # XLA's propagation, which needs Auto axes; jax.make_mesh makes Explicit ones by default.
    mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names))
    cfg, size = model.config, mesh.shape[axis]
    split = [("num_attention_heads", cfg.num_attention_heads), ("ffn_dim", cfg.ffn_dim)]
    for name, value in split + ([("vocab_size", cfg.vocab_size)] if vocab_parallel else []):
        if value % size:
            raise ValueError(f"{name} = {value} is not a multiple of the {size} devices of mesh axis {axis!r}")
    if vocab_parallel:
        table = model.embed_tokens.embedding
        table.set_value(jax.device_put(table[...], NamedSharding(mesh, P(axis, None))))
    for layer in model.layers:
        for parent_name, name, kind in OPT_PLAN:
            parent = layer if parent_name is None else getattr(layer, parent_name)
            setattr(parent, name, shard_linear(getattr(parent, name), mesh, axis, kind))
        layer.self_attn.heads_split = (mesh, axis)  # the fused attention kernel runs per device on its heads
    replicated = NamedSharding(mesh, P())
    state = nnx.state(model)
    nnx.update(model, jax.tree.map(lambda a: a if _on_mesh(a, mesh) else jax.device_put(a, replicated), state))
    return model
