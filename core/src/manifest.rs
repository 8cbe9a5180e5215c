//! `manifest.json`: the self-description of an artifact directory.
//!
//! ```text
//! <out>/manifest.json        this file
//! <out>/dit.onnx             typed ONNX graph (weights as external data)
//! <out>/dit.onnx.data        the weights, streamed at export
//! ```
//!
//! The runtime reads and validates it before loading anything and refuses a
//! mismatch (format version, missing or resized file, digest) with a typed
//! error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Task;
use crate::contract::{NetworkContract, NetworkKind, TensorSpec};
use crate::dtype::Precision;
use crate::error::{Error, Result};
use crate::profile::Profile;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const FORMAT: &str = "wanrt-artifacts";
/// Bumped whenever the layout or a contract changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

/// Versions of the tools that produced a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tools {
    pub wanrt: String,
    pub onnx_opset: i64,
    pub onnx_ir_version: i64,
}

/// Where the weights came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub task: Task,
    /// `diffusers`, `original` or `synthetic:<preset>`.
    pub layout: String,
    /// The model directory as given to `wan-compile`.
    pub source: String,
}

/// One graph of a network executed chunk by chunk (the VAE): `first` for
/// chunk 0, `step` for every later chunk; caches are the inputs/outputs
/// named `cache.{i}` / `cache.{i}.out`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkGraph {
    pub role: String,
    pub file: String,
    pub graph_digest: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// A LoRA merged into a network's weights at compile time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraRecord {
    /// The file name as given (no directory).
    pub file: String,
    /// `sha256:` of the file.
    pub sha256: String,
    /// The user scale s of W′ = W + s·ΔW.
    pub scale: f32,
    /// Key layout: `peft`, `kohya`, `comfy` or `aitoolkit`.
    pub layout: String,
    /// Number of the file's keys that were merged.
    pub keys_applied: usize,
    /// Number of the network's tensors the file changed.
    pub tensors_modified: usize,
    /// Keys that modified nothing (only with `--lora-ignore-unmatched`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmatched_keys: Vec<String>,
}

/// One compiled network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkEntry {
    /// Relative path of the `.onnx` file.
    pub file: String,
    /// Relative path of the external-data file, when the graph has one.
    pub external_data: Option<String>,
    /// Size of the external-data file in bytes (a truncated copy is refused).
    pub external_data_bytes: u64,
    pub precision: Precision,
    pub profile: Profile,
    /// The network's model config, as the graph builder read it.
    pub config: serde_json::Value,
    /// `sha256:` of the weights as written (the external-data bytes).
    pub weights_digest: String,
    /// `sha256:` of the `.onnx` file.
    pub graph_digest: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub tools: Tools,
    /// For chunked networks: the per-chunk graphs (sharing `external_data`);
    /// `inputs`/`outputs` above are then the contract of the whole call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkGraph>,
    /// LoRAs merged into the weights, in the order applied (older
    /// manifests have none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraRecord>,
}

