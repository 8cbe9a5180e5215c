//! Step caching (`docs/WAN.md` §cache): on steps where the DiT's block stack
//! would barely change its output, skip it and reuse the residual (block
//! stack output − input) the branch cached at its last computed step.
//!
//! Four policies, each the semantics of its reference implementation:
//! - `teacache` / `teacache-ret` (TeaCache4Wan2.1): the relative L1 change
//!   of the time embedding (`e`, or `e0` with retention steps), rescaled by
//!   a model-specific polynomial and accumulated until it reaches the
//!   threshold;
//! - `magcache` (MagCache4Wan2.1): the accumulated error of the model's
//!   residual-magnitude ratios, with a maximum run of skips `K` and a
//!   fraction of initial calls always computed;
//! - `fbcache` (diffusers' first-block cache): block 0 runs on every call
//!   and the relative L1 change of its residual decides whether blocks 1…N
//!   run.
//!
//! TeaCache and MagCache depend only on the model, the schedule and the
//! settings: [`StepCache::new`] works out their whole skip mask before the
//! first step, from the time stage's tables. The first-block cache decides
//! during the step, after block 0 ([`StepCache::decide_first_block`]).
//!
//! A call is counted `cnt = 2·step + branch` (cond 0, uncond 1), as the
//! reference implementations count them; each branch has its own state and
//! its own residual.

mod decide;
mod mag_ratios;
mod presets;

use std::path::Path;

use serde::{Deserialize, Serialize};
use wanrt_core::{DitConfig, Profile};

use crate::buffer::Memory;
use crate::error::{Error, Result};

pub use decide::{Decision, magcache_schedule, resample_mag_ratios, teacache_schedule};
pub use presets::{KnownModel, known_model};

/// Which step cache a generation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CachePolicy {
    /// Every step runs the whole DiT (default).
    #[default]
    #[serde(rename = "none")]
    None,
    /// TeaCache, indicator `e` (step 0 and the last step forced).
    #[serde(rename = "teacache")]
    TeaCache,
    /// TeaCache with retention steps, indicator `e0` (steps 0–4 forced).
    #[serde(rename = "teacache-ret")]
    TeaCacheRet,
    /// MagCache.
    #[serde(rename = "magcache")]
    MagCache,
    /// First-block cache.
    #[serde(rename = "fbcache")]
    FbCache,
}

impl CachePolicy {
    pub const ALL: [CachePolicy; 5] = [
        CachePolicy::None,
        CachePolicy::TeaCache,
        CachePolicy::TeaCacheRet,
        CachePolicy::MagCache,
        CachePolicy::FbCache,
    ];

    /// The `--cache` value.
    pub fn name(self) -> &'static str {
        match self {
            CachePolicy::None => "none",
            CachePolicy::TeaCache => "teacache",
            CachePolicy::TeaCacheRet => "teacache-ret",
            CachePolicy::MagCache => "magcache",
            CachePolicy::FbCache => "fbcache",
        }
    }

    fn is_teacache(self) -> bool {
        matches!(self, CachePolicy::TeaCache | CachePolicy::TeaCacheRet)
    }
}

impl std::str::FromStr for CachePolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                Error::arg(
                    "--cache",
                    format!("'{s}': expected none, teacache, teacache-ret, magcache or fbcache"),
                )
            })
    }
}

impl std::fmt::Display for CachePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a step cache keeps its residuals and does its arithmetic
/// (`--cache-residency`, `docs/WAN.md` §15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheResidency {
    /// Device on the GPU backends when the engines have the step-cache
    /// graphs, host otherwise (ort-cpu, whose device memory is the host's,
    /// and engines compiled before the graphs).
    #[default]
    Auto,
    /// Host vectors; the block stack's boundaries are mirrored on the host.
    Host,
    /// The backend's buffers and the compiled step-cache graphs; the host
    /// writes the per-row decisions and reads fbcache's per-row indicator.
    Device,
}

