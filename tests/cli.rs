//! End to end through the two binaries, as a user runs them: wan-compile on
//! the original layout, wan-run component on the reference inputs, wan-run
//! compare against the reference output.

mod common;

use std::process::Command;

use common::{Case, bin, run_cmd};

#[test]
fn compile_run_compare_i2v_original_layout() {
    let case = Case::new("i2v-tiny");
    let tmp = tempfile::tempdir().unwrap();
    let engines = tmp.path().join("engines");
    let (ok, log) = run_cmd(
        Command::new(bin("wan-compile"))
            .arg("--model")
            .arg(case.model_dir(true))
            .arg("--out")
            .arg(&engines)
            .args([
                "--width",
                "32",
                "--height",
                "32",
                "--frames",
                "9",
                "--text-len",
                "512",
                "--precision",
                "fp32",
                // The tiny original-layout encoders and VAE are not the official
                // architectures the original layout implies (no config files).
                "--networks",
                "dit",
            ]),
    );
    assert!(ok, "{log}");
    let output = tmp.path().join("noise_pred.safetensors");
    let golden = case.dir.join("golden/dit.safetensors");
    common::cli_dit_matches_golden(&engines, &golden, &output);

    // The output exists now: no overwrite without being asked.
    let (ok, log) = run_cmd(
        Command::new(bin("wan-run"))
            .args(["component", "dit", "--engines"])
            .arg(&engines)
            .arg("--input")
            .arg(&golden)
            .arg("--output")
            .arg(&output),
    );
    assert!(!ok && log.contains("--overwrite"), "{log}");
}

#[test]
fn cli_errors_name_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let model = Case::new("t2v-tiny").model_dir(false);
    for (args, needle) in [
        (vec!["--width", "30", "--height", "32"], "--width"),
        (
            vec!["--width", "32", "--height", "32", "--frames", "10"],
            "--frames",
        ),
        (vec!["--profile", "1080p"], "--profile"),
        (vec!["--profile", "480p", "--precision", "int4"], "int4"),
        (vec!["--profile", "480p", "--networks", "unet"], "unet"),
        (vec!["--profile", "480p", "--batch", "two"], "--batch"),
        (
            vec![
                "--width",
                "32",
                "--height",
                "32",
                "--frames",
                "9",
                "--text-len",
                "32",
                "--precision",
                "fp8",
                "--fp8-base",
                "fp32",
            ],
            "needs --calibrate",
        ),
        (
            vec!["--profile", "480p", "--calibrate", "2"],
            "--precision fp8",
        ),
        (
            vec![
                "--profile",
                "480p",
                "--precision",
                "int8",
                "--calibrate",
                "2",
            ],
            "--calibrate",
        ),
        (
            vec![
                "--profile",
                "480p",
                "--precision",
                "fp8",
                "--fp8-layers",
                "attn",
            ],
            "attn",
        ),
    ] {
        let (ok, log) = run_cmd(
            Command::new(bin("wan-compile"))
                .arg("--model")
                .arg(&model)
                .arg("--out")
                .arg(tmp.path().join("o"))
                .args(&args),
        );
        assert!(!ok, "{args:?} succeeded");
        assert!(log.contains(needle), "{args:?}: {log}");
    }
    let (ok, log) = run_cmd(
        Command::new(bin("wan-run"))
            .args(["component", "dit", "--engines"])
            .arg(tmp.path().join("none"))
            .args(["--input", "x", "--output", "y"]),
    );
    assert!(!ok && log.contains("--engines"), "{log}");
    let (ok, log) = run_cmd(Command::new(bin("wan-run")).args([
        "component",
        "dit",
        "--backend",
        "cuda9",
        "--engines",
        "e",
        "--input",
        "x",
        "--output",
        "y",
    ]));
    assert!(!ok && log.contains("cuda9"), "{log}");
}

/// Walks MP4 boxes: (type, payload) pairs of one level.
fn boxes(data: &[u8]) -> Vec<(String, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 8 <= data.len() {
        let size = u32::from_be_bytes(data[i..i + 4].try_into().unwrap()) as usize;
        let kind = String::from_utf8_lossy(&data[i + 4..i + 8]).to_string();
        assert!(size >= 8 && i + size <= data.len(), "bad box {kind} at {i}");
        out.push((kind, &data[i + 8..i + size]));
        i += size;
    }
    out
}

