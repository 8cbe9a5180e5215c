//! VACE (video creation and editing) against the reference tensors of
//! `fixtures/vace-tiny` (`docs/WAN.md` §14), on ONNX Runtime's CPU
//! provider, fp32:
//!
//! * the VACE DiT from both checkpoint layouts, whole graph and stage
//!   graphs, equals `dit.safetensors:noise_pred` (and, compiled with
//!   `--debug-outputs`, every hint and block output);
//! * the context built from the control video, mask and two reference
//!   images equals `vace_context.safetensors` stage by stage;
//! * `wan-run` with the case's inputs (PNG frame directories, a grayscale
//!   mask, reference images), `--latents-in` and its settings writes
//!   `--save-latents` equal to `latents_out` (reference frames included)
//!   and PNG frames within one level of `frames`·255;
//! * the fp16 DiT stays in the fp16 tier, and LoRAs merge into the VACE
//!   blocks;
//! * wrong frame counts and sizes, references the engines were not
//!   compiled for and VACE inputs on other engines are typed errors.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{Case, assert_fp32, bin, run_cmd};
use wanrt::core::{BatchMode, NetworkKind, Precision, Profile};
use wanrt::media::image::load_image;
use wanrt::runtime::image::RgbImage;
use wanrt::runtime::pipeline::{GenerateOptions, Pipeline};
use wanrt::runtime::vace::VaceInputs;
use wanrt::runtime::{Artifacts, Backend, ErrorKind, HostTensor};

/// Tight fp32 tiers (`common::assert_fp32`): ≤ 5× the max |Δ| measured on
/// this case (2-core CPU, ONNX Runtime 1.31.1): noise_pred 1.2e-6 from
/// both layouts, whole and staged (intermediates ≤ 1.4e-6); the context
/// 6.0e-7 (its VAE latents; the preprocessing and the 64 mask channels are
/// exact); the final latents 2.7e-6.
const TIGHT_DIT: f32 = 5e-6;
const TIGHT_CONTEXT: f32 = 3e-6;
const TIGHT_LATENTS: f32 = 1.3e-5;

const REFS: u32 = 2;

fn case() -> Case {
    Case::new("vace-tiny")
}

fn profile(case: &Case, batch: BatchMode) -> Profile {
    case.profile(batch).with_reference_images(REFS).unwrap()
}

fn compile(
    case: &Case,
    original: bool,
    batch: BatchMode,
    networks: &[NetworkKind],
    debug: bool,
) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let mut opts = case.options(original, Precision::Fp32, batch, out.path());
    opts.profile = profile(case, batch);
    opts.networks = networks.to_vec();
    opts.debug_outputs = debug;
    wanrt::compiler::compile(&opts).unwrap_or_else(|e| panic!("compiling vace-tiny: {e}"));
    out
}

fn dit_inputs(golden: &BTreeMap<String, HostTensor>) -> BTreeMap<String, HostTensor> {
    [
        "hidden_states",
        "timestep",
        "encoder_hidden_states",
        "control_hidden_states",
        "control_hidden_states_scale",
    ]
    .iter()
    .map(|k| (k.to_string(), golden[*k].clone()))
    .collect()
}

fn f32s(t: &HostTensor) -> Vec<f32> {
    t.to_f32().unwrap()
}

/// Bitwise equal; otherwise reports how many elements differ and the worst.
fn assert_exact(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits() && got[i] != want[i])
        .collect();
    if let Some(&worst) = bad.iter().max_by(|&&a, &&b| {
        (got[a] - want[a])
            .abs()
            .total_cmp(&(got[b] - want[b]).abs())
    }) {
        panic!(
            "{what}: {} of {} elements differ; worst at {worst}: {} vs {}",
            bad.len(),
            got.len(),
            got[worst],
            want[worst]
        );
    }
}

