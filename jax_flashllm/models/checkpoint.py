"""OPT checkpoints: HuggingFace directories in, jax_flashllm (possibly sparsified) models in and out.

- ``load_pretrained(path)`` reads a local HF checkpoint (config.json + model.safetensors, or a sharded
  model.safetensors.index.json) with safetensors' numpy backend: no torch, tensor by tensor, so the host never
  holds a second full copy of the weights.
- ``save_model(model, path)`` / ``load_model(path)`` store an OPTForCausalLM whose Linear layers may have
  been replaced by SparseLinear, so pruning and encoding happen once.

The model is first built abstractly (``nnx.eval_shape``: no random init of billions of weights), then every
parameter is filled from the files with its shape asserted; missing or surplus tensors are errors.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from jax_flashllm._log import logger, progress as _bar
from jax_flashllm.format import SparseMatrix
from jax_flashllm.models.opt import OPTConfig, OPTForCausalLM
from jax_flashllm.nn import SparseLinear, set_submodule

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SAVED_FORMAT = "jax_flashllm.opt/2"
# Version 1 files hold Tiled-CSL layers only, their index under the name "locations".
_READABLE_FORMATS = ("jax_flashllm.opt/1", SAVED_FORMAT)
# Show a progress bar by default only when reading takes long enough to be worth watching.
_PROGRESS_BYTES = 256 << 20


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, or does not match the model's config."""


def _shard_files(directory: str) -> list[str]:
    """The safetensors files of a HF checkpoint directory, single-file or sharded."""
    single, index = os.path.join(directory, SINGLE_FILE), os.path.join(directory, INDEX_FILE)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from e
        files = [os.path.join(directory, name) for name in sorted(set(weight_map.values()))]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise CheckpointError(f"{index} names shard(s) that do not exist: {', '.join(missing)}")
        return files
    if os.path.isfile(single):
        return [single]
    raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory} "
                            "(only safetensors checkpoints are supported; convert .bin files first, e.g. by "
                            "loading and saving with transformers' save_pretrained(safe_serialization=True))")


def _open(file: str):
    try:
        return safe_open(file, framework="numpy")
    except Exception as e:  # safetensors raises its own error type for truncated or corrupt headers
        raise CheckpointError(f"{file}: cannot read safetensors file (truncated or corrupt?): {e}; "
                              "download or save it again") from e


def _read(handle, file: str, key: str) -> np.ndarray:
    try:
        return handle.get_tensor(key)
    except Exception as e:
        raise CheckpointError(f"{file}: cannot read tensor {key!r} (truncated file?): {e}; "
                              "download or save it again") from e


def _progress(total: int, nbytes: int, progress: bool | None, desc: str, iterable=None):
    """A bar for reading or writing many tensors: by default only for checkpoints big enough to wait for
    (and, through _log, only on a terminal)."""
    show = progress if progress is not None else (False if nbytes < _PROGRESS_BYTES else None)
    return _bar(iterable, total=total, desc=desc, unit="tensor", show=show)


def _directory(path, what: str) -> str:
    """The checkpoint directory named by ``path``; a clear error for a file inside it or a missing one."""
    directory = os.fspath(path)
    if os.path.isfile(directory):
        parent = os.path.dirname(os.path.abspath(directory))
        raise CheckpointError(f"{directory} is a file; {what} takes the checkpoint directory that holds "
                              f"config.json and {SINGLE_FILE}: {what}({parent!r})")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    return directory


def _canonical(graphdef: nnx.GraphDef, state: nnx.State) -> nnx.Module:
    """Merge a model filled through ``OPTForCausalLM.abstract``, with every variable rebuilt as eager
    construction builds it. Variables traced by eval_shape keep their metadata in another order, which makes
    the graphdef unequal to the original model's, and jit would compile everything once more for it."""
    flat = [(p, type(v)(v.get_value(), **v.get_metadata())) for p, v in nnx.to_flat_state(state)]
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _abstract_model(config: OPTConfig, dtype) -> tuple[nnx.GraphDef, nnx.State]:
    return nnx.split(OPTForCausalLM.abstract(config, dtype))


