"""Checkpoint files: HF layouts (prefix or not, single or sharded), clear errors for broken files, and
save/load of sparsified models."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from jax_flashllm.models.checkpoint import CheckpointError, load_model, load_pretrained, save_model
from jax_flashllm.models.opt import OPTConfig, OPTForCausalLM
from jax_flashllm.nn import SparseLinear, sparsify

DATA = os.path.join(os.path.dirname(__file__), "data")
IDS = jnp.array([[2, 17, 40, 5, 63]])


@pytest.fixture(scope="module")
def reference():
    model = load_pretrained(os.path.join(DATA, "opt_tiny_postln"), dtype=jnp.float32)
    return np.asarray(model(IDS))


def _copy_fixture(tmp_path, name="opt_tiny_postln"):
    directory = tmp_path / "ckpt"
    shutil.copytree(os.path.join(DATA, name), directory)
    return directory


def _rewrite(directory, edit):
    """Apply edit(dict of tensors) -> dict to the directory's model.safetensors."""
    path = directory / "model.safetensors"
    save_file(edit(load_file(path)), path)


def test_keys_without_model_prefix_and_with_lm_head(tmp_path, reference):
    directory = _copy_fixture(tmp_path)

    def edit(tensors):
        out = {k.removeprefix("model."): v for k, v in tensors.items()}
        out["lm_head.weight"] = out["decoder.embed_tokens.weight"]  # tied copy, ignored
        return out

    _rewrite(directory, edit)
    model = load_pretrained(directory, dtype=jnp.float32)
    np.testing.assert_array_equal(np.asarray(model(IDS)), reference)


def test_sharded_index(tmp_path, reference):
    directory = _copy_fixture(tmp_path)
    tensors = load_file(directory / "model.safetensors")
    os.remove(directory / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, directory / file)
        weight_map.update({k: file for k in keys})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model = load_pretrained(directory, dtype=jnp.float32, progress=True)
    np.testing.assert_array_equal(np.asarray(model(IDS)), reference)
    os.remove(directory / "model-00002-of-00002.safetensors")
    with pytest.raises(CheckpointError, match="do not exist"):
        load_pretrained(directory)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config"):
        load_pretrained(tmp_path)
    directory = _copy_fixture(tmp_path)
    os.remove(directory / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pretrained(directory)


@pytest.mark.parametrize("keep", [0.3, 0.999])
def test_truncated_file(tmp_path, keep):
    directory = _copy_fixture(tmp_path)
    path = directory / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated"):
        load_pretrained(directory)


def test_shape_mismatch_names_the_tensor(tmp_path):
    directory = _copy_fixture(tmp_path)
    key = "model.decoder.layers.1.fc1.weight"
    _rewrite(directory, lambda t: {**t, key: np.zeros((64, 31), np.float32)})
    with pytest.raises(CheckpointError, match=r"layers.1.fc1.weight has shape \[64, 31\].*\[64, 32\]"):
        load_pretrained(directory)


def test_missing_and_unexpected_tensors(tmp_path):
    directory = _copy_fixture(tmp_path)
    _rewrite(directory, lambda t: {k: v for k, v in t.items() if "layers.0.fc2.bias" not in k})
    with pytest.raises(CheckpointError, match="lacks 1 tensor.*layers.0.fc2.bias"):
        load_pretrained(directory)
    directory = _copy_fixture(tmp_path / "other")
    _rewrite(directory, lambda t: {**t, "model.decoder.layers.2.fc1.bias": np.zeros(64, np.float32)})
    with pytest.raises(CheckpointError, match="no counterpart"):
        load_pretrained(directory)


def test_config_that_disagrees_with_weights(tmp_path):
    directory = _copy_fixture(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["ffn_dim"] = 48
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json implies"):
        load_pretrained(directory)


@pytest.mark.parametrize("post_ln", [False, True])
def test_save_and_load_sparsified_model(tmp_path, post_ln):
    model = OPTForCausalLM(OPTConfig.tiny(post_ln=post_ln), rngs=nnx.Rngs(0))
    sparsify(model, 0.8, exclude="project_in", dtype=jnp.float16)
    save_model(model, tmp_path / "sparse")
    loaded = load_model(tmp_path / "sparse")
    assert isinstance(loaded.layers[1].self_attn.v_proj, SparseLinear)
    assert loaded.config == model.config
    if post_ln:
        assert isinstance(loaded.project_in, nnx.Linear) and isinstance(loaded.project_out, SparseLinear)
    before, after = nnx.state(model), nnx.state(loaded)
    for (path, a), (path2, b) in zip(nnx.to_flat_state(before), nnx.to_flat_state(after)):
        assert path == path2
        np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()))


