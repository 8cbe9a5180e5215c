//! The native TensorRT backend.
//!
//! The top-level `build.rs` probes for TensorRT (`TENSORRT_ROOT`, or the
//! usual system paths) and, when it finds headers and libraries, builds the
//! C++ bridge in `cpp/` and sets `cfg(wanrt_tensorrt)`. Without it, this
//! typed "not available" path is all there is: the ONNX Runtime backends
//! (including its TensorRT provider) still work.

use crate::error::Error;

/// Why the native backend cannot be used in this build.
pub fn unavailable() -> Error {
    Error::TensorRtUnavailable(format!(
        "this build of wanrt has no native TensorRT backend ({}); rebuild with TensorRT installed \
         (TENSORRT_ROOT=/path/to/TensorRT cargo build --release), or use --backend ort-tensorrt",
        status()
    ))
}

/// What the build script found, for diagnostics.
pub fn status() -> &'static str {
    env!("WANRT_TENSORRT_STATUS")
}
