//! The execution core of wanrt: executes compiled Wan2.1 artifacts.
//!
//! The runtime reads an artifact directory written by `wan-compile`
//! (`manifest.json` + typed ONNX graphs), checks it, and runs its networks on
//! ONNX Runtime (CPU, CUDA or TensorRT execution providers, loaded
//! dynamically; there is no native TensorRT backend in this build). It links
//! no build-time code: no graph builder, no protobuf writer, no checkpoint
//! loader. Nor does it carry the application layer: the `wan-run` CLI,
//! progress bars and signals live in `wanrt-app`, image decoding and video
//! writing in `wanrt-media`; the pipeline takes decoded images and returns
//! tensors.
//!
//! ```no_run
//! use std::path::Path;
//! use wanrt_runtime::{Artifacts, Backend, tensorfile};
//! use wanrt_core::NetworkKind;
//!
//! let artifacts = Artifacts::open(Path::new("engines/t2v-480p"))?;
//! let mut dit = artifacts.load(NetworkKind::Dit, Backend::OrtCpu)?;
//! let inputs = tensorfile::read(Path::new("dit-inputs.safetensors"))?;
//! let outputs = dit.run(&inputs)?;
//! tensorfile::write(Path::new("noise_pred.safetensors"), &outputs, false)?;
//! # Ok::<(), wanrt_runtime::Error>(())
//! ```

pub mod attention;
pub mod backend;
pub mod buffer;
pub mod cache;
pub mod chunked;
pub mod dit;
pub mod engine;
pub mod engines;
pub mod error;
pub mod exec;
pub mod flf2v;
pub mod image;
pub mod ortlib;
pub mod pipeline;
pub mod placement;
pub mod prompt;
pub mod schedule;
pub mod session;
pub mod sidecar;
pub mod tensorfile;
pub mod text;
pub mod trt;
pub mod vace;

pub use backend::Backend;
pub use buffer::{Buffer, Memory};
pub use engine::{Artifacts, Network};
pub use error::{Error, ErrorKind, Result};
pub use exec::{ConvAlgoSearch, ExecutionSettings};
pub use tensorfile::HostTensor;

/// Peak resident memory of this process in MiB (Linux `VmHWM`), for the
/// binaries' reports; `None` where `/proc` does not say.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
