//! The VAE decode runs in constant memory: the peak resident memory of an
//! 81-frame decode exceeds a 9-frame decode at the same size by less than a
//! quarter of the 72 frames it adds (a decoder holding every frame fails), and
//! decoding a latent prefix gives exactly the prefix of the longer decode
//! (temporal causality, and the streamed file's layout).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{Case, bin};
use wanrt::core::{BatchMode, NetworkKind, Precision, Profile};
use wanrt::runtime::{HostTensor, tensorfile};

/// Compiles the t2v-tiny VAE decoder for `frames` at 192×192 and decodes
/// `latents`; returns the decoded video and the peak RSS the binary reports.
fn decode(frames: u32, latents: &HostTensor, dir: &Path) -> (HostTensor, f64) {
    let case = Case::new("t2v-tiny");
    let out = dir.join(format!("engines-{frames}"));
    let mut opts = case.options(false, Precision::Fp32, BatchMode::Fixed(1), &out);
    opts.profile = Profile::custom(192, 192, frames, 32).unwrap();
    opts.networks = vec![NetworkKind::VaeDecoder];
    wanrt::compiler::compile(&opts).unwrap();
    let input = dir.join(format!("latents-{frames}.safetensors"));
    tensorfile::write(
        &input,
        &BTreeMap::from([("latents".to_string(), latents.clone())]),
        true,
    )
    .unwrap();
    let output = dir.join(format!("video-{frames}.safetensors"));
    let o = Command::new(bin("wan-run"))
        .args(["component", "vae-decoder", "--engines"])
        .arg(&out)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{log}");
    let peak: f64 = log
        .split("peak RSS ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in: {log}"));
    let video = tensorfile::read(&output).unwrap().remove("video").unwrap();
    (video, peak)
}

#[test]
fn decode_memory_does_not_grow_with_frames() {
    let tmp = tempfile::tempdir().unwrap();
    // 21 latent frames of deterministic pseudo-random values.
    let (t, h, w) = (21u64, 24u64, 24u64);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let values: Vec<f32> = (0..16 * t * h * w)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect();
    let long = HostTensor::from_f32(vec![1, 16, t, h, w], &values);
    let short = wanrt::runtime::chunked::slice_time(&long, 0, 3);

    let (v9, peak9) = decode(9, &short, tmp.path());
    let (v81, peak81) = decode(81, &long, tmp.path());
    eprintln!(
        "peak RSS: 9 frames {peak9:.1} MiB, 81 frames {peak81:.1} MiB (output of 81 frames: {:.1} MiB)",
        (81 * 3 * 192 * 192 * 4) as f64 / (1 << 20) as f64
    );
    // A decoder that held every frame would grow by the frames it adds
    // (30.4 MiB from 9 to 81 frames); allow a quarter of that.
    let added = ((81 - 9) * 3 * 192 * 192 * 4) as f64 / (1 << 20) as f64;
    assert!(
        peak81 - peak9 <= added / 4.0,
        "81-frame decode peaks at {peak81:.1} MiB vs {peak9:.1} MiB for 9 frames \
         (grew {:.1} MiB; holding the added frames would be {added:.1} MiB)",
        peak81 - peak9
    );

    assert_eq!(v81.shape, vec![1, 3, 81, 192, 192]);
    let prefix = wanrt::runtime::chunked::slice_time(&v81, 0, 9);
    assert_eq!(
        prefix.to_f32().unwrap(),
        v9.to_f32().unwrap(),
        "a latent prefix must decode to the prefix"
    );
}
