//! LoRAs merged at compile time against the reference merges
//! (`fixtures/*/lora/`): every layout (diffusers/PEFT, kohya, the extracted
//! `diffusion_model.` layout with `.diff`/`.diff_b`/`.diff_m`, ai-toolkit)
//! and a two-file stack, compiled from both checkpoint layouts at fp32 with
//! the scales of `lora.json`, the DiT run on the golden inputs on ONNX
//! Runtime's CPU provider; the merged weights tensor by tensor; and the bad
//! files a user meets (truncated, unknown layout, shape mismatch, unmatched
//! keys, NaN), each a typed error naming the key and leaving nothing in
//! `--out`.
//!
//! Tolerance tiers:
//!
//! | check | bound | measured (2-core CPU, ORT 1.31.1) |
//! |---|---|---|
//! | noise_pred | 1e-4 + 1e-3·|b| (the issue's) and max |Δ| ≤ 6e-6 | ≤ 1.26e-6 |
//! | merged weights | 1e-6 + 1e-5·|b| (lora.json's) and bit-exact | 0 (the same f32 operations in the reference's order) |

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{CASES, Case, assert_close, dit_inputs};
use wanrt::compiler::lora::{LoraFile, LoraMerge, LoraProblem, LoraSpec};
use wanrt::compiler::{CompileOptions, ErrorKind, ModelSource, compile};
use wanrt::core::{BatchMode, DType, NetworkKind, Precision};
use wanrt::graphs::WeightSource;
use wanrt::runtime::{Artifacts, Backend, HostTensor, tensorfile};

const VARIANTS: [&str; 4] = ["peft", "kohya", "comfy", "aitoolkit"];

/// Tight tier on noise_pred: max |Δ| (measured ≤ 1.26e-6; headroom ≈ 4.8×).
const NOISE_PRED_MAX_ABS: f32 = 6e-6;

fn lora_dir(case: &Case) -> PathBuf {
    case.dir.join("lora")
}

fn lora_json(case: &Case) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(lora_dir(case).join("lora.json")).unwrap())
        .unwrap()
}

/// The `(file, scale)` list of a variant or of `stack`, from lora.json.
fn members(case: &Case, set: &str) -> Vec<LoraSpec> {
    let j = lora_json(case);
    if set == "stack" {
        j["stack"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                LoraSpec::new(
                    lora_dir(case).join(m["file"].as_str().unwrap()),
                    m["scale"].as_f64().unwrap() as f32,
                )
            })
            .collect()
    } else {
        let v = &j["variants"][set];
        vec![LoraSpec::new(
            lora_dir(case).join(v["file"].as_str().unwrap()),
            v["scale"].as_f64().unwrap() as f32,
        )]
    }
}

fn dit_options(case: &Case, original: bool, out: &Path, loras: &[LoraSpec]) -> CompileOptions {
    loras.iter().cloned().fold(
        case.options(original, Precision::Fp32, BatchMode::Fixed(1), out)
            .with_networks([NetworkKind::Dit]),
        CompileOptions::with_lora,
    )
}

