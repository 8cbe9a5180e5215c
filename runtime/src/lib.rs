//! wan-run: executes compiled Wan2.1 artifacts.
//!
//! The runtime reads an artifact directory written by `wan-compile`
//! (`manifest.json` + typed ONNX graphs), checks it, and runs its networks on
//! ONNX Runtime (CPU, CUDA or TensorRT execution providers, loaded
//! dynamically) or natively on TensorRT when this build found it. It links no
//! build-time code: no graph builder, no protobuf writer, no checkpoint
//! loader.

pub mod error;
pub mod tensorfile;

pub use error::{Error, ErrorKind, Result};
pub use tensorfile::HostTensor;
