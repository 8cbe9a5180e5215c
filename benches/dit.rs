//! DiT forward latency on ONNX Runtime's CPU provider, for a small and a
//! medium synthetic config (random weights: latency does not depend on
//! values). Names follow `<backend>/<network>/<profile>`.
//!
//! `cargo bench --bench dit` (needs ORT_DYLIB_PATH or `source scripts/env.sh`).
//! Figures and the machine they came from are recorded in docs/MEASUREMENTS.md.

mod common;

use common::{config, inputs};
use criterion::{Criterion, criterion_group, criterion_main};
use wanrt::core::BatchMode;

fn bench_dit(c: &mut Criterion) {
    let setups = common::setups();
    let mut group = c.benchmark_group("ort-cpu/dit");
    group.sample_size(10);
    for s in &setups {
        let cfg = config(s);
        let profile = s.profile.clone().with_batch(BatchMode::Fixed(1)).unwrap();
        let (_dir, mut dit) = common::load(s, &cfg, &profile, None);
        let x = inputs(&cfg, &profile);
        group.bench_function(s.label, |b| b.iter(|| dit.run(&x).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, bench_dit);
criterion_main!(benches);
