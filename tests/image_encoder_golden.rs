//! Numerics of the exported CLIP image encoder against the reference
//! implementation's tensors, on ONNX Runtime's CPU provider, plus the
//! refusals around it.
//!
//! Two golden inputs of `i2v-tiny` (a 3-block CLIP, width 32, 224/14):
//! `golden/image_encoder.safetensors` (`pixel_values` from diffusers'
//! `CLIPImageProcessor` → `hidden_states_penultimate`) and
//! `golden/pipeline.safetensors` (`image_pixel_values`, the official Wan2.1
//! squash preprocessing → `image_embeds`).
//!
//! Tolerance tiers (|a−b| ≤ atol + rtol·|b| for fp32; relative errors for the
//! half types, whose rounding is not elementwise-bounded):
//!
//! | precision | check | justification |
//! |---|---|---|
//! | fp32 | atol 1e-4, rtol 1e-3 | the bound; measured ≤ 2.7e-6 max abs |
//! | fp16 | ‖Δ‖/‖b‖ ≤ 2e-3, max|Δ| ≤ 5e-3·max|b| | measured 3.5e-4 / 5.8e-4; the official all-fp16 map gives 6.7e-4 / 1.1e-3 |
//! | bf16 | ‖Δ‖/‖b‖ ≤ 1.2e-2, max|Δ| ≤ 3e-2·max|b| | measured 3.5e-3 / 4.1e-3; the same map with a bf16 stream gives 5.4e-3 / 1.1e-2 |
//!
//! The reasoning is in `docs/PRECISION.md` (section "CLIP image encoder").

mod common;

use std::collections::BTreeMap;
use std::process::Command;

/// The tight fp32 tier (`common::assert_fp32`): measured max |Δ| 2.7e-6,
/// with ≤ 5× headroom.
const TIGHT: f32 = 1e-5;

use common::{Case, assert_close, assert_fp32, bin, rel_errors, run_bf16_emulated, run_cmd};
use wanrt::compiler::ErrorKind;
use wanrt::core::{BatchMode, NetworkKind, Precision};
use wanrt::runtime::{Artifacts, Backend, HostTensor, tensorfile};

const IE: NetworkKind = NetworkKind::ImageEncoder;

/// The two (input, expected output) pairs of i2v-tiny.
fn goldens(case: &Case) -> Vec<(&'static str, HostTensor, Vec<f32>)> {
    let ie = case.golden("image_encoder.safetensors");
    let pipe = case.golden("pipeline.safetensors");
    vec![
        (
            "image_encoder.safetensors",
            ie["pixel_values"].clone(),
            ie["hidden_states_penultimate"].to_f32().unwrap(),
        ),
        (
            "pipeline.safetensors",
            pipe["image_pixel_values"].clone(),
            pipe["image_embeds"].to_f32().unwrap(),
        ),
    ]
}

fn pixel_input(pixels: &HostTensor) -> BTreeMap<String, HostTensor> {
    BTreeMap::from([("pixel_values".to_string(), pixels.clone())])
}

/// Compiles i2v-tiny's image encoder from the diffusers layout.
fn compile(precision: Precision, batch: BatchMode) -> tempfile::TempDir {
    Case::new("i2v-tiny")
        .try_compile(false, precision, batch, &[IE])
        .unwrap_or_else(|e| panic!("compiling the image encoder at {precision}: {e}"))
}

/// Runs every golden input through an engine of `precision`; returns
/// (golden file, got, want).
fn run_all(precision: Precision) -> Vec<(&'static str, Vec<f32>, Vec<f32>)> {
    let case = Case::new("i2v-tiny");
    let out = compile(precision, BatchMode::Fixed(1));
    let mut results = Vec::new();
    for (file, pixels, want) in goldens(&case) {
        let inputs = pixel_input(&pixels);
        let got = if precision == Precision::Bf16 {
            run_bf16_emulated(out.path(), IE, &inputs)
        } else {
            let artifacts = Artifacts::open(out.path()).unwrap();
            artifacts
                .load(IE, Backend::OrtCpu)
                .unwrap()
                .run(&inputs)
                .unwrap()
        };
        let embeds = &got["image_embeds"];
        assert_eq!(embeds.shape, vec![1, 257, 32], "{file}");
        results.push((file, embeds.to_f32().unwrap(), want));
    }
    results
}

