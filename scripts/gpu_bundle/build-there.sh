#!/usr/bin/env bash
# Fallback when the shipped ./harness does not run on this machine (other system libraries): build
# it again from src/ with this machine's nvcc, for this machine's GPU only, as ./harness-local.
set -euo pipefail
cd "$(dirname "$0")"
cc=$( (nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null || true) | head -1 | tr -d '. ')
arch=${cc:-90}
echo "building harness-local for sm_${arch} with $(command -v nvcc)"
flags=(-std=c++17 -O3 --expt-relaxed-constexpr -lineinfo -gencode "arch=compute_${arch},code=sm_${arch}"
       -Isrc/cuda/include -Isrc/cuda)
mkdir -p obj-local
pids=()
for f in src/cuda/kernel/launcher.cu src/cuda/kernel/inst/*.cu src/cuda/harness/harness.cu; do
  nvcc "${flags[@]}" -c "$f" -o "obj-local/$(basename "${f%.cu}").o" & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
nvcc "${flags[@]}" -cudart static -o harness-local obj-local/*.o -ldl
./harness-local --list --cases cases.txt | tail -1
