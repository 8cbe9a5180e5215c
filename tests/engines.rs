//! Prebuilt engines and placement (issue "compile once for real"), as far as
//! a machine without GPU and TensorRT can prove them: `--engine tensorrt`
//! is refused before anything is written; a manifest whose engines were
//! built for another GPU or library version is refused by the runtime with
//! a typed error naming what differs; `inspect --load --placement` reports
//! ONNX Runtime's own record of where each node ran.

mod common;

use std::process::Command;

use common::{Case, bin, run_cmd};
use wanrt::core::engines::{
    ENGINE_DIR, EngineFile, EngineKind, EngineRecord, EngineTarget, NetworkEngines, cache_prefix,
};
use wanrt::core::{BatchMode, Manifest, NetworkKind, Precision};
use wanrt::runtime::{Artifacts, Backend, ErrorKind};

#[test]
fn engine_tensorrt_without_tensorrt_is_refused_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("engines-out");
    let (ok, log) = run_cmd(
        Command::new(bin("wan-compile"))
            .arg("--model")
            .arg(Case::new("t2v-tiny").model_dir(false))
            .arg("--out")
            .arg(&out)
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
                "--networks",
                "dit",
                "--engine",
                "tensorrt",
            ]),
    );
    assert!(!ok, "{log}");
    // Names TensorRT and what to install.
    assert!(log.contains("--engine tensorrt"), "{log}");
    assert!(
        log.contains("TensorRT") && log.contains("onnxruntime-gpu"),
        "{log}"
    );
    assert!(log.contains("libnvinfer"), "{log}");
    assert!(!out.exists(), "--out was created: {}", out.display());
}

/// A compiled tiny DiT whose manifest claims engines built on an H200 with
/// the given versions, with a (fake) engine file of the recorded size, as
/// if the directory had been copied from another machine.
fn with_engine_record(target: EngineTarget) -> tempfile::TempDir {
    let out = Case::new("t2v-tiny").compile_dit(false, Precision::Fp32, BatchMode::Fixed(1));
    let mut m = Manifest::read(out.path()).unwrap();
    let entry = &m.networks[&NetworkKind::Dit];
    let prefix = cache_prefix("dit", &entry.graph_digest, &entry.weights_digest);
    std::fs::create_dir(out.path().join(ENGINE_DIR)).unwrap();
    let file = format!("{ENGINE_DIR}/{prefix}_sm90.engine");
    std::fs::write(out.path().join(&file), b"engine bytes").unwrap();
    let rec = EngineRecord {
        kind: EngineKind::Tensorrt,
        target,
        profile: entry.profile.name.clone(),
        networks: [(
            NetworkKind::Dit,
            NetworkEngines {
                cache_prefixes: vec![prefix],
                graph_digest: entry.graph_digest.clone(),
                weights_digest: entry.weights_digest.clone(),
                precision: entry.precision,
                files: vec![EngineFile {
                    file,
                    bytes: 12,
                    digest: wanrt::core::fsio::sha256_bytes(b"engine bytes"),
                }],
            },
        )]
        .into(),
        timing_cache: None,
    };
    m.engines = Some(rec);
    std::fs::write(Manifest::path(out.path()), m.to_json()).unwrap();
    out
}

fn h200() -> EngineTarget {
    EngineTarget {
        gpu_name: "NVIDIA H200".into(),
        compute_capability: "9.0".into(),
        tensorrt_version: "10.13.0".into(),
        cuda_version: "13.0".into(),
        onnxruntime_version: "1.31.1".into(),
    }
}

#[test]
fn engines_for_another_gpu_or_library_version_are_refused_with_what_differs() {
    let out = with_engine_record(h200());
    let a = Artifacts::open(out.path()).unwrap();
    assert!(a.manifest.engines.is_some(), "the record round-trips");
    let e = match a.load(NetworkKind::Dit, Backend::OrtTensorRt) {
        Err(e) => e,
        Ok(_) => panic!("engines of an H200 loaded on a machine without one"),
    };
    assert_eq!(e.kind(), ErrorKind::EngineMismatch, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("GPU compute capability: built for 9.0 (NVIDIA H200)"),
        "{msg}"
    );
    assert!(msg.contains("TensorRT: built for 10.13.0"), "{msg}");
    assert!(msg.contains("--engine tensorrt --overwrite"), "{msg}");
    // The ONNX Runtime version is compared too: this machine's is 1.31.1,
    // so only an edited record differs there.
    assert!(!msg.contains("ONNX Runtime: built for 1.31.1"), "{msg}");
    let mut other = h200();
    other.onnxruntime_version = "1.30.0".into();
    let out = with_engine_record(other);
    let (ok, log) = run_cmd(
        Command::new(bin("wan-run"))
            .args([
                "inspect",
                "--load",
                "--backend",
                "ort-tensorrt",
                "--engines",
            ])
            .arg(out.path()),
    );
    assert!(!ok, "{log}");
    assert!(
        log.contains("ONNX Runtime: built for 1.30.0, this machine has 1.31.1"),
        "{log}"
    );
    assert!(log.contains("engines: tensorrt for NVIDIA H200"), "{log}");
}

