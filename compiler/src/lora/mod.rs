//! LoRAs merged into the DiT at compile time (`wan-compile --lora FILE[:SCALE]`).
//!
//! A LoRA file is memory-mapped, its key layout detected (see [`layouts`]),
//! every value checked finite, and nothing else is read up front. The merge
//! happens while the exporter streams the checkpoint: [`LoraMerge`] wraps the
//! checkpoint's [`WeightSource`] and, when the graph builder fetches a tensor
//! some LoRA modifies, widens it to float32, adds every file's delta in the
//! order given, and hands the merged float32 tensor on. Precision conversion
//! and the `[in, out]` transpose of linear weights happen after that, in the
//! builder, so the merge works in the checkpoint's `[out, in]` orientation and
//! memory stays near one tensor.
//!
//! The rule, per file with user scale s (docs/WAN.md §12.1):
//!
//! * low rank: W′ = W + s·(α/r)·(up · down), r = `down.shape[0]`;
//! * `.diff`: W′ = W + s·diff (any rank); `.diff_b`: b′ = b + s·diff_b;
//!   `.diff_m`: modulation′ = modulation + s·diff_m. α never applies to diffs.
//!
//! Every key must be used: a key that modifies no tensor of the DiT is an
//! error unless `--lora-ignore-unmatched`, which lists them in the manifest.

pub mod layouts;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use wanrt_core::DType;
use wanrt_core::manifest::LoraRecord;
use wanrt_graphs::{SourceTensor, WeightSource};

pub use self::layouts::Layout;
use self::layouts::{Family, Param, Role, parse_key};
use crate::checkpoint::safetensors::SafetensorsSet;
use crate::error::{Error, Result};

/// What went wrong with a LoRA file (`ErrorKind::Lora`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraProblem {
    /// Not a readable safetensors file (corrupt or truncated).
    Corrupt,
    /// A key no known layout writes, or keys of several layouts.
    UnknownLayout,
    /// A key that modifies no tensor of the DiT.
    Unmatched,
    /// Rank or shape of a key does not fit (each other or the tensor).
    Shape,
    /// A NaN or infinity, in the file or after merging.
    NonFinite,
    /// A feature this merger does not implement (DoRA, a dtype).
    Unsupported,
}

/// One `--lora FILE[:SCALE]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub scale: f32,
}

impl LoraSpec {
    pub fn new(path: impl Into<PathBuf>, scale: f32) -> Self {
        LoraSpec {
            path: path.into(),
            scale,
        }
    }
}

impl FromStr for LoraSpec {
    type Err = Error;

    /// `FILE` (scale 1) or `FILE:SCALE`; a suffix after the last `:` that is
    /// not a number belongs to the file name.
    fn from_str(s: &str) -> Result<Self> {
        let (path, scale) = match s.rsplit_once(':').map(|(p, n)| (p, n.parse::<f32>())) {
            Some((p, Ok(n))) => (p, n),
            _ => (s, 1.0),
        };
        if path.is_empty() {
            return Err(Error::InvalidArgument {
                flag: "--lora".into(),
                reason: "expected FILE or FILE:SCALE".into(),
            });
        }
        if !scale.is_finite() {
            return Err(Error::InvalidArgument {
                flag: "--lora".into(),
                reason: format!("{s}: the scale must be a finite number"),
            });
        }
        Ok(LoraSpec::new(path, scale))
    }
}

/// The keys of one low-rank module.
#[derive(Debug, Clone, Default)]
struct Pair {
    down: Option<String>,
    up: Option<String>,
    alpha: Option<String>,
    rank: usize,
    /// `[out, in]` the pair produces.
    shape: [usize; 2],
}

/// One opened LoRA file.
pub struct LoraFile {
    pub path: PathBuf,
    pub scale: f32,
    pub layout: Layout,
    pub sha256: String,
    set: SafetensorsSet,
    /// Low-rank modules by their key in the layout's name space.
    pairs: BTreeMap<String, Pair>,
    /// Full-tensor diffs by (canonical module, parameter).
    diffs: BTreeMap<(String, Param), String>,
    /// PEFT: α for every module, with per-module overrides; `None` = α = r.
    peft_alpha: Option<PeftAlpha>,
}

/// PEFT's scaling, from `lora_adapter_metadata`.
#[derive(Debug, Clone)]
struct PeftAlpha {
    alpha: f64,
    /// `alpha_pattern`: module-name suffix → α.
    pattern: Vec<(String, f64)>,
    rslora: bool,
}

