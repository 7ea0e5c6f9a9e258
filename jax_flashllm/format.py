"""SparseMatrix: a pruned (M, K) weight in one of the storage formats the kernels read.

Every format cuts W (M, K) = (out_features, in_features) into TILE_M x TILE_K tiles in row-major tile
order and stores three arrays: the values (16-bit), a format-specific index, and int32 tile offsets
(tile t's values are values[tile_offsets[t]:tile_offsets[t+1]], each count a multiple of NNZ_ALIGN).
  tiled_csl (1): index = a uint16 swizzled location per value; 4 bytes per nonzero.
  bitmap    (2): index = a 64-bit bitmap per 8 x 8 block + a small per-tile header; 0.125 + 2 per nonzero.
  dense     (3): every element in the bitmap format's order, empty index; 2 bytes per weight.
The layouts live in jax_flashllm/formats/ (one module each) and cuda/include/flashllm/format.h.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jax_flashllm import _constants as C
from jax_flashllm import formats as F

__all__ = ["SparseMatrix"]

_STORAGE_DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
_DTYPE_CODES = {"float16": 1, "bfloat16": 2}
_INPUT_DTYPES = ("float16", "bfloat16", "float32", "float64")
# Kernels index rows, columns and values with int32 (cuda/ffi/spmm_checks.h keeps a tile of headroom).
_MAX_DIM = 2**31 - 1 - C.TILE_M


def _storage_dtype(dtype) -> np.dtype:
    name = np.dtype(dtype).name
    if name not in _STORAGE_DTYPES:
        raise TypeError(f"SparseMatrix values must be float16 or bfloat16, got {name}")
    return _STORAGE_DTYPES[name]


def _host(a) -> np.ndarray:
    return np.asarray(jax.device_get(a))


def _check_overflow(w: np.ndarray, stored: np.ndarray, dtype: np.dtype) -> None:
    """ValueError when finite values of w became +-inf in `dtype` (float16 tops out at 65504)."""
    overflow = np.isfinite(w) & ~np.isfinite(stored)
    count = int(np.count_nonzero(overflow))
    if count:
        largest = float(np.max(np.abs(w[overflow])))
        raise ValueError(f"from_dense: {count} value(s) overflow {dtype.name} (largest magnitude {largest:.6g}, "
                         f"{dtype.name} holds at most {float(ml_dtypes.finfo(dtype).max):.6g}); store them in "
                         "bfloat16 (dtype=jnp.bfloat16), rescale the weight, or pass allow_overflow=True to "
                         "keep them as +-inf")


@jax.tree_util.register_pytree_node_class
class SparseMatrix:
    """A (M, K) weight in one storage format: only the nonzeros (and a few padding zeros per tile), or
    for the dense format every element, plus the index that places them.

    Leaves (pytree children, so jit / device_put / sharding see them as arrays):
      values:       (P,) float16 | bfloat16, tile by tile in the format's order.
      index:        tiled_csl (P,) uint16 locations | bitmap (T * 260,) uint32 | dense (0,) uint32.
      tile_offsets: (T + 1,) int32 — tile t's values are [tile_offsets[t], tile_offsets[t+1]).
    Static: shape (M, K), dtype, format ("tiled_csl" | "bitmap" | "dense").

    Building from raw arrays validates them; use `SparseMatrix.from_dense` to encode a dense matrix.
    """

    __slots__ = ("values", "index", "tile_offsets", "shape", "dtype", "format")

    def __init__(self, values, index, tile_offsets, shape, *, format: str | int = "tiled_csl"):
        # Lists and other array-likes become numpy arrays (jax arrays stay on their devices), so the
        # pytree always has exactly three array leaves.
        values, index, tile_offsets = (a if isinstance(a, jax.Array) else np.asarray(a)
                                       for a in (values, index, tile_offsets))
        self._set(values, index, tile_offsets, shape, np.dtype(values.dtype), format)
        self.validate()

    def _set(self, values, index, tile_offsets, shape, dtype, format):
        self.values = values
        self.index = index
        self.tile_offsets = tile_offsets
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.format = F.get(format).NAME

    @classmethod
    def _unchecked(cls, values, index, tile_offsets, shape, dtype, format="tiled_csl"):
        obj = object.__new__(cls)
        obj._set(values, index, tile_offsets, shape, dtype, format)
        return obj

    # --- pytree -------------------------------------------------------------------------------------
    def tree_flatten(self):
        return (self.values, self.index, self.tile_offsets), (self.shape, self.dtype.name, self.format)

    @classmethod
    def tree_unflatten(cls, aux, children):
        shape, dtype, format = aux
        return cls._unchecked(*children, shape, dtype, format)

    def replace_values(self, values) -> "SparseMatrix":
        """Same sparsity pattern, new values (e.g. fine-tuned, or a traced array to differentiate).
        values: (P,) float16 | bfloat16 (cast first, or use `astype`); the matrix dtype becomes values'
        dtype. Not validated: the pattern is unchanged (bitmap padding values must stay 0 for
        `validate`; the kernels ignore them either way)."""
        if tuple(values.shape) != tuple(self.values.shape):
            raise ValueError(f"values must have shape {self.values.shape}, got {values.shape}")
        return SparseMatrix._unchecked(values, self.index, self.tile_offsets, self.shape,
                                       _storage_dtype(values.dtype), self.format)

    def astype(self, dtype) -> "SparseMatrix":
        """The same matrix with values stored as `dtype` (float16 or bfloat16)."""
        dtype = _storage_dtype(dtype)
        return self.replace_values(self.values.astype(dtype))

    # --- properties ---------------------------------------------------------------------------------
    @property
    def format_id(self) -> int:
        """The format's id (format.h): 1 tiled_csl, 2 bitmap, 3 dense; saved with the matrix and passed
        to the kernels as the `format` attribute."""
        return F.get(self.format).ID

    @property
    def locations(self):
        """Tiled-CSL's index: (P,) uint16 swizzled in-tile locations (the same array as `index`)."""
        if self.format != "tiled_csl":
            raise AttributeError(f"a {self.format}-format SparseMatrix has no locations; its index is "
                                 "SparseMatrix.index")
        return self.index

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
        """Number of real nonzeros (padding and explicit zeros excluded; NaN counts)."""
        return int(np.count_nonzero(_host(self.values).view(np.uint16) & 0x7FFF))

    @property
    def sparsity(self) -> float:
        """Fraction of the logical M x K elements that are zero."""
        return 1.0 - self.nnz / (self.shape[0] * self.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of the three encoded arrays."""
        return int(sum(a.size * np.dtype(a.dtype).itemsize for a in (self.values, self.index, self.tile_offsets)))

    def __repr__(self) -> str:
        return (f"SparseMatrix(shape={self.shape}, dtype={self.dtype.name}, format={self.format!r}, "
                f"values={self.values.shape[0]}, tiles={self.tiles})")

    # --- encode / decode ----------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, w, dtype=None, *, format: str = "auto", allow_overflow: bool = False) -> "SparseMatrix":
        """Encode a dense (M, K) matrix whose zeros are the pruned positions.

        w: (M, K) float16 | bfloat16 | float32 | float64 (numpy or jax), any M, K >= 1.
        dtype: storage dtype, float16 or bfloat16; default w's dtype if 16-bit, else bfloat16.
        format: "tiled_csl" | "bitmap" | "dense" | "auto" (the fewest bytes for this matrix, among the
          formats this build's kernels multiply; bitmap from ~6 % zeros up to ~94 %, then tiled_csl).
        allow_overflow: keep finite values too large for `dtype` as +-inf instead of raising ValueError.
        Values that round to zero in `dtype` count as pruned; -0.0 is a zero. NaN and Inf are kept.
        """
        w = _host(w)
        if w.ndim != 2:
            raise ValueError(f"from_dense expects a 2-D (M, K) matrix, got shape {w.shape}")
        if w.dtype.name not in _INPUT_DTYPES:
            raise TypeError(f"from_dense expects a float16/bfloat16/float32/float64 matrix, got {w.dtype}")
        m, k = w.shape
        if m < 1 or k < 1:
            raise ValueError(f"from_dense needs M, K >= 1, got shape {w.shape}")
        if format != F.AUTO:
            F.get(format)
        if dtype is None:
            dtype = w.dtype if w.dtype.name in _STORAGE_DTYPES else _STORAGE_DTYPES["bfloat16"]
        dtype = _storage_dtype(dtype)
        with np.errstate(over="ignore"):  # overflow is reported below, with counts
            stored = w.astype(dtype, copy=False)
        if not allow_overflow and stored is not w:
            _check_overflow(w, stored, dtype)
        bits = stored.view(np.uint16)
        if format == F.AUTO:
            format = F.choose(cls._tile_counts(bits), F.kernel_formats())
        fmt = F.get(format)
        values, index, offsets = fmt.encode(bits)
        return cls._unchecked(values.view(dtype), index, offsets, (m, k), dtype, fmt.NAME)

    @staticmethod
    def _tile_counts(bits: np.ndarray) -> np.ndarray:
        """(T,) nonzeros of each tile of an (M, K) uint16 bit matrix, row-major tile order."""
        m, k = bits.shape
        mt, kt = C.tile_grid(m, k)
        nonzero = np.zeros((mt * C.TILE_M, kt * C.TILE_K), np.bool_)
        nonzero[:m, :k] = (bits & 0x7FFF) != 0
        return nonzero.reshape(mt, C.TILE_M, kt, C.TILE_K).sum(axis=(1, 3), dtype=np.int64).reshape(-1)

    def entry_coords(self):
        """(rows, cols, valid): global (row, col) of every stored value in the padded matrix, (P,) int32,
        and (P,) bool, False for bitmap padding values, which stand for no position (their rows/cols
        are meaningless). Works on concrete and traced arrays (to_dense and the autodiff rules use it)."""
        _, kt = self.tiles
        p = self.values.shape[0]
        tile, r, c, valid = F.get(self.format).entry_coords(self.index, self.tile_offsets, p, self.num_tiles)
        valid = jnp.ones((p,), jnp.bool_) if valid is None else valid
        return (tile // kt) * C.TILE_M + r, (tile % kt) * C.TILE_K + c, valid

    def to_dense(self) -> jax.Array:
        """The dense (M, K) matrix in the storage dtype (a jax array; works under jit)."""
        mt, kt = self.tiles
        tiles = jnp.asarray(F.get(self.format).dense_tiles(self.values, self.index, self.tile_offsets, mt * kt))
        dense = tiles.reshape(mt, kt, C.TILE_M, C.TILE_K).transpose(0, 2, 1, 3).reshape(mt * C.TILE_M, -1)
        return dense[: self.shape[0], : self.shape[1]]

    # --- validation ---------------------------------------------------------------------------------
    def validate(self) -> "SparseMatrix":
        """Check every invariant of the format; raise ValueError naming the first violated one.
        Returns self. Needs concrete arrays (not inside jit). Memory O(P + T): no M x K scratch."""
        if any(isinstance(a, jax.core.Tracer) for a in (self.values, self.index, self.tile_offsets)):
            raise ValueError("validate() needs concrete arrays; call it outside jit")
        m, k = self.shape
        if not (1 <= m <= _MAX_DIM and 1 <= k <= _MAX_DIM):
            raise ValueError(f"shape must have 1 <= M, K <= {_MAX_DIM}, got {self.shape}")
        fmt = F.get(self.format)
        values, index, offsets = (_host(a) for a in (self.values, self.index, self.tile_offsets))
        if values.dtype.name not in _STORAGE_DTYPES:
            raise ValueError(f"values must be float16 or bfloat16, got {values.dtype}")
        if values.dtype != self.dtype:
            raise ValueError(f"values dtype {values.dtype} does not match the matrix dtype {self.dtype}")
        if index.dtype != fmt.INDEX_DTYPE:
            raise ValueError(f"the {fmt.NAME} index must be {fmt.INDEX_DTYPE}, got {index.dtype}")
        if offsets.dtype != np.int32:
            raise ValueError(f"tile_offsets must be int32, got {offsets.dtype}")
        for name, a in (("values", values), ("index", index), ("tile_offsets", offsets)):
            if a.ndim != 1:
                raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
        # Offsets first: their length is checked against the claimed shape before anything is sized by it.
        counts = F._base.check_offsets(offsets, self.num_tiles, values.shape[0])
        fmt.validate(values.view(np.uint16), index, counts, self.shape)
        return self

    # --- persistence --------------------------------------------------------------------------------
    def to_tensors(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Flat {name: numpy array} view, for safetensors/npz files holding one or many matrices.
        Values are stored as their uint16 bits; a small int64 header carries the format id, shape and
        dtype; the index is named "locations" for tiled_csl (the v1 layout) and "index" otherwise."""
        fmt = F.get(self.format)
        header = np.array([fmt.ID, *self.shape, _DTYPE_CODES[self.dtype.name]], np.int64)
        return {
            f"{prefix}header": header,
            f"{prefix}values": _host(self.values).view(np.uint16),
            f"{prefix}{fmt.INDEX_NAME}": _host(self.index),
            f"{prefix}tile_offsets": _host(self.tile_offsets),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, Any], prefix: str = "") -> "SparseMatrix":
        """Inverse of `to_tensors` (also reads format-1 files of earlier releases); validates the result."""
        name = f"{prefix}header"
        if name not in tensors:
            raise ValueError(f"not a SparseMatrix: no {name!r} tensor")
        header = np.asarray(tensors[name])
        if header.shape != (4,) or header.dtype != np.int64:
            raise ValueError(f"{name}: malformed header {header!r}")
        fmt_id, m, k, code = (int(v) for v in header)
        try:
            fmt = F.get(fmt_id)
        except ValueError:
            raise ValueError(f"{name}: format id (version) {fmt_id} is unknown to this build, which reads "
                             f"{sorted(F.get(n).ID for n in F.NAMES)}; upgrade jax_flashllm") from None
        dtype_name = {v: n for n, v in _DTYPE_CODES.items()}.get(code)
        if dtype_name is None:
            raise ValueError(f"{name}: unknown dtype code {code}")
        names = [f"{prefix}{n}" for n in ("values", fmt.INDEX_NAME, "tile_offsets")]
        missing = [n for n in names if n not in tensors]
        if missing:
            raise ValueError(f"not a {fmt.NAME} SparseMatrix: missing tensors {missing}")
        values, index, offsets = (np.asarray(tensors[n]) for n in names)
        if values.dtype != np.uint16:
            raise ValueError(f"{names[0]}: expected uint16 bits, got {values.dtype}")
        return cls(values.view(_STORAGE_DTYPES[dtype_name]), index, offsets, (m, k), format=fmt.NAME)

    def save(self, path: str | os.PathLike) -> None:
        """Write to `path`: safetensors unless the name ends in .npz. The format is recorded."""
        path = os.fspath(path)
        tensors = self.to_tensors()
        if path.endswith(".npz"):
            np.savez(path, **tensors)
        else:
            from safetensors.numpy import save_file

            save_file(tensors, path, metadata={"format": f"jax_flashllm.{self.format}",
                                               "version": str(self.format_id)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SparseMatrix":
        """Read one .safetensors or .npz file written by `save` (any format, including format-1 files
        of earlier releases), validated.

        Raises FileNotFoundError when `path` does not exist, and ValueError naming the file for a
        directory, a truncated or corrupt file, sizes in the file that disagree with its length, or
        contents that are not a valid SparseMatrix."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such SparseMatrix file: {path}")
        if os.path.isdir(path):
            raise ValueError(f"{path} is a directory: SparseMatrix.load reads one .safetensors or .npz file "
                             "written by SparseMatrix.save (a saved model directory is read by "
                             "jax_flashllm.models.load_model)")
        try:
            if path.endswith(".npz"):
                tensors = _read_npz(path)
            else:
                from safetensors.numpy import load_file

                tensors = load_file(path)
        except Exception as e:  # zipfile/safetensors raise many types for damaged files
            raise ValueError(f"cannot read SparseMatrix file {path}: corrupt or truncated ({e}); "
                             "re-save it with SparseMatrix.save") from e
        try:
            return cls.from_tensors(tensors)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from e


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """np.load of an .npz, but each member's claimed shape is checked against the bytes the archive
    says it holds before anything is allocated (np.load would allocate first)."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as f:
                major, _ = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if major == 1
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(f)
                if dtype.hasobject:
                    raise ValueError(f"member {info.filename} holds Python objects")
                need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                if need > info.file_size:
                    raise ValueError(f"member {info.filename} claims shape {shape} ({need} bytes) but holds "
                                     f"{info.file_size} bytes")
    with np.load(path, allow_pickle=False) as f:
        return {name: f[name] for name in f.files}
