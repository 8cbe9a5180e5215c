//! Checkpoint loading for the layouts users actually have (`docs/WAN.md` §8).
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

use wanrt_core::config::{
    AutoencoderKlWanConfig, HfClipVisionConfig, HfUmt5Config, WanModelConfig,
    WanTransformer3DModelConfig, read_json,
};
use wanrt_core::{ClipVisionConfig, DitConfig, NetworkKind, Task, Umt5Config, VaeConfig};
use wanrt_graphs::names::{self, Derivation};
use wanrt_graphs::{SourceTensor, WeightSource};

use self::pth::PthCheckpoint;
use self::safetensors::SafetensorsSet;
use crate::error::{Error, Result};

/// Drops the resident pages of `mmap[start..start + len]` (whole pages
/// inside the range only).
///
/// Export reads each tensor once, in order; without this, every page it
/// touched stays mapped into the process and its resident size grows to the
/// size of the checkpoint (57 GB for the 14B DiT), even though the pages are
/// clean and evictable.
pub(crate) fn release_pages(mmap: &memmap2::Mmap, start: usize, len: usize) {
    const PAGE: usize = 4096;
    let base = mmap.as_ptr() as usize;
    let first = (base + start).div_ceil(PAGE) * PAGE - base;
    let end = ((base + start + len) / PAGE) * PAGE - base;
    if end > first {
        // SAFETY: the map is a read-only, private file mapping: MADV_DONTNEED
        // only discards this process's copies of clean pages; any later
        // access (a borrowed slice is still valid) faults them back in from
        // the unchanged file. Errors only mean the pages stay resident.
        let _ = unsafe {
            mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, end - first)
        };
    }
}

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
    let text = wanrt_core::fsio::read_capped_string(config, wanrt_core::config::MAX_CONFIG_BYTES)
        .map_err(|e| Error::io(config, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
        file: config.to_path_buf(),
        reason: format!("not valid JSON: {e}"),
    })?;
    Ok(v.get("_class_name")
        .and_then(|c| c.as_str())
        .map(str::to_string))
}

/// What `model_index.json` must say for each component of a Wan2.1
/// diffusers pipeline: `[library, class]` (classes as diffusers and
/// transformers save them; the tokenizer in either its fast or slow form).
const COMPONENTS: &[(&str, &[&str])] = &[
    ("transformer", &["WanTransformer3DModel"]),
    ("text_encoder", &["UMT5EncoderModel"]),
    (
        "tokenizer",
        &["T5TokenizerFast", "T5Tokenizer", "AutoTokenizer"],
    ),
    ("vae", &["AutoencoderKLWan"]),
];
const I2V_COMPONENTS: &[(&str, &[&str])] = &[
    (
        "image_encoder",
        &["CLIPVisionModelWithProjection", "CLIPVisionModel"],
    ),
    ("image_processor", &["CLIPImageProcessor"]),
];

/// Parses and checks `<root>/model_index.json` (diffusers layout): a Wan
/// pipeline class, and every component the pipeline needs listed with its
/// expected class. Garbage is an error naming the file and the component.
/// (A listed component whose directory is missing fails, by file, only when
/// that network is compiled: a partial copy still compiles the rest.)
pub fn check_model_index(root: &Path) -> Result<()> {
    let file = root.join("model_index.json");
    let text = wanrt_core::fsio::read_capped_string(&file, wanrt_core::config::MAX_CONFIG_BYTES)
        .map_err(|e| Error::io(&file, e))?;
    check_model_index_text(&text).map_err(|reason| Error::Config {
        file: file.clone(),
        reason,
    })
}

