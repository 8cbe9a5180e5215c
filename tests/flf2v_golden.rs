//! First-last-frame-to-video (`docs/WAN.md` §13) against the reference
//! tensors of `fixtures/flf2v-tiny` (checked there against the official
//! Wan2.1 code): the DiT from the diffusers, original and sharded original
//! layouts, the conditioning (CLIP input and tokens of both frames, the
//! condition `y`), and a whole `wan-run` with the case's inputs.
//!
//! Tolerances: the fp32 contract `|a−b| ≤ 1e-4 + 1e-3·|b|` and a tight tier
//! at the measured error (≤ 5× headroom, `common::assert_fp32`); frames
//! within one 8-bit level of the reference's float frames · 255.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Case, assert_fp32, bin, dit_inputs, run_cmd};
use wanrt::compiler::{CompileOptions, ModelSource, compile};
use wanrt::core::{BatchMode, NetworkKind, Precision};
use wanrt::runtime::pipeline::{GenerateOptions, InputImage, Pipeline, Timings};
use wanrt::runtime::{Artifacts, Backend, ErrorKind, HostTensor, tensorfile};

const CASE: &str = "flf2v-tiny";

/// Tight tiers (`common::assert_fp32`), each the max |Δ| measured on this
/// case (2-core CPU, ONNX Runtime 1.31.1) with ≤ 5× headroom:
/// DiT noise_pred 1.07e-6 (every layout, stage graphs and whole graph).
const TIGHT_DIT: f32 = 5e-6;
/// CLIP input: the bicubic squash is torch's kernel bit for bit (0 measured).
const TIGHT_PIXELS: f32 = 1e-6;
/// CLIP tokens of both frames 2.6e-6; the condition y 4.0e-7; the prompt
/// embedding 1.4e-6.
const TIGHT_EMBEDS: f32 = 1e-5;
const TIGHT_Y: f32 = 2e-6;
const TIGHT_PROMPT: f32 = 5e-6;
/// The 4-step run's final latents: 9.1e-6.
const TIGHT_LATENTS: f32 = 4e-5;
/// LoRA merged by the compiler vs by hand: 0 measured (the same f32
/// operations).
const TIGHT_LORA: f32 = 1e-6;

fn case() -> Case {
    Case::new(CASE)
}

/// The sharded original-layout DiT (two shards and an index, as the real
/// FLF2V-14B release is stored).
fn sharded_dir(case: &Case) -> PathBuf {
    case.dir.join("extra/original_sharded")
}

fn compile_dit_from(
    model: &Path,
    batch: BatchMode,
    debug: bool,
) -> (tempfile::TempDir, BTreeMap<String, HostTensor>) {
    let case = case();
    let out = tempfile::tempdir().unwrap();
    let opts = CompileOptions::new(
        ModelSource::Dir(model.to_path_buf()),
        out.path(),
        case.profile(batch),
    )
    .with_precision(Precision::Fp32)
    .with_networks([NetworkKind::Dit])
    .with_debug_outputs(debug)
    .with_overwrite(true);
    let (manifest, _) =
        compile(&opts).unwrap_or_else(|e| panic!("compiling {}: {e}", model.display()));
    assert_eq!(manifest.model.task, wanrt::core::Task::Flf2v);
    (out, case.golden("dit.safetensors"))
}