def _hf_target(key: str, flat: dict) -> tuple[tuple, bool] | None:
    """Map a HF tensor name to (nnx state path, transpose?); None for tensors that are tied or unused."""
    parts = key.split(".")
    if parts[0] == "model":
        parts = parts[1:]
    if parts[0] == "lm_head":
        return None  # tied to embed_tokens
    if parts[0] != "decoder":
        raise CheckpointError(f"unexpected tensor {key!r} in an OPT checkpoint")
    module = tuple(int(p) if p.isdigit() else p for p in parts[1:-1])
    if parts[-1] == "bias" and module + ("bias",) in flat:
        return module + ("bias",), False
    if parts[-1] == "weight":
        # The same HF name "weight" is a Linear kernel (stored transposed), an embedding or a LayerNorm scale.
        for leaf, transpose in (("kernel", True), ("embedding", False), ("scale", False)):
            if module + (leaf,) in flat:
                return module + (leaf,), transpose
    raise CheckpointError(f"tensor {key!r} has no counterpart in the model (wrong config.json?)")


def load_pretrained(path: str | os.PathLike, dtype=jnp.float16, *, progress: bool | None = None
                    ) -> OPTForCausalLM:
    """Load a local HuggingFace OPT checkpoint directory as an OPTForCausalLM with parameters in ``dtype``.

    Keys with or without the "model." prefix are accepted; ``lm_head.weight`` is ignored (tied). Raises
    FileNotFoundError for a missing config/weights file and CheckpointError for a truncated file, a shape
    that disagrees with config.json, or a missing/unexpected tensor. ``progress``: tqdm bar (default: only
    for checkpoints over 256 MiB).
    """
    directory = _directory(path, "load_pretrained")
    config = OPTConfig.from_json(directory)
    files = _shard_files(directory)
    started = time.perf_counter()
    graphdef, state = _abstract_model(config, dtype)
    flat = dict(nnx.to_flat_state(state))
    filled: dict[tuple, str] = {}
    handles = [(file, _open(file)) for file in files]
    total = sum(len(h.keys()) for _, h in handles)
    nbytes = sum(os.path.getsize(file) for file in files)
    with _progress(total, nbytes, progress, f"loading {os.path.basename(directory.rstrip('/'))}") as bar:
        for file, handle in handles:
            for key in handle.keys():
                bar.update(1)
                target = _hf_target(key, flat)
                if target is None:
                    continue
                leaf, transpose = target
                if leaf in filled:
                    raise CheckpointError(f"{key!r} in {file} duplicates {filled[leaf]!r}")
                array = _read(handle, file, key)
                expected = flat[leaf].shape[::-1] if transpose else flat[leaf].shape  # in HF orientation
                if array.shape != expected:
                    raise CheckpointError(f"{file}: {key} has shape {list(array.shape)}, "
                                          f"config.json implies {list(expected)}; the config.json beside "
                                          "it belongs to another model size")
                array = array.T if transpose else array
                flat[leaf].set_value(jnp.asarray(array, dtype=flat[leaf].dtype))
                filled[leaf] = key
    missing = [".".join(map(str, p)) for p in flat if p not in filled]
    if missing:
        raise CheckpointError(f"checkpoint {directory} lacks {len(missing)} tensor(s): {', '.join(missing[:8])}"
                              "; the download is incomplete or config.json names a bigger model")
    logger.info("loaded %s (%d tensors, %.1f MB) in %.1f s", directory, len(filled), nbytes / 1e6,
                time.perf_counter() - started)
    return _canonical(graphdef, state)


def _key(path: tuple) -> str:
    return ".".join(map(str, path))


