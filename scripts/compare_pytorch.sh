#!/usr/bin/env bash
# tokenmix vs timm/PyTorch and ONNX Runtime on this machine. Creates a venv with torch, timm and
# onnxruntime outside the repo
# (TOKENMIX_VENV, default ../tokenmix-venv next to the checkout), builds tokenmix in release and
# runs scripts/compare_pytorch.py with any arguments given here.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${TOKENMIX_VENV:-$root/../tokenmix-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch timm safetensors onnx onnxruntime onnxscript einops PyWavelets
fi
(cd "$root" && cargo build --release --quiet)
exec "$venv/bin/python" "$root/scripts/compare_pytorch.py" "$@"
