//! One denoising step (DiT × CFG + the fused UniPC update) and a whole
//! generation, on ONNX Runtime's CPU provider, for the tiny T2V model at a
//! small size; CFG as two batch-1 calls (`--batch 1`) and as one batch-2
//! call (`--batch 2`). Also the VAE decode alone. Names follow
//! `<backend>/<network>/<profile>`.
//!
//! `source scripts/env.sh && cargo bench --bench pipeline`; figures in
//! docs/MEASUREMENTS.md.

use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use wanrt::compiler::{CompileOptions, ModelSource, compile};
use wanrt::core::{BatchMode, NetworkKind, Precision, Profile};
use wanrt::runtime::pipeline::{GenerateOptions, Pipeline, gaussian_noise};
use wanrt::runtime::schedule::{MAX_STEPS, Sampler, Solver, apply_guidance};
use wanrt::runtime::{Artifacts, Backend, HostTensor};

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
    g.sample_size(10);
    for (cfg, batch) in [
        ("cfg-2-calls", BatchMode::Fixed(1)),
        ("cfg-batch-2", BatchMode::Fixed(2)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let profile = base.clone().with_batch(batch).unwrap();
        compile_tiny(dir.path(), &profile, vec![]);
        let artifacts = Artifacts::open(dir.path()).unwrap();
        // One denoising step: the DiT on cond + uncond (one batch-2 call or
        // two batch-1 calls, as compiled), CFG, and the fused UniPC update.
        let mut dit = artifacts.load(NetworkKind::Dit, Backend::OrtCpu).unwrap();
        let mut inputs = std::collections::BTreeMap::new();
        for spec in &dit.entry.inputs {
            // Batch 2 (cond + uncond), whatever the engine's batch.
            let mut shape = spec.concrete_shape(2);
            shape[0] = 2;
            let n = shape.iter().product::<u64>() as usize;
            let v = if spec.name == "timestep" {
                vec![500.0; n]
            } else {
                gaussian_noise(7, n)
            };
            inputs.insert(spec.name.clone(), HostTensor::from_f32(shape, &v));
        }
        // Elements of one sample (the engine's batch may be 1 or 2).
        let n = dit.entry.outputs[0].concrete_shape(1)[1..]
            .iter()
            .product::<u64>() as usize;
        let mut latents = gaussian_noise(3, n);
        let mut sampler = Sampler::new(Solver::UniPc, MAX_STEPS, 5.0, n).unwrap();
        g.bench_function(format!("step/{label}/{cfg}"), |b| {
            b.iter(|| {
                if sampler.is_finished() {
                    sampler = Sampler::new(Solver::UniPc, MAX_STEPS, 5.0, n).unwrap();
                }
                let out = dit.run(&inputs).unwrap();
                let pred = out["noise_pred"].to_f32().unwrap();
                let mut v = pred[..n].to_vec();
                apply_guidance(&mut v, &pred[n..], 5.0).unwrap();
                sampler.step(&mut latents, &v).unwrap();
            })
        });
        if cfg == "cfg-2-calls" {
            // The whole generation: text encoding, 10 steps, VAE decode.
            let mut p = Pipeline::load(artifacts, Backend::OrtCpu).unwrap();
            g.bench_function(format!("pipeline/{label}/10-steps"), |b| {
                b.iter(|| p.generate(&options(10), None, |_, _, _| {}).unwrap())
            });
        }
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
