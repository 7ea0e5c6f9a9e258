#!/usr/bin/env bash
# One prepared GPU check (make gpu-check): for a machine with an NVIDIA GPU and no network where jax[cuda],
# flax, nanobind, scikit-build-core, cmake and ninja are installed. Builds in place, runs the whole test
# suite on the GPU, compute-sanitizer on a small case and the quick kernel benchmark. Logs and JSON go
# to $OUT (else benchmarks/results/gpu). Stops at the first failing step and says which.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
# No 75 % up-front reservation: the sanitizers track every allocation, and the tests need little.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
start=$(date +%s)
BUDGET_S=${BUDGET_S:-470}  # the whole check must end inside 8 minutes

step() {  # step NAME TIMEOUT_S CMD...: run, log to $OUT/NAME.log, stop the check on failure.
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - start) ))
  (( left < limit )) && limit=$left
  if (( limit <= 5 )); then echo "gpu-check FAILED: out of time before step '$name'"; exit 1; fi
  echo "== [$(( $(date +%s) - start ))s] $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  if (( rc != 0 )); then
    (( rc == 124 )) && echo "gpu-check: step '$name' ran past its ${limit}s limit"
    echo "gpu-check FAILED at step '$name' (exit $rc); last lines of $OUT/$name.log:"
    tail -n 40 "$OUT/$name.log"
    exit 1
  fi
  tail -n 3 "$OUT/$name.log"
}

step machine 30 bash -c "nvidia-smi && $PY -c 'import jax; print(jax.__version__, jax.devices())'"
# One architecture keeps the build inside the time budget; CI builds all of them.
arch=$($PY - <<'PYEOF' 2>/dev/null || echo 90
import jax
d = jax.devices()[0]
print(d.compute_capability.replace(".", "") if hasattr(d, "compute_capability") else 90)
PYEOF
)
step build 180 env CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=${arch}-real" CMAKE_BUILD_PARALLEL_LEVEL=16 \
  $PY -m pip install --no-build-isolation --no-deps -e .
step cuda-kernel-loaded 60 $PY -c "import jax_flashllm._ffi as f; assert f.has_cuda_kernel(), 'CUDA extension missing'; print('CUDA kernel registered')"
step tests 200 $PY -m pytest -x -q -p no:cacheprovider tests
if command -v compute-sanitizer >/dev/null; then
  # memcheck: out-of-bounds / misaligned accesses; racecheck: the double-buffered shared tiles;
  # synccheck: barriers reached by the whole block.
  for tool in memcheck racecheck synccheck; do
    step "$tool" 90 compute-sanitizer --tool "$tool" --error-exitcode 1 $PY scripts/gpu_small_case.py
  done
else
  echo "== compute-sanitizer not found: sanitizer steps skipped" | tee "$OUT/sanitizer.log"
fi
# Short timing budget per case: the check must end inside 8 minutes; rows are saved after every shape.
step bench 150 $PY -m benchmarks.spmm --quick --budget 1.5 --out "$OUT"
echo "gpu-check passed in $(( $(date +%s) - start ))s; results in $OUT"