/// [`check_model_index`] on the text.
pub fn check_model_index_text(text: &str) -> std::result::Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let class = v.get("_class_name").and_then(|c| c.as_str());
    let (i2v, vace) = match class {
        Some("WanPipeline") => (false, false),
        Some("WanImageToVideoPipeline") => (true, false),
        Some("WanVACEPipeline") => (false, true),
        other => {
            return Err(format!(
                "_class_name {other:?}: expected \"WanPipeline\", \"WanImageToVideoPipeline\" or \"WanVACEPipeline\""
            ));
        }
    };
    let needed = COMPONENTS
        .iter()
        .chain(if i2v { I2V_COMPONENTS } else { &[] });
    for (name, classes) in needed {
        let classes: &[&str] = match *name {
            "transformer" if vace => &["WanVACETransformer3DModel"],
            _ => classes,
        };
        let entry = v.get(*name).and_then(|e| e.as_array());
        let cls = match entry.map(Vec::as_slice) {
            Some([lib, cls]) if lib.is_string() => cls.as_str(),
            _ => None,
        };
        match cls {
            Some(c) if classes.contains(&c) => {}
            _ => {
                return Err(format!(
                    "component '{name}' is {}, expected [library, one of {classes:?}]",
                    v.get(*name)
                        .map_or("missing".to_string(), |e| e.to_string())
                ));
            }
        }
    }
    Ok(())
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
            check_model_index(root)?;
            let t = root.join("transformer");
            return match class_name(&t.join("config.json"))?.as_deref() {
                Some("WanTransformer3DModel" | "WanVACETransformer3DModel") => {
                    Ok(found(Layout::Diffusers, t))
                }
                other => Err(Error::UnknownLayout {
                    dir: root.to_path_buf(),
                    reason: format!(
                        "model_index.json present but transformer/config.json has _class_name {other:?}, expected \"WanTransformer3DModel\" or \"WanVACETransformer3DModel\""
                    ),
                }),
            };
        }
        match class_name(&root.join("config.json"))?.as_deref() {
            Some("WanModel" | "VaceWanModel") => Ok(found(Layout::Original, root.to_path_buf())),
            Some("WanTransformer3DModel" | "WanVACETransformer3DModel") => {
                Ok(found(Layout::Diffusers, root.to_path_buf()))
            }
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
        let text =
            wanrt_core::fsio::read_capped_string(&file, wanrt_core::config::MAX_CONFIG_BYTES)
                .map_err(|e| Error::io(&file, e))?;
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
        let naming = match self.layout {
            Layout::Original => Naming::Canonical,
            Layout::Diffusers => Naming::DiffusersDit,
        };
        Ok(Checkpoint::new(Stored::Safetensors(set), naming))
    }

    /// The root of a full model (diffusers: the directory with
    /// `model_index.json`), or an error naming what is missing when only a
    /// transformer directory was given.
    fn full_root(&self, what: &str) -> Result<&Path> {
        if self.layout == Layout::Diffusers && !self.root.join("model_index.json").is_file() {
            return Err(Error::MissingFile {
                file: self.root.join("model_index.json"),
                reason: format!(
                    "the {what} needs the full diffusers model directory, not transformer/ alone"
                ),
            });
        }
        Ok(&self.root)
    }

    fn pth(&self, file: &str) -> Result<Stored> {
        let path = self.root.join(file);
        if !path.is_file() {
            return Err(Error::MissingFile {
                file: path,
                reason: "required by the original layout".into(),
            });
        }
        Ok(Stored::Pth(PthCheckpoint::open(&path).map_err(|e| {
            Error::Checkpoint {
                file: path.clone(),
                reason: e.to_string(),
            }
        })?))
    }

    /// Which networks this model has.
    pub fn networks(&self, task: Task) -> Vec<NetworkKind> {
        let mut v = vec![NetworkKind::Dit];
        let full = self.layout == Layout::Original || self.root.join("model_index.json").is_file();
        if full {
            v.extend([
                NetworkKind::TextEncoder,
                NetworkKind::VaeEncoder,
                NetworkKind::VaeDecoder,
            ]);
            if task.has_image() {
                v.push(NetworkKind::ImageEncoder);
            }
        }
        v.sort();
        v
    }

    /// UMT5 config, weights and the tokenizer file.
    pub fn text_encoder(&self) -> Result<(Umt5Config, Checkpoint, PathBuf)> {
        let root = self.full_root("text encoder")?;
        Ok(match self.layout {
            Layout::Diffusers => {
                let dir = root.join("text_encoder");
                let file = dir.join("config.json");
                let cfg = Umt5Config::from_hf(&read_json::<HfUmt5Config>(&file)?, &file)?;
                let set = SafetensorsSet::open_stem(&dir, "model")?;
                let ck = Checkpoint::new(Stored::Safetensors(set), Naming::DiffusersT5)
                    .with_ignorable(|n| n == "encoder.embed_tokens.weight");
                (cfg, ck, root.join("tokenizer/tokenizer.json"))
            }
            Layout::Original => {
                let ck = Checkpoint::new(
                    self.pth("models_t5_umt5-xxl-enc-bf16.pth")?,
                    Naming::Canonical,
                );
                (
                    Umt5Config::xxl(),
                    ck,
                    root.join("google/umt5-xxl/tokenizer.json"),
                )
            }
        })
    }

    /// CLIP visual tower config and weights (I2V models).
    pub fn image_encoder(&self) -> Result<(ClipVisionConfig, Checkpoint)> {
        let root = self.full_root("image encoder")?;
        Ok(match self.layout {
            Layout::Diffusers => {
                let dir = root.join("image_encoder");
                let file = dir.join("config.json");
                let cfg =
                    ClipVisionConfig::from_hf(&read_json::<HfClipVisionConfig>(&file)?, &file)?;
                let set = SafetensorsSet::open_stem(&dir, "model")?;
                let ck = Checkpoint::new(Stored::Safetensors(set), Naming::DiffusersClip)
                    .with_ignorable(|n| {
                        n.starts_with("vision_model.post_layernorm.")
                            || n == "visual_projection.weight"
                    });
                (cfg, ck)
            }
            Layout::Original => {
                let stored = self.pth("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")?;
                let ck = Checkpoint::new(stored, Naming::Canonical).with_ignorable(|n| {
                    !n.starts_with("visual.")
                        || n.starts_with("visual.post_norm.")
                        || n == "visual.head"
                });
                (ClipVisionConfig::vit_h_14(), ck)
            }
        })
    }

    /// VAE config and weights.
    pub fn vae(&self) -> Result<(VaeConfig, Checkpoint)> {
        let root = self.full_root("VAE")?;
        Ok(match self.layout {
            Layout::Diffusers => {
                let dir = root.join("vae");
                let file = dir.join("config.json");
                let cfg =
                    VaeConfig::from_diffusers(&read_json::<AutoencoderKlWanConfig>(&file)?, &file)?;
                let set = SafetensorsSet::open_stem(&dir, "diffusion_pytorch_model")?;
                (
                    cfg,
                    Checkpoint::new(Stored::Safetensors(set), Naming::DiffusersVae),
                )
            }
            Layout::Original => (
                VaeConfig::wan21(),
                Checkpoint::new(self.pth("Wan2.1_VAE.pth")?, Naming::Canonical),
            ),
        })
    }
}

