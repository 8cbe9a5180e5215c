//! Execution settings per backend, as one value: which GPU, whether TF32 may
//! round fp32 matrix work, how cuDNN picks convolution algorithms for the
//! VAE, the memory arena and its limit, and CUDA graphs for the VAE's
//! steady-state chunk call. Sessions are created from it
//! ([`crate::session::create_with`]) and the sidecar records it.
//!
//! Settings a backend cannot honour are refused with a typed error naming
//! the flag, never ignored: TF32, device id, algorithm search and CUDA
//! graphs mean nothing to ONNX Runtime's CPU provider.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::backend::Backend;
use crate::error::{Error, Result};

/// cuDNN's convolution algorithm search (ONNX Runtime's
/// `cudnn_conv_algo_search`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ConvAlgoSearch {
    /// Benchmarks every algorithm on the first call of each shape (the
    /// provider's default; the VAE's convolutions have fixed shapes, so the
    /// cost is paid once per loaded network).
    #[default]
    Exhaustive,
    /// cuDNN's heuristic ranking, no benchmarking.
    Heuristic,
    /// The implicit-precomputed-GEMM algorithm, whatever the shape.
    Default,
}

impl ConvAlgoSearch {
    pub fn name(self) -> &'static str {
        match self {
            ConvAlgoSearch::Exhaustive => "exhaustive",
            ConvAlgoSearch::Heuristic => "heuristic",
            ConvAlgoSearch::Default => "default",
        }
    }
}

impl fmt::Display for ConvAlgoSearch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ConvAlgoSearch {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        [
            ConvAlgoSearch::Exhaustive,
            ConvAlgoSearch::Heuristic,
            ConvAlgoSearch::Default,
        ]
        .into_iter()
        .find(|a| a.name() == s)
        .ok_or_else(|| format!("unknown search '{s}' (expected exhaustive, heuristic or default)"))
    }
}

/// What a session is for: decides which of the settings apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionRole {
    /// Encoders and whole graphs.
    #[default]
    General,
    /// A DiT stage graph: several run one after the other per step, so
    /// their intra-op threads must not spin-wait between calls (each
    /// stage's spinning pool would take the cores the next stage needs).
    DitStage,
    /// A VAE graph run once per call (the first chunk).
    Vae,
    /// The VAE's steady-state chunk graph: captured as a CUDA graph when
    /// [`ExecutionSettings::cuda_graph`] is on.
    VaeStep,
}

/// How sessions are created on a backend. `Default` is what `wan-run` does
/// without flags: GPU 0, TF32 off (fp32 stays fp32), exhaustive cuDNN
/// search for the VAE, ONNX Runtime's memory arena without a limit, no CUDA
/// graphs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecutionSettings {
    /// CUDA device ordinal (`--device-id`).
    pub device_id: i32,
    /// Let fp32 matrix work round through TF32 (`--tf32`). ONNX Runtime
    /// 1.31.1's CUDA provider turns it on by default, which breaks fp32
    /// parity; wanrt turns it off unless asked.
    pub tf32: bool,
    /// cuDNN convolution algorithm search for the VAE's sessions
    /// (`--cudnn-conv-algo-search`); the DiT has one convolution and uses
    /// the heuristic.
    pub vae_conv_algo_search: ConvAlgoSearch,
    /// ONNX Runtime's memory arena (`--no-arena`: the CPU provider then
    /// allocates every intermediate tensor afresh; the CUDA provider's arena
    /// grows by exactly what is requested instead of doubling).
    pub arena: bool,
    /// Cap of the CUDA provider's arena in bytes (`--gpu-mem-limit`).
    pub memory_limit: Option<u64>,
    /// Capture the VAE's steady-state chunk call as CUDA graphs, one per
    /// ping-pong cache set (`--cuda-graph`; ort-cuda only).
    pub cuda_graph: bool,
}

impl Default for ExecutionSettings {
    fn default() -> Self {
        ExecutionSettings {
            device_id: 0,
            tf32: false,
            vae_conv_algo_search: ConvAlgoSearch::Exhaustive,
            arena: true,
            memory_limit: None,
            cuda_graph: false,
        }
    }
}

impl ExecutionSettings {
    pub fn with_device_id(mut self, id: i32) -> Self {
        self.device_id = id;
        self
    }

    pub fn with_tf32(mut self, on: bool) -> Self {
        self.tf32 = on;
        self
    }

    pub fn with_vae_conv_algo_search(mut self, search: ConvAlgoSearch) -> Self {
        self.vae_conv_algo_search = search;
        self
    }

    pub fn with_arena(mut self, on: bool) -> Self {
        self.arena = on;
        self
    }

