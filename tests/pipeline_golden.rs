//! Text-to-video and image-to-video end to end against the reference
//! pipeline runs (`fixtures/*/golden/pipeline.safetensors`): every network
//! compiled from the tiny models at fp32, run on ONNX Runtime's CPU provider,
//! with the reference's initial noise (`latents_init`), prompt, negative
//! prompt, steps, guidance and shift from each `case.json`.

mod common;

use common::{CASES, Case, assert_close, assert_fp32};
use wanrt::core::{BatchMode, Precision};
use wanrt::media::video::RgbFrames;
use wanrt::runtime::pipeline::Pipeline;
use wanrt::runtime::{Artifacts, Backend};

/// The tight fp32 tier of the final latents (`common::assert_fp32`), ≤ 5× the
/// measured max |Δ|: t2v-tiny 1.9e-6, i2v-tiny 8.6e-6 (its VAE-encoded
/// conditioning adds error).
fn tight(case: &str) -> f32 {
    if case == "i2v-tiny" { 3e-5 } else { 8e-6 }
}

fn compile_all(case: &Case, batch: BatchMode) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let opts = case.options(false, Precision::Fp32, batch, out.path());
    wanrt::compiler::compile(&opts).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    out
}

#[test]
fn t2v_and_i2v_reproduce_the_reference_runs() {
    for name in CASES {
        let case = Case::new(name);
        let out = compile_all(&case, BatchMode::Fixed(1));
        let golden = case.golden("pipeline.safetensors");
        let mut pipeline =
            Pipeline::load(Artifacts::open(out.path()).unwrap(), Backend::OrtCpu).unwrap();
        let opts = case.pipeline_options();
        let mut steps_seen = 0;
        let got = pipeline
            .generate(&opts, None, |i, n, _| {
                steps_seen = i;
                assert_eq!(n, 4);
            })
            .unwrap();
        assert_eq!(steps_seen, 4);

        // The schedule the pipeline used: timesteps exactly, sigmas within
        // 1e-6, the same count as the reference's.
        let want: Vec<f32> = golden["timesteps"]
            .to_i64()
            .unwrap()
            .iter()
            .map(|&t| t as f32)
            .collect();
        assert_eq!(got.settings.timesteps, want, "{name}: timesteps");
        let sig = golden["sigmas"].to_f32().unwrap();
        assert_eq!(got.settings.sigmas.len(), sig.len(), "{name}: sigma count");
        for (a, b) in got.settings.sigmas.iter().zip(&sig) {
            assert!((a - b).abs() <= 1e-6, "{name}: sigma {a} vs {b}");
        }

        // The final latents (what --save-latents writes).
        assert_eq!(got.latents.shape, golden["latents_out"].shape);
        assert_fp32(
            &format!("{name}/latents_out"),
            &got.latents.to_f32().unwrap(),
            &golden["latents_out"].to_f32().unwrap(),
            tight(name),
        );

        // The frames: 8-bit within one level of the reference's float frames · 255.
        let frames = RgbFrames::from_tensor(&got.video).unwrap();
        let want = golden["frames"].to_f32().unwrap(); // [1, F, H, W, 3] in [0, 1]
        assert_eq!(
            frames.as_bytes().len(),
            want.len(),
            "{name}: frame count or size"
        );
        let worst = frames
            .as_bytes()
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as f32 - b * 255.0).abs())
            .fold(0f32, f32::max);
        eprintln!("{name}: frames max |u8 - 255·ref| = {worst:.3}");
        assert!(worst <= 1.0, "{name}: a frame value is {worst} levels off");
    }
}

#[test]
fn batched_cfg_equals_two_calls() {
    // One batch-2 call per step (dynamic batch) and two batch-1 calls give
    // the same video.
    let case = Case::new("t2v-tiny");
    let run = |batch| {
        let out = compile_all(&case, batch);
        let mut p = Pipeline::load(Artifacts::open(out.path()).unwrap(), Backend::OrtCpu).unwrap();
        p.generate(&case.pipeline_options(), None, |_, _, _| {})
            .unwrap()
            .latents
            .to_f32()
            .unwrap()
    };
    let looped = run(BatchMode::Fixed(1));
    let batched = run(BatchMode::Fixed(2));
    assert_close("batch-2 vs looped", &batched, &looped, 1e-5, 1e-5);
}

#[test]
fn wrong_task_inputs_are_refused() {
    let case = Case::new("t2v-tiny");
    let out = compile_all(&case, BatchMode::Fixed(1));
    let mut p = Pipeline::load(Artifacts::open(out.path()).unwrap(), Backend::OrtCpu).unwrap();
    let mut opts = case.pipeline_options();
    opts.image = Some(common::golden_image(&case.dir.join("../i2v-tiny")));
    let e = p.generate(&opts, None, |_, _, _| {}).err().unwrap();
    assert!(e.to_string().contains("--image"), "{e}");
    let mut opts = case.pipeline_options();
    opts.latents = Some(wanrt::runtime::HostTensor::from_f32(
        vec![1, 16, 3, 8, 8],
        &[0.0; 16 * 3 * 64],
    ));
    let e = p.generate(&opts, None, |_, _, _| {}).err().unwrap();
    assert!(e.to_string().contains("--latents-in"), "{e}");
    // An interrupted run stops between steps.
    let flag = std::sync::atomic::AtomicBool::new(true);
    let e = p
        .generate(&case.pipeline_options(), Some(&flag), |_, _, _| {})
        .err()
        .unwrap();
    assert_eq!(e.kind(), wanrt::runtime::ErrorKind::Interrupted);
}

#[test]
fn i2v_engines_require_an_image() {
    let case = Case::new("i2v-tiny");
    let out = compile_all(&case, BatchMode::Fixed(1));
    let mut p = Pipeline::load(Artifacts::open(out.path()).unwrap(), Backend::OrtCpu).unwrap();
    let mut opts = case.pipeline_options();
    opts.image = None;
    let e = p.generate(&opts, None, |_, _, _| {}).err().unwrap();
    assert!(e.to_string().contains("--image"), "{e}");
    // An image that is not an image is a typed error naming the file (the
    // application layer decodes it before the pipeline sees pixels).
    let bad = out.path().join("not-an-image.png");
    std::fs::write(&bad, b"hello").unwrap();
    let e = wanrt::media::image::load_image(&bad).unwrap_err();
    assert_eq!(e.kind(), wanrt::runtime::ErrorKind::Image, "{e}");
    assert!(e.to_string().contains("not-an-image.png"), "{e}");
}