#[test]
fn dit_matches_reference_from_both_layouts_whole_and_staged() {
    let case = case();
    let golden = case.golden("dit.safetensors");
    let inputs = dit_inputs(&golden);
    let want = f32s(&golden["noise_pred"]);
    for original in [false, true] {
        let layout = if original { "original" } else { "diffusers" };
        let out = compile(
            &case,
            original,
            BatchMode::Fixed(1),
            &[NetworkKind::Dit],
            false,
        );
        let artifacts = Artifacts::open(out.path()).unwrap();
        let entry = artifacts.entry(NetworkKind::Dit).unwrap();
        assert!(entry.stages.iter().any(|s| s.role == "vace"), "{layout}");
        assert_eq!(entry.profile.reference_images, REFS);
        // The stage graphs (what a generation runs), composed.
        let mut staged = artifacts.load(NetworkKind::Dit, Backend::OrtCpu).unwrap();
        let got = staged.run(&inputs).unwrap();
        assert_eq!(got["noise_pred"].shape, golden["noise_pred"].shape);
        assert_fp32(
            &format!("vace/{layout}/stages noise_pred"),
            &f32s(&got["noise_pred"]),
            &want,
            TIGHT_DIT,
        );
        // The whole graph.
        let mut whole = artifacts
            .load_whole(NetworkKind::Dit, Backend::OrtCpu)
            .unwrap();
        let got = whole.run(&inputs).unwrap();
        assert_fp32(
            &format!("vace/{layout}/whole noise_pred"),
            &f32s(&got["noise_pred"]),
            &want,
            TIGHT_DIT,
        );
    }
}

#[test]
fn dit_fp16_within_the_fp16_tier() {
    // The fp16 tier of tests/dit_golden.rs (docs/PRECISION.md): rel L2 ≤
    // 2e-3, max ≤ 5e-3 of max |b|; the VACE stream and the hints keep the
    // T2V precision map.
    let case = case();
    let golden = case.golden("dit.safetensors");
    let out = tempfile::tempdir().unwrap();
    let mut opts = case.options(false, Precision::Fp16, BatchMode::Fixed(1), out.path());
    opts.profile = profile(&case, BatchMode::Fixed(1));
    opts.networks = vec![NetworkKind::Dit];
    wanrt::compiler::compile(&opts).unwrap();
    let mut dit = Artifacts::open(out.path())
        .unwrap()
        .load(NetworkKind::Dit, Backend::OrtCpu)
        .unwrap();
    let got = dit.run(&dit_inputs(&golden)).unwrap();
    let (l2, max) = common::rel_errors(&f32s(&got["noise_pred"]), &f32s(&golden["noise_pred"]));
    eprintln!("vace/fp16: rel L2 {l2:.3e}, max {max:.3e}");
    assert!(
        l2 <= 2e-3 && max <= 5e-3,
        "vace/fp16: rel L2 {l2:.3e}, max {max:.3e}"
    );
}

#[test]
fn dit_intermediates_match_reference() {
    // --debug-outputs: the hints, the blocks before and after their hint.
    let case = case();
    let golden = case.golden("dit.safetensors");
    let out = compile(&case, false, BatchMode::Dynamic, &[NetworkKind::Dit], true);
    let artifacts = Artifacts::open(out.path()).unwrap();
    let mut dit = artifacts.load(NetworkKind::Dit, Backend::OrtCpu).unwrap();
    let got = dit.run(&dit_inputs(&golden)).unwrap();
    let mut checked = 0;
    for (name, want) in &golden {
        let Some(name) = name.strip_prefix("intermediate.") else {
            continue;
        };
        if name.starts_with("rope_") {
            continue; // the tables are constants of the graph
        }
        let key = format!("intermediate.{name}");
        let t = got
            .get(&key)
            .unwrap_or_else(|| panic!("the debug graph has no {key}"));
        assert_fp32(&key, &f32s(t), &f32s(want), TIGHT_DIT);
        checked += 1;
    }
    // patch_embedding, temb, timestep_proj, text_context, 4 blocks, 2
    // pre-hint, vace patch embedding, proj_in, 2 vace blocks, 2 hints,
    // proj_out.
    assert!(checked >= 17, "only {checked} intermediates compared");
}

/// The case's control video and mask frames and reference images.
fn case_inputs(case: &Case) -> (Vec<RgbImage>, Vec<RgbImage>, Vec<RgbImage>, f32) {
    let ctx = case.golden("vace_context.safetensors");
    let video = &ctx["src_video_uint8"]; // [F, H, W, 3]
    let mask = &ctx["src_mask_uint8"]; // [F, H, W]
    let (f, h, w) = (
        video.shape[0] as usize,
        video.shape[1] as u32,
        video.shape[2] as u32,
    );
    let n = (h * w) as usize;
    let frames: Vec<RgbImage> = (0..f)
        .map(|t| RgbImage::new(w, h, video.data[t * n * 3..(t + 1) * n * 3].to_vec()).unwrap())
        .collect();
    let masks: Vec<RgbImage> = (0..f)
        .map(|t| {
            let g = &mask.data[t * n..(t + 1) * n];
            RgbImage::new(w, h, g.iter().flat_map(|&v| [v, v, v]).collect()).unwrap()
        })
        .collect();
    let refs = (0..REFS)
        .map(|j| load_image(&case.dir.join(format!("golden/ref_image_{j}.png"))).unwrap())
        .collect();
    let scale = ctx["context_scale"].to_f32().unwrap()[0];
    (frames, masks, refs, scale)
}

