//! `wan-run`: runs compiled Wan2.1 artifacts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use wanrt_core::NetworkKind;
use wanrt_media::video::OutputKind;
use wanrt_runtime::backend::{BackendChoice, Resolved, check_precisions};
use wanrt_runtime::{Artifacts, Backend, ConvAlgoSearch, ExecutionSettings, tensorfile};

#[derive(Parser, Debug)]
#[command(
    name = "wan-run",
    version,
    about = "Run Wan2.1 engines compiled by wan-compile"
)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    generate: GenerateArgs,
}

/// `wan-run --engines DIR --prompt TEXT ...`: generate a video.
#[derive(clap::Args, Debug)]
struct GenerateArgs {
    /// Artifact directory written by wan-compile.
    #[arg(long, required = true)]
    engines: Option<PathBuf>,
    /// The prompt.
    #[arg(long, required = true)]
    prompt: Option<String>,
    /// Negative prompt (default: the official one for the task).
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Conditioning image (image-to-video engines; the first frame for
    /// first-last-frame-to-video engines).
    #[arg(long)]
    image: Option<PathBuf>,
    /// The last frame (first-last-frame-to-video engines), the same size as
    /// --image.
    #[arg(long)]
    last_image: Option<PathBuf>,
    /// VACE: the control video, a directory of numbered PNG frames or an
    /// H.264 MP4, of the engines' frame count and size (pose, depth, a
    /// video to edit...).
    /// Without it, VACE engines generate from the reference images alone.
    #[arg(long)]
    control_video: Option<PathBuf>,
    /// VACE: the mask of the control video, a directory of numbered PNG
    /// frames or an H.264 MP4 (grayscale; white = generate, black = keep;
    /// grey levels are kept fractional). Default: generate everywhere.
    #[arg(long, requires = "control_video")]
    control_mask: Option<PathBuf>,
    /// VACE: a reference image (subject, background), letterboxed onto a
    /// white canvas of the video size; repeatable, in order (as many as
    /// the engines were compiled for, wan-compile --reference-images).
    #[arg(long)]
    reference_image: Vec<PathBuf>,
    /// VACE: scale of the hints added to the main blocks (default 1.0).
    #[arg(long)]
    context_scale: Option<f32>,
    /// Sampling steps (default: 50, 40 for I2V).
    #[arg(long, conflicts_with = "timesteps")]
    steps: Option<usize>,
    /// A step-distilled model's denoising step list, comma-separated and
    /// decreasing (LightX2V's 4-step LoRA: 1000,750,500,250); mapped through
    /// --shift, the DiT gets the float timesteps 1000·σ. Use with
    /// --solver euler (or lcm) and --guidance-scale 1.
    #[arg(long, value_delimiter = ',')]
    timesteps: Option<Vec<u32>>,
    /// Classifier-free guidance scale (default 5.0; ≤ 1 skips the
    /// unconditional pass).
    #[arg(long)]
    guidance_scale: Option<f32>,
    /// Sampling shift (default 5.0; 3.0 for I2V at 480P; 16.0 for FLF2V and VACE).
    #[arg(long)]
    shift: Option<f64>,
    /// unipc (default), dpm++, euler (deterministic flow Euler) or lcm
    /// (re-noises each step's data prediction with fresh noise).
    #[arg(long, default_value = "unipc")]
    solver: String,
    /// CFG-Zero*: guide with the per-sample optimised scale
    /// s* = <v_c, v_u> / |v_u|^2 (needs --guidance-scale > 1).
    #[arg(long)]
    cfg_zero_star: bool,
    /// Zero the velocity of the first K steps, skipping their forwards
    /// (CFG-Zero*'s zero-init; its recipe uses 1).
    #[arg(long, default_value_t = 0)]
    zero_init_steps: usize,
    /// Step caching: none (default), teacache, teacache-ret, magcache or
    /// fbcache (docs/WAN.md §cache).
    #[arg(long, default_value = "none")]
    cache: String,
    /// The cache's threshold: a number, or a preset of the recognised
    /// official model (teacache/teacache-ret: slow, fast; magcache:
    /// default). Default: the model's slow/default preset, else the
    /// reference's default (teacache 0.2, magcache 0.12, fbcache 0.05).
    #[arg(long, allow_hyphen_values = true)]
    cache_threshold: Option<String>,
    /// MagCache's maximum number of consecutive skips (K).
    #[arg(long)]
    cache_max_skip: Option<u32>,
    /// MagCache's fraction of the initial calls always computed.
    #[arg(long)]
    cache_retention: Option<f64>,
    /// The model's table as JSON: {"mag_ratios": [...]} (magcache, cond/
    /// uncond interleaved) or {"modes": {"e": {"coefficients": [...]},
    /// "e0": {...}}} (teacache: e, teacache-ret: e0).
    #[arg(long)]
    cache_table: Option<PathBuf>,
    /// Where the cache's residuals live: auto (default: the device on the
    /// GPU backends when the engines have the compiled step-cache graphs,
    /// the host otherwise), host, or device (needs those graphs: engines
    /// compiled before them are refused; docs/WAN.md §15).
    #[arg(long, default_value = "auto")]
    cache_residency: String,
    /// Seed of the initial noise (default: random; recorded in the sidecar).
    #[arg(long)]
    seed: Option<u64>,
    /// Output: a .mp4 file (H.264, 16 fps) or a directory ending in '/' for
    /// numbered PNG frames. A JSON sidecar with every setting is written next
    /// to it.
    #[arg(long, default_value = "wan-output.mp4")]
    output: PathBuf,
    /// Initial noise from a safetensors file (tensor `latents`, normalised
    /// latent space).
    #[arg(long)]
    latents_in: Option<PathBuf>,
    /// Also write the final denoised latents (tensor `latents`).
    #[arg(long)]
    save_latents: Option<PathBuf>,
    /// auto (default: ort-cuda when ONNX Runtime has the CUDA provider and a
    /// GPU is visible, else ort-cpu), ort-cpu, ort-cuda or ort-tensorrt.
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
    #[command(flatten)]
    exec: ExecArgs,
    /// Replace existing outputs.
    #[arg(long)]
    overwrite: bool,
}

/// Execution settings of the GPU backends (recorded in the sidecar).
#[derive(clap::Args, Debug, Clone)]
struct ExecArgs {
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    device_id: i32,
    /// Let fp32 matrix work round through TF32 (off: fp32 stays fp32).
    #[arg(long)]
    tf32: bool,
    /// cuDNN convolution algorithm search for the VAE: exhaustive,
    /// heuristic or default.
    #[arg(long, default_value = "exhaustive")]
    cudnn_conv_algo_search: ConvAlgoSearch,
    /// Cap of the CUDA provider's memory arena, in bytes.
    #[arg(long)]
    gpu_mem_limit: Option<u64>,
    /// Turn ONNX Runtime's memory arena off.
    #[arg(long)]
    no_arena: bool,
    /// Capture the VAE decoder's steady-state chunk calls as CUDA graphs
    /// (ort-cuda).
    #[arg(long)]
    cuda_graph: bool,
}

impl ExecArgs {
    fn settings(&self) -> ExecutionSettings {
        ExecutionSettings::default()
            .with_device_id(self.device_id)
            .with_tf32(self.tf32)
            .with_vae_conv_algo_search(self.cudnn_conv_algo_search)
            .with_memory_limit(self.gpu_mem_limit)
            .with_arena(!self.no_arena)
            .with_cuda_graph(self.cuda_graph)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one network on the tensors of a safetensors file (by input name)
    /// and write its outputs by output name.
    Component {
        /// dit, text-encoder, image-encoder, vae-encoder or vae-decoder.
        network: NetworkKind,
        /// Artifact directory written by wan-compile.
        #[arg(long)]
        engines: PathBuf,
        /// Input tensors (safetensors).
        #[arg(long)]
        input: PathBuf,
        /// Output tensors (safetensors), written atomically.
        #[arg(long)]
        output: PathBuf,
        /// auto (default), ort-cpu, ort-cuda or ort-tensorrt.
        #[arg(long, default_value = "auto")]
        backend: BackendChoice,
        /// Replace --output if it exists.
        #[arg(long)]
        overwrite: bool,
        /// Run this many times after loading and report the median and
        /// minimum run time (warm timings for benchmarks).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
    /// Encode one prompt with the text encoder (cleaning, tokenizer, UMT5,
    /// trimmed to its length and zero-padded): writes input_ids,
    /// attention_mask [1, L] and prompt_embeds [1, L, d_model].
    EncodePrompt {
        /// Artifact directory written by wan-compile (with a text encoder).
        #[arg(long)]
        engines: PathBuf,
        /// The raw prompt (cleaned as the reference does).
        #[arg(long)]
        prompt: String,
        /// Output tensors (safetensors), written atomically.
        #[arg(long)]
        output: PathBuf,
        /// auto (default), ort-cpu, ort-cuda or ort-tensorrt.
        #[arg(long, default_value = "auto")]
        backend: BackendChoice,
        /// Replace --output if it exists.
        #[arg(long)]
        overwrite: bool,
    },
    /// Describe an artifact directory (networks, profile, precision, I/O,
    /// prebuilt engines) and, with --load, create every network's session on
    /// --backend.
    Inspect {
        #[arg(long)]
        engines: PathBuf,
        #[arg(long)]
        load: bool,
        /// With --load: run each graph once on zero inputs with ONNX Runtime's
        /// profiler and report which provider ran each node (counts per
        /// provider; on a GPU backend a CPU node is an error naming it).
        #[arg(long, requires = "load")]
        placement: bool,
        /// auto (default), ort-cpu, ort-cuda or ort-tensorrt.
        #[arg(long, default_value = "auto")]
        backend: BackendChoice,
    },
    /// Compare tensors of two safetensors files (numeric debugging): prints
    /// the max error per tensor and fails if |a−b| > atol + rtol·|b|. Or,
    /// given two videos (`wan-run compare A.mp4 B.mp4`; MP4 files or PNG
    /// frame directories), print their PSNR over all frames and per frame.
    Compare {
        /// Two videos: the one to check, then the reference.
        #[arg(num_args = 2, value_names = ["A", "B"], conflicts_with_all = ["input", "reference"])]
        videos: Vec<PathBuf>,
        /// With two videos: fail if their PSNR is below this many dB.
        #[arg(long, requires = "videos")]
        min_psnr: Option<f64>,
        /// Tensors to check.
        #[arg(long, required_unless_present = "videos")]
        input: Option<PathBuf>,
        /// Reference tensors.
        #[arg(long, required_unless_present = "videos")]
        reference: Option<PathBuf>,
        /// Tensor names (default: every name both files hold).
        #[arg(long = "tensor")]
        tensors: Vec<String>,
        #[arg(long, default_value_t = 1e-4)]
        atol: f32,
        #[arg(long, default_value_t = 1e-3)]
        rtol: f32,
    },
}

/// `wan-run compare A B` on two videos: PSNR (8-bit RGB) overall, the
/// worst frame, the largest sample difference.
fn compare_videos(videos: &[PathBuf], min_psnr: Option<f64>) -> Result<()> {
    use wanrt_media::video::mp4::read::{psnr, read_video};
    let [a, b] = videos else {
        anyhow::bail!("compare takes two videos (A B) or --input and --reference");
    };
    let (va, vb) = (read_video(a)?, read_video(b)?);
    let p = psnr(&va, &vb)?;
    let (worst_i, worst) =
        p.per_frame_db
            .iter()
            .copied()
            .enumerate()
            .fold(
                (0, f64::INFINITY),
                |m, (i, d)| if d < m.1 { (i, d) } else { m },
            );
    println!(
        "{} vs {}: {} frames {}x{}: PSNR {:.2} dB (worst frame {worst_i}: {worst:.2} dB), max |a-b| {}",
        a.display(),
        b.display(),
        va.len(),
        va.width(),
        va.height(),
        p.psnr_db,
        p.max_abs
    );
    println!("(LPIPS needs a learned network, which wan-run does not ship; see docs/PRECISION.md)");
    if let Some(min) = min_psnr {
        anyhow::ensure!(
            p.psnr_db >= min,
            "PSNR {:.2} dB is below --min-psnr {min}",
            p.psnr_db
        );
    }
    Ok(())
}

fn compare(
    input: &std::path::Path,
    reference: &std::path::Path,
    names: &[String],
    atol: f32,
    rtol: f32,
) -> Result<()> {
    let atol = tolerance("--atol", atol)?;
    let rtol = tolerance("--rtol", rtol)?;
    let a = tensorfile::read(input)?;
    let b = tensorfile::read(reference)?;
    let names: Vec<String> = if names.is_empty() {
        a.keys().filter(|k| b.contains_key(*k)).cloned().collect()
    } else {
        names.to_vec()
    };
    anyhow::ensure!(!names.is_empty(), "no tensor name is in both files");
    let mut failed = Vec::new();
    for name in &names {
        let (x, y) = match (a.get(name), b.get(name)) {
            (Some(x), Some(y)) => (x, y),
            _ => anyhow::bail!("--tensor {name}: not in both files"),
        };
        anyhow::ensure!(
            x.shape == y.shape,
            "{name}: shape {:?} vs reference {:?}",
            x.shape,
            y.shape
        );
        let (xv, yv) = match (x.to_f32(), y.to_f32()) {
            (Some(xv), Some(yv)) => (xv, yv),
            _ => anyhow::bail!("{name}: not a float tensor"),
        };
        let mut max_abs = 0f32;
        let mut worst = 0f32;
        for (p, q) in xv.iter().zip(&yv) {
            let d = (p - q).abs();
            max_abs = max_abs.max(d);
            worst = worst.max(if d.is_nan() {
                f32::INFINITY
            } else {
                d / (atol + rtol * q.abs())
            });
        }
        let verdict = if worst <= 1.0 { "ok" } else { "MISMATCH" };
        println!(
            "{name:<40} {:?} max|a-b| {max_abs:.3e}  worst/tol {worst:.3}  {verdict}",
            x.shape
        );
        if worst > 1.0 {
            failed.push(name.clone());
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{} tensor(s) outside |a-b| <= {atol} + {rtol}*|b|: {}",
        failed.len(),
        failed.join(", ")
    );
    Ok(())
}

/// Resolves `--backend`, says which backend runs and why, and refuses at
/// once a network whose precision that backend has no kernels for.
fn choose_backend(
    choice: BackendChoice,
    artifacts: &Artifacts,
    only: Option<NetworkKind>,
) -> Result<Resolved> {
    let r = choice.resolve()?;
    eprintln!("backend: {} ({})", r.backend, r.why);
    check_precisions(&artifacts.manifest, only, &r)?;
    Ok(r)
}

/// Largest `--latents-in` file read (1 GiB; a 720p 81-frame latent is
/// 29 MiB).
const MAX_LATENTS_BYTES: u64 = 1 << 30;

/// Whether two paths name the same file, existing or not (compared through
/// their canonical parent directories).
fn same_path(a: &std::path::Path, b: &std::path::Path) -> bool {
    let resolve = |p: &std::path::Path| {
        let parent = wanrt_core::fsio::parent_dir(p);
        let parent = parent.canonicalize().unwrap_or(parent);
        parent.join(p.file_name().unwrap_or_default())
    };
    resolve(a) == resolve(b)
}

/// A tolerance flag must be a finite number ≥ 0 (NaN would pass anything).
fn tolerance(flag: &str, v: f32) -> Result<f32> {
    anyhow::ensure!(
        v.is_finite() && v >= 0.0,
        "{flag} {v}: expected a finite number >= 0"
    );
    Ok(v)
}

/// The `--cache*` flags as the library's options (the table file read).
fn cache_options(g: &GenerateArgs) -> Result<wanrt_runtime::cache::CacheOptions> {
    use wanrt_runtime::cache::{CacheOptions, CachePolicy, parse_threshold, read_table};
    let policy: CachePolicy = g.cache.parse()?;
    let (threshold, preset) = match g.cache_threshold.as_deref() {
        None => (None, None),
        Some(t) => parse_threshold(t)?,
    };
    let table = match (&g.cache_table, policy) {
        (Some(_), CachePolicy::None) | (None, _) => None,
        (Some(path), p) => Some(read_table(path, p)?),
    };
    let opts = CacheOptions {
        policy,
        threshold,
        preset,
        max_skip: g.cache_max_skip,
        retention: g.cache_retention,
        table,
        residency: g.cache_residency.parse()?,
    };
    if policy == CachePolicy::None && g.cache_table.is_some() {
        return Err(wanrt_runtime::Error::arg("--cache-table", "given without --cache").into());
    }
    // Ranges and misplaced flags now, before the engines load.
    opts.validate()?;
    Ok(opts)
}

fn generate(g: GenerateArgs) -> Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use wanrt_runtime::pipeline::{GenerateOptions, InputImage, Pipeline};

    // The --cache* flags are checked before anything is loaded.
    let cache = cache_options(&g)?;
    let engines = g.engines.clone().context("--engines is required")?;
    let prompt = g.prompt.clone().context("--prompt is required")?;
    let solver: wanrt_runtime::schedule::Solver = g.solver.parse()?;
    // Check the outputs before minutes of work: only regular files are
    // replaced (with --overwrite), and no two outputs share a path.
    let kind = wanrt_media::video::output_kind(&g.output)?;
    let sidecar = wanrt_runtime::sidecar::sidecar_path(&g.output);
    match &kind {
        OutputKind::Mp4(p) => tensorfile::check_output(p, g.overwrite)?,
        OutputKind::PngFrames(dir) => {
            let non_empty = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
            if non_empty && !g.overwrite {
                anyhow::bail!("{} exists; pass --overwrite to replace it", dir.display());
            }
        }
    }
    tensorfile::check_output(&sidecar, g.overwrite)?;
    // Temporaries of an earlier run killed before it could clean up.
    for p in [&g.output, &sidecar]
        .into_iter()
        .chain(g.save_latents.as_ref())
    {
        wanrt_core::fsio::clean_stale_temps(p);
    }
    if let Some(s) = &g.save_latents {
        tensorfile::check_output(s, g.overwrite)?;
        for (other, what) in [
            (&g.output, "--output"),
            (&sidecar, "the sidecar of --output"),
        ] {
            if same_path(s, other) {
                return Err(wanrt_runtime::Error::OutputRefused {
                    file: s.clone(),
                    reason: format!("--save-latents is the same path as {what}"),
                }
                .into());
            }
        }
    }
    if let Some(path) = &g.latents_in
        && [&g.output, &sidecar]
            .into_iter()
            .chain(g.save_latents.as_ref())
            .any(|o| same_path(path, o))
    {
        anyhow::bail!("--latents-in {} is also an output path", path.display());
    }
    let latents =
        match &g.latents_in {
            Some(path) => {
                let mut t = tensorfile::read_capped(path, MAX_LATENTS_BYTES)?;
                Some(t.remove("latents").with_context(|| {
                    format!("--latents-in {}: no tensor 'latents'", path.display())
                })?)
            }
            None => None,
        };
    let seed = g.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            % (1 << 53)
    });
    let interrupt = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupt.clone();
        // With ctrlc's `termination` feature this handles SIGINT, SIGTERM
        // and SIGHUP alike: every one stops at the next check and cleans up.
        ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C/SIGTERM/SIGHUP handler")?;
    }
    let artifacts = Artifacts::open(&engines)?;
    let resolved = choose_backend(g.backend, &artifacts, None)?;
    let backend = resolved.backend;
    // Checked and decoded before the engines load, so that a missing,
    // unwanted or bad image fails at once.
    let task = artifacts.manifest.model.task;
    wanrt_runtime::pipeline::check_task_image(task, g.image.is_some())?;
    wanrt_runtime::pipeline::check_task_last_image(task, g.last_image.is_some())?;
    wanrt_runtime::pipeline::check_task_vace(task, has_vace_flags(&g))?;
    // The VACE frames, checked against the profile while they are decoded.
    let profile = artifacts
        .entry(wanrt_core::NetworkKind::Dit)?
        .profile
        .clone();
    let vace = vace_inputs(&g, &profile)?;
    // The step cache against the model (its tables and presets) and the
    // step count, before the engines load.
    let steps = wanrt_runtime::pipeline::steps_to_run(
        task,
        profile.width,
        profile.height,
        g.steps,
        g.timesteps.as_ref().map(Vec::len),
    );
    wanrt_runtime::pipeline::cache_plan_for(
        &artifacts,
        wanrt_runtime::pipeline::DitGraphs::Stages,
        &cache,
        steps,
        g.zero_init_steps,
    )?;
    let decode = |p: &Option<PathBuf>| -> Result<Option<InputImage>> {
        Ok(match p {
            Some(path) => Some(InputImage::new(
                wanrt_media::image::load_image(path)?,
                path.display().to_string(),
            )),
            None => None,
        })
    };
    let (image, last_image) = (decode(&g.image)?, decode(&g.last_image)?);
    eprintln!("loading engines from {} on {backend}", engines.display());
    let mut pipeline = Pipeline::load_with(
        artifacts,
        backend,
        &g.exec.settings(),
        wanrt_runtime::pipeline::DitGraphs::Stages,
    )?;
    let opts = GenerateOptions {
        prompt,
        negative_prompt: g.negative_prompt.clone(),
        image,
        last_image,
        steps: g.steps,
        guidance_scale: g.guidance_scale,
        shift: g.shift,
        solver,
        seed,
        latents,
        timesteps: g.timesteps.clone(),
        cfg_zero_star: g.cfg_zero_star,
        zero_init_steps: g.zero_init_steps,
        vace,
        cache,
    };
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} step {pos}/{len} {msg} ({elapsed}, eta {eta})",
        )
        .expect("static template"),
    );
    let result = pipeline.generate(&opts, Some(&interrupt), |i, n, secs| {
        pb.set_length(n as u64);
        pb.set_position(i as u64);
        pb.set_message(format!("{secs:.2} s/step"));
    });
    pb.finish_and_clear();
    let out = match result {
        Err(wanrt_runtime::Error::Interrupted) => anyhow::bail!("interrupted; nothing was written"),
        r => r?,
    };
    if let Some(path) = &g.save_latents {
        let t = std::collections::BTreeMap::from([("latents".to_string(), out.latents.clone())]);
        tensorfile::write(path, &t, g.overwrite)?;
    }
    let frames = wanrt_media::video::RgbFrames::from_tensor(&out.video)?;
    let video_opts = wanrt_media::video::VideoOptions {
        overwrite: g.overwrite,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    match wanrt_media::video::write_video(&g.output, &frames, &video_opts, Some(&interrupt)) {
        Err(wanrt_runtime::Error::Interrupted) => anyhow::bail!("interrupted; nothing was written"),
        r => r?,
    };
    let write_s = t0.elapsed().as_secs_f64();
    let side = wanrt_runtime::sidecar::sidecar_json(
        &pipeline,
        &out,
        &wanrt_runtime::sidecar::RunRecord {
            backend,
            backend_reason: &resolved.why,
            output: &g.output,
            video_write_s: write_s,
            latents_in: g.latents_in.as_deref(),
        },
    )?;
    tensorfile::write_atomic(
        &sidecar,
        serde_json::to_string_pretty(&side)?.as_bytes(),
        g.overwrite,
    )?;
    eprintln!(
        "wrote {} ({} frames {}x{} at {} fps, seed {}, {} steps in {:.1} s) and {}",
        g.output.display(),
        out.settings.frames,
        out.settings.width,
        out.settings.height,
        out.settings.fps,
        out.settings.seed,
        out.settings.steps,
        out.timings.denoise_s,
        sidecar.display()
    );
    let c = &out.settings.cache;
    if c.plan.is_some() {
        eprintln!(
            "cache {}: the block stack ran {} of {} calls; residuals on the {} ({} bytes)",
            c.policy,
            c.block_forwards,
            c.block_forwards_uncached,
            c.residency.map_or("host", |r| r.name()),
            c.buffer_bytes
        );
    }
    Ok(())
}

