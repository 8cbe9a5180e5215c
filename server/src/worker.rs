//! Workers: one OS thread per loaded pipeline (ONNX Runtime sessions are
//! blocking calls, never run on the async executor). A worker loads and
//! warms its engines, then claims jobs of its profile from the queue, runs
//! them and writes the video and its sidecar exactly as `wan-run` does.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wanrt_media::frames::read_frames;
use wanrt_media::video::{RgbFrames, VideoOptions, write_video};
use wanrt_runtime::backend::{Resolved, check_precisions};
use wanrt_runtime::pipeline::{GenerateOptions, InputImage, Pipeline, defaults};
use wanrt_runtime::sidecar::{RunRecord, sidecar_json};
use wanrt_runtime::vace::VaceInputs;
use wanrt_runtime::{Artifacts, Backend};

use crate::error::{Error, Result};
use crate::job::{Job, ProfileInfo, Status, now_s};
use crate::metrics::Metrics;
use crate::queue::{Claim, Queue};
use crate::store::{Store, write_atomic};

/// Shared switches of the server's life.
#[derive(Default)]
pub struct Control {
    /// Refuse new submissions (503): the server is draining.
    pub draining: AtomicBool,
    /// Workers take no new job.
    pub stop: AtomicBool,
    /// Running jobs stop at their next step and go back to the queue.
    pub abort: AtomicBool,
    /// Open event streams end.
    pub closing: AtomicBool,
    /// Jobs running now.
    pub running: AtomicUsize,
    /// Why the server cannot go on (engines that failed to load).
    pub fatal: Mutex<Option<String>>,
    pub fatal_notify: tokio::sync::Notify,
}

/// One artifact directory and its state.
pub struct EngineSlot {
    pub dir: PathBuf,
    pub info: ProfileInfo,
    /// The manifest (submissions are checked against the DiT's config and
    /// profile, e.g. for the step cache's built-in tables).
    pub artifacts: Artifacts,
    pub ready: AtomicBool,
}

impl EngineSlot {
    /// Reads the manifest (fast) so submissions can be checked before the
    /// engines are loaded, and refuses precisions `backend` has no kernels
    /// for.
    pub fn open(dir: PathBuf, backend: &Resolved) -> Result<Self> {
        let artifacts = Artifacts::open(&dir)?;
        check_precisions(&artifacts.manifest, None, backend)?;
        let p = &artifacts.entry(wanrt_core::NetworkKind::Dit)?.profile;
        Ok(EngineSlot {
            info: ProfileInfo {
                task: artifacts.manifest.model.task,
                width: p.width,
                height: p.height,
                frames: p.frames,
                reference_images: p.reference_images,
            },
            dir,
            artifacts,
            ready: AtomicBool::new(false),
        })
    }
}

/// What a worker needs besides its engines.
#[derive(Clone)]
pub struct WorkerEnv {
    pub queue: Arc<dyn Queue>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub control: Arc<Control>,
    pub backend: Backend,
    /// Why that backend (recorded in each sidecar, as by wan-run).
    pub backend_reason: String,
    pub name: String,
    pub prompt_cache: usize,
    /// Steps of the warm-up run after loading (0: none).
    pub warmup_steps: usize,
}

/// Starts the worker thread of `slot`.
pub fn spawn(
    slot: Arc<EngineSlot>,
    env: WorkerEnv,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("worker-{}", slot.info.key()))
        .spawn(move || {
            let key = slot.info.key();
            match load(&slot, &env) {
                Ok(pipeline) => work(pipeline, &slot, &env),
                Err(e) => {
                    let msg = format!("engines {} ({key}): {e}", slot.dir.display());
                    eprintln!("wan-serve: {msg}");
                    *env.control.fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg);
                    env.control.fatal_notify.notify_one();
                }
            }
        })
}

fn load(slot: &EngineSlot, env: &WorkerEnv) -> Result<Pipeline> {
    let key = slot.info.key();
    let t0 = Instant::now();
    let mut pipeline = Pipeline::load(Artifacts::open(&slot.dir)?, env.backend)?;
    if env.warmup_steps > 0 {
        // One short run allocates every buffer and plan the real jobs use.
        let opts = GenerateOptions {
            prompt: "warm-up".into(),
            steps: Some(env.warmup_steps),
            image: None,
            ..Default::default()
        };
        if slot.info.task == wanrt_core::Task::T2v {
            pipeline.generate(&opts, Some(&env.control.abort), |_, _, _| {})?;
        }
    }
    pipeline
        .prompt_encoder()
        .set_cache_capacity(env.prompt_cache);
    let secs = t0.elapsed().as_secs_f64();
    env.metrics
        .engine_load_seconds
        .with_label_values(&[&key])
        .set(secs);
    env.metrics.engines_ready.with_label_values(&[&key]).set(1);
    env.queue.register(&slot.info, &env.name)?;
    slot.ready.store(true, Ordering::SeqCst);
    eprintln!(
        "wan-serve: engines {} ({key}) loaded and warm in {secs:.1} s",
        slot.dir.display()
    );
    Ok(pipeline)
}

