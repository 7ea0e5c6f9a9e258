"""Shared pieces of the benchmarks: interleaved median timing, the machine's copy bandwidth, machine info,
and writing results (JSON + markdown) under benchmarks/results/."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# --- timing -------------------------------------------------------------------------------------------
def interleaved_times(fns: dict[str, Callable[[], object]], *, warmup: int = 2, iters: int = 15,
                      budget_s: float = 20.0, min_iters: int = 3,
                      external: dict[str, Callable[[], float]] | None = None) -> dict[str, np.ndarray]:
    """Seconds per call of each function, measured in rounds that call every function once (in a rotating
    order), so a change in machine load hits all of them alike. Each call blocks until its result is
    ready. Stops after `iters` rounds, or earlier once `budget_s` is spent and every function has
    `min_iters` samples. A function that raises during warm-up is dropped (its name maps to an empty
    array). `external` functions time one call elsewhere (another process) and return its seconds; they
    take their turn in the rounds like the others."""
    external = external or {}
    fns = {**fns, **external}
    live = {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                jax.block_until_ready(fn())
            live[name] = fn
        except Exception as e:  # noqa: BLE001 - a baseline that does not run is reported, not fatal
            print(f"  {name}: skipped ({type(e).__name__}: {str(e)[:120]})")
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(live)
    start = time.perf_counter()
    for r in range(iters):
        order = names[r % len(names):] + names[:r % len(names)] if names else []
        for name in order:
            if name in external:
                times[name].append(live[name]())
                continue
            t = time.perf_counter()
            jax.block_until_ready(live[name]())
            times[name].append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s and r + 1 >= min_iters:
            break
    return {name: np.asarray(v) for name, v in times.items()}


def summarize(samples: np.ndarray) -> dict | None:
    """Median and spread (10th / 90th percentile) in milliseconds, or None for no samples."""
    if samples.size == 0:
        return None
    ms = samples * 1e3
    return {"median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
            "p90_ms": float(np.percentile(ms, 90)), "n": int(ms.size)}


# --- memory bandwidth ---------------------------------------------------------------------------------
def copy_bandwidth_gbs(nbytes: int = 256 << 20, repeats: int = 5, threads: int | None = None) -> float:
    """The machine's memory copy bandwidth in GB/s (bytes read + bytes written per second, as STREAM's
    Copy counts them): numpy copies of a buffer far larger than the last-level cache, split over all
    cores (numpy releases the GIL while copying). Median of `repeats`."""
    threads = threads or len(os.sched_getaffinity(0))
    src = np.ones(nbytes // 8, np.float64)
    dst = np.empty_like(src)
    parts = np.array_split(np.arange(src.size), threads)
    bounds = [(p[0], p[-1] + 1) for p in parts if p.size]

    def copy(lo, hi):
        np.copyto(dst[lo:hi], src[lo:hi])

    rates = []
    for _ in range(repeats):
        workers = [threading.Thread(target=copy, args=b) for b in bounds]
        t = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        rates.append(2 * src.nbytes / (time.perf_counter() - t) / 1e9)
    return float(np.median(rates))


def read_bandwidth_gbs(nbytes: int = 512 << 20, repeats: int = 7, threads: int | None = None) -> float:
    """The machine's memory read bandwidth in GB/s: numpy max-reductions (SIMD compares, no stores) over a
    float32 buffer far larger than the last-level cache, split over all cores. The best of `repeats`:
    the denominator of "% of read bandwidth" is what the machine can do, and other load only lowers it."""
    threads = threads or len(os.sched_getaffinity(0))
    src = np.ones(nbytes // 4, np.float32)
    parts = [p for p in np.array_split(src, threads) if p.size]
    rates = []
    for _ in range(repeats):
        workers = [threading.Thread(target=np.max, args=(p,)) for p in parts]
        t = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        rates.append(src.nbytes / (time.perf_counter() - t) / 1e9)
    return float(max(rates))


def device_copy_bandwidth_gbs(nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """An accelerator's memory bandwidth in GB/s (read + write bytes per second): a jitted elementwise
    pass over a `nbytes` float32 array that lives on the device. Median of `repeats`."""
    a = jax.numpy.ones(nbytes // 4, jax.numpy.float32)
    scale = jax.jit(lambda v: v * 2.0)
    jax.block_until_ready(scale(a))
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(scale(a))
        rates.append(2 * a.nbytes / (time.perf_counter() - t) / 1e9)
    return float(np.median(rates))


# --- machine info -------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The CPU features the kernel variants and the peer's oneDNN choose by (from /proc/cpuinfo's flags).
_FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vbmi2",
             "avx512_vpopcntdq", "amx_tile", "amx_bf16", "sve", "asimd")


def cpu_features() -> list[str]:
    """Which of _FEATURES this CPU reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in _FEATURES if f in have]
    except OSError:
        pass
    return []


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "") if head else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict:
    """What the numbers depend on: CPU, cores, memory, load, library versions, kernel variant, commit."""
    from jax_flashllm import _flashllm_cpu

    cores = len(os.sched_getaffinity(0))
    load = os.getloadavg()
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": cores,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "device": str(jax.devices()[0]),
        "cpu_kernel_isa": _flashllm_cpu.cpu_isa(),
        "cpu_kernel_isas": _flashllm_cpu.cpu_isas(),
        "git_commit": _git_commit(),
        "load_avg_start": [round(x, 2) for x in load],
    }
    return info


def finish_machine_info(info: dict) -> dict:
    """Adds the end-of-run load and a note when the machine was busy (load above its core count)."""
    load = os.getloadavg()
    info["load_avg_end"] = [round(x, 2) for x in load]
    info.pop("note", None)
    return add_busy_note(info)


def add_busy_note(info: dict) -> dict:
    """Notes a busy machine: other work (the 1-min load average before the run started) of at least half
    the cores. The end-of-run load includes the benchmark itself, so only the start counts."""
    before = info["load_avg_start"][0]
    if before >= 0.5 * info["cores"]:
        info["note"] = (f"machine busy: 1-min load average {before:.1f} on {info['cores']} cores before the "
                        "run started (other processes, or work that just ended); absolute times are inflated "
                        "and noisy, the interleaved baselines saw the same load")
    return info


# --- output -------------------------------------------------------------------------------------------
def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table (first column left-aligned, the rest right-aligned)."""
    align = [":---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
