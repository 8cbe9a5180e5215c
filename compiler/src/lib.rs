//! wan-compile: Wan2.1 checkpoints → typed ONNX graphs → artifact directory.
//!
//! [`checkpoint`] detects the layout and memory-maps the weights,
//! [`synthetic`] generates random weights at a real configuration, and
//! [`lora`] merges LoRA files into the DiT while it streams, [`quant`]
//! quantizes the DiT's block linears (FP8 calibrated, INT8), and
//! [`export`] drives the graph builders of `wanrt-graphs` and writes the
//! self-describing artifact directory the runtime loads.

pub mod checkpoint;
pub mod error;
pub mod export;
pub mod lora;
pub mod quant;
pub mod synthetic;

pub use error::{Error, ErrorKind, Result};
pub use export::{CompileOptions, ModelSource, compile};