#[test]
fn fp32_matches_reference() {
    for (file, got, want) in run_all(Precision::Fp32) {
        assert_fp32(&format!("{file}/fp32 image_embeds"), &got, &want, TIGHT);
    }
}

#[test]
fn fp16_within_stated_tolerance() {
    for (file, got, want) in run_all(Precision::Fp16) {
        let (l2, max) = rel_errors(&got, &want);
        eprintln!("{file}/fp16: rel L2 {l2:.3e}, max {max:.3e}");
        assert!(
            l2 <= 2e-3 && max <= 5e-3,
            "{file}/fp16: rel L2 {l2:.3e}, max {max:.3e}"
        );
    }
}

#[test]
fn bf16_within_stated_tolerance() {
    for (file, got, want) in run_all(Precision::Bf16) {
        let (l2, max) = rel_errors(&got, &want);
        eprintln!("{file}/bf16 (emulated): rel L2 {l2:.3e}, max {max:.3e}");
        assert!(
            l2 <= 1.2e-2 && max <= 3e-2,
            "{file}/bf16: rel L2 {l2:.3e}, max {max:.3e}"
        );
    }
}

#[test]
fn dynamic_batch_equals_looped_fixed_batch() {
    let case = Case::new("i2v-tiny");
    let g = goldens(&case);
    let both = HostTensor::concat_batch(&[g[0].1.clone(), g[1].1.clone()]).unwrap();
    let want: Vec<f32> = g.iter().flat_map(|(_, _, w)| w.clone()).collect();
    let run = |batch| {
        let out = compile(Precision::Fp32, batch);
        let artifacts = Artifacts::open(out.path()).unwrap();
        let mut net = artifacts.load(IE, Backend::OrtCpu).unwrap();
        let got = net.run(&pixel_input(&both)).unwrap();
        assert_eq!(got["image_embeds"].shape, vec![2, 257, 32]);
        got["image_embeds"].to_f32().unwrap()
    };
    let looped = run(BatchMode::Fixed(1));
    let dynamic = run(BatchMode::Dynamic);
    assert_close("dynamic vs looped", &dynamic, &looped, 1e-5, 1e-5);
    assert_fp32("dynamic vs reference", &dynamic, &want, TIGHT);
}

#[test]
fn manifest_records_preprocessing_and_config() {
    let out = compile(Precision::Fp32, BatchMode::Fixed(1));
    let artifacts = Artifacts::open(out.path()).unwrap();
    let entry = artifacts.entry(IE).unwrap();
    let c = &entry.config;
    assert_eq!(c["width"], 32);
    assert_eq!(c["layers"], 3);
    assert_eq!(c["used_layers"], 2);
    let p = &c["preprocessing"];
    assert_eq!(p["image_size"], 224);
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    assert_eq!(floats(&p["mean"]), wanrt::graphs::clip::MEAN.to_vec());
    assert_eq!(floats(&p["std"]), wanrt::graphs::clip::STD.to_vec());
    assert!(
        p["source"]
            .as_str()
            .unwrap()
            .ends_with("preprocessor_config.json"),
        "{p}"
    );
    assert_eq!(entry.inputs[0].name, "pixel_values");
    assert_eq!(entry.outputs[0].name, "image_embeds");
}

#[test]
fn debug_outputs_expose_each_block() {
    let case = Case::new("i2v-tiny");
    let out = tempfile::tempdir().unwrap();
    wanrt::compiler::compile(
        &wanrt::compiler::CompileOptions::new(
            wanrt::compiler::ModelSource::Dir(case.model_dir(false)),
            out.path(),
            case.profile(BatchMode::Fixed(1)),
        )
        .with_precision(Precision::Fp32)
        .with_networks([IE])
        .with_debug_outputs(true)
        .with_overwrite(true),
    )
    .unwrap();
    let (_, pixels, _) = goldens(&case).remove(0);
    let artifacts = Artifacts::open(out.path()).unwrap();
    let got = artifacts
        .load(IE, Backend::OrtCpu)
        .unwrap()
        .run(&pixel_input(&pixels))
        .unwrap();
    for name in [
        "intermediate.embeddings",
        "intermediate.block_0_out",
        "intermediate.block_1_out",
    ] {
        assert_eq!(got[name].shape, vec![1, 257, 32], "{name}");
    }
    // The output is the last block run (the penultimate of the checkpoint).
    assert_eq!(
        got["intermediate.block_1_out"].to_f32(),
        got["image_embeds"].to_f32()
    );
    assert!(!got.contains_key("intermediate.block_2_out"));
}

