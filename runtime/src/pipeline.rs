//! Text-to-video, image-to-video and first-last-frame-to-video, end to end,
//! with compiled engines.
//!
//! Mirrors `wan/text2video.py::WanT2V.generate`,
//! `wan/image2video.py::WanI2V.generate` and
//! `wan/first_last_frame2video.py::WanFLF2V.generate` of the official
//! repository (`docs/WAN.md` §9.1, §13): prompt encoding (the default
//! negative prompt from the artifact cache), initial noise, the
//! step-scheduled sampler with classifier-free guidance in fp32, the image
//! conditioning (CLIP tokens, the 4 mask channels and the VAE latent of
//! `[image, zeros…]`, FLF2V `[first, zeros…, last]`), and a streaming VAE
//! decode. The resolution is the profile's: engines are static.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use wanrt_core::{DType, NetworkKind, Task, VaeConfig};

use crate::backend::Backend;
use crate::cache::{CacheOptions, CachePlan, CacheRecord};
use crate::chunked::TimeAssembler;
use crate::dit::{BoundDit, Conditioning};
use crate::engine::{Artifacts, Network};
use crate::error::{Error, Result};
use crate::exec::ExecutionSettings;
use crate::prompt::PromptEncoder;
use crate::schedule::{
    Sampler, Schedule, Solver, apply_guidance, apply_guidance_zero_star, guidance_needs_uncond,
};
use crate::tensorfile::HostTensor;

/// What to generate. `None` fields take the official defaults for the task.
#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    pub prompt: String,
    /// `None` or empty: the official default negative prompt of the task.
    pub negative_prompt: Option<String>,
    /// The conditioning image (I2V) or the first frame (FLF2V), decoded
    /// (the application layer reads files: `wanrt_media::image::load_image`).
    pub image: Option<InputImage>,
    /// The last frame (FLF2V, `--last-image`), decoded.
    pub last_image: Option<InputImage>,
    pub steps: Option<usize>,
    pub guidance_scale: Option<f32>,
    pub shift: Option<f64>,
    pub solver: Solver,
    pub seed: u64,
    /// Initial noise `[1, 16, F', H', W']` (normalised latent space).
    pub latents: Option<HostTensor>,
    /// A step-distilled model's denoising step list (`--timesteps`), in
    /// place of `steps` (see `Schedule::step_distill`).
    pub timesteps: Option<Vec<u32>>,
    /// CFG-Zero*'s optimised scale in the guidance (`--cfg-zero-star`).
    pub cfg_zero_star: bool,
    /// Velocity zero for the first K steps, whose forwards are skipped
    /// (`--zero-init-steps`).
    pub zero_init_steps: usize,
    /// VACE: control video, mask, reference images and context scale.
    pub vace: Option<crate::vace::VaceInputs>,
    /// Step caching (`--cache*`, `docs/WAN.md` §cache); none by default.
    pub cache: CacheOptions,
}

/// Output frame rate of every Wan2.1 task (`docs/WAN.md` §9.2: `sample_fps = 16`).
pub const DEFAULT_FPS: u32 = 16;

/// A decoded conditioning image and where it came from (a path, an upload),
/// which only labels it in the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputImage {
    pub pixels: crate::image::RgbImage,
    pub source: String,
}

impl InputImage {
    pub fn new(pixels: crate::image::RgbImage, source: impl Into<String>) -> Self {
        Self {
            pixels,
            source: source.into(),
        }
    }
}

/// Whether a conditioning image is given exactly when the engines' task
/// takes one (`--image`): checked before anything is decoded or loaded.
pub fn check_task_image(task: Task, has_image: bool) -> Result<()> {
    match (task, has_image) {
        (Task::I2v, false) => Err(Error::arg(
            "--image",
            "these engines are image-to-video: pass --image",
        )),
        (Task::Flf2v, false) => Err(Error::arg(
            "--image",
            "these engines are first-last-frame-to-video: pass the first frame with --image",
        )),
        (Task::T2v, true) => Err(Error::arg(
            "--image",
            "these engines are text-to-video and take no image (compile an I2V model)",
        )),
        (Task::Vace, true) => Err(Error::arg(
            "--image",
            "these engines are VACE (video creation and editing) and take no --image: \
             see --control-video, --control-mask and --reference-image",
        )),
        _ => Ok(()),
    }
}

/// Whether VACE inputs (control video, mask, reference images, context
/// scale) are given only to VACE engines.
pub fn check_task_vace(task: Task, has_vace: bool) -> Result<()> {
    if has_vace && task != Task::Vace {
        return Err(Error::arg(
            "--control-video",
            format!(
                "control videos, masks, reference images and --context-scale are VACE inputs; \
                 these engines are {} (compile a VACE model)",
                task.name()
            ),
        ));
    }
    Ok(())
}

/// Whether a last frame is given exactly when the engines' task takes one
/// (FLF2V, `--last-image`): checked before anything is decoded or loaded.
pub fn check_task_last_image(task: Task, has_last_image: bool) -> Result<()> {
    match (task, has_last_image) {
        (Task::Flf2v, false) => Err(Error::arg(
            "--last-image",
            "these engines are first-last-frame-to-video: pass the last frame with --last-image",
        )),
        (task, true) if task != Task::Flf2v => Err(Error::arg(
            "--last-image",
            format!(
                "these engines are {} and take no last frame (compile an FLF2V model)",
                task.name()
            ),
        )),
        _ => Ok(()),
    }
}

