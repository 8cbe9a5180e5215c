//! DiT forward latency on ONNX Runtime's CPU provider, for a small and a
//! medium synthetic config (random weights: latency does not depend on
//! values). Names follow `<backend>/<network>/<profile>`.
//!
//! `cargo bench --bench dit` (needs ORT_DYLIB_PATH or `source scripts/env.sh`).
//! Figures and the machine they came from are recorded in docs/MEASUREMENTS.md.

use std::collections::BTreeMap;

use criterion::{Criterion, criterion_group, criterion_main};
use wanrt::compiler::{CompileOptions, ModelSource, compile};
use wanrt::core::{BatchMode, DitConfig, NetworkContract, NetworkKind, Precision, Profile};
use wanrt::runtime::{Artifacts, Backend, HostTensor};

struct Setup {
    label: &'static str,
    dim: u32,
    heads: u32,
    layers: u32,
    ffn: u32,
    profile: Profile,
}

fn config(s: &Setup) -> DitConfig {
    let mut c = DitConfig::t2v_1_3b();
    c.dim = s.dim;
    c.num_heads = s.heads;
    c.num_layers = s.layers;
    c.ffn_dim = s.ffn;
    c.text_dim = 256;
    c
}

fn inputs(cfg: &DitConfig, profile: &Profile) -> BTreeMap<String, HostTensor> {
    let contract = NetworkContract::dit(cfg, profile).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    contract
        .inputs
        .iter()
        .map(|spec| {
            let shape = spec.concrete_shape(1);
            let n = shape.iter().product::<u64>() as usize;
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    if spec.name == "timestep" {
                        500.0
                    } else {
                        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                    }
                })
                .collect();
            (spec.name.clone(), HostTensor::from_f32(shape, &values))
        })
        .collect()
}

fn bench_dit(c: &mut Criterion) {
    let setups = [
        Setup {
            label: "small-64x64x9",
            dim: 256,
            heads: 2,
            layers: 2,
            ffn: 1024,
            profile: Profile::custom(64, 64, 9, 64).unwrap(),
        },
        Setup {
            label: "medium-320x192x17",
            dim: 768,
            heads: 6,
            layers: 4,
            ffn: 3072,
            profile: Profile::custom(320, 192, 17, 128).unwrap(),
        },
    ];
    let mut group = c.benchmark_group("ort-cpu/dit");
    group.sample_size(10);
    for s in &setups {
        let cfg = config(s);
        let profile = s.profile.clone().with_batch(BatchMode::Fixed(1)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        compile(
            &CompileOptions::new(
                ModelSource::SyntheticConfig {
                    name: s.label.into(),
                    config: cfg.clone(),
                },
                dir.path(),
                profile.clone(),
            )
            .with_precision(Precision::Fp32)
            .with_networks([NetworkKind::Dit]),
        )
        .unwrap();
        let artifacts = Artifacts::open(dir.path()).unwrap();
        let mut dit = artifacts.load(NetworkKind::Dit, Backend::OrtCpu).unwrap();
        let x = inputs(&cfg, &profile);
        group.bench_function(s.label, |b| b.iter(|| dit.run(&x).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, bench_dit);
criterion_main!(benches);
