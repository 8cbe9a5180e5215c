//! `wan-gpu-check`: the ONNX Runtime half of `scripts/gpu-check.sh`.
//!
//! Loads a compiled DiT and measures, on one backend, in one process:
//! session creation, the first run, plain runs (host tensors in and out),
//! runs on bound device buffers (IoBinding, inputs copied to the device
//! once, output preallocated on the device), CUDA-graph replay (a second
//! session with ONNX Runtime's CUDA graph; after the capture, new latents
//! are written into the bound input buffer and the replay is compared with
//! a plain run on them, which proves the replay reads the bound buffers),
//! and pinned against pageable host→device copies of a latent-sized
//! tensor. Every figure is written as JSON (`--json`); the plain run's
//! output is written to `--output` for the comparison with PyTorch.
//!
//! With `--cache-steps N` it also times the step cache: the pipeline's
//! bound denoising loop over N steps without a cache and with MagCache at
//! the published T2V-1.3B table ([`step_cache`]).
//!
//! On `ort-cpu` (the script's `--dry-run`) the device parts run on host
//! memory where that is meaningful (bound buffers) and are reported as
//! skipped, with the reason, where they need a GPU (CUDA graphs, pinned
//! memory).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ort::ep;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorValueType};
use serde_json::{Value, json};
use wanrt::core::{DitConfig, NetworkKind, Profile};
use wanrt::runtime::cache::{
    CacheOptions, CachePlan, CachePolicy, CacheResidency, CacheTable, KnownModel, known_model,
};
use wanrt::runtime::pipeline::{
    DenoiseInputs, Denoiser, DitGraphs, cache_plan_for, gaussian_noise,
};
use wanrt::runtime::schedule::{Schedule, Solver};
use wanrt::runtime::{Artifacts, Backend, HostTensor, tensorfile};