/// A last frame (FLF2V) must be the size of the first: the official code
/// centre-crops one of another size, a path not implemented here.
/// `first`, `last`: width × height; `source` names the last frame.
pub fn check_last_image_size(first: (u32, u32), last: (u32, u32), source: &str) -> Result<()> {
    if first == last {
        return Ok(());
    }
    Err(Error::arg(
        "--last-image",
        format!(
            "{source} is {}x{}, the first frame {}x{}: give both frames the same size",
            last.0, last.1, first.0, first.1
        ),
    ))
}

/// The step cache `opts` settles to for `steps` steps of the DiT of
/// `artifacts` run as `dit_graphs` (`None`: no caching), with every check a
/// generation makes of it: the task, the stage graphs, the model's tables
/// and presets, `--zero-init-steps`. Needs only the manifest, so a caller
/// can check a request before the engines load (wan-serve does at
/// submission).
pub fn cache_plan_for(
    artifacts: &Artifacts,
    dit_graphs: DitGraphs,
    opts: &CacheOptions,
    steps: usize,
    zero_init_steps: usize,
) -> Result<Option<CachePlan>> {
    if opts.is_none() {
        return opts.check_none().map(|()| None);
    }
    if artifacts.manifest.model.task == Task::Vace {
        return Err(Error::arg(
            "--cache",
            "step caching is not yet checked against a reference for VACE engines",
        ));
    }
    let entry = artifacts.entry(NetworkKind::Dit)?;
    // Artifacts without stage graphs run the whole graph (`load_with`).
    if dit_graphs != DitGraphs::Stages || entry.stages.is_empty() {
        return Err(Error::arg(
            "--cache",
            "step caching runs on the DiT's stage graphs; these engines run the whole graph (compile them with stages)",
        ));
    }
    let cfg: wanrt_core::DitConfig =
        serde_json::from_value(entry.config.clone()).map_err(|e| Error::Artifacts {
            dir: artifacts.dir.clone(),
            reason: format!("dit config in manifest.json: {e}"),
        })?;
    let plan = opts.resolve(&cfg, &entry.profile, steps)?;
    if plan.is_some() && zero_init_steps > 0 {
        return Err(Error::arg(
            "--cache",
            "cannot be combined with --zero-init-steps (the zeroed steps run no DiT to cache)",
        ));
    }
    Ok(plan)
}

/// The settings a run actually used (for the sidecar).
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub task: Task,
    pub prompt: String,
    pub negative_prompt: String,
    pub image: Option<String>,
    /// The last frame (FLF2V).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_image: Option<String>,
    pub steps: usize,
    pub guidance_scale: f32,
    pub shift: f64,
    pub solver: String,
    pub seed: u64,
    pub latents_from_file: bool,
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub fps: u32,
    /// The timesteps the DiT was given, one per step (floats: a
    /// `--timesteps` step list conditions it on 1000·σ).
    pub timesteps: Vec<f32>,
    /// The sampler's sigmas, one per step plus the final one (0).
    pub sigmas: Vec<f32>,
    /// The denoising step list given with `--timesteps`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denoising_step_list: Option<Vec<u32>>,
    pub cfg_zero_star: bool,
    pub zero_init_steps: usize,
    /// How the sessions were created (backend settings).
    pub execution: ExecutionSettings,
    /// `stages` (the step-scheduled stage graphs, bound buffers) or `whole`
    /// (the whole DiT graph, host tensors per step).
    pub dit_graphs: DitGraphs,
    /// The step cache's policy, parameters and, per CFG branch, which steps
    /// ran the block stack.
    pub cache: CacheRecord,
    /// VACE: what the context was built from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vace: Option<VaceSettings>,
}

/// The VACE settings of a run (for the sidecar).
#[derive(Debug, Clone, Serialize)]
pub struct VaceSettings {
    pub control_video: bool,
    pub control_mask: bool,
    pub reference_images: usize,
    pub context_scale: f32,
}

/// Which of the DiT's exported graphs a pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DitGraphs {
    /// The stage graphs with buffers bound once per generation (default;
    /// artifacts without stage graphs fall back to `Whole`).
    #[default]
    Stages,
    /// The whole graph, inputs built and outputs copied as host tensors on
    /// every step (what the runtime did before the stage graphs; kept for
    /// comparison and for artifacts compiled without stages).
    Whole,
}

/// Wall-clock time per stage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub load_s: f64,
    pub text_encoder_s: f64,
    pub image_conditioning_s: f64,
    pub denoise_s: f64,
    pub step_s: Vec<f64>,
    pub vae_decode_s: f64,
}

/// What a run produced.
pub struct Generated {
    pub settings: Settings,
    /// Final denoised latents `[1, 16, F', H', W']` (normalised, before the VAE).
    pub latents: HostTensor,
    /// The decoded video `[1, 3, F, H, W]` in [−1, 1].
    pub video: HostTensor,
    pub timings: Timings,
}

/// The step count a generation runs: the `--timesteps` list's length
/// (`timesteps`), else `steps`, else the task's official default
/// ([`defaults`]).
pub fn steps_to_run(
    task: Task,
    width: u32,
    height: u32,
    steps: Option<usize>,
    timesteps: Option<usize>,
) -> usize {
    timesteps.unwrap_or_else(|| steps.unwrap_or_else(|| defaults(task, width, height).0))
}

/// Default sampling settings of the official code (`docs/WAN.md` §9.2,
/// §13, §14): 50 steps (40 for I2V), guidance 5, shift 5 (3 for I2V at
/// 480P areas, 16 for FLF2V and VACE).
pub fn defaults(task: Task, width: u32, height: u32) -> (usize, f32, f64) {
    match task {
        Task::T2v => (50, 5.0, 5.0),
        Task::Flf2v => (50, 5.0, 16.0),
        Task::Vace => (50, 5.0, 16.0),
        Task::I2v if (width as u64) * (height as u64) <= 832 * 480 => (40, 5.0, 3.0),
        Task::I2v => (40, 5.0, 5.0),
    }
}

