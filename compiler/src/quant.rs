//! Quantized DiT exports (`--precision fp8|int8`) and FP8 calibration
//! (`--calibrate N`); `docs/PRECISION.md`, "Quantized DiT engines".
//!
//! Calibration compiles the *unquantized* model at fp32 (with the LoRAs the
//! real export merges, so scales describe the weights that get quantized)
//! into a directory inside the staging directory, its whole DiT graph
//! carrying one `calibration.<linear>` output per quantized linear (the
//! input's amax per batch row). It then runs `N` prompts' full
//! trajectories at the target profile on ONNX Runtime's CPU provider —
//! every step, both CFG branches, the official sampler and defaults — and
//! reduces each linear's per-forward amax values with the chosen statistic.
//! Everything it reads is fixed by the prompt set and the seed, and every
//! operation runs in one fixed order, so the scales are deterministic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use wanrt_core::quant::{AmaxStatistic, CalibrationRecord, FP8_E4M3_MAX};
use wanrt_core::{Precision, QuantLayers, QuantScheme, Quantization, Task};
use wanrt_runtime::pipeline::{DitGraphs, GenerateOptions, Pipeline, Timings};
use wanrt_runtime::schedule::{Sampler, apply_guidance};
use wanrt_runtime::{Artifacts, Backend, ExecutionSettings, HostTensor};

use crate::error::{Error, Result};
use crate::export::CompileOptions;

/// The built-in calibration prompts (`--calibrate N` without
/// `--calibration-prompts`): varied subjects, motion, lighting, framing and
/// styles, so the activations calibration sees span more than one kind of
/// scene. Prompt `k` runs with seed `seed + k`.
pub const BUILTIN_PROMPTS: &[&str] = &[
    "A red fox trotting through fresh snow in a birch forest at dawn, soft side light.",
    "Close-up of rain drops falling on a dark pond, ripples spreading, slow motion.",
    "A crowded night market in a rainy city, neon signs reflecting on wet asphalt, handheld camera.",
    "An astronaut floating inside a space station, earth visible through the window.",
    "Aerial shot over a turquoise coastline with waves breaking on white cliffs.",
    "A chef tossing vegetables in a flaming wok in a busy restaurant kitchen.",
    "Watercolor animation of a paper boat sailing down a stream between flowers.",
    "A black and white film scene of a man walking along an empty train platform.",
    "Two children running through a sunflower field in golden evening light, tracking shot.",
    "Macro shot of a honeybee landing on a lavender blossom, shallow depth of field.",
    "A vintage red car driving along a desert highway, dust rising, wide angle.",
    "Timelapse of clouds rolling over snowy mountain peaks under a deep blue sky.",
    "A cat sleeping on a windowsill while snow falls outside, warm indoor lamp light.",
    "Underwater coral reef with a school of yellow fish turning together, sun rays from above.",
    "A dancer in a flowing white dress spinning on a dark stage under a single spotlight.",
    "3D cartoon of a small robot watering plants in a greenhouse, bright colors.",
];

/// What `--calibrate` runs.
#[derive(Debug, Clone)]
pub struct CalibrationOptions {
    /// Number of prompts (`--calibrate N`).
    pub prompts: usize,
    /// One prompt per line (`--calibration-prompts`); `None`: the built-in set.
    pub prompt_file: Option<PathBuf>,
    /// Steps per trajectory (`--calibration-steps`); `None`: the official
    /// default of the task (50 T2V, 40 I2V).
    pub steps: Option<usize>,
    /// Prompt `k` runs with seed `seed + k` (`--seed`).
    pub seed: u64,
    pub statistic: AmaxStatistic,
}

impl CalibrationOptions {
    pub fn new(prompts: usize) -> Self {
        CalibrationOptions {
            prompts,
            prompt_file: None,
            steps: None,
            seed: 0,
            statistic: AmaxStatistic::Max,
        }
    }
}

/// A quantized DiT export.
#[derive(Debug, Clone)]
pub struct QuantOptions {
    pub scheme: QuantScheme,
    pub layers: QuantLayers,
    /// FP8 needs it (static activation scales); INT8 takes none.
    pub calibration: Option<CalibrationOptions>,
}