struct Args {
    engines: PathBuf,
    input: PathBuf,
    output: PathBuf,
    json: PathBuf,
    backend: Backend,
    iters: usize,
    /// Another implementation's output on the same inputs (PyTorch's), to
    /// compare with.
    reference: Option<PathBuf>,
    /// Steps of the step-cache item (0: skipped).
    cache_steps: usize,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let mut get = BTreeMap::new();
    while let Some(k) = it.next() {
        let Some(flag) = k.strip_prefix("--") else {
            bail!("unexpected argument '{k}'");
        };
        let v = it
            .next()
            .with_context(|| format!("--{flag} needs a value"))?;
        get.insert(flag.to_string(), v);
    }
    let take = |k: &str| -> Result<String> {
        get.get(k)
            .cloned()
            .with_context(|| format!("--{k} is required (see scripts/gpu-check.sh)"))
    };
    let backend: Backend = take("backend")?.parse()?;
    if backend == Backend::OrtTensorRt {
        bail!("--backend: wan-gpu-check measures ort-cuda (or ort-cpu for a dry run)");
    }
    Ok(Args {
        engines: take("engines")?.into(),
        input: take("input")?.into(),
        output: take("output")?.into(),
        json: take("json")?.into(),
        backend,
        iters: take("iters")?.parse().context("--iters")?,
        reference: get.get("reference").map(PathBuf::from),
        cache_steps: match get.get("cache-steps") {
            Some(v) => v.parse().context("--cache-steps")?,
            None => 0,
        },
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A session on `backend`: CUDA with TF32 off (fp32 parity) and the CPU
/// fallback disabled; optionally with ONNX Runtime's CUDA graph.
fn session(path: &std::path::Path, backend: Backend, cuda_graph: bool) -> Result<Session> {
    let env = wanrt::runtime::ortlib::environment()?;
    let e = <ort::Error as From<ort::Error<ort::session::builder::SessionBuilder>>>::from;
    let mut b = Session::builder(env)?;
    if backend == Backend::OrtCuda {
        b = b
            .with_disable_cpu_fallback()
            .map_err(e)?
            .with_execution_providers([ep::CUDA::default()
                .with_tf32(false)
                .with_cuda_graph(cuda_graph)
                .build()
                .error_on_failure()])
            .map_err(e)?;
    }
    Ok(b.commit_from_file(path)?)
}

fn host_value(t: &HostTensor) -> Result<Tensor<f32>> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    let v = t.to_f32().context("inputs must be float")?;
    Ok(Tensor::from_array((shape, v))?)
}

/// The values of an output, wherever it lives (copied to the host first
/// when it is on a device).
fn to_host(v: &DynValue) -> Result<Vec<f32>> {
    let t = v.view().downcast::<TensorValueType<f32>>()?;
    let host = t.to(AllocationDevice::CPU, 0)?;
    let (_, d) = host.try_extract_tensor::<f32>()?;
    Ok(d.to_vec())
}

fn max_abs(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max)
}

fn plain_run(s: &mut Session, inputs: &BTreeMap<String, HostTensor>) -> Result<Vec<f32>> {
    let mut values = Vec::new();
    for (n, t) in inputs {
        values.push((n.clone(), host_value(t)?.into_dyn()));
    }
    let out = s.run(values)?;
    let (_, d) = out["noise_pred"].try_extract_tensor::<f32>()?;
    Ok(d.to_vec())
}

/// Device tensors holding `inputs`, plus a preallocated output, bound.
struct Bound {
    inputs: BTreeMap<String, Tensor<f32>>,
    binding: ort::session::IoBinding,
}

fn bind(
    s: &mut Session,
    inputs: &BTreeMap<String, HostTensor>,
    out_shape: &[i64],
    device: AllocationDevice,
) -> Result<Bound> {
    let alloc = if device == AllocationDevice::CPU {
        Allocator::default()
    } else {
        Allocator::new(
            s,
            MemoryInfo::new(device, 0, AllocatorType::Device, MemoryType::Default)?,
        )?
    };
    let mut dev = BTreeMap::new();
    for (n, t) in inputs {
        let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        let mut d = Tensor::<f32>::new(&alloc, shape)?;
        host_value(t)?.copy_into(&mut d)?;
        dev.insert(n.clone(), d);
    }
    let mut binding = s.create_binding()?;
    for (n, d) in &dev {
        binding.bind_input(n, d)?;
    }
    let out = Tensor::<f32>::new(&alloc, out_shape.to_vec())?;
    binding.bind_output("noise_pred", out)?;
    Ok(Bound {
        inputs: dev,
        binding,
    })
}

fn bound_output(s: &mut Session, b: &Bound) -> Result<Vec<f32>> {
    let out = s.run_binding(&b.binding)?;
    to_host(&out["noise_pred"])
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t = Instant::now();
    let r = f()?;
    Ok((r, t.elapsed().as_secs_f64()))
}

/// The step-cache item: the pipeline's bound denoising loop ([`Denoiser`]:
/// the DiT's stage graphs, CFG as the engine runs it, UniPC, shift 5,
/// guidance 5) over `steps` steps from one random start, without a cache
/// and with MagCache at the published T2V-1.3B magnitude ratios (resampled
/// to `steps`) and preset (threshold 0.12, K 4, retention 0.2), its
/// residuals on the host and then on the device (`--cache-residency`; on
/// ort-cpu the device is the host's memory, run by the same compiled
/// step-cache graphs as on a GPU). MagCache's
/// schedule depends only on the table and the step count, so on random
/// weights it skips the calls it skips on the real model. A model
/// recognised as T2V-1.3B takes the built-in table, as `wan-run --cache
/// magcache` would; any other (the dry run's fixture) is given the same
/// table and settings explicitly. One untimed step first (session warm-up).
fn step_cache(
    artifacts: &Artifacts,
    backend: Backend,
    steps: usize,
    report: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    let mut dit = artifacts.load(NetworkKind::Dit, backend)?;
    let cfg: DitConfig =
        serde_json::from_value(dit.entry.config.clone()).context("dit config in manifest.json")?;
    let profile = dit.entry.profile.clone();
    let [c, f, h, w] = profile.dit_latent_shape(cfg.out_dim);
    let shape = vec![1, u64::from(c), u64::from(f), u64::from(h), u64::from(w)];
    let n = shape.iter().product::<u64>() as usize;
    let text = vec![1, u64::from(profile.text_len), u64::from(cfg.text_dim)];
    let m = text.iter().product::<u64>() as usize;
    let mut inputs = DenoiseInputs {
        cond: HostTensor::from_f32(text.clone(), &gaussian_noise(5, m)),
        uncond: Some(HostTensor::from_f32(text, &gaussian_noise(6, m))),
        image: None,
        vace: None,
        latents: gaussian_noise(0, n),
        solver: Solver::UniPc,
        schedule: Schedule::for_solver(Solver::UniPc, steps, 5.0)?,
        seed: 0,
        guidance: 5.0,
        cfg_zero_star: false,
        zero_init_steps: 0,
        cache: None,
    };
    let published: CachePlan = CacheOptions {
        policy: CachePolicy::MagCache,
        ..Default::default()
    }
    .resolve(
        &DitConfig::t2v_1_3b(),
        &Profile::custom(832, 480, 81, 512)?,
        steps,
    )?
    .context("MagCache resolves to a plan")?;
    let (opts, table) = if known_model(&cfg, &profile) == Some(KnownModel::T2v1_3b) {
        let opts = CacheOptions {
            policy: CachePolicy::MagCache,
            ..Default::default()
        };
        (opts, "built-in T2V-1.3B (the model is recognised)")
    } else {
        let opts = CacheOptions {
            policy: CachePolicy::MagCache,
            threshold: Some(published.threshold),
            max_skip: published.max_skip,
            retention: published.retention,
            table: published.mag_ratios.clone().map(CacheTable::MagRatios),
            ..Default::default()
        };
        (
            opts,
            "published T2V-1.3B, given explicitly (not a T2V-1.3B model)",
        )
    };
    // MagCache with its residuals on the host, then on the device.
    let mut runs = vec![("none", None)];
    for (name, residency) in [
        ("magcache_host", CacheResidency::Host),
        ("magcache_device", CacheResidency::Device),
    ] {
        let opts = CacheOptions {
            residency,
            ..opts.clone()
        };
        let plan = cache_plan_for(artifacts, DitGraphs::Stages, &opts, steps, 0)?
            .context("MagCache resolves to a plan")?;
        let settings = |p: &CachePlan| (p.mag_ratios.clone(), p.threshold, p.max_skip, p.retention);
        if settings(&plan) != settings(&published) {
            bail!("the engines' MagCache plan is not the published T2V-1.3B one: {plan:?}");
        }
        runs.push((name, Some(plan)));
    }
    report.insert("cache_steps".into(), json!(steps));
    report.insert("cache_table".into(), json!(table));
    {
        let mut d = Denoiser::new(&mut dit, inputs.clone(), shape.clone())?;
        d.step()?;
    }
    let mut none_s = None;
    for (name, cache) in runs {
        let want = cache.as_ref().map(|p| p.residency);
        inputs.cache = cache;
        let t = Instant::now();
        let mut d = Denoiser::new(&mut dit, inputs.clone(), shape.clone())?;
        while !d.is_finished() {
            d.step()?;
        }
        let secs = t.elapsed().as_secs_f64();
        let r = d.cache_record();
        if r.residency != want {
            bail!(
                "{name}: the step cache ran with residency {:?}, asked {want:?}",
                r.residency
            );
        }
        // Without a cache every call runs the blocks: one per CFG branch
        // and step.
        let (ran, of) = if r.block_forwards_uncached == 0 {
            (2 * steps, 2 * steps)
        } else {
            (r.block_forwards, r.block_forwards_uncached)
        };
        report.insert(
            format!("cache_{name}_calls"),
            json!(format!("{ran} / {of}")),
        );
        report.insert(format!("cache_{name}_s"), json!(secs));
        match none_s {
            None => none_s = Some(secs),
            Some(base) => {
                report.insert(format!("cache_{name}_speedup"), json!(base / secs));
                report.insert(
                    format!("cache_{name}_bytes"),
                    json!(r.buffer_bytes + r.scratch_bytes),
                );
            }
        }
    }
    Ok(())
}

fn run() -> Result<()> {
    let a = parse_args()?;
    let artifacts = Artifacts::open(&a.engines)?;
    let entry = artifacts.entry(NetworkKind::Dit)?.clone();
    let graph = artifacts.dir.join(&entry.file);
    let inputs: BTreeMap<String, HostTensor> = {
        let all = tensorfile::read(&a.input)?;
        entry
            .inputs
            .iter()
            .map(|s| {
                all.get(&s.name)
                    .cloned()
                    .map(|t| (s.name.clone(), t))
                    .with_context(|| format!("{}: no tensor '{}'", a.input.display(), s.name))
            })
            .collect::<Result<_>>()?
    };
    let out_shape: Vec<i64> = inputs["hidden_states"]
        .shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if i == 1 { 16 } else { d as i64 })
        .collect();
    let mut report = serde_json::Map::new();
    report.insert("backend".into(), json!(a.backend.name()));
    report.insert("precision".into(), json!(entry.precision.to_string()));
    let p = &entry.profile;
    report.insert(
        "profile".into(),
        json!(format!(
            "{}x{}x{} text {}",
            p.width, p.height, p.frames, p.text_len
        )),
    );

