//! wan-serve's VACE jobs over real HTTP on the tiny fixture engines
//! (`vace-tiny`, compiled for 2 reference images, beside the tiny T2V
//! engines of the same size): a job with a `control_video` MP4, a
//! `control_mask` MP4, two `reference_image` parts and `context_scale`
//! goes to the VACE engines and equals `wan-run --control-video
//! --control-mask --reference-image --context-scale` byte for byte (MP4
//! and sidecar settings); its refusals (reference count, a control video
//! of another size or length, bytes that are no MP4, a part past the size
//! limit, `context_scale` out of range, VACE parts without VACE engines)
//! are typed errors naming the part, and nothing of them is stored.

mod common;

use std::path::Path;

use common::{
    Server, client, download, engines, fixture, json, status_is, stored_jobs, submit,
    submit_multipart, vace_engines, wait_for, wan_run,
};
use serde_json::{Value, json};
use wanrt_media::video::{Mp4Options, RgbFrames, write_mp4};

const PROMPT: &str = "A little girl in a red dress plays with a green cartoon snake.";

/// `frames` frames of `width`x`height`: smooth moving gradients (small
/// MP4s).
fn pattern(width: usize, height: usize, frames: usize) -> RgbFrames {
    let mut data = Vec::with_capacity(width * height * frames * 3);
    for t in 0..frames {
        for y in 0..height {
            for x in 0..width {
                data.push((x * 6 + t * 10) as u8);
                data.push((y * 6) as u8);
                data.push((128 + t * 8) as u8);
            }
        }
    }
    RgbFrames::new(width, height, frames, data).unwrap()
}

/// A mask: generate (white) in the left half, keep (black) in the right.
fn half_mask(width: usize, height: usize, frames: usize) -> RgbFrames {
    let mut data = Vec::with_capacity(width * height * frames * 3);
    for _ in 0..frames {
        for _ in 0..height {
            for x in 0..width {
                let v = if x < width / 2 { 255 } else { 0 };
                data.extend([v, v, v]);
            }
        }
    }
    RgbFrames::new(width, height, frames, data).unwrap()
}

fn mp4(dir: &Path, name: &str, frames: &RgbFrames) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join(name);
    write_mp4(&path, frames, &Mp4Options::default(), false, None).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

