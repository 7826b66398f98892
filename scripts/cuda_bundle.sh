#!/usr/bin/env bash
# Cross-builds tokenmix's CUDA test and benchmark binaries on a CPU-only machine with no CUDA
# toolkit (the recipe of ../shared/reference/CUDA-BUILD.md) and packs them, stripped, with the
# committed fixtures and scripts/run_gpu_bundle.sh into one tarball for the GPU machine.
#
#   scripts/cuda_bundle.sh [OUT.tar.xz]          (default target/gpu-bundle.tar.xz)
#
# Environment: CUDA_VENV (nvcc wheels, default ~/.cache/tokenmix/cudavenv), CUDA_STUBS (link
# stubs, default ~/.cache/tokenmix/cuda-stubs), CARGO_TARGET_DIR (default target/cuda: a
# persistent directory; the first build takes 15-25 minutes on 2 cores), CUDA_COMPUTE_CAP
# (default 90), NICE (default 19), PACKAGES (cargo's package selection, default --workspace).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/target/gpu-bundle.tar.xz}
V=${CUDA_VENV:-$HOME/.cache/tokenmix/cudavenv}
STUBS=${CUDA_STUBS:-$HOME/.cache/tokenmix/cuda-stubs}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
NICE="nice -n ${NICE:-19}"
MAX_MIB=60

install_nvcc() {
  [[ -x $V/bin/python ]] || python3 -m venv "$V"
  "$V/bin/pip" install -q --no-deps nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
}

# stub LIB SONAME CUDARC_MODULE [VERSION_SCRIPT]: a library exporting cudarc's symbol names.
stub() {
  grep -ohE '^pub unsafe fn [A-Za-z0-9_]+' "$CUDARC/src/$3/sys/mod.rs" | sort -u \
    | awk '{print "int "$4"(void){return 1;}"}' >"$STUBS/$1.c"
  gcc -shared -fPIC -o "$STUBS/lib/$1.so" -Wl,-soname,"$2" ${4:+-Wl,--version-script=$4} "$STUBS/$1.c"
}

make_stubs() {
  mkdir -p "$STUBS/lib"
  stub libcuda libcuda.so.1 driver
  local spec
  for spec in "libcublas libcublas.so.13 cublas" "libcublasLt libcublasLt.so.13 cublaslt" \
    "libcurand libcurand.so.10 curand" "libnvrtc libnvrtc.so.13 nvrtc"; do
    set -- $spec
    echo "$2 { global: *; };" >"$STUBS/$1.map"
    stub "$1" "$2" "$3" "$STUBS/$1.map"
  done
  ln -sf "$CU13/lib/libcudart.so.13" "$STUBS/lib/libcudart.so"
}

# The GPU-relevant executables of the build (tokenmix-kernels' tests and benches, the model
# parity test), one "name<TAB>kind<TAB>path" a line.
build() {
  # shellcheck disable=SC2086
  $NICE cargo build --release --features cuda ${PACKAGES:---workspace} --tests --benches \
    --message-format=json-render-diagnostics \
    | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        kind = m["target"]["kind"][0]
        wanted = "tokenmix-kernels" in m["package_id"] or m["target"]["name"] == "parity"
        if wanted and (m["profile"]["test"] or kind == "bench"):
            print(m["target"]["name"] + "\t" + kind + "\t" + m["executable"])
'
}

pack() {
  local dir=$1 list=$2
  mkdir -p "$dir/bin" "$dir/repo/tests"
  while IFS=$'\t' read -r name kind exe; do
    cp "$exe" "$dir/bin/$kind-$name"
    strip "$dir/bin/$kind-$name"
  done <"$list"
  cp -r "$ROOT/tests/fixtures" "$dir/repo/tests/"
  cp "$ROOT/scripts/run_gpu_bundle.sh" "$dir/"
  cp -r "$ROOT/crates/kernels/ptx" "$dir/ptx"
  {
    echo "manifest_dir=$ROOT"
    echo "commit=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l)"
    echo "nvcc=$(nvcc --version | tail -1)"
    echo "compute_cap=$CUDA_COMPUTE_CAP"
    echo "built=$(date -u +%FT%TZ)"
  } >"$dir/BUILD-INFO"
}

main() {
  install_nvcc
  CU13=$V/lib/python3.11/site-packages/nvidia/cu13
  [[ -d $CU13 ]] || CU13=$(echo "$V"/lib/python3*/site-packages/nvidia/cu13)
  (cd "$ROOT" && $NICE cargo fetch -q)
  CUDARC=$(echo ~/.cargo/registry/src/*/cudarc-0.19.10)
  [[ -f $STUBS/lib/libcuda.so ]] || make_stubs
  export PATH=$CU13/bin:$PATH CUDA_ROOT=$STUBS
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  (cd "$ROOT" && build) >"$WORK/list"
  pack "$WORK/tokenmix-gpu-bundle" "$WORK/list"
  mkdir -p "$(dirname "$OUT")"
  XZ_OPT="-9e -T1" tar -C "$WORK" -cJf "$OUT" tokenmix-gpu-bundle
  local mib=$(( $(stat -c %s "$OUT") / 1048576 ))
  echo "bundle: $OUT (${mib} MiB, $(wc -l <"$WORK/list") binaries)"
  ((mib < MAX_MIB)) || { echo "bundle exceeds ${MAX_MIB} MiB" >&2; exit 1; }
}

main
