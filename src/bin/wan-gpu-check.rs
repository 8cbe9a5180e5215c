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
use wanrt::core::NetworkKind;
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
