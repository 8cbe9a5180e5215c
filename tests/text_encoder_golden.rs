//! The exported UMT5 text encoder against the reference implementation
//! (`fixtures/*/golden/text_encoder.safetensors`: transformers'
//! `UMT5EncoderModel` on 7 prompts, and `golden/prompts.json` /
//! `pipeline.safetensors` for the whole prompt path), on ONNX Runtime's CPU
//! provider.
//!
//! Tolerance tiers (|a−b| ≤ atol + rtol·|b| for fp32; relative errors over
//! the whole `[7, L, d]` output for the half types):
//!
//! | precision | check | justification |
//! |---|---|---|
//! | fp32 | atol 1e-4, rtol 1e-3 | the bound (case.json's suggestion); measured max|Δ| 1.4e-6 / 3.5e-6 |
//! | fp16 | ‖Δ‖/‖b‖ ≤ 4e-3, max|Δ| ≤ 5e-3·max|b| | measured 8.2e-4 / 7.2e-4 (L2), 1.2e-3 / 1.1e-3 (max): ≈5× and ≈4× |
//! | bf16 | ‖Δ‖/‖b‖ ≤ 2.5e-2, max|Δ| ≤ 5e-2·max|b| | measured 8.3e-3 / 8.4e-3 (L2), 1.6e-2 / 1.2e-2 (max): ≈3×; unit roundoff 8× fp16's |
//!
//! The half-type tiers are wider than the DiT's: the official encoder keeps
//! its residual stream in the half type (only the RMS statistics and the
//! softmax are fp32), and the graph does the same, so every layer adds a
//! rounding of the hidden state itself.
//!
//! bf16 runs through `wanrt::graphs::emulate` (no bf16 CPU kernels), as in
//! `tests/dit_golden.rs`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

/// The tight fp32 tier (`common::assert_fp32`): measured max |Δ| 3.5e-6 (i2v-tiny prompt 6),
/// with ≤ 5× headroom.
const TIGHT: f32 = 1.5e-5;

use common::{CASES, Case, assert_close, assert_fp32, bin, rel_errors};
use wanrt::compiler::ErrorKind;
use wanrt::core::{BatchMode, NetworkKind, Precision};
use wanrt::runtime::prompt::{self, PromptEmbeds, PromptEncoder};
use wanrt::runtime::{Artifacts, Backend, HostTensor, session};

/// `input_ids` and `attention_mask` of the golden file.
fn golden_inputs(golden: &BTreeMap<String, HostTensor>) -> BTreeMap<String, HostTensor> {
    ["input_ids", "attention_mask"]
        .iter()
        .map(|k| (k.to_string(), golden[*k].clone()))
        .collect()
}

/// `last_hidden_state` of the compiled encoder on the golden inputs.
fn run_encoder(case: &Case, precision: Precision, batch: BatchMode) -> HostTensor {
    let out = case.compile_text_encoder(precision, batch);
    let golden = case.golden("text_encoder.safetensors");
    let inputs = golden_inputs(&golden);
    let artifacts = Artifacts::open(out.path()).unwrap();
    let got = if precision == Precision::Bf16 {
        common::run_bf16_emulated(out.path(), NetworkKind::TextEncoder, &inputs)
    } else {
        let mut net = artifacts
            .load(NetworkKind::TextEncoder, Backend::OrtCpu)
            .unwrap();
        net.run(&inputs).unwrap()
    };
    let h = got["last_hidden_state"].clone();
    assert_eq!(h.shape, golden["last_hidden_state"].shape);
    h
}

fn want(case: &Case, name: &str) -> Vec<f32> {
    case.golden("text_encoder.safetensors")[name]
        .to_f32()
        .unwrap()
}