fn compile_all(case: &Case) -> tempfile::TempDir {
    compile(case, false, BatchMode::Fixed(1), &[], false)
}

#[test]
fn context_matches_reference_stage_by_stage() {
    let case = case();
    let want = case.golden("vace_context.safetensors");
    let out = compile(
        &case,
        false,
        BatchMode::Fixed(1),
        &[NetworkKind::VaeEncoder, NetworkKind::VaeDecoder],
        false,
    );
    let artifacts = Artifacts::open(out.path()).unwrap();
    let mut vae = artifacts
        .load(NetworkKind::VaeEncoder, Backend::OrtCpu)
        .unwrap();
    let cfg: wanrt::core::VaeConfig = serde_json::from_value(
        artifacts
            .entry(NetworkKind::VaeEncoder)
            .unwrap()
            .config
            .clone(),
    )
    .unwrap();
    let (video, mask, refs, scale) = case_inputs(&case);
    let inputs = VaceInputs {
        video: Some(video),
        mask: Some(mask),
        reference_images: refs,
        context_scale: Some(scale),
    };
    let p = profile(&case, BatchMode::Fixed(1));
    let got = wanrt::runtime::vace::build_context(&inputs, &p, &mut vae, &cfg).unwrap();
    // The preprocessing is the same float32 arithmetic: exact.
    for (name, t) in [
        ("video", &got.video),
        ("mask", &got.mask),
        ("reference_images", &got.reference_images),
    ] {
        assert_eq!(t.shape, want[name].shape, "{name}");
        assert_exact(name, &f32s(t), &f32s(&want[name]));
    }
    for (name, t) in [
        ("vace_latents", &got.latents),
        ("vace_mask", &got.mask_channels),
        ("vace_context", &got.context),
    ] {
        assert_eq!(t.shape, want[name].shape, "{name}");
        assert_fp32(name, &f32s(t), &f32s(&want[name]), TIGHT_CONTEXT);
    }
    // The 64 mask channels are exact too (no VAE involved).
    assert_exact(
        "vace_mask",
        &f32s(&got.mask_channels),
        &f32s(&want["vace_mask"]),
    );
}

