//! The I/O contract of each network: tensor names, dtypes and shapes for a
//! profile. Graph export, the manifest, the runtime's input checks and the
//! tests all read these functions; the shape math exists only here and in
//! [`Profile`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::{ClipVisionConfig, DitConfig, Task, Umt5Config, VaeConfig};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::profile::{BatchMode, Profile};

/// One dimension of a boundary tensor: a fixed size or the batch axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Fixed(u64),
    /// The (dynamic) batch axis; serialised as `"batch"`.
    Batch,
}

impl Serialize for Dim {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Dim::Fixed(n) => s.serialize_u64(*n),
            Dim::Batch => s.serialize_str("batch"),
        }
    }
}

impl<'de> Deserialize<'de> for Dim {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Dim::Fixed(n)),
            Raw::S(s) if s == "batch" => Ok(Dim::Batch),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "dimension '{s}' is neither a number nor \"batch\""
            ))),
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Batch => f.write_str("batch"),
        }
    }
}

/// A tensor at a graph boundary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl TensorSpec {
    fn new(name: &str, dtype: DType, batch: Dim, rest: &[u64]) -> Self {
        let mut shape = vec![batch];
        shape.extend(rest.iter().map(|&n| Dim::Fixed(n)));
        TensorSpec {
            name: name.to_string(),
            dtype,
            shape,
        }
    }

    /// Whether axis 0 is the batch axis. Every boundary tensor has one but
    /// the VACE hint scales ([`UNBATCHED_INPUTS`]), which are per layer.
    pub fn is_batched(&self) -> bool {
        !UNBATCHED_INPUTS.contains(&self.name.as_str())
    }

    /// The shape with the batch axis set to `batch`.
    pub fn concrete_shape(&self, batch: u64) -> Vec<u64> {
        if !self.is_batched() {
            return self
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n,
                    Dim::Batch => batch,
                })
                .collect();
        }
        self.shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => *n,
                Dim::Batch => batch,
            })
            .collect()
    }

    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        format!("[{}]", dims.join(", "))
    }

    /// Checks a runtime tensor against this spec. The batch axis (axis 0)
    /// accepts any positive size: a fixed-batch engine is looped over it.
    pub fn check(&self, network: &str, dtype: DType, shape: &[u64]) -> Result<()> {
        let mismatch = |reason: String| Error::ContractMismatch {
            network: network.to_string(),
            tensor: self.name.clone(),
            reason,
        };
        if dtype != self.dtype {
            return Err(mismatch(format!(
                "dtype is {dtype}, the engine takes {}",
                self.dtype
            )));
        }
        if !self.is_batched() {
            let want = self.concrete_shape(1);
            if shape != want.as_slice() {
                return Err(mismatch(format!(
                    "shape {shape:?} is not the engine's {} (compiled for this model)",
                    self.shape_string()
                )));
            }
            return Ok(());
        }
        let ok = shape.len() == self.shape.len()
            && shape.first().is_some_and(|&b| b > 0)
            && shape
                .iter()
                .zip(&self.shape)
                .skip(1)
                .all(|(&s, d)| matches!(d, Dim::Fixed(n) if *n == s) || *d == Dim::Batch);
        if !ok {
            return Err(mismatch(format!(
                "shape {shape:?} does not fit the engine's {} (compiled for this profile)",
                self.shape_string()
            )));
        }
        Ok(())
    }
}

/// Boundary tensors without a batch axis: `control_hidden_states_scale
/// [n_vace_layers]` (one scale per VACE hint, shared by every row, as the
/// reference's `control_hidden_states_scale`). Batch loops pass them whole.
pub const UNBATCHED_INPUTS: &[&str] = &["control_hidden_states_scale"];

/// The networks of Wan2.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkKind {
    Dit,
    TextEncoder,
    ImageEncoder,
    VaeEncoder,
    VaeDecoder,
}

impl NetworkKind {
    pub const ALL: [NetworkKind; 5] = [
        NetworkKind::Dit,
        NetworkKind::TextEncoder,
        NetworkKind::ImageEncoder,
        NetworkKind::VaeEncoder,
        NetworkKind::VaeDecoder,
    ];