#[test]
fn fp32_matches_reference_both_tasks() {
    for name in CASES {
        let case = Case::new(name);
        let got = run_encoder(&case, Precision::Fp32, BatchMode::Fixed(1));
        assert_fp32(
            &format!("{name}/fp32 last_hidden_state"),
            &got.to_f32().unwrap(),
            &want(&case, "last_hidden_state"),
            TIGHT,
        );
        // Trimming and zero-padding of the same output = the pipeline's
        // prompt_embeds.
        let golden = case.golden("text_encoder.safetensors");
        let ids = golden["input_ids"].to_i64().unwrap();
        let mask = golden["attention_mask"].to_i64().unwrap();
        let l = case.text_len as usize;
        let encoded: Vec<_> = (0..7)
            .map(|i| wanrt::runtime::text::Encoded {
                input_ids: ids[i * l..(i + 1) * l].to_vec(),
                attention_mask: mask[i * l..(i + 1) * l].to_vec(),
                seq_len: mask[i * l..(i + 1) * l].iter().sum::<i64>() as usize,
            })
            .collect();
        let outputs = BTreeMap::from([("last_hidden_state".to_string(), got)]);
        let embeds: Vec<f32> = prompt::embeds_from_output(&encoded, &outputs)
            .unwrap()
            .into_iter()
            .flat_map(|e| e.embeds)
            .collect();
        assert_fp32(
            &format!("{name}/fp32 prompt_embeds"),
            &embeds,
            &want(&case, "prompt_embeds"),
            TIGHT,
        );
    }
}

#[test]
fn fp32_dynamic_batch_equals_fixed_batch() {
    let case = Case::new("t2v-tiny");
    let fixed = run_encoder(&case, Precision::Fp32, BatchMode::Fixed(1));
    let dynamic = run_encoder(&case, Precision::Fp32, BatchMode::Dynamic);
    assert_close(
        "dynamic vs fixed",
        &dynamic.to_f32().unwrap(),
        &fixed.to_f32().unwrap(),
        1e-5,
        1e-5,
    );
}

#[test]
fn fp16_within_stated_tolerance() {
    for name in CASES {
        let case = Case::new(name);
        let got = run_encoder(&case, Precision::Fp16, BatchMode::Fixed(1));
        let (l2, max) = rel_errors(&got.to_f32().unwrap(), &want(&case, "last_hidden_state"));
        eprintln!("{name}/fp16: rel L2 {l2:.3e}, max {max:.3e}");
        assert!(
            l2 <= 4e-3 && max <= 5e-3,
            "{name}/fp16: rel L2 {l2:.3e}, max {max:.3e}"
        );
    }
}

#[test]
fn bf16_within_stated_tolerance() {
    for name in CASES {
        let case = Case::new(name);
        let got = run_encoder(&case, Precision::Bf16, BatchMode::Dynamic);
        let (l2, max) = rel_errors(&got.to_f32().unwrap(), &want(&case, "last_hidden_state"));
        eprintln!("{name}/bf16 (emulated): rel L2 {l2:.3e}, max {max:.3e}");
        assert!(
            l2 <= 2.5e-2 && max <= 5e-2,
            "{name}/bf16: rel L2 {l2:.3e}, max {max:.3e}"
        );
    }
}