/// A grayscale 8-bit PNG (colour type 0), zlib with stored blocks.
fn gray_png(w: u32, h: u32, pixels: &[u8]) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut raw = Vec::new();
    for row in pixels.chunks_exact(w as usize) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, b) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        z.extend_from_slice(&(b.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(b.len() as u16)).to_le_bytes());
        z.extend_from_slice(b);
    }
    let (mut a, mut s) = (1u32, 0u32);
    for &b in &raw {
        a = (a + b as u32) % 65_521;
        s = (s + a) % 65_521;
    }
    z.extend_from_slice(&((s << 16) | a).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Writes the case's control video (RGB) and mask (grayscale) as numbered
/// PNG directories under `dir`.
fn write_frame_dirs(
    case: &Case,
    dir: &Path,
    frames: usize,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let ctx = case.golden("vace_context.safetensors");
    let (video, mask) = (&ctx["src_video_uint8"], &ctx["src_mask_uint8"]);
    let (h, w) = (video.shape[1] as usize, video.shape[2] as usize);
    let (vdir, mdir) = (dir.join("control"), dir.join("mask"));
    let rgb = wanrt::media::video::RgbFrames::new(
        w,
        h,
        frames,
        video.data[..frames * h * w * 3].to_vec(),
    )
    .unwrap();
    wanrt::media::video::png::write_png_frames(&vdir, &rgb, false, None).unwrap();
    std::fs::create_dir_all(&mdir).unwrap();
    for t in 0..frames {
        let px = &mask.data[t * h * w..(t + 1) * h * w];
        std::fs::write(
            mdir.join(format!("{t:03}.png")),
            gray_png(w as u32, h as u32, px),
        )
        .unwrap();
    }
    (vdir, mdir)
}

#[test]
fn wan_run_reproduces_the_reference_run() {
    let case = case();
    let golden = case.golden("pipeline.safetensors");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case.dir.join("case.json")).unwrap())
            .unwrap();
    let p = &json["pipeline"];
    let out = compile_all(&case);
    let work = tempfile::tempdir().unwrap();
    let (vdir, mdir) = write_frame_dirs(&case, work.path(), 9);
    let latents_in = work.path().join("latents_in.safetensors");
    wanrt::runtime::tensorfile::write(
        &latents_in,
        &BTreeMap::from([("latents".to_string(), golden["latents_init"].clone())]),
        false,
    )
    .unwrap();
    let saved = work.path().join("latents_out.safetensors");
    let frames_dir = work.path().join("frames/");
    let mut cmd = std::process::Command::new(bin("wan-run"));
    cmd.arg("--engines")
        .arg(out.path())
        .args(["--prompt", p["prompt"].as_str().unwrap()])
        .args(["--negative-prompt", p["negative_prompt"].as_str().unwrap()])
        .arg("--control-video")
        .arg(&vdir)
        .arg("--control-mask")
        .arg(&mdir);
    for j in 0..REFS {
        cmd.arg("--reference-image")
            .arg(case.dir.join(format!("golden/ref_image_{j}.png")));
    }
    cmd.args(["--context-scale", &p["context_scale"].to_string()])
        .args(["--steps", &p["num_inference_steps"].to_string()])
        .args(["--guidance-scale", &p["guidance_scale"].to_string()])
        .args(["--shift", &p["flow_shift"].to_string()])
        .arg("--latents-in")
        .arg(&latents_in)
        .arg("--save-latents")
        .arg(&saved)
        .arg("--output")
        .arg(&frames_dir)
        .args(["--backend", "ort-cpu"]);
    let (ok, log) = run_cmd(&mut cmd);
    assert!(ok, "wan-run failed:\n{log}");

    let got = wanrt::runtime::tensorfile::read(&saved).unwrap();
    let latents = &got["latents"];
    assert_eq!(
        latents.shape, golden["latents_out"].shape,
        "reference frames kept"
    );
    assert_fp32(
        "vace/latents_out",
        &f32s(latents),
        &f32s(&golden["latents_out"]),
        TIGHT_LATENTS,
    );

    // 9 frames (the reference frames are not decoded), each within one
    // 8-bit level of the reference's float frames · 255.
    let want = f32s(&golden["frames"]); // [1, F, H, W, 3]
    let mut files: Vec<_> = std::fs::read_dir(&frames_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 9, "frames written");
    let mut worst = 0f32;
    for (t, f) in files.iter().enumerate() {
        let img = load_image(f).unwrap();
        let n = img.pixels().len();
        for (a, b) in img.pixels().iter().zip(&want[t * n..(t + 1) * n]) {
            worst = worst.max((*a as f32 - b * 255.0).abs());
        }
    }
    eprintln!("vace: frames max |u8 - 255·ref| = {worst:.3}");
    assert!(worst <= 1.0, "a frame value is {worst} levels off");
    // `wan-run component dit` on the reference's DiT inputs (the
    // contract's VACE inputs, the unbatched scale included).
    let dit_out = work.path().join("dit_out.safetensors");
    let (ok, log) = run_cmd(
        std::process::Command::new(bin("wan-run"))
            .args(["component", "dit", "--engines"])
            .arg(out.path())
            .arg("--input")
            .arg(case.dir.join("golden/dit.safetensors"))
            .arg("--output")
            .arg(&dit_out)
            .args(["--backend", "ort-cpu"]),
    );
    assert!(ok, "wan-run component dit failed:\n{log}");
    let got = wanrt::runtime::tensorfile::read(&dit_out).unwrap();
    assert_fp32(
        "vace/component dit noise_pred",
        &f32s(&got["noise_pred"]),
        &f32s(&case.golden("dit.safetensors")["noise_pred"]),
        TIGHT_DIT,
    );
    let side: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.path().join("frames.json")).unwrap())
            .unwrap();
    assert_eq!(side["settings"]["vace"]["reference_images"], 2, "{side}");
}