#[test]
fn every_layout_and_the_stack_match_the_reference_noise_pred() {
    for name in CASES {
        let case = Case::new(name);
        let golden = case.golden("dit.safetensors");
        let inputs = dit_inputs(&golden);
        let reference = tensorfile::read(&lora_dir(&case).join("lora.safetensors")).unwrap();
        let json = lora_json(&case);
        for set in VARIANTS.iter().copied().chain(["stack"]) {
            let want = reference[&format!("{set}.noise_pred")].to_f32().unwrap();
            for original in [false, true] {
                let layout = if original { "original" } else { "diffusers" };
                let out = tempfile::tempdir().unwrap();
                let specs = members(&case, set);
                let (manifest, _) = compile(&dit_options(&case, original, out.path(), &specs))
                    .unwrap_or_else(|e| panic!("{name}/{layout}/{set}: {e}"));

                // The manifest records each file in order.
                let records = &manifest.networks[&NetworkKind::Dit].loras;
                assert_eq!(records.len(), specs.len(), "{name}/{set}");
                for (r, s) in records.iter().zip(&specs) {
                    let variant = &json["variants"][r.file.trim_end_matches(".safetensors")];
                    assert_eq!(r.scale, s.scale);
                    assert_eq!(
                        r.sha256,
                        format!("sha256:{}", variant["sha256"].as_str().unwrap())
                    );
                    assert_eq!(
                        r.keys_applied as u64,
                        variant["num_tensors"].as_u64().unwrap()
                    );
                    assert!(r.unmatched_keys.is_empty());
                    assert_eq!(
                        r.tensors_modified as u64,
                        variant["result"]["touched_tensors"].as_u64().unwrap(),
                        "{name}/{set}: {}",
                        r.file
                    );
                }
                let layouts: Vec<&str> = records.iter().map(|r| r.layout.as_str()).collect();
                let expected: Vec<&str> = if set == "stack" {
                    vec!["peft", "comfy"]
                } else {
                    vec![set]
                };
                assert_eq!(layouts, expected);

                let mut dit = Artifacts::open(out.path())
                    .unwrap()
                    .load(NetworkKind::Dit, Backend::OrtCpu)
                    .unwrap();
                let got = dit.run(&inputs).unwrap()["noise_pred"].to_f32().unwrap();
                let what = format!("{name}/{layout}/{set} noise_pred");
                assert_close(&what, &got, &want, 1e-4, 1e-3);
                let max = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(max <= NOISE_PRED_MAX_ABS, "{what}: max |Δ| {max:.3e}");
            }
        }
    }
}

/// The merged float32 weights the exporter receives equal the reference's
/// merged weights (`lora_merged.safetensors`), both checkpoint layouts.
#[test]
fn merged_weights_match_the_reference_tensor_by_tensor() {
    use wanrt::compiler::checkpoint::ModelDir;
    for name in CASES {
        let case = Case::new(name);
        let merged = tensorfile::read(&lora_dir(&case).join("lora_merged.safetensors")).unwrap();
        for original in [false, true] {
            let md = ModelDir::open(&case.model_dir(original)).unwrap();
            let ck = md.dit_weights().unwrap();
            for set in VARIANTS.iter().copied().chain(["stack"]) {
                let files: Vec<LoraFile> = members(&case, set)
                    .iter()
                    .map(|s| LoraFile::open(s).unwrap())
                    .collect();
                let merge = LoraMerge::new(&ck, &files);
                let prefix = format!("{set}.");
                let mut checked = 0;
                for (key, want) in merged.iter().filter(|(k, _)| k.starts_with(&prefix)) {
                    let tensor = &key[prefix.len()..];
                    let t = merge.tensor(tensor).unwrap().expect("present");
                    assert_eq!(t.dtype, DType::Float32, "{key}: merged tensors are float32");
                    let got = t.to_f32(tensor, "").unwrap();
                    assert_eq!(
                        t.shape.iter().map(|&d| d as u64).collect::<Vec<_>>(),
                        want.shape,
                        "{key}"
                    );
                    let want = want.to_f32().unwrap();
                    assert_close(&format!("{name}/{key}"), &got, &want, 1e-6, 1e-5);
                    assert!(got == want, "{name}/{key}: not bit-exact");
                    checked += 1;
                }
                assert!(
                    checked >= 3,
                    "{name}/{set}: only {checked} reference tensors"
                );
            }
        }
    }
}

