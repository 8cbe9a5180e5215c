//! Shared vocabulary of the three wanrt stages.
//!
//! Nothing here does I/O beyond bounded reads of small files (the JSON
//! manifest, safetensors headers) and output checks: this
//! crate is what lets `graphs`, `compiler` and `runtime` agree on shapes,
//! names and dtypes without depending on each other.

pub mod attention;
pub mod config;
pub mod contract;
pub mod dtype;
pub mod engines;
pub mod error;
pub mod fsio;
pub mod manifest;
pub mod profile;
pub mod quant;
pub mod safetensors;

pub use attention::AttentionKind;
pub use config::{ClipVisionConfig, DitConfig, Task, Umt5Config, VaeConfig};
pub use contract::{CacheGraph, Dim, DitStage, NetworkContract, NetworkKind, TensorSpec};
pub use dtype::{DType, Precision};
pub use error::{Error, ErrorKind};
pub use manifest::Manifest;
pub use profile::{BatchMode, Profile};
pub use quant::{QuantLayers, QuantScheme, Quantization};
