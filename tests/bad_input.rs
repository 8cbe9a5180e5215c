//! Bad input gets a typed error naming the file, tensor or flag, and leaves
//! nothing half-written in the output directory.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::Case;
use wanrt::compiler::{CompileOptions, ErrorKind, ModelSource, compile};
use wanrt::core::{BatchMode, NetworkKind, Precision, Profile};
use wanrt::runtime::{Artifacts, Backend, HostTensor, tensorfile};

/// A writable copy of the t2v-tiny diffusers transformer directory.
fn copy_transformer() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let src = Case::new("t2v-tiny").model_dir(false).join("transformer");
    let dst = tmp.path().join("transformer");
    std::fs::create_dir(&dst).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dst.join(f.file_name().unwrap())).unwrap();
    }
    (tmp, dst)
}

fn opts(model: &Path, out: &Path) -> CompileOptions {
    CompileOptions::new(
        ModelSource::Dir(model.to_path_buf()),
        out,
        Case::new("t2v-tiny").profile(BatchMode::Fixed(1)),
    )
    .with_precision(Precision::Fp32)
}

/// Compiles `model`, expecting an error of `kind` whose message contains
/// every string of `names`, and an output directory left without artifacts.
fn expect_error(model: &Path, kind: ErrorKind, names: &[&str]) {
    let out = tempfile::tempdir().unwrap();
    let e = compile(&opts(model, out.path())).expect_err("compile must fail");
    let msg = e.to_string();
    assert_eq!(e.kind(), kind, "{msg}");
    for n in names {
        assert!(msg.contains(n), "'{msg}' does not name '{n}'");
    }
    let left: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "half-written files left: {left:?}");
}

/// Rewrites the safetensors file with `edit` applied to its tensors.
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut BTreeMap<String, HostTensor>)) -> PathBuf {
    let f = dir.join("diffusion_pytorch_model.safetensors");
    let mut t = tensorfile::read(&f).unwrap();
    edit(&mut t);
    tensorfile::write(&f, &t, true).unwrap();
    f
}

#[test]
fn missing_weights_file() {
    let (_t, dir) = copy_transformer();
    std::fs::remove_file(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    expect_error(
        &dir,
        ErrorKind::MissingFile,
        &["diffusion_pytorch_model.safetensors"],
    );
}

#[test]
fn truncated_weights_file() {
    let (_t, dir) = copy_transformer();
    let f = dir.join("diffusion_pytorch_model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    for cut in [len - 1, len / 2, 100, 4] {
        let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        file.set_len(cut).unwrap();
        expect_error(
            &dir,
            ErrorKind::CorruptCheckpoint,
            &["diffusion_pytorch_model.safetensors"],
        );
    }
}

#[test]
fn corrupt_weights_file() {
    let (_t, dir) = copy_transformer();
    let f = dir.join("diffusion_pytorch_model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[12] = b'#'; // inside the JSON header
    std::fs::write(&f, &bytes).unwrap();
    expect_error(
        &dir,
        ErrorKind::CorruptCheckpoint,
        &["diffusion_pytorch_model.safetensors"],
    );
}

#[test]
fn missing_tensor_is_named() {
    let (_t, dir) = copy_transformer();
    rewrite_weights(&dir, |t| {
        t.remove("blocks.1.attn2.to_k.weight").unwrap();
    });
    // Named by its canonical name and by the name it was looked for under.
    expect_error(
        &dir,
        ErrorKind::TensorMissing,
        &["blocks.1.cross_attn.k.weight", "blocks.1.attn2.to_k.weight"],
    );
}

#[test]
fn wrong_shape_is_named() {
    let (_t, dir) = copy_transformer();
    rewrite_weights(&dir, |t| {
        let w = t.get_mut("blocks.0.ffn.net.0.proj.weight").unwrap();
        let v = w.to_f32().unwrap();
        *w = HostTensor::from_f32(vec![32, 24], &v[..32 * 24]);
    });
    expect_error(
        &dir,
        ErrorKind::ShapeMismatch,
        &["blocks.0.ffn.0.weight", "[32, 24]", "[64, 24]"],
    );
}

#[test]
fn wrong_dtype_is_named() {
    let (_t, dir) = copy_transformer();
    rewrite_weights(&dir, |t| {
        let w = t.get_mut("proj_out.bias").unwrap();
        let n = w.numel();
        *w = HostTensor::from_i64(vec![n as u64], &vec![0; n]);
    });
    expect_error(
        &dir,
        ErrorKind::DTypeUnsupported,
        &["head.head.bias", "int64"],
    );
}

#[test]
fn extra_tensor_means_config_mismatch() {
    let (_t, dir) = copy_transformer();
    rewrite_weights(&dir, |t| {
        t.insert(
            "blocks.0.attn2.add_k_proj.weight".into(),
            HostTensor::from_f32(vec![1], &[0.0]),
        );
    });
    expect_error(
        &dir,
        ErrorKind::UnusedTensors,
        &["blocks.0.attn2.add_k_proj.weight"],
    );
}

#[test]
fn half_precision_checkpoints_are_read() {
    // bf16 and fp16 source tensors convert exactly to the graph's fp32.
    for dtype in ["bf16", "fp16"] {
        let (_t, dir) = copy_transformer();
        let f = rewrite_weights(&dir, |t| {
            for v in t.values_mut() {
                let vals = v.to_f32().unwrap();
                v.data = match dtype {
                    "bf16" => vals
                        .iter()
                        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                        .collect(),
                    _ => vals
                        .iter()
                        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                        .collect(),
                };
                v.dtype = if dtype == "bf16" {
                    wanrt::core::DType::Bfloat16
                } else {
                    wanrt::core::DType::Float16
                };
            }
        });
        assert!(f.exists());
        let out = tempfile::tempdir().unwrap();
        compile(&opts(&dir, out.path())).unwrap_or_else(|e| panic!("{dtype}: {e}"));
    }
}

#[test]
fn unknown_layout() {
    let tmp = tempfile::tempdir().unwrap();
    expect_error(
        tmp.path(),
        ErrorKind::UnknownLayout,
        &[&tmp.path().display().to_string()],
    );
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"_class_name": "UNet2DConditionModel"}"#,
    )
    .unwrap();
    expect_error(
        tmp.path(),
        ErrorKind::UnknownLayout,
        &["UNet2DConditionModel"],
    );
    let missing = tmp.path().join("nope");
    expect_error(&missing, ErrorKind::UnknownLayout, &["nope"]);
}

