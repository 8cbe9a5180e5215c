//! wanrt: Wan2.1 compiled ahead of time into typed ONNX graphs and engines.
//!
//! Three stages, three crates, one direction of dependency:
//!
//! * [`graphs`] — the networks as ONNX graph builders (build time only);
//! * [`compiler`] — `wan-compile`: checkpoints → typed ONNX → artifact directory;
//! * [`runtime`] — `wan-run`: artifact directory → executed networks → video.
//!
//! [`core`] holds what all three share: profiles, precisions, model configs,
//! the per-network I/O contracts and the artifact manifest.
//!
//! The runtime never links build-time code; `.ci/run` checks that with
//! `cargo tree`.

pub use wanrt_compiler as compiler;
pub use wanrt_core as core;
pub use wanrt_graphs as graphs;
pub use wanrt_runtime as runtime;
