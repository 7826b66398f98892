#!/usr/bin/env bash
# Runs the bundle made by scripts/cuda_bundle.sh on the GPU machine (nvcc, Python with PyTorch
# and timm and the CUDA 13 PyPI libraries; no Rust, no network) and writes one report.
#
#   tar xJf gpu-bundle.tar.xz && tokenmix-gpu-bundle/run_gpu_bundle.sh [REPORT.md]
#
# The report (default ./gpu-report.md) holds the machine, each test binary's outcome and output
# tail, the kernels' bandwidth benchmark and PyTorch eager (timm) images/s for the zoo's
# reference models. Environment: PYTHON (default python3), BENCH_ITERS (default 20).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPORT=$(realpath -m "${1:-gpu-report.md}")
PY=${PYTHON:-python3}
export TOKENMIX_REQUIRE_GPU=1 TOKENMIX_DEVICE=cuda TOKENMIX_BENCH_ITERS=${BENCH_ITERS:-20}
export RUST_BACKTRACE=1

# The CUDA 13 user-space libraries of the PyPI wheels (cublas, curand, cudart, nvrtc).
cuda_libs() {
  "$PY" -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'lib'))"
}

# The test binaries find the fixtures under the build machine's checkout path.
link_fixtures() {
  local manifest
  manifest=$(sed -n 's/^manifest_dir=//p' "$HERE/BUILD-INFO")
  [[ -e $manifest/tests/fixtures ]] && return
  mkdir -p "$manifest/tests" 2>/dev/null && ln -s "$HERE/repo/tests/fixtures" "$manifest/tests/fixtures" \
    || echo "warning: cannot link fixtures at $manifest/tests/fixtures; parity tests will fail"
}

section() { printf '\n## %s\n\n' "$1" >>"$REPORT"; }

machine() {
  section "Machine"
  {
    echo '```'
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv 2>&1
    nvcc --version 2>&1 | tail -2
    "$PY" -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)" 2>&1
    cat "$HERE/BUILD-INFO"
    echo '```'
  } >>"$REPORT"
}

# run_bin NAME [ARGS...]: one binary's outcome and the tail of its output.
run_bin() {
  local bin=$HERE/bin/$1 log
  shift
  log=$(mktemp)
  local start=$SECONDS
  "$bin" "$@" >"$log" 2>&1
  local rc=$?
  echo "| $(basename "$bin") | $([[ $rc == 0 ]] && echo pass || echo "FAIL ($rc)") | $((SECONDS - start)) s |" >>"$REPORT.rows"
  { echo "### $(basename "$bin")"; echo '```'; tail -n 40 "$log"; echo '```'; } >>"$REPORT.logs"
  rm -f "$log"
  return $rc
}

tests() {
  section "Tests (CUDA vs CPU per op, CPU kernels, model parity)"
  : >"$REPORT.rows"
  : >"$REPORT.logs"
  local failed=0 t
  for t in "$HERE"/bin/test-* "$HERE"/bin/lib-*; do
    [[ -x $t ]] || continue
    run_bin "$(basename "$t")" --test-threads=1 || failed=1
  done
  { echo "| binary | result | time |"; echo "|---|---|---:|"; cat "$REPORT.rows"; echo; cat "$REPORT.logs"; } >>"$REPORT"
  rm -f "$REPORT.rows" "$REPORT.logs"
  return $failed
}

kernel_bench() {
  section "Fused ops vs device-to-device copy and composed candle ops"
  echo "iterations: $TOKENMIX_BENCH_ITERS" >>"$REPORT"
  echo >>"$REPORT"
  "$HERE/bin/bench-gpu_bandwidth" >>"$REPORT" 2>&1 || echo "bench failed: exit $?" >>"$REPORT"
}

torch_bench() {
  section "PyTorch eager (timm, random weights) images/s"
  "$PY" - >>"$REPORT" 2>&1 <<'EOF'
import time, torch, timm
models = ["poolformer_s12", "convformer_s18", "caformer_s18", "mambaout_femto", "mixer_s16_224"]
print("| model | dtype | batch | images/s |")
print("|---|---|---:|---:|")
for name in models:
    for dtype in (torch.float32, torch.bfloat16):
        m = timm.create_model(name, pretrained=False).cuda().eval().to(dtype)
        for batch in (1, 128):
            x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=dtype)
            with torch.inference_mode():
                for _ in range(3):
                    m(x)
                torch.cuda.synchronize()
                n, t = 10, time.perf_counter()
                for _ in range(n):
                    m(x)
                torch.cuda.synchronize()
            print(f"| {name} | {str(dtype)[6:]} | {batch} | {n * batch / (time.perf_counter() - t):.0f} |")
        del m
        torch.cuda.empty_cache()
EOF
}

main() {
  echo "# tokenmix GPU report ($(date -u +%FT%TZ))" >"$REPORT"
  local libs
  libs=$(cuda_libs) && export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  link_fixtures
  machine
  tests
  local rc=$?
  kernel_bench
  torch_bench
  echo "report: $REPORT (tests $([[ $rc == 0 ]] && echo passed || echo FAILED))"
  return $rc
}

main