impl QuantOptions {
    /// Checks the combination before anything is written: FP8 without
    /// calibration is refused (its activation scales are static and only
    /// calibration can choose them), INT8 computes around the integer
    /// GEMMs in fp32 and has nothing to calibrate.
    pub fn check(&self, base: Precision) -> Result<()> {
        match (self.scheme, &self.calibration) {
            (QuantScheme::Fp8, None) => Err(Error::NeedsCalibration {
                reason: "FP8 QuantizeLinear needs a static per-tensor scale for every quantized \
                         activation, and only running the model can choose them (a guessed scale \
                         either clips the activation or wastes FP8's 3 mantissa bits); pass \
                         --calibrate N (e.g. 8) to measure them over N prompts' trajectories"
                    .into(),
            }),
            (QuantScheme::Fp8, Some(c)) if c.prompts == 0 => Err(Error::InvalidArgument {
                flag: "--calibrate".into(),
                reason: "0 prompts: calibration needs at least one".into(),
            }),
            (QuantScheme::Fp8, Some(c)) => match c.statistic {
                AmaxStatistic::Percentile(p) if !(p > 0.0 && p <= 100.0) => {
                    Err(Error::InvalidArgument {
                        flag: "--calibration-percentile".into(),
                        reason: format!("{p} is not in (0, 100]"),
                    })
                }
                _ => Ok(()),
            },
            (QuantScheme::Int8, Some(_)) => Err(Error::InvalidArgument {
                flag: "--calibrate".into(),
                reason: "INT8 quantizes activations at run time (DynamicQuantizeLinear): there \
                         are no static scales to calibrate; --calibrate applies to --precision fp8"
                    .into(),
            }),
            (QuantScheme::Int8, None) if base != Precision::Fp32 => Err(Error::InvalidArgument {
                flag: "--precision".into(),
                reason: format!(
                    "INT8 computes everything around its integer GEMMs in fp32, not {base}"
                ),
            }),
            (QuantScheme::Int8, None) => Ok(()),
        }
    }
}

/// The calibration prompts: the first `n` of the file (non-empty lines,
/// trimmed) or of the built-in set, and how to name the set.
pub fn calibration_prompts(c: &CalibrationOptions) -> Result<(Vec<String>, String)> {
    let (all, name): (Vec<String>, String) = match &c.prompt_file {
        Some(file) => {
            let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
            let lines = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| file.display().to_string());
            (lines, name)
        }
        None => (
            BUILTIN_PROMPTS.iter().map(|s| s.to_string()).collect(),
            "built-in".into(),
        ),
    };
    if all.len() < c.prompts {
        return Err(Error::InvalidArgument {
            flag: "--calibrate".into(),
            reason: format!(
                "{} prompts asked for, the {} set ({}) has {}",
                c.prompts,
                name,
                c.prompt_file
                    .as_ref()
                    .map_or("--calibration-prompts not given".into(), |f| f
                        .display()
                        .to_string()),
                all.len()
            ),
        });
    }
    Ok((all.into_iter().take(c.prompts).collect(), name))
}

/// A deterministic conditioning image `k` for I2V/FLF2V calibration:
/// smooth colour gradients with a seeded pattern, at the profile's size.
fn calibration_image(k: usize, width: u32, height: u32) -> wanrt_runtime::image::RgbImage {
    let mut px = Vec::with_capacity((width * height * 3) as usize);
    let noise = wanrt_runtime::pipeline::gaussian_noise(1000 + k as u64, (width * height) as usize);
    for y in 0..height {
        for x in 0..width {
            let (u, v) = (x as f32 / width as f32, y as f32 / height as f32);
            let n = noise[(y * width + x) as usize] * 12.0;
            let phase = k as f32 * 0.7;
            let r = 128.0 + 100.0 * (6.0 * u + phase).sin() + n;
            let g = 128.0 + 100.0 * (5.0 * v - phase).cos() + n;
            let b = 255.0 * (0.5 * u + 0.5 * v) + n;
            px.extend([r, g, b].map(|c| c.clamp(0.0, 255.0) as u8));
        }
    }
    wanrt_runtime::image::RgbImage::new(width, height, px)
        .expect("width·height·3 bytes by construction")
}

