"""Tiled-CSL: the compressed weight format the kernels read (DESIGN.md, "The format").

A weight W of shape (M, K) = (out_features, in_features) is cut into TILE_M x TILE_K tiles in row-major
tile order. Each tile stores its nonzeros as two parallel arrays, a 16-bit value and a uint16 location
(the element's offset in the kernel's swizzled shared-memory tile), with the count padded to a multiple
of NNZ_ALIGN by value-0 entries at zero positions. `tile_offsets` holds the prefix sums of the counts.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jax_flashllm import _constants as C

__all__ = ["SparseMatrix"]

_STORAGE_DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
_DTYPE_CODES = {"float16": 1, "bfloat16": 2}
_INPUT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _storage_dtype(dtype) -> np.dtype:
    name = np.dtype(dtype).name
    if name not in _STORAGE_DTYPES:
        raise TypeError(f"SparseMatrix values must be float16 or bfloat16, got {name}")
    return _STORAGE_DTYPES[name]


@jax.tree_util.register_pytree_node_class
class SparseMatrix:
    """A (M, K) weight in Tiled-CSL: only the nonzeros (plus <= 7 padding entries per tile) are stored.

    Leaves (pytree children, so jit / device_put / sharding see them as arrays):
      values:       (P,) float16 | bfloat16 — nonzero values, tile by tile.
      locations:    (P,) uint16 — swizzled offset of each value inside its TILE_M x TILE_K tile.
      tile_offsets: (T + 1,) int32 — tile t's entries are [tile_offsets[t], tile_offsets[t+1]).
    Static: shape (M, K), dtype, format version.

    Building from raw arrays validates them; use `SparseMatrix.from_dense` to encode a dense matrix.
    """

    __slots__ = ("values", "locations", "tile_offsets", "shape", "dtype", "version")

    def __init__(self, values, locations, tile_offsets, shape, *, version: int = C.FORMAT_VERSION):
        # Lists and other array-likes become numpy arrays (jax arrays stay on their devices), so the
        # pytree always has exactly three array leaves.
        values, locations, tile_offsets = (a if isinstance(a, jax.Array) else np.asarray(a)
                                           for a in (values, locations, tile_offsets))
        self._set(values, locations, tile_offsets, shape, np.dtype(values.dtype), version)
        self.validate()

    def _set(self, values, locations, tile_offsets, shape, dtype, version):
        self.values = values
        self.locations = locations
        self.tile_offsets = tile_offsets
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.version = int(version)

    @classmethod
    def _unchecked(cls, values, locations, tile_offsets, shape, dtype, version=C.FORMAT_VERSION):
        obj = object.__new__(cls)
        obj._set(values, locations, tile_offsets, shape, dtype, version)
        return obj

    # --- pytree -------------------------------------------------------------------------------------
    def tree_flatten(self):
        return (self.values, self.locations, self.tile_offsets), (self.shape, self.dtype.name, self.version)

    @classmethod
    def tree_unflatten(cls, aux, children):
        shape, dtype, version = aux
        return cls._unchecked(*children, shape, dtype, version)

    def replace_values(self, values) -> "SparseMatrix":
        """Same sparsity pattern, new values (e.g. fine-tuned, or a traced array to differentiate).
        values: (P,) float16 | bfloat16 (cast first, or use `astype`); the matrix dtype becomes values'
        dtype. Not validated: the pattern is unchanged."""
        if tuple(values.shape) != tuple(self.values.shape):
            raise ValueError(f"values must have shape {self.values.shape}, got {values.shape}")
        return SparseMatrix._unchecked(values, self.locations, self.tile_offsets, self.shape,
                                       _storage_dtype(values.dtype), self.version)

    def astype(self, dtype) -> "SparseMatrix":
        """The same matrix with values stored as `dtype` (float16 or bfloat16)."""
        dtype = _storage_dtype(dtype)
        return self.replace_values(self.values.astype(dtype))

    # --- properties ---------------------------------------------------------------------------------
    @property
    def tiles(self) -> tuple[int, int]:
        """(M tiles, K tiles) of the padded matrix."""
        return C.tile_grid(*self.shape)

    @property
    def num_tiles(self) -> int:
        mt, kt = self.tiles
        return mt * kt

    @property
    def padded_shape(self) -> tuple[int, int]:
        mt, kt = self.tiles
        return mt * C.TILE_M, kt * C.TILE_K

    @property
    def nnz(self) -> int:
        """Number of real nonzeros (padding entries and explicit zeros excluded; NaN counts)."""
        bits = np.asarray(jax.device_get(self.values)).view(np.uint16)
        return int(np.count_nonzero(bits & 0x7FFF))

    @property
    def sparsity(self) -> float:
        """Fraction of the logical M x K elements that are zero."""
        return 1.0 - self.nnz / (self.shape[0] * self.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of the encoded arrays: 4 per stored entry + 4 per tile offset."""
        return int(self.values.nbytes + self.locations.nbytes + self.tile_offsets.nbytes)

    def __repr__(self) -> str:
        return (f"SparseMatrix(shape={self.shape}, dtype={self.dtype.name}, "
                f"entries={self.values.shape[0]}, tiles={self.tiles})")

    # --- encode / decode ----------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, w, dtype=None) -> "SparseMatrix":
        """Encode a dense (M, K) matrix whose zeros are the pruned positions.

        w: (M, K) float16 | bfloat16 | float32 (numpy or jax), any M, K >= 1.
        dtype: storage dtype, float16 or bfloat16; default w's dtype if 16-bit, else bfloat16.
        Values that round to zero in `dtype` count as pruned. NaN and Inf are kept.
        """
        w = np.asarray(jax.device_get(w))
        if w.ndim != 2:
            raise ValueError(f"from_dense expects a 2-D (M, K) matrix, got shape {w.shape}")
        if w.dtype.name not in _INPUT_DTYPES:
            raise TypeError(f"from_dense expects a float16/bfloat16/float32 matrix, got {w.dtype}")
        m, k = w.shape
        if m < 1 or k < 1:
            raise ValueError(f"from_dense needs M, K >= 1, got shape {w.shape}")
        if dtype is None:
            dtype = w.dtype if w.dtype.name in _STORAGE_DTYPES else _STORAGE_DTYPES["bfloat16"]
        dtype = _storage_dtype(dtype)
        bits = w.astype(dtype, copy=False).view(np.uint16)

        mt, kt = C.tile_grid(*w.shape)
        if (m, k) != (mt * C.TILE_M, kt * C.TILE_K):
            padded = np.zeros((mt * C.TILE_M, kt * C.TILE_K), np.uint16)
            padded[:m, :k] = bits
            bits = padded
        # (Mt, TILE_M, Kt, TILE_K) -> (T, TILE_M * TILE_K): each row is one tile in row-major order.
        tiles = bits.reshape(mt, C.TILE_M, kt, C.TILE_K).transpose(0, 2, 1, 3).reshape(mt * kt, C.TILE_ELEMS)
        nonzero = (tiles & 0x7FFF) != 0  # -0.0 is a zero; NaN/Inf are not.
        counts = nonzero.sum(axis=1, dtype=np.int64)
        padded_counts = -(-counts // C.NNZ_ALIGN) * C.NNZ_ALIGN
        need = padded_counts - counts
        keep = nonzero
        if need.any():
            # Pad with the first `need` (< NNZ_ALIGN) zero positions of each tile: a zero position can
            # never collide with a real value, so the GPU's scatter stays a plain store.
            rows = np.flatnonzero(need)
            zeros = ~nonzero[rows]
            rank = np.cumsum(zeros, axis=1, dtype=np.int16)
            keep = nonzero.copy()
            keep[rows] |= zeros & (rank <= need[rows, None])
        flat = np.flatnonzero(keep)
        if padded_counts.sum() >= 2**31:
            raise ValueError("matrix has too many nonzeros for int32 tile offsets")
        values = tiles.reshape(-1)[flat].view(dtype)
        locations = C.SWIZZLE_TABLE[flat & (C.TILE_ELEMS - 1)]
        offsets = np.zeros(mt * kt + 1, np.int32)
        np.cumsum(padded_counts, out=offsets[1:])
        return cls._unchecked(values, locations, offsets, (m, k), dtype)

    def entry_coords(self):
        """Global (row, col) of every stored entry in the padded matrix: two (P,) int32 arrays.

        Works on concrete and traced arrays (used by to_dense and by the autodiff rules)."""
        _, kt = self.tiles
        p = self.values.shape[0]
        counts = jnp.diff(self.tile_offsets)
        tile = jnp.repeat(jnp.arange(self.num_tiles, dtype=jnp.int32), counts, total_repeat_length=p)
        r, c = C.unswizzle(self.locations.astype(jnp.int32))
        return (tile // kt) * C.TILE_M + r, (tile % kt) * C.TILE_K + c

    def to_dense(self) -> jax.Array:
        """The dense (M, K) matrix in the storage dtype (a jax array; works under jit)."""
        mp, kp = self.padded_shape
        rows, cols = self.entry_coords()
        dense = jnp.zeros((mp, kp), self.values.dtype).at[rows, cols].set(self.values, unique_indices=True)
        return dense[: self.shape[0], : self.shape[1]]

    # --- validation ---------------------------------------------------------------------------------
    def validate(self) -> "SparseMatrix":
        """Check every invariant of the format; raise ValueError naming the first
        violated one. Returns self. Needs concrete arrays (not inside jit)."""
        if any(isinstance(a, jax.core.Tracer) for a in (self.values, self.locations, self.tile_offsets)):
            raise ValueError("validate() needs concrete arrays; call it outside jit")
        m, k = self.shape
        if m < 1 or k < 1:
            raise ValueError(f"shape must have M, K >= 1, got {self.shape}")
        if self.version != C.FORMAT_VERSION:
            raise ValueError(f"unsupported format version {self.version} (this build reads {C.FORMAT_VERSION})")
        values, locations, offsets = (np.asarray(jax.device_get(a)) for a in
                                      (self.values, self.locations, self.tile_offsets))
        if values.dtype.name not in _STORAGE_DTYPES:
            raise ValueError(f"values must be float16 or bfloat16, got {values.dtype}")
        if values.dtype != self.dtype:
            raise ValueError(f"values dtype {values.dtype} does not match the matrix dtype {self.dtype}")
        if locations.dtype != np.uint16:
            raise ValueError(f"locations must be uint16, got {locations.dtype}")
        if offsets.dtype != np.int32:
            raise ValueError(f"tile_offsets must be int32, got {offsets.dtype}")
        for name, a in (("values", values), ("locations", locations), ("tile_offsets", offsets)):
            if a.ndim != 1:
                raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
        t = self.num_tiles
        if offsets.shape[0] != t + 1:
            raise ValueError(f"tile_offsets must have {t + 1} entries for shape {self.shape} "
                             f"({self.tiles[0]}x{self.tiles[1]} tiles), got {offsets.shape[0]}")
        if offsets[0] != 0:
            raise ValueError(f"tile_offsets must start at 0, got {offsets[0]}")
        counts = np.diff(offsets.astype(np.int64))
        if (counts < 0).any():
            bad = int(np.flatnonzero(counts < 0)[0])
            raise ValueError(f"tile_offsets must be non-decreasing (tile {bad} has a negative count)")
        if values.shape[0] != locations.shape[0]:
            raise ValueError(f"values ({values.shape[0]}) and locations ({locations.shape[0]}) differ in length")
        if offsets[-1] != values.shape[0]:
            raise ValueError(f"tile_offsets[-1] = {offsets[-1]} does not match the {values.shape[0]} stored entries")
        if (counts % C.NNZ_ALIGN).any():
            bad = int(np.flatnonzero(counts % C.NNZ_ALIGN)[0])
            raise ValueError(f"tile {bad} holds {counts[bad]} entries, not padded to a multiple of {C.NNZ_ALIGN}")
        if (counts > C.TILE_ELEMS).any():
            bad = int(np.flatnonzero(counts > C.TILE_ELEMS)[0])
            raise ValueError(f"tile {bad} holds {counts[bad]} entries, more than a tile has ({C.TILE_ELEMS})")
        if locations.size and int(locations.max()) >= C.TILE_ELEMS:
            bad = int(np.flatnonzero(locations >= C.TILE_ELEMS)[0])
            raise ValueError(f"location {locations[bad]} at entry {bad} is outside the "
                             f"{C.TILE_M}x{C.TILE_K} tile")
        # A repeated location within a tile would make the GPU's scatter keep only one of the values.
        tile_of = np.repeat(np.arange(t, dtype=np.int64), counts)
        key = tile_of * C.TILE_ELEMS + locations
        seen = np.zeros(t * C.TILE_ELEMS, np.bool_)
        seen[key] = True
        if np.count_nonzero(seen) != key.size:
            order = np.sort(key)
            dup = int(order[np.flatnonzero(np.diff(order) == 0)[0]])
            raise ValueError(f"location {dup % C.TILE_ELEMS} is repeated within tile {dup // C.TILE_ELEMS}")
        return self

    # --- persistence --------------------------------------------------------------------------------
    def to_tensors(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Flat {name: numpy array} view, for safetensors/npz files holding one or many matrices.
        Values are stored as their uint16 bits; a small int64 header carries version, shape and dtype."""
        header = np.array([self.version, *self.shape, _DTYPE_CODES[self.dtype.name]], np.int64)
        return {
            f"{prefix}header": header,
            f"{prefix}values": np.asarray(jax.device_get(self.values)).view(np.uint16),
            f"{prefix}locations": np.asarray(jax.device_get(self.locations)),
            f"{prefix}tile_offsets": np.asarray(jax.device_get(self.tile_offsets)),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, Any], prefix: str = "") -> "SparseMatrix":
        """Inverse of `to_tensors`; validates the result."""
        names = [f"{prefix}{n}" for n in ("header", "values", "locations", "tile_offsets")]
        missing = [n for n in names if n not in tensors]
        if missing:
            raise ValueError(f"not a SparseMatrix: missing tensors {missing}")
        header, values, locations, offsets = (np.asarray(tensors[n]) for n in names)
        if header.shape != (4,) or header.dtype != np.int64:
            raise ValueError(f"{names[0]}: malformed header {header!r}")
        version, m, k, code = (int(v) for v in header)
        if version != C.FORMAT_VERSION:
            raise ValueError(f"{names[0]}: format version {version}, this build reads {C.FORMAT_VERSION}")
        dtype_name = {v: n for n, v in _DTYPE_CODES.items()}.get(code)
        if dtype_name is None:
            raise ValueError(f"{names[0]}: unknown dtype code {code}")
        if values.dtype != np.uint16:
            raise ValueError(f"{names[1]}: expected uint16 bits, got {values.dtype}")
        return cls(values.view(_STORAGE_DTYPES[dtype_name]), locations, offsets, (m, k), version=version)

    def save(self, path: str | os.PathLike) -> None:
        """Write to `path`: safetensors unless the name ends in .npz."""
        path = os.fspath(path)
        tensors = self.to_tensors()
        if path.endswith(".npz"):
            np.savez(path, **tensors)
        else:
            from safetensors.numpy import save_file

            save_file(tensors, path, metadata={"format": "jax_flashllm.tiled_csl",
                                               "version": str(self.version)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SparseMatrix":
        """Read a file written by `save`; a missing, truncated or corrupt file raises ValueError."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such SparseMatrix file: {path}")
        try:
            if path.endswith(".npz"):
                with np.load(path, allow_pickle=False) as f:
                    tensors = {n: f[n] for n in f.files}
            else:
                from safetensors.numpy import load_file

                tensors = load_file(path)
        except Exception as e:  # zipfile/safetensors raise many types for damaged files
            raise ValueError(f"cannot read SparseMatrix file {path}: corrupt or truncated ({e})") from e
        try:
            return cls.from_tensors(tensors)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from e
