//! Prebuilt GPU engines in an artifact directory, and what they were built
//! for.
//!
//! `wan-compile --engine tensorrt` builds each network's TensorRT engines
//! ahead of time through ONNX Runtime's TensorRT provider and writes them
//! (with the provider's timing cache) under `engines/` of the artifact
//! directory. An engine is only valid for the GPU architecture and the
//! library versions it was built with, so the manifest keys it to them; the
//! runtime compares the key with the machine before creating a session and
//! refuses a mismatch, naming what differs and how to rebuild (never a
//! silent rebuild).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::contract::NetworkKind;
use crate::dtype::Precision;

/// The directory, inside the artifact directory, that holds the engines.
pub const ENGINE_DIR: &str = "engines";

/// Which kind of prebuilt engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// TensorRT engines built by ONNX Runtime's TensorRT provider (its
    /// engine cache), loaded by `--backend ort-tensorrt`.
    Tensorrt,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Tensorrt => "tensorrt",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an engine is specific to: the GPU and the libraries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineTarget {
    /// GPU name as the driver reports it (`NVIDIA H200`).
    pub gpu_name: String,
    /// Compute capability (`9.0`).
    pub compute_capability: String,
    /// `libnvinfer` version (`10.13.0`).
    pub tensorrt_version: String,
    /// CUDA runtime version (`13.0`).
    pub cuda_version: String,
    /// ONNX Runtime version (`1.31.1`).
    pub onnxruntime_version: String,
}

impl EngineTarget {
    /// The fields that differ between what the engines were built for
    /// (`self`) and `machine`, as `field: built X, here Y`. An empty list
    /// means the engines can be loaded. The GPU name is informational: the
    /// compute capability decides (two boards of one architecture share
    /// engines).
    pub fn differences(&self, machine: &EngineTarget) -> Vec<String> {
        let mut d = Vec::new();
        let mut cmp = |what: &str, built: &str, here: &str| {
            if built != here {
                d.push(format!(
                    "{what}: built for {built}, this machine has {here}"
                ));
            }
        };
        cmp(
            "GPU compute capability",
            &format!("{} ({})", self.compute_capability, self.gpu_name),
            &format!("{} ({})", machine.compute_capability, machine.gpu_name),
        );
        cmp(
            "TensorRT",
            &self.tensorrt_version,
            &machine.tensorrt_version,
        );
        cmp("CUDA", &self.cuda_version, &machine.cuda_version);
        cmp(
            "ONNX Runtime",
            &self.onnxruntime_version,
            &machine.onnxruntime_version,
        );
        // Only the architecture makes engines incompatible.
        if self.compute_capability == machine.compute_capability {
            d.retain(|l| !l.starts_with("GPU compute capability"));
        }
        d
    }
}

/// One file of the engine cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineFile {
    /// Relative to the artifact directory (`engines/…`).
    pub file: String,
    pub bytes: u64,
    /// `sha256:` of the file.
    pub digest: String,
}

/// The engines of one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkEngines {
    /// The provider's engine-cache prefixes, one per graph ([`cache_prefix`]):
    /// the network name and a digest of the graph and weights, because the
    /// provider's own cache key ignores weight values.
    pub cache_prefixes: Vec<String>,
    /// The graph and weights the engines were built from (must equal the
    /// network entry's).
    pub graph_digest: String,
    pub weights_digest: String,
    pub precision: Precision,
    pub files: Vec<EngineFile>,
}

/// The `engines` section of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineRecord {
    pub kind: EngineKind,
    pub target: EngineTarget,
    /// Profile name the engines were built for (the networks' profile).
    pub profile: String,
    pub networks: BTreeMap<NetworkKind, NetworkEngines>,
    /// The provider's timing cache, shared by every network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing_cache: Option<EngineFile>,
}

impl EngineRecord {
    /// Every file the record names.
    pub fn files(&self) -> impl Iterator<Item = &EngineFile> {
        self.networks
            .values()
            .flat_map(|n| n.files.iter())
            .chain(self.timing_cache.iter())
    }
}

/// The cache prefix of one graph's engines: the network's name plus the
/// first 16 hex digits of sha256(graph digest ‖ weights digest). Chunked
/// networks (the VAE) have one prefix per chunk graph.
pub fn cache_prefix(network: &str, graph_digest: &str, weights_digest: &str) -> String {
    let d = crate::fsio::sha256_bytes(format!("{graph_digest}\n{weights_digest}").as_bytes());
    let hex = d.trim_start_matches("sha256:");
    format!("{network}_{}", &hex[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> EngineTarget {
        EngineTarget {
            gpu_name: "NVIDIA H200".into(),
            compute_capability: "9.0".into(),
            tensorrt_version: "10.13.0".into(),
            cuda_version: "13.0".into(),
            onnxruntime_version: "1.31.1".into(),
        }
    }

    #[test]
    fn differences_name_each_field_and_ignore_the_board_name() {
        let a = target();
        assert!(a.differences(&a).is_empty());
        let mut h100 = target();
        h100.gpu_name = "NVIDIA H100 80GB HBM3".into();
        assert!(a.differences(&h100).is_empty(), "same architecture");
        let mut other = target();
        other.compute_capability = "8.9".into();
        other.gpu_name = "NVIDIA L40S".into();
        other.tensorrt_version = "10.14.1".into();
        let d = a.differences(&other);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("9.0 (NVIDIA H200)") && d[0].contains("8.9 (NVIDIA L40S)"));
        assert!(d[1].contains("TensorRT") && d[1].contains("10.14.1"));
    }

    #[test]
    fn prefixes_change_with_the_weights() {
        let a = cache_prefix("dit", "sha256:aa", "sha256:bb");
        let b = cache_prefix("dit", "sha256:aa", "sha256:bc");
        assert!(a.starts_with("dit_") && a.len() == 4 + 16);
        assert_ne!(a, b);
    }
}
