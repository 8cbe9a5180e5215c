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

use crate::config::{Task, VaeConfig};
use crate::contract::{NetworkContract, NetworkKind, TensorSpec};
use crate::dtype::Precision;
use crate::error::{Error, Result};
use crate::profile::Profile;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const FORMAT: &str = "wanrt-artifacts";
/// Bumped whenever the layout or a contract changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
/// Largest `manifest.json` read (a real one is a few tens of KiB).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// Largest element count a tensor spec may declare (2^36).
pub const MAX_SPEC_ELEMENTS: u64 = 1 << 36;

fn check_digest(d: &str) -> std::result::Result<(), String> {
    match d.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(()),
        _ => Err(format!("'{d}' is not sha256:<64 hex digits>")),
    }
}

/// A path inside the artifact directory: relative, only normal components.
fn check_relative(p: &str) -> std::result::Result<(), String> {
    let rel = Path::new(p);
    let plain = !p.is_empty()
        && rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        Err(format!("path '{p}' leaves the artifact directory"))
    }
}

fn check_spec(t: &TensorSpec) -> std::result::Result<(), String> {
    if t.name.is_empty() || t.shape.len() > 8 {
        return Err(format!(
            "tensor spec '{}' of rank {}",
            t.name,
            t.shape.len()
        ));
    }
    let mut n = 1u64;
    for d in &t.shape {
        if let crate::contract::Dim::Fixed(v) = d {
            n = n
                .checked_mul(*v)
                .filter(|&n| n <= MAX_SPEC_ELEMENTS)
                .ok_or_else(|| {
                    format!(
                        "tensor '{}' declares more than {MAX_SPEC_ELEMENTS} elements",
                        t.name
                    )
                })?;
        }
    }
    Ok(())
}

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
    /// For the DiT: its stage graphs (sharing `external_data` with `file`,
    /// the whole graph), which the runtime composes; `inputs`/`outputs`
    /// stay the contract of the whole call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<ChunkGraph>,
    /// For the DiT with stages: its step-cache graphs
    /// ([`crate::CacheGraph`], no weights), which run only under a step
    /// cache kept in the backend's memory (older manifests have none: the
    /// runtime then keeps the cache on the host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_graphs: Vec<ChunkGraph>,
    /// How the graphs write attention (`wan-compile --attention`; older
    /// manifests: the opset-23 `Attention` op, all they could hold).
    #[serde(default)]
    pub attention: crate::AttentionKind,
    /// For a quantized DiT (`--precision fp8|int8`): the scheme, the layer
    /// set and the scales; `precision` above is then the base precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<crate::quant::Quantization>,
}

impl NetworkEntry {
    /// Every graph file of the entry with its digest: the whole graph,
    /// then chunk and stage graphs.
    pub fn graph_files(&self) -> impl Iterator<Item = (&String, &String)> {
        std::iter::once((&self.file, &self.graph_digest)).chain(
            self.chunks
                .iter()
                .chain(&self.stages)
                .chain(&self.cache_graphs)
                .map(|c| (&c.file, &c.graph_digest)),
        )
    }

    /// The step-cache graph of `role`, when the entry has them.
    pub fn cache_graph(&self, role: crate::CacheGraph) -> Option<&ChunkGraph> {
        self.cache_graphs.iter().find(|s| s.role == role.name())
    }

    /// The stage graph of `role`, when the entry has stages.
    pub fn stage(&self, role: crate::DitStage) -> Option<&ChunkGraph> {
        self.stages.iter().find(|s| s.role == role.name())
    }

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

    /// Reads and validates `<dir>/manifest.json` (at most [`MAX_MANIFEST_BYTES`],
    /// a regular file): format, version, and every value [`Manifest::validate`]
    /// checks. File-level checks (existence, sizes, digests, containment)
    /// belong to the loader that opens the files.
    pub fn read(dir: &Path) -> Result<Self> {
        let file = Self::path(dir);
        let text =
            crate::fsio::read_capped_string(&file, MAX_MANIFEST_BYTES).map_err(|source| {
                Error::Io {
                    file: file.clone(),
                    source,
                }
            })?;
        Self::from_json(&text, &file)
    }

    /// Parses and validates manifest text; `file` names it in errors.
    pub fn from_json(text: &str, file: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Manifest {
            file: file.to_path_buf(),
            reason,
        };
        // Look at format and version before the full schema, so a manifest
        // from another version says so instead of failing on a field.
        let head: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
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
            serde_json::from_str(text).map_err(|e| bad(format!("schema mismatch: {e}")))?;
        m.validate().map_err(bad)?;
        Ok(m)
    }

