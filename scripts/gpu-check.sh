#!/usr/bin/env bash
# One-command GPU check: ONNX Runtime CUDA vs PyTorch on the same DiT weights.
#
#   scripts/gpu-check.sh [--dry-run] [--out FILE] [--configs "small 1.3b"] [--iters N]
#                        [--cache-steps N]
#
# On a machine with an NVIDIA GPU, the CUDA libraries and ONNX Runtime's GPU
# build (ORT_DYLIB_PATH → onnxruntime-gpu 1.31.1's libonnxruntime.so; see
# docs/MEASUREMENTS.md for carrying it), it measures in one run, per config
# (a small launch-bound DiT, ~1,280 tokens; Wan2.1 T2V-1.3B at 832×480×81,
# 32,760 tokens; random weights from one seed, bf16):
#   - wan-compile of diffusers' WanTransformer3DModel saved with those weights;
#   - ORT CUDA: session creation, first run, plain runs, runs on bound device
#     buffers, CUDA-graph replay (and that a replay reads new latents written
#     into the bound buffer), pinned vs pageable copies;
#   - PyTorch (diffusers, SDPA flash and cuDNN) on the same inputs, and the
#     output difference;
#   - the step cache (docs/WAN.md §15): the pipeline's bound denoising loop
#     (stage graphs, CFG, UniPC) over --cache-steps steps (default 10) from
#     one random start, without a cache and with MagCache at the published
#     T2V-1.3B ratios (resampled to those steps) and preset, its residuals on
#     the host and then on the device (--cache-residency host, device):
#     block-stack calls, wall time, speed-up, cache bytes. On random weights
#     MagCache's schedule is the real model's (it depends only on the table
#     and the step count);
# and appends one table per config to --out (default out/gpu-check.md), the
# ratio printed last. Budget: under 8 minutes on an H100/H200. The step-cache
# item adds 2 (warm-up) + 2·N + 2 × MagCache's calls (8 at N = 10) DiT
# forwards per config: 38 at N = 10, i.e. about 38 times the plain run the
# table reports, plus the stage and step-cache sessions' creation.
#
# --dry-run runs everything but the GPU calls on this CPU box: the tiny
# fixture model, fp32, ort-cpu (bound host buffers; CUDA graphs and pinned
# copies reported as skipped), and PyTorch's math backend on the CPU where
# torch and diffusers are installed (otherwise the table says it skipped).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

dry=0; out="$ROOT/out/gpu-check.md"; configs="small 1.3b"; iters=10; cache_steps=10
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --out) out="$2"; shift 2 ;;
    --configs) configs="$2"; shift 2 ;;
    --iters) iters="$2"; shift 2 ;;
    --cache-steps) cache_steps="$2"; shift 2 ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$iters" in ''|*[!0-9]*|0) echo "gpu-check: --iters must be a positive integer" >&2; exit 2 ;; esac
case "$cache_steps" in ''|*[!0-9]*|0) echo "gpu-check: --cache-steps must be a positive integer" >&2; exit 2 ;; esac

if [ "$dry" = 1 ]; then
  configs="fixture"; backend="ort-cpu"; precision="fp32"; device="cpu"
  source "$ROOT/scripts/env.sh"
else
  backend="ort-cuda"; precision="bf16"; device="cuda"
  command -v nvidia-smi >/dev/null || { echo "gpu-check: no nvidia-smi: not a GPU machine (use --dry-run)" >&2; exit 1; }
  [ -n "${ORT_DYLIB_PATH:-}" ] || { echo "gpu-check: set ORT_DYLIB_PATH to onnxruntime-gpu's libonnxruntime.so" >&2; exit 1; }
  for c in $configs; do
    case "$c" in small|1.3b) ;; *) echo "gpu-check: unknown config '$c' (small, 1.3b)" >&2; exit 2 ;; esac
  done
fi

BIN="${WANRT_BIN:-$ROOT/target/release}"
if [ ! -x "$BIN/wan-compile" ] || [ ! -x "$BIN/wan-gpu-check" ]; then
  cargo build --release --quiet -p wanrt-compiler -p wanrt --bin wan-compile --bin wan-gpu-check
fi
work="${WANRT_GPU_CHECK_WORK:-$(mktemp -d)}"
mkdir -p "$(dirname "$out")"
{
  echo "# wanrt GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
  if [ "$dry" = 1 ]; then echo "dry run on $(nproc) CPU cores (no GPU calls)"; else
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/GPU: /'; fi
  echo "ONNX Runtime: ${ORT_DYLIB_PATH:-?}"
  python3 -c "import torch; print('torch', torch.__version__)" 2>/dev/null || echo "torch: not installed"
} | tee "$out"

ratios=()
for c in $configs; do
  d="$work/$c"
  echo "== $c: model" >&2
  python3 "$ROOT/scripts/gpu_check.py" make --config "$c" --out "$d" --device "$device"
  read -r w h f tl batch < <(python3 -c "import json,sys; c=json.load(open('$d/config.json')); print(c['width'], c['height'], c['frames'], c['text_len'], c['batch'])")
  echo "== $c: PyTorch" >&2
  python3 "$ROOT/scripts/gpu_check.py" torch --dir "$d" --device "$device" --iters "$iters"
  echo "== $c: wan-compile ($precision)" >&2
  "$BIN/wan-compile" --model "$d/transformer" --out "$d/engines" --overwrite --networks dit \
    --precision "$precision" --width "$w" --height "$h" --frames "$f" --text-len "$tl" --batch "$batch"
  echo "== $c: ONNX Runtime ($backend)" >&2
  ref=(); [ -f "$d/torch.safetensors" ] && ref=(--reference "$d/torch.safetensors")
  "$BIN/wan-gpu-check" --engines "$d/engines" --input "$d/inputs.safetensors" \
    --output "$d/ort.safetensors" --json "$d/ort.json" --backend "$backend" --iters "$iters" \
    --cache-steps "$cache_steps" "${ref[@]}"
  r="$(python3 "$ROOT/scripts/gpu_check.py" table --dir "$d" --label "$c" --table "$out" | tail -1)"
  ratios+=("$r")
done
echo "table: $out"
for r in "${ratios[@]}"; do echo "$r"; done
