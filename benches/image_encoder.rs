//! CLIP image-encoder latency on ONNX Runtime's CPU provider: the tiny
//! fixture (`i2v-tiny`, width 32, 2 of 3 blocks run) compiled through
//! `wan-compile`'s library path, and a small synthetic ViT (width 384, 6 of
//! 7 blocks, 224/14: 257 tokens like ViT-H/14) with random weights (latency
//! does not depend on values). Names follow `<backend>/<network>/<profile>`.
//!
//! `cargo bench --bench image_encoder` (needs ORT_DYLIB_PATH or
//! `source scripts/env.sh`). Figures and machines go to docs/MEASUREMENTS.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use wanrt::compiler::export::{GraphJob, export_graph};
use wanrt::compiler::synthetic::SyntheticSource;
use wanrt::compiler::{CompileOptions, ModelSource, compile};
use wanrt::core::manifest::ModelInfo;
use wanrt::core::{
    BatchMode, ClipVisionConfig, Manifest, NetworkContract, NetworkKind, Precision, Profile, Task,
};
use wanrt::graphs::Weights;
use wanrt::graphs::clip::{self, ClipOptions};
use wanrt::runtime::{Artifacts, Backend, HostTensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn options(model: ModelSource, out: &Path, profile: &Profile) -> CompileOptions {
    CompileOptions::new(model, out, profile.clone())
        .with_precision(Precision::Fp32)
        .with_networks([NetworkKind::ImageEncoder])
        .with_overwrite(true)
}

/// The tiny fixture's image encoder, compiled as `wan-compile` does.
fn compile_tiny(out: &Path, profile: &Profile) {
    let model = ModelSource::Dir(fixtures().join("i2v-tiny/model"));
    compile(&options(model, out, profile)).unwrap();
}

/// A synthetic ViT built straight through the exporter (the compiler's
/// synthetic sources only cover the DiT), with a manifest of its own.
fn compile_synthetic(out: &Path, profile: &Profile, cfg: &ClipVisionConfig) {
    let opts = options(ModelSource::Synthetic("clip".into()), out, profile);
    let source = SyntheticSource::new("clip");
    let job = GraphJob {
        kind: NetworkKind::ImageEncoder,
        contract: NetworkContract::image_encoder(cfg, profile),
        config: serde_json::to_value(cfg).unwrap(),
        doc: "synthetic CLIP visual tower (bench)".into(),
    };
    let copts = ClipOptions {
        precision: Precision::Fp32,
        debug_outputs: false,
    };
    let (entry, _) = export_graph(job, &opts, out, |b| {
        clip::build(b, Weights::new(&source), cfg, profile, &copts)
    })
    .unwrap();
    let mut manifest = Manifest::new(ModelInfo {
        task: Task::I2v,
        layout: "synthetic:clip".into(),
        source: String::new(),
    });
    manifest.networks.insert(NetworkKind::ImageEncoder, entry);
    std::fs::write(Manifest::path(out), manifest.to_json()).unwrap();
}

/// Deterministic CLIP-normalised-looking pixels `[1, 3, S, S]`.
fn pixels(size: u32) -> BTreeMap<String, HostTensor> {
    let n = 3 * (size as usize).pow(2);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect();
    let shape = vec![1, 3, size as u64, size as u64];
    BTreeMap::from([(
        "pixel_values".to_string(),
        HostTensor::from_f32(shape, &values),
    )])
}

fn bench_image_encoder(c: &mut Criterion) {
    // The image encoder ignores the video size; the profile sets the batch.
    let profile = Profile::custom(32, 32, 9, 512)
        .unwrap()
        .with_batch(BatchMode::Fixed(1))
        .unwrap();
    let small = ClipVisionConfig {
        width: 384,
        mlp_dim: 1536,
        layers: 7,
        heads: 6,
        used_layers: 6,
        ..ClipVisionConfig::vit_h_14()
    };
    let mut group = c.benchmark_group("ort-cpu/image_encoder");
    group.sample_size(10);
    for label in ["i2v-tiny-224", "small-w384-224"] {
        let dir = tempfile::tempdir().unwrap();
        if label == "i2v-tiny-224" {
            compile_tiny(dir.path(), &profile);
        } else {
            compile_synthetic(dir.path(), &profile, &small);
        }
        let artifacts = Artifacts::open(dir.path()).unwrap();
        let mut net = artifacts
            .load(NetworkKind::ImageEncoder, Backend::OrtCpu)
            .unwrap();
        let x = pixels(224);
        // `run` returns host tensors: the CPU work is complete inside it.
        group.bench_function(label, |b| b.iter(|| net.run(&x).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, bench_image_encoder);
criterion_main!(benches);