/// `FILE[:SCALE]` parsing.
#[test]
fn lora_flag_parses_file_and_scale() {
    let s: LoraSpec = "a/b.safetensors:0.7".parse().unwrap();
    assert_eq!((s.path, s.scale), (PathBuf::from("a/b.safetensors"), 0.7));
    let s: LoraSpec = "a/b.safetensors".parse().unwrap();
    assert_eq!((s.path, s.scale), (PathBuf::from("a/b.safetensors"), 1.0));
    let s: LoraSpec = "C:weird:name.safetensors".parse().unwrap();
    assert_eq!(s.path, PathBuf::from("C:weird:name.safetensors"));
    let s: LoraSpec = "x.safetensors:-1.5".parse().unwrap();
    assert_eq!(s.scale, -1.5);
    assert!("x.safetensors:inf".parse::<LoraSpec>().is_err());
    assert!(":1.0".parse::<LoraSpec>().is_err());
}

// ---------------------------------------------------------------------------
// Bad files.

fn read_lora(case: &Case, variant: &str) -> BTreeMap<String, HostTensor> {
    tensorfile::read(&lora_dir(case).join(format!("{variant}.safetensors"))).unwrap()
}

fn write_lora(dir: &Path, name: &str, tensors: &BTreeMap<String, HostTensor>) -> PathBuf {
    let p = dir.join(name);
    tensorfile::write(&p, tensors, true).unwrap();
    p
}

/// Compiles t2v-tiny's DiT with `lora` (diffusers layout, or a synthetic
/// source at the tiny config when `synthetic`, where there is no precheck
/// and the failure happens in the middle of the export) and returns the
/// error, checking that `--out` holds nothing afterwards.
fn refused(lora: &Path, synthetic: bool) -> wanrt::compiler::Error {
    let case = Case::new("t2v-tiny");
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("out");
    let spec = LoraSpec::new(lora, 1.0);
    let opts = if synthetic {
        let config = wanrt::compiler::checkpoint::ModelDir::open(&case.model_dir(false))
            .unwrap()
            .dit_config()
            .unwrap();
        CompileOptions::new(
            ModelSource::SyntheticConfig {
                name: "tiny".into(),
                config,
            },
            &out,
            case.profile(BatchMode::Fixed(1)),
        )
        .with_precision(Precision::Fp32)
        .with_networks([NetworkKind::Dit])
        .with_lora(spec)
    } else {
        dit_options(&case, false, &out, &[spec])
    };
    let e = compile(&opts).expect_err("must refuse the LoRA");
    let left: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{e}: --out holds {left:?}");
    e
}