/// The raw prompts of `prompts.json` and the pipeline's prompt pair.
fn raw_prompts(case: &Case) -> (Vec<String>, String, String) {
    let text = std::fs::read_to_string(case.dir.join("golden/prompts.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let raws = j["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["raw"].as_str().unwrap().to_string())
        .collect();
    let pipe = &j["pipeline"];
    (
        raws,
        pipe["prompt"].as_str().unwrap().to_string(),
        pipe["negative_prompt"].as_str().unwrap().to_string(),
    )
}

#[test]
fn encode_prompt_matches_golden_prompts() {
    for name in CASES {
        let case = Case::new(name);
        let out = case.compile_text_encoder(Precision::Fp32, BatchMode::Fixed(1));
        let artifacts = Artifacts::open(out.path()).unwrap();
        let mut enc = PromptEncoder::load(&artifacts, Backend::OrtCpu).unwrap();
        assert_eq!(enc.text_len(), case.text_len as usize);
        let golden = case.golden("text_encoder.safetensors");
        let ids = golden["input_ids"].to_i64().unwrap();
        let embeds = want(&case, "prompt_embeds");
        let (raws, pipe_prompt, pipe_negative) = raw_prompts(&case);
        assert_eq!(raws.len(), 7);
        let (l, d) = (enc.text_len(), enc.d_model());
        for (i, raw) in raws.iter().enumerate() {
            let got = enc.encode(raw).unwrap();
            assert_eq!(
                got.input_ids,
                ids[i * l..(i + 1) * l],
                "{name}: token ids of prompt {i} ({raw:?})"
            );
            assert_fp32(
                &format!("{name}: prompt_embeds of prompt {i}"),
                &got.embeds,
                &embeds[i * l * d..(i + 1) * l * d],
                TIGHT,
            );
        }
        // The batched call gives the same as one at a time.
        let refs: Vec<&str> = raws.iter().map(String::as_str).collect();
        let many = enc.encode_many(&refs).unwrap();
        for (i, m) in many.iter().enumerate() {
            assert_fp32(
                &format!("{name}: batched prompt {i}"),
                &m.embeds,
                &embeds[i * l * d..(i + 1) * l * d],
                TIGHT,
            );
        }
        // The pipeline's pair, the negative one given by the user (so it is
        // encoded, not taken from the cache).
        let pipeline = case.golden("pipeline.safetensors");
        let pos = enc.encode(&pipe_prompt).unwrap();
        assert_fp32(
            &format!("{name}: pipeline prompt_embeds"),
            &pos.embeds,
            &pipeline["prompt_embeds"].to_f32().unwrap(),
            TIGHT,
        );
        let neg = enc.encode_negative(&pipe_negative).unwrap();
        assert_fp32(
            &format!("{name}: pipeline negative_prompt_embeds"),
            &neg.embeds,
            &pipeline["negative_prompt_embeds"].to_f32().unwrap(),
            TIGHT,
        );
    }
}

#[test]
fn cached_negative_equals_encoding_the_default() {
    for (name, batch) in [
        ("t2v-tiny", BatchMode::Fixed(1)),
        ("i2v-tiny", BatchMode::Fixed(2)),
    ] {
        let case = Case::new(name);
        let out = case.compile_text_encoder(Precision::Fp32, batch);
        let artifacts = Artifacts::open(out.path()).unwrap();
        let entry = artifacts.entry(NetworkKind::TextEncoder).unwrap();
        let task = artifacts.manifest.model.task;
        let default = wanrt::runtime::text::default_negative_prompt(task);
        assert_eq!(entry.config["negative_prompt"], default);
        assert_eq!(
            entry.config["negative_prompt_embeds"],
            prompt::NEGATIVE_CACHE_FILE
        );
        assert_eq!(entry.config["tokenizer"], prompt::TOKENIZER_FILE);
        assert!(out.path().join(prompt::TOKENIZER_FILE).is_file());
        // Nothing else was left in the artifact directory (no emulated copy,
        // no temporary file).
        let mut files: Vec<String> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "manifest.json",
                "negative_prompt_embeds.safetensors",
                "text_encoder.onnx",
                "text_encoder.onnx.data",
                "tokenizer.json"
            ]
        );

        let mut enc = PromptEncoder::load(&artifacts, Backend::OrtCpu).unwrap();
        let cached = enc
            .cached(default)
            .unwrap()
            .expect("a cache for the default");
        let fresh = enc.encode(default).unwrap();
        assert_eq!(cached.input_ids, fresh.input_ids);
        assert_eq!(cached.seq_len, fresh.seq_len);
        assert_close(
            &format!("{name}: cached vs encoded default negative"),
            &cached.embeds,
            &fresh.embeds,
            1e-6,
            1e-6,
        );
        // An empty negative prompt means the default, served from the cache.
        assert_eq!(enc.encode_negative("").unwrap(), cached);
        // Another text is not served from the cache.
        assert!(enc.cached("blurry").unwrap().is_none());
    }
}