def _write(model: OPTForCausalLM, directory: str, progress: bool | None) -> None:
    """config.json + model.safetensors of ``model`` into the existing, empty ``directory``, files 0644."""
    sparse = {_key(p): {**m.spec(), "path": list(p)} for p, m in nnx.iter_graph(model)
              if isinstance(m, SparseLinear)}
    flat = list(nnx.to_flat_state(nnx.state(model)))
    nbytes = sum(int(np.prod(v.shape)) * jnp.dtype(v.dtype).itemsize for _, v in flat)
    tensors = {}
    with _progress(len(flat), nbytes, progress, f"saving {os.path.basename(directory)}") as bar:
        for p, v in flat:
            tensors[_key(p)] = np.asarray(v.get_value())
            bar.update(1)
    meta = {"format": SAVED_FORMAT, "dtype": jnp.dtype(model.dtype).name,
            "embedding_dtype": jnp.dtype(model.embed_tokens.embedding.dtype).name,
            "sparse_layers": json.dumps(sparse)}
    config = os.path.join(directory, "config.json")
    with open(config, "w") as f:
        json.dump(model.config.to_dict(), f, indent=2)
    weights = os.path.join(directory, SINGLE_FILE)
    save_file(tensors, weights, metadata=meta)
    for file in (config, weights):
        os.chmod(file, 0o644)
        with open(file, "rb") as f:  # on disk before the swap makes it the checkpoint
            os.fsync(f.fileno())


def _carry_over(old: str, new: str) -> None:
    """Keep files of an existing checkpoint directory that save_model does not write (a tokenizer.json, a
    README): hard links where possible, so nothing large is copied."""
    for name in os.listdir(old):
        source, target = os.path.join(old, name), os.path.join(new, name)
        if os.path.exists(target) or not os.path.isfile(source):
            continue
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)


def save_model(model: OPTForCausalLM, path: str | os.PathLike, *, progress: bool | None = None) -> None:
    """Save a (possibly sparsified) OPTForCausalLM to directory ``path``: config.json + model.safetensors.

    Sparse layers are stored in their encoded form (values, index, tile_offsets) with their format, so
    loading skips the pruning and the encoding. Atomic: the checkpoint is written into a sibling temporary directory, then
    swapped in (the old directory renamed aside, the new one renamed into place, the old one deleted; other
    files of the old directory, such as a tokenizer, are kept). A crash leaves one complete checkpoint, old
    or new, plus at most a stray ``.<name>.tmp-*`` / ``.<name>.old-*`` directory beside it. Files are 0644.
    ``progress``: a bar over the tensors (default: for models over 256 MiB, on a terminal).
    """
    directory = os.path.abspath(os.fspath(path))
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CheckpointError(f"{directory} exists and is not a directory; save_model writes a directory "
                              "(config.json + model.safetensors): pass another path")
    parent, name = os.path.split(directory)
    os.makedirs(parent, exist_ok=True)
    started = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        os.chmod(tmp, 0o755)
        _write(model, tmp, progress)
        if os.path.isdir(directory):
            _carry_over(directory, tmp)
            old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(directory, old)
            try:
                os.rename(tmp, directory)
            except BaseException:
                os.rename(old, directory)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved %s in %.1f s", directory, time.perf_counter() - started)


_ENCODING = ("values", "index", "tile_offsets")


def _check_encoding(file: str, name: str, spec: dict, arrays: dict[str, np.ndarray]) -> None:
    """Validate one saved sparse layer's arrays on the host: the kernels trust them (the CUDA handler
    cannot inspect device data), so a corrupt file must stop here, not read out of bounds."""
    fmt = spec.get("format", spec.get("version"))
    try:
        SparseMatrix(*(arrays[n] for n in _ENCODING), tuple(spec["shape"]), format=fmt)
    except ValueError as e:
        raise CheckpointError(f"{file}: sparse layer {name} is not a valid {fmt} matrix: {e}; the file is "
                              "damaged: save the model again") from e


def _saved_key(leaf: tuple, keys: set[str]) -> str:
    """The file's name for a state leaf; a sparse index saved by version 1 is called "locations"."""
    key = _key(leaf)
    if key not in keys and leaf[-1] == "index" and _key(leaf[:-1] + ("locations",)) in keys:
        return _key(leaf[:-1] + ("locations",))
    return key