#[test]
fn bad_vace_inputs_are_typed_errors() {
    let case = case();
    let out = compile_all(&case);
    let mut pipeline =
        Pipeline::load(Artifacts::open(out.path()).unwrap(), Backend::OrtCpu).unwrap();
    let (video, mask, refs, _) = case_inputs(&case);
    let base = GenerateOptions {
        prompt: "a snake".into(),
        steps: Some(1),
        seed: 1,
        ..Default::default()
    };
    let run = |pipeline: &mut Pipeline, v: VaceInputs| {
        let opts = GenerateOptions {
            vace: Some(v),
            ..base.clone()
        };
        pipeline.generate(&opts, None, |_, _, _| {}).err()
    };
    let cases: Vec<(&str, VaceInputs)> = vec![
        (
            "--control-video",
            VaceInputs {
                video: Some(video[..5].to_vec()),
                reference_images: refs.clone(),
                ..Default::default()
            },
        ),
        (
            "--control-video",
            VaceInputs {
                video: Some(
                    video
                        .iter()
                        .map(|_| RgbImage::new(16, 32, vec![0; 16 * 32 * 3]).unwrap())
                        .collect(),
                ),
                reference_images: refs.clone(),
                ..Default::default()
            },
        ),
        (
            "--control-mask",
            VaceInputs {
                video: Some(video.clone()),
                mask: Some(mask[..8].to_vec()),
                reference_images: refs.clone(),
                ..Default::default()
            },
        ),
        (
            "--reference-image",
            VaceInputs {
                video: Some(video.clone()),
                reference_images: [refs.clone(), refs.clone()].concat(),
                ..Default::default()
            },
        ),
        (
            "--context-scale",
            VaceInputs {
                reference_images: refs.clone(),
                context_scale: Some(f32::INFINITY),
                ..Default::default()
            },
        ),
    ];
    for (flag, v) in cases {
        let e = run(&mut pipeline, v).unwrap_or_else(|| panic!("{flag}: accepted"));
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains(flag), "'{e}' does not name {flag}");
    }
    // Reference-only (no control video) runs.
    let ok = run(
        &mut pipeline,
        VaceInputs {
            reference_images: refs.clone(),
            ..Default::default()
        },
    );
    assert!(ok.is_none(), "reference-only generation: {ok:?}");
    // An image is not a VACE input.
    let refs_for_image = refs[1].clone();
    let opts = GenerateOptions {
        image: Some(wanrt::runtime::pipeline::InputImage::new(
            refs_for_image,
            "ref_image_1.png",
        )),
        ..base.clone()
    };
    let e = pipeline.generate(&opts, None, |_, _, _| {}).err().unwrap();
    assert!(e.to_string().contains("--image"), "{e}");

    // VACE inputs on T2V engines.
    let t2v = Case::new("t2v-tiny");
    let out = tempfile::tempdir().unwrap();
    wanrt::compiler::compile(&t2v.options(false, Precision::Fp32, BatchMode::Fixed(1), out.path()))
        .unwrap();
    let mut p = Pipeline::load(Artifacts::open(out.path()).unwrap(), Backend::OrtCpu).unwrap();
    let opts = GenerateOptions {
        vace: Some(VaceInputs {
            reference_images: refs,
            ..Default::default()
        }),
        ..base
    };
    let e = p.generate(&opts, None, |_, _, _| {}).err().unwrap();
    assert!(e.to_string().contains("VACE"), "{e}");
    assert!(e.to_string().contains("--control-video"), "{e}");
    // Reference images on a T2V compile are refused by the compiler.
    let out = tempfile::tempdir().unwrap();
    let mut o = t2v.options(false, Precision::Fp32, BatchMode::Fixed(1), out.path());
    o.profile = o.profile.with_reference_images(1).unwrap();
    let e = wanrt::compiler::compile(&o).err().unwrap();
    assert!(e.to_string().contains("--reference-images"), "{e}");
}

