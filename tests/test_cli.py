"""The command line end to end on the tiny real checkpoint (tests/data/opt_stdlib): prune -> a model that
load_model reads, eval of dense and pruned models, generate, and every --help."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from jax_flashllm import SparseLinear
from jax_flashllm.cli import calibration_windows, main
from jax_flashllm.models import load_model
from jax_flashllm.text import generate_text

DATA = os.path.join(os.path.dirname(__file__), "data", "opt_stdlib")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ppl(out: str) -> float:
    return float(re.search(r"perplexity ([0-9.]+)", out).group(1))


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "sgpt24")
    assert main(["prune", "--model", DATA, "--method", "sparsegpt", "--nm", "2:4", "--calib",
                 os.path.join(DATA, "calib.txt"), "--calib-samples", "4", "--out", out]) == 0
    return out


def test_prune_writes_a_model_load_model_reads(pruned, capsys):
    model = load_model(pruned)
    fc1 = model.layers[0].fc1
    assert isinstance(fc1, SparseLinear)
    w = np.asarray(fc1.weight.to_dense(), np.float32)
    assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all()
    assert os.path.isfile(os.path.join(pruned, "tokenizer.json"))


def test_eval_dense_and_pruned(pruned, capsys):
    heldout = os.path.join(DATA, "heldout.txt")
    assert main(["eval", "--model", DATA, "--data", heldout]) == 0
    dense = _ppl(capsys.readouterr().out)
    assert main(["eval", "--model", pruned, "--data", heldout]) == 0
    sparse = _ppl(capsys.readouterr().out)
    # A trained model: far better than uniform over its 2048 tokens; 2:4 pruning costs something.
    assert 1.0 < dense < 200.0
    assert dense < sparse < 5 * dense


def test_generate(pruned, capsys):
    assert main(["generate", "--model", pruned, "--prompt", "Return the", "--prompt", "The",
                 "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    texts = generate_text(load_model(pruned), os.path.join(pruned, "tokenizer.json"), ["Return the", "The"],
                          max_new_tokens=8)
    assert all(texts)  # greedy on a trained model continues with something
    assert out == f"Return the{texts[0]}\nThe{texts[1]}\n"


def test_prune_with_owl(tmp_path, capsys):
    out = str(tmp_path / "owl")
    assert main(["prune", "--model", DATA, "--method", "wanda", "--sparsity", "0.6", "--owl", "--owl-lambda", "0.04",
                 "--calib", os.path.join(DATA, "calib.txt"), "--calib-samples", "2", "--calib-tokens", "32",
                 "--out", out]) == 0
    report = capsys.readouterr().out
    assert "OWL: layers.0 " in report
    model = load_model(out)
    densities = [float(np.mean(np.asarray(layer.fc1.weight.to_dense()) != 0)) for layer in model.layers]
    assert np.mean(densities) == pytest.approx(0.4, abs=0.005) and np.ptp(densities) == pytest.approx(0.08, abs=0.01)


def test_help_of_every_command_shows_examples():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for command in ("prune", "eval", "generate"):
        out = subprocess.run([sys.executable, "-m", "jax_flashllm", command, "--help"], capture_output=True,
                             text=True, env=env, check=True).stdout
        assert "examples:" in out and f"python -m jax_flashllm {command}" in out


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--model", DATA, "--nm", "2-4", "--calib", "x", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="not found"):
        main(["eval", "--model", str(tmp_path / "missing"), "--data", "x"])


def test_calibration_windows_are_seeded():
    stream = np.arange(1000)
    a = calibration_windows(stream, 5, 64, seed=3)
    assert a.shape == (5, 64) and (np.diff(a, axis=1) == 1).all()
    np.testing.assert_array_equal(a, calibration_windows(stream, 5, 64, seed=3))
    assert calibration_windows(stream[:10], 5, 64, seed=3).shape == (1, 10)
