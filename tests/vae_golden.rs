//! The Wan-VAE as chunk graphs against the reference's whole-sequence
//! encode and decode (`fixtures/*/golden/vae.safetensors`), on ONNX
//! Runtime's CPU provider: chunked execution must equal decoding the whole
//! sequence at once.

mod common;

use common::{CASES, Case, assert_fp32, rel_errors};
use wanrt::core::{BatchMode, NetworkKind, Precision};
use wanrt::runtime::{Artifacts, Backend, HostTensor};

/// The tight fp32 tiers (`common::assert_fp32`), ≤ 5× the measured max |Δ|:
/// encode 6.6e-7, decode 5.0e-6 (t2v-tiny; 3.4e-6 for i2v-tiny).
const TIGHT_ENCODE: f32 = 3e-6;
const TIGHT_DECODE: f32 = 2e-5;

fn compile(case: &Case, precision: Precision) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let mut opts = case.options(false, Precision::Fp32, BatchMode::Fixed(1), out.path());
    opts.vae_precision = precision;
    opts.networks = vec![NetworkKind::VaeEncoder, NetworkKind::VaeDecoder];
    wanrt::compiler::compile(&opts).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    out
}

fn run(dir: &std::path::Path, kind: NetworkKind, name: &str, t: &HostTensor) -> HostTensor {
    let a = Artifacts::open(dir).unwrap();
    let mut net = a.load(kind, Backend::OrtCpu).unwrap();
    let inputs = [(name.to_string(), t.clone())].into_iter().collect();
    net.run(&inputs).unwrap().into_values().next().unwrap()
}

#[test]
fn fp32_encode_and_decode_match_the_whole_sequence_reference() {
    for name in CASES {
        let case = Case::new(name);
        let out = compile(&case, Precision::Fp32);
        let g = case.golden("vae.safetensors");
        let mean = run(out.path(), NetworkKind::VaeEncoder, "video", &g["video"]);
        assert_eq!(mean.shape, g["latent_mean"].shape);
        assert_fp32(
            &format!("{name}/latent_mean"),
            &mean.to_f32().unwrap(),
            &g["latent_mean"].to_f32().unwrap(),
            TIGHT_ENCODE,
        );
        let video = run(
            out.path(),
            NetworkKind::VaeDecoder,
            "latents",
            &g["latents"],
        );
        assert_eq!(video.shape, g["decoded"].shape);
        assert_fp32(
            &format!("{name}/decoded"),
            &video.to_f32().unwrap(),
            &g["decoded"].to_f32().unwrap(),
            TIGHT_DECODE,
        );
    }
}

#[test]
fn fp16_vae_within_stated_tolerance() {
    let case = Case::new("t2v-tiny");
    let out = compile(&case, Precision::Fp16);
    let g = case.golden("vae.safetensors");
    let video = run(
        out.path(),
        NetworkKind::VaeDecoder,
        "latents",
        &g["latents"],
    );
    let (l2, max) = rel_errors(&video.to_f32().unwrap(), &g["decoded"].to_f32().unwrap());
    eprintln!("vae decoder fp16: rel L2 {l2:.3e}, max {max:.3e}");
    assert!(l2 <= 5e-3 && max <= 2e-2, "rel L2 {l2:.3e}, max {max:.3e}");
    let mean = run(out.path(), NetworkKind::VaeEncoder, "video", &g["video"]);
    let (l2, max) = rel_errors(&mean.to_f32().unwrap(), &g["latent_mean"].to_f32().unwrap());
    eprintln!("vae encoder fp16: rel L2 {l2:.3e}, max {max:.3e}");
    assert!(l2 <= 5e-3 && max <= 2e-2, "rel L2 {l2:.3e}, max {max:.3e}");
}

#[test]
fn wrong_frame_count_is_refused() {
    let case = Case::new("t2v-tiny");
    let out = compile(&case, Precision::Fp32);
    let a = Artifacts::open(out.path()).unwrap();
    let mut enc = a.load(NetworkKind::VaeEncoder, Backend::OrtCpu).unwrap();
    let bad = HostTensor::from_f32(vec![1, 3, 8, 32, 32], &vec![0.0; 3 * 8 * 1024]);
    let e = enc
        .run(&[("video".to_string(), bad)].into_iter().collect())
        .unwrap_err();
    assert_eq!(e.kind(), wanrt::runtime::ErrorKind::ContractMismatch, "{e}");
    assert!(
        e.to_string().contains("video") && e.to_string().contains("[1, 3, 8, 32, 32]"),
        "{e}"
    );
}