impl NetworkEntry {
    pub fn contract(&self) -> NetworkContract {
        NetworkContract {
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub model: ModelInfo,
    pub networks: BTreeMap<NetworkKind, NetworkEntry>,
    /// Prebuilt GPU engines and what they were built for (`wan-compile
    /// --engine`); absent for ONNX-only artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engines: Option<crate::engines::EngineRecord>,
}

impl Manifest {
    pub fn new(model: ModelInfo) -> Self {
        Manifest {
            format: FORMAT.to_string(),
            version: FORMAT_VERSION,
            model,
            networks: BTreeMap::new(),
            engines: None,
        }
    }

    pub fn path(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_FILE)
    }

    /// Reads and checks format and version. File-level checks (existence,
    /// sizes, digests) belong to the loader that opens the files.
    pub fn read(dir: &Path) -> Result<Self> {
        let file = Self::path(dir);
        let text = std::fs::read_to_string(&file).map_err(|source| Error::Io {
            file: file.clone(),
            source,
        })?;
        let bad = |reason: String| Error::Manifest {
            file: file.clone(),
            reason,
        };
        // Look at format and version before the full schema, so a manifest
        // from another version says so instead of failing on a field.
        let head: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        if head.get("format").and_then(|v| v.as_str()) != Some(FORMAT) {
            return Err(bad(format!("not a {FORMAT} manifest")));
        }
        let version = head.get("version").and_then(|v| v.as_u64());
        if version != Some(FORMAT_VERSION as u64) {
            return Err(bad(format!(
                "format version {version:?}, this build reads version {FORMAT_VERSION}: recompile the artifacts with this wan-compile"
            )));
        }
        let m: Manifest =
            serde_json::from_str(&text).map_err(|e| bad(format!("schema mismatch: {e}")))?;
        for f in m.engines.iter().flat_map(|e| e.files()) {
            let rel = Path::new(&f.file);
            if rel.is_absolute()
                || rel
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(bad(format!(
                    "engine file '{}' leaves the artifact directory",
                    f.file
                )));
            }
        }
        for (kind, net) in &m.networks {
            let chunk_files = net.chunks.iter().map(|c| &c.file);
            for p in std::iter::once(&net.file)
                .chain(net.external_data.iter())
                .chain(chunk_files)
            {
                let rel = Path::new(p);
                if rel.is_absolute()
                    || rel
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(bad(format!(
                        "network {kind}: path '{p}' leaves the artifact directory"
                    )));
                }
            }
        }
        Ok(m)
    }

    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).expect("manifest serialises")
    }

    pub fn network(&self, kind: NetworkKind, dir: &Path) -> Result<&NetworkEntry> {
        self.networks.get(&kind).ok_or_else(|| Error::Manifest {
            file: Self::path(dir),
            reason: format!(
                "no network '{kind}' in this artifact directory (it has: {})",
                self.networks
                    .keys()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DitConfig;

    fn sample() -> Manifest {
        let profile = Profile::builtin("480p").unwrap();
        let cfg = DitConfig::t2v_1_3b();
        let c = NetworkContract::dit(&cfg, &profile).unwrap();
        let mut m = Manifest::new(ModelInfo {
            task: Task::T2v,
            layout: "diffusers".into(),
            source: "/models/x".into(),
        });
        m.networks.insert(
            NetworkKind::Dit,
            NetworkEntry {
                file: "dit.onnx".into(),
                external_data: Some("dit.onnx.data".into()),
                external_data_bytes: 10,
                precision: Precision::Bf16,
                profile,
                config: serde_json::to_value(&cfg).unwrap(),
                weights_digest: "sha256:00".into(),
                graph_digest: "sha256:11".into(),
                inputs: c.inputs,
                outputs: c.outputs,
                tools: Tools {
                    wanrt: "0.1.0".into(),
                    onnx_opset: 23,
                    onnx_ir_version: 11,
                },
                chunks: vec![],
                loras: vec![],
            },
        );
        m
    }

    #[test]
    fn round_trip_and_version_check() {
        let dir = std::env::temp_dir().join(format!("wanrt-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = sample();
        // A manifest without LoRAs has no `loras` field, as before they existed.
        assert!(!m.to_json().contains("loras"));
        std::fs::write(Manifest::path(&dir), m.to_json()).unwrap();
        assert_eq!(Manifest::read(&dir).unwrap(), m);
        let mut with_lora = m.clone();
        with_lora
            .networks
            .get_mut(&NetworkKind::Dit)
            .unwrap()
            .loras
            .push(LoraRecord {
                file: "style.safetensors".into(),
                sha256: "sha256:22".into(),
                scale: 0.7,
                layout: "kohya".into(),
                keys_applied: 60,
                tensors_modified: 20,
                unmatched_keys: vec![],
            });
        std::fs::write(Manifest::path(&dir), with_lora.to_json()).unwrap();
        assert_eq!(Manifest::read(&dir).unwrap(), with_lora);

        let mut v: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        v["version"] = 99.into();
        std::fs::write(Manifest::path(&dir), v.to_string()).unwrap();
        let e = Manifest::read(&dir).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Manifest);
        assert!(e.to_string().contains("version"), "{e}");

        let mut v: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        v["networks"]["dit"]["file"] = "../../etc/passwd".into();
        std::fs::write(Manifest::path(&dir), v.to_string()).unwrap();
        assert!(Manifest::read(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