    /// Manifest key and file stem (`dit`, `text_encoder`, ...).
    pub fn name(self) -> &'static str {
        match self {
            NetworkKind::Dit => "dit",
            NetworkKind::TextEncoder => "text_encoder",
            NetworkKind::ImageEncoder => "image_encoder",
            NetworkKind::VaeEncoder => "vae_encoder",
            NetworkKind::VaeDecoder => "vae_decoder",
        }
    }
}

impl fmt::Display for NetworkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NetworkKind {
    type Err = String;
    /// Accepts `text_encoder` and `text-encoder` alike.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let norm = s.replace('-', "_");
        NetworkKind::ALL
            .into_iter()
            .find(|k| k.name() == norm)
            .ok_or_else(|| {
                format!(
                    "unknown network '{s}' (expected one of dit, text_encoder, image_encoder, vae_encoder, vae_decoder)"
                )
            })
    }
}

/// One stage graph of the step-scheduled DiT ([`NetworkContract::dit_stages`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DitStage {
    /// Text (and I2V image) embedding MLPs: once per prompt and CFG branch.
    Context,
    /// Sinusoid → time MLP → modulation vectors: once per schedule.
    Time,
    /// Patch embedding of the latent (and the I2V condition `y`).
    Embed,
    /// VACE: the context's patch embedding and the VACE blocks → the hints
    /// the block stages add (per step and CFG branch).
    Vace,
    /// Block 0 (the cut a first-block cache compares at).
    BlockFirst,
    /// Blocks 1..N.
    BlockRest,
    /// Output modulation, head and unpatchify.
    Head,
}

impl DitStage {
    pub const ALL: [DitStage; 7] = [
        DitStage::Context,
        DitStage::Time,
        DitStage::Embed,
        DitStage::Vace,
        DitStage::BlockFirst,
        DitStage::BlockRest,
        DitStage::Head,
    ];

    /// Manifest role and file infix (`dit.<name>.onnx`).
    pub fn name(self) -> &'static str {
        match self {
            DitStage::Context => "context",
            DitStage::Time => "time",
            DitStage::Embed => "embed",
            DitStage::Vace => "vace",
            DitStage::BlockFirst => "block_first",
            DitStage::BlockRest => "block_rest",
            DitStage::Head => "head",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the stage runs on every denoising step (the others run once
    /// per generation).
    pub fn per_step(self) -> bool {
        !matches!(self, DitStage::Context | DitStage::Time)
    }
}

impl fmt::Display for DitStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One step-cache graph of the DiT ([`NetworkContract::dit_cache_graphs`]):
/// the step cache's arithmetic on the block stack's boundaries, compiled so
/// that the residuals can stay in the backend's memory (`docs/WAN.md` §15).
/// They run only when a step cache does, never as a per-step stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheGraph {
    /// `head_in = Where(computed, hidden, base + residual)`: the head's
    /// input, the block stack's output where a row computed and the cached
    /// estimate where it skipped.
    Head,
    /// `next = Where(computed, a − b, prev)`: a branch's new residual
    /// (`a` the block stack's output, `b` its input) or fbcache's new
    /// block-0 reference (`a` block 0's output, `b` its input).
    Store,
    /// `y = x`: `next` back into the persistent buffer.
    Copy,
    /// fbcache's change of block 0's residual, per row: `diff = Σ |(first −
    /// tokens) − ref|` and `norm = Σ |ref|`, the terms in float32 as the
    /// host computes them, cast to and summed in float64.
    FbIndicator,
}

impl CacheGraph {
    pub const ALL: [CacheGraph; 4] = [
        CacheGraph::Head,
        CacheGraph::Store,
        CacheGraph::Copy,
        CacheGraph::FbIndicator,
    ];