fn bf16_tensor(shape: Vec<u64>, values: &[f32]) -> HostTensor {
    HostTensor {
        dtype: DType::Bfloat16,
        shape,
        data: values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

#[test]
fn truncated_lora_is_a_typed_error_naming_the_tensor() {
    let case = Case::new("t2v-tiny");
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(lora_dir(&case).join("kohya.safetensors")).unwrap();
    let p = dir.path().join("cut.safetensors");
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let e = refused(&p, false);
    assert_eq!(e.kind(), ErrorKind::Lora(LoraProblem::Corrupt), "{e}");
    assert!(e.to_string().contains("cut.safetensors"), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
    // Not a safetensors file at all.
    std::fs::write(&p, b"not a safetensors file").unwrap();
    let e = refused(&p, false);
    assert_eq!(e.kind(), ErrorKind::Lora(LoraProblem::Corrupt), "{e}");
    // A missing file.
    let e = refused(&dir.path().join("absent.safetensors"), false);
    assert_eq!(e.kind(), ErrorKind::MissingFile, "{e}");
    assert!(e.to_string().contains("--lora"), "{e}");
}

#[test]
fn unknown_layouts_are_typed_errors_naming_the_key() {
    let case = Case::new("t2v-tiny");
    let dir = tempfile::tempdir().unwrap();
    // A key of no layout.
    let mut t = read_lora(&case, "kohya");
    let (k, v) = t.pop_first().unwrap();
    t.insert(format!("model.{k}"), v);
    let e = refused(&write_lora(dir.path(), "odd.safetensors", &t), false);
    assert_eq!(e.kind(), ErrorKind::Lora(LoraProblem::UnknownLayout), "{e}");
    assert!(e.to_string().contains(&format!("model.{k}")), "{e}");
    // Keys of two layouts in one file.
    let mut t = read_lora(&case, "kohya");
    t.extend(read_lora(&case, "peft"));
    let e = refused(&write_lora(dir.path(), "mixed.safetensors", &t), false);
    assert_eq!(e.kind(), ErrorKind::Lora(LoraProblem::UnknownLayout), "{e}");
    assert!(e.to_string().contains("two layouts"), "{e}");
}

#[test]
fn shape_and_rank_mismatches_are_typed_errors_naming_the_key() {
    let case = Case::new("t2v-tiny");
    let dir = tempfile::tempdir().unwrap();
    let key = "lora_unet_blocks_1_ffn_0.lora_down.weight";
    // Rank mismatch: down has rank 3, up rank 4.
    let mut t = read_lora(&case, "kohya");
    let down = &t[key];
    let inp = down.shape[1];
    t.insert(
        key.into(),
        bf16_tensor(vec![3, inp], &vec![0.01; 3 * inp as usize]),
    );
    let e = refused(&write_lora(dir.path(), "rank.safetensors", &t), false);
    assert_eq!(e.kind(), ErrorKind::Lora(LoraProblem::Shape), "{e}");
    assert!(e.to_string().contains("lora_unet_blocks_1_ffn_0"), "{e}");
    assert!(e.to_string().contains("rank"), "{e}");

    // The pair fits itself but not the tensor: in-features 1 too many. In
    // the precheck (checkpoint) and in the middle of an export (synthetic).
    let mut t = read_lora(&case, "kohya");
    t.insert(
        key.into(),
        bf16_tensor(vec![4, inp + 1], &vec![0.01; 4 * (inp as usize + 1)]),
    );
    let p = write_lora(dir.path(), "shape.safetensors", &t);
    for synthetic in [false, true] {
        let e = refused(&p, synthetic);
        assert_eq!(e.kind(), ErrorKind::Lora(LoraProblem::Shape), "{e}");
        assert!(e.to_string().contains("blocks.1.ffn.0.weight"), "{e}");
        assert!(e.to_string().contains("lora_unet_blocks_1_ffn_0"), "{e}");
    }

    // A .diff of another shape than its tensor.
    let mut t = read_lora(&case, "comfy");
    let k = "diffusion_model.blocks.0.norm3.diff";
    let n = t[k].shape[0];
    t.insert(
        k.into(),
        bf16_tensor(vec![n + 2], &vec![0.0; n as usize + 2]),
    );
    let e = refused(&write_lora(dir.path(), "diff.safetensors", &t), false);
    assert_eq!(e.kind(), ErrorKind::Lora(LoraProblem::Shape), "{e}");
    assert!(e.to_string().contains(k), "{e}");
}

#[test]
fn unmatched_keys_are_refused_or_listed_with_the_flag() {
    let case = Case::new("t2v-tiny");
    let dir = tempfile::tempdir().unwrap();
    let mut t = read_lora(&case, "comfy");
    // A block the tiny model does not have, and a module it has no tensor of.
    let down = t["diffusion_model.blocks.1.self_attn.q.lora_down.weight"].clone();
    let up = t["diffusion_model.blocks.1.self_attn.q.lora_up.weight"].clone();
    t.insert(
        "diffusion_model.blocks.7.self_attn.q.lora_down.weight".into(),
        down,
    );
    t.insert(
        "diffusion_model.blocks.7.self_attn.q.lora_up.weight".into(),
        up,
    );
    let extra_diff = t["diffusion_model.blocks.0.norm3.diff"].clone();
    t.insert("diffusion_model.blocks.0.norm2.diff".into(), extra_diff);
    let p = write_lora(dir.path(), "extra.safetensors", &t);
    for synthetic in [false, true] {
        let e = refused(&p, synthetic);
        assert_eq!(e.kind(), ErrorKind::Lora(LoraProblem::Unmatched), "{e}");
        assert!(e.to_string().contains("diffusion_model.blocks."), "{e}");
        assert!(e.to_string().contains("3 such keys"), "{e}");
        assert!(e.to_string().contains("--lora-ignore-unmatched"), "{e}");
    }

    // With the flag: the rest is merged (the reference's comfy result) and
    // the three keys are listed in the manifest.
    let out = tempfile::tempdir().unwrap();
    let opts = dit_options(&case, false, out.path(), &[LoraSpec::new(&p, 1.0)])
        .with_lora_ignore_unmatched(true);
    let (manifest, _) = compile(&opts).unwrap();
    let r = &manifest.networks[&NetworkKind::Dit].loras[0];
    assert_eq!(
        r.unmatched_keys,
        [
            "diffusion_model.blocks.0.norm2.diff",
            "diffusion_model.blocks.7.self_attn.q.lora_down.weight",
            "diffusion_model.blocks.7.self_attn.q.lora_up.weight",
        ]
    );
    let on_disk = wanrt::core::Manifest::read(out.path()).unwrap();
    assert_eq!(on_disk.networks[&NetworkKind::Dit].loras[0], *r);
    let inputs = dit_inputs(&case.golden("dit.safetensors"));
    let mut dit = Artifacts::open(out.path())
        .unwrap()
        .load(NetworkKind::Dit, Backend::OrtCpu)
        .unwrap();
    let got = dit.run(&inputs).unwrap()["noise_pred"].to_f32().unwrap();
    let want =
        tensorfile::read(&lora_dir(&case).join("lora.safetensors")).unwrap()["comfy.noise_pred"]
            .to_f32()
            .unwrap();
    assert_close("comfy with ignored extras", &got, &want, 1e-4, 1e-3);
}

#[test]
fn non_finite_values_are_typed_errors_naming_the_key() {
    let case = Case::new("t2v-tiny");
    let dir = tempfile::tempdir().unwrap();
    let key = "transformer.blocks.1.attn2.to_v.lora_B.weight";
    let mut t = read_lora(&case, "peft");
    let mut v = t[key].to_f32().unwrap();
    v[5] = f32::NAN;
    t.insert(key.into(), bf16_tensor(t[key].shape.clone(), &v));
    let e = refused(&write_lora(dir.path(), "nan.safetensors", &t), false);
    assert_eq!(e.kind(), ErrorKind::Lora(LoraProblem::NonFinite), "{e}");
    assert!(e.to_string().contains(key), "{e}");

    // Finite factors whose merge overflows float32.
    let mut t = read_lora(&case, "kohya");
    let k = "lora_unet_blocks_0_self_attn_q.lora_up.weight";
    let n = t[k].numel();
    t.insert(k.into(), bf16_tensor(t[k].shape.clone(), &vec![3e38; n]));
    let k = "lora_unet_blocks_0_self_attn_q.lora_down.weight";
    let n = t[k].numel();
    t.insert(k.into(), bf16_tensor(t[k].shape.clone(), &vec![3e38; n]));
    let e = refused(&write_lora(dir.path(), "inf.safetensors", &t), false);
    assert_eq!(e.kind(), ErrorKind::Lora(LoraProblem::NonFinite), "{e}");
    assert!(e.to_string().contains("blocks.0.self_attn.q.weight"), "{e}");
}

#[test]
fn lora_without_the_dit_is_refused() {
    let case = Case::new("t2v-tiny");
    let out = tempfile::tempdir().unwrap();
    let mut opts = dit_options(&case, false, out.path(), &members(&case, "peft"));
    opts.networks = vec![NetworkKind::VaeDecoder];
    let e = compile(&opts).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("--lora"), "{e}");
}