/// VACE calibration inputs for prompt `k`: a control video of the
/// profile's frames (a drifting gradient pattern, the frames of
/// [`calibration_image`]), the default mask (generate everywhere) and the
/// profile's reference images, so that every VACE block and hint sees
/// control-video activations.
fn calibration_vace(k: usize, profile: &wanrt_core::Profile) -> wanrt_runtime::vace::VaceInputs {
    let (w, h) = (profile.width, profile.height);
    let frames = profile.frames as usize;
    // Frame t of video k: the pattern of image k·frames + t, so both the
    // prompt and the time move it.
    let base = 3 * BUILTIN_PROMPTS.len();
    wanrt_runtime::vace::VaceInputs {
        video: Some(
            (0..frames)
                .map(|t| calibration_image(base + k * frames + t, w, h))
                .collect(),
        ),
        mask: None,
        reference_images: (0..profile.reference_images as usize)
            .map(|r| calibration_image(2 * BUILTIN_PROMPTS.len() + k + r, w, h))
            .collect(),
        context_scale: None,
    }
}

fn run_error(what: impl Into<String>) -> impl FnOnce(wanrt_runtime::Error) -> Error {
    let what = what.into();
    move |source| Error::CompileTimeRun {
        what: format!("calibration: {what}"),
        source,
    }
}