fn work(mut pipeline: Pipeline, slot: &EngineSlot, env: &WorkerEnv) {
    let mut backoff = Duration::from_millis(100);
    while !env.control.stop.load(Ordering::SeqCst) {
        let claim = match env
            .queue
            .claim(&slot.info, &env.name, Duration::from_millis(500))
        {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                eprintln!("wan-serve: claiming a job: {e}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        if claim.reclaimed {
            eprintln!(
                "wan-serve: {} reclaimed job {} from a worker that stopped",
                env.name, claim.job.id
            );
        }
        env.control.running.fetch_add(1, Ordering::SeqCst);
        let res = run_job(&mut pipeline, &claim, env);
        env.control.running.fetch_sub(1, Ordering::SeqCst);
        if let Err(e) = res {
            // Still settle it: every accepted job ends with a reason.
            eprintln!("wan-serve: job {}: {e}", claim.job.id);
            let mut job = claim.job.clone();
            job.fail("server_error", e.to_string());
            if let Err(e) = settle(&claim, job, env) {
                eprintln!(
                    "wan-serve: job {}: recording the failure: {e}",
                    claim.job.id
                );
            }
        }
        let (hits, misses) = pipeline.prompt_encoder().recent().stats();
        let key = slot.info.key();
        env.metrics
            .prompt_cache_hits
            .with_label_values(&[&key])
            .set(hits as i64);
        env.metrics
            .prompt_cache_misses
            .with_label_values(&[&key])
            .set(misses as i64);
    }
}

/// Runs one claimed job to its final state (or back to the queue when the
/// server shuts down mid-run).
fn run_job(pipeline: &mut Pipeline, claim: &Claim, env: &WorkerEnv) -> Result<()> {
    let mut job = claim.job.clone();
    let r = &job.request;
    let (d_steps, _, _) = defaults(r.profile.task, r.profile.width, r.profile.height);
    job.steps_total = Some(r.steps.unwrap_or(d_steps));
    job.status = Status::InProgress;
    if env.queue.progress(claim, &job)? {
        return settle_cancelled(claim, job, env);
    }
    let solver = r.solver.parse().map_err(Error::Engine)?;
    // The upload was checked when the job was accepted; decoded again here
    // from the job's own copy.
    let load = |wanted: bool, path: PathBuf, label: &str| -> Result<Option<InputImage>> {
        if !wanted {
            return Ok(None);
        }
        let pixels = wanrt_media::image::load_image(&path).map_err(Error::Engine)?;
        Ok(Some(InputImage::new(pixels, label)))
    };
    let image = load(r.has_image, env.store.image(&job.id), "input_reference")?;
    let last_image = load(
        r.has_last_image,
        env.store.last_image(&job.id),
        "last_image",
    )?;
    let vace = match vace_inputs(&job, pipeline.profile(), env) {
        Ok(v) => v,
        Err(Error::Engine(e @ wanrt_runtime::Error::InvalidArgument { .. })) => {
            // Stored inputs these engines refuse (a job another server's
            // engines of the same key accepted).
            let refused = crate::job::runtime_field_error(&e);
            job.fail(refused.code, refused.message);
            return settle(claim, job, env);
        }
        Err(e) => return Err(e),
    };
    let r = &job.request;
    let opts = GenerateOptions {
        prompt: r.prompt.clone(),
        negative_prompt: r.negative_prompt.clone(),
        image,
        last_image,
        steps: r.steps,
        guidance_scale: r.guidance_scale,
        shift: r.shift,
        solver,
        seed: r.seed,
        latents: None,
        timesteps: r.timesteps.clone(),
        cfg_zero_star: r.cfg_zero_star,
        zero_init_steps: r.zero_init_steps,
        vace,
        cache: r.cache.clone(),
    };
    let key = r.profile.key();
    let interrupt = AtomicBool::new(false);
    let mut cancelled = false;
    let mut progress_error = None;
    let step_hist = env.metrics.step_seconds.with_label_values(&[&key]);
    let result = pipeline.generate(&opts, Some(&interrupt), |_, n, secs| {
        step_hist.observe(secs);
        job.steps_total = Some(n);
        job.step_s.push(secs);
        match env.queue.progress(claim, &job) {
            Ok(true) => {
                cancelled = true;
                interrupt.store(true, Ordering::SeqCst);
            }
            Ok(false) => {}
            Err(e) => progress_error = Some(e),
        }
        if env.control.abort.load(Ordering::SeqCst) {
            interrupt.store(true, Ordering::SeqCst);
        }
    });
    if let Some(e) = progress_error {
        eprintln!("wan-serve: job {}: recording progress: {e}", job.id);
    }
    let generated = match result {
        Ok(g) => g,
        Err(wanrt_runtime::Error::Interrupted) if cancelled => {
            return settle_cancelled(claim, job, env);
        }
        Err(wanrt_runtime::Error::Interrupted) => {
            eprintln!(
                "wan-serve: job {} interrupted by shutdown; queued again",
                job.id
            );
            return env.queue.release(claim, &job);
        }
        Err(e @ wanrt_runtime::Error::InvalidArgument { .. }) => {
            // A request the runtime refuses (e.g. a step cache checked
            // only here, for engines another server accepted it for).
            let refused = crate::job::runtime_field_error(&e);
            job.fail(refused.code, refused.message);
            return settle(claim, job, env);
        }
        Err(e) => {
            job.fail("generation_failed", e.to_string());
            return settle(claim, job, env);
        }
    };
    job.cache = crate::job::CacheResult::of(&generated.settings.cache);
    for (stage, s) in [
        ("text_encoder", generated.timings.text_encoder_s),
        ("image_conditioning", generated.timings.image_conditioning_s),
        ("denoise", generated.timings.denoise_s),
        ("vae_decode", generated.timings.vae_decode_s),
    ] {
        env.metrics
            .stage_seconds
            .with_label_values(&[stage])
            .observe(s);
    }

    // The same writers as wan-run: the same bytes for the same seed.
    env.store.ensure_dir(&job.id)?;
    let video = env.store.video(&job.id);
    let t0 = Instant::now();
    let written = RgbFrames::from_tensor(&generated.video).and_then(|frames| {
        let o = VideoOptions {
            overwrite: true,
            ..Default::default()
        };
        write_video(&video, &frames, &o, Some(&env.control.abort))
    });
    match written {
        Ok(_) => {}
        Err(wanrt_runtime::Error::Interrupted) => return env.queue.release(claim, &job),
        Err(e) => {
            job.fail("video_write_failed", e.to_string());
            return settle(claim, job, env);
        }
    }
    let write_s = t0.elapsed().as_secs_f64();
    env.metrics
        .stage_seconds
        .with_label_values(&["video_write"])
        .observe(write_s);
    let run = RunRecord {
        backend: env.backend,
        backend_reason: &env.backend_reason,
        output: &video,
        video_write_s: write_s,
        latents_in: None,
    };
    let side = sidecar_json(pipeline, &generated, &run)?;
    let bytes = serde_json::to_vec_pretty(&side).map_err(|e| Error::Corrupt {
        file: env.store.sidecar(&job.id),
        source: e,
    })?;
    write_atomic(&env.store.sidecar(&job.id), &bytes)?;
    job.status = Status::Completed;
    job.completed_at = Some(now_s());
    settle(claim, job, env)
}

/// The VACE inputs of a job, decoded again from its stored parts as
/// wan-run decodes `--control-video`/`--control-mask` MP4 files and
/// `--reference-image` files (`None`: not a VACE job).
/// `profile`: the engines' (the frames are checked against it while they
/// are decoded).
fn vace_inputs(
    job: &Job,
    profile: &wanrt_core::Profile,
    env: &WorkerEnv,
) -> Result<Option<VaceInputs>> {
    let Some(v) = &job.request.vace else {
        return Ok(None);
    };
    let frames = |given: bool, part: &str| -> Result<_> {
        if !given {
            return Ok(None);
        }
        let flag = format!("--{}", part.replace('_', "-"));
        let path = env.store.video_part(&job.id, part);
        Ok(Some(
            read_frames(&path, &flag, Some(profile)).map_err(Error::Engine)?,
        ))
    };
    let reference_images = (0..v.reference_images as usize)
        .map(|i| {
            wanrt_media::image::load_image(&env.store.reference_image(&job.id, i))
                .map_err(Error::Engine)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(VaceInputs {
        video: frames(v.control_video, "control_video")?,
        mask: frames(v.control_mask, "control_mask")?,
        reference_images,
        context_scale: v.context_scale,
    }))
}

fn settle_cancelled(claim: &Claim, mut job: Job, env: &WorkerEnv) -> Result<()> {
    job.status = Status::Cancelled;
    job.completed_at = Some(now_s());
    settle(claim, job, env)
}

fn settle(claim: &Claim, job: Job, env: &WorkerEnv) -> Result<()> {
    if env.queue.finish(claim, &job)? {
        env.metrics
            .jobs_finished
            .with_label_values(&[job.status.name()])
            .inc();
        let secs = crate::job::now_ms().saturating_sub(job.created_ms) as f64 / 1000.0;
        env.metrics.job_seconds.observe(secs);
        eprintln!(
            "wan-serve: job {} {} on {}",
            job.id,
            job.status.name(),
            env.name
        );
    } else {
        eprintln!(
            "wan-serve: job {} was already completed by another worker; this run is dropped",
            job.id
        );
    }
    Ok(())
}
