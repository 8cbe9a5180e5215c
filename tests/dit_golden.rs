//! Numerics of the exported DiT against the reference implementation's
//! tensors (`fixtures/*/golden/dit.safetensors`), on ONNX Runtime's CPU
//! provider, for both checkpoint layouts and both tasks.
//!
//! Tolerance tiers (|a−b| ≤ atol + rtol·|b| for fp32; relative errors for the
//! half types, whose rounding is not elementwise-bounded):
//!
//! | precision | check | justification |
//! |---|---|---|
//! | fp32 | atol 1e-4, rtol 1e-3 | the bound; measured ≈1.4e-6 max abs |
//! | fp16 | ‖Δ‖/‖b‖ ≤ 2e-3, max|Δ| ≤ 5e-3·max|b| | measured 2.8e-4 / 3.4e-4; unit roundoff 4.9e-4 |
//! | bf16 | ‖Δ‖/‖b‖ ≤ 1.2e-2, max|Δ| ≤ 3e-2·max|b| | measured 2.6e-3 / 3.8e-3; unit roundoff 3.9e-3 (8× fp16) |
//!
//! The reasoning behind the tiers is in `docs/PRECISION.md`. Each fp32
//! attention formulation (`wan-compile --attention`) is held to the same
//! reference at its own measured tier.
//!
//! bf16 runs through `wanrt::graphs::emulate` (ONNX Runtime's CPU provider
//! has no bf16 kernels): every bf16 tensor is still rounded where the shipped
//! graph rounds it.

mod common;

use common::{CASES, Case, assert_close, assert_fp32, dit_inputs, rel_errors};
use wanrt::core::{AttentionKind, BatchMode, NetworkKind, Precision};
use wanrt::graphs::onnx::ModelProto;
use wanrt::runtime::{Artifacts, Backend};

/// The tight fp32 tier (`common::assert_fp32`): measured max |Δ| 1.4e-6 (t2v), 1.3e-6 (i2v),
/// with ≤ 5× headroom.
const TIGHT: f32 = 5e-6;

fn run_dit(case: &Case, original: bool, precision: Precision, batch: BatchMode) -> Vec<f32> {
    let out = case.compile_dit(original, precision, batch);
    let golden = case.golden("dit.safetensors");
    let inputs = dit_inputs(&golden);
    let artifacts = Artifacts::open(out.path()).unwrap();
    let got = if precision == Precision::Bf16 {
        // ONNX Runtime's CPU provider has no bf16 kernels: run the shipped
        // graph through the emulation rewrite.
        common::run_bf16_emulated(out.path(), NetworkKind::Dit, &inputs)
    } else {
        let mut dit = artifacts.load(NetworkKind::Dit, Backend::OrtCpu).unwrap();
        dit.run(&inputs).unwrap()
    };
    let pred = &got["noise_pred"];
    assert_eq!(pred.shape, golden["noise_pred"].shape);
    pred.to_f32().unwrap()
}

fn want(case: &Case) -> Vec<f32> {
    case.golden("dit.safetensors")["noise_pred"]
        .to_f32()
        .unwrap()
}

#[test]
fn fp32_matches_reference_both_layouts_both_tasks() {
    for name in CASES {
        let case = Case::new(name);
        for original in [false, true] {
            let got = run_dit(&case, original, Precision::Fp32, BatchMode::Fixed(1));
            let layout = if original { "original" } else { "diffusers" };
            assert_fp32(
                &format!("{name}/{layout}/fp32 noise_pred"),
                &got,
                &want(&case),
                TIGHT,
            );
        }
    }
}

#[test]
fn fp32_dynamic_batch_equals_looped_fixed_batch() {
    let case = Case::new("t2v-tiny");
    let looped = run_dit(&case, false, Precision::Fp32, BatchMode::Fixed(1));
    let batched = run_dit(&case, false, Precision::Fp32, BatchMode::Dynamic);
    let fixed2 = run_dit(&case, false, Precision::Fp32, BatchMode::Fixed(2));
    assert_close("dynamic vs looped", &batched, &looped, 1e-5, 1e-5);
    assert_close("fixed-2 vs looped", &fixed2, &looped, 1e-5, 1e-5);
    assert_fp32("dynamic vs reference", &batched, &want(&case), TIGHT);
}

#[test]
fn fp16_within_stated_tolerance() {
    for name in CASES {
        let case = Case::new(name);
        let got = run_dit(&case, false, Precision::Fp16, BatchMode::Fixed(1));
        let (l2, max) = rel_errors(&got, &want(&case));
        eprintln!("{name}/fp16: rel L2 {l2:.3e}, max {max:.3e}");
        assert!(
            l2 <= 2e-3 && max <= 5e-3,
            "{name}/fp16: rel L2 {l2:.3e}, max {max:.3e}"
        );
    }
}