fn lora_err(file: &Path, key: &str, problem: LoraProblem, reason: impl Into<String>) -> Error {
    Error::Lora {
        file: file.to_path_buf(),
        key: key.to_string(),
        problem,
        reason: reason.into(),
    }
}

fn values(t: &SourceTensor<'_>, file: &Path, key: &str) -> Result<Vec<f32>> {
    if !matches!(t.dtype, DType::Float32 | DType::Bfloat16 | DType::Float16) {
        return Err(lora_err(
            file,
            key,
            LoraProblem::Unsupported,
            format!("dtype {} (expected float32, bfloat16 or float16)", t.dtype),
        ));
    }
    t.to_f32(key, &file.display().to_string())
        .map_err(|e| lora_err(file, key, LoraProblem::Corrupt, e.to_string()))
}

impl LoraFile {
    /// Opens, detects the layout and checks every key of `spec.path`.
    pub fn open(spec: &LoraSpec) -> Result<Self> {
        let path = spec.path.clone();
        if !path.is_file() {
            return Err(Error::MissingFile {
                file: path,
                reason: "given with --lora".into(),
            });
        }
        let set = SafetensorsSet::open_file(&path).map_err(|e| match e {
            Error::Io { .. } => e,
            other => lora_err(&path, "", LoraProblem::Corrupt, other.to_string()),
        })?;
        let sha256 = wanrt_core::fsio::sha256_file(&path).map_err(|e| Error::io(&path, e))?;
        let mut keys: Vec<&str> = set.names().collect();
        keys.sort_unstable();
        if keys.is_empty() {
            return Err(lora_err(
                &path,
                "",
                LoraProblem::UnknownLayout,
                "the file holds no tensors",
            ));
        }

        // Layout: every key must parse, all of one family.
        let mut family = None;
        let mut ab = None;
        let mut parsed = Vec::with_capacity(keys.len());
        for key in &keys {
            let p = parse_key(key).ok_or_else(|| {
                lora_err(
                    &path,
                    key,
                    LoraProblem::UnknownLayout,
                    "not a key of any known LoRA layout (peft `transformer.…lora_A/B`, kohya \
                     `lora_unet_…lora_down/up/alpha`, comfy/aitoolkit `diffusion_model.…`)",
                )
            })?;
            match family {
                None => family = Some(p.family),
                Some(f) if f != p.family => {
                    return Err(lora_err(
                        &path,
                        key,
                        LoraProblem::UnknownLayout,
                        format!(
                            "keys of two layouts in one file (this one and '{}')",
                            keys[0]
                        ),
                    ));
                }
                _ => {}
            }
            if let Role::Down { ab: x } | Role::Up { ab: x } = p.role {
                ab = Some(ab.unwrap_or(false) || x);
            }
            parsed.push((*key, p));
        }
        let layout = match family {
            Some(Family::Peft) => Layout::Peft,
            Some(Family::Kohya) => Layout::Kohya,
            _ if ab == Some(true) => Layout::AiToolkit,
            _ => Layout::Comfy,
        };

        let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
        let mut diffs = BTreeMap::new();
        for (key, p) in parsed {
            let t = set.tensor(key).ok_or_else(|| {
                lora_err(&path, key, LoraProblem::Corrupt, "listed but not readable")
            })?;
            let v = values(&t, &path, key)?;
            // Read once for this check; the merge faults them back in.
            set.release(key);
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(lora_err(
                    &path,
                    key,
                    LoraProblem::NonFinite,
                    format!("element {i} is {}", v[i]),
                ));
            }
            match p.role {
                Role::Down { .. } | Role::Up { .. } if t.shape.len() != 2 => {
                    return Err(lora_err(
                        &path,
                        key,
                        LoraProblem::Shape,
                        format!(
                            "a low-rank factor must be 2-D, this one is {:?} (convolution LoRAs are not supported)",
                            t.shape
                        ),
                    ));
                }
                Role::Down { .. } => {
                    pairs.entry(p.module).or_default().down = Some(key.to_string());
                }
                Role::Up { .. } => pairs.entry(p.module).or_default().up = Some(key.to_string()),
                Role::Alpha => {
                    if v.len() != 1 {
                        return Err(lora_err(
                            &path,
                            key,
                            LoraProblem::Shape,
                            format!("alpha must be a scalar, it has shape {:?}", t.shape),
                        ));
                    }
                    pairs.entry(p.module).or_default().alpha = Some(key.to_string());
                }
                Role::Diff(param) => {
                    diffs.insert((p.module, param), key.to_string());
                }
            }
        }
        for (module, pair) in &mut pairs {
            let (Some(down), Some(up)) = (&pair.down, &pair.up) else {
                let have = pair
                    .down
                    .as_ref()
                    .or(pair.up.as_ref())
                    .or(pair.alpha.as_ref())
                    .cloned()
                    .unwrap_or_default();
                return Err(lora_err(
                    &path,
                    &have,
                    LoraProblem::Shape,
                    format!("module '{module}' lacks its down or up factor"),
                ));
            };
            let (ds, us) = (
                set.tensor(down).map(|t| t.shape).unwrap_or_default(),
                set.tensor(up).map(|t| t.shape).unwrap_or_default(),
            );
            if ds[0] != us[1] || ds[0] == 0 {
                return Err(lora_err(
                    &path,
                    up,
                    LoraProblem::Shape,
                    format!(
                        "rank mismatch: down {down} is {ds:?} (rank {}), up is {us:?} (rank {})",
                        ds[0], us[1]
                    ),
                ));
            }
            pair.rank = ds[0];
            pair.shape = [us[0], ds[1]];
        }
        let peft_alpha = if layout == Layout::Peft {
            peft_alpha(&set, &path)?
        } else {
            None
        };
        Ok(LoraFile {
            path,
            scale: spec.scale,
            layout,
            sha256,
            set,
            pairs,
            diffs,
            peft_alpha,
        })
    }

    /// Number of tensors in the file.
    pub fn num_keys(&self) -> usize {
        self.set.names().count()
    }

    fn f32_of(&self, key: &str) -> Result<Vec<f32>> {
        let t = self
            .set
            .tensor(key)
            .ok_or_else(|| lora_err(&self.path, key, LoraProblem::Corrupt, "not readable"))?;
        let v = values(&t, &self.path, key)?;
        self.set.release(key);
        Ok(v)
    }

    /// α/r of the low-rank module `id`.
    fn alpha_over_rank(&self, id: &str, pair: &Pair) -> Result<f64> {
        let r = pair.rank as f64;
        if let Some(key) = &pair.alpha {
            return Ok(f64::from(self.f32_of(key)?[0]) / r);
        }
        Ok(match (&self.peft_alpha, self.layout) {
            (Some(p), _) => {
                let alpha = p
                    .pattern
                    .iter()
                    .find(|(suffix, _)| id == suffix || id.ends_with(&format!(".{suffix}")))
                    .map_or(p.alpha, |(_, a)| *a);
                if p.rslora {
                    alpha / r.sqrt()
                } else {
                    alpha / r
                }
            }
            // diffusers, kohya and the extracted files: α = r without alpha.
            _ => 1.0,
        })
    }

    /// The deltas of this file for the canonical tensor `name`: the keys
    /// they read and how to apply them.
    fn deltas_for(&self, name: &str) -> Vec<Delta<'_>> {
        let mut out = Vec::new();
        let Some((module, param)) = Param::split(name) else {
            return out;
        };
        if param == Param::Weight
            && let Some(id) = self.layout.module_id(module)
            && let Some((id, pair)) = self.pairs.get_key_value(&id)
        {
            out.push(Delta::LowRank { id, pair });
        }
        if self.layout.has_diffs()
            && let Some(key) = self.diffs.get(&(module.to_string(), param))
        {
            out.push(Delta::Full { key });
        }
        out
    }

    /// Every key of the file.
    fn keys(&self) -> BTreeSet<String> {
        self.set.names().map(str::to_string).collect()
    }
}