/// Whether any VACE flag is given.
fn has_vace_flags(g: &GenerateArgs) -> bool {
    g.control_video.is_some() || !g.reference_image.is_empty() || g.context_scale.is_some()
}

/// The VACE inputs of the flags, decoded (`None` when no VACE flag is
/// given); the control video and mask are checked against `profile` as
/// they are read.
fn vace_inputs(
    g: &GenerateArgs,
    profile: &wanrt_core::Profile,
) -> Result<Option<wanrt_runtime::vace::VaceInputs>> {
    if !has_vace_flags(g) {
        return Ok(None);
    }
    let frames = |dir: &Option<PathBuf>, flag: &str| -> Result<_> {
        Ok(match dir {
            Some(d) => Some(wanrt_media::frames::read_frames(d, flag, Some(profile))?),
            None => None,
        })
    };
    let reference_images = g
        .reference_image
        .iter()
        .map(|p| wanrt_media::image::load_image(p))
        .collect::<wanrt_runtime::Result<Vec<_>>>()?;
    Ok(Some(wanrt_runtime::vace::VaceInputs {
        video: frames(&g.control_video, "--control-video")?,
        mask: frames(&g.control_mask, "--control-mask")?,
        reference_images,
        context_scale: g.context_scale,
    }))
}

fn run() -> Result<()> {
    let args = Args::parse();
    let Some(command) = args.command else {
        return generate(args.generate);
    };
    match command {
        Command::Component {
            network,
            engines,
            input,
            output,
            backend,
            overwrite,
            repeat,
        } => {
            tensorfile::check_output(&output, overwrite)?;
            let artifacts = Artifacts::open(&engines)?;
            let backend = choose_backend(backend, &artifacts, Some(network))?.backend;
            let inputs = tensorfile::read(&input)?;
            let start = std::time::Instant::now();
            let mut net = artifacts.load(network, backend)?;
            let loaded = start.elapsed();
            let mut runs = Vec::new();
            let names: Vec<String> = if net.entry.chunks.is_empty() {
                let mut outputs = Default::default();
                for _ in 0..repeat.max(1) {
                    let t = std::time::Instant::now();
                    outputs = net
                        .run(&inputs)
                        .with_context(|| format!("running {network} on {}", input.display()))?;
                    runs.push(t.elapsed().as_secs_f64());
                }
                tensorfile::write(&output, &outputs, overwrite)?;
                outputs
                    .iter()
                    .map(|(n, t)| format!("{n} {:?}", t.shape))
                    .collect()
            } else {
                // Chunked networks (the VAE) stream each chunk to the file:
                // memory does not grow with the number of frames.
                let spec = net.entry.inputs[0].clone();
                let x = inputs
                    .get(&spec.name)
                    .with_context(|| format!("{}: no tensor '{}'", input.display(), spec.name))?;
                let out = net.entry.outputs[0].clone();
                let shape = out.concrete_shape(1);
                let mut writer = tensorfile::TimeStreamWriter::create(
                    &output,
                    &out.name,
                    shape.clone(),
                    overwrite,
                )?;
                net.run_streaming(x, |chunk| writer.append_view(chunk))
                    .with_context(|| format!("running {network} on {}", input.display()))?;
                writer.finish()?;
                vec![format!("{} {shape:?}", out.name)]
            };
            let ran = start.elapsed() - loaded;
            if runs.len() > 1 {
                runs.sort_by(f64::total_cmp);
                println!(
                    "{network}: run median {:.4} s, min {:.4} s over {} runs",
                    runs[runs.len() / 2],
                    runs[0],
                    runs.len()
                );
            }
            let peak = wanrt_runtime::peak_rss_mib()
                .map(|m| format!(", peak RSS {m:.1} MiB"))
                .unwrap_or_default();
            eprintln!(
                "{network} on {backend}: load {:.2} s, run {:.3} s; wrote {} ({}){peak}",
                loaded.as_secs_f64(),
                ran.as_secs_f64(),
                output.display(),
                names.join(", ")
            );
            Ok(())
        }
        Command::EncodePrompt {
            engines,
            prompt,
            output,
            backend,
            overwrite,
        } => {
            tensorfile::check_output(&output, overwrite)?;
            let artifacts = Artifacts::open(&engines)?;
            let backend =
                choose_backend(backend, &artifacts, Some(NetworkKind::TextEncoder))?.backend;
            let start = std::time::Instant::now();
            let mut encoder = wanrt_runtime::prompt::PromptEncoder::load(&artifacts, backend)?;
            let loaded = start.elapsed();
            let embeds = encoder.encode(&prompt).context("encoding --prompt")?;
            let ran = start.elapsed() - loaded;
            embeds.write(&output, overwrite)?;
            eprintln!(
                "text_encoder on {backend}: load {:.2} s, run {:.3} s; wrote {} ({} of {} tokens, d_model {})",
                loaded.as_secs_f64(),
                ran.as_secs_f64(),
                output.display(),
                embeds.seq_len,
                embeds.text_len(),
                embeds.d_model
            );
            Ok(())
        }
        Command::Inspect {
            engines,
            load,
            placement,
            backend,
        } => {
            let artifacts = Artifacts::open(&engines)?;
            let backend: Backend = if load {
                choose_backend(backend, &artifacts, None)?.backend
            } else {
                Backend::OrtCpu
            };
            let m = &artifacts.manifest;
            println!(
                "{} (format {} v{}), {} model, layout {}",
                engines.display(),
                m.format,
                m.version,
                m.model.task.name(),
                m.model.layout
            );
            match &m.engines {
                Some(r) => println!(
                    "  engines: {} for {} (sm {}), TensorRT {}, CUDA {}, ONNX Runtime {}; {} files",
                    r.kind,
                    r.target.gpu_name,
                    r.target.compute_capability,
                    r.target.tensorrt_version,
                    r.target.cuda_version,
                    r.target.onnxruntime_version,
                    r.files().count()
                ),
                None => println!("  engines: none (ONNX graphs only)"),
            }
            for (kind, e) in &m.networks {
                let p = &e.profile;
                println!(
                    "  {kind}: {} ({:.1} MiB weights), {}, profile {} {}x{}x{} text {} batch {:?}, wanrt {}",
                    e.file,
                    e.external_data_bytes as f64 / (1 << 20) as f64,
                    e.precision,
                    p.name,
                    p.width,
                    p.height,
                    p.frames,
                    p.text_len,
                    p.batch,
                    e.tools.wanrt
                );
                for t in e.inputs.iter() {
                    println!("    in  {} {} {}", t.name, t.dtype, t.shape_string());
                }
                for t in e.outputs.iter() {
                    println!("    out {} {} {}", t.name, t.dtype, t.shape_string());
                }
                for (what, graphs) in [
                    ("chunk", &e.chunks),
                    ("stage", &e.stages),
                    ("step-cache graph", &e.cache_graphs),
                ] {
                    for g in graphs {
                        let io = |ts: &[wanrt_core::TensorSpec]| {
                            ts.iter()
                                .map(|t| t.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        };
                        println!(
                            "    {what} {}: {} ({} → {})",
                            g.role,
                            g.file,
                            io(&g.inputs),
                            io(&g.outputs)
                        );
                    }
                }
                if load {
                    let start = std::time::Instant::now();
                    artifacts.load(*kind, backend)?;
                    println!(
                        "    loaded on {backend} in {:.1} s",
                        start.elapsed().as_secs_f64()
                    );
                    if placement {
                        let graphs = wanrt_runtime::placement::network_placement(
                            &artifacts.dir,
                            kind.name(),
                            e,
                            backend,
                        )?;
                        for g in graphs {
                            println!("    placement {}: {}", g.graph, g.summary());
                        }
                    }
                }
            }
            Ok(())
        }
        Command::Compare {
            videos,
            min_psnr,
            input,
            reference,
            tensors,
            atol,
            rtol,
        } => match (input, reference) {
            (Some(input), Some(reference)) => compare(&input, &reference, &tensors, atol, rtol),
            _ => compare_videos(&videos, min_psnr),
        },
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wan-run: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