    let (mut s, create_s) = timed(|| session(&graph, a.backend, false))?;
    report.insert("session_create_s".into(), json!(create_s));
    let (reference, first_s) = timed(|| plain_run(&mut s, &inputs))?;
    report.insert("first_run_s".into(), json!(first_s));
    let mut times = Vec::new();
    for _ in 0..a.iters {
        times.push(timed(|| plain_run(&mut s, &inputs))?.1);
    }
    report.insert("plain_run_s".into(), json!(median(times)));
    tensorfile::write(
        &a.output,
        &BTreeMap::from([(
            "noise_pred".to_string(),
            HostTensor::from_f32(out_shape.iter().map(|&d| d as u64).collect(), &reference),
        )]),
        true,
    )?;

    // Bound buffers: inputs copied once, the output preallocated.
    let device = if a.backend == Backend::OrtCuda {
        AllocationDevice::CUDA
    } else {
        AllocationDevice::CPU
    };
    let memory = format!("{device:?}");
    let b = bind(&mut s, &inputs, &out_shape, device.clone())?;
    let got = bound_output(&mut s, &b)?;
    report.insert(
        "bound_vs_plain_max_abs".into(),
        json!(max_abs(&got, &reference)),
    );
    let mut times = Vec::new();
    for _ in 0..a.iters {
        times.push(timed(|| Ok(s.run_binding(&b.binding)?.len()))?.1);
    }
    report.insert("bound_run_s".into(), json!(median(times)));
    report.insert("bound_memory".into(), json!(memory));