impl CacheResidency {
    pub const ALL: [CacheResidency; 3] = [
        CacheResidency::Auto,
        CacheResidency::Host,
        CacheResidency::Device,
    ];

    /// The `--cache-residency` value.
    pub fn name(self) -> &'static str {
        match self {
            CacheResidency::Auto => "auto",
            CacheResidency::Host => "host",
            CacheResidency::Device => "device",
        }
    }
}

impl std::str::FromStr for CacheResidency {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                Error::arg(
                    "--cache-residency",
                    format!("'{s}': expected auto, host or device"),
                )
            })
    }
}

impl std::fmt::Display for CacheResidency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A model-specific table (`--cache-table`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheTable {
    /// MagCache: one magnitude ratio per call, cond/uncond interleaved
    /// (entries 0 and 1 are step 0's padding); any even length ≥ 4, resampled
    /// to the run's step count.
    MagRatios(Vec<f64>),
    /// TeaCache: the rescaling polynomial, highest power first.
    Coefficients([f64; 5]),
}

/// What a caller asks for (the library's `--cache*` flags). The default is
/// no caching.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheOptions {
    pub policy: CachePolicy,
    /// `--cache-threshold` as a number.
    pub threshold: Option<f64>,
    /// `--cache-threshold` as a preset name of the recognised model
    /// (`slow`/`fast` for TeaCache, `default` for MagCache).
    pub preset: Option<String>,
    /// `--cache-max-skip` (MagCache's K).
    pub max_skip: Option<u32>,
    /// `--cache-retention` (MagCache's retention ratio).
    pub retention: Option<f64>,
    /// `--cache-table`, already read ([`read_table`]).
    pub table: Option<CacheTable>,
    /// `--cache-residency`.
    pub residency: CacheResidency,
}

/// The reference implementations' command-line defaults, used where the
/// model has no preset: TeaCache `--teacache_thresh 0.2`, MagCache
/// `--magcache_thresh 0.12 --magcache_K 2 --retention_ratio 0.2`, diffusers'
/// `FirstBlockCacheConfig(threshold=0.05)`.
const TEACACHE_DEFAULT_THRESHOLD: f64 = 0.2;
const MAGCACHE_DEFAULT: (f64, u32, f64) = (0.12, 2, 0.2);
const FBCACHE_DEFAULT_THRESHOLD: f64 = 0.05;

/// A policy with every parameter settled for one generation (what the
/// sidecar records).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CachePlan {
    pub policy: CachePolicy,
    pub threshold: f64,
    /// The preset the parameters came from, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_skip: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<f64>,
    /// TeaCache's polynomial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coefficients: Option<[f64; 5]>,
    /// MagCache's ratios for this run's step count (2 per step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mag_ratios: Option<Vec<f64>>,
    /// Where the table came from: `--cache-table` or the built-in model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The residency asked for (the record says which one ran).
    pub residency: CacheResidency,
}

fn check_threshold(t: f64) -> Result<f64> {
    if t.is_finite() && t > 0.0 {
        Ok(t)
    } else {
        Err(Error::arg(
            "--cache-threshold",
            format!("{t}: expected a finite number > 0 (or a preset name)"),
        ))
    }
}

/// A `--cache-threshold` value as given: a number, or a preset name
/// (letters only); `(threshold, preset)`, one of them set. Ranges are
/// [`CacheOptions::validate`]'s.
pub fn parse_threshold(text: &str) -> Result<(Option<f64>, Option<String>)> {
    match text.parse::<f64>() {
        Ok(v) => Ok((Some(v), None)),
        Err(_) if !text.is_empty() && text.chars().all(|c| c.is_ascii_alphabetic()) => {
            Ok((None, Some(text.to_string())))
        }
        Err(_) => Err(Error::arg(
            "--cache-threshold",
            format!("'{text}': expected a number or a preset name"),
        )),
    }
}

impl CacheOptions {
    pub fn is_none(&self) -> bool {
        self.policy == CachePolicy::None
    }

