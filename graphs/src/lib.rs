//! The Wan2.1 networks as typed ONNX graph builders.
//!
//! * [`onnx`] — the `onnx.proto` messages wanrt writes (prost, hand-written);
//! * [`builder`] — a typed graph builder that streams weights to external data;
//! * [`weights`] — the name-prefixing, shape-checking weight accessor;
//! * [`names`] — the one renaming table between checkpoint layouts;
//! * [`dit`], [`clip`] — one file per network;
//! * [`cache`] — the DiT's step-cache graphs (weightless);
//! * [`quant`] — FP8 Q/DQ and INT8 block linears, calibration taps;
//! * [`dump`] — a stable text dump of a graph for review and tests;
//! * [`emulate`] — a test rewrite that runs bf16 graphs on CPUs without bf16 kernels.

pub mod attention;
pub mod builder;
pub mod cache;
pub mod clip;
pub mod dit;
pub mod dump;
pub mod emulate;
pub mod error;
pub mod layers;
pub mod names;
pub mod onnx;
pub mod quant;
pub mod t5;
pub mod vace;
pub mod vae;
pub mod weights;

pub use builder::{ExportedGraph, GraphBuilder, Value};
pub use error::{Error, ErrorKind, Result};
pub use weights::{SourceTensor, WeightSource, Weights};