#[test]
fn dit_matches_reference_from_every_layout() {
    let case = case();
    let want = case.golden("dit.safetensors")["noise_pred"]
        .to_f32()
        .unwrap();
    for (layout, dir) in [
        ("diffusers", case.model_dir(false)),
        ("original", case.model_dir(true)),
        ("original-sharded", sharded_dir(&case)),
    ] {
        let (out, golden) = compile_dit_from(&dir, BatchMode::Fixed(1), false);
        let artifacts = Artifacts::open(out.path()).unwrap();
        // The reference's [2B, 257, W] image tokens, as wan-run component
        // dit gets them from the golden file.
        let inputs = dit_inputs(&golden);
        assert_eq!(inputs["encoder_hidden_states_image"].shape, [4, 257, 32]);
        let entry = artifacts.entry(NetworkKind::Dit).unwrap();
        assert_eq!(
            entry.inputs[3].shape_string(),
            "[1, 514, 32]",
            "{layout}: the engine's image input"
        );
        assert!(!entry.stages.is_empty(), "{layout}: no stage graphs");
        // Stage graphs (the default), then the whole graph.
        let mut staged = artifacts.load(NetworkKind::Dit, Backend::OrtCpu).unwrap();
        let got = staged.run(&inputs).unwrap()["noise_pred"].to_f32().unwrap();
        assert_fp32(
            &format!("{layout}/stages noise_pred"),
            &got,
            &want,
            TIGHT_DIT,
        );
        let mut whole = artifacts
            .load_whole(NetworkKind::Dit, Backend::OrtCpu)
            .unwrap();
        let got = whole.run(&inputs).unwrap()["noise_pred"].to_f32().unwrap();
        assert_fp32(
            &format!("{layout}/whole noise_pred"),
            &got,
            &want,
            TIGHT_DIT,
        );
    }
}

#[test]
fn dit_image_tokens_carry_the_position_embedding() {
    // The intermediates of the whole graph (debug outputs), one batch-2
    // call: the image tokens after `emb_pos`, and the image context.
    let case = case();
    let (out, golden) = compile_dit_from(&case.model_dir(false), BatchMode::Dynamic, true);
    let artifacts = Artifacts::open(out.path()).unwrap();
    let mut dit = artifacts
        .load_whole(NetworkKind::Dit, Backend::OrtCpu)
        .unwrap();
    let got = dit.run(&dit_inputs(&golden)).unwrap();
    for name in [
        "intermediate.image_tokens_with_pos",
        "intermediate.image_context",
        "noise_pred",
    ] {
        assert_eq!(got[name].shape, golden[name].shape, "{name}");
        assert_fp32(
            name,
            &got[name].to_f32().unwrap(),
            &golden[name].to_f32().unwrap(),
            TIGHT_DIT,
        );
    }
    // The engine's own layout, one row per sample, is taken as it is.
    let mut inputs = dit_inputs(&golden);
    let t = inputs.get_mut("encoder_hidden_states_image").unwrap();
    t.shape = vec![2, 514, 32];
    let again = dit.run(&inputs).unwrap()["noise_pred"].to_f32().unwrap();
    assert_eq!(again, got["noise_pred"].to_f32().unwrap());
    // An image input of neither layout is a contract error naming it.
    let mut inputs = dit_inputs(&golden);
    let t = inputs.get_mut("encoder_hidden_states_image").unwrap();
    *t = t.slice_batch(0, 3);
    let e = dit.run(&inputs).err().unwrap();
    assert!(e.to_string().contains("encoder_hidden_states_image"), "{e}");
}

fn compile_all(case: &Case) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let opts = case.options(false, Precision::Fp32, BatchMode::Fixed(1), out.path());
    compile(&opts).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    out
}

/// An image file decoded as `--image` / `--last-image` decode it.
fn input_image(path: &Path) -> InputImage {
    let pixels = wanrt::media::image::load_image(path).expect("the golden frame decodes");
    InputImage::new(pixels, path.display().to_string())
}

fn case_options(case: &Case) -> GenerateOptions {
    let json = case.case_json();
    let p = &json["pipeline"];
    GenerateOptions {
        image: Some(input_image(&case.dir.join(p["image"].as_str().unwrap()))),
        last_image: Some(input_image(
            &case.dir.join(p["last_image"].as_str().unwrap()),
        )),
        ..case.pipeline_options()
    }
}

