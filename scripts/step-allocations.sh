#!/usr/bin/env bash
# Host allocations per denoising step, measured from outside the process
# (heaptrack sees ONNX Runtime's C++ allocations as well as wanrt's): the
# tiny T2V model at 256×256×17, a whole generation with 4 and with 12
# steps; the difference of the counts of allocations ≥ 64 KiB divided by
# 8 is the count per step. Needs heaptrack (heaptrack_print) on PATH.
#
#   scripts/step-allocations.sh [WAN_RUN] [WAN_COMPILE]
#
# WAN_RUN / WAN_COMPILE default to target/release (built if missing).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
if ! command -v heaptrack >/dev/null || ! command -v heaptrack_print >/dev/null; then
  echo "skipped: heaptrack is not installed here (apt-get install heaptrack)" >&2
  exit 0
fi
run="${1:-}"
comp="${2:-}"
if [ -z "$run" ] || [ -z "$comp" ]; then
  cargo build --release --quiet -p wanrt-app --bin wan-run -p wanrt-compiler --bin wan-compile
  run="${run:-target/release/wan-run}"
  comp="${comp:-target/release/wan-compile}"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$comp" --model tests/fixtures/t2v-tiny/model --out "$work/engines" \
  --width 256 --height 256 --frames 17 --text-len 32 --precision fp32 >/dev/null
big() { # allocations of >= 64 KiB in a heaptrack histogram (size count)
  awk '$1 >= 65536 { n += $2 } END { print n + 0 }' "$1"
}
declare -A count
for steps in 4 12; do
  heaptrack -o "$work/ht$steps" "$run" --engines "$work/engines" \
    --prompt "A cat and a dog baking a cake in a kitchen." --steps "$steps" --seed 1 \
    --output "$work/out$steps.mp4" >/dev/null 2>&1
  heaptrack_print -f "$work/ht$steps".* -H "$work/hist$steps.txt" >/dev/null
  count[$steps]="$(big "$work/hist$steps.txt")"
  echo "$steps steps: ${count[$steps]} allocations >= 64 KiB in the whole run" >&2
done
per=$(( (count[12] - count[4]) ))
echo "per step: $per / 8 allocations >= 64 KiB ($(awk "BEGIN { print $per / 8 }"))"
