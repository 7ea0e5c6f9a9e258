"""The GPU bundle (make gpu-bundle, docs/gpu.md), checked here without a GPU: its case list, the
golden bound (loose enough for the emulated kernel, tight enough to catch one wrong output), the
harness source compiling, and, when the bundle has been built, its dry run."""

from __future__ import annotations

import importlib.util
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

from jax_flashllm import SparseMatrix, _tiling

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "build" / "gpu-bundle"


def _cases_module():
    spec = importlib.util.spec_from_file_location("gpu_bundle_cases", ROOT / "scripts" / "gpu_bundle_cases.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_speed_cases_cover_the_issue_and_use_the_dispatcher_split():
    mod = _cases_module()
    lines = mod.speed_cases()
    names = [line.split()[1] for line in lines]
    assert len(set(names)) == len(names) >= 150
    seen = set()
    for line in lines:
        kind, name, fmt, dtype, m, k, n, sparsity, split = line.split()
        m, k, n, split = int(m), int(k), int(n), int(split)
        seen.add((m, k, n, float(sparsity)))
        if not name.startswith("sweep"):
            fmt_name = next(f for f, i in mod.FORMAT_IDS.items() if i == int(fmt))
            assert split == _tiling.choose_split_k(m, k, n, mod.H200_SMS, mod.H200_ARCH, format=fmt_name), line
    for h, f in mod.OPT_SIZES.values():
        for m, k in ((h, h), (f, h), (h, f)):
            for n in (1, 8, 16, 32):
                for s in (0.5, 0.7, 0.8, 0.9):
                    assert (m, k, n, s) in seen
    sweep = [int(line.split()[-1]) for line in lines if line.split()[1].startswith("sweep")]
    assert sweep[0] == 1 and sweep[-1] == 16


def test_correctness_cases_cover_configs_ns_and_malformed_inputs():
    mod = _cases_module()
    cases = mod.cases(np.random.default_rng(0))
    names = [c[0] for c in cases]
    assert len(names) >= 20 and len(set(names)) == len(names)
    assert {c[1].format for c in cases} == {"tiled_csl", "bitmap", "dense"}  # every kernel family
    for n in (1, 8, 16, 17, 33, 65, 130):
        assert any(f"_n{n}_" in name for name in names)
    assert {c[4] for c in cases} >= {-1, 0, 1, 2, 3}  # every config forced at least once
    assert {c[3] for c in cases} >= {1, 2, 16}
    assert any(c[5] & 1 for c in cases)  # malformed arrays
    assert any(c[2].shape[1] % 8 for c in cases)  # K % 8 != 0


def test_golden_bound_passes_the_kernel_and_catches_one_wrong_output():
    from jax_flashllm.testing import emulated_spmm
    from reference import random_sparse

    mod = _cases_module()
    rng = np.random.default_rng(1)
    dense = random_sparse(rng, (300, 1000), 0.7).astype(mod.BF16)
    w = SparseMatrix.from_dense(dense, dtype=mod.BF16, format="tiled_csl")
    x = rng.standard_normal((8, 1000)).astype(mod.BF16)
    ref = x.astype(np.float64) @ dense.astype(np.float64).T
    scale = np.abs(x.astype(np.float64)) @ np.abs(dense.astype(np.float64)).T
    y = emulated_spmm(w, x, split_k=3)
    mod.check(y, ref, scale, mod.BF16, "ok")
    # One product missing from one output (a dropped nonzero, here the largest of row 0) must fail.
    products = np.abs(x[0].astype(np.float64)[None, :] * dense.astype(np.float64))
    r, c = np.unravel_index(np.argmax(products), products.shape)
    bad = y.copy()
    bad[0, r] = (y[0, r].astype(np.float64) - float(x[0, c]) * float(dense[r, c])).astype(mod.BF16)
    with pytest.raises(AssertionError, match="outside"):
        mod.check(bad, ref, scale, mod.BF16, "bad")
    bad = y.copy()
    bad[3, 7] = np.nan
    with pytest.raises(AssertionError, match="NaN"):
        mod.check(bad, ref, scale, mod.BF16, "nan")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_harness_source_compiles(tmp_path):
    cmd = ["nvcc", "-std=c++17", "--expt-relaxed-constexpr", "-arch=sm_80", "-c",
           "-I", str(ROOT / "cuda" / "include"), "-I", str(ROOT / "cuda"),
           str(ROOT / "cuda" / "harness" / "harness.cu"), "-o", str(tmp_path / "harness.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _bundle_is_current():
    binary = BUNDLE / "harness"
    if not binary.exists():
        return False
    built = binary.stat().st_mtime
    sources = [p for d in ("cuda/kernel", "cuda/harness", "cuda/include") for p in (ROOT / d).rglob("*")]
    return all(p.stat().st_mtime <= built for p in sources if p.is_file())


@pytest.mark.skipif(not _bundle_is_current(), reason="build/gpu-bundle missing or stale (make gpu-bundle)")
def test_bundle_dry_run():
    proc = subprocess.run(["bash", str(BUNDLE / "run.sh"), "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    count = int(next(line for line in lines if line.endswith(" cases")).split()[0])
    assert count >= 20
    assert lines[-1].endswith("golden files verified, 0 bad")
    size = sum(p.stat().st_size for p in BUNDLE.rglob("*") if p.is_file())
    assert size <= 48 << 20