def test_load_model_rejects_hf_checkpoints_and_tampering(tmp_path):
    with pytest.raises(CheckpointError, match="load_pretrained"):
        load_model(os.path.join(DATA, "opt_tiny_preln"))
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))
    sparsify(model, 0.5, include="fc1")
    save_model(model, tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    with safe_open(path, "numpy") as f:
        meta = f.metadata()
    tensors = load_file(path)
    tensors["layers.0.fc1.values"] = tensors["layers.0.fc1.values"][:-8]
    save_file(tensors, path, metadata=meta)
    with pytest.raises(CheckpointError, match="layers.0.fc1.values"):
        load_model(tmp_path / "m")


def test_save_and_load_after_cast_embeddings(tmp_path):
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))  # float32
    sparsify(model, 0.5, include="fc1")
    model.cast_embeddings(jnp.bfloat16)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.embed_tokens.embedding[...].dtype == jnp.bfloat16
    assert loaded.embed_positions.embedding[...].dtype == jnp.bfloat16
    assert loaded.layers[0].self_attn.q_proj.kernel[...].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(loaded(IDS)), np.asarray(model(IDS)))


def _tamper(directory, key, edit):
    """Rewrite one tensor of a save_model file in place, keeping its metadata."""
    path = directory / "model.safetensors"
    with safe_open(path, "numpy") as f:
        meta = f.metadata()
    tensors = load_file(path)
    tensors[key] = edit(tensors[key].copy())
    save_file(tensors, path, metadata=meta)


def _duplicate_first_location(locations):
    locations[1] = locations[0]  # two entries of tile 0 at one position
    return locations


def _overlap_tiles(offsets):
    offsets[1] += 8  # tile 0 claims tile 1's first entries, tile 1 loses them
    return offsets


@pytest.mark.parametrize("leaf,edit,message", [
    ("index", _duplicate_first_location, "repeated within tile 0"),
    ("tile_offsets", _overlap_tiles, "tile_offsets"),
])
def test_load_model_validates_sparse_layers(tmp_path, leaf, edit, message):
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))
    sparsify(model, 0.5, include="fc1", format="tiled_csl")
    save_model(model, tmp_path / "m")
    _tamper(tmp_path / "m", f"layers.1.fc1.{leaf}", edit)
    with pytest.raises(CheckpointError, match=f"layers.1.fc1.*{message}"):
        load_model(tmp_path / "m")


def test_load_model_walks_the_graph_once_for_all_sparse_layers(tmp_path, monkeypatch):
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))
    sparsify(model, 0.5)
    save_model(model, tmp_path / "m")
    walks, walk = [], nnx.iter_graph
    monkeypatch.setattr(nnx, "iter_graph", lambda *a, **k: walks.append(1) or walk(*a, **k))
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded.layers[1].fc2, SparseLinear) and len(walks) == 1


@pytest.mark.parametrize("format", ["tiled_csl", "bitmap", "dense", "auto"])
def test_save_and_load_every_format(tmp_path, format):
    from jax_flashllm import formats

    if format not in formats.kernel_formats() + ("auto",):
        pytest.skip(f"this build's kernels do not multiply the {format} format")
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))
    sparsify(model, 0.6, include="fc", format=format)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    for a, b in ((model.layers[0].fc1, loaded.layers[0].fc1), (model.layers[1].fc2, loaded.layers[1].fc2)):
        assert b.format == a.format and (format == "auto" or b.format == format)
        np.testing.assert_array_equal(np.asarray(b.index[...]), np.asarray(a.index[...]))
    np.testing.assert_array_equal(np.asarray(loaded(IDS)), np.asarray(model(IDS)))


def test_checkpoints_of_release_0_1_still_load(tmp_path):
    """Files saved before formats had names: format "jax_flashllm.opt/1", sparse layers' index tensors
    called "locations" and their specs carrying "version": 1 instead of a format name."""
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))
    sparsify(model, 0.7, include="fc1", format="tiled_csl")
    save_model(model, tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    with safe_open(path, "numpy") as f:
        meta = f.metadata()
    tensors = {(k[: -len("index")] + "locations" if k.endswith("fc1.index") else k): v
               for k, v in load_file(path).items()}
    specs = json.loads(meta["sparse_layers"])
    for spec in specs.values():
        spec["version"] = 1
        del spec["format"]
    save_file(tensors, path, metadata={**meta, "format": "jax_flashllm.opt/1", "sparse_layers": json.dumps(specs)})
    loaded = load_model(tmp_path / "m")
    assert loaded.layers[0].fc1.format == "tiled_csl"
    np.testing.assert_array_equal(np.asarray(loaded(IDS)), np.asarray(model(IDS)))


def test_load_model_validates_bitmap_layers(tmp_path):
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))
    sparsify(model, 0.5, include="fc1", format="bitmap")
    save_model(model, tmp_path / "m")

    def set_reserved_word(index):
        index[3] = 7  # tile 0's reserved header word
        return index

    _tamper(tmp_path / "m", "layers.1.fc1.index", set_reserved_word)
    with pytest.raises(CheckpointError, match="layers.1.fc1 is not a valid bitmap matrix.*reserved header"):
        load_model(tmp_path / "m")
