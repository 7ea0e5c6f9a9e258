"""save_model is atomic (a failure midway leaves the old checkpoint whole), writes 0644 files and keeps the
directory's other files; paths that are not checkpoint directories get errors naming the fix."""

import json
import os
import stat

import numpy as np
import pytest
from flax import nnx

from jax_flashllm.models import checkpoint
from jax_flashllm.models.checkpoint import CheckpointError, load_model, load_pretrained, save_model
from jax_flashllm.models.opt import OPTConfig, OPTForCausalLM
from jax_flashllm.nn import sparsify


def _model(seed, **cfg):
    model = OPTForCausalLM(OPTConfig.tiny(**cfg), rngs=nnx.Rngs(seed))
    sparsify(model, 0.5)
    return model


def _weights(model):
    return [np.asarray(v.get_value()) for _, v in nnx.to_flat_state(nnx.state(model))]


def test_failure_midway_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    old = _model(0)
    save_model(old, path)
    (path / "tokenizer.json").write_text("{}")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    # A new model of another size fails while its weights are written, after its config.json was.
    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(_model(1, ffn_dim=48), path)
    monkeypatch.undo()
    assert json.loads((path / "config.json").read_text())["ffn_dim"] == 64  # the old config, not the new one
    for a, b in zip(_weights(old), _weights(load_model(path))):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary directory left behind


def test_overwrite_swaps_in_the_new_checkpoint_and_keeps_other_files(tmp_path):
    path = tmp_path / "ckpt"
    save_model(_model(0), path)
    (path / "tokenizer.json").write_text('{"kept": true}')
    new = _model(1, ffn_dim=48)
    save_model(new, path)
    for a, b in zip(_weights(new), _weights(load_model(path))):
        np.testing.assert_array_equal(a, b)
    assert json.loads((path / "tokenizer.json").read_text()) == {"kept": True}
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    for name in ("config.json", "model.safetensors"):
        assert stat.S_IMODE(os.stat(path / name).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755


def test_paths_that_are_not_checkpoint_directories(tmp_path):
    path = tmp_path / "ckpt"
    save_model(_model(0), path)
    for load in (load_model, load_pretrained):
        with pytest.raises(CheckpointError, match=r"is a file; .*takes the checkpoint directory.*\('.*ckpt'\)"):
            load(path / "model.safetensors")
        with pytest.raises(FileNotFoundError, match="not found"):
            load(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="not a directory"):
        save_model(_model(0), path / "config.json")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_bytes(b"\x80\x81 not json")
    with pytest.raises(ValueError, match="not a JSON config file"):
        load_model(tmp_path / "bad")


def test_progress_bars_follow_the_terminal(monkeypatch, capsys):
    from jax_flashllm._log import progress_enabled

    monkeypatch.delenv("JAX_FLASHLLM_PROGRESS", raising=False)
    assert progress_enabled() is False  # pytest's stderr is not a terminal
    assert progress_enabled(True) is True
    monkeypatch.setenv("JAX_FLASHLLM_PROGRESS", "1")
    assert progress_enabled() is True and progress_enabled(False) is False
    monkeypatch.setenv("JAX_FLASHLLM_PROGRESS", "0")
    assert progress_enabled() is False
    model = OPTForCausalLM(OPTConfig.tiny(), rngs=nnx.Rngs(0))
    sparsify(model, 0.5, progress=True)
    assert "sparsify" in capsys.readouterr().err
