//! Shared helpers of the integration tests: fixture paths, compiling a tiny
//! case into a temporary artifact directory, and tolerance checks.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use wanrt::compiler::{CompileOptions, ModelSource, compile};
use wanrt::core::{BatchMode, Precision, Profile};
use wanrt::runtime::{HostTensor, tensorfile};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A golden case: `t2v-tiny` or `i2v-tiny`.
pub struct Case {
    pub name: &'static str,
    pub dir: PathBuf,
    pub text_len: u32,
}

pub const CASES: [&str; 2] = ["t2v-tiny", "i2v-tiny"];

impl Case {
    pub fn new(name: &'static str) -> Self {
        let dir = fixtures().join(name);
        let case: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
        let text_len = case["max_sequence_length"].as_u64().unwrap() as u32;
        Case {
            name,
            dir,
            text_len,
        }
    }

    /// The case's size, frames and text length.
    pub fn profile(&self, batch: BatchMode) -> Profile {
        Profile::custom(32, 32, 9, self.text_len)
            .unwrap()
            .with_batch(batch)
            .unwrap()
    }

    pub fn golden(&self, file: &str) -> BTreeMap<String, HostTensor> {
        tensorfile::read(&self.dir.join("golden").join(file)).unwrap()
    }

    /// `model/` (diffusers layout) or `model/original/`.
    pub fn model_dir(&self, original: bool) -> PathBuf {
        if original {
            self.dir.join("model/original")
        } else {
            self.dir.join("model")
        }
    }

    /// Compiles the DiT of this case into a fresh temporary directory.
    pub fn compile_dit(
        &self,
        original: bool,
        precision: Precision,
        batch: BatchMode,
    ) -> tempfile::TempDir {
        let out = tempfile::tempdir().unwrap();
        let opts = self
            .options(original, precision, batch, out.path())
            .with_networks([wanrt::core::NetworkKind::Dit]);
        compile(&opts).unwrap_or_else(|e| {
            panic!(
                "compiling {} ({}): {e}",
                self.name,
                if original { "original" } else { "diffusers" }
            )
        });
        out
    }
}

/// `|a − b| ≤ atol + rtol·|b|` everywhere; panics with the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0f32);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(a.is_finite(), "{what}[{i}] = {a}");
        let ratio = (a - b).abs() / (atol + rtol * b.abs());
        if ratio > worst.1 {
            worst = (i, ratio);
        }
    }
    let (i, r) = worst;
    let max_abs = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("{what}: max |a-b| {max_abs:.3e}, worst ratio to tolerance {r:.3}");
    assert!(
        r <= 1.0,
        "{what}: element {i} is {} vs {} (|a-b| {:.3e} > {atol} + {rtol}·|b|)",
        got[i],
        want[i],
        (got[i] - want[i]).abs()
    );
}

/// The fp32 check against a golden tensor, in two tiers: the contract
/// (`|a − b| ≤ 1e-4 + 1e-3·|b|`, the bound the issues set) and a tight tier,
/// `max |a − b| ≤ tight`, where `tight` is the error measured on this case
/// with at most 5× headroom (recorded beside each call), so that a
/// regression of one order of magnitude fails even while it is still inside
/// the contract.
pub fn assert_fp32(what: &str, got: &[f32], want: &[f32], tight: f32) {
    assert_close(what, got, want, 1e-4, 1e-3);
    let max_abs = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        max_abs <= tight,
        "{what}: max |a-b| {max_abs:.3e} exceeds the tight tier {tight:.1e} (the error measured \
         when the tier was set, with ≤ 5× headroom): a numeric regression"
    );
}

/// Relative L2 error ‖a − b‖ / ‖b‖ and max error relative to max |b|.
pub fn rel_errors(got: &[f32], want: &[f32]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "rel_errors: lengths differ");
    let (mut num, mut den, mut max_err, mut max_ref) = (0f64, 0f64, 0f64, 0f64);
    for (a, b) in got.iter().zip(want) {
        let (a, b) = (*a as f64, *b as f64);
        num += (a - b) * (a - b);
        den += b * b;
        max_err = max_err.max((a - b).abs());
        max_ref = max_ref.max(b.abs());
    }
    ((num / den).sqrt(), max_err / max_ref)
}