fn child<'a>(data: &'a [u8], path: &[&str]) -> &'a [u8] {
    let mut cur = data;
    for p in path {
        cur = boxes(cur)
            .into_iter()
            .find(|(k, _)| k == p)
            .unwrap_or_else(|| panic!("no {p} box"))
            .1;
    }
    cur
}

#[test]
fn generate_writes_a_playable_h264_mp4_and_a_sidecar() {
    let case = Case::new("t2v-tiny");
    let tmp = tempfile::tempdir().unwrap();
    let engines = tmp.path().join("engines");
    let (ok, log) = run_cmd(
        Command::new(bin("wan-compile"))
            .arg("--model")
            .arg(case.model_dir(false))
            .arg("--out")
            .arg(&engines)
            .args([
                "--width",
                "32",
                "--height",
                "32",
                "--frames",
                "9",
                "--text-len",
                "32",
                "--precision",
                "fp32",
            ]),
    );
    assert!(ok, "{log}");
    let video = tmp.path().join("clip.mp4");
    let generate = |extra: &[&str]| {
        run_cmd(
            Command::new(bin("wan-run"))
                .arg("--engines")
                .arg(&engines)
                .args([
                    "--prompt",
                    "A cat and a dog baking a cake in a kitchen.",
                    "--steps",
                    "3",
                    "--seed",
                    "7",
                    "--output",
                ])
                .arg(&video)
                .args(extra),
        )
    };
    let (ok, log) = generate(&[]);
    assert!(ok, "{log}");

    // The container: ftyp first, an avc1 track of 32x32, 9 samples at 16 fps.
    let data = std::fs::read(&video).unwrap();
    let top: Vec<String> = boxes(&data).into_iter().map(|(k, _)| k).collect();
    assert_eq!(top.first().map(String::as_str), Some("ftyp"), "{top:?}");
    let stbl = child(&data, &["moov", "trak", "mdia", "minf", "stbl"]);
    let stsd = child(stbl, &["stsd"]);
    assert_eq!(&stsd[12..16], b"avc1", "codec");
    let (w, h) = (
        u16::from_be_bytes([stsd[8 + 32], stsd[8 + 33]]),
        u16::from_be_bytes([stsd[8 + 34], stsd[8 + 35]]),
    );
    assert_eq!((w, h), (32, 32));
    let stsz = child(stbl, &["stsz"]);
    assert_eq!(
        u32::from_be_bytes(stsz[8..12].try_into().unwrap()),
        9,
        "sample count"
    );
    let mdhd = child(&data, &["moov", "trak", "mdia", "mdhd"]);
    let (timescale, duration) = (
        u32::from_be_bytes(mdhd[12..16].try_into().unwrap()),
        u32::from_be_bytes(mdhd[16..20].try_into().unwrap()),
    );
    assert_eq!(
        duration as f64 / timescale as f64,
        9.0 / 16.0,
        "9 frames at 16 fps"
    );

    // Decodes back to 9 frames.
    let mdat = child(&data, &["mdat"]);
    let mut dec = openh264::decoder::Decoder::new().unwrap();
    let mut frames = 0;
    // Samples are length-prefixed NAL units; avcC holds SPS/PPS.
    let avcc = {
        // stsd: version/flags + count (8), then the avc1 entry: its header
        // (8) and 78 bytes of VisualSampleEntry before its child boxes.
        let entry_size = u32::from_be_bytes(stsd[8..12].try_into().unwrap()) as usize;
        child(&stsd[8 + 8 + 78..8 + entry_size], &["avcC"])
    };
    let mut annexb = Vec::new();
    let sps_len = u16::from_be_bytes([avcc[6], avcc[7]]) as usize;
    annexb.extend_from_slice(&[0, 0, 0, 1]);
    annexb.extend_from_slice(&avcc[8..8 + sps_len]);
    let pps_at = 8 + sps_len + 1;
    let pps_len = u16::from_be_bytes([avcc[pps_at], avcc[pps_at + 1]]) as usize;
    annexb.extend_from_slice(&[0, 0, 0, 1]);
    annexb.extend_from_slice(&avcc[pps_at + 2..pps_at + 2 + pps_len]);
    let mut i = 0;
    while i + 4 <= mdat.len() {
        let n = u32::from_be_bytes(mdat[i..i + 4].try_into().unwrap()) as usize;
        annexb.extend_from_slice(&[0, 0, 0, 1]);
        annexb.extend_from_slice(&mdat[i + 4..i + 4 + n]);
        i += 4 + n;
    }
    for nal in openh264::nal_units(&annexb) {
        if let Ok(Some(_)) = dec.decode(nal) {
            frames += 1;
        }
    }
    frames += dec.flush_remaining().map(|v| v.len()).unwrap_or(0);
    assert_eq!(frames, 9, "decoded frames");

    // The sidecar reproduces the run.
    let side: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("clip.mp4.json")).unwrap())
            .unwrap();
    assert_eq!(side["settings"]["seed"], 7);
    assert_eq!(side["settings"]["steps"], 3);
    assert_eq!(side["settings"]["solver"], "unipc");
    assert_eq!(side["settings"]["dit_graphs"], "stages");
    assert_eq!(side["settings"]["execution"]["tf32"], false);
    assert_eq!(
        side["settings"]["execution"]["vae_conv_algo_search"],
        "exhaustive"
    );
    assert!(
        side["model_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );

    // No overwrite without being asked; with it, the same seed gives the same file.
    let (ok, log) = generate(&[]);
    assert!(!ok && log.contains("--overwrite"), "{log}");
    let (ok, log) = generate(&["--overwrite"]);
    assert!(ok, "{log}");
    assert_eq!(
        std::fs::read(&video).unwrap(),
        data,
        "same seed, same video"
    );

    // GPU settings on the CPU provider are refused, naming the flag.
    let (ok, log) = generate(&["--overwrite", "--tf32"]);
    assert!(!ok && log.contains("--tf32"), "{log}");
    let (ok, log) = generate(&["--overwrite", "--cuda-graph"]);
    assert!(
        !ok && log.contains("--cuda-graph") && log.contains("ort-cuda"),
        "{log}"
    );

    // T2V engines refuse an image; a bad output name is refused before any work.
    let (ok, log) = generate(&["--overwrite", "--image", "x.png"]);
    assert!(!ok && log.contains("--image"), "{log}");
    let (ok, log) = run_cmd(
        Command::new(bin("wan-run"))
            .arg("--engines")
            .arg(&engines)
            .args(["--prompt", "x", "--output", "clip.avi"]),
    );
    assert!(!ok && log.contains("--output"), "{log}");
}

#[test]
fn ctrl_c_stops_generation_without_leaving_files() {
    let case = Case::new("t2v-tiny");
    let tmp = tempfile::tempdir().unwrap();
    let engines = tmp.path().join("engines");
    let (ok, log) = run_cmd(
        Command::new(bin("wan-compile"))
            .arg("--model")
            .arg(case.model_dir(false))
            .arg("--out")
            .arg(&engines)
            .args([
                "--width",
                "128",
                "--height",
                "128",
                "--frames",
                "17",
                "--text-len",
                "32",
                "--precision",
                "fp32",
            ]),
    );
    assert!(ok, "{log}");
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    // Many steps, so the signal lands mid-run.
    let child = Command::new(bin("wan-run"))
        .arg("--engines")
        .arg(&engines)
        .args([
            "--prompt",
            "a long run",
            "--steps",
            "1000",
            "--seed",
            "1",
            "--output",
        ])
        .arg(out_dir.join("clip.mp4"))
        .arg("--save-latents")
        .arg(out_dir.join("latents.safetensors"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "wan-run finished before the signal: {log}"
    );
    assert!(log.contains("interrupted"), "{log}");
    let left: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "files left after Ctrl-C: {left:?}");
}

/// The 4-step LoRA recipe as the README gives it: `wan-compile --lora`,
/// then `wan-run --timesteps … --solver euler --guidance-scale 1`; the
/// sidecar records the step list and the float DiT timesteps, and the
/// latents are the reference's.
#[test]
fn lora_and_step_distill_recipe_end_to_end() {
    let case = Case::new("t2v-tiny");
    let tmp = tempfile::tempdir().unwrap();
    let engines = tmp.path().join("engines");
    let lora = case.dir.join("lora/comfy.safetensors");
    let (ok, log) = run_cmd(
        Command::new(bin("wan-compile"))
            .arg("--model")
            .arg(case.model_dir(false))
            .arg("--out")
            .arg(&engines)
            .args(["--width", "32", "--height", "32", "--frames", "9"])
            .args(["--text-len", "32", "--precision", "fp32", "--lora"])
            .arg(format!("{}:1.0", lora.display())),
    );
    assert!(ok, "{log}");
    assert!(
        log.contains("merged LoRA comfy.safetensors (comfy, scale 1): 95 keys into 69 tensors"),
        "{log}"
    );
    let golden =
        wanrt::runtime::tensorfile::read(&case.dir.join("lora/distill.safetensors")).unwrap();
    let latents_in = tmp.path().join("latents_init.safetensors");
    wanrt::runtime::tensorfile::write(
        &latents_in,
        &[(
            "latents".to_string(),
            golden["distill.latents_init"].clone(),
        )]
        .into(),
        false,
    )
    .unwrap();
    let prompt = "A cat and a dog baking a cake in a kitchen.";
    let (out, saved) = (tmp.path().join("v/"), tmp.path().join("out.safetensors"));
    let run = |steps: &str| {
        run_cmd(
            Command::new(bin("wan-run"))
                .arg("--engines")
                .arg(&engines)
                .args(["--prompt", prompt, "--timesteps", steps, "--shift", "5"])
                .args(["--guidance-scale", "1", "--solver", "euler", "--latents-in"])
                .arg(&latents_in)
                .arg("--save-latents")
                .arg(&saved)
                .arg("--output")
                .arg(&out)
                .arg("--overwrite"),
        )
    };
    let (ok, log) = run("1000,750,500,250");
    assert!(ok, "{log}");
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("v.json")).unwrap()).unwrap();
    let s = &sidecar["settings"];
    assert_eq!(
        s["denoising_step_list"],
        serde_json::json!([1000, 750, 500, 250])
    );
    let t: Vec<f64> = s["timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(t.len(), 4);
    assert_eq!(t[1], 937.5);
    assert_eq!(t[2] as f32, 833.333_3f32);
    let got = wanrt::runtime::tensorfile::read(&saved).unwrap()["latents"]
        .to_f32()
        .unwrap();
    let want = golden["distill_lora.latents_out"].to_f32().unwrap();
    common::assert_close("cli distill_lora", &got, &want, 1e-4, 1e-3);

    // A step list that is not decreasing is refused, naming the flag.
    let (ok, log) = run("250,500");
    assert!(!ok && log.contains("--timesteps"), "{log}");
}