#[test]
fn conditioning_matches_reference() {
    let case = case();
    let golden = case.golden("pipeline.safetensors");
    // The official CLIP input of both frames: each whole frame squashed.
    use wanrt::media::image::load_image;
    use wanrt::runtime::image::{clip_preprocess, to_tensor_pm1};
    let want = golden["image_pixel_values"].to_f32().unwrap();
    let half = want.len() / 2;
    for (i, file) in ["first_frame.png", "last_frame.png"].iter().enumerate() {
        let img = load_image(&case.dir.join("golden").join(file)).unwrap();
        let px = clip_preprocess(&to_tensor_pm1(&img), 112).unwrap();
        assert_fp32(
            &format!("{file} CLIP pixels"),
            &px.to_f32().unwrap(),
            &want[i * half..(i + 1) * half],
            TIGHT_PIXELS,
        );
    }

    let out = compile_all(&case);
    let mut p = Pipeline::load(Artifacts::open(out.path()).unwrap(), Backend::OrtCpu).unwrap();
    let inputs = p
        .prepare(&case_options(&case), &mut Timings::default())
        .unwrap();
    let (tokens, y) = inputs.image.expect("FLF2V conditioning");
    // Both frames' tokens in one row: the reference's [2, 257, W].
    assert_eq!(tokens.shape, [1, 514, 32]);
    assert_eq!(golden["image_embeds"].shape, [2, 257, 32]);
    assert_fp32(
        "image_embeds",
        &tokens.to_f32().unwrap(),
        &golden["image_embeds"].to_f32().unwrap(),
        TIGHT_EMBEDS,
    );
    assert_eq!(y.shape, golden["condition"].shape);
    let y = y.to_f32().unwrap();
    let want = golden["condition"].to_f32().unwrap();
    // The mask channels exactly (first latent frame known, the last one's
    // fourth channel), then the latent.
    let mask_len = golden["condition_mask"].to_f32().unwrap().len();
    assert_eq!(
        y[..mask_len],
        golden["condition_mask"].to_f32().unwrap()[..]
    );
    assert_fp32("condition", &y, &want, TIGHT_Y);
    let prompt = golden["prompt_embeds"].to_f32().unwrap();
    assert_fp32(
        "prompt_embeds",
        &inputs.cond.to_f32().unwrap(),
        &prompt,
        TIGHT_PROMPT,
    );
}

fn write_latents(path: &Path, t: &HostTensor) {
    tensorfile::write(path, &[("latents".to_string(), t.clone())].into(), false).unwrap();
}