/// The header's PEFT config, if any (`None`: α = r).
fn peft_alpha(set: &SafetensorsSet, path: &Path) -> Result<Option<PeftAlpha>> {
    let Some(text) = set.metadata().and_then(|m| m.get("lora_adapter_metadata")) else {
        return Ok(None);
    };
    let bad = |reason: String| {
        lora_err(
            path,
            "__metadata__.lora_adapter_metadata",
            LoraProblem::Corrupt,
            reason,
        )
    };
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let field = |k: &str| {
        v.get(format!("transformer.{k}"))
            .or_else(|| v.get(k))
            .filter(|x| !x.is_null())
    };
    for flag in ["use_dora", "lora_bias"] {
        if field(flag).and_then(|x| x.as_bool()) == Some(true) {
            return Err(lora_err(
                path,
                "__metadata__.lora_adapter_metadata",
                LoraProblem::Unsupported,
                format!("{flag} is true: DoRA and LoRA biases are not supported"),
            ));
        }
    }
    let Some(alpha) = field("lora_alpha").and_then(|x| x.as_f64()) else {
        return Ok(None);
    };
    let mut pattern: Vec<(String, f64)> = field("alpha_pattern")
        .and_then(|x| x.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, a)| Some((k.clone(), a.as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    // The longest (most specific) pattern first.
    pattern.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    Ok(Some(PeftAlpha {
        alpha,
        pattern,
        rslora: field("use_rslora").and_then(|x| x.as_bool()) == Some(true),
    }))
}

enum Delta<'f> {
    LowRank { id: &'f str, pair: &'f Pair },
    Full { key: &'f str },
}

/// `w[out, in] += mult · (up[out, r] · down[r, in])`, the product first as
/// the reference does (PEFT's `(B @ A) · scaling`).
fn add_low_rank(w: &mut [f32], up: &[f32], down: &[f32], r: usize, inp: usize, mult: f32) {
    let mut row = vec![0f32; inp];
    for (i, w_row) in w.chunks_exact_mut(inp).enumerate() {
        row.fill(0.0);
        for k in 0..r {
            let a = up[i * r + k];
            for (x, &d) in row.iter_mut().zip(&down[k * inp..(k + 1) * inp]) {
                *x += a * d;
            }
        }
        for (x, &d) in w_row.iter_mut().zip(&row) {
            *x += d * mult;
        }
    }
}

/// The checkpoint seen with every LoRA merged in (the exporter's weight
/// source for the DiT).
pub struct LoraMerge<'a> {
    inner: &'a dyn WeightSource,
    loras: &'a [LoraFile],
    /// Keys merged so far, per file.
    applied: RefCell<Vec<BTreeSet<String>>>,
    /// Tensors modified so far, per file (by name: the DiT's stage graphs
    /// fetch a tensor the whole graph fetched before).
    tensors: RefCell<Vec<BTreeSet<String>>>,
    /// The typed error behind a failed fetch (the builder only carries a
    /// message through its own error type).
    failure: RefCell<Option<Error>>,
}

impl<'a> LoraMerge<'a> {
    pub fn new(inner: &'a dyn WeightSource, loras: &'a [LoraFile]) -> Self {
        LoraMerge {
            inner,
            loras,
            applied: RefCell::new(vec![BTreeSet::new(); loras.len()]),
            tensors: RefCell::new(vec![BTreeSet::new(); loras.len()]),
            failure: RefCell::new(None),
        }
    }

    /// The typed error of a fetch that failed, if one did.
    pub fn take_failure(&self) -> Option<Error> {
        self.failure.borrow_mut().take()
    }

    /// Checks every delta against the tensors `(canonical name, shape)` of a
    /// checkpoint before anything is exported, and returns the keys that
    /// modify none of them, per file.
    pub fn precheck(
        loras: &[LoraFile],
        tensors: &[(String, Vec<usize>)],
    ) -> Result<Vec<Vec<String>>> {
        let mut used: Vec<BTreeSet<String>> = vec![BTreeSet::new(); loras.len()];
        for (name, shape) in tensors {
            for (f, lora) in loras.iter().enumerate() {
                for d in lora.deltas_for(name) {
                    check_shape(lora, &d, name, shape)?;
                    used[f].extend(delta_keys(&d));
                }
            }
        }
        Ok(loras
            .iter()
            .zip(&used)
            .map(|(l, u)| l.keys().difference(u).cloned().collect())
            .collect())
    }

    /// After the export: the manifest records, or an error for keys that
    /// modified nothing (unless `ignore_unmatched`, then they are listed).
    pub fn finish(&self, ignore_unmatched: bool) -> Result<Vec<LoraRecord>> {
        let applied = self.applied.borrow();
        let tensors = self.tensors.borrow();
        let mut records = Vec::new();
        for (f, lora) in self.loras.iter().enumerate() {
            let unmatched: Vec<String> = lora.keys().difference(&applied[f]).cloned().collect();
            if !unmatched.is_empty() && !ignore_unmatched {
                return Err(unmatched_error(lora, &unmatched));
            }
            records.push(LoraRecord {
                file: lora
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                sha256: lora.sha256.clone(),
                scale: lora.scale,
                layout: lora.layout.name().to_string(),
                keys_applied: applied[f].len(),
                tensors_modified: tensors[f].len(),
                unmatched_keys: unmatched,
            });
        }
        Ok(records)
    }

    fn merge(&self, name: &str, base: &SourceTensor<'_>) -> Result<Option<Vec<f32>>> {
        let mut w: Option<Vec<f32>> = None;
        for (f, lora) in self.loras.iter().enumerate() {
            let deltas = lora.deltas_for(name);
            if deltas.is_empty() {
                continue;
            }
            let w = match &mut w {
                Some(w) => w,
                None => w.insert(
                    base.to_f32(name, &self.inner.location(name))
                        .map_err(Error::Graph)?,
                ),
            };
            for d in &deltas {
                check_shape(lora, d, name, &base.shape)?;
                match d {
                    Delta::LowRank { id, pair } => {
                        let (down, up) = (
                            pair.down.as_deref().unwrap_or_default(),
                            pair.up.as_deref().unwrap_or_default(),
                        );
                        let mult = (f64::from(lora.scale) * lora.alpha_over_rank(id, pair)?) as f32;
                        let (dv, uv) = (lora.f32_of(down)?, lora.f32_of(up)?);
                        add_low_rank(w, &uv, &dv, pair.rank, pair.shape[1], mult);
                    }
                    Delta::Full { key } => {
                        let dv = lora.f32_of(key)?;
                        for (x, &d) in w.iter_mut().zip(&dv) {
                            *x += d * lora.scale;
                        }
                    }
                }
                self.applied.borrow_mut()[f].extend(delta_keys(d));
            }
            self.tensors.borrow_mut()[f].insert(name.to_string());
            if let Some(i) = w.iter().position(|x| !x.is_finite()) {
                let key = deltas
                    .first()
                    .and_then(|d| delta_keys(d).into_iter().next())
                    .unwrap_or_default();
                return Err(lora_err(
                    &lora.path,
                    &key,
                    LoraProblem::NonFinite,
                    format!("merging it makes element {i} of '{name}' non-finite"),
                ));
            }
        }
        Ok(w)
    }
}

fn delta_keys(d: &Delta<'_>) -> Vec<String> {
    match d {
        Delta::LowRank { pair, .. } => [&pair.down, &pair.up, &pair.alpha]
            .into_iter()
            .flatten()
            .cloned()
            .collect(),
        Delta::Full { key } => vec![key.to_string()],
    }
}

fn check_shape(lora: &LoraFile, d: &Delta<'_>, name: &str, shape: &[usize]) -> Result<()> {
    let (key, got) = match d {
        Delta::LowRank { pair, .. } => (pair.up.clone().unwrap_or_default(), pair.shape.to_vec()),
        Delta::Full { key } => (
            key.to_string(),
            lora.set.tensor(key).map(|t| t.shape).unwrap_or_default(),
        ),
    };
    if got != shape {
        return Err(lora_err(
            &lora.path,
            &key,
            LoraProblem::Shape,
            format!("its delta is {got:?} but '{name}' is {shape:?}"),
        ));
    }
    Ok(())
}

fn unmatched_error(lora: &LoraFile, unmatched: &[String]) -> Error {
    lora_err(
        &lora.path,
        &unmatched[0],
        LoraProblem::Unmatched,
        format!(
            "modifies no tensor of the DiT ({} such keys in this {} file{}); \
             --lora-ignore-unmatched merges the rest and lists them",
            unmatched.len(),
            lora.layout.name(),
            if unmatched.len() > 1 {
                format!(", also '{}'", unmatched[1])
            } else {
                String::new()
            }
        ),
    )
}

/// Errors before the export when a precheck found unmatched keys.
pub fn refuse_unmatched(loras: &[LoraFile], unmatched: &[Vec<String>]) -> Result<()> {
    for (lora, u) in loras.iter().zip(unmatched) {
        if !u.is_empty() {
            return Err(unmatched_error(lora, u));
        }
    }
    Ok(())
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

impl WeightSource for LoraMerge<'_> {
    fn tensor(&self, name: &str) -> wanrt_graphs::Result<Option<SourceTensor<'_>>> {
        self.tensor_with_shape(name, &[])
    }

    fn tensor_with_shape(
        &self,
        name: &str,
        shape: &[usize],
    ) -> wanrt_graphs::Result<Option<SourceTensor<'_>>> {
        let Some(base) = self.inner.tensor_with_shape(name, shape)? else {
            return Ok(None);
        };
        match self.merge(name, &base) {
            Ok(None) => Ok(Some(base)),
            Ok(Some(w)) => Ok(Some(SourceTensor {
                dtype: DType::Float32,
                shape: base.shape,
                data: Cow::Owned(f32_bytes(&w)),
            })),
            Err(e) => {
                let message = e.to_string();
                *self.failure.borrow_mut() = Some(e);
                Err(wanrt_graphs::Error::Source(
                    message.into(),
                    wanrt_graphs::ErrorKind::Source,
                ))
            }
        }
    }

    fn location(&self, name: &str) -> String {
        self.inner.location(name)
    }
}