    /// Manifest role and file infix (`dit.<name>.onnx`).
    pub fn name(self) -> &'static str {
        match self {
            CacheGraph::Head => "cache_head",
            CacheGraph::Store => "cache_store",
            CacheGraph::Copy => "cache_copy",
            CacheGraph::FbIndicator => "cache_fb_indicator",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for CacheGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Inputs and outputs of one network for one profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkContract {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// `control_hidden_states_scale [n_vace_layers]`, without a batch axis.
fn vace_scale_spec(cfg: &DitConfig) -> TensorSpec {
    TensorSpec {
        name: "control_hidden_states_scale".into(),
        dtype: DType::Float32,
        shape: vec![Dim::Fixed(cfg.vace_layers.len() as u64)],
    }
}

fn batch_dim(profile: &Profile) -> Dim {
    match profile.batch {
        BatchMode::Dynamic => Dim::Batch,
        BatchMode::Fixed(n) => Dim::Fixed(n as u64),
    }
}

impl NetworkContract {
    /// DiT: `hidden_states [B, C_in, F', H', W']`, `timestep [B]`,
    /// `encoder_hidden_states [B, text_len, text_dim]`, for I2V
    /// `encoder_hidden_states_image [B, 257, image_dim]` (FLF2V: `[B, 514,
    /// image_dim]`, each row the first frame's 257 tokens then the last
    /// frame's — the bytes of the reference `[2B, 257, image_dim]`, which
    /// the runtime also accepts), for VACE
    /// `control_hidden_states [B, 96, F', H', W']` and
    /// `control_hidden_states_scale [n_vace_layers]` (no batch axis; F'
    /// counts the profile's reference frames); output
    /// `noise_pred [B, 16, F', H', W']`. All float32 at the boundary.
    pub fn dit(cfg: &DitConfig, profile: &Profile) -> Result<Self> {
        let (fp, hp, wp) = profile.patch_grid();
        let max = cfg.rope_max_seq_len;
        if fp > max || hp > max || wp > max {
            return Err(Error::InvalidProfile {
                flag: "--width/--height/--frames",
                reason: format!(
                    "patch grid {fp}x{hp}x{wp} exceeds the RoPE table length {max} of the model"
                ),
            });
        }
        let b = batch_dim(profile);
        let [_, f, h, w] = profile.dit_latent_shape(cfg.in_dim).map(u64::from);
        let f32_ = DType::Float32;
        if profile.reference_images > 0 && cfg.task != Task::Vace {
            return Err(Error::InvalidProfile {
                flag: "--reference-images",
                reason: format!(
                    "reference images are a VACE input; this is a {} model",
                    cfg.task.name()
                ),
            });
        }
        let mut inputs = vec![
            TensorSpec::new("hidden_states", f32_, b, &[cfg.in_dim as u64, f, h, w]),
            TensorSpec::new("timestep", f32_, b, &[]),
            TensorSpec::new(
                "encoder_hidden_states",
                f32_,
                b,
                &[profile.text_len as u64, cfg.text_dim as u64],
            ),
        ];
        if cfg.task.has_image() {
            let image_dim = cfg.image_dim.unwrap_or(1280) as u64;
            inputs.push(TensorSpec::new(
                "encoder_hidden_states_image",
                f32_,
                b,
                &[cfg.image_context_tokens() as u64, image_dim],
            ));
        }
        if cfg.task == Task::Vace {
            inputs.push(TensorSpec::new(
                "control_hidden_states",
                f32_,
                b,
                &[cfg.vace_in_dim as u64, f, h, w],
            ));
            inputs.push(vace_scale_spec(cfg));
        }
        let outputs = vec![TensorSpec::new(
            "noise_pred",
            f32_,
            b,
            &[cfg.out_dim as u64, f, h, w],
        )];
        Ok(NetworkContract { inputs, outputs })
    }

    /// The DiT as step-scheduled stage graphs (exported beside the whole
    /// graph, sharing its weights), in execution order. Names connect the
    /// stages: an input of one stage is the output of an earlier stage of
    /// the same name, or an input of the whole call.
    ///
    /// - `context` (once per prompt and CFG branch): `encoder_hidden_states`
    ///   (+ I2V `encoder_hidden_states_image`) → `context [B, L, d]`
    ///   (+ `context_image [B, 257, d]`);
    /// - `time` (once per schedule, any number of rows): `timestep [S]` →
    ///   `temb [S, d]` (the time MLP's output `e`), `timestep_proj [S, 6, d]`
    ///   (`e0`, the blocks' modulation input);
    /// - `embed` (per step): `hidden_states [B, 16, F', H', W']` (+ I2V
    ///   `y [B, 20, F', H', W']`, concatenated inside) → `tokens [B, n, d]`,
    ///   the block stack's input;
    /// - `vace` (VACE, per step and CFG branch): `tokens`,
    ///   `control_hidden_states`, `timestep_proj`, `context` → `hints
    ///   [B, n_vace_layers, n, d]`, which `block_first` / `block_rest` take
    ///   with `control_hidden_states_scale` and add after the blocks of
    ///   `vace_layers` (`docs/WAN.md` §14);
    /// - `block_first` (per step): block 0, `tokens` → `hidden_first`;
    /// - `block_rest` (per step, only with more than one block): blocks
    ///   1..N, `hidden_first` → `hidden`, the block stack's output;
    /// - `head` (per step): the last block output, `temb` → `noise_pred`.
    ///
    /// Every boundary tensor is float32 for every precision (the casts are
    /// exact: half values round-trip through float32).
    pub fn dit_stages(cfg: &DitConfig, profile: &Profile) -> Result<Vec<(DitStage, Self)>> {
        let whole = Self::dit(cfg, profile)?;
        let b = batch_dim(profile);
        let (fp, hp, wp) = profile.patch_grid();
        let n = (fp * hp * wp) as u64;
        let d = cfg.dim as u64;
        let f32_ = DType::Float32;
        let i2v = cfg.task.has_image();
        let vace = cfg.task == Task::Vace;
        let spec = |name: &str, rest: &[u64]| TensorSpec::new(name, f32_, b, rest);
        let by_name = |name: &str| whole.input(name).cloned();
        let [_, f, h, w] = profile.dit_latent_shape(cfg.out_dim).map(u64::from);

        let mut context_in = vec![by_name("encoder_hidden_states")];
        let mut context_out = vec![spec("context", &[profile.text_len as u64, d])];
        if i2v {
            context_in.push(by_name("encoder_hidden_states_image"));
            context_out.push(spec(
                "context_image",
                &[cfg.image_context_tokens() as u64, d],
            ));
        }
        let context_in: Vec<TensorSpec> = context_in.into_iter().flatten().collect();
        let steps = |name: &str, rest: &[u64]| TensorSpec::new(name, f32_, Dim::Batch, rest);
        let time = NetworkContract {
            inputs: vec![steps("timestep", &[])],
            outputs: vec![steps("temb", &[d]), steps("timestep_proj", &[6, d])],
        };
        let mut embed_in = vec![spec("hidden_states", &[cfg.out_dim as u64, f, h, w])];
        if i2v {
            let y = cfg.in_dim.saturating_sub(cfg.out_dim) as u64;
            embed_in.push(spec("y", &[y, f, h, w]));
        }
        let tokens = spec("tokens", &[n, d]);
        let mut cond = vec![spec("timestep_proj", &[6, d]), context_out[0].clone()];
        if i2v {
            cond.push(context_out[1].clone());
        }
        let n_hints = cfg.vace_layers.len() as u64;
        let hints = spec("hints", &[n_hints, n, d]);
        let vace_stage = NetworkContract {
            inputs: vec![tokens.clone()]
                .into_iter()
                .chain(by_name("control_hidden_states"))
                .chain(cond.iter().cloned())
                .collect(),
            outputs: vec![hints.clone()],
        };
        if vace {
            cond.push(hints);
            cond.extend(by_name("control_hidden_states_scale"));
        }
        let block = |input: &TensorSpec, out: &str| {
            let mut inputs = vec![input.clone()];
            inputs.extend(cond.iter().cloned());
            NetworkContract {
                inputs,
                outputs: vec![spec(out, &[n, d])],
            }
        };
        let mut stages = vec![
            (
                DitStage::Context,
                NetworkContract {
                    inputs: context_in,
                    outputs: context_out.clone(),
                },
            ),
            (DitStage::Time, time),
            (
                DitStage::Embed,
                NetworkContract {
                    inputs: embed_in,
                    outputs: vec![tokens.clone()],
                },
            ),
        ];
        if vace {
            stages.push((DitStage::Vace, vace_stage));
        }
        stages.push((DitStage::BlockFirst, block(&tokens, "hidden_first")));
        if cfg.num_layers > 1 {
            let first = spec("hidden_first", &[n, d]);
            stages.push((DitStage::BlockRest, block(&first, "hidden")));
        }
        let last = stages
            .last()
            .map(|(_, c)| c.outputs[0].clone())
            .ok_or_else(|| Error::InvalidProfile {
                flag: "--networks",
                reason: "no DiT stages".into(),
            })?;
        stages.push((
            DitStage::Head,
            NetworkContract {
                inputs: vec![last, spec("temb", &[d])],
                outputs: whole.outputs.clone(),
            },
        ));
        Ok(stages)
    }

    /// The step-cache graphs of the DiT ([`CacheGraph`]), on rows of the
    /// block stack's boundary `[B, n, d]` (float32) and the per-row
    /// decision `computed [B]` (float32, 1 = the row ran the blocks, 0 =
    /// it skipped):
    /// - `cache_head`: `hidden`, `base`, `residual`, `computed` → `head_in`;
    /// - `cache_store`: `a`, `b`, `prev`, `computed` → `next`;
    /// - `cache_copy`: `x` → `y`;
    /// - `cache_fb_indicator`: `tokens`, `first`, `ref` → `diff [B]`,
    ///   `norm [B]` (float64).
    pub fn dit_cache_graphs(cfg: &DitConfig, profile: &Profile) -> Result<Vec<(CacheGraph, Self)>> {
        // The same checks (and the same n) as the stages.
        let stages = Self::dit_stages(cfg, profile)?;
        let tokens = stages
            .iter()
            .find(|(s, _)| *s == DitStage::Embed)
            .map(|(_, c)| c.outputs[0].shape.clone())
            .ok_or_else(|| Error::InvalidProfile {
                flag: "--networks",
                reason: "no DiT embed stage".into(),
            })?;
        let b = batch_dim(profile);
        let row = |name: &str| TensorSpec {
            name: name.into(),
            dtype: DType::Float32,
            shape: tokens.clone(),
        };
        let per_row = |name: &str, dtype: DType| TensorSpec {
            name: name.into(),
            dtype,
            shape: vec![b],
        };
        let computed = per_row("computed", DType::Float32);
        let c =
            |inputs: Vec<TensorSpec>, outputs: Vec<TensorSpec>| NetworkContract { inputs, outputs };
        Ok(vec![
            (
                CacheGraph::Head,
                c(
                    vec![
                        row("hidden"),
                        row("base"),
                        row("residual"),
                        computed.clone(),
                    ],
                    vec![row("head_in")],
                ),
            ),
            (
                CacheGraph::Store,
                c(
                    vec![row("a"), row("b"), row("prev"), computed],
                    vec![row("next")],
                ),
            ),
            (CacheGraph::Copy, c(vec![row("x")], vec![row("y")])),
            (
                CacheGraph::FbIndicator,
                c(
                    vec![row("tokens"), row("first"), row("ref")],
                    vec![
                        per_row("diff", DType::Float64),
                        per_row("norm", DType::Float64),
                    ],
                ),
            ),
        ])
    }

    /// Text encoder: `input_ids`, `attention_mask [B, text_len]` int64 →
    /// `last_hidden_state [B, text_len, d_model]` (the raw encoder output;
    /// trimming and zero-padding are the runtime's).
    pub fn text_encoder(cfg: &Umt5Config, profile: &Profile) -> Self {
        let b = batch_dim(profile);
        let l = profile.text_len as u64;
        NetworkContract {
            inputs: vec![
                TensorSpec::new("input_ids", DType::Int64, b, &[l]),
                TensorSpec::new("attention_mask", DType::Int64, b, &[l]),
            ],
            outputs: vec![TensorSpec::new(
                "last_hidden_state",
                DType::Float32,
                b,
                &[l, cfg.d_model as u64],
            )],
        }
    }

    /// Image encoder: `pixel_values [B, 3, S, S]` (CLIP-normalised) →
    /// `image_embeds [B, tokens, width]` (penultimate block, no final norm).
    pub fn image_encoder(cfg: &ClipVisionConfig, profile: &Profile) -> Self {
        let b = batch_dim(profile);
        let s = cfg.image_size as u64;
        NetworkContract {
            inputs: vec![TensorSpec::new(
                "pixel_values",
                DType::Float32,
                b,
                &[3, s, s],
            )],
            outputs: vec![TensorSpec::new(
                "image_embeds",
                DType::Float32,
                b,
                &[cfg.tokens() as u64, cfg.width as u64],
            )],
        }
    }

    /// VAE encoder, as a whole call: `video [1, 3, F, H, W]` in [−1, 1] →
    /// `latent_mean [1, z, F', H/8, W/8]` (raw, not normalised). Batch 1.
    pub fn vae_encoder(cfg: &VaeConfig, profile: &Profile) -> Self {
        let one = Dim::Fixed(1);
        let (f, h, w) = (
            profile.frames as u64,
            profile.height as u64,
            profile.width as u64,
        );
        let [z, lf, lh, lw] = profile.latent_shape(cfg.z_dim).map(u64::from);
        NetworkContract {
            inputs: vec![TensorSpec::new("video", DType::Float32, one, &[3, f, h, w])],
            outputs: vec![TensorSpec::new(
                "latent_mean",
                DType::Float32,
                one,
                &[z, lf, lh, lw],
            )],
        }
    }

    /// VAE decoder, as a whole call: `latents [1, z, F', H', W']` (raw) →
    /// `video [1, 3, F, H, W]` clamped to [−1, 1]. Batch 1.
    pub fn vae_decoder(cfg: &VaeConfig, profile: &Profile) -> Self {
        let e = Self::vae_encoder(cfg, profile);
        NetworkContract {
            inputs: vec![TensorSpec {
                name: "latents".into(),
                ..e.outputs[0].clone()
            }],
            outputs: e.inputs,
        }
    }

    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dit_contract_for_480p() {
        let p = Profile::builtin("480p").unwrap();
        let c = NetworkContract::dit(&DitConfig::t2v_1_3b(), &p).unwrap();
        assert_eq!(c.inputs.len(), 3);
        assert_eq!(c.inputs[0].concrete_shape(1), vec![1, 16, 21, 60, 104]);
        assert_eq!(c.inputs[2].concrete_shape(1), vec![1, 512, 4096]);
        assert_eq!(c.outputs[0].concrete_shape(1), vec![1, 16, 21, 60, 104]);
        let c = NetworkContract::dit(&DitConfig::i2v_14b(), &p).unwrap();
        assert_eq!(c.inputs[0].concrete_shape(1), vec![1, 36, 21, 60, 104]);
        assert_eq!(c.inputs[3].concrete_shape(1), vec![1, 257, 1280]);
        let c = NetworkContract::dit(&DitConfig::flf2v_14b(), &p).unwrap();
        assert_eq!(c.inputs[0].concrete_shape(1), vec![1, 36, 21, 60, 104]);
        assert_eq!(c.inputs[3].concrete_shape(1), vec![1, 514, 1280]);
    }

    #[test]
    fn cache_graphs_take_the_block_stack_rows() {
        let p = Profile::builtin("480p").unwrap();
        let cfg = DitConfig::t2v_1_3b();
        let graphs = NetworkContract::dit_cache_graphs(&cfg, &p).unwrap();
        let roles: Vec<&str> = graphs.iter().map(|(g, _)| g.name()).collect();
        assert_eq!(
            roles,
            [
                "cache_head",
                "cache_store",
                "cache_copy",
                "cache_fb_indicator"
            ]
        );
        for (g, c) in &graphs {
            assert_eq!(CacheGraph::from_name(g.name()), Some(*g));
            for t in c.inputs.iter().chain(&c.outputs) {
                let want: &[u64] = match t.name.as_str() {
                    "computed" | "diff" | "norm" => &[1],
                    _ => &[1, 32_760, 1536],
                };
                assert_eq!(t.concrete_shape(1), want, "{g}: {}", t.name);
                let dtype = if matches!(t.name.as_str(), "diff" | "norm") {
                    DType::Float64
                } else {
                    DType::Float32
                };
                assert_eq!(t.dtype, dtype, "{g}: {}", t.name);
            }
        }
        // The batch axis follows the profile's, as the stages' does.
        let dynamic = p.clone().with_batch(BatchMode::Dynamic).unwrap();
        let graphs = NetworkContract::dit_cache_graphs(&cfg, &dynamic).unwrap();
        assert!(
            graphs
                .iter()
                .all(|(_, c)| c.inputs[0].shape[0] == Dim::Batch)
        );
    }

    #[test]
    fn dit_stages_connect_by_name() {
        let p = Profile::builtin("480p").unwrap();
        let refs = p.clone().with_reference_images(1).unwrap();
        for cfg in [
            DitConfig::t2v_1_3b(),
            DitConfig::i2v_14b(),
            DitConfig::flf2v_14b(),
            DitConfig::vace_1_3b(),
        ] {
            let vace = cfg.task == Task::Vace;
            let p = if vace { refs.clone() } else { p.clone() };
            let whole = NetworkContract::dit(&cfg, &p).unwrap();
            let stages = NetworkContract::dit_stages(&cfg, &p).unwrap();
            let mut known: Vec<TensorSpec> = whole.inputs.clone();
            if cfg.task.has_image() {
                // hidden_states of the whole graph is noise (16) ‖ y (20):
                // the stages take them apart.
                let part = |name: &str, c: u64| {
                    TensorSpec::new(name, DType::Float32, Dim::Fixed(1), &[c, 21, 60, 104])
                };
                known.insert(0, part("hidden_states", 16));
                known.push(part("y", 20));
            }
            for (stage, c) in &stages {
                for t in &c.inputs {
                    let from = known.iter().find(|k| k.name == t.name);
                    let from =
                        from.unwrap_or_else(|| panic!("{stage}: {} has no producer", t.name));
                    assert_eq!(from.shape[1..], t.shape[1..], "{stage}: {}", t.name);
                }
                known.extend(c.outputs.iter().cloned());
            }
            let (last, head) = stages.last().unwrap();
            assert_eq!(*last, DitStage::Head);
            assert_eq!(head.outputs, whole.outputs);
            // One reference frame adds one latent frame: 22·30·52 tokens.
            let tokens = if vace { 34_320 } else { 32_760 };
            assert_eq!(
                stages[2].1.outputs[0].concrete_shape(1),
                vec![1, tokens, cfg.dim as u64]
            );
            if vace {
                assert_eq!(stages[3].0, DitStage::Vace);
                assert_eq!(
                    stages[3].1.outputs[0].concrete_shape(1),
                    vec![1, 15, tokens, 1536]
                );
                let scale = whole.input("control_hidden_states_scale").unwrap();
                assert_eq!(scale.concrete_shape(1), vec![15]);
                assert!(!scale.is_batched());
                scale.check("dit", DType::Float32, &[15]).unwrap();
                assert!(scale.check("dit", DType::Float32, &[1, 15]).is_err());
            }
        }
        // Reference images belong to VACE only.
        assert!(NetworkContract::dit(&DitConfig::t2v_1_3b(), &refs).is_err());
    }

    #[test]
    fn check_names_tensor_and_reason() {
        let p = Profile::custom(32, 32, 9, 32)
            .unwrap()
            .with_batch(BatchMode::Fixed(1))
            .unwrap();
        let mut cfg = DitConfig::t2v_1_3b();
        cfg.text_dim = 32;
        let c = NetworkContract::dit(&cfg, &p).unwrap();
        let hs = &c.inputs[0];
        // Batch 2 on a batch-1 engine is fine (the runtime loops).
        hs.check("dit", DType::Float32, &[2, 16, 3, 4, 4]).unwrap();
        let e = hs
            .check("dit", DType::Float32, &[1, 16, 3, 8, 4])
            .unwrap_err();
        assert!(e.to_string().contains("hidden_states"), "{e}");
        let e = hs
            .check("dit", DType::Float16, &[1, 16, 3, 4, 4])
            .unwrap_err();
        assert!(e.to_string().contains("dtype"), "{e}");
        assert!(hs.check("dit", DType::Float32, &[0, 16, 3, 4, 4]).is_err());
    }

    #[test]
    fn dims_serialise_as_numbers_or_batch() {
        let s = serde_json::to_string(&vec![Dim::Batch, Dim::Fixed(16)]).unwrap();
        assert_eq!(s, r#"["batch",16]"#);
        let back: Vec<Dim> = serde_json::from_str(&s).unwrap();
        assert_eq!(back, vec![Dim::Batch, Dim::Fixed(16)]);
        assert!(serde_json::from_str::<Dim>(r#""time""#).is_err());
    }

    #[test]
    fn network_names_parse_both_spellings() {
        assert_eq!(
            "text-encoder".parse::<NetworkKind>().unwrap(),
            NetworkKind::TextEncoder
        );
        assert_eq!("dit".parse::<NetworkKind>().unwrap(), NetworkKind::Dit);
        assert!("unet".parse::<NetworkKind>().is_err());
    }
}