/// `wan-run --image FIRST --last-image LAST` with the case's settings and
/// noise: the saved latents and the PNG frames are the reference's.
#[test]
fn wan_run_reproduces_the_reference_run() {
    let case = case();
    let golden = case.golden("pipeline.safetensors");
    let json = case.case_json();
    let p = &json["pipeline"];
    let engines = compile_all(&case);
    let tmp = tempfile::tempdir().unwrap();
    let latents_in = tmp.path().join("latents_init.safetensors");
    write_latents(&latents_in, &golden["latents_init"]);
    let (frames_dir, saved) = (tmp.path().join("v/"), tmp.path().join("out.safetensors"));
    let run = |extra: &[&str], last: Option<&Path>| {
        let mut cmd = Command::new(bin("wan-run"));
        cmd.arg("--engines")
            .arg(engines.path())
            .args(["--prompt", p["prompt"].as_str().unwrap()])
            .args(["--negative-prompt", p["negative_prompt"].as_str().unwrap()])
            .arg("--image")
            .arg(case.dir.join("golden/first_frame.png"));
        if let Some(last) = last {
            cmd.arg("--last-image").arg(last);
        }
        cmd.args(["--steps", "4", "--guidance-scale", "5", "--shift", "16"])
            .arg("--latents-in")
            .arg(&latents_in)
            .arg("--save-latents")
            .arg(&saved)
            .arg("--output")
            .arg(&frames_dir)
            .args(["--backend", "ort-cpu", "--overwrite"])
            .args(extra);
        run_cmd(&mut cmd)
    };
    let last = case.dir.join("golden/last_frame.png");
    let (ok, log) = run(&[], Some(&last));
    assert!(ok, "{log}");

    let got = tensorfile::read(&saved).unwrap()["latents"].clone();
    assert_eq!(got.shape, golden["latents_out"].shape);
    assert_fp32(
        "wan-run latents_out",
        &got.to_f32().unwrap(),
        &golden["latents_out"].to_f32().unwrap(),
        TIGHT_LATENTS,
    );
    // Frames: [1, F, H, W, 3] in [0, 1] against the PNGs.
    let want = golden["frames"].to_f32().unwrap();
    let frame_len = 32 * 32 * 3;
    let mut worst = 0f32;
    for f in 0..9 {
        let png = frames_dir.join(format!("frame_{f:05}.png"));
        let img = wanrt::media::image::load_image(&png).unwrap();
        assert_eq!((img.width(), img.height()), (32, 32));
        for (a, b) in img
            .pixels()
            .iter()
            .zip(&want[f * frame_len..(f + 1) * frame_len])
        {
            worst = worst.max((*a as f32 - b * 255.0).abs());
        }
    }
    assert!(
        !frames_dir.join("frame_00009.png").exists(),
        "more than 9 frames"
    );
    eprintln!("frames max |u8 - 255·ref| = {worst:.3}");
    assert!(worst <= 1.0, "a frame value is {worst} levels off");
    // The sidecar records both frames and the task.
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("v.json")).unwrap()).unwrap();
    let s = &sidecar["settings"];
    assert_eq!(s["task"], "flf2v");
    assert!(
        s["last_image"]
            .as_str()
            .unwrap()
            .ends_with("last_frame.png"),
        "{s}"
    );

    // Without --last-image: a typed error naming the flag; nothing written.
    std::fs::remove_dir_all(&frames_dir).unwrap();
    let (ok, log) = run(&[], None);
    assert!(!ok && log.contains("--last-image"), "{log}");
    assert!(!frames_dir.exists());
    // A last frame that is not an image: the typed image error naming it.
    let bad = tmp.path().join("not-an-image.png");
    std::fs::write(&bad, b"hello").unwrap();
    let (ok, log) = run(&[], Some(&bad));
    assert!(!ok && log.contains("not-an-image.png"), "{log}");
    assert!(!frames_dir.exists());
}

#[test]
fn flf2v_inputs_are_checked() {
    let case = case();
    let out = compile_all(&case);
    let mut p = Pipeline::load(Artifacts::open(out.path()).unwrap(), Backend::OrtCpu).unwrap();
    let refused = |p: &mut Pipeline, opts: GenerateOptions, flag: &str| {
        let e = p.generate(&opts, None, |_, _, _| {}).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains(flag), "{e}");
    };
    let mut opts = case_options(&case);
    opts.last_image = None;
    refused(&mut p, opts, "--last-image");
    let mut opts = case_options(&case);
    opts.image = None;
    refused(&mut p, opts, "--image");
    // A last frame of another size than the first.
    let small = wanrt::runtime::image::RgbImage::new(16, 16, vec![128; 16 * 16 * 3]).unwrap();
    let mut opts = case_options(&case);
    opts.last_image = Some(InputImage::new(small, "small.png"));
    refused(&mut p, opts, "--last-image");
}

#[test]
fn other_tasks_refuse_a_last_frame() {
    let case = Case::new("t2v-tiny");
    let out = tempfile::tempdir().unwrap();
    let opts = case.options(false, Precision::Fp32, BatchMode::Fixed(1), out.path());
    compile(&opts).unwrap();
    let mut p = Pipeline::load(Artifacts::open(out.path()).unwrap(), Backend::OrtCpu).unwrap();
    let json = case.case_json();
    let opts = GenerateOptions {
        prompt: json["pipeline"]["prompt"].as_str().unwrap().into(),
        last_image: Some(input_image(
            &Case::new(CASE).dir.join("golden/last_frame.png"),
        )),
        steps: Some(1),
        ..Default::default()
    };
    let e = p.generate(&opts, None, |_, _, _| {}).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("--last-image"), "{e}");
}

fn bf16_or_f32(t: &HostTensor) -> Vec<f32> {
    match t.dtype {
        wanrt::core::DType::Bfloat16 => t
            .data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => t.to_f32().unwrap(),
    }
}

