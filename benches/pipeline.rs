//! The real denoising step of `Pipeline::generate` (a [`Denoiser`] step:
//! the DiT on both CFG branches, CFG, the UniPC update), before and after
//! the lean runtime, for the tiny T2V model at a small size on ONNX
//! Runtime's CPU provider:
//! - `whole`: the whole DiT graph with host tensors built, converted and
//!   copied on every step (the runtime before the stage graphs);
//! - `stages`: the stage graphs on buffers bound once per generation.
//!
//! CFG as two batch-1 calls (`--batch 1`) and as one batch-2 call
//! (`--batch 2`). `dit-calls/…/stages` times the bound network calls alone
//! (with their in-place input writes), so `step − dit-calls` is the step's
//! host overhead. Also a whole generation and the VAE decode alone. Names
//! follow `<backend>/<what>/<profile>`.
//!
//! `source scripts/env.sh && cargo bench --bench pipeline`; figures in
//! docs/MEASUREMENTS.md.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use wanrt::compiler::{CompileOptions, ModelSource, compile};
use wanrt::core::{BatchMode, NetworkKind, Precision, Profile};
use wanrt::runtime::dit::Conditioning;
use wanrt::runtime::pipeline::{DitGraphs, GenerateOptions, Pipeline, Timings, gaussian_noise};
use wanrt::runtime::schedule::{MAX_STEPS, Solver};
use wanrt::runtime::{Artifacts, Backend, ExecutionSettings, HostTensor};

fn compile_tiny(out: &Path, profile: &Profile, networks: Vec<NetworkKind>) {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t2v-tiny/model");
    compile(
        &CompileOptions::new(ModelSource::Dir(model), out, profile.clone())
            .with_precision(Precision::Fp32)
            .with_networks(networks),
    )
    .unwrap();
}

fn options(steps: usize) -> GenerateOptions {
    GenerateOptions {
        prompt: "A cat and a dog baking a cake in a kitchen.".into(),
        steps: Some(steps),
        solver: Solver::UniPc,
        seed: 0,
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let base = Profile::custom(128, 128, 17, 32).unwrap();
    let label = "tiny-128x128x17";
    let mut g = c.benchmark_group("ort-cpu");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for (cfg, batch) in [
        ("cfg-2-calls", BatchMode::Fixed(1)),
        ("cfg-batch-2", BatchMode::Fixed(2)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let profile = base.clone().with_batch(batch).unwrap();
        compile_tiny(dir.path(), &profile, vec![]);
        for (graphs, name) in [(DitGraphs::Whole, "whole"), (DitGraphs::Stages, "stages")] {
            let a = Artifacts::open(dir.path()).unwrap();
            let mut p =
                Pipeline::load_with(a, Backend::OrtCpu, &ExecutionSettings::default(), graphs)
                    .unwrap();
            let inputs = p
                .prepare(&options(MAX_STEPS), &mut Timings::default())
                .unwrap();
            g.bench_function(format!("step/{label}/{cfg}/{name}"), |b| {
                b.iter_custom(|iters| {
                    // Binding (context and time stages) is per generation,
                    // outside the timed steps.
                    let mut total = Duration::ZERO;
                    let mut d = p.denoiser(inputs.clone()).unwrap();
                    for _ in 0..iters {
                        if d.is_finished() {
                            drop(d);
                            d = p.denoiser(inputs.clone()).unwrap();
                        }
                        let t = Instant::now();
                        d.step().unwrap();
                        total += t.elapsed();
                    }
                    total
                })
            });
            if graphs == DitGraphs::Stages && cfg == "cfg-2-calls" {
                g.bench_function(format!("pipeline/{label}/10-steps"), |b| {
                    b.iter(|| p.generate(&options(10), None, |_, _, _| {}).unwrap())
                });
            }
        }
        // The bound network calls alone (same inputs every call).
        let a = Artifacts::open(dir.path()).unwrap();
        let mut dit = a.load(NetworkKind::Dit, Backend::OrtCpu).unwrap();
        let entry = dit.entry.clone();
        let text = &entry.inputs[2];
        let mut shape = text.concrete_shape(1);
        shape[0] = 1;
        let n = shape.iter().product::<u64>() as usize;
        let cond = HostTensor::from_f32(shape.clone(), &gaussian_noise(5, n));
        let uncond = HostTensor::from_f32(shape, &gaussian_noise(6, n));
        let timesteps = vec![500.0f32; 4];
        let lat = entry.outputs[0].concrete_shape(1)[1..]
            .iter()
            .product::<u64>() as usize;
        let latents = gaussian_noise(3, lat);
        if cfg == "cfg-2-calls" {
            // The time stage: once per step (1 row) or once per schedule.
            let staged = dit.staged_dit().unwrap();
            for rows in [1usize, 50] {
                let t: Vec<f32> = (0..rows).map(|i| 999.0 - i as f32 * 20.0).collect();
                g.bench_function(format!("dit-time/{label}/{rows}-rows"), |b| {
                    b.iter(|| staged.time_tables(&t).unwrap())
                });
            }
        }
        let mut bound = dit
            .staged_dit()
            .unwrap()
            .bind(&Conditioning {
                cond: &cond,
                uncond: Some(&uncond),
                image: None,
                y: None,
                timesteps: &timesteps,
            })
            .unwrap();
        g.bench_function(format!("dit-calls/{label}/{cfg}/stages"), |b| {
            b.iter(|| bound.run(1, &latents).unwrap())
        });
    }
    // The VAE decode alone (streaming, chunk by chunk).
    let dir = tempfile::tempdir().unwrap();
    compile_tiny(dir.path(), &base, vec![NetworkKind::VaeDecoder]);
    let a = Artifacts::open(dir.path()).unwrap();
    let mut dec = a.load(NetworkKind::VaeDecoder, Backend::OrtCpu).unwrap();
    let shape = dec.entry.inputs[0].concrete_shape(1);
    let n = shape.iter().product::<u64>() as usize;
    let z = HostTensor::from_f32(shape, &gaussian_noise(1, n));
    g.bench_function(format!("vae_decoder/{label}"), |b| {
        b.iter(|| dec.run_streaming(&z, |_| Ok(())).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