#[test]
fn tensorrt_without_prebuilt_engines_is_refused_not_rebuilt() {
    let out = Case::new("t2v-tiny").compile_dit(false, Precision::Fp32, BatchMode::Fixed(1));
    let a = Artifacts::open(out.path()).unwrap();
    let e = match a.load(NetworkKind::Dit, Backend::OrtTensorRt) {
        Err(e) => e,
        Ok(_) => panic!("loaded on TensorRT without engines"),
    };
    assert_eq!(e.kind(), ErrorKind::EngineMismatch, "{e}");
    assert!(
        e.to_string().contains("no prebuilt TensorRT engines"),
        "{e}"
    );
    // A truncated engine file of a matching record is refused as well.
    let out = with_engine_record(wanrt::runtime::engines::machine_target_lenient(0));
    let m = Manifest::read(out.path()).unwrap();
    let f = &m.engines.as_ref().unwrap().networks[&NetworkKind::Dit].files[0];
    std::fs::write(out.path().join(&f.file), b"short").unwrap();
    let e = match Artifacts::open(out.path())
        .unwrap()
        .load(NetworkKind::Dit, Backend::OrtTensorRt)
    {
        Err(e) => e,
        Ok(_) => panic!("loaded a truncated engine"),
    };
    assert_eq!(e.kind(), ErrorKind::EngineMismatch, "{e}");
    assert!(
        e.to_string().contains("has 5 bytes, the manifest says 12"),
        "{e}"
    );
}

#[test]
fn placement_counts_every_node_on_the_cpu_provider() {
    let case = Case::new("t2v-tiny");
    let out = tempfile::tempdir().unwrap();
    let opts = case
        .options(false, Precision::Fp32, BatchMode::Fixed(1), out.path())
        .with_networks([NetworkKind::Dit, NetworkKind::VaeDecoder]);
    wanrt::compiler::compile(&opts).unwrap();
    let (ok, log) = run_cmd(
        Command::new(bin("wan-run"))
            .args([
                "inspect",
                "--load",
                "--placement",
                "--backend",
                "ort-cpu",
                "--engines",
            ])
            .arg(out.path()),
    );
    assert!(ok, "{log}");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("placement ")).collect();
    // The DiT's one graph and the VAE decoder's two chunk graphs.
    assert_eq!(lines.len(), 3, "{log}");
    for l in &lines {
        let (_, counts) = l.split_once(": ").unwrap();
        assert!(counts.starts_with("CPUExecutionProvider: "), "{l}");
        assert!(!counts.contains(','), "a second provider: {l}");
        let n: usize = counts
            .trim_start_matches("CPUExecutionProvider: ")
            .trim_end_matches(" nodes")
            .parse()
            .unwrap();
        assert!(n > 10, "{l}");
    }
    assert!(lines[0].contains("dit.onnx"), "{log}");
    assert!(lines[1].contains("vae_decoder.first.onnx"), "{log}");
    // Every graph file of the manifest is listed with its tensors.
    for needle in [
        "stage block_first: dit.block_first.onnx (tokens, timestep_proj, context → hidden_first)",
        "step-cache graph cache_head: dit.cache_head.onnx",
        "chunk first: vae_decoder.first.onnx",
    ] {
        assert!(log.contains(needle), "{needle}: {log}");
    }
    // Without --load there is nothing to place.
    let (ok, log) = run_cmd(
        Command::new(bin("wan-run"))
            .args(["inspect", "--placement", "--engines"])
            .arg(out.path()),
    );
    assert!(!ok && log.contains("--load"), "{log}");
}
