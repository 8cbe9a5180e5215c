#!/usr/bin/env bash
# The main job on a fresh machine: compile the tiny built-in Wan2.1 model
# (tests/fixtures/t2v-tiny, random weights in the real diffusers layout) and
# run its DiT through the runtime on ONNX Runtime's CPU provider, then check
# the result against the reference implementation's output.
#
#   scripts/demo.sh [--model DIR] [wan-compile flags...]
#
# With --model pointing at a real Wan2.1 checkpoint, it compiles that instead
# (and skips the tiny model's reference check).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

cargo build --release --quiet --bin wan-compile --bin wan-run
BIN="$ROOT/target/release"
OUT="$ROOT/out/demo"
case_dir="$ROOT/tests/fixtures/t2v-tiny"

if [ "${1:-}" = "--model" ]; then
  model="$2"; shift 2
  "$BIN/wan-compile" --model "$model" --out "$OUT/engines" --overwrite "$@"
  echo "compiled $model into $OUT/engines"
  exit 0
fi

echo "== wan-compile: tiny T2V model (diffusers layout) -> $OUT/engines" >&2
"$BIN/wan-compile" --model "$case_dir/model" --out "$OUT/engines" --overwrite \
  --width 32 --height 32 --frames 9 --text-len 32 --precision fp32
echo "== wan-run component dit on the reference inputs (batch 2: cond + uncond)" >&2
"$BIN/wan-run" component dit --engines "$OUT/engines" \
  --input "$case_dir/golden/dit.safetensors" --output "$OUT/noise_pred.safetensors" --overwrite
"$BIN/wan-run" compare --input "$OUT/noise_pred.safetensors" \
  --reference "$case_dir/golden/dit.safetensors" --tensor noise_pred --atol 1e-4 --rtol 1e-3
echo "done: artifacts in $OUT/engines, output in $OUT/noise_pred.safetensors"