#[test]
fn bf16_within_stated_tolerance() {
    for name in CASES {
        let case = Case::new(name);
        let got = run_dit(&case, false, Precision::Bf16, BatchMode::Dynamic);
        let (l2, max) = rel_errors(&got, &want(&case));
        eprintln!("{name}/bf16 (emulated): rel L2 {l2:.3e}, max {max:.3e}");
        assert!(
            l2 <= 1.2e-2 && max <= 3e-2,
            "{name}/bf16: rel L2 {l2:.3e}, max {max:.3e}"
        );
    }
}

// bf16 on the CPU backend: tests/bad_input.rs
// (bf16_engines_on_the_cpu_backend_fail_at_once_naming_the_flags).

/// Tight fp32 tier of each attention formulation (`common::assert_fp32`):
/// the same [`TIGHT`] for all three, measured max |Δ| 1.39e-6 / 1.40e-6 /
/// 1.33e-6 (t2v: onnx / mha / matmul) and 1.22e-6 / 1.13e-6 / 1.19e-6
/// (i2v). The golden tensors come from the reference's own attention, so
/// each formulation is held to the reference, not to another formulation.
fn tight_for(kind: AttentionKind) -> f32 {
    match kind {
        AttentionKind::Onnx | AttentionKind::Mha | AttentionKind::Matmul => TIGHT,
    }
}

/// The op each formulation leaves in the graphs the runtime runs.
fn marker(kind: AttentionKind) -> (&'static str, &'static str) {
    match kind {
        AttentionKind::Onnx => ("", "Attention"),
        AttentionKind::Mha => ("com.microsoft", "MultiHeadAttention"),
        AttentionKind::Matmul => ("", "Softmax"),
    }
}

#[test]
fn fp32_every_attention_formulation_matches_reference() {
    for name in CASES {
        let case = Case::new(name);
        let golden = case.golden("dit.safetensors");
        let inputs = dit_inputs(&golden);
        for kind in AttentionKind::ALL {
            let out = tempfile::tempdir().unwrap();
            let opts = case
                .options(false, Precision::Fp32, BatchMode::Fixed(1), out.path())
                .with_networks([NetworkKind::Dit])
                .with_attention(Some(kind));
            wanrt::compiler::compile(&opts).unwrap();
            let artifacts = Artifacts::open(out.path()).unwrap();
            let entry = &artifacts.manifest.networks[&NetworkKind::Dit];
            assert_eq!(entry.attention, kind, "{name}: manifest records the choice");
            // The formulation really is in the block graphs the runtime
            // runs (and the other formulations' attention ops are not).
            let (domain, op) = marker(kind);
            let rest = entry.stage(wanrt::core::DitStage::BlockRest).unwrap();
            let model =
                ModelProto::from_bytes(&std::fs::read(out.path().join(&rest.file)).unwrap())
                    .unwrap();
            let nodes = &model.graph.as_ref().unwrap().node;
            let count = |d: &str, o: &str| {
                nodes
                    .iter()
                    .filter(|n| n.domain == d && n.op_type == o)
                    .count()
            };
            assert!(count(domain, op) > 0, "{name}/{kind}: no {domain}{op} node");
            // An `mha` graph runs MultiHeadAttention on the self-attention
            // only: its cross-attention (a few hundred keys) takes the
            // Attention op, faster there on the CPU.
            let in_block = |d: &str, o: &str, part: &str| {
                nodes
                    .iter()
                    .filter(|n| n.domain == d && n.op_type == o)
                    .all(|n| n.name.contains(part))
            };
            if kind == AttentionKind::Mha {
                assert!(
                    in_block(domain, op, ".self_attn/"),
                    "{name}: mha outside self_attn"
                );
                let (d, o) = marker(AttentionKind::Onnx);
                assert!(
                    count(d, o) > 0 && in_block(d, o, ".cross_attn/"),
                    "{name}: mha cross"
                );
            }
            for other in AttentionKind::ALL.into_iter().filter(|k| *k != kind) {
                if kind == AttentionKind::Mha && other == AttentionKind::Onnx {
                    continue;
                }
                let (d, o) = marker(other);
                assert_eq!(count(d, o), 0, "{name}/{kind}: has {other}'s {o}");
            }
            let mut dit = artifacts.load(NetworkKind::Dit, Backend::OrtCpu).unwrap();
            let got = dit.run(&inputs).unwrap()["noise_pred"].to_f32().unwrap();
            assert_fp32(
                &format!("{name}/fp32/attention {kind} noise_pred"),
                &got,
                &want(&case),
                tight_for(kind),
            );
        }
    }
}
