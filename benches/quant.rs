//! fp32 vs INT8 (`--precision int8`, W8A8 on every block linear) DiT
//! forward on ONNX Runtime's CPU provider, for the small and medium
//! synthetic configs of `benches/dit.rs` (random weights: latency does not
//! depend on values). Names follow `<backend>/<network>/<profile>`. Before
//! timing, each config prints the INT8 output's error against fp32 on the
//! same inputs (rel L2, max |Δ| / max |b|).
//!
//! `cargo bench --bench quant` (needs ORT_DYLIB_PATH). Figures and the
//! machine: docs/MEASUREMENTS.md.

mod common;

use common::{config, inputs, load};
use criterion::{Criterion, criterion_group, criterion_main};
use wanrt::compiler::quant::QuantOptions;
use wanrt::core::{BatchMode, QuantLayers, QuantScheme};

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
    let setups = common::setups();
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