/// The DiT inputs of the golden file.
pub fn dit_inputs(golden: &BTreeMap<String, HostTensor>) -> BTreeMap<String, HostTensor> {
    golden
        .iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "hidden_states"
                    | "timestep"
                    | "encoder_hidden_states"
                    | "encoder_hidden_states_image"
                    | "control_hidden_states"
                    | "control_hidden_states_scale"
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Case {
    /// Compiles `networks` of this case into a fresh temporary directory,
    /// returning the compiler's error (for tests of refusals).
    pub fn try_compile(
        &self,
        original: bool,
        precision: Precision,
        batch: BatchMode,
        networks: &[wanrt::core::NetworkKind],
    ) -> Result<tempfile::TempDir, wanrt::compiler::Error> {
        let out = tempfile::tempdir().unwrap();
        let mut opts = self.options(original, precision, batch, out.path());
        opts.networks = networks.to_vec();
        compile(&opts).map(|_| out)
    }

    /// Options compiling this case (size, frames, text length) into `out`.
    pub fn options(
        &self,
        original: bool,
        precision: Precision,
        batch: BatchMode,
        out: &Path,
    ) -> CompileOptions {
        CompileOptions::new(
            ModelSource::Dir(self.model_dir(original)),
            out,
            self.profile(batch),
        )
        .with_precision(precision)
        .with_overwrite(true)
    }
}

/// Runs network `kind` of the artifact directory `dir` compiled in bf16 on
/// ONNX Runtime's CPU provider, through `wanrt::graphs::emulate::emulate_bf16`
/// (the CPU provider has no bf16 kernels; every tensor the shipped graph
/// holds in bf16 is still rounded where the graph rounds it).
pub fn run_bf16_emulated(
    dir: &Path,
    kind: wanrt::core::NetworkKind,
    inputs: &BTreeMap<String, HostTensor>,
) -> BTreeMap<String, HostTensor> {
    use wanrt::runtime::{Artifacts, Backend, session};
    let artifacts = Artifacts::open(dir).unwrap();
    let entry = artifacts.entry(kind).unwrap();
    let path = dir.join(&entry.file);
    let mut model =
        wanrt::graphs::onnx::ModelProto::from_bytes(&std::fs::read(&path).unwrap()).unwrap();
    assert!(wanrt::graphs::emulate::emulate_bf16(&mut model) > 0);
    let emulated = dir.join(format!("{kind}.emulated.onnx"));
    std::fs::write(&emulated, model.to_bytes()).unwrap();
    let mut s = session::create(&emulated, Backend::OrtCpu).unwrap();
    let ordered: Vec<_> = entry
        .inputs
        .iter()
        .map(|spec| (spec.name.clone(), inputs[&spec.name].clone()))
        .collect();
    session::run(&mut s, kind.name(), &ordered).unwrap()
}

impl Case {
    /// Compiles the text encoder of this case (diffusers layout) into a
    /// fresh temporary directory.
    pub fn compile_text_encoder(
        &self,
        precision: Precision,
        batch: BatchMode,
    ) -> tempfile::TempDir {
        self.try_compile(
            false,
            precision,
            batch,
            &[wanrt::core::NetworkKind::TextEncoder],
        )
        .unwrap_or_else(|e| panic!("compiling the text encoder of {}: {e}", self.name))
    }
}

/// Copies a directory tree (small fixtures only).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// A case's conditioning image (`golden/image.png`), decoded as `--image`
/// decodes it.
pub fn golden_image(case_dir: &Path) -> wanrt::runtime::pipeline::InputImage {
    let p = case_dir.join("golden/image.png");
    let pixels = wanrt::media::image::load_image(&p).expect("the golden image decodes");
    wanrt::runtime::pipeline::InputImage::new(pixels, p.display().to_string())
}

/// A workspace binary, built by `cargo build --workspace --bins`
/// (`scripts/test.sh` does) into the same target directory as this test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// Runs a command: (success, stdout + stderr).
pub fn run_cmd(cmd: &mut std::process::Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

impl Case {
    /// The case's `case.json`.
    pub fn case_json(&self) -> serde_json::Value {
        let path = self.dir.join("case.json");
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The reference pipeline run of `case.json` as the library's options:
    /// its prompts, steps, guidance and shift, UniPC, the golden initial
    /// latents, and for i2v-tiny the golden image (other tasks set their
    /// images themselves).
    pub fn pipeline_options(&self) -> wanrt::runtime::pipeline::GenerateOptions {
        let json = self.case_json();
        let p = &json["pipeline"];
        let golden = self.golden("pipeline.safetensors");
        wanrt::runtime::pipeline::GenerateOptions {
            prompt: p["prompt"].as_str().unwrap().into(),
            negative_prompt: Some(p["negative_prompt"].as_str().unwrap().into()),
            image: (self.name == "i2v-tiny").then(|| golden_image(&self.dir)),
            steps: Some(p["num_inference_steps"].as_u64().unwrap() as usize),
            guidance_scale: Some(p["guidance_scale"].as_f64().unwrap() as f32),
            shift: Some(p["flow_shift"].as_f64().unwrap()),
            solver: wanrt::runtime::schedule::Solver::UniPc,
            seed: 0,
            latents: Some(golden["latents_init"].clone()),
            ..Default::default()
        }
    }
}

/// `wan-run component dit` of `engines` on `golden` (a golden
/// `dit.safetensors`) into `output`, then `wan-run compare` of its
/// `noise_pred` with the golden's: both commands must succeed.
pub fn cli_dit_matches_golden(engines: &Path, golden: &Path, output: &Path) {
    let (ok, log) = run_cmd(
        std::process::Command::new(bin("wan-run"))
            .args(["component", "dit", "--backend", "ort-cpu", "--engines"])
            .arg(engines)
            .arg("--input")
            .arg(golden)
            .arg("--output")
            .arg(output),
    );
    assert!(ok, "{log}");
    let (ok, log) = run_cmd(
        std::process::Command::new(bin("wan-run"))
            .args(["compare", "--tensor", "noise_pred", "--input"])
            .arg(output)
            .arg("--reference")
            .arg(golden),
    );
    assert!(ok && log.contains("ok"), "{log}");
}