/// Stored tensors: memory-mapped safetensors (single or sharded) or a
/// torch `.pth` archive read without executing its pickle.
pub enum Stored {
    Safetensors(SafetensorsSet),
    Pth(PthCheckpoint),
}

impl Stored {
    /// A tensor's shape from the header alone (no data read, no CRC-32).
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self {
            Stored::Safetensors(s) => s.tensor(name).map(|t| t.shape),
            Stored::Pth(p) => p.info(name).map(|i| i.shape.clone()),
        }
    }

    fn get(&self, name: &str) -> wanrt_graphs::Result<Option<SourceTensor<'_>>> {
        Ok(match self {
            Stored::Safetensors(s) => s.tensor(name),
            Stored::Pth(p) => p.tensor(name)?,
        })
    }

    fn names(&self) -> Vec<&str> {
        match self {
            Stored::Safetensors(s) => s.names().collect(),
            Stored::Pth(p) => p.names().collect(),
        }
    }
    fn file_of(&self, name: &str) -> Option<PathBuf> {
        match self {
            Stored::Safetensors(s) => s.file_of(name).map(Path::to_path_buf),
            Stored::Pth(p) => p.info(name).map(|_| p.path().to_path_buf()),
        }
    }
    fn describe(&self) -> String {
        match self {
            Stored::Safetensors(s) => s.describe(),
            Stored::Pth(p) => p.path().display().to_string(),
        }
    }
    fn total_bytes(&self) -> u64 {
        match self {
            Stored::Safetensors(s) => s.total_bytes(),
            Stored::Pth(p) => p.total_bytes(),
        }
    }
    fn release(&self, name: &str) {
        match self {
            Stored::Safetensors(s) => s.release(name),
            Stored::Pth(p) => p.release(name),
        }
    }
}