#[test]
fn bf16_compile_caches_through_emulation() {
    let case = Case::new("t2v-tiny");
    let out = case.compile_text_encoder(Precision::Bf16, BatchMode::Fixed(1));
    let artifacts = Artifacts::open(out.path()).unwrap();
    let entry = artifacts.entry(NetworkKind::TextEncoder).unwrap();
    assert_eq!(
        entry.config["negative_prompt_embeds_from"],
        "ort-cpu, bf16 emulated in fp32"
    );
    assert!(!out.path().join(".text_encoder.bf16-emulated.onnx").exists());
    // Close to the fp32 graph's encoding of the same prompt (bf16 tier).
    let cached = PromptEmbeds::read(&out.path().join(prompt::NEGATIVE_CACHE_FILE)).unwrap();
    let fp32 = case.compile_text_encoder(Precision::Fp32, BatchMode::Fixed(1));
    let fp32 = PromptEmbeds::read(&fp32.path().join(prompt::NEGATIVE_CACHE_FILE)).unwrap();
    assert_eq!(cached.input_ids, fp32.input_ids);
    let (l2, max) = rel_errors(&cached.embeds, &fp32.embeds);
    eprintln!("bf16 cache vs fp32 cache: rel L2 {l2:.3e}, max {max:.3e}");
    assert!(
        l2 <= 2.5e-2 && max <= 5e-2,
        "rel L2 {l2:.3e}, max {max:.3e}"
    );
    // The bf16 graph is refused on the CPU provider with a clear error.
    let e = PromptEncoder::load(&artifacts, Backend::OrtCpu).unwrap_err();
    assert_eq!(e.kind(), wanrt::runtime::ErrorKind::NoKernel, "{e}");
}

/// A writable copy of the t2v-tiny diffusers model.
fn copy_model() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("model");
    let src = Case::new("t2v-tiny").model_dir(false);
    for part in [
        "model_index.json",
        "transformer",
        "text_encoder",
        "tokenizer",
    ] {
        let from = src.join(part);
        if from.is_dir() {
            common::copy_dir(&from, &dst.join(part));
        } else {
            std::fs::create_dir_all(&dst).unwrap();
            std::fs::copy(&from, dst.join(part)).unwrap();
        }
    }
    (tmp, dst)
}

fn compile_text_encoder_of(model: &Path, out: &Path) -> wanrt::compiler::Result<()> {
    let opts = wanrt::compiler::CompileOptions::new(
        wanrt::compiler::ModelSource::Dir(model.to_path_buf()),
        out,
        Case::new("t2v-tiny").profile(BatchMode::Fixed(1)),
    )
    .with_precision(Precision::Fp32)
    .with_networks([NetworkKind::TextEncoder]);
    wanrt::compiler::compile(&opts).map(|_| ())
}

fn assert_nothing_written(out: &Path) {
    let left: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "half-written files left: {left:?}");
}

