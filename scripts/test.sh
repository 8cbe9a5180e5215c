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

echo "== dependency rule: the runtime links no build-time code and no application layer" >&2
# deps_of CRATE: every crate CRATE links (normal and build dependencies).
deps_of() { cargo tree -p "$1" -e normal,build --prefix none --no-dedupe; }
# forbid CRATE WHY DEP...: fails if CRATE links any DEP.
forbid() {
  local crate="$1" why="$2"; shift 2
  local tree; tree="$(deps_of "$crate")"
  for dep in "$@"; do
    if grep -q "^$dep v" <<<"$tree"; then
      echo "FAIL: $crate depends on $dep ($why)" >&2
      exit 1
    fi
  done
  echo "ok: $crate depends on none of $* ($why)" >&2
}
# The execution core: no build-time code, no server stack, no CLI/media layer.
forbid wanrt-runtime "build-time code" wanrt-graphs wanrt-compiler prost safetensors memmap2
forbid wanrt-runtime "the server stack" tokio axum hyper redis
forbid wanrt-runtime "the application layer" wanrt-media wanrt-app clap indicatif ctrlc image openh264 png
# Media I/O: the runtime and the decoders/encoders, nothing of the CLI or server.
forbid wanrt-media "the CLI and server" wanrt-app clap indicatif ctrlc tokio axum wanrt-graphs wanrt-compiler
# The server: runtime + media, never the CLI or build-time code.
forbid wanrt-server "the CLI and build-time code" wanrt-app indicatif ctrlc wanrt-graphs wanrt-compiler prost

echo "== rustfmt" >&2
cargo fmt --all -- --check

echo "== clippy" >&2
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== tests" >&2
cargo build --workspace --bins --quiet
cargo test --workspace --no-fail-fast "$@"
