//! What the build knows about TensorRT.
//!
//! The top-level `build.rs` looks for TensorRT's headers and `libnvinfer`
//! (`TENSORRT_ROOT`, `/usr/local/tensorrt`, `/usr`) and records what it found
//! in `WANRT_TENSORRT_STATUS`. Nothing is compiled against TensorRT: this
//! build has no native TensorRT backend, and TensorRT is reached through ONNX
//! Runtime's TensorRT provider (`ort-tensorrt`). The status only makes the
//! refusal of `--backend tensorrt` say what the build saw.

/// What the build script found, for diagnostics.
pub fn status() -> &'static str {
    env!("WANRT_TENSORRT_STATUS")
}
