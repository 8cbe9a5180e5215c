//! UMT5 text-encoder latency on ONNX Runtime's CPU provider, for a small and
//! a medium synthetic config (random weights: latency does not depend on
//! values) and the tiny fixture. Names follow `<backend>/<network>/<profile>`.
//!
//! The synthetic graphs are built with `wanrt::graphs::t5::build` from
//! `SyntheticSource` (the compiler's `ModelSource` has no UMT5 variant); the
//! fixture goes through `wan-compile`'s library entry point.
//!
//! `cargo bench --bench text_encoder` (needs ORT_DYLIB_PATH or
//! `source scripts/env.sh`).

use std::collections::BTreeMap;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use wanrt::compiler::synthetic::SyntheticSource;
use wanrt::compiler::{CompileOptions, ModelSource, compile};
use wanrt::core::{BatchMode, NetworkKind, Precision, Profile, Umt5Config};
use wanrt::graphs::{GraphBuilder, Weights, t5};
use wanrt::runtime::{Artifacts, Backend, HostTensor, session};

struct Setup {
    label: &'static str,
    cfg: Umt5Config,
    text_len: u32,
}

fn umt5(d_model: u32, heads: u32, layers: u32, d_ff: u32) -> Umt5Config {
    Umt5Config {
        vocab_size: 32_000,
        d_model,
        d_kv: d_model / heads,
        d_ff,
        num_layers: layers,
        num_heads: heads,
        ..Umt5Config::xxl()
    }
}

/// `input_ids`/`attention_mask [1, L]`: a prompt of about half the length.
fn inputs(l: usize, vocab: u32) -> Vec<(String, HostTensor)> {
    let used = l / 2;
    let ids: Vec<i64> = (0..l)
        .map(|i| match i {
            i if i + 1 < used => 3 + (i as i64 * 7919) % (vocab as i64 - 3),
            i if i + 1 == used => 1,
            _ => 0,
        })
        .collect();
    let mask: Vec<i64> = (0..l).map(|i| i64::from(i < used)).collect();
    vec![
        (
            "input_ids".into(),
            HostTensor::from_i64(vec![1, l as u64], &ids),
        ),
        (
            "attention_mask".into(),
            HostTensor::from_i64(vec![1, l as u64], &mask),
        ),
    ]
}

fn build_synthetic(s: &Setup, dir: &Path) -> std::path::PathBuf {
    let profile = Profile::custom(64, 64, 9, s.text_len)
        .unwrap()
        .with_batch(BatchMode::Fixed(1))
        .unwrap();
    let source = SyntheticSource::new(s.label);
    let mut b =
        GraphBuilder::new("text_encoder", Some(&dir.join("text_encoder.onnx.data"))).unwrap();
    t5::build(
        &mut b,
        Weights::new(&source),
        &s.cfg,
        &profile,
        &t5::T5Options {
            precision: Precision::Fp32,
            debug_outputs: false,
        },
    )
    .unwrap();
    let graph = dir.join("text_encoder.onnx");
    std::fs::write(&graph, b.finish("bench").unwrap().model.to_bytes()).unwrap();
    graph
}

fn bench_text_encoder(c: &mut Criterion) {
    let setups = [
        Setup {
            label: "small-L128",
            cfg: umt5(256, 4, 2, 640),
            text_len: 128,
        },
        Setup {
            label: "medium-L512",
            cfg: umt5(1024, 16, 4, 2560),
            text_len: 512,
        },
    ];
    let mut group = c.benchmark_group("ort-cpu/text_encoder");
    group.sample_size(10);
    for s in &setups {
        let dir = tempfile::tempdir().unwrap();
        let graph = build_synthetic(s, dir.path());
        let mut sess = session::create(&graph, Backend::OrtCpu).unwrap();
        let x = inputs(s.text_len as usize, s.cfg.vocab_size);
        group.bench_function(s.label, |b| {
            b.iter(|| session::run(&mut sess, "text_encoder", &x).unwrap())
        });
    }

    // The tiny fixture through the whole compile path, at its own L.
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/i2v-tiny/model");
    let dir = tempfile::tempdir().unwrap();
    compile(
        &CompileOptions::new(
            ModelSource::Dir(model),
            dir.path(),
            Profile::custom(32, 32, 9, 512)
                .unwrap()
                .with_batch(BatchMode::Fixed(1))
                .unwrap(),
        )
        .with_precision(Precision::Fp32)
        .with_networks([NetworkKind::TextEncoder])
        .with_overwrite(true),
    )
    .unwrap();
    let artifacts = Artifacts::open(dir.path()).unwrap();
    let mut net = artifacts
        .load(NetworkKind::TextEncoder, Backend::OrtCpu)
        .unwrap();
    let x: BTreeMap<String, HostTensor> = inputs(512, 1000).into_iter().collect();
    group.bench_function("i2v-tiny-L512", |b| b.iter(|| net.run(&x).unwrap()));
    group.finish();
}

criterion_group!(benches, bench_text_encoder);
criterion_main!(benches);