#[test]
fn broken_tokenizer_is_a_typed_error_naming_the_file() {
    let (_tmp, model) = copy_model();
    let tok = model.join("tokenizer/tokenizer.json");
    std::fs::write(&tok, b"{\"this is\": \"not a tokenizer\"}").unwrap();
    let out = tempfile::tempdir().unwrap();
    let e = compile_text_encoder_of(&model, out.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    assert!(e.to_string().contains(&tok.display().to_string()), "{e}");
    assert_nothing_written(out.path());

    std::fs::remove_file(&tok).unwrap();
    let e = compile_text_encoder_of(&model, out.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::MissingFile, "{e}");
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    assert_nothing_written(out.path());
}

#[test]
fn config_that_does_not_fit_the_weights_is_refused() {
    let (_tmp, model) = copy_model();
    let cfg = model.join("text_encoder/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"num_layers\": 2", "\"num_layers\": 1")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let e = compile_text_encoder_of(&model, out.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnusedTensors, "{e}");
    assert!(e.to_string().contains("encoder.block.1."), "{e}");
    assert_nothing_written(out.path());
}

#[test]
fn original_layout_enforces_the_xxl_preset() {
    // The fixtures' .pth holds a tiny UMT5; the original layout has no config
    // file, so the official UMT5-XXL preset applies and the first tensor
    // read (the token embedding) does not fit it.
    for name in CASES {
        let case = Case::new(name);
        let e = case
            .try_compile(
                true,
                Precision::Fp32,
                BatchMode::Fixed(1),
                &[NetworkKind::TextEncoder],
            )
            .expect_err("the tiny .pth must not fit UMT5-XXL");
        assert_eq!(e.kind(), ErrorKind::ShapeMismatch, "{e}");
        let msg = e.to_string();
        assert!(msg.contains("token_embedding.weight"), "{msg}");
        assert!(msg.contains("[256384, 4096]"), "{msg}");
        assert!(msg.contains("models_t5_umt5-xxl-enc-bf16.pth"), "{msg}");
    }
}

#[test]
fn original_layout_pth_holds_the_same_weights() {
    // Build the tiny graph straight from both checkpoints with the tiny
    // config: identical weight bytes prove every name of the .pth path.
    use wanrt::compiler::checkpoint::ModelDir;
    use wanrt::graphs::{GraphBuilder, Weights, t5};
    let case = Case::new("t2v-tiny");
    let (cfg, diff, _) = ModelDir::open(&case.model_dir(false))
        .unwrap()
        .text_encoder()
        .unwrap();
    let (_, orig, tok) = ModelDir::open(&case.model_dir(true))
        .unwrap()
        .text_encoder()
        .unwrap();
    assert!(tok.ends_with("google/umt5-xxl/tokenizer.json") && tok.is_file());
    let profile = case.profile(BatchMode::Fixed(1));
    let dir = tempfile::tempdir().unwrap();
    let digest = |src: &dyn wanrt::graphs::WeightSource, file: &str| {
        let mut b = GraphBuilder::new("text_encoder", Some(&dir.path().join(file))).unwrap();
        t5::build(
            &mut b,
            Weights::new(src),
            &cfg,
            &profile,
            &t5::T5Options::default(),
        )
        .unwrap();
        b.finish("").unwrap().weights_digest
    };
    assert_eq!(digest(&diff, "a.data"), digest(&orig, "b.data"));
    assert!(orig.unused().is_empty(), "{:?}", orig.unused());
    assert!(diff.unused().is_empty(), "{:?}", diff.unused());
}

#[test]
fn debug_outputs_expose_every_block() {
    let case = Case::new("t2v-tiny");
    let out = tempfile::tempdir().unwrap();
    wanrt::compiler::compile(
        &wanrt::compiler::CompileOptions::new(
            wanrt::compiler::ModelSource::Dir(case.model_dir(false)),
            out.path(),
            case.profile(BatchMode::Fixed(1)),
        )
        .with_precision(Precision::Fp32)
        .with_networks([NetworkKind::TextEncoder])
        .with_debug_outputs(true)
        .with_overwrite(true),
    )
    .unwrap();
    let artifacts = Artifacts::open(out.path()).unwrap();
    let mut net = artifacts
        .load(NetworkKind::TextEncoder, Backend::OrtCpu)
        .unwrap();
    let golden = case.golden("text_encoder.safetensors");
    let got = net.run(&golden_inputs(&golden)).unwrap();
    for name in [
        "intermediate.token_embedding",
        "intermediate.block_0_out",
        "intermediate.block_1_out",
    ] {
        assert_eq!(got[name].shape, vec![7, 32, 32], "{name}");
    }
    assert_fp32(
        "debug build last_hidden_state",
        &got["last_hidden_state"].to_f32().unwrap(),
        &want(&case, "last_hidden_state"),
        TIGHT,
    );
}

#[test]
fn wan_run_encode_prompt_and_component() {
    use std::process::Command;
    let case = Case::new("t2v-tiny");
    let out = case.compile_text_encoder(Precision::Fp32, BatchMode::Fixed(1));
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("prompt.safetensors");
    let (raws, _, _) = raw_prompts(&case);
    let encode = |overwrite: bool| {
        let mut cmd = Command::new(bin("wan-run"));
        cmd.args(["encode-prompt", "--engines"])
            .arg(out.path())
            .args(["--prompt", &raws[2], "--output"])
            .arg(&file);
        if overwrite {
            cmd.arg("--overwrite");
        }
        cmd.output().unwrap()
    };
    let r = encode(false);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let got = PromptEmbeds::read(&file).unwrap();
    let golden = case.golden("text_encoder.safetensors");
    let (l, d) = (32, 32);
    assert_eq!(
        got.input_ids,
        golden["input_ids"].to_i64().unwrap()[2 * l..3 * l]
    );
    assert_fp32(
        "wan-run encode-prompt",
        &got.embeds,
        &want(&case, "prompt_embeds")[2 * l * d..3 * l * d],
        TIGHT,
    );
    let r = encode(false);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("--overwrite"));
    assert!(encode(true).status.success());

    // The generic component path runs the encoder on the golden inputs.
    let comp = tmp.path().join("hidden.safetensors");
    let r = Command::new(bin("wan-run"))
        .args(["component", "text-encoder", "--engines"])
        .arg(out.path())
        .arg("--input")
        .arg(case.dir.join("golden/text_encoder.safetensors"))
        .arg("--output")
        .arg(&comp)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let hidden = wanrt::runtime::tensorfile::read(&comp).unwrap();
    assert_fp32(
        "wan-run component text-encoder",
        &hidden["last_hidden_state"].to_f32().unwrap(),
        &want(&case, "last_hidden_state"),
        TIGHT,
    );
}