    /// Without a policy, no parameter may be set (a `--cache-*` flag
    /// without `--cache` would be silently ignored).
    pub fn check_none(&self) -> Result<()> {
        for (set, flag) in [
            (
                self.threshold.is_some() || self.preset.is_some(),
                "--cache-threshold",
            ),
            (self.max_skip.is_some(), "--cache-max-skip"),
            (self.retention.is_some(), "--cache-retention"),
            (self.table.is_some(), "--cache-table"),
            (self.residency != CacheResidency::Auto, "--cache-residency"),
        ] {
            if set {
                return Err(Error::arg(flag, "given without --cache"));
            }
        }
        Ok(())
    }

    /// Checks what needs no model: the ranges (threshold finite and > 0,
    /// K ≥ 1, retention in [0, 1)), flags that do not apply to the policy,
    /// and the table's kind.
    pub fn validate(&self) -> Result<()> {
        let policy = self.policy;
        let misplaced = |flag: &str, what: &str| {
            Error::arg(
                flag,
                format!("{what} applies to --cache magcache, not --cache {policy}"),
            )
        };
        if policy == CachePolicy::None {
            return self.check_none();
        }
        if policy != CachePolicy::MagCache {
            if self.max_skip.is_some() {
                return Err(misplaced("--cache-max-skip", "the maximum run of skips"));
            }
            if self.retention.is_some() {
                return Err(misplaced("--cache-retention", "the retention ratio"));
            }
        }
        if self.threshold.is_some() && self.preset.is_some() {
            return Err(Error::arg(
                "--cache-threshold",
                "both a number and a preset name",
            ));
        }
        if let Some(t) = self.threshold {
            check_threshold(t)?;
        }
        if let Some(k) = self.max_skip
            && k == 0
        {
            return Err(Error::arg(
                "--cache-max-skip",
                "0 never skips: expected at least 1",
            ));
        }
        if let Some(r) = self.retention
            && !(r.is_finite() && (0.0..1.0).contains(&r))
        {
            return Err(Error::arg(
                "--cache-retention",
                format!("{r}: expected a fraction in [0, 1)"),
            ));
        }
        if let Some(table) = &self.table {
            match (policy, table) {
                (CachePolicy::MagCache, CacheTable::MagRatios(_)) => {}
                (p, CacheTable::Coefficients(_)) if p.is_teacache() => {}
                (CachePolicy::FbCache, _) => {
                    return Err(Error::arg(
                        "--cache-table",
                        "the first-block cache takes no table",
                    ));
                }
                _ => {
                    return Err(Error::arg(
                        "--cache-table",
                        format!("this table is not a --cache {policy} table"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Settles every parameter for `steps` steps of the model `cfg` at
    /// `profile`: the explicit values, else the recognised model's preset,
    /// else the reference's defaults; the table from `--cache-table`, else
    /// the model's built-in one. `None` without caching.
    pub fn resolve(
        &self,
        cfg: &DitConfig,
        profile: &Profile,
        steps: usize,
    ) -> Result<Option<CachePlan>> {
        self.validate()?;
        let policy = self.policy;
        if policy == CachePolicy::None {
            return Ok(None);
        }
        if steps == 0 {
            return Err(Error::arg("--cache", "no steps to cache"));
        }
        let model = known_model(cfg, profile);
        let preset = match (&self.preset, model) {
            (None, _) => None,
            (Some(name), Some(m)) => Some(presets::preset(m, policy, name).ok_or_else(|| {
                Error::arg(
                    "--cache-threshold",
                    format!(
                        "no preset '{name}' for --cache {policy} on {}: expected {}",
                        m.name(),
                        presets::preset_names(policy).join(", ")
                    ),
                )
            })?),
            (Some(name), None) => {
                return Err(Error::arg(
                    "--cache-threshold",
                    format!(
                        "preset '{name}': the model (dim {}, {} layers, {} input channels) is none of the official checkpoints with presets; give a number",
                        cfg.dim, cfg.num_layers, cfg.in_dim
                    ),
                ));
            }
        };
        // Parameters not given explicitly: from the named preset, else the
        // model's recommended one, else the reference's command-line defaults.
        let p = preset.or_else(|| {
            model.and_then(|m| presets::preset(m, policy, presets::default_preset_name(policy)))
        });
        let mut plan = CachePlan {
            policy,
            threshold: 0.0,
            preset: None,
            max_skip: None,
            retention: None,
            coefficients: None,
            mag_ratios: None,
            table: None,
            residency: self.residency,
        };
        let threshold = match (self.threshold, p) {
            (Some(t), _) => t,
            (None, Some(p)) => p.threshold,
            (None, None) => match policy {
                CachePolicy::MagCache => MAGCACHE_DEFAULT.0,
                CachePolicy::FbCache => FBCACHE_DEFAULT_THRESHOLD,
                _ => TEACACHE_DEFAULT_THRESHOLD,
            },
        };
        let from_preset = self.threshold.is_none()
            || policy == CachePolicy::MagCache
                && (self.max_skip.is_none() || self.retention.is_none());
        plan.preset = p.filter(|_| from_preset).map(|p| p.name.to_string());
        plan.threshold = check_threshold(threshold)?;
        let need_table = |what: &str| {
            Error::arg(
                "--cache-table",
                format!(
                    "--cache {policy} needs the model's {what}: the model (dim {}, {} layers, {} input channels) is none of the official checkpoints with built-in tables, so pass --cache-table FILE",
                    cfg.dim, cfg.num_layers, cfg.in_dim
                ),
            )
        };
        match policy {
            CachePolicy::TeaCache | CachePolicy::TeaCacheRet => {
                let ret = policy == CachePolicy::TeaCacheRet;
                let (c, source) = match (&self.table, model) {
                    (Some(CacheTable::Coefficients(c)), _) => (*c, "--cache-table".to_string()),
                    (_, Some(m)) => (
                        presets::tea_coefficients(m, ret),
                        format!("built-in {} (TeaCache4Wan2.1)", m.name()),
                    ),
                    _ => return Err(need_table("TeaCache polynomial")),
                };
                plan.coefficients = Some(c);
                plan.table = Some(source);
            }
            CachePolicy::MagCache => {
                let (ratios, source) = match (&self.table, model) {
                    (Some(CacheTable::MagRatios(r)), _) => (r.clone(), "--cache-table".to_string()),
                    (_, Some(m)) => (
                        presets::mag_ratios(m).to_vec(),
                        format!("built-in {} (MagCache4Wan2.1)", m.name()),
                    ),
                    _ => return Err(need_table("MagCache magnitude ratios")),
                };
                plan.mag_ratios = Some(resample_mag_ratios(&ratios, steps));
                plan.table = Some(source);
                let (_, k, r) = MAGCACHE_DEFAULT;
                plan.max_skip = Some(self.max_skip.or(p.and_then(|p| p.max_skip)).unwrap_or(k));
                plan.retention = Some(self.retention.or(p.and_then(|p| p.retention)).unwrap_or(r));
            }
            CachePolicy::FbCache => {
                if cfg.num_layers < 2 {
                    return Err(Error::arg(
                        "--cache",
                        "the first-block cache needs a DiT of at least 2 blocks",
                    ));
                }
            }
            CachePolicy::None => return Ok(None),
        }
        Ok(Some(plan))
    }
}

/// Reads a `--cache-table` file for `policy`: MagCache's `mag_ratios`
/// (an even number ≥ 4 of finite ratios > 0), TeaCache's
/// `modes.e.coefficients` (`teacache`) or `modes.e0.coefficients`
/// (`teacache-ret`), 5 finite numbers each.
pub fn read_table(path: &Path, policy: CachePolicy) -> Result<CacheTable> {
    let bad = |reason: String| Error::arg("--cache-table", format!("{}: {reason}", path.display()));
    const MAX_BYTES: u64 = 16 << 20;
    let len = std::fs::metadata(path)
        .map_err(|e| bad(format!("cannot read it: {e}")))?
        .len();
    if len > MAX_BYTES {
        return Err(bad(format!("{len} bytes; a table is at most {MAX_BYTES}")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    parse_table(&text, policy).map_err(bad)
}

/// [`read_table`] on a file's text; the reason names the field.
pub fn parse_table(text: &str, policy: CachePolicy) -> std::result::Result<CacheTable, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let numbers =
        |field: &str, v: Option<&serde_json::Value>| -> std::result::Result<Vec<f64>, String> {
            let arr = v
                .ok_or_else(|| format!("no field '{field}'"))?
                .as_array()
                .ok_or_else(|| format!("'{field}' is not an array"))?;
            arr.iter()
                .enumerate()
                .map(|(i, x)| {
                    x.as_f64()
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| format!("'{field}'[{i}] is not a finite number: {x}"))
                })
                .collect()
        };
    match policy {
        CachePolicy::MagCache => {
            let r = numbers("mag_ratios", v.get("mag_ratios"))?;
            if r.len() < 4 || !r.len().is_multiple_of(2) {
                return Err(format!(
                    "'mag_ratios' has {} entries; expected an even number ≥ 4 (cond/uncond interleaved, 2 per step)",
                    r.len()
                ));
            }
            if let Some(i) = r.iter().position(|&x| x <= 0.0) {
                return Err(format!("'mag_ratios'[{i}] is {}; ratios are > 0", r[i]));
            }
            Ok(CacheTable::MagRatios(r))
        }
        CachePolicy::TeaCache | CachePolicy::TeaCacheRet => {
            let mode = if policy == CachePolicy::TeaCache {
                "e"
            } else {
                "e0"
            };
            let field = format!("modes.{mode}.coefficients");
            let c = numbers(
                &field,
                v.get("modes")
                    .and_then(|m| m.get(mode))
                    .and_then(|m| m.get("coefficients")),
            )?;
            let c: [f64; 5] = c.as_slice().try_into().map_err(|_| {
                format!(
                    "'{field}' has {} entries; expected 5 (a 4th-order polynomial, highest power first)",
                    c.len()
                )
            })?;
            Ok(CacheTable::Coefficients(c))
        }
        CachePolicy::FbCache | CachePolicy::None => Err(format!("--cache {policy} takes no table")),
    }
}

/// One branch's decisions over a generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BranchRecord {
    /// `cond` or `uncond`.
    pub branch: &'static str,
    /// Per step: whether the block stack (fbcache: blocks 1…N) ran.
    pub computed: Vec<bool>,
    /// Per step: the value compared with the threshold (`None` where no
    /// comparison was made: forced, retention and first calls).
    pub indicator: Vec<Option<f64>>,
}

impl BranchRecord {
    pub fn num_computed(&self) -> usize {
        self.computed.iter().filter(|&&c| c).count()
    }
}

/// What a generation's step cache did (the sidecar's `cache`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CacheRecord {
    pub policy: CachePolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<CachePlan>,
    /// Per CFG branch (one without CFG).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<BranchRecord>,
    /// Block-stack forwards run (per call; fbcache: blocks 1…N), and the
    /// number without caching.
    pub block_forwards: usize,
    pub block_forwards_uncached: usize,
    /// Bytes of the cache's persistent buffers (residuals, first-block
    /// references).
    pub buffer_bytes: usize,
    /// Where the cache ran: `host` or `device` (`None` without a cache).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residency: Option<CacheResidency>,
    /// The memory its buffers are in (device: the backend's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// Device residency: bytes of the step scratch the branches share (the
    /// head's input, the next residual, the per-row decisions).
    #[serde(skip_serializing_if = "is_zero")]
    pub scratch_bytes: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Where a generation's step cache keeps its state, and so which code does
/// its arithmetic; the decisions and the record are [`StepCache`]'s either
/// way.
#[derive(Debug)]
pub enum CacheStore {
    /// Host vectors, the arithmetic in [`StepCache::apply`] and
    /// [`StepCache::host_fb_sums`].
    Host {
        /// Per branch: the residual of its last computed step (one row of
        /// the block stack's output).
        residual: Vec<Vec<f32>>,
        /// fbcache, per branch: block 0's residual at its last computed
        /// step.
        first_ref: Vec<Vec<f32>>,
    },
    /// Buffers in the backend's memory, the arithmetic in the compiled
    /// step-cache graphs (the runtime's DiT binding holds them).
    Device {
        memory: Memory,
        /// Persistent: one residual (and fbcache reference) per branch.
        bytes: usize,
        scratch_bytes: usize,
    },
}

impl CacheStore {
    /// Host vectors for `branches` branches of rows of `m` values
    /// (references only for the first-block cache).
    pub fn host(branches: usize, m: usize, first_block: bool) -> Self {
        CacheStore::Host {
            residual: (0..branches).map(|_| vec![0.0; m]).collect(),
            first_ref: (0..branches)
                .map(|_| Vec::with_capacity(if first_block { m } else { 0 }))
                .collect(),
        }
    }
}

/// A generation's step cache: the precomputed mask (TeaCache, MagCache) or
/// the first-block state, one residual per branch, and the record.
pub struct StepCache {
    plan: CachePlan,
    store: CacheStore,
    record: Vec<BranchRecord>,
    /// Steps the generation has taken ([`StepCache::end_step`]).
    taken: usize,
}

impl StepCache {
    /// The cache of one generation of `steps` steps with `branches` CFG
    /// branches (1 or 2), its state in `store` (allocated by the caller,
    /// once); `temb` `[S·d]` and `proj` `[S·6d]` are the time stage's
    /// tables (TeaCache's indicators).
    pub fn new(
        plan: &CachePlan,
        steps: usize,
        branches: usize,
        store: CacheStore,
        temb: &[f32],
        proj: &[f32],
    ) -> Result<Self> {
        let names = ["cond", "uncond"];
        let mut record: Vec<BranchRecord> = (0..branches)
            .map(|b| BranchRecord {
                branch: names[b],
                computed: Vec::with_capacity(steps),
                indicator: Vec::with_capacity(steps),
            })
            .collect();
        fn rows(table: &[f32], steps: usize) -> Result<Vec<&[f32]>> {
            if steps == 0 || !table.len().is_multiple_of(steps) {
                return Err(fail(format!(
                    "a time table of {} values for {steps} steps",
                    table.len()
                )));
            }
            Ok(table.chunks_exact(table.len() / steps).collect())
        }
        let mut static_mask = |decisions: &dyn Fn(usize) -> Vec<Decision>| {
            for (b, r) in record.iter_mut().enumerate() {
                for d in decisions(b) {
                    r.computed.push(d.computed);
                    r.indicator.push(d.indicator);
                }
            }
        };
        match plan.policy {
            CachePolicy::TeaCache | CachePolicy::TeaCacheRet => {
                let ret = plan.policy == CachePolicy::TeaCacheRet;
                let m_rows = rows(if ret { proj } else { temb }, steps)?;
                let c = plan
                    .coefficients
                    .ok_or_else(|| fail("no TeaCache polynomial"))?;
                static_mask(&|b| teacache_schedule(&c, plan.threshold, ret, &m_rows, b));
            }
            CachePolicy::MagCache => {
                let r = plan
                    .mag_ratios
                    .as_deref()
                    .ok_or_else(|| fail("no MagCache ratios"))?;
                let (k, ret) = (plan.max_skip.unwrap_or(1), plan.retention.unwrap_or(0.0));
                static_mask(&|b| magcache_schedule(r, plan.threshold, k, ret, steps, b));
            }
            CachePolicy::FbCache => {}
            CachePolicy::None => return Err(fail("a step cache without a policy")),
        }
        Ok(StepCache {
            plan: plan.clone(),
            store,
            record,
            taken: 0,
        })
    }

    pub fn policy(&self) -> CachePolicy {
        self.plan.policy
    }

    /// Whether the decision comes after block 0 (fbcache).
    pub fn decides_after_first_block(&self) -> bool {
        self.plan.policy == CachePolicy::FbCache
    }

    /// The precomputed decision of `branch` at `step` (TeaCache, MagCache).
    pub fn planned(&self, step: usize, branch: usize) -> Option<bool> {
        if self.decides_after_first_block() {
            return None;
        }
        self.record.get(branch)?.computed.get(step).copied()
    }

    /// fbcache: whether `branch` has a block-0 reference to compare with
    /// (it has computed before; the first call computes without one).
    pub fn has_first_block_reference(&self, branch: usize) -> bool {
        self.record
            .get(branch)
            .is_some_and(|r| r.computed.iter().any(|&c| c))
    }

    /// fbcache's decision for `branch` at `step`, recorded: `sums` are
    /// `(Σ |r1 − ref|, Σ |ref|)` of block 0's residual `r1` against the
    /// reference, in float64 (required once the branch has a reference,
    /// ignored before). A compute means the caller keeps this step's `r1`
    /// as the new reference.
    pub fn decide_first_block_from(
        &mut self,
        step: usize,
        branch: usize,
        sums: Option<(f64, f64)>,
    ) -> Result<bool> {
        let threshold = self.plan.threshold;
        let has_reference = self.has_first_block_reference(branch);
        let rec = self
            .record
            .get_mut(branch)
            .ok_or_else(|| fail(format!("no branch {branch}")))?;
        if rec.computed.len() != step {
            return Err(fail(format!(
                "first-block decision for step {step} after {} decided steps",
                rec.computed.len()
            )));
        }
        let (computed, indicator) = if !has_reference {
            (true, None)
        } else {
            let (diff, norm) =
                sums.ok_or_else(|| fail(format!("no first-block indicator for step {step}")))?;
            let ind = diff / norm;
            // diffusers: skip while the change is at most the threshold
            // (a NaN computes).
            let skip = ind <= threshold;
            (!skip, Some(ind))
        };
        rec.computed.push(computed);
        rec.indicator.push(indicator);
        Ok(computed)
    }

    /// Host store: fbcache's sums for `branch` from block 0's input
    /// `tokens` and output `first` (one row each): r1 = first − tokens in
    /// float32, |r1 − ref| and |ref| summed in float64. `None` before the
    /// branch has a reference.
    pub fn host_fb_sums(
        &self,
        branch: usize,
        tokens: &[f32],
        first: &[f32],
    ) -> Result<Option<(f64, f64)>> {
        if !self.has_first_block_reference(branch) {
            return Ok(None);
        }
        let reference = self.host_first_ref(branch)?;
        if reference.len() != tokens.len() || first.len() != tokens.len() {
            return Err(fail(format!(
                "a block-0 reference of {} values for rows of {} and {}",
                reference.len(),
                tokens.len(),
                first.len()
            )));
        }
        let (mut diff, mut norm) = (0f64, 0f64);
        for ((t, f), r) in tokens.iter().zip(first).zip(reference.iter()) {
            let r1 = f - t;
            diff += f64::from((r1 - r).abs());
            norm += f64::from(r.abs());
        }
        Ok(Some((diff, norm)))
    }

    fn host_first_ref(&self, branch: usize) -> Result<&Vec<f32>> {
        match &self.store {
            CacheStore::Host { first_ref, .. } => first_ref
                .get(branch)
                .ok_or_else(|| fail(format!("no block-0 reference for branch {branch}"))),
            CacheStore::Device { .. } => Err(fail("the cache's state is in device buffers")),
        }
    }

    /// Host store, fbcache: keeps block 0's residual `first − tokens` as
    /// `branch`'s reference (after a compute).
    pub fn host_store_first_block(
        &mut self,
        branch: usize,
        tokens: &[f32],
        first: &[f32],
    ) -> Result<()> {
        let CacheStore::Host { first_ref, .. } = &mut self.store else {
            return Err(fail("the cache's state is in device buffers"));
        };
        let reference = first_ref
            .get_mut(branch)
            .ok_or_else(|| fail(format!("no block-0 reference for branch {branch}")))?;
        reference.clear();
        reference.extend(tokens.iter().zip(first).map(|(t, f)| f - t));
        Ok(())
    }

    /// fbcache on the host store: decides `branch` at `step` from block
    /// 0's input `tokens` and output `first` (one row each) and records
    /// it; a compute keeps this step's block-0 residual as the reference.
    pub fn decide_first_block(
        &mut self,
        step: usize,
        branch: usize,
        tokens: &[f32],
        first: &[f32],
    ) -> Result<bool> {
        let sums = self.host_fb_sums(branch, tokens, first)?;
        let computed = self.decide_first_block_from(step, branch, sums)?;
        if computed {
            self.host_store_first_block(branch, tokens, first)?;
        }
        Ok(computed)
    }

    /// Host store, after the block stack: a computed row stores `out −
    /// base` as its branch's residual; a skipped row becomes `base +
    /// residual`.
    pub fn apply(
        &mut self,
        branch: usize,
        computed: bool,
        base: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        let CacheStore::Host { residual, .. } = &mut self.store else {
            return Err(fail("the cache's state is in device buffers"));
        };
        let res = residual
            .get_mut(branch)
            .ok_or_else(|| fail(format!("no residual for branch {branch}")))?;
        if res.len() != base.len() || out.len() != base.len() {
            return Err(fail(format!(
                "a residual of {} values for rows of {} and {}",
                res.len(),
                base.len(),
                out.len()
            )));
        }
        if computed {
            for ((r, o), b) in res.iter_mut().zip(out.iter()).zip(base) {
                *r = o - b;
            }
        } else {
            for ((o, b), r) in out.iter_mut().zip(base).zip(res.iter()) {
                *o = b + r;
            }
        }
        Ok(())
    }

    /// Bytes of the persistent buffers.
    pub fn buffer_bytes(&self) -> usize {
        let f = std::mem::size_of::<f32>();
        match &self.store {
            CacheStore::Host {
                residual,
                first_ref,
            } => residual
                .iter()
                .chain(first_ref)
                .map(|r| r.capacity() * f)
                .sum(),
            CacheStore::Device { bytes, .. } => *bytes,
        }
    }

    /// Where the state is: `host` or `device`.
    pub fn residency(&self) -> CacheResidency {
        match self.store {
            CacheStore::Host { .. } => CacheResidency::Host,
            CacheStore::Device { .. } => CacheResidency::Device,
        }
    }

    /// Marks a step as taken (every branch decided and applied).
    pub fn end_step(&mut self) {
        self.taken += 1;
    }

    /// What the cache did over the steps taken so far.
    pub fn record(&self) -> CacheRecord {
        let mut branches = self.record.clone();
        // A precomputed mask covers the whole schedule: report the steps
        // taken.
        for b in &mut branches {
            b.computed.truncate(self.taken);
            b.indicator.truncate(self.taken);
        }
        let forwards = branches.iter().map(BranchRecord::num_computed).sum();
        CacheRecord {
            policy: self.plan.policy,
            plan: Some(self.plan.clone()),
            block_forwards: forwards,
            block_forwards_uncached: branches.iter().map(|b| b.computed.len()).sum(),
            branches,
            buffer_bytes: self.buffer_bytes(),
            residency: Some(self.residency()),
            memory: Some(match self.store {
                CacheStore::Host { .. } => Memory::Host,
                CacheStore::Device { memory, .. } => memory,
            }),
            scratch_bytes: match self.store {
                CacheStore::Host { .. } => 0,
                CacheStore::Device { scratch_bytes, .. } => scratch_bytes,
            },
        }
    }
}

fn fail(reason: impl std::fmt::Display) -> Error {
    Error::Inference {
        network: "dit".into(),
        reason: format!("step cache: {reason}"),
    }
}

#[cfg(test)]
mod tests;