#[test]
fn original_layout_enforces_the_vit_h_preset() {
    // model/original's .pth holds the tiny CLIP, but the original layout has
    // no config for it: it is ViT-H/14 by definition (docs/WAN.md §2.3, §8.1), so the first
    // `visual.` tensor must be refused by name.
    let case = Case::new("i2v-tiny");
    let e = case
        .try_compile(true, Precision::Fp32, BatchMode::Fixed(1), &[IE])
        .expect_err("a tiny CLIP is not ViT-H/14");
    let msg = e.to_string();
    assert_eq!(e.kind(), ErrorKind::ShapeMismatch, "{msg}");
    assert!(msg.contains("'visual."), "{msg}");
    assert!(
        msg.contains("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"),
        "{msg}"
    );
}

#[test]
fn t2v_model_has_no_image_encoder() {
    let case = Case::new("t2v-tiny");
    for original in [false, true] {
        let e = case
            .try_compile(original, Precision::Fp32, BatchMode::Fixed(1), &[IE])
            .expect_err("T2V has no image encoder");
        let msg = e.to_string();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{msg}");
        assert!(
            msg.contains("--networks") && msg.contains("image_encoder"),
            "{msg}"
        );
    }
}

#[test]
fn wan_compile_and_wan_run_component_image_encoder() {
    let case = Case::new("i2v-tiny");
    let tmp = tempfile::tempdir().unwrap();
    let engines = tmp.path().join("engines");
    let (ok, log) = run_cmd(
        Command::new(bin("wan-compile"))
            .arg("--model")
            .arg(case.model_dir(false))
            .arg("--out")
            .arg(&engines)
            .args(["--width", "32", "--height", "32", "--frames", "9"])
            .args(["--text-len", "512", "--precision", "fp32"])
            .args(["--networks", "image_encoder"]),
    );
    assert!(ok, "{log}");

    // The golden file as input: `pixel_values` is taken by name, the rest
    // (the uint8 image, the reference outputs) is ignored.
    let output = tmp.path().join("embeds.safetensors");
    let (ok, log) = run_cmd(
        Command::new(bin("wan-run"))
            .args(["component", "image-encoder", "--engines"])
            .arg(&engines)
            .arg("--input")
            .arg(case.dir.join("golden/image_encoder.safetensors"))
            .arg("--output")
            .arg(&output)
            .args(["--backend", "ort-cpu"]),
    );
    assert!(ok, "{log}");
    let got = tensorfile::read(&output).unwrap();
    let want = case.golden("image_encoder.safetensors");
    assert_fp32(
        "wan-run image_embeds",
        &got["image_embeds"].to_f32().unwrap(),
        &want["hidden_states_penultimate"].to_f32().unwrap(),
        TIGHT,
    );

    // The official preprocessing's pixels, compared by wan-run compare
    // against the pipeline's `image_embeds`.
    let pipe = case.golden("pipeline.safetensors");
    let input = tmp.path().join("pixels.safetensors");
    tensorfile::write(&input, &pixel_input(&pipe["image_pixel_values"]), false).unwrap();
    let output = tmp.path().join("pipeline_embeds.safetensors");
    let (ok, log) = run_cmd(
        Command::new(bin("wan-run"))
            .args(["component", "image_encoder", "--engines"])
            .arg(&engines)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&output),
    );
    assert!(ok, "{log}");
    let (ok, log) = run_cmd(
        Command::new(bin("wan-run"))
            .args(["compare", "--tensor", "image_embeds", "--input"])
            .arg(&output)
            .arg("--reference")
            .arg(case.dir.join("golden/pipeline.safetensors")),
    );
    assert!(ok && log.contains("ok"), "{log}");
}