/// Runs calibration for `q` (FP8, with calibration options) on the model of
/// `opts`, inside `staging`; returns the quantization record with every
/// covered linear's activation scale.
pub fn calibrate(
    opts: &CompileOptions,
    q: &QuantOptions,
    cal: &CalibrationOptions,
    staging: &Path,
) -> Result<Quantization> {
    let (prompts, prompt_set) = calibration_prompts(cal)?;
    let dir = staging.join("calibration");
    let mut inner = opts.clone();
    inner.out = dir.clone();
    inner.precision = Precision::Fp32;
    inner.vae_precision = Precision::Fp32;
    inner.networks = Vec::new();
    inner.overwrite = false;
    inner.engine = None;
    inner.debug_outputs = false;
    inner.quant = None;
    inner.calibration_taps = Some(q.layers);
    crate::export::compile(&inner)?;
    let result = run_calibration(&dir, opts, q, cal, &prompts, &prompt_set);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_calibration(
    dir: &Path,
    opts: &CompileOptions,
    q: &QuantOptions,
    cal: &CalibrationOptions,
    prompts: &[String],
    prompt_set: &str,
) -> Result<Quantization> {
    let backend = Backend::OrtCpu;
    let artifacts = Artifacts::open(dir).map_err(run_error("opening the fp32 artifacts"))?;
    let task = artifacts.manifest.model.task;
    let taps: Vec<String> = artifacts
        .entry(wanrt_core::NetworkKind::Dit)
        .map_err(run_error("the fp32 DiT"))?
        .outputs
        .iter()
        .map(|o| o.name.clone())
        .filter(|n| n.starts_with("calibration."))
        .collect();
    let mut pipeline = Pipeline::load_with(
        artifacts,
        backend,
        &ExecutionSettings::default(),
        DitGraphs::Whole,
    )
    .map_err(run_error("loading the fp32 networks"))?;
    // The whole graph's contract lists only noise_pred; the taps are read
    // from the run's outputs by name.
    let mut observed: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut steps_run = 0;
    let mut forwards = 0;
    let (width, height) = (opts.profile.width, opts.profile.height);
    for (k, prompt) in prompts.iter().enumerate() {
        check_interrupt(opts)?;
        let image = |i: usize, what: &str| {
            wanrt_runtime::pipeline::InputImage::new(
                calibration_image(i, width, height),
                format!("calibration {what} {k}"),
            )
        };
        let (image, last_image) = match task {
            Task::I2v => (Some(image(k, "image")), None),
            // FLF2V: a first and a different last frame.
            Task::Flf2v => (
                Some(image(k, "first frame")),
                Some(image(k + BUILTIN_PROMPTS.len(), "last frame")),
            ),
            Task::T2v | Task::Vace => (None, None),
        };
        let g = GenerateOptions {
            prompt: prompt.clone(),
            image,
            last_image,
            vace: (task == Task::Vace).then(|| calibration_vace(k, &opts.profile)),
            steps: cal.steps,
            seed: cal.seed.wrapping_add(k as u64),
            ..Default::default()
        };
        let mut timings = Timings::default();
        let inputs = pipeline
            .prepare(&g, &mut timings)
            .map_err(run_error(format!("preparing prompt {}", k + 1)))?;
        let shape = pipeline.latent_shape();
        let n = inputs.latents.len();
        let mut sampler = Sampler::with_schedule(inputs.solver, inputs.schedule.clone(), n)
            .map_err(run_error("the sampler"))?
            .with_noise_seed(inputs.seed);
        let mut latents = inputs.latents.clone();
        steps_run = sampler.steps();
        while let Some(t) = sampler.dit_timestep() {
            check_interrupt(opts)?;
            let feed = dit_inputs(&inputs, &shape, &latents, t);
            let out = pipeline
                .dit_network()
                .run(&feed)
                .map_err(run_error(format!("prompt {}, DiT at t={t}", k + 1)))?;
            for name in &taps {
                let v = out.get(name).and_then(HostTensor::to_f32).ok_or_else(|| {
                    Error::Calibration {
                        reason: format!("the fp32 DiT gave no float output {name}"),
                    }
                })?;
                observed.entry(name.clone()).or_default().extend(v);
            }
            let pred = out
                .get("noise_pred")
                .and_then(HostTensor::to_f32)
                .ok_or_else(|| Error::Calibration {
                    reason: "the fp32 DiT gave no float noise_pred".into(),
                })?;
            let rows = if inputs.uncond.is_some() { 2 } else { 1 };
            forwards += rows;
            let mut velocity = pred[..n].to_vec();
            if rows == 2 {
                apply_guidance(&mut velocity, &pred[n..2 * n], inputs.guidance)
                    .map_err(run_error("guidance"))?;
            }
            sampler
                .step(&mut latents, &velocity)
                .map_err(run_error("the sampler step"))?;
        }
    }
    let mut activation_scales = BTreeMap::new();
    for (name, values) in &observed {
        let prefix = name.trim_start_matches("calibration.");
        let amax = cal.statistic.reduce(values);
        if !amax.is_finite() {
            return Err(Error::Calibration {
                reason: format!("the input of {prefix} reached {amax} during calibration"),
            });
        }
        // An input that was zero throughout quantizes exactly under any
        // positive scale.
        let scale = if amax > 0.0 { amax / FP8_E4M3_MAX } else { 1.0 };
        activation_scales.insert(prefix.to_string(), scale);
    }
    let digest = wanrt_core::fsio::sha256_bytes(prompts.join("\n").as_bytes());
    Ok(Quantization {
        scheme: q.scheme,
        layers: q.layers,
        activation_scales,
        calibration: Some(CalibrationRecord {
            prompts: prompts.len(),
            prompt_set: prompt_set.to_string(),
            prompts_digest: digest,
            steps: steps_run,
            seed: cal.seed,
            forwards,
            statistic: cal.statistic,
            backend: backend.to_string(),
        }),
    })
}

fn check_interrupt(opts: &CompileOptions) -> Result<()> {
    match &opts.interrupt {
        Some(f) if f.load(std::sync::atomic::Ordering::Relaxed) => {
            Err(Error::Graph(wanrt_graphs::Error::Interrupted))
        }
        _ => Ok(()),
    }
}

/// The whole DiT's inputs for one step: both CFG branches as a batch of two
/// (a fixed-batch graph is called once per row).
fn dit_inputs(
    c: &wanrt_runtime::pipeline::DenoiseInputs,
    shape: &[u64],
    latents: &[f32],
    t: f32,
) -> BTreeMap<String, HostTensor> {
    let rows = if c.uncond.is_some() { 2 } else { 1 };
    let mut hidden_shape = shape.to_vec();
    let mut hidden = Vec::with_capacity(latents.len() * 2);
    // I2V: noise ‖ y along channels, per row.
    let y = c.image.as_ref().map(|(_, y)| {
        hidden_shape[1] += y.shape[1];
        y.to_f32().expect("float32 condition")
    });
    // Batch 1: the channel concatenation is the latents then y.
    for _ in 0..rows {
        hidden.extend_from_slice(latents);
        if let Some(y) = &y {
            hidden.extend_from_slice(y);
        }
    }
    hidden_shape[0] = rows as u64;
    let stack = |a: &HostTensor, b: Option<&HostTensor>| -> HostTensor {
        match b {
            Some(b) => {
                let mut v = a.to_f32().expect("float32 embedding");
                v.extend(b.to_f32().expect("float32 embedding"));
                let mut s = a.shape.clone();
                s[0] = 2;
                HostTensor::from_f32(s, &v)
            }
            None => a.clone(),
        }
    };
    let mut m = BTreeMap::new();
    m.insert(
        "hidden_states".to_string(),
        HostTensor::from_f32(hidden_shape, &hidden),
    );
    m.insert(
        "timestep".to_string(),
        HostTensor::from_f32(vec![rows as u64], &vec![t; rows]),
    );
    m.insert(
        "encoder_hidden_states".to_string(),
        stack(&c.cond, c.uncond.as_ref()),
    );
    if let Some((tok, _)) = &c.image {
        let other = c.uncond.as_ref().map(|_| tok);
        m.insert("encoder_hidden_states_image".to_string(), stack(tok, other));
    }
    if let Some((control, scale)) = &c.vace {
        // The context is the same for both branches; the scales have no
        // batch axis.
        let other = c.uncond.as_ref().map(|_| control);
        m.insert("control_hidden_states".to_string(), stack(control, other));
        m.insert("control_hidden_states_scale".to_string(), scale.clone());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_come_from_the_file_or_the_built_in_set() {
        let (p, name) = calibration_prompts(&CalibrationOptions::new(3)).unwrap();
        assert_eq!((p.len(), name.as_str()), (3, "built-in"));
        assert_eq!(p[0], BUILTIN_PROMPTS[0]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("prompts.txt");
        std::fs::write(&file, "  a cat \n\n a dog\n").unwrap();
        let c = CalibrationOptions {
            prompt_file: Some(file.clone()),
            ..CalibrationOptions::new(2)
        };
        let (p, name) = calibration_prompts(&c).unwrap();
        assert_eq!(p, vec!["a cat".to_string(), "a dog".to_string()]);
        assert_eq!(name, "prompts.txt");
        let e = calibration_prompts(&CalibrationOptions { prompts: 3, ..c }).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("has 2"), "{e}");
        let e =
            calibration_prompts(&CalibrationOptions::new(BUILTIN_PROMPTS.len() + 1)).unwrap_err();
        assert!(e.to_string().contains("--calibrate"), "{e}");
    }

    #[test]
    fn combinations_are_checked() {
        let q = |scheme, calibration| QuantOptions {
            scheme,
            layers: QuantLayers::Ffn,
            calibration,
        };
        let kind = |r: Result<()>| r.unwrap_err().kind();
        assert_eq!(
            kind(q(QuantScheme::Fp8, None).check(Precision::Bf16)),
            crate::ErrorKind::NeedsCalibration
        );
        assert!(
            q(QuantScheme::Fp8, Some(CalibrationOptions::new(1)))
                .check(Precision::Bf16)
                .is_ok()
        );
        let zero = CalibrationOptions::new(0);
        assert_eq!(
            kind(q(QuantScheme::Fp8, Some(zero)).check(Precision::Fp32)),
            crate::ErrorKind::InvalidArgument
        );
        let pct = CalibrationOptions {
            statistic: AmaxStatistic::Percentile(0.0),
            ..CalibrationOptions::new(1)
        };
        assert_eq!(
            kind(q(QuantScheme::Fp8, Some(pct)).check(Precision::Fp32)),
            crate::ErrorKind::InvalidArgument
        );
        assert!(q(QuantScheme::Int8, None).check(Precision::Fp32).is_ok());
        assert_eq!(
            kind(q(QuantScheme::Int8, None).check(Precision::Bf16)),
            crate::ErrorKind::InvalidArgument
        );
    }
}
