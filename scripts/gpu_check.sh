#!/usr/bin/env bash
# make gpu-check (docs/gpu.md): the whole device check in one call, inside 8 minutes, for a machine
# with an NVIDIA GPU and no network where jax[cuda], flax, nanobind, scikit-build-core, cmake and
# ninja are installed. Two steps, each with its own time budget, each reported PASS / FAIL; a
# failing step never stops the other.
#   step 1, the bundle: build/gpu-bundle/run.sh (made here by `make gpu-bundle`; built on the spot
#           if missing and the emulation module is importable): golden correctness, speed against
#           cuBLAS and a device-to-device copy, compute-sanitizer.
#   step 2, the JAX path: build in place for this GPU only, pytest -m gpu (FFI, jit/vmap/grad,
#           split-K, malformed inputs, CUDA graphs, OPT generation), a short sparse_dense benchmark.
#   step 3, end to end: opt-1.3b shapes, HF transformers bf16 on torch's CUDA against ours dense bf16 and
#           sparse 50 % / 80 % (benchmarks.e2e --hf-device cuda), decode tokens/s and memory.
# Steps 1-2 share BUDGET_S, step 3 has E2E_S of its own: the whole stays under the device's 10-minute
# command limit. STEPS="2 3" (say) runs a subset, e.g. in a second call for what the first ran out of time
# for (step 3 uses the package step 2 builds in place).
# Logs and results go to $OUT (default benchmarks/results/gpu).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # the sanitizers track every allocation
start=$(date +%s)
BUDGET_S=${BUDGET_S:-430}
STEP1_S=${STEP1_S:-215}
E2E_S=${E2E_S:-150}
STEPS=${STEPS:-1 2 3}
declare -A result

elapsed() { echo $(( $(date +%s) - start )); }

# run NAME LIMIT CMD...: one command under a time limit, logged to $OUT/NAME.log.
run() {
  local name=$1 limit=$2; shift 2
  echo "   [$(elapsed)s] $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  (( rc == 124 )) && echo "   $name ran past ${limit}s" | tee -a "$OUT/$name.log"
  (( rc != 0 )) && { echo "   $name failed (exit $rc); last lines of $OUT/$name.log:"; tail -n 15 "$OUT/$name.log"; }
  return $rc
}

step1() {
  if [ ! -x build/gpu-bundle/run.sh ]; then
    "$PY" -c "import jax_flashllm._flashllm_emu" 2>/dev/null || {
      echo "   no build/gpu-bundle (run make gpu-bundle on the build machine and carry it)"; return 1; }
    run bundle-build 120 env PYTHON="$PY" JOBS=16 bash scripts/make_gpu_bundle.sh || return 1
  fi
  local left=$(( STEP1_S - $(elapsed) ))
  # run.sh: the harness gets what is left minus the sanitizers' share (3 x up to 90 s, ~15 s each
  # on small cases in practice).
  run bundle "$left" bash build/gpu-bundle/run.sh --out "$OUT/bundle" --budget $(( left - 75 ))
  local rc=$?
  [ -f "$OUT/bundle/summary.txt" ] && sed 's/^/   /' "$OUT/bundle/summary.txt"
  return $rc
}

step2() {
  local arch
  arch=$("$PY" -c "import jax; print(jax.devices()[0].compute_capability.replace('.', ''))" 2>/dev/null || echo 90)
  run build 170 env CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=${arch}-real" CMAKE_BUILD_PARALLEL_LEVEL=16 \
    "$PY" -m pip install --no-build-isolation --no-deps -e . || return 1
  run cuda-kernel-loaded 60 "$PY" -c "import jax_flashllm._ffi as f; assert f.has_cuda_kernel(), 'CUDA extension missing'" || return 1
  local left=$(( BUDGET_S - $(elapsed) - 35 ))
  # No -x: every GPU test reports; the log lists each failure.
  run pytest-gpu "$left" "$PY" -m pytest -m gpu -q -p no:cacheprovider -rfE tests
  local rc=$?
  tail -n 3 "$OUT/pytest-gpu.log" | sed 's/^/   /'
  left=$(( BUDGET_S - $(elapsed) ))
  if (( left > 15 )); then
    run bench $(( left - 5 )) "$PY" -m benchmarks.spmm --quick --budget 1.0 --out "$OUT" || rc=1
  else
    echo "   bench skipped: out of time"
  fi
  return $rc
}

step3() {
  # Each configuration is its own process (benchmarks.e2e). A sparse row of opt-1.3b took 1.8 min on the
  # 2-core build machine, 47 s of it building the model (random init, host-side magnitude pruning and
  # encoding), so the rows go most-wanted first and e2e_gpu.* are rewritten after each: a run cut short by
  # E2E_S keeps the rows it finished.
  run e2e "$E2E_S" "$PY" -m benchmarks.e2e --sizes opt-1.3b --hf-device cuda --new-tokens 33 \
    --configs hf-bfloat16 ours-0.8 ours-0.5 ours-bf16 --out "$OUT"
  local rc=$?
  [ -f "$OUT/e2e_gpu.md" ] && sed 's/^/   /' "$OUT/e2e_gpu.md"
  return $rc
}

wants() { [[ " $STEPS " == *" $1 "* ]]; }

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,compute_cap,memory.total --format=csv,noheader \
  | tee "$OUT/machine.log" || { echo "gpu-check: nvidia-smi not found: no GPU here"; exit 1; }
result[bundle]=SKIPPED result[jax]=SKIPPED result[e2e]=SKIPPED
if wants 1; then echo "== step 1: the bundle"; step1 && result[bundle]=PASS || result[bundle]=FAIL; fi
if wants 2; then echo "== step 2: the JAX path"; step2 && result[jax]=PASS || result[jax]=FAIL; fi
if wants 3; then echo "== step 3: end to end, opt-1.3b"; step3 && result[e2e]=PASS || result[e2e]=FAIL; fi
echo "gpu-check: bundle ${result[bundle]}, jax ${result[jax]}, e2e ${result[e2e]} in $(elapsed)s; logs in $OUT"
[[ " ${result[*]} " != *" FAIL "* ]]