/// `wan-run compare A.mp4 B.mp4`: two encodings of the same frames are
/// close (high PSNR), a shifted video is not, `--min-psnr` fails below its
/// threshold, a missing file is named.
#[test]
fn compare_two_videos_reports_psnr() {
    use wanrt::media::video::RgbFrames;
    use wanrt::media::video::mp4::{Mp4Options, write_mp4};
    let dir = tempfile::tempdir().unwrap();
    let (w, h, f) = (48usize, 32usize, 5usize);
    let pattern = |shift: u8| {
        let data: Vec<u8> = (0..w * h * 3 * f)
            .map(|i| {
                ((i / 3 % w) as u8)
                    .wrapping_mul(5)
                    .wrapping_add((i % 3) as u8 * 60 + shift)
            })
            .collect();
        RgbFrames::new(w, h, f, data).unwrap()
    };
    let write = |name: &str, frames: &RgbFrames| {
        let p = dir.path().join(name);
        write_mp4(&p, frames, &Mp4Options::default(), false, None).unwrap();
        p
    };
    let (a, b, c) = (
        write("a.mp4", &pattern(0)),
        write("b.mp4", &pattern(0)),
        write("c.mp4", &pattern(70)),
    );
    let (ok, out) = run_cmd(Command::new(bin("wan-run")).arg("compare").arg(&a).arg(&b));
    assert!(ok, "{out}");
    assert!(
        out.contains("PSNR inf dB") && out.contains("5 frames 48x32"),
        "{out}"
    );
    let (ok, out) = run_cmd(
        Command::new(bin("wan-run"))
            .arg("compare")
            .arg(&a)
            .arg(&c)
            .args(["--min-psnr", "30"]),
    );
    assert!(!ok && out.contains("below --min-psnr 30"), "{out}");
    let (ok, out) = run_cmd(
        Command::new(bin("wan-run"))
            .arg("compare")
            .arg(&a)
            .arg(dir.path().join("missing.mp4")),
    );
    assert!(!ok && out.contains("missing.mp4"), "{out}");
}