#[test]
fn invalid_config() {
    let (_t, dir) = copy_transformer();
    let f = dir.join("config.json");
    let text = std::fs::read_to_string(&f)
        .unwrap()
        .replace("\"num_attention_heads\": 2", "\"num_attention_heads\": 5");
    std::fs::write(&f, text).unwrap();
    expect_error(
        &dir,
        ErrorKind::ShapeMismatch,
        &["patch_embedding.weight", "[60, 16, 1, 2, 2]"],
    );
    std::fs::write(&f, "{ not json").unwrap();
    expect_error(&dir, ErrorKind::InvalidConfig, &["config.json"]);
}

#[test]
fn invalid_profiles_name_the_flag() {
    for (w, h, f, flag) in [
        (30, 32, 9, "--width"),
        (32, 40, 9, "--height"),
        (32, 32, 8, "--frames"),
    ] {
        let e = Profile::custom(w, h, f, 32).unwrap_err();
        assert!(e.to_string().contains(flag), "{e}");
    }
    // A grid beyond the RoPE table is refused before anything is written.
    let (_t, dir) = copy_transformer();
    let out = tempfile::tempdir().unwrap();
    let mut o = opts(&dir, out.path());
    o.profile = Profile::custom(4096, 32, 9, 32).unwrap();
    let mut text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    text = text.replace("\"rope_max_seq_len\": 1024", "\"rope_max_seq_len\": 64");
    std::fs::write(dir.join("config.json"), text).unwrap();
    let e = compile(&o).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn unwritable_output_directory() {
    let (_t, dir) = copy_transformer();
    // A path below a regular file cannot be created, whoever runs the test.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let e = compile(&opts(&dir, &file.join("out"))).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Output, "{e}");
    assert!(
        e.to_string().contains("plain-file") && e.to_string().contains("--out"),
        "{e}"
    );
}

#[test]
fn existing_artifacts_are_not_overwritten_unless_asked() {
    let (_t, dir) = copy_transformer();
    let out = tempfile::tempdir().unwrap();
    compile(&opts(&dir, out.path())).unwrap();
    let before = std::fs::read(out.path().join("manifest.json")).unwrap();
    let e = compile(&opts(&dir, out.path())).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Output, "{e}");
    assert!(e.to_string().contains("--overwrite"), "{e}");
    assert_eq!(
        std::fs::read(out.path().join("manifest.json")).unwrap(),
        before
    );
    let mut o = opts(&dir, out.path());
    o.overwrite = true;
    compile(&o).unwrap();
    // A failed compile with --overwrite keeps the previous artifacts intact.
    std::fs::remove_file(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    assert!(compile(&o).is_err());
    let names: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(".wanrt-staging")),
        "{names:?}"
    );
    Artifacts::open(out.path()).unwrap();
}