/// How the canonical (original Wan2.1) names graph builders ask for map to
/// the stored names: the one renaming table of `wanrt_graphs::names`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// Stored under the canonical names (original layout).
    Canonical,
    DiffusersDit,
    DiffusersT5,
    DiffusersVae,
    DiffusersClip,
}

/// A checkpoint seen through canonical names, recording what was used.
pub struct Checkpoint {
    stored: Stored,
    naming: Naming,
    used: RefCell<BTreeSet<String>>,
    /// The stored tensors handed out last, released on the next fetch.
    last: RefCell<Vec<String>>,
    /// Stored tensors the networks legitimately do not use (CLIP's final
    /// norm and projection, the unused text tower, ...).
    ignorable: fn(&str) -> bool,
}

fn nothing_ignorable(_: &str) -> bool {
    false
}

fn concat_rows<'a>(parts: Vec<SourceTensor<'a>>) -> Option<SourceTensor<'a>> {
    let first = parts.first()?;
    let (dtype, mut shape) = (first.dtype, first.shape.clone());
    if parts
        .iter()
        .any(|p| p.dtype != dtype || p.shape.get(1..) != shape.get(1..))
    {
        return None;
    }
    shape[0] = parts.iter().map(|p| p.shape[0]).sum();
    let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
    for p in &parts {
        data.extend_from_slice(&p.data);
    }
    Some(SourceTensor {
        dtype,
        shape,
        data: std::borrow::Cow::Owned(data),
    })
}

