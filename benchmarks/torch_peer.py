"""The CPU peer: PyTorch dense bf16 `torch.nn.functional.linear` (oneDNN; AMX where the CPU has it), timed
in a process of its own, because torch's OpenMP workers would take the cores XLA's threads need.

Run by benchmarks.spmm as a worker (`python -m benchmarks.torch_peer --worker`), one JSON command per
line on stdin, one JSON reply per line on stdout:
    {"op": "load", "m": M, "k": K, "n": N, "cache_bytes": B}  -> {"ok": true, "torch": version, "threads": T}
    {"op": "time", "reps": R}                                 -> {"times": [seconds per call, ...]}
    {"op": "quit"}
The worker holds one case at a time: enough copies of a dense bf16 (M, K) weight to pass twice the
last-level cache, cycled call by call like benchmarks.spmm's Rotating. Between commands it sleeps in
a read; OMP_WAIT_POLICY=PASSIVE (set by PeerProcess) keeps torch's idle OpenMP threads off the cores
while the parent times its own kernel, so the two alternate round by round on an otherwise idle machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


class PeerProcess:
    """Parent side: starts the worker and forwards commands. None of torch is imported here."""

    def __init__(self, threads: int):
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.torch_peer", "--worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.info = {}

    def ask(self, **command) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"torch peer exited (code {self.proc.poll()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"torch peer: {reply['error']}")
        return reply

    def load(self, m: int, k: int, n: int, cache_bytes: int) -> None:
        self.info = self.ask(op="load", m=m, k=k, n=n, cache_bytes=cache_bytes)

    def time(self, reps: int) -> list[float]:
        return self.ask(op="time", reps=reps)["times"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask(op="quit")
            except (RuntimeError, OSError, ValueError):
                pass
            self.proc.wait(timeout=30)


def available() -> str | None:
    """None if torch imports in a fresh process, else why not (install it with `make peer`)."""
    r = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["import failed"])[-1]


def _worker() -> int:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    weights, x, i = [], None, 0
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["op"] == "quit":
                break
            if cmd["op"] == "load":
                m, k, n = cmd["m"], cmd["k"], cmd["n"]
                nbytes = 2 * m * k
                copies = max(1, -(-2 * cmd["cache_bytes"] // nbytes))
                gen = torch.Generator().manual_seed(0)
                weights = [torch.randn(m, k, generator=gen).to(torch.bfloat16) for _ in range(copies)]
                x = torch.randn(n, k, generator=gen).to(torch.bfloat16)
                with torch.inference_mode():
                    for w in weights[:2]:
                        torch.nn.functional.linear(x, w)
                reply = {"ok": True, "torch": torch.__version__, "threads": torch.get_num_threads(),
                         "copies": copies}
            elif cmd["op"] == "time":
                times = []
                with torch.inference_mode():
                    for _ in range(cmd["reps"]):
                        i += 1
                        t = time.perf_counter()
                        torch.nn.functional.linear(x, weights[i % len(weights)])
                        times.append(time.perf_counter() - t)
                reply = {"times": times}
            else:
                reply = {"error": f"unknown op {cmd['op']!r}"}
        except Exception as e:  # noqa: BLE001 - reported to the parent, which decides
            reply = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        raise SystemExit(_worker())
    print(__doc__)
