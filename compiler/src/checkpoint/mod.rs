//! Checkpoint loading for the layouts users actually have (`WAN_SPEC.md` §7).
//!
//! * **original** — `config.json` (`_class_name: WanModel`) beside
//!   `diffusion_pytorch_model.safetensors` or shards with
//!   `diffusion_pytorch_model.safetensors.index.json`;
//! * **diffusers** — `model_index.json` at the root and `transformer/` with
//!   `config.json` (`WanTransformer3DModel`), shards and index; pointing at
//!   the `transformer/` directory itself works too.
//!
//! The layout is detected from the config files' `_class_name`, never from
//! tensor counts. Tensors are memory-mapped and handed to the graph builders
//! under their original names through the one renaming table
//! (`wanrt_graphs::names`).

pub mod pickle;
pub mod pth;
pub mod safetensors;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use wanrt_core::DitConfig;
use wanrt_core::config::{WanModelConfig, WanTransformer3DModelConfig};
use wanrt_graphs::{SourceTensor, WeightSource};

use self::safetensors::SafetensorsSet;
use crate::error::{Error, Result};

/// The two checkpoint layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Original,
    Diffusers,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Original => "original",
            Layout::Diffusers => "diffusers",
        }
    }
}

/// A model directory with its layout detected.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub root: PathBuf,
    pub layout: Layout,
    /// The directory holding the DiT config and weights.
    pub dit_dir: PathBuf,
}

fn class_name(config: &Path) -> Result<Option<String>> {
    if !config.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(config).map_err(|e| Error::io(config, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
        file: config.to_path_buf(),
        reason: format!("not valid JSON: {e}"),
    })?;
    Ok(v.get("_class_name")
        .and_then(|c| c.as_str())
        .map(str::to_string))
}

impl ModelDir {
    /// Detects the layout of `root`.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::UnknownLayout {
                dir: root.to_path_buf(),
                reason: "not a directory".into(),
            });
        }
        let found = |layout, dit_dir: PathBuf| ModelDir {
            root: root.to_path_buf(),
            layout,
            dit_dir,
        };
        if root.join("model_index.json").is_file() {
            let t = root.join("transformer");
            return match class_name(&t.join("config.json"))?.as_deref() {
                Some("WanTransformer3DModel") => Ok(found(Layout::Diffusers, t)),
                other => Err(Error::UnknownLayout {
                    dir: root.to_path_buf(),
                    reason: format!(
                        "model_index.json present but transformer/config.json has _class_name {other:?}, expected \"WanTransformer3DModel\""
                    ),
                }),
            };
        }
        match class_name(&root.join("config.json"))?.as_deref() {
            Some("WanModel") => Ok(found(Layout::Original, root.to_path_buf())),
            Some("WanTransformer3DModel") => Ok(found(Layout::Diffusers, root.to_path_buf())),
            Some(other) => Err(Error::UnknownLayout {
                dir: root.to_path_buf(),
                reason: format!("config.json has _class_name \"{other}\", which is not a Wan2.1 DiT"),
            }),
            None => Err(Error::UnknownLayout {
                dir: root.to_path_buf(),
                reason: "neither model_index.json (diffusers layout) nor config.json with _class_name WanModel (original layout) was found".into(),
            }),
        }
    }

    /// The DiT config, normalised.
    pub fn dit_config(&self) -> Result<DitConfig> {
        let file = self.dit_dir.join("config.json");
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        let bad = |e: serde_json::Error| Error::Config {
            file: file.clone(),
            reason: e.to_string(),
        };
        Ok(match self.layout {
            Layout::Original => {
                let c: WanModelConfig = serde_json::from_str(&text).map_err(bad)?;
                DitConfig::from_original(&c, &file)?
            }
            Layout::Diffusers => {
                let c: WanTransformer3DModelConfig = serde_json::from_str(&text).map_err(bad)?;
                DitConfig::from_diffusers(&c, &file)?
            }
        })
    }

    /// The DiT weights, memory-mapped.
    pub fn dit_weights(&self) -> Result<Checkpoint> {
        let set = SafetensorsSet::open_stem(&self.dit_dir, "diffusion_pytorch_model")?;
        Ok(Checkpoint::new(set, self.layout))
    }
}

/// A checkpoint seen through canonical (original Wan2.1) names.
pub struct Checkpoint {
    set: SafetensorsSet,
    layout: Layout,
    used: RefCell<BTreeSet<String>>,
}

impl Checkpoint {
    pub fn new(set: SafetensorsSet, layout: Layout) -> Self {
        Checkpoint {
            set,
            layout,
            used: RefCell::new(BTreeSet::new()),
        }
    }

    fn stored_name(&self, canonical: &str) -> Option<String> {
        match self.layout {
            Layout::Original => Some(canonical.to_string()),
            Layout::Diffusers => wanrt_graphs::names::dit_to_diffusers(canonical),
        }
    }

    /// Stored names no graph asked for: a config/weights mismatch.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        self.set
            .names()
            .filter(|n| !used.contains(*n))
            .map(str::to_string)
            .collect()
    }

    /// Bytes of all tensors.
    pub fn total_bytes(&self) -> u64 {
        self.set.total_bytes()
    }
}

impl WeightSource for Checkpoint {
    fn tensor(&self, name: &str) -> wanrt_graphs::Result<Option<SourceTensor<'_>>> {
        let Some(stored) = self.stored_name(name) else {
            return Ok(None);
        };
        let t = self.set.tensor(&stored);
        if t.is_some() {
            self.used.borrow_mut().insert(stored);
        }
        Ok(t)
    }

    fn location(&self, name: &str) -> String {
        let stored = self.stored_name(name).unwrap_or_else(|| name.to_string());
        match self.set.file_of(&stored) {
            Some(f) if stored != name => format!("{} (as '{stored}')", f.display()),
            Some(f) => f.display().to_string(),
            None if stored != name => format!("{} (looked for '{stored}')", self.set.describe()),
            None => self.set.describe(),
        }
    }
}