def load_model(path: str | os.PathLike, *, progress: bool | None = None) -> OPTForCausalLM:
    """Load a model written by ``save_model`` (dense or sparsified) from its directory, every shape checked
    and every sparse layer validated (CheckpointError naming the file, the layer and the fix). The loaded
    model's graph equals the saved one's, so jitted functions compiled for it are reused.
    ``progress``: a bar over the tensors (default: for files over 256 MiB, on a terminal)."""
    directory = _directory(path, "load_model")
    config = OPTConfig.from_json(directory)
    file = os.path.join(directory, SINGLE_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no {SINGLE_FILE} in {directory} (save_model writes config.json and "
                                f"{SINGLE_FILE}; a sharded HuggingFace checkpoint goes to load_pretrained)")
    started = time.perf_counter()
    handle = _open(file)
    meta = handle.metadata() or {}
    if meta.get("format") not in _READABLE_FORMATS:
        raise CheckpointError(f"{file} was not written by jax_flashllm's save_model "
                              f"(format {meta.get('format')!r}); use load_pretrained for HF checkpoints")
    lacking = [k for k in ("dtype", "sparse_layers") if k not in meta]
    if lacking:
        raise CheckpointError(f"{file}: metadata lacks {', '.join(lacking)}; the file was altered after "
                              "save_model wrote it: save the model again")
    model = OPTForCausalLM.abstract(config, meta["dtype"])
    # A model saved after cast_embeddings keeps its embeddings (and tied head) in their own dtype; files
    # written before this key existed have them in the model dtype.
    embedding_dtype = meta.get("embedding_dtype", meta["dtype"])
    if jnp.dtype(embedding_dtype) != jnp.dtype(meta["dtype"]):
        model.cast_embeddings(embedding_dtype)
    specs = {tuple(spec["path"]): spec for spec in json.loads(meta["sparse_layers"]).values()}
    modules = dict(nnx.iter_graph(model))
    for path, spec in specs.items():
        if path[:-1] not in modules:
            raise CheckpointError(f"{file}: sparse layer {_key(path)} has no place in the model")
        set_submodule(model, path, SparseLinear.abstract(spec), modules)
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    keys = set(handle.keys())
    pending: dict[tuple, dict[str, tuple]] = {}  # a sparse layer's arrays until all three are read
    nbytes = os.path.getsize(file)
    for leaf, var in _progress(len(flat), nbytes, progress, f"loading {os.path.basename(directory.rstrip('/'))}",
                               list(flat.items())):
        key = _saved_key(leaf, keys)
        if key not in keys:
            raise CheckpointError(f"{file} lacks tensor {key!r}; config.json and the file disagree: save the "
                                  "model again")
        array = _read(handle, file, key)
        if array.shape != var.shape or array.dtype != var.dtype:
            raise CheckpointError(f"{file}: {key} is {array.dtype}{list(array.shape)}, expected "
                                  f"{var.dtype}{list(var.shape)} from config.json and the metadata; save the "
                                  "model again")
        keys.discard(key)
        layer, name = leaf[:-1], leaf[-1]
        if layer in specs and name in _ENCODING:
            group = pending.setdefault(layer, {})
            group[name] = (var, array)
            if len(group) == len(_ENCODING):
                _check_encoding(file, _key(layer), specs[layer], {n: a for n, (_, a) in group.items()})
                for var, array in pending.pop(layer).values():
                    var.set_value(jnp.asarray(array))
            continue
        var.set_value(jnp.asarray(array))
    if keys:
        raise CheckpointError(f"{file} has unexpected tensor(s): {', '.join(sorted(keys)[:8])}; config.json "
                              "names a smaller model than the weights: save the model again")
    logger.info("loaded %s (%.1f MB) in %.1f s", directory, nbytes / 1e6, time.perf_counter() - started)
    return _canonical(graphdef, state)