#[test]
fn a_vace_job_equals_wan_run_and_its_refusals_name_the_part() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start_with(
        &[engines(), vace_engines()],
        &data,
        &["--max-image-bytes", "16384"],
    );
    s.wait_ready();
    let (video_path, video) = mp4(tmp.path(), "control.mp4", &pattern(32, 32, 9));
    let (mask_path, mask) = mp4(tmp.path(), "mask.mp4", &half_mask(32, 32, 9));
    let ref_paths = [
        fixture("vace-tiny/golden/ref_image_0.png"),
        fixture("vace-tiny/golden/ref_image_1.png"),
    ];
    let refs: Vec<Vec<u8>> = ref_paths
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(
        video.len() < 16384 && mask.len() < 16384,
        "the fixture MP4s grew"
    );
    let texts = [
        ("prompt", PROMPT),
        ("size", "32x32"),
        ("seconds", "0.5"),
        ("steps", "3"),
        ("seed", "11"),
        ("context_scale", "0.75"),
    ];
    let parts: [(&str, &[u8]); 4] = [
        ("control_video", &video),
        ("control_mask", &mask),
        ("reference_image", &refs[0]),
        ("reference_image", &refs[1]),
    ];

    // The VACE engines, not the T2V ones of the same size.
    let (code, job) = submit_multipart(&s, &texts, &parts);
    assert_eq!(code, 200, "{job}");
    assert_eq!(job["model"], "vace-32x32x9-r2", "{job}");
    assert_eq!(
        job["vace"],
        json!({"control_video": true, "control_mask": true, "reference_images": 2, "context_scale": 0.75}),
        "{job}"
    );
    let id = job["id"].as_str().unwrap().to_string();
    // Every part is stored beside the job, as sent.
    let dir = data.join("jobs").join(&id);
    assert!(std::fs::read(dir.join("control_video.mp4")).unwrap() == video);
    assert!(std::fs::read(dir.join("control_mask.mp4")).unwrap() == mask);
    for (i, r) in refs.iter().enumerate() {
        assert!(std::fs::read(dir.join(format!("reference_image_{i}"))).unwrap() == *r);
    }
    wait_for(&s, None, &id, status_is("completed"));

    let out = tmp.path().join("wan-run.mp4");
    let (mp4_bytes, want) = wan_run(
        vace_engines(),
        &out,
        [
            "--prompt".as_ref(),
            PROMPT.as_ref(),
            "--steps".as_ref(),
            "3".as_ref(),
            "--seed".as_ref(),
            "11".as_ref(),
            "--control-video".as_ref(),
            video_path.as_os_str(),
            "--control-mask".as_ref(),
            mask_path.as_os_str(),
            "--reference-image".as_ref(),
            ref_paths[0].as_os_str(),
            "--reference-image".as_ref(),
            ref_paths[1].as_os_str(),
            "--context-scale".as_ref(),
            "0.75".as_ref(),
        ],
    );
    let side: Value = serde_json::from_slice(&download(&s, &id, "sidecar")).unwrap();
    assert_eq!(side["settings"]["task"], "vace");
    assert_eq!(side["settings"], want["settings"]);
    assert!(
        download(&s, &id, "video") == mp4_bytes,
        "the VACE job's MP4 differs from wan-run's with the same control video, mask and references"
    );

    // A text job on the same server still goes to the T2V engines.
    let (code, t2v) = submit(
        &s,
        None,
        json!({"prompt": PROMPT, "size": "32x32", "seconds": "0.5", "steps": 1}),
    );
    assert_eq!((code, t2v["model"].as_str()), (200, Some("t2v-32x32x9")));
    assert!(t2v["vace"].is_null(), "{t2v}");
    let t2v_id = t2v["id"].as_str().unwrap().to_string();

    // Refusals name the part, and nothing of them is stored.
    let (_, wide) = mp4(tmp.path(), "wide.mp4", &pattern(48, 32, 9));
    let (_, short) = mp4(tmp.path(), "short.mp4", &pattern(32, 32, 5));
    let (_, long) = mp4(tmp.path(), "long.mp4", &pattern(32, 32, 13));
    let big = vec![0u8; 20000];
    type Parts<'a> = &'a [(&'a str, &'a [u8])];
    let one_ref: Parts = &[("control_video", &video), ("reference_image", &refs[0])];
    let cases: [(Parts, &str, u16, &str, &str); 10] = [
        (one_ref, "0.75", 422, "reference_image", "invalid_value"),
        (
            &[
                ("control_video", &wide),
                ("reference_image", &refs[0]),
                ("reference_image", &refs[1]),
            ],
            "0.75",
            422,
            "control_video",
            "invalid_video",
        ),
        (
            &[
                ("control_video", &short),
                ("reference_image", &refs[0]),
                ("reference_image", &refs[1]),
            ],
            "0.75",
            422,
            "control_video",
            "invalid_video",
        ),
        (
            &[
                ("control_video", &long),
                ("reference_image", &refs[0]),
                ("reference_image", &refs[1]),
            ],
            "0.75",
            422,
            "control_video",
            "invalid_video",
        ),
        (
            &[
                ("control_video", b"not an mp4"),
                ("reference_image", &refs[0]),
                ("reference_image", &refs[1]),
            ],
            "0.75",
            422,
            "control_video",
            "invalid_video",
        ),
        (
            &[
                ("control_video", &video),
                ("control_mask", &wide),
                ("reference_image", &refs[0]),
                ("reference_image", &refs[1]),
            ],
            "0.75",
            422,
            "control_mask",
            "invalid_video",
        ),
        (
            &[("control_video", &big)],
            "0.75",
            413,
            "control_video",
            "request_too_large",
        ),
        (
            &[("control_video", &video), ("control_video", &video)],
            "0.75",
            422,
            "control_video",
            "duplicate_field",
        ),
        (
            &[("control_mask", &mask)],
            "0.75",
            422,
            "control_mask",
            "missing_control_video",
        ),
        (&parts, "1e39", 422, "context_scale", "invalid_value"),
    ];
    for (files, scale, status, param, code) in cases {
        let mut t = texts.to_vec();
        t[5] = ("context_scale", scale);
        let (got, body) = submit_multipart(&s, &t, files);
        assert_eq!(
            (
                got,
                body["error"]["param"].as_str(),
                body["error"]["code"].as_str()
            ),
            (status, Some(param), Some(code)),
            "{body}"
        );
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(!msg.contains("--control"), "{msg}");
    }
    // A reference image with an input_reference: not a VACE job's input.
    let (got, body) = submit_multipart(
        &s,
        &texts,
        &[("input_reference", &refs[1]), ("reference_image", &refs[0])],
    );
    assert_eq!(
        (got, body["error"]["param"].as_str()),
        (422, Some("input_reference")),
        "{body}"
    );
    // The OpenAPI document describes the parts and the field.
    let (_, doc) = json(client().get(s.url("/openapi.json")));
    let schemas = &doc["components"]["schemas"];
    for part in ["control_video", "control_mask", "reference_image"] {
        assert!(
            schemas["CreateVideoMultipart"]["properties"][part].is_object(),
            "{part}"
        );
    }
    assert!(schemas["CreateVideo"]["properties"]["context_scale"].is_object());
    let mut want_stored = vec![id, t2v_id.clone()];
    want_stored.sort();
    assert_eq!(stored_jobs(&data), want_stored);
    wait_for(&s, None, &t2v_id, status_is("completed"));
}

#[test]
fn vace_parts_without_vace_engines_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Submissions are checked against the manifests before the engines
    // have loaded.
    let s = Server::start(&data, &[]);
    let (_, video) = mp4(tmp.path(), "control.mp4", &pattern(32, 32, 9));
    let reference = std::fs::read(fixture("vace-tiny/golden/ref_image_1.png")).unwrap();
    for (files, scale, param) in [
        (&[("control_video", &video[..])][..], None, "control_video"),
        (
            &[("reference_image", &reference[..])][..],
            None,
            "reference_image",
        ),
        (&[][..], Some("1"), "context_scale"),
    ] {
        let mut texts = vec![("prompt", PROMPT)];
        if let Some(v) = scale {
            texts.push(("context_scale", v));
        }
        let (got, body) = submit_multipart(&s, &texts, files);
        assert_eq!(
            (
                got,
                body["error"]["param"].as_str(),
                body["error"]["code"].as_str()
            ),
            (422, Some(param), Some("unsupported_task")),
            "{body}"
        );
    }
    assert!(stored_jobs(&data).is_empty());
}