    pub fn with_memory_limit(mut self, bytes: Option<u64>) -> Self {
        self.memory_limit = bytes;
        self
    }

    pub fn with_cuda_graph(mut self, on: bool) -> Self {
        self.cuda_graph = on;
        self
    }

    /// Refuses settings `backend` cannot honour, naming the flag.
    pub fn check(&self, backend: Backend) -> Result<()> {
        let gpu_only = |flag: &str, what: &str| {
            Err(Error::arg(
                flag,
                format!("{what} needs a CUDA backend; --backend {backend} runs on the CPU"),
            ))
        };
        if !backend.is_gpu() {
            if self.tf32 {
                return gpu_only("--tf32", "TF32");
            }
            if self.device_id != 0 {
                return gpu_only("--device-id", "a device id");
            }
            if self.memory_limit.is_some() {
                return gpu_only("--gpu-mem-limit", "a GPU memory limit");
            }
            if self.vae_conv_algo_search != ConvAlgoSearch::Exhaustive {
                return gpu_only("--cudnn-conv-algo-search", "cuDNN algorithm search");
            }
        }
        if self.device_id < 0 {
            return Err(Error::arg(
                "--device-id",
                format!("device id {} is negative", self.device_id),
            ));
        }
        if self.cuda_graph && backend != Backend::OrtCuda {
            return Err(Error::arg(
                "--cuda-graph",
                format!(
                    "CUDA graphs of the VAE chunk loop are captured through ONNX Runtime's CUDA \
                     provider: use --backend ort-cuda (this run has --backend {backend}, which has none)"
                ),
            ));
        }
        Ok(())
    }

    /// The CUDA provider configured for a session of `role`.
    pub(crate) fn cuda_provider(&self, role: SessionRole) -> ort::ep::CUDA {
        use ort::ep::{self, cuda::ConvAlgorithmSearch};
        let search = match role {
            SessionRole::General | SessionRole::DitStage => ConvAlgorithmSearch::Heuristic,
            SessionRole::Vae | SessionRole::VaeStep => match self.vae_conv_algo_search {
                ConvAlgoSearch::Exhaustive => ConvAlgorithmSearch::Exhaustive,
                ConvAlgoSearch::Heuristic => ConvAlgorithmSearch::Heuristic,
                ConvAlgoSearch::Default => ConvAlgorithmSearch::Default,
            },
        };
        let mut cuda = ep::CUDA::default()
            .with_device_id(self.device_id)
            .with_tf32(self.tf32)
            .with_conv_algorithm_search(search)
            .with_cuda_graph(self.cuda_graph && role == SessionRole::VaeStep);
        if let Some(limit) = self.memory_limit {
            cuda = cuda.with_memory_limit(limit as usize);
        }
        if !self.arena {
            // The provider's arena cannot be switched off; growing it by
            // exactly what is requested comes closest.
            cuda = cuda.with_arena_extend_strategy(ep::ArenaExtendStrategy::SameAsRequested);
        }
        cuda
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_refuses_gpu_settings_naming_the_flag() {
        let cpu = Backend::OrtCpu;
        ExecutionSettings::default().check(cpu).unwrap();
        ExecutionSettings::default()
            .with_arena(false)
            .check(cpu)
            .unwrap();
        for (s, flag) in [
            (ExecutionSettings::default().with_tf32(true), "--tf32"),
            (
                ExecutionSettings::default().with_device_id(1),
                "--device-id",
            ),
            (
                ExecutionSettings::default().with_memory_limit(Some(1 << 30)),
                "--gpu-mem-limit",
            ),
            (
                ExecutionSettings::default().with_vae_conv_algo_search(ConvAlgoSearch::Heuristic),
                "--cudnn-conv-algo-search",
            ),
            (
                ExecutionSettings::default().with_cuda_graph(true),
                "--cuda-graph",
            ),
        ] {
            let e = s.check(cpu).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
            assert!(e.to_string().starts_with(flag), "{e}");
        }
        let e = ExecutionSettings::default()
            .with_cuda_graph(true)
            .check(Backend::OrtTensorRt)
            .unwrap_err();
        assert!(e.to_string().contains("ort-cuda"), "{e}");
        ExecutionSettings::default()
            .with_cuda_graph(true)
            .with_tf32(true)
            .check(Backend::OrtCuda)
            .unwrap();
    }

    #[test]
    fn settings_serialise_for_the_sidecar() {
        let v = serde_json::to_value(ExecutionSettings::default()).unwrap();
        assert_eq!(v["tf32"], false);
        assert_eq!(v["vae_conv_algo_search"], "exhaustive");
        assert_eq!(v["memory_limit"], serde_json::Value::Null);
    }
}
