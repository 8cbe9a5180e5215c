# Sourced by the other scripts: makes ONNX Runtime's shared library available.
#
# The library comes from PyPI's onnxruntime wheel (never a build-time
# download). It is installed once into .ort/ of the checkout with pip, unless
# ORT_DYLIB_PATH already points at one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ORT_VERSION="${WANRT_ORT_VERSION:-1.31.1}"
ORT_PACKAGE="${WANRT_ORT_PACKAGE:-onnxruntime}"

if [ -z "${ORT_DYLIB_PATH:-}" ] || [ ! -e "${ORT_DYLIB_PATH}" ]; then
  lib="$ROOT/.ort/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION"
  if [ ! -f "$lib" ]; then
    echo "== installing $ORT_PACKAGE==$ORT_VERSION from PyPI into .ort/" >&2
    python3 -m pip install --quiet --disable-pip-version-check --no-deps \
      --target "$ROOT/.ort" "$ORT_PACKAGE==$ORT_VERSION" >&2
  fi
  export ORT_DYLIB_PATH="$lib"
fi
echo "== ONNX Runtime: $ORT_DYLIB_PATH" >&2
