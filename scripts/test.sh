#!/usr/bin/env bash
# Everything CI checks, on a fresh machine: ONNX Runtime from PyPI, the
# dependency rule of the three stages, formatting, and the whole test suite
# (golden numerics on ONNX Runtime's CPU provider, graph dumps, bad and
# hostile input, end-to-end CLI runs, wan-serve over loopback HTTP and a
# real redis-server, and bounded fuzzing: tests/fuzz.rs runs 10,000 inputs
# per parser; scripts/fuzz.sh --long runs a million).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

# Tools the tests call: ffprobe (an independent check of the MP4 writer) and
# redis-server (wan-serve's scale-out tests start their own on loopback).
# Installed from Debian's packages when missing (CI runs as root).
need_apt=()
command -v ffprobe >/dev/null || need_apt+=(ffmpeg)
command -v redis-server >/dev/null || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]} (apt-get)" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
  else
    echo "FAIL: ${need_apt[*]} missing and not root: install them (apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
fi

echo "== dependency rule: the runtime links no build-time code" >&2
tree="$(cargo tree -p wanrt-runtime -e normal,build --prefix none --no-dedupe)"
for forbidden in wanrt-graphs wanrt-compiler prost safetensors memmap2 tokio axum hyper redis; do
  if grep -q "^$forbidden v" <<<"$tree"; then
    echo "FAIL: wanrt-runtime depends on $forbidden" >&2
    exit 1
  fi
done
echo "ok: wanrt-runtime depends on none of wanrt-graphs, wanrt-compiler, prost, safetensors, memmap2, tokio, axum, hyper, redis" >&2

echo "== rustfmt" >&2
cargo fmt --all -- --check

echo "== clippy" >&2
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== tests" >&2
cargo build --workspace --bins --quiet
cargo test --workspace --no-fail-fast "$@"
