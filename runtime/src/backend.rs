//! Execution backends, chosen explicitly.
//!
//! A provider that fails to register is an error, never a silent fallback to
//! the CPU (`ort`'s `error_on_failure`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where networks execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Backend {
    /// ONNX Runtime, CPU provider (what CI runs).
    #[default]
    OrtCpu,
    /// ONNX Runtime, CUDA provider.
    OrtCuda,
    /// ONNX Runtime, TensorRT provider.
    OrtTensorRt,
    /// Native TensorRT engines through the C++ bridge (builds with TensorRT).
    TensorRt,
}

impl Backend {
    pub const ALL: [Backend; 4] = [
        Backend::OrtCpu,
        Backend::OrtCuda,
        Backend::OrtTensorRt,
        Backend::TensorRt,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Backend::OrtCpu => "ort-cpu",
            Backend::OrtCuda => "ort-cuda",
            Backend::OrtTensorRt => "ort-tensorrt",
            Backend::TensorRt => "tensorrt",
        }
    }

    /// Whether this backend runs on a GPU.
    pub fn is_gpu(self) -> bool {
        self != Backend::OrtCpu
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown backend '{s}' (expected ort-cpu, ort-cuda, ort-tensorrt or tensorrt)"
                )
            })
    }
}