/// Standard normal noise from a documented generator: SplitMix64 seeded with
/// `seed`, 53-bit uniforms, Box–Muller pairs (cos branch first), filled in
/// row-major order. Reproducible across machines; not torch's stream (to
/// reproduce a reference run exactly, pass its noise with `--latents-in`).
pub fn gaussian_noise(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // u1 in (0, 1] so ln(u1) is finite.
        let u1 = ((next() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let u2 = (next() >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        out.push((r * th.cos()) as f32);
        out.push((r * th.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// Channel-wise concatenation of `[1, c_i, T, H, W]` tensors.
fn concat_channels(parts: &[&HostTensor]) -> HostTensor {
    let mut shape = parts[0].shape.clone();
    shape[1] = parts.iter().map(|p| p.shape[1]).sum();
    let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
    for p in parts {
        data.extend_from_slice(&p.data);
    }
    HostTensor {
        dtype: parts[0].dtype,
        shape,
        data,
    }
}

/// Stacks two `[1, …]` tensors into `[2, …]`.
fn stack2(a: &HostTensor, b: &HostTensor) -> HostTensor {
    HostTensor::concat_batch(&[a.clone(), b.clone()]).expect("same shapes")
}

/// A NaN or infinity in a network's output is an error naming the network
/// and where, never a silently black or constant video.
fn check_finite(network: &str, at: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::Inference {
            network: network.into(),
            reason: format!("non-finite output {} at element {i} {at}", values[i]),
        }),
    }
}

/// The VAE statistics size loops over the latent channels: checked before use.
fn check_vae_config(artifacts: &Artifacts, vae: &VaeConfig) -> Result<()> {
    let fail = |reason: String| Error::Artifacts {
        dir: artifacts.dir.clone(),
        reason: format!("vae_decoder config in manifest.json: {reason}"),
    };
    vae.validate().map_err(fail)?;
    let dit = artifacts.entry(NetworkKind::Dit)?;
    let channels = dit.outputs.first().and_then(|o| match o.shape.get(1) {
        Some(wanrt_core::Dim::Fixed(c)) => Some(*c),
        _ => None,
    });
    if channels != Some(u64::from(vae.z_dim)) {
        return Err(fail(format!(
            "z_dim {} does not match the DiT's latent channels {channels:?}",
            vae.z_dim
        )));
    }
    Ok(())
}

/// Everything a denoising loop starts from ([`Pipeline::prepare`]).
#[derive(Debug, Clone)]
pub struct DenoiseInputs {
    /// Prompt embedding `[1, L, text_dim]`.
    pub cond: HostTensor,
    /// Negative prompt embedding when the guidance needs it.
    pub uncond: Option<HostTensor>,
    /// I2V: CLIP tokens `[1, 257, W]` (FLF2V `[1, 514, W]`) and the
    /// condition `y [1, 20, F', H', W']`.
    pub image: Option<(HostTensor, HostTensor)>,
    /// VACE: `control_hidden_states [1, 96, refs + F', H', W']` and
    /// `control_hidden_states_scale [n_vace_layers]`.
    pub vace: Option<(HostTensor, HostTensor)>,
    /// Initial latents `[1, 16, F', H', W']`.
    pub latents: Vec<f32>,
    pub solver: Solver,
    /// The σ grid and DiT timesteps (the solver's, or a `--timesteps` list).
    pub schedule: Schedule,
    /// Seed of the noise a stochastic solver (LCM) draws between steps.
    pub seed: u64,
    pub guidance: f32,
    /// CFG-Zero*'s optimised scale instead of plain CFG.
    pub cfg_zero_star: bool,
    /// CFG-Zero*'s zero-init: the first steps take v = 0.
    pub zero_init_steps: usize,
    /// The step cache, settled for this schedule.
    pub cache: Option<CachePlan>,
}

enum StepPath<'p> {
    /// Boxed: the bound generation is large and the other path small.
    Bound(Box<BoundDit<'p>>),
    Whole {
        dit: &'p mut Network,
        inputs: Box<DenoiseInputs>,
    },
}

/// A denoising loop in progress: the DiT, CFG and the sampler update, one
/// [`Denoiser::step`] at a time (what [`Pipeline::generate`] runs).
pub struct Denoiser<'p> {
    path: StepPath<'p>,
    sampler: Sampler,
    latents: Vec<f32>,
    guidance: f32,
    cfg_zero_star: bool,
    zero_init_steps: usize,
    /// v = 0 for CFG-Zero*'s zero-init steps (allocated once, if needed).
    zeros: Vec<f32>,
    shape: Vec<u64>,
}

impl<'p> Denoiser<'p> {
    /// A denoising loop on a loaded DiT alone (what [`Pipeline::denoiser`]
    /// starts; the benches drive it on a DiT compiled without the other
    /// networks). With the stage graphs it binds the generation's buffers:
    /// the context stage runs for each CFG branch and the time stage for
    /// the whole schedule, once. `shape` is the latent shape
    /// `[1, C, F', H', W']` of `inputs.latents`.
    pub fn new(dit: &'p mut Network, inputs: DenoiseInputs, shape: Vec<u64>) -> Result<Self> {
        let n = inputs.latents.len();
        let want: u64 = shape.iter().product();
        if want != n as u64 {
            return Err(Error::arg(
                "latents",
                format!("{n} initial latents for a latent shape {shape:?}"),
            ));
        }
        let sampler = Sampler::with_schedule(inputs.solver, inputs.schedule.clone(), n)?
            .with_noise_seed(inputs.seed);
        let guidance = inputs.guidance;
        let (cfg_zero_star, inputs_zero) = (inputs.cfg_zero_star, inputs.zero_init_steps);
        let latents = inputs.latents.clone();
        let path = if dit.staged_dit().is_some() {
            let staged = dit.staged_dit().expect("checked just above");
            {
                let timesteps = sampler.schedule().dit_timesteps().to_vec();
                let (image, y) = match &inputs.image {
                    Some((tok, y)) => (Some(tok), Some(y)),
                    None => (None, None),
                };
                let c = Conditioning {
                    cond: &inputs.cond,
                    uncond: inputs.uncond.as_ref(),
                    image,
                    y,
                    timesteps: &timesteps,
                };
                let constants: Vec<(&str, &HostTensor)> = match &inputs.vace {
                    Some((ctl, scale)) => vec![
                        ("control_hidden_states", ctl),
                        ("control_hidden_states_scale", scale),
                    ],
                    None => Vec::new(),
                };
                StepPath::Bound(Box::new(staged.bind_cached(
                    &c,
                    &constants,
                    inputs.cache.as_ref(),
                )?))
            }
        } else {
            if inputs.cache.is_some() {
                return Err(Error::arg(
                    "--cache",
                    "step caching runs on the DiT's stage graphs, which these engines lack",
                ));
            }
            StepPath::Whole {
                dit,
                inputs: Box::new(inputs),
            }
        };
        let zeros = vec![0.0; if inputs_zero > 0 { n } else { 0 }];
        Ok(Denoiser {
            path,
            sampler,
            latents,
            guidance,
            cfg_zero_star,
            zero_init_steps: inputs_zero,
            zeros,
            shape,
        })
    }
}

impl Denoiser<'_> {
    pub fn is_finished(&self) -> bool {
        self.sampler.is_finished()
    }

    /// The schedule's timesteps.
    pub fn timesteps(&self) -> &[f32] {
        self.sampler.schedule().dit_timesteps()
    }

    /// The sampler's sigmas, one per step plus the final one.
    pub fn sigmas(&self) -> &[f32] {
        self.sampler.schedule().sigmas()
    }

    /// Steps taken so far.
    pub fn step_index(&self) -> usize {
        self.sampler.step_index()
    }

    pub fn steps(&self) -> usize {
        self.sampler.steps()
    }

    /// DiT calls per step (2: CFG as two batch-1 calls).
    pub fn calls_per_step(&self) -> usize {
        match &self.path {
            StepPath::Bound(b) => b.calls_per_step(),
            StepPath::Whole { .. } => 1,
        }
    }

    /// The current latents `[1, 16, F', H', W']`.
    pub fn latents(&self) -> &[f32] {
        &self.latents
    }

    pub fn into_latents(self) -> Vec<f32> {
        self.latents
    }

    /// What the step cache did so far (policy `none` without one).
    pub fn cache_record(&self) -> CacheRecord {
        match &self.path {
            StepPath::Bound(b) => b.cache_record().unwrap_or_default(),
            StepPath::Whole { .. } => CacheRecord::default(),
        }
    }

    /// One step: the DiT on the current latents (both CFG branches), the
    /// guidance, and the sampler update of the latents. With bound stage
    /// graphs it allocates nothing: the prediction is read and guided in
    /// the bound output buffer, and the sampler updates the latents in
    /// place.
    pub fn step(&mut self) -> Result<()> {
        let index = self.sampler.step_index();
        let Some(t) = self.sampler.dit_timestep() else {
            return Err(Error::arg(
                "steps",
                format!(
                    "all {} sampling steps were already taken",
                    self.sampler.steps()
                ),
            ));
        };
        if index < self.zero_init_steps {
            // CFG-Zero*'s zero-init: v = 0, no DiT call.
            return self.sampler.step(&mut self.latents, &self.zeros);
        }
        let (guidance, zero_star) = (self.guidance, self.cfg_zero_star);
        let guide = move |cond: &mut [f32], uncond: &[f32]| {
            if zero_star {
                // One sample: the returned scale list is 4 bytes.
                apply_guidance_zero_star(cond, uncond, guidance, 1).map(|_| ())
            } else {
                apply_guidance(cond, uncond, guidance)
            }
        };
        match &mut self.path {
            StepPath::Bound(dit) => {
                dit.run(index, &self.latents)?;
                let (sampler, latents) = (&mut self.sampler, &mut self.latents);
                dit.with_prediction(|cond, uncond| {
                    check_finite("dit", &format!("at step {}", index + 1), cond)?;
                    if let Some(u) = uncond {
                        check_finite("dit", &format!("at step {}", index + 1), u)?;
                        guide(cond, u)?;
                    }
                    sampler.step(latents, cond)
                })
            }
            StepPath::Whole { dit, inputs } => {
                let mut velocity = whole_step(dit, inputs, &self.shape, &self.latents, t)?;
                check_finite("dit", &format!("at step {}", index + 1), &velocity)?;
                let n = self.latents.len();
                if let Some(u) = velocity.get(n..).map(<[f32]>::to_vec) {
                    velocity.truncate(n);
                    guide(&mut velocity, &u)?;
                }
                self.sampler.step(&mut self.latents, &velocity)
            }
        }
    }
}

/// One step on the whole DiT graph with host tensors (the path before the
/// stage graphs): inputs built, outputs copied, on every step.
fn whole_step(
    dit: &mut Network,
    c: &DenoiseInputs,
    shape: &[u64],
    latents: &[f32],
    t: f32,
) -> Result<Vec<f32>> {
    let n = latents.len();
    let x = HostTensor::from_f32(shape.to_vec(), latents);
    let hidden = match &c.image {
        Some((_, y)) => concat_channels(&[&x, y]),
        None => x,
    };
    let timestep = HostTensor::from_f32(vec![1], &[t]);
    let mut inputs = BTreeMap::new();
    match &c.uncond {
        Some(u) => {
            inputs.insert("hidden_states".into(), stack2(&hidden, &hidden));
            inputs.insert("timestep".into(), stack2(&timestep, &timestep));
            inputs.insert("encoder_hidden_states".into(), stack2(&c.cond, u));
            if let Some((tok, _)) = &c.image {
                inputs.insert("encoder_hidden_states_image".into(), stack2(tok, tok));
            }
            if let Some((ctl, _)) = &c.vace {
                inputs.insert("control_hidden_states".into(), stack2(ctl, ctl));
            }
        }
        None => {
            inputs.insert("hidden_states".into(), hidden);
            inputs.insert("timestep".into(), timestep);
            inputs.insert("encoder_hidden_states".into(), c.cond.clone());
            if let Some((tok, _)) = &c.image {
                inputs.insert("encoder_hidden_states_image".into(), tok.clone());
            }
            if let Some((ctl, _)) = &c.vace {
                inputs.insert("control_hidden_states".into(), ctl.clone());
            }
        }
    }
    if let Some((_, scale)) = &c.vace {
        inputs.insert("control_hidden_states_scale".into(), scale.clone());
    }
    let out = dit.run(&inputs)?;
    let pred = out
        .get("noise_pred")
        .and_then(HostTensor::to_f32)
        .ok_or_else(|| Error::Inference {
            network: "dit".into(),
            reason: "no float noise_pred".into(),
        })?;
    // Cond then (with CFG) uncond, n values each.
    let rows = if c.uncond.is_some() { 2 } else { 1 };
    Ok(pred[..rows * n].to_vec())
}

/// The loaded engines of an artifact directory.
pub struct Pipeline {
    pub artifacts: Artifacts,
    pub task: Task,
    dit: Network,
    dit_graphs: DitGraphs,
    execution: ExecutionSettings,
    text: PromptEncoder,
    vae_decoder: Network,
    vae_encoder: Option<Network>,
    image_encoder: Option<Network>,
    vae: VaeConfig,
    pub load_time: Duration,
}

fn need(artifacts: &Artifacts, kind: NetworkKind, why: &str) -> Result<()> {
    if artifacts.manifest.networks.contains_key(&kind) {
        Ok(())
    } else {
        Err(Error::Artifacts {
            dir: artifacts.dir.clone(),
            reason: format!(
                "no '{kind}' network, which {why}; compile it with wan-compile --networks"
            ),
        })
    }
}

impl Pipeline {
    /// Loads every network the task needs on `backend`, with the default
    /// execution settings and the DiT's stage graphs.
    pub fn load(artifacts: Artifacts, backend: Backend) -> Result<Self> {
        Self::load_with(
            artifacts,
            backend,
            &ExecutionSettings::default(),
            DitGraphs::Stages,
        )
    }

    /// Loads every network the task needs on `backend` with `settings`,
    /// running the DiT as `dit_graphs` (artifacts without stage graphs run
    /// the whole graph).
    pub fn load_with(
        artifacts: Artifacts,
        backend: Backend,
        settings: &ExecutionSettings,
        dit_graphs: DitGraphs,
    ) -> Result<Self> {
        settings.check(backend)?;
        let start = Instant::now();
        let task = artifacts.manifest.model.task;
        for (kind, why) in [
            (NetworkKind::Dit, "denoises"),
            (NetworkKind::TextEncoder, "encodes the prompt"),
            (NetworkKind::VaeDecoder, "decodes the video"),
        ] {
            need(&artifacts, kind, why)?;
        }
        if task == Task::Vace {
            need(
                &artifacts,
                NetworkKind::VaeEncoder,
                "encodes the control video and reference images for VACE",
            )?;
        }
        if task.has_image() {
            need(
                &artifacts,
                NetworkKind::ImageEncoder,
                "encodes the conditioning images",
            )?;
            need(
                &artifacts,
                NetworkKind::VaeEncoder,
                "encodes the conditioning video",
            )?;
        }
        // Every network must be compiled for the same profile.
        let dit_profile = artifacts.entry(NetworkKind::Dit)?.profile.clone();
        for (kind, e) in &artifacts.manifest.networks {
            let p = &e.profile;
            if (p.width, p.height, p.frames, p.text_len)
                != (
                    dit_profile.width,
                    dit_profile.height,
                    dit_profile.frames,
                    dit_profile.text_len,
                )
            {
                return Err(Error::Artifacts {
                    dir: artifacts.dir.clone(),
                    reason: format!(
                        "network {kind} was compiled for {}x{}x{} text {}, the DiT for {}x{}x{} text {}",
                        p.width,
                        p.height,
                        p.frames,
                        p.text_len,
                        dit_profile.width,
                        dit_profile.height,
                        dit_profile.frames,
                        dit_profile.text_len
                    ),
                });
            }
        }
        let vae: VaeConfig =
            serde_json::from_value(artifacts.entry(NetworkKind::VaeDecoder)?.config.clone())
                .map_err(|e| Error::Artifacts {
                    dir: artifacts.dir.clone(),
                    reason: format!("vae_decoder config: {e}"),
                })?;
        check_vae_config(&artifacts, &vae)?;
        let has_stages = !artifacts.entry(NetworkKind::Dit)?.stages.is_empty();
        let dit_graphs = if has_stages {
            dit_graphs
        } else {
            DitGraphs::Whole
        };
        let dit = match dit_graphs {
            DitGraphs::Stages => artifacts.load_with(NetworkKind::Dit, backend, settings)?,
            DitGraphs::Whole => artifacts.load_whole(NetworkKind::Dit, backend)?,
        };
        let text = PromptEncoder::load(&artifacts, backend)?;
        let vae_decoder = artifacts.load_with(NetworkKind::VaeDecoder, backend, settings)?;
        let (vae_encoder, image_encoder) = if task.has_image() {
            (
                Some(artifacts.load_with(NetworkKind::VaeEncoder, backend, settings)?),
                Some(artifacts.load_with(NetworkKind::ImageEncoder, backend, settings)?),
            )
        } else if task == Task::Vace {
            (
                Some(artifacts.load_with(NetworkKind::VaeEncoder, backend, settings)?),
                None,
            )
        } else {
            (None, None)
        };
        Ok(Pipeline {
            artifacts,
            task,
            dit,
            dit_graphs,
            execution: settings.clone(),
            text,
            vae_decoder,
            vae_encoder,
            image_encoder,
            vae,
            load_time: start.elapsed(),
        })
    }

    /// The loaded DiT network (`wan-compile --calibrate` runs the whole
    /// graph step by step to read its extra outputs).
    pub fn dit_network(&mut self) -> &mut Network {
        &mut self.dit
    }

    /// The text encoder (to size its cache of recent prompts).
    pub fn prompt_encoder(&mut self) -> &mut PromptEncoder {
        &mut self.text
    }

    pub fn profile(&self) -> &wanrt_core::Profile {
        &self.dit.entry.profile
    }

    /// The DiT's latent shape `[1, 16, F', H', W']` of the profile (VACE:
    /// the reference frames in front of the video's).
    pub fn latent_shape(&self) -> Vec<u64> {
        let p = self.profile();
        let [c, f, h, w] = p.dit_latent_shape(self.vae.z_dim);
        vec![1, c as u64, f as u64, h as u64, w as u64]
    }

    /// Image conditioning: CLIP tokens `[1, 257, W]` and `y = [mask(4) ;
    /// normalised latent of [image, zeros…](16)]` `[1, 20, F', H', W']`;
    /// with a `last` frame (FLF2V) the tokens of both images `[1, 514, W]`
    /// and the latent of `[first, zeros…, last]` with frames 0 and F−1 known.
    fn image_conditioning(
        &mut self,
        first: &crate::image::RgbImage,
        last: Option<&InputImage>,
    ) -> Result<(HostTensor, HostTensor)> {
        let p = self.profile().clone();
        let mut frames = vec![crate::image::to_tensor_pm1(first)];
        if let Some(last) = last {
            let l = &last.pixels;
            check_last_image_size(
                (first.width(), first.height()),
                (l.width(), l.height()),
                &last.source,
            )?;
            frames.push(crate::image::to_tensor_pm1(l));
        }
        let clip = self
            .image_encoder
            .as_mut()
            .expect("image-conditioned pipelines load the image encoder");
        let size = clip.entry.inputs[0].concrete_shape(1)[2] as usize;
        let pixels: Vec<HostTensor> = frames
            .iter()
            .map(|f| crate::image::clip_preprocess(f, size))
            .collect::<Result<_>>()?;
        let pixels = HostTensor::concat_batch(&pixels).expect("CLIP inputs of one size");
        let clip_out = clip.run(&BTreeMap::from([(
            clip.entry.inputs[0].name.clone(),
            pixels,
        )]))?;
        let tokens = clip_out
            .into_values()
            .next()
            .ok_or_else(|| Error::Inference {
                network: "image_encoder".into(),
                reason: "no output".into(),
            })?;
        let tokens = crate::flf2v::tokens_of_one_sample(tokens)?;

        // [first, zeros…(, last)] through the VAE encoder, then normalised.
        let (h, w, f) = (p.height as usize, p.width as usize, p.frames as usize);
        let mut video = vec![0f32; 3 * f * h * w];
        let mut known = Vec::new();
        for (i, img) in frames.iter().enumerate() {
            let at = if i == 0 { 0 } else { f - 1 };
            let frame = crate::image::conditioning_frame(img, p.height, p.width)?;
            for c in 0..3 {
                let start = (c * f + at) * h * w;
                video[start..start + h * w]
                    .copy_from_slice(&frame.data()[c * h * w..(c + 1) * h * w]);
            }
            known.push(at);
        }
        let video = HostTensor::from_f32(vec![1, 3, f as u64, h as u64, w as u64], &video);
        let enc = self
            .vae_encoder
            .as_mut()
            .expect("image-conditioned pipelines load the VAE encoder");
        let mut mu = TimeAssembler::new(enc.entry.outputs[0].concrete_shape(1));
        enc.run_streaming(&video, |c| mu.append(c))?;
        let mu = mu.finish()?;
        let mut z = mu.to_f32().expect("float output");
        let plane = (mu.shape[2] * mu.shape[3] * mu.shape[4]) as usize;
        self.vae.normalize_latents(&mut z, plane);
        let latent = HostTensor::from_f32(mu.shape.clone(), &z);
        let mask =
            crate::flf2v::condition_mask(f, &known, mu.shape[3] as usize, mu.shape[4] as usize)?;
        Ok((tokens, concat_channels(&[&mask, &latent])))
    }

    /// VACE conditioning: `control_hidden_states` built from `inputs` (none:
    /// reference-free, control-free generation) and the hint scales.
    fn vace_conditioning(
        &mut self,
        inputs: Option<&crate::vace::VaceInputs>,
    ) -> Result<(HostTensor, HostTensor)> {
        let p = self.profile().clone();
        let empty = crate::vace::VaceInputs::default();
        let inputs = inputs.unwrap_or(&empty);
        let n_hints = self
            .dit
            .entry
            .inputs
            .iter()
            .find(|t| t.name == "control_hidden_states_scale")
            .map(|t| t.concrete_shape(1)[0])
            .ok_or_else(|| Error::Artifacts {
                dir: self.artifacts.dir.clone(),
                reason: "the VACE DiT takes no control_hidden_states_scale".into(),
            })?;
        let scales = crate::vace::hint_scales(inputs.context_scale, n_hints as usize)?;
        let vae = self
            .vae_encoder
            .as_mut()
            .expect("VACE pipelines load the VAE encoder");
        let ctx = crate::vace::build_context(inputs, &p, vae, &self.vae)?;
        Ok((ctx.context, HostTensor::from_f32(vec![n_hints], &scales)))
    }

    /// The sampling settings `opts` asks for, with the task's defaults.
    /// A `--timesteps` list sets the step count.
    fn sampling(&self, opts: &GenerateOptions) -> (usize, f32, f64) {
        let p = self.profile();
        let (_, d_guidance, d_shift) = defaults(self.task, p.width, p.height);
        let steps = steps_to_run(
            self.task,
            p.width,
            p.height,
            opts.steps,
            opts.timesteps.as_ref().map(Vec::len),
        );
        (
            steps,
            opts.guidance_scale.unwrap_or(d_guidance),
            opts.shift.unwrap_or(d_shift),
        )
    }

    /// Everything before the denoising loop: the initial latents, the
    /// prompt embeddings (the negative one when the guidance needs it) and
    /// the I2V conditioning. Adds the stages' times to `timings`.
    pub fn prepare(
        &mut self,
        opts: &GenerateOptions,
        timings: &mut Timings,
    ) -> Result<DenoiseInputs> {
        let (steps, guidance, shift) = self.sampling(opts);
        if opts.zero_init_steps > steps {
            return Err(Error::arg(
                "--zero-init-steps",
                format!("{} zeroed steps of {steps}", opts.zero_init_steps),
            ));
        }
        if !guidance.is_finite() {
            return Err(Error::arg(
                "--guidance-scale",
                format!("{guidance} is not a finite number"),
            ));
        }
        let schedule = match &opts.timesteps {
            Some(list) => Schedule::step_distill(list, shift)?,
            None => Schedule::for_solver(opts.solver, steps, shift)?,
        };
        let cache = self.cache_plan(&opts.cache, steps, opts.zero_init_steps)?;
        check_task_image(self.task, opts.image.is_some())?;
        check_task_vace(self.task, opts.vace.is_some())?;
        check_task_last_image(self.task, opts.last_image.is_some())?;
        // Noise first (the official I2V draws it before encoding the text).
        let shape = self.latent_shape();
        let n: usize = shape.iter().product::<u64>() as usize;
        let latents = match &opts.latents {
            Some(t) => {
                if t.dtype != DType::Float32 || t.shape != shape {
                    return Err(Error::arg(
                        "--latents-in",
                        format!(
                            "tensor 'latents' is {} {:?}; these engines take float32 {shape:?}",
                            t.dtype, t.shape
                        ),
                    ));
                }
                let v = t.to_f32().expect("float32");
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(Error::arg(
                        "--latents-in",
                        format!("tensor 'latents' holds {} at element {i}", v[i]),
                    ));
                }
                v
            }
            None => gaussian_noise(opts.seed, n),
        };

        let t0 = Instant::now();
        let negative_raw = opts.negative_prompt.clone().unwrap_or_default();
        let cond = self.text.encode(&opts.prompt)?.prompt_embeds();
        let uncond = if guidance_needs_uncond(guidance) {
            Some(self.text.encode_negative(&negative_raw)?.prompt_embeds())
        } else {
            None
        };
        timings.text_encoder_s = t0.elapsed().as_secs_f64();

        let t0 = Instant::now();
        let image = match &opts.image {
            Some(input) => Some(self.image_conditioning(&input.pixels, opts.last_image.as_ref())?),
            None => None,
        };
        let vace = if self.task == Task::Vace {
            Some(self.vace_conditioning(opts.vace.as_ref())?)
        } else {
            None
        };
        timings.image_conditioning_s = t0.elapsed().as_secs_f64();
        Ok(DenoiseInputs {
            cond,
            uncond,
            image,
            vace,
            latents,
            solver: opts.solver,
            schedule,
            seed: opts.seed,
            guidance,
            cfg_zero_star: opts.cfg_zero_star,
            zero_init_steps: opts.zero_init_steps,
            cache,
        })
    }

    /// `opts` settled for `steps` steps of this DiT (`None`: no caching).
    fn cache_plan(
        &self,
        opts: &CacheOptions,
        steps: usize,
        zero_init_steps: usize,
    ) -> Result<Option<CachePlan>> {
        cache_plan_for(
            &self.artifacts,
            self.dit_graphs,
            opts,
            steps,
            zero_init_steps,
        )
    }

    /// Starts the denoising loop on `inputs`. With the stage graphs this
    /// binds the generation's buffers: the context stage runs for each CFG
    /// branch and the time stage for the whole schedule, once.
    pub fn denoiser(&mut self, inputs: DenoiseInputs) -> Result<Denoiser<'_>> {
        let shape = self.latent_shape();
        Denoiser::new(&mut self.dit, inputs, shape)
    }

    /// Runs the whole generation. `on_step(i, n, seconds)` reports progress;
    /// `interrupt` stops cleanly between steps.
    pub fn generate(
        &mut self,
        opts: &GenerateOptions,
        interrupt: Option<&AtomicBool>,
        mut on_step: impl FnMut(usize, usize, f64),
    ) -> Result<Generated> {
        let p = self.profile().clone();
        let (steps, guidance, shift) = self.sampling(opts);
        let check = || match interrupt {
            Some(f) if f.load(Ordering::Relaxed) => Err(Error::Interrupted),
            _ => Ok(()),
        };
        let mut timings = Timings {
            load_s: self.load_time.as_secs_f64(),
            ..Default::default()
        };
        let negative_used = crate::text::negative_prompt_or_default(
            opts.negative_prompt.as_deref().unwrap_or_default(),
            self.task,
        )
        .to_string();
        let inputs = self.prepare(opts, &mut timings)?;
        check()?;
        let shape = self.latent_shape();

        // One call per step and branch, or one batch-2 call: the DiT
        // engine's batch decides.
        let t_denoise = Instant::now();
        let mut denoiser = self.denoiser(inputs)?;
        let timesteps = denoiser.timesteps().to_vec();
        let sigmas = denoiser.sigmas().to_vec();
        while !denoiser.is_finished() {
            check()?;
            let ts = Instant::now();
            denoiser.step()?;
            let secs = ts.elapsed().as_secs_f64();
            timings.step_s.push(secs);
            on_step(denoiser.step_index(), steps, secs);
        }
        let cache = denoiser.cache_record();
        let latents = denoiser.into_latents();
        timings.denoise_s = t_denoise.elapsed().as_secs_f64();
        let final_latents = HostTensor::from_f32(shape.clone(), &latents);

        // Back to the VAE's raw latent space: z / (1/std) + mean, as the
        // official code and diffusers compute it.
        check()?;
        let t0 = Instant::now();
        // VACE: the reference frames are dropped before the decode.
        let video_latents =
            crate::vace::video_frames(&final_latents, u64::from(p.reference_images));
        let vs = &video_latents.shape;
        let plane = (vs[2] * vs[3] * vs[4]) as usize;
        let mut raw = video_latents.to_f32().expect("float32 latents");
        self.vae.denormalize_latents(&mut raw, plane);
        let raw = HostTensor::from_f32(video_latents.shape.clone(), &raw);
        let mut video = TimeAssembler::new(self.vae_decoder.entry.outputs[0].concrete_shape(1));
        self.vae_decoder.run_streaming(&raw, |c| {
            if interrupt.is_some_and(|f| f.load(Ordering::Relaxed)) {
                return Err(Error::Interrupted);
            }
            check_finite("vae_decoder", "in a decoded chunk", c.data)?;
            video.append(c)
        })?;
        let video = video.finish()?;
        timings.vae_decode_s = t0.elapsed().as_secs_f64();

        let settings = Settings {
            task: self.task,
            prompt: opts.prompt.clone(),
            negative_prompt: negative_used,
            image: opts.image.as_ref().map(|i| i.source.clone()),
            last_image: opts.last_image.as_ref().map(|i| i.source.clone()),
            steps,
            guidance_scale: guidance,
            shift,
            solver: opts.solver.name().into(),
            seed: opts.seed,
            latents_from_file: opts.latents.is_some(),
            width: p.width,
            height: p.height,
            frames: p.frames,
            fps: DEFAULT_FPS,
            timesteps,
            sigmas,
            denoising_step_list: opts.timesteps.clone(),
            cfg_zero_star: opts.cfg_zero_star,
            zero_init_steps: opts.zero_init_steps,
            execution: self.execution.clone(),
            dit_graphs: self.dit_graphs,
            vace: (self.task == Task::Vace).then(|| {
                let v = opts.vace.clone().unwrap_or_default();
                VaceSettings {
                    control_video: v.video.is_some(),
                    control_mask: v.mask.is_some(),
                    reference_images: v.reference_images.len(),
                    context_scale: v
                        .context_scale
                        .unwrap_or(crate::vace::DEFAULT_CONTEXT_SCALE),
                }
            }),
            cache,
        };
        Ok(Generated {
            settings,
            latents: final_latents,
            video,
            timings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_standard_normal_and_seeded() {
        let a = gaussian_noise(42, 200_001);
        assert_eq!(a.len(), 200_001);
        assert_eq!(a, gaussian_noise(42, 200_001));
        assert_ne!(a[..100], gaussian_noise(43, 100)[..]);
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
        assert!(a.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn official_defaults() {
        assert_eq!(defaults(Task::T2v, 832, 480), (50, 5.0, 5.0));
        assert_eq!(defaults(Task::T2v, 1280, 720), (50, 5.0, 5.0));
        assert_eq!(defaults(Task::I2v, 832, 480), (40, 5.0, 3.0));
        assert_eq!(defaults(Task::I2v, 480, 832), (40, 5.0, 3.0));
        assert_eq!(defaults(Task::I2v, 1280, 720), (40, 5.0, 5.0));
        assert_eq!(defaults(Task::Flf2v, 1280, 720), (50, 5.0, 16.0));
    }
}