#[test]
fn loras_merge_into_the_vace_blocks() {
    // A rank-4 pair on a VACE projection, in the kohya layout (original
    // module names) and the PEFT layout (diffusers names: proj_in /
    // proj_out): both resolve, modify exactly that tensor, and move the
    // output (the hints reach noise_pred).
    let case = case();
    let golden = case.golden("dit.safetensors");
    let want = f32s(&golden["noise_pred"]);
    let work = tempfile::tempdir().unwrap();
    let pair = |down: &str, up: &str| {
        let v =
            |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * k).sin() * 0.2).collect() };
        BTreeMap::from([
            (
                down.to_string(),
                HostTensor::from_f32(vec![4, 24], &v(96, 0.37)),
            ),
            (
                up.to_string(),
                HostTensor::from_f32(vec![24, 4], &v(96, 0.53)),
            ),
        ])
    };
    for (layout, tensors) in [
        (
            "kohya",
            pair(
                "lora_unet_vace_blocks_0_before_proj.lora_down.weight",
                "lora_unet_vace_blocks_0_before_proj.lora_up.weight",
            ),
        ),
        (
            "peft",
            pair(
                "transformer.vace_blocks.1.proj_out.lora_A.weight",
                "transformer.vace_blocks.1.proj_out.lora_B.weight",
            ),
        ),
    ] {
        let file = work.path().join(format!("{layout}.safetensors"));
        wanrt::runtime::tensorfile::write(&file, &tensors, false).unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut opts = case
            .options(false, Precision::Fp32, BatchMode::Fixed(1), out.path())
            .with_lora(wanrt::compiler::lora::LoraSpec::new(&file, 1.0));
        opts.profile = profile(&case, BatchMode::Fixed(1));
        opts.networks = vec![NetworkKind::Dit];
        wanrt::compiler::compile(&opts).unwrap_or_else(|e| panic!("{layout}: {e}"));
        let artifacts = Artifacts::open(out.path()).unwrap();
        let rec = &artifacts.entry(NetworkKind::Dit).unwrap().loras[0];
        assert_eq!(
            (rec.layout.as_str(), rec.keys_applied, rec.tensors_modified),
            (layout, 2, 1)
        );
        let mut dit = artifacts.load(NetworkKind::Dit, Backend::OrtCpu).unwrap();
        let got = f32s(&dit.run(&dit_inputs(&golden)).unwrap()["noise_pred"]);
        let moved = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("vace/{layout} LoRA: noise_pred moved by up to {moved:.3e}");
        assert!(
            moved > 1e-3,
            "{layout}: the LoRA did not reach the output ({moved:.3e})"
        );
    }
}

#[test]
fn wan_run_takes_an_mp4_control_video() {
    use wanrt::media::video::mp4::{Mp4Options, write_mp4};
    let case = case();
    let out = compile_all(&case);
    let work = tempfile::tempdir().unwrap();
    let (vdir, mdir) = write_frame_dirs(&case, work.path(), 9);
    // The control frames as an H.264 MP4 (lossy: close to the PNGs).
    let frames = wanrt::media::frames::read_frames(&vdir, "--control-video", None).unwrap();
    let (w, h) = (frames[0].width() as usize, frames[0].height() as usize);
    let data: Vec<u8> = frames.iter().flat_map(|f| f.pixels().to_vec()).collect();
    let rgb = wanrt::media::video::RgbFrames::new(w, h, frames.len(), data).unwrap();
    let mp4 = work.path().join("control.mp4");
    write_mp4(&mp4, &rgb, &Mp4Options::default(), false, None).unwrap();
    let run = |control: &Path, output: &Path| {
        let mut cmd = std::process::Command::new(bin("wan-run"));
        cmd.arg("--engines")
            .arg(out.path())
            .args(["--prompt", "a dancer", "--steps", "2", "--seed", "3"])
            .arg("--control-video")
            .arg(control)
            .arg("--control-mask")
            .arg(&mdir);
        for j in 0..REFS {
            cmd.arg("--reference-image")
                .arg(case.dir.join(format!("golden/ref_image_{j}.png")));
        }
        cmd.arg("--output")
            .arg(output)
            .args(["--backend", "ort-cpu"]);
        run_cmd(&mut cmd)
    };
    let (ok, log) = run(&mp4, &work.path().join("from-mp4/"));
    assert!(ok, "wan-run with an MP4 control video failed:\n{log}");
    let side: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.path().join("from-mp4.json")).unwrap())
            .unwrap();
    assert_eq!(side["settings"]["vace"]["reference_images"], 2, "{side}");
    // An MP4 of another size is refused naming the flag, and nothing is written.
    let small = wanrt::media::video::RgbFrames::new(16, 16, 9, vec![128; 16 * 16 * 3 * 9]).unwrap();
    let bad = work.path().join("small.mp4");
    write_mp4(&bad, &small, &Mp4Options::default(), false, None).unwrap();
    let target = work.path().join("bad/");
    let (ok, log) = run(&bad, &target);
    assert!(!ok && log.contains("--control-video"), "{log}");
    assert!(!target.exists(), "nothing written for a refused run");
}