    /// Every value that will size an allocation, index an array or name a
    /// file is checked here, before anything is loaded:
    ///
    /// * at least one network; each profile within [`Profile::validate`]'s
    ///   limits (sides ≤ 4096, frames ≤ 1025, text ≤ 4096, batch 1..=64);
    /// * every digest present and of the form `sha256:<64 hex>` (a version-1
    ///   manifest without one is refused, so a check cannot be switched off
    ///   by deleting its field); every network has its external-data file;
    /// * every path a plain relative path inside the artifact directory;
    /// * every tensor spec of rank ≤ 8 with an element count ≤ 2^36;
    /// * chunked networks have exactly a `first` and a `step` graph;
    /// * the VAE's config (latent statistics of z_dim entries, std finite
    ///   and positive) passes [`VaeConfig::validate`].
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.networks.is_empty() {
            return Err("lists no network".into());
        }
        for f in self.engines.iter().flat_map(|e| e.files()) {
            check_relative(&f.file).map_err(|e| format!("engine file: {e}"))?;
        }
        for (kind, net) in &self.networks {
            let bad = |what: String| format!("network {kind}: {what}");
            net.profile.validate().map_err(|e| bad(e.to_string()))?;
            check_digest(&net.graph_digest).map_err(|e| bad(format!("graph_digest {e}")))?;
            check_digest(&net.weights_digest).map_err(|e| bad(format!("weights_digest {e}")))?;
            let Some(data) = &net.external_data else {
                return Err(bad(
                    "has no external_data (every network of this version has one)".into(),
                ));
            };
            let chunk_files = net
                .chunks
                .iter()
                .chain(&net.stages)
                .chain(&net.cache_graphs)
                .map(|c| &c.file);
            for p in std::iter::once(&net.file)
                .chain(std::iter::once(data))
                .chain(chunk_files)
            {
                check_relative(p).map_err(bad)?;
            }
            for t in net.inputs.iter().chain(&net.outputs) {
                check_spec(t).map_err(bad)?;
            }
            if !net.chunks.is_empty() {
                let roles: Vec<&str> = net.chunks.iter().map(|c| c.role.as_str()).collect();
                if roles != ["first", "step"] {
                    return Err(bad(format!(
                        "chunk graphs {roles:?}, expected [\"first\", \"step\"]"
                    )));
                }
                for c in &net.chunks {
                    check_digest(&c.graph_digest)
                        .map_err(|e| bad(format!("chunk {} graph_digest {e}", c.role)))?;
                    for t in c.inputs.iter().chain(&c.outputs) {
                        check_spec(t).map_err(bad)?;
                    }
                }
            }
            for c in &net.cache_graphs {
                if crate::CacheGraph::from_name(&c.role).is_none() {
                    return Err(bad(format!("unknown step-cache graph '{}'", c.role)));
                }
                check_digest(&c.graph_digest)
                    .map_err(|e| bad(format!("{} graph_digest {e}", c.role)))?;
                for t in c.inputs.iter().chain(&c.outputs) {
                    check_spec(t).map_err(bad)?;
                }
            }
            if net.inputs.is_empty() || net.outputs.is_empty() {
                return Err(bad("has no inputs or no outputs".into()));
            }
            if matches!(kind, NetworkKind::VaeEncoder | NetworkKind::VaeDecoder) {
                let cfg: VaeConfig = serde_json::from_value(net.config.clone())
                    .map_err(|e| bad(format!("config: {e}")))?;
                cfg.validate().map_err(|e| bad(format!("config: {e}")))?;
            }
        }
        Ok(())
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
                weights_digest: format!("sha256:{}", "0".repeat(64)),
                graph_digest: format!("sha256:{}", "1".repeat(64)),
                inputs: c.inputs,
                outputs: c.outputs,
                tools: Tools {
                    wanrt: "0.1.0".into(),
                    onnx_opset: 23,
                    onnx_ir_version: 11,
                },
                chunks: vec![],
                loras: vec![],
                stages: vec![],
                cache_graphs: vec![],
                attention: crate::AttentionKind::Onnx,
                quantization: None,
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

    #[test]
    fn values_that_size_allocations_are_validated() {
        let m = sample();
        let f = Path::new("manifest.json");
        let base: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        let mut vae_net = base["networks"]["dit"].clone();
        vae_net["config"] = serde_json::to_value(VaeConfig::wan21()).unwrap();
        let with_vae = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v = base.clone();
            v["networks"]["vae_decoder"] = vae_net.clone();
            edit(&mut v);
            v
        };
        assert!(Manifest::from_json(&with_vae(&|_| {}).to_string(), f).is_ok());
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "batch",
                Box::new(|v| {
                    v["networks"]["dit"]["profile"]["batch"] = serde_json::json!({"fixed": 0})
                }),
            ),
            (
                "65536",
                Box::new(|v| v["networks"]["dit"]["profile"]["width"] = 65536.into()),
            ),
            (
                "frames",
                Box::new(|v| v["networks"]["dit"]["profile"]["frames"] = 100_001.into()),
            ),
            (
                "latents_mean",
                Box::new(|v| {
                    v["networks"]["vae_decoder"]["config"]["latents_mean"] = vec![0.0f32; 3].into()
                }),
            ),
            (
                "latents_std",
                Box::new(|v| v["networks"]["vae_decoder"]["config"]["latents_std"][2] = 0.0.into()),
            ),
            (
                "graph_digest",
                Box::new(|v| v["networks"]["dit"]["graph_digest"] = "".into()),
            ),
            (
                "external_data",
                Box::new(|v| {
                    v["networks"]["dit"]
                        .as_object_mut()
                        .unwrap()
                        .remove("external_data");
                }),
            ),
            (
                "leaves",
                Box::new(|v| v["networks"]["dit"]["file"] = "/etc/passwd".into()),
            ),
            (
                "leaves",
                Box::new(|v| v["networks"]["dit"]["external_data"] = "a/../../b".into()),
            ),
            (
                "elements",
                Box::new(|v| {
                    v["networks"]["dit"]["inputs"][0]["shape"] = vec![1u64 << 20, 1 << 20].into()
                }),
            ),
            (
                "no network",
                Box::new(|v| v["networks"] = serde_json::json!({})),
            ),
        ];
        for (want, edit) in cases {
            let e = Manifest::from_json(&with_vae(&*edit).to_string(), f).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Manifest);
            assert!(e.to_string().contains(want), "'{e}' lacks '{want}'");
        }
    }
}
