#!/usr/bin/env bash
# make gpu-bundle: everything a GPU machine needs to check the kernel, with no JAX or Python there,
# in build/gpu-bundle/ (<= 48 MiB): the harness (static cudart and libstdc++, SASS for sm_80 and
# sm_90 plus compute_90 PTX), cases.txt and golden files from the host emulation, the sources and
# build-there.sh, run.sh. Needs nvcc and the in-place emulation module (bash /work/devbuild.sh or
# make install). JOBS: parallel nvcc processes (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=build/gpu-bundle
OBJ=build/gpu-bundle-obj
JOBS=${JOBS:-2}
GENCODE=(-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
         -gencode arch=compute_90,code=compute_90)
FLAGS=(-std=c++17 -O3 --expt-relaxed-constexpr -lineinfo -Icuda/include -Icuda)
rm -rf "$OUT"
mkdir -p "$OUT" "$OBJ"

echo "[1/4] compiling the harness (sm_80, sm_90, compute_90 PTX; $JOBS jobs)"
srcs=(cuda/kernel/launcher.cu cuda/kernel/inst/*.cu cuda/harness/harness.cu)
printf '%s\n' "${srcs[@]}" | xargs -P "$JOBS" -I{} sh -c \
  'nvcc '"${FLAGS[*]} ${GENCODE[*]}"' -c {} -o '"$OBJ"'/$(basename {} .cu).o'
nvcc "${GENCODE[@]}" -cudart static -Xcompiler -static-libstdc++ -Xcompiler -static-libgcc \
  -o "$OUT/harness" "$OBJ"/*.o -ldl
strip "$OUT/harness" 2>/dev/null || true
# The GPU machine may have an older glibc (Ubuntu 22.04: 2.35); run.sh falls back to build-there.sh.
need=$(objdump -T "$OUT/harness" | grep -oE 'GLIBC_2\.[0-9]+' | sort -V | tail -1)
echo "harness needs $need; dynamic libraries: $(ldd "$OUT/harness" | awk '{print $1}' | paste -sd' ')"

echo "[2/4] golden cases from the host emulation, and the case list"
PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "$PY" scripts/gpu_bundle_cases.py "$OUT"

echo "[3/4] sources and scripts"
mkdir -p "$OUT/src/cuda"
cp -r cuda/include cuda/kernel cuda/harness "$OUT/src/cuda/"
cp scripts/gpu_bundle/run.sh scripts/gpu_bundle/build-there.sh "$OUT/"

echo "[4/4] check"
"$OUT/harness" --list --cases "$OUT/cases.txt" | tail -1
"$OUT/harness" --verify-golden --cases "$OUT/cases.txt" | tail -1
size=$(du -sb "$OUT" | cut -f1)
echo "build/gpu-bundle: $(( size / 1048576 )) MiB, $(find "$OUT" -type f | wc -l) files"
(( size <= 48 * 1048576 )) || { echo "bundle larger than 48 MiB"; exit 1; }