/// The t2v-tiny weights with one tensor scaled so that its largest entry is
/// `peak`.
struct Scaled<'a> {
    inner: &'a dyn wanrt::graphs::WeightSource,
    name: &'static str,
    peak: f32,
}

impl wanrt::graphs::WeightSource for Scaled<'_> {
    fn tensor(&self, name: &str) -> wanrt::graphs::Result<Option<wanrt::graphs::SourceTensor<'_>>> {
        self.tensor_with_shape(name, &[])
    }
    fn location(&self, name: &str) -> String {
        self.inner.location(name)
    }
    fn tensor_with_shape(
        &self,
        name: &str,
        shape: &[usize],
    ) -> wanrt::graphs::Result<Option<wanrt::graphs::SourceTensor<'_>>> {
        let Some(t) = self.inner.tensor_with_shape(name, shape)? else {
            return Ok(None);
        };
        if name != self.name {
            return Ok(Some(t));
        }
        let v = t.to_f32(name, "test")?;
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let data: Vec<u8> = v
            .iter()
            .flat_map(|x| (x * self.peak / max).to_le_bytes())
            .collect();
        Ok(Some(wanrt::graphs::SourceTensor {
            dtype: wanrt::core::DType::Float32,
            shape: t.shape,
            data: std::borrow::Cow::Owned(data),
        }))
    }
}

#[test]
fn fp16_hidden_states_are_clamped_not_infinite() {
    use wanrt::compiler::checkpoint::ModelDir;
    use wanrt::graphs::{GraphBuilder, Weights, t5};
    let case = Case::new("t2v-tiny");
    let (cfg, ck, _) = ModelDir::open(&case.model_dir(false))
        .unwrap()
        .text_encoder()
        .unwrap();
    // Block 0's FFN output projection with entries up to 60000: its output
    // overflows fp16, as UMT5-XXL's FFN is known to in fp16.
    let src = Scaled {
        inner: &ck,
        name: "blocks.0.ffn.fc2.weight",
        peak: 60000.0,
    };
    let profile = case.profile(BatchMode::Dynamic);
    let dir = tempfile::tempdir().unwrap();
    let mut b = GraphBuilder::new("text_encoder", Some(&dir.path().join("te.onnx.data"))).unwrap();
    let opts = t5::T5Options {
        precision: Precision::Fp16,
        debug_outputs: true,
    };
    t5::build(&mut b, Weights::new(&src), &cfg, &profile, &opts).unwrap();
    let graph = dir.path().join("te.onnx");
    std::fs::write(&graph, b.finish("").unwrap().model.to_bytes()).unwrap();
    let mut s = session::create(&graph, Backend::OrtCpu).unwrap();
    let golden = case.golden("text_encoder.safetensors");
    let inputs: Vec<_> = golden_inputs(&golden).into_iter().collect();
    let got = session::run(&mut s, "text_encoder", &inputs).unwrap();
    // Block 0's second residual add leaves the fp16 range; the clamp holds it
    // at ORIG's bound instead of ±inf, and nothing downstream turns into NaN.
    let block0 = got["intermediate.block_0_out"].to_f32().unwrap();
    let peak = block0.iter().fold(0f32, |m, x| m.max(x.abs()));
    // 64504 is 64512 in fp16, in ORIG's torch.clamp as here.
    let bound = half::f16::from_f32(t5::FP16_CLAMP).to_f32();
    assert_eq!((peak, bound), (64512.0, 64512.0), "block 0 output peak");
    for (name, t) in &got {
        let v = t.to_f32().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{name} is not finite");
    }
}