    if a.backend == Backend::OrtCuda {
        // CUDA graph: capture on the first bound run, then replays.
        let mut g = session(&graph, a.backend, true)?;
        let gb = bind(&mut g, &inputs, &out_shape, device)?;
        let (_, capture_s) = timed(|| bound_output(&mut g, &gb))?;
        report.insert("graph_capture_run_s".into(), json!(capture_s));
        let mut times = Vec::new();
        for _ in 0..a.iters {
            times.push(timed(|| Ok(g.run_binding(&gb.binding)?.len()))?.1);
        }
        report.insert("graph_replay_s".into(), json!(median(times)));
        // New latents written into the bound buffer: the replay must see them.
        let mut fresh = inputs.clone();
        let x = &inputs["hidden_states"];
        let v: Vec<f32> = x
            .to_f32()
            .context("float latents")?
            .iter()
            .map(|v| -v * 0.5 + 0.25)
            .collect();
        fresh.insert(
            "hidden_states".into(),
            HostTensor::from_f32(x.shape.clone(), &v),
        );
        let mut gb = gb;
        let target = gb
            .inputs
            .get_mut("hidden_states")
            .context("bound hidden_states")?;
        host_value(&fresh["hidden_states"])?.copy_into(target)?;
        let replayed = bound_output(&mut g, &gb)?;
        let plain = plain_run(&mut s, &fresh)?;
        report.insert(
            "graph_replay_fresh_vs_plain_max_abs".into(),
            json!(max_abs(&replayed, &plain)),
        );
        report.insert(
            "graph_replay_stale_vs_plain_max_abs".into(),
            json!(max_abs(&reference, &plain)),
        );

        // Pinned vs pageable host→device copies of one latent-sized tensor.
        let shape = vec![1i64, 16, 21, 60, 104];
        let n: i64 = shape.iter().product();
        let dev_alloc = Allocator::new(
            &s,
            MemoryInfo::new(
                AllocationDevice::CUDA,
                0,
                AllocatorType::Device,
                MemoryType::Default,
            )?,
        )?;
        let pinned_alloc = Allocator::new(
            &s,
            MemoryInfo::new(
                AllocationDevice::CUDA_PINNED,
                0,
                AllocatorType::Device,
                MemoryType::CPUInput,
            )?,
        )?;
        let mut dst = Tensor::<f32>::new(&dev_alloc, shape.clone())?;
        let pageable = Tensor::from_array((shape.clone(), vec![0.5f32; n as usize]))?;
        let pinned = Tensor::<f32>::new(&pinned_alloc, shape.clone())?;
        for (name, src) in [("pageable", &pageable), ("pinned", &pinned)] {
            let mut times = Vec::new();
            for _ in 0..10 {
                times.push(timed(|| Ok(src.copy_into(&mut dst)?))?.1);
            }
            report.insert(format!("copy_{name}_8MB_s"), json!(median(times)));
        }
    } else {
        let why = "skipped: needs ort-cuda (dry run on ort-cpu)";
        for k in ["graph_replay_s", "copy_pinned_8MB_s", "copy_pageable_8MB_s"] {
            report.insert(k.into(), json!(why));
        }
    }
    if let Some(r) = &a.reference {
        let want = tensorfile::read(r)?
            .remove("noise_pred")
            .and_then(|t| t.to_f32())
            .with_context(|| format!("{}: no float tensor 'noise_pred'", r.display()))?;
        if want.len() != reference.len() {
            bail!(
                "{}: {} values, this output has {}",
                r.display(),
                want.len(),
                reference.len()
            );
        }
        let (mut num, mut den) = (0f64, 0f64);
        for (x, y) in reference.iter().zip(&want) {
            num += ((x - y) as f64).powi(2);
            den += (*y as f64).powi(2);
        }
        report.insert(
            "vs_reference_rel_l2".into(),
            json!((num / den.max(1e-30)).sqrt()),
        );
        report.insert(
            "vs_reference_max_abs".into(),
            json!(max_abs(&reference, &want)),
        );
    }
    if a.cache_steps > 0 {
        step_cache(&artifacts, a.backend, a.cache_steps, &mut report)?;
    }
    let text = serde_json::to_string_pretty(&Value::Object(report))?;
    println!("{text}");
    wanrt::runtime::tensorfile::write_atomic(&a.json, text.as_bytes(), true)?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wan-gpu-check: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
