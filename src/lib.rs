//! wanrt: Wan2.1 compiled ahead of time into typed ONNX graphs and engines.
//!
//! Stages in crates, one direction of dependency:
//!
//! * [`graphs`] — the networks as ONNX graph builders (build time only);
//! * [`compiler`] — `wan-compile`: checkpoints → typed ONNX → artifact directory;
//! * [`runtime`] — the execution core: artifact directory → executed networks
//!   → tensors;
//! * [`media`] — image decoding and video writing (the application layer,
//!   with the `wan-run` CLI of `wanrt-app` and the `wan-serve` server).
//!
//! [`core`] holds what they all share: profiles, precisions, model configs,
//! the per-network I/O contracts and the artifact manifest.
//!
//! The runtime never links build-time code nor the application layer;
//! `scripts/test.sh` checks that with
//! `cargo tree`.

pub use wanrt_compiler as compiler;
pub use wanrt_core as core;
pub use wanrt_graphs as graphs;
pub use wanrt_media as media;
pub use wanrt_runtime as runtime;
