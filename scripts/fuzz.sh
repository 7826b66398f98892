#!/usr/bin/env bash
# Short fuzz runs of the checkpoint/config loader and of image decoding + preprocessing.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); runs on the stable toolchain through
# RUSTC_BOOTSTRAP. Usage: scripts/fuzz.sh [seconds per target, default 120]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-120}"
cd "$root/fuzz"
mkdir -p corpus/load_checkpoint corpus/decode_image
# Seeds: the fixtures' checkpoints (mode byte 0 = fixture config) and the preprocessing PNGs.
for d in "$root"/tests/fixtures/*/; do
  [ -f "$d/model.safetensors" ] && { printf '\0'; cat "$d/model.safetensors"; } > "corpus/load_checkpoint/$(basename "$d")"
done
cp "$root"/tests/fixtures/preprocess/*.png corpus/decode_image/
export RUSTC_BOOTSTRAP=1
for target in load_checkpoint decode_image; do
  cargo fuzz run --release "$target" "corpus/$target" -- -max_total_time="$secs" -rss_limit_mb=4096 \
    -max_len=2000000 2>&1 | tee "/tmp/fuzz-$target.log" | grep -E "^#[0-9]+\s+(DONE|INITED)|^Done|ERROR|panicked|SUMMARY" || true
done