fn transpose2d(t: SourceTensor<'_>) -> Option<SourceTensor<'_>> {
    let [r, c] = t.shape[..] else { return None };
    let e = t.dtype.size();
    let mut out = vec![0u8; t.data.len()];
    for i in 0..r {
        for j in 0..c {
            out[(j * r + i) * e..(j * r + i + 1) * e]
                .copy_from_slice(&t.data[(i * c + j) * e..(i * c + j + 1) * e]);
        }
    }
    Some(SourceTensor {
        dtype: t.dtype,
        shape: vec![c, r],
        data: std::borrow::Cow::Owned(out),
    })
}

impl Checkpoint {
    pub fn new(stored: Stored, naming: Naming) -> Self {
        Checkpoint {
            stored,
            naming,
            used: RefCell::new(BTreeSet::new()),
            last: RefCell::new(Vec::new()),
            ignorable: nothing_ignorable,
        }
    }

    pub fn with_ignorable(mut self, f: fn(&str) -> bool) -> Self {
        self.ignorable = f;
        self
    }

    /// The stored names a canonical name is made of.
    fn stored_names(&self, canonical: &str) -> Option<Vec<(String, Derivation)>> {
        let one = |n: Option<String>| n.map(|n| vec![(n, Derivation::Same)]);
        match self.naming {
            Naming::Canonical => one(Some(canonical.to_string())),
            Naming::DiffusersDit => one(names::dit_to_diffusers(canonical)),
            Naming::DiffusersT5 => one(names::t5_to_diffusers(canonical)),
            Naming::DiffusersVae => one(names::vae_to_diffusers(canonical)),
            Naming::DiffusersClip => names::clip_to_diffusers(canonical),
        }
    }

    /// Stored names no graph asked for (and that are not ignorable): a
    /// config/weights mismatch.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        let mut v: Vec<String> = self
            .stored
            .names()
            .into_iter()
            .filter(|n| !used.contains(*n) && !(self.ignorable)(n))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }

    /// Every stored tensor under its canonical name, with its shape (read
    /// from the header; no data is touched). Names the renaming table does
    /// not know are left out; `unused` reports them.
    pub fn canonical_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v: Vec<(String, Vec<usize>)> = self
            .stored
            .names()
            .into_iter()
            .filter_map(|stored| {
                let canonical = match self.naming {
                    Naming::Canonical => Some(stored.to_string()),
                    Naming::DiffusersDit => names::dit_from_diffusers(stored),
                    Naming::DiffusersT5 => names::t5_from_diffusers(stored),
                    Naming::DiffusersVae => names::vae_from_diffusers(stored),
                    // CLIP tensors can be parts of one canonical tensor.
                    Naming::DiffusersClip => None,
                }?;
                Some((canonical, self.stored.shape(stored)?))
            })
            .collect();
        v.sort();
        v
    }

    /// Bytes of all tensors.
    pub fn total_bytes(&self) -> u64 {
        self.stored.total_bytes()
    }

    pub fn describe(&self) -> String {
        self.stored.describe()
    }
}

impl WeightSource for Checkpoint {
    fn tensor(&self, name: &str) -> wanrt_graphs::Result<Option<SourceTensor<'_>>> {
        self.tensor_with_shape(name, &[])
    }

    fn tensor_with_shape(
        &self,
        name: &str,
        shape: &[usize],
    ) -> wanrt_graphs::Result<Option<SourceTensor<'_>>> {
        // Graph builders consume a tensor before asking for the one after
        // next: drop the pages of the previous fetch (see `release_pages`).
        for prev in self.last.borrow_mut().drain(..) {
            self.stored.release(&prev);
        }
        let Some(parts) = self.stored_names(name) else {
            return Ok(None);
        };
        let mut got = Vec::with_capacity(parts.len());
        for (stored, _) in &parts {
            match self.stored.get(stored)? {
                Some(t) => got.push(t),
                None => return Ok(None),
            }
        }
        for (stored, _) in &parts {
            self.used.borrow_mut().insert(stored.clone());
        }
        self.last
            .borrow_mut()
            .extend(parts.iter().map(|(n, _)| n.clone()));
        let derivation = parts[0].1;
        let t = match derivation {
            Derivation::Same => got.pop(),
            Derivation::Rows { .. } => concat_rows(got),
            Derivation::Transpose => got.pop().and_then(transpose2d),
            Derivation::Reshape => got.pop().map(|mut t| {
                // Same elements, the canonical (leading-1) shape when it fits.
                if !shape.is_empty() && shape.iter().product::<usize>() == t.numel() {
                    t.shape = shape.to_vec();
                }
                t
            }),
        };
        Ok(t)
    }

    fn location(&self, name: &str) -> String {
        let parts = self.stored_names(name).unwrap_or_default();
        let stored: Vec<&str> = parts.iter().map(|(n, _)| n.as_str()).collect();
        let file = parts
            .first()
            .and_then(|(n, _)| self.stored.file_of(n))
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| self.stored.describe());
        match stored.as_slice() {
            [only] if *only == name => file,
            [] => format!("{file} (no stored name maps to it)"),
            many => format!("{file} (as '{}')", many.join("' + '")),
        }
    }
}
