//! fp32 vs INT8 (`--precision int8`, W8A8 on every block linear) DiT
//! forward on ONNX Runtime's CPU provider, for the small and medium
//! synthetic configs of `benches/dit.rs` (random weights: latency does not
//! depend on values). Names follow `<backend>/<network>/<profile>`. Before
//! timing, each config prints the INT8 output's error against fp32 on the
//! same inputs (rel L2, max |Δ| / max |b|).
//!
//! `cargo bench --bench quant` (needs ORT_DYLIB_PATH). Figures and the
//! machine: docs/MEASUREMENTS.md.

use std::collections::BTreeMap;

use criterion::{Criterion, criterion_group, criterion_main};
use wanrt::compiler::quant::QuantOptions;
use wanrt::compiler::{CompileOptions, ModelSource, compile};
use wanrt::core::{
    BatchMode, DitConfig, NetworkContract, NetworkKind, Precision, Profile, QuantLayers,
    QuantScheme,
};
use wanrt::runtime::{Artifacts, Backend, HostTensor, Network};

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

fn load(
    s: &Setup,
    cfg: &DitConfig,
    profile: &Profile,
    quant: Option<QuantOptions>,
) -> (tempfile::TempDir, Network) {
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
        .with_quantization(quant)
        .with_networks([NetworkKind::Dit]),
    )
    .unwrap();
    let dit = Artifacts::open(dir.path())
        .unwrap()
        .load(NetworkKind::Dit, Backend::OrtCpu)
        .unwrap();
    (dir, dit)
}

fn errors(got: &[f32], want: &[f32]) -> (f64, f64) {
    let (mut num, mut den, mut max_err, mut max_ref) = (0f64, 0f64, 0f64, 0f64);
    for (a, b) in got.iter().zip(want) {
        let (a, b) = (*a as f64, *b as f64);
        num += (a - b) * (a - b);
        den += b * b;
        max_err = max_err.max((a - b).abs());
        max_ref = max_ref.max(b.abs());
    }
    ((num / den).sqrt(), max_err / max_ref)
}

fn bench_quant(c: &mut Criterion) {
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
    let mut group = c.benchmark_group("ort-cpu");
    group.sample_size(10);
    for s in &setups {
        let cfg = config(s);
        let profile = s.profile.clone().with_batch(BatchMode::Fixed(1)).unwrap();
        let x = inputs(&cfg, &profile);
        let (_d32, mut fp32) = load(s, &cfg, &profile, None);
        let int8 = QuantOptions {
            scheme: QuantScheme::Int8,
            layers: QuantLayers::AllLinear,
            calibration: None,
        };
        let (_d8, mut int8) = load(s, &cfg, &profile, Some(int8));
        let want = fp32.run(&x).unwrap()["noise_pred"].to_f32().unwrap();
        let got = int8.run(&x).unwrap()["noise_pred"].to_f32().unwrap();
        let (l2, max) = errors(&got, &want);
        eprintln!(
            "{}: int8 vs fp32 noise_pred: rel L2 {l2:.3e}, max {max:.3e}",
            s.label
        );
        group.bench_function(format!("dit-fp32/{}", s.label), |b| {
            b.iter(|| fp32.run(&x).unwrap())
        });
        group.bench_function(format!("dit-int8/{}", s.label), |b| {
            b.iter(|| int8.run(&x).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_quant);
criterion_main!(benches);