/// A LoRA merged at compile time into the FLF2V DiT equals the FLF2V DiT
/// whose weights were merged here by the documented rule (`docs/WAN.md`
/// §12.1, W′ = W + s·(α/r)·(up·down)), from both checkpoint layouts. The
/// LoRA is i2v-tiny's PEFT file: the tiny I2V and FLF2V DiTs have the same
/// sizes, and it targets every block linear including `k_img`/`v_img`.
#[test]
fn lora_merges_into_the_flf2v_dit() {
    let case = case();
    let i2v = Case::new("i2v-tiny");
    let lora_file = i2v.dir.join("lora/peft.safetensors");
    let lora_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(i2v.dir.join("lora/lora.json")).unwrap())
            .unwrap();
    let factor = lora_json["variants"]["peft"]["alpha_over_rank"]
        .as_f64()
        .unwrap() as f32;
    let lora = tensorfile::read(&lora_file).unwrap();
    let transformer = case.dir.join("model/transformer");
    let mut weights =
        tensorfile::read(&transformer.join("diffusion_pytorch_model.safetensors")).unwrap();
    let mut merged = 0;
    for (key, a) in &lora {
        let Some(module) = key
            .strip_prefix("transformer.")
            .and_then(|k| k.strip_suffix(".lora_A.weight"))
        else {
            continue;
        };
        let b = &lora[&format!("transformer.{module}.lora_B.weight")];
        let (down, up) = (bf16_or_f32(a), bf16_or_f32(b));
        let (rank, inf, outf) = (
            a.shape[0] as usize,
            a.shape[1] as usize,
            b.shape[0] as usize,
        );
        let w = weights.get_mut(&format!("{module}.weight")).unwrap();
        assert_eq!(w.shape, [outf as u64, inf as u64], "{module}");
        let mut v = w.to_f32().unwrap();
        for o in 0..outf {
            for i in 0..inf {
                let d: f32 = (0..rank)
                    .map(|r| up[o * rank + r] * down[r * inf + i])
                    .sum();
                v[o * inf + i] += factor * d;
            }
        }
        *w = HostTensor::from_f32(w.shape.clone(), &v);
        merged += 1;
    }
    assert_eq!(merged, 24, "LoRA modules");
    let by_hand = tempfile::tempdir().unwrap();
    std::fs::copy(
        transformer.join("config.json"),
        by_hand.path().join("config.json"),
    )
    .unwrap();
    tensorfile::write(
        &by_hand.path().join("diffusion_pytorch_model.safetensors"),
        &weights,
        false,
    )
    .unwrap();

    let golden = case.golden("dit.safetensors");
    let run = |model: &Path, with_lora: bool| {
        let out = tempfile::tempdir().unwrap();
        let mut opts = CompileOptions::new(
            ModelSource::Dir(model.to_path_buf()),
            out.path(),
            case.profile(BatchMode::Fixed(1)),
        )
        .with_precision(Precision::Fp32)
        .with_networks([NetworkKind::Dit]);
        if with_lora {
            opts = opts.with_lora(wanrt::compiler::lora::LoraSpec::new(&lora_file, 1.0));
        }
        compile(&opts).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
        let artifacts = Artifacts::open(out.path()).unwrap();
        let mut dit = artifacts.load(NetworkKind::Dit, Backend::OrtCpu).unwrap();
        dit.run(&dit_inputs(&golden)).unwrap()["noise_pred"]
            .to_f32()
            .unwrap()
    };
    let want = run(by_hand.path(), false);
    let base = golden["noise_pred"].to_f32().unwrap();
    let (effect, _) = common::rel_errors(&want, &base);
    assert!(
        effect > 1e-2,
        "the LoRA changes noise_pred by {effect:.2e} only"
    );
    for (layout, original) in [("diffusers", false), ("original", true)] {
        let got = run(&case.model_dir(original), true);
        assert_fp32(
            &format!("{layout} + LoRA vs merged by hand"),
            &got,
            &want,
            TIGHT_LORA,
        );
    }
}