#[test]
fn interrupted_export_leaves_nothing() {
    let (_t, dir) = copy_transformer();
    let out = tempfile::tempdir().unwrap();
    let mut o = opts(&dir, out.path());
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    o.interrupt = Some(flag);
    let e = compile(&o).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Interrupted, "{e}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

// ---- runtime side ---------------------------------------------------------

fn compiled() -> tempfile::TempDir {
    Case::new("t2v-tiny").compile_dit(false, Precision::Fp32, BatchMode::Fixed(1))
}

#[test]
fn runtime_refuses_tampered_artifacts() {
    use wanrt::runtime::ErrorKind as R;
    // Truncated external data.
    let out = compiled();
    let data = out.path().join("dit.onnx.data");
    let len = std::fs::metadata(&data).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(len - 8)
        .unwrap();
    let e = Artifacts::open(out.path()).unwrap_err();
    assert_eq!(e.kind(), R::Artifacts);
    assert!(e.to_string().contains("dit.onnx.data"), "{e}");

    // A graph from another compile.
    let out = compiled();
    let g = out.path().join("dit.onnx");
    let mut bytes = std::fs::read(&g).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 1;
    std::fs::write(&g, bytes).unwrap();
    let e = Artifacts::open(out.path()).unwrap_err();
    assert!(e.to_string().contains("digest"), "{e}");

    // Another format version.
    let out = compiled();
    let m = out.path().join("manifest.json");
    let text = std::fs::read_to_string(&m)
        .unwrap()
        .replace("\"version\": 1", "\"version\": 7");
    std::fs::write(&m, text).unwrap();
    let e = Artifacts::open(out.path()).unwrap_err();
    assert_eq!(e.kind(), R::Artifacts);
    assert!(e.to_string().contains("version"), "{e}");

    // A missing network.
    let out = compiled();
    let a = Artifacts::open(out.path()).unwrap();
    let e = a
        .load(NetworkKind::VaeDecoder, Backend::OrtCpu)
        .err()
        .unwrap();
    assert!(e.to_string().contains("vae_decoder"), "{e}");
}

#[test]
fn runtime_refuses_inputs_of_another_profile() {
    use wanrt::runtime::ErrorKind as R;
    let out = compiled();
    let a = Artifacts::open(out.path()).unwrap();
    let mut dit = a.load(NetworkKind::Dit, Backend::OrtCpu).unwrap();
    let golden = Case::new("t2v-tiny").golden("dit.safetensors");
    let mut inputs = common::dit_inputs(&golden);
    inputs.insert(
        "hidden_states".into(),
        HostTensor::from_f32(vec![2, 16, 3, 8, 8], &vec![0.0; 2 * 16 * 3 * 64]),
    );
    let e = dit.run(&inputs).unwrap_err();
    assert_eq!(e.kind(), R::ContractMismatch);
    assert!(
        e.to_string().contains("hidden_states") && e.to_string().contains("[2, 16, 3, 8, 8]"),
        "{e}"
    );
    let mut inputs = common::dit_inputs(&golden);
    inputs.remove("timestep");
    let e = dit.run(&inputs).unwrap_err();
    assert!(e.to_string().contains("timestep"), "{e}");
}

#[test]
fn native_tensorrt_is_not_offered_and_asking_for_it_says_why() {
    // This build has no native TensorRT backend: the help does not offer it,
    // and asking for it names the path that exists (ONNX Runtime's provider).
    let (ok, help) =
        common::run_cmd(std::process::Command::new(common::bin("wan-run")).arg("--help"));
    assert!(ok, "{help}");
    let backend_help: String = help
        .lines()
        .skip_while(|l| !l.contains("--backend <"))
        .take(3)
        .collect();
    assert!(backend_help.contains("ort-tensorrt"), "{backend_help}");
    assert!(
        !backend_help
            .replace("ort-tensorrt", "")
            .contains("tensorrt"),
        "the native backend is offered: {backend_help}"
    );
    let out = compiled();
    let (ok, log) = common::run_cmd(
        std::process::Command::new(common::bin("wan-run"))
            .args(["inspect", "--load", "--backend", "tensorrt", "--engines"])
            .arg(out.path()),
    );
    assert!(!ok, "{log}");
    assert!(
        log.contains("native TensorRT backend is not part of this build")
            && log.contains("--backend ort-tensorrt"),
        "{log}"
    );
}

#[test]
fn bf16_engines_on_the_cpu_backend_fail_at_once_naming_the_flags() {
    // wan-compile's default precision (bf16, for GPUs) and the CPU provider
    // cannot work together: the refusal comes before any session is created
    // and names both the compile flag and the run flag to change.
    let out = Case::new("t2v-tiny").compile_dit(false, Precision::Bf16, BatchMode::Fixed(1));
    let a = Artifacts::open(out.path()).unwrap();
    let e = match a.load(NetworkKind::Dit, Backend::OrtCpu) {
        Err(e) => e,
        Ok(_) => panic!("bf16 loaded on the CPU provider"),
    };
    assert_eq!(e.kind(), wanrt::runtime::ErrorKind::NoKernel);
    let msg = e.to_string();
    assert!(
        msg.contains("--precision fp32") && msg.contains("--backend ort-cuda"),
        "{msg}"
    );
    // Through the binary with the default --backend auto on this CPU-only
    // machine: the same refusal, and it says which backend auto chose.
    let input = Case::new("t2v-tiny").dir.join("golden/dit.safetensors");
    let (ok, log) = common::run_cmd(
        std::process::Command::new(common::bin("wan-run"))
            .args(["component", "dit", "--engines"])
            .arg(out.path())
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(out.path().join("x.safetensors")),
    );
    assert!(!ok, "{log}");
    assert!(log.contains("backend: ort-cpu (auto:"), "{log}");
    assert!(log.contains("--precision fp32"), "{log}");
}

#[test]
fn sharded_checkpoints_load_through_their_index() {
    // Split the tiny transformer into two shards with an index, as the 14B
    // releases are: same graph, same weights.
    let (_t, dir) = copy_transformer();
    let single = dir.join("diffusion_pytorch_model.safetensors");
    let all = tensorfile::read(&single).unwrap();
    std::fs::remove_file(&single).unwrap();
    let mut shards = [BTreeMap::new(), BTreeMap::new()];
    let mut weight_map = serde_json::Map::new();
    for (i, (name, t)) in all.into_iter().enumerate() {
        let file = format!(
            "diffusion_pytorch_model-0000{}-of-00002.safetensors",
            i % 2 + 1
        );
        weight_map.insert(name.clone(), file.into());
        shards[i % 2].insert(name, t);
    }
    for (i, s) in shards.iter().enumerate() {
        tensorfile::write(
            &dir.join(format!(
                "diffusion_pytorch_model-0000{}-of-00002.safetensors",
                i + 1
            )),
            s,
            false,
        )
        .unwrap();
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        dir.join("diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    compile(&opts(&dir, out.path())).unwrap();
    let sharded = Artifacts::open(out.path())
        .unwrap()
        .entry(NetworkKind::Dit)
        .unwrap()
        .weights_digest
        .clone();
    let reference = compiled();
    let whole = Artifacts::open(reference.path())
        .unwrap()
        .entry(NetworkKind::Dit)
        .unwrap()
        .weights_digest
        .clone();
    assert_eq!(sharded, whole);

    // A shard the index names but that is missing is named.
    std::fs::remove_file(dir.join("diffusion_pytorch_model-00002-of-00002.safetensors")).unwrap();
    expect_error(
        &dir,
        ErrorKind::MissingFile,
        &["diffusion_pytorch_model-00002-of-00002.safetensors"],
    );
}

#[test]
fn unavailable_execution_provider_is_an_error_not_a_cpu_fallback() {
    // The CPU wheel of ONNX Runtime has no CUDA provider: asking for it must
    // fail loudly instead of silently running on the CPU.
    let out = compiled();
    let a = Artifacts::open(out.path()).unwrap();
    match a.load(NetworkKind::Dit, Backend::OrtCuda) {
        Err(e) => {
            assert_eq!(e.kind(), wanrt::runtime::ErrorKind::Provider, "{e}");
            assert!(e.to_string().contains("ort-cuda"), "{e}");
        }
        Ok(_) => eprintln!(
            "note: ort-cuda registered: this ONNX Runtime has that provider (a GPU build), nothing to check here"
        ),
    }
    // ort-tensorrt is refused even earlier, before any provider is
    // registered: these artifacts have no prebuilt engines (tests/engines.rs).
    match a.load(NetworkKind::Dit, Backend::OrtTensorRt) {
        Err(e) => assert_eq!(e.kind(), wanrt::runtime::ErrorKind::EngineMismatch, "{e}"),
        Ok(_) => panic!("TensorRT loaded without prebuilt engines"),
    }
}
