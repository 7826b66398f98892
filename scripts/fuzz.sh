#!/usr/bin/env bash
# Fuzz runs of the checkpoint/config loader, of image decoding + preprocessing, and of
# config.json -> model build across every family, and of PyTorch checkpoint reading. Needs cargo-fuzz (`cargo install cargo-fuzz`);
# runs on the stable toolchain through RUSTC_BOOTSTRAP.
#
# Usage: scripts/fuzz.sh [seconds per target, default 120] [target ...]
#   FUZZ_RUNS=1000000 scripts/fuzz.sh 900 build_model   # stop at 1,000,000 runs or 900 s
# Logs go to /tmp/fuzz-<target>.log; crashes to fuzz/artifacts/<target>/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-120}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(load_checkpoint decode_image build_model load_pth)
cd "$root/fuzz"
mkdir -p corpus/load_checkpoint corpus/decode_image corpus/build_model corpus/load_pth
# load_checkpoint seeds: each fixture's checkpoint under the poolformer_s12 config (mode byte 0)
# and under its own config (mode byte 1, then the config length in 4-byte units, the config
# padded with spaces to that length, then the checkpoint).
for d in "$root"/tests/fixtures/*/; do
  name="$(basename "$d")"
  [ -f "$d/model.safetensors" ] || continue
  { printf '\0'; cat "$d/model.safetensors"; } > "corpus/load_checkpoint/$name"
  words=$(( ($(wc -c < "$d/config.json") + 3) / 4 ))
  if [ "$words" -le 255 ]; then
    { printf '\1'; printf "\\$(printf '%03o' "$words")"
      head -c $((words * 4)) < <(cat "$d/config.json"; printf '   ')
      cat "$d/model.safetensors"; } > "corpus/load_checkpoint/$name.own"
  fi
done
cp "$root"/tests/fixtures/preprocess/*.png corpus/decode_image/
# build_model seeds: every fixture's config.json and a config of each zoo model.
for d in "$root"/tests/fixtures/*/; do
  [ -f "$d/config.json" ] && cp "$d/config.json" "corpus/build_model/fixture_$(basename "$d").json"
done
for name in $(grep -oh 'entry!("[^"]*"' "$root"/crates/models/src/*.rs | cut -d'"' -f2); do
  printf '{"architecture": "%s", "num_classes": 10}' "$name" > "corpus/build_model/zoo_$name.json"
done
# load_pth seeds: the torch.save fixtures.
cp "$root"/tests/fixtures/pth/*.pth corpus/load_pth/
# A dictionary of the config keys the fixtures use.
mkdir -p target; cat "$root"/tests/fixtures/*/config.json | grep -oE '"[a-z_0-9]+"' | sort -u > target/build_model.dict
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
  extra=()
  [ "$target" = build_model ] && extra+=(-dict=target/build_model.dict -max_len=4096)
  [ "$target" = load_checkpoint ] && extra+=(-max_len=2000000)
  [ "$target" = load_pth ] && extra+=(-max_len=600000)
  [ -n "${FUZZ_RUNS:-}" ] && extra+=(-runs="$FUZZ_RUNS")
  nice -n 19 cargo fuzz run --release "$target" "corpus/$target" -- -max_total_time="$secs" \
    -rss_limit_mb=2048 -print_final_stats=1 "${extra[@]}" 2>&1 | tee "/tmp/fuzz-$target.log" \
    | grep -E "^#[0-9]+\s+(DONE|INITED)|^Done|ERROR|panicked|SUMMARY|stat::number_of_executed_units|stat::average_exec_per_sec" || true
done