/// `wan-compile` on the sharded original layout, then `wan-run component
/// dit` on the golden file as it is (image tokens `[2B, 257, W]`) and
/// `wan-run compare` against the reference noise_pred.
#[test]
fn cli_component_dit_takes_the_reference_layout() {
    let case = case();
    let tmp = tempfile::tempdir().unwrap();
    let engines = tmp.path().join("engines");
    let (ok, log) = run_cmd(
        Command::new(bin("wan-compile"))
            .arg("--model")
            .arg(sharded_dir(&case))
            .arg("--out")
            .arg(&engines)
            .args(["--width", "32", "--height", "32", "--frames", "9"])
            .args([
                "--text-len",
                "512",
                "--precision",
                "fp32",
                "--networks",
                "dit",
            ]),
    );
    assert!(ok, "{log}");
    let golden = case.dir.join("golden/dit.safetensors");
    let output = tmp.path().join("noise_pred.safetensors");
    common::cli_dit_matches_golden(&engines, &golden, &output);
}

/// CFG as one batch-2 call (engines compiled with `--batch 2`): the bound
/// stage graphs carry both frames' 514 tokens per row; the final latents
/// are the reference's.
#[test]
fn batch_two_cfg_matches_reference() {
    let case = case();
    let out = tempfile::tempdir().unwrap();
    let opts = case.options(false, Precision::Fp32, BatchMode::Fixed(2), out.path());
    compile(&opts).unwrap();
    let mut p = Pipeline::load(Artifacts::open(out.path()).unwrap(), Backend::OrtCpu).unwrap();
    let got = p
        .generate(&case_options(&case), None, |_, _, _| {})
        .unwrap();
    assert_eq!(
        got.settings
            .last_image
            .as_deref()
            .map(|s| s.ends_with("last_frame.png")),
        Some(true)
    );
    assert_fp32(
        "batch-2 latents_out",
        &got.latents.to_f32().unwrap(),
        &case.golden("pipeline.safetensors")["latents_out"]
            .to_f32()
            .unwrap(),
        TIGHT_LATENTS,
    );
}

#[test]
fn step_caching_runs_on_flf2v_engines() {
    use wanrt::runtime::cache::{CacheOptions, CachePolicy};
    let case = case();
    let out = compile_all(&case);
    let mut p = Pipeline::load(Artifacts::open(out.path()).unwrap(), Backend::OrtCpu).unwrap();
    let mut opts = case_options(&case);
    opts.steps = Some(6);
    let none = p.generate(&opts, None, |_, _, _| {}).unwrap();
    // A first-block cache that computes every step runs the same graphs on
    // the same buffers: the same bits as no cache.
    opts.cache = CacheOptions {
        policy: CachePolicy::FbCache,
        threshold: Some(1e-30),
        ..Default::default()
    };
    let always = p.generate(&opts, None, |_, _, _| {}).unwrap();
    let branches = &always.settings.cache.branches;
    assert_eq!(branches.len(), 2, "cond and uncond recorded");
    assert!(branches.iter().all(|b| b.computed == [true; 6]));
    let (a, b) = (
        none.latents.to_f32().unwrap(),
        always.latents.to_f32().unwrap(),
    );
    assert_eq!(a.len(), b.len());
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "an all-compute cache changed the FLF2V latents"
    );
    // A loose threshold skips block stacks, reuses the residuals (the
    // image conditioning rides in the bound constants) and stays finite.
    opts.cache.threshold = Some(10.0);
    let skipping = p.generate(&opts, None, |_, _, _| {}).unwrap();
    let computed: Vec<&Vec<bool>> = skipping
        .settings
        .cache
        .branches
        .iter()
        .map(|b| &b.computed)
        .collect();
    assert!(
        computed.iter().any(|c| c.contains(&false)),
        "nothing skipped: {computed:?}"
    );
    let s = skipping.latents.to_f32().unwrap();
    assert!(s.iter().all(|v| v.is_finite()));
    assert!(
        s.iter().zip(&a).any(|(x, y)| x != y),
        "skipping changed nothing"
    );
}
