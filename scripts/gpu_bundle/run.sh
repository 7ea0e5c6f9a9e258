#!/usr/bin/env bash
# The GPU bundle's one command (docs/gpu.md). Writes at most 8 files under OUT (default ./results):
#   report.json      every case, rewritten after each one (a run cut short still reports)
#   harness.log      the harness's console output (one line per case)
#   memcheck.log, racecheck.log, synccheck.log   compute-sanitizer on small cases, when available
#   build-there.log  only when ./harness did not run here and was rebuilt from src/
#   summary.txt      what passed, what failed, where to look
# usage: run.sh [--dry-run] [--out DIR] [--budget SECONDS]    (default budget 240 s for the harness)
set -uo pipefail
cd "$(dirname "$0")"
OUT=results; BUDGET=240; DRY=0
while (( $# )); do
  case $1 in
    --dry-run) DRY=1 ;;
    --out) OUT=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    *) echo "usage: run.sh [--dry-run] [--out DIR] [--budget SECONDS]"; exit 2 ;;
  esac
  shift
done

if (( DRY )); then
  # Needs no GPU: list the cases and check that every golden file parses (if the binary cannot
  # start here, list from the case file itself).
  if ./harness --list --cases cases.txt 2>/dev/null; then
    ./harness --verify-golden --cases cases.txt | tail -1
  else
    grep -v '^#' cases.txt | awk '{print $1, $2}'; echo "$(grep -vc '^#' cases.txt) cases"
  fi
  exit 0
fi
mkdir -p "$OUT"

# cuBLAS for the dense peer: the nvidia-cublas wheel's or torch's lib folder, else the loader path.
for py in python3 python; do
  command -v $py >/dev/null || continue
  dirs=$($py - <<'PY' 2>/dev/null
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
for r in roots:
    for pat in ("nvidia/cublas/lib", "nvidia/cu13/lib", "torch/lib"):
        for d in glob.glob(os.path.join(r, pat)):
            if glob.glob(os.path.join(d, "libcublas.so*")):
                print(d)
PY
)
  [ -n "$dirs" ] && export LD_LIBRARY_PATH="$(echo "$dirs" | paste -sd:):${LD_LIBRARY_PATH:-}" && break
done

BIN=./harness
if ! ./harness --list --cases cases.txt >/dev/null 2>&1; then
  echo "./harness does not run here; rebuilding from src/ (see $OUT/build-there.log)"
  bash build-there.sh >"$OUT/build-there.log" 2>&1 && BIN=./harness-local || {
    echo "build-there.sh failed; last lines:"; tail -n 20 "$OUT/build-there.log"; exit 2; }
fi

start=$(date +%s)
# (a) correctness against the emulator's golden files, then (b) speed vs cuBLAS and a D2D copy.
timeout $(( BUDGET + 30 )) $BIN --cases cases.txt --out "$OUT/report.json" --budget "$BUDGET" \
  >"$OUT/harness.log" 2>&1
rc=$?
(( rc == 124 )) && echo "harness: killed after $(( BUDGET + 30 )) s" >>"$OUT/harness.log"

# (c) compute-sanitizer on small cases: a normal one with split-K, malformed inputs, NaN inputs.
san="skipped (compute-sanitizer not found)"
if command -v compute-sanitizer >/dev/null; then
  san=""
  for tool in memcheck racecheck synccheck; do
    timeout 90 compute-sanitizer --tool $tool --error-exitcode 3 $BIN --cases cases.txt \
      --filter _bf16_n17_,v1_bf16_malformed_split3,_fp16_128x64_mixed >"$OUT/$tool.log" 2>&1
    trc=$?
    san+="$tool=$([ $trc = 0 ] && echo pass || echo "FAIL($trc)") "
  done
fi

{
  echo "gpu bundle run, $(date -u +%FT%TZ), $(( $(date +%s) - start )) s"
  grep -m1 "SMs" "$OUT/harness.log"
  echo "harness exit $rc (0 all correct, 1 some case failed, 2 device failure, 124 timeout)"
  tail -n 1 "$OUT/harness.log"
  echo "correctness failures:"; grep '^FAIL' "$OUT/harness.log" | cut -c1-300 || true
  echo "sanitizers: $san"
  echo "details: $OUT/report.json (one object per case), logs in $OUT/"
} | tee "$OUT/summary.txt"
[ $rc = 0 ] && [[ "$san" != *FAIL* ]]
