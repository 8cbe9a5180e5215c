#!/usr/bin/env bash
# Everything CI checks, on a fresh machine: ONNX Runtime from PyPI, the
# dependency rule of the three stages, formatting, and the whole test suite
# (golden numerics on ONNX Runtime's CPU provider, graph dumps, bad input,
# end-to-end CLI runs).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

echo "== dependency rule: the runtime links no build-time code" >&2
tree="$(cargo tree -p wanrt-runtime -e normal,build --prefix none --no-dedupe)"
for forbidden in wanrt-graphs wanrt-compiler prost safetensors memmap2; do
  if grep -q "^$forbidden v" <<<"$tree"; then
    echo "FAIL: wanrt-runtime depends on $forbidden" >&2
    exit 1
  fi
done
echo "ok: wanrt-runtime depends on none of wanrt-graphs, wanrt-compiler, prost, safetensors, memmap2" >&2

echo "== rustfmt" >&2
cargo fmt --all -- --check

echo "== tests" >&2
cargo build --workspace --bins --quiet
cargo test --workspace --no-fail-fast "$@"
