"""The CUDA kernel as ptxas compiles it, for every instantiation and architecture: no register
spills, shared memory within the per-block limit, and the occupancy table the split-K choice is
built on (jax_flashllm/_tiling.OCCUPANCY). Compiles the instantiation files of cuda/kernel/inst/
with `nvcc -cubin -Xptxas -v` (device code only); skipped without nvcc."""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
INST_DIR = ROOT / "cuda" / "kernel" / "inst"
ARCHS = (80, 86, 89, 90)
# Opt-in dynamic + static shared memory per block (CUDA programming guide, compute capabilities).
SMEM_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found")

_ENTRY = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_TRAITS = re.compile(r"SpmmTraitsILi(\d+)ELi(\d+)E")
# BitmapTraits<SpmmTraits<...>, kDense>: the bool argument mangles as Lb1E (true) / Lb0E (false).
_BITMAP_DENSE = re.compile(r"BitmapTraitsI.*ELb1EE")


def _ptxas_report(source: pathlib.Path, arch: int, out_dir: str) -> dict[str, dict]:
    """{kernel name: {stack, spill_stores, spill_loads, registers, smem}} for one compilation."""
    cmd = [NVCC, "-std=c++17", "-cubin", f"-arch=sm_{arch}", "-Xptxas", "-v",
           "-I", str(ROOT / "cuda" / "include"), "-I", str(ROOT / "cuda"),
           str(source), "-o", os.path.join(out_dir, f"{source.stem}_{arch}.cubin")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    report, current = {}, None
    for line in proc.stderr.splitlines():
        if m := _ENTRY.search(line):
            current = report.setdefault(m.group(1), {"arch": int(m.group(2)), "smem": 0})
        elif current is not None and (m := _SPILL.search(line)):
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)),
                           spill_loads=int(m.group(3)))
        elif current is not None and (m := _USED.search(line)):
            current["registers"] = int(m.group(1))
            if s := _SMEM.search(line):
                current["smem"] = int(s.group(1))
    return report


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    sources = sorted(INST_DIR.glob("*.cu")) + [ROOT / "cuda" / "kernel" / "launcher.cu"]
    jobs = [(src, arch) for src in sources for arch in ARCHS]
    out_dir = str(tmp_path_factory.mktemp("cubin"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(lambda job: _ptxas_report(job[0], job[1], out_dir), jobs)
        return {job: rep for job, rep in zip(jobs, results)}


def _dynamic_smem():
    """(kernel family, block_m, block_n) -> dynamic shared memory bytes, from the compiled tables
    (family: "csl" = spmm_kernel, "bitmap" / "dense" = spmm_bitmap_kernel<BitmapTraits<., false / true>>)."""
    emu = pytest.importorskip("jax_flashllm._flashllm_emu")
    out = {}
    for row, (name, bitmap, dense, *_) in zip(emu.spmm_configs(), emu.spmm_bitmap_smem()):
        assert row[0] == name
        out[("csl", row[2], row[3])] = row[4]
        out[("bitmap", row[2], row[3])] = bitmap
        out[("dense", row[2], row[3])] = dense
    return out


def _family(kernel_name: str) -> str:
    """Kernel family of a mangled kernel name (see _dynamic_smem)."""
    if "spmm_bitmap_kernel" not in kernel_name:
        return "csl"
    return "dense" if _BITMAP_DENSE.search(kernel_name) else "bitmap"


def test_every_instantiation_compiled_alone(reports):
    # One SpMM kernel per instantiation file (no accidental implicit instantiations that would
    # multiply the multi-arch build time); split-K is reduced inside the kernel, so launcher.cu
    # holds no kernel at all.
    for (src, arch), rep in reports.items():
        if src.name == "launcher.cu":
            assert not rep, (src.name, arch, list(rep))
        else:
            assert len(rep) == 1, (src.name, arch, list(rep))
            name = next(iter(rep))
            assert "spmm_kernel" in name or "spmm_bitmap_kernel" in name, (src.name, arch, name)


def test_occupancy_table_matches_ptxas(reports):
    # The table choose_split_k sizes the grid with: registers as ptxas reports them (the fp16 and
    # bf16 instantiations may differ by a few; both must give the table's blocks per SM), the
    # traits' shared memory, and __launch_bounds__ asking for what sm_90 allows.
    from jax_flashllm import _tiling
    emu = pytest.importorskip("jax_flashllm._flashllm_emu")
    rows = {row[0]: row for row in emu.spmm_configs()}
    for (src, arch), rep in reports.items():
        for name, r in rep.items():
            m = _TRAITS.search(name)
            if not m:
                continue
            config = f"{m.group(1)}x{m.group(2)}"
            fmt = {"csl": "tiled_csl"}.get(_family(name), _family(name))
            occ = _tiling.FORMAT_OCCUPANCY[fmt][arch][config]
            assert r["registers"] <= occ.registers, (src.name, arch, r, occ)
            assert occ.smem_bytes == _dynamic_smem()[(_family(name), int(m.group(1)), int(m.group(2)))]
            assert _tiling.blocks_per_sm(r["registers"], occ.smem_bytes, arch) == occ.blocks, (
                src.name, arch, r, occ)
    for config, row in rows.items():
        assert row[6] == _tiling.OCCUPANCY[90][config].blocks  # __launch_bounds__ min blocks
    for config, _, _, bitmap_blocks, dense_blocks in emu.spmm_bitmap_smem():
        assert bitmap_blocks == _tiling.FORMAT_OCCUPANCY["bitmap"][90][config].blocks
        assert dense_blocks == _tiling.FORMAT_OCCUPANCY["dense"][90][config].blocks


def test_no_register_spills(reports):
    for (src, arch), rep in reports.items():
        for name, r in rep.items():
            print(f"sm_{arch} {src.name} {name[:60]}: {r}")
            assert r["spill_stores"] == 0 and r["spill_loads"] == 0, (src.name, arch, name, r)
            assert r["stack"] == 0, (src.name, arch, name, r)


def test_shared_memory_within_block_limit(reports):
    dynamic = _dynamic_smem()
    seen = set()
    for (src, arch), rep in reports.items():
        for name, r in rep.items():
            if m := _TRAITS.search(name):
                tile = (_family(name), int(m.group(1)), int(m.group(2)))
                seen.add(tile)
                total = r["smem"] + dynamic[tile]
                assert total <= SMEM_LIMIT[arch], (src.name, arch, total)
    assert seen == set(dynamic), "every dispatched config must have an instantiation file"
