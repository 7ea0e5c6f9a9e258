"""benchmarks/gpu_model.py: its recorded inputs are current, its byte model matches the encoders, and
the model behaves (monotone in sparsity, baseline independent of the format)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from benchmarks import gpu_model as g
from jax_flashllm import SparseMatrix


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_recorded_probe_counts_are_current():
    counts, source = g.probe_counts()
    assert source.startswith("nvcc")
    assert counts == g.RECORDED_PROBES


@pytest.mark.parametrize("fmt", g.FORMATS)
@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_stored_bytes_match_the_encoder(fmt, sparsity):
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((512, 768)).astype(np.float32)
    dense[rng.random(dense.shape) < sparsity] = 0
    w = SparseMatrix.from_dense(dense, dtype=np.float16, format=fmt)
    actual = sum(np.asarray(a).nbytes for a in (w.values, w.index, w.tile_offsets))
    assert g.stored_bytes(fmt, 512, 768, sparsity) == pytest.approx(actual, rel=0.02)


def test_counts_cover_the_grid_and_predictions_behave():
    counts = g.count_table(recount=False)
    assert set(counts) == {f"{f}/{n}/{s}" for f in g.FORMATS for n in g.NS for s in g.SPARSITIES}
    gpu = g.GPUS["H200"]
    for fmt in g.FORMATS:
        times = [g.predict(gpu, fmt, 12288, 12288, 1, s, counts, g.RECORDED_PROBES) for s in g.SPARSITIES]
        assert len({round(p.dense_us, 6) for p in times}) == 1  # the baseline ignores the format
        hbm = [p.resources_us["hbm"] for p in times]
        if fmt == "dense":
            assert max(hbm) == pytest.approx(min(hbm))
        else:
            assert all(a > b for a, b in zip(hbm, hbm[1:]))  # fewer bytes with more zeros
        assert all(p.time_us >= max(v for k, v in p.resources_us.items() if k in
                                    ("hbm", "l2", "shared", "issue", "tensor")) for p in times)


def test_measured_report_is_compared(tmp_path, capsys):
    # The GPU bundle's report layout (cuda/harness/timing.h Report): header + "cases".
    report = {"device": "NVIDIA H200", "copy_gbs": 4000, "cases": [
        {"name": "v2_x", "kind": "speed", "format": 2, "m": 12288, "k": 12288, "n": 1, "sparsity": 0.5,
         "us": 100.0, "cublas_us": 80.0},
        {"name": "v1_golden", "kind": "correctness", "format": 1}]}
    path = tmp_path / "report.json"
    path.write_text(__import__("json").dumps(report))
    g.compare_measured(path, g.count_table(recount=False), g.RECORDED_PROBES)
    out = capsys.readouterr().out
    assert "copy 4.00 TB/s" in out and "v2_x" in out and "ratio" in out and "v1_golden" not in out
