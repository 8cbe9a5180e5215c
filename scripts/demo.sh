#!/usr/bin/env bash
# The main job on a fresh machine: compile a Wan2.1 model and generate a video.
#
#   scripts/demo.sh                       # the tiny built-in model, a short clip
#   scripts/demo.sh --model DIR [wan-compile flags...] -- [wan-run flags...]
#
# Without --model it compiles tests/fixtures/t2v-tiny (a tiny randomly
# initialised Wan2.1 T2V model in the real diffusers layout: random weights,
# so the video is abstract motion, not a cat) at 128x128, 17 frames, and
# generates out/demo/video.mp4 (+ its JSON sidecar) on ONNX Runtime's CPU
# provider. With --model pointing at real Wan2.1 weights (either layout) it
# compiles those (default profile: 720p, or 480p for T2V-1.3B; bf16) and runs
# them with the official defaults; pass --backend ort-cuda after `--` on a GPU.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

cargo build --release --quiet -p wanrt-compiler -p wanrt-app
BIN="$ROOT/target/release"
OUT="$ROOT/out/demo"
mkdir -p "$OUT"

if [ "${1:-}" = "--model" ]; then
  model="$2"; shift 2
  compile_args=(); run_args=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do compile_args+=("$1"); shift; done
  [ "${1:-}" = "--" ] && shift
  run_args=("$@")
  "$BIN/wan-compile" --model "$model" --out "$OUT/engines" --overwrite "${compile_args[@]}"
  "$BIN/wan-run" --engines "$OUT/engines" --overwrite --output "$OUT/video.mp4" \
    --prompt "A cat and a dog baking a cake in a kitchen, cinematic lighting." "${run_args[@]}"
  exit 0
fi

echo "== wan-compile: the tiny T2V model (all networks, fp32) -> $OUT/engines" >&2
"$BIN/wan-compile" --model "$ROOT/tests/fixtures/t2v-tiny/model" --out "$OUT/engines" --overwrite \
  --width 128 --height 128 --frames 17 --text-len 32 --precision fp32
echo "== wan-run: text -> video" >&2
"$BIN/wan-run" --engines "$OUT/engines" --overwrite --seed 0 --steps 20 \
  --prompt "A cat and a dog baking a cake in a kitchen." --output "$OUT/video.mp4"
echo "done: $OUT/video.mp4 (settings in $OUT/video.mp4.json)"
