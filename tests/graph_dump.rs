//! The text dump of each tiny graph is checked in (`tests/expected/`), so a
//! change of an exported graph shows up in review. After an intended change,
//! regenerate with `WANRT_BLESS=1 cargo test --test graph_dump` and review
//! the diff.

mod common;

use common::{CASES, Case};
use wanrt::core::{AttentionKind, BatchMode, Precision};
use wanrt::graphs::dump::dump;
use wanrt::graphs::onnx::ModelProto;

fn check(case: &'static str, precision: Precision) {
    let c = Case::new(case);
    let out = c.compile_dit(false, precision, BatchMode::Fixed(1));
    let model =
        ModelProto::from_bytes(&std::fs::read(out.path().join("dit.onnx")).unwrap()).unwrap();
    // The same comparison (and WANRT_BLESS) as every other network's dump.
    check_text(&format!("dit-{case}-{precision}"), &dump(&model));
}

#[test]
fn dit_fp32_dumps_match() {
    for case in CASES {
        check(case, Precision::Fp32);
    }
}

/// The default fp32 dumps above have the `Attention` op (`auto` writes it
/// for the tiny cases' 12 tokens); the other two formulations of
/// `wan-compile --attention` have their own.
#[test]
fn dit_fp32_dumps_of_the_other_attention_formulations_match() {
    let c = Case::new("t2v-tiny");
    for kind in [AttentionKind::Mha, AttentionKind::Matmul] {
        let out = tempfile::tempdir().unwrap();
        let opts = c
            .options(false, Precision::Fp32, BatchMode::Fixed(1), out.path())
            .with_networks([wanrt::core::NetworkKind::Dit])
            .with_attention(Some(kind));
        wanrt::compiler::compile(&opts).unwrap();
        let model =
            ModelProto::from_bytes(&std::fs::read(out.path().join("dit.onnx")).unwrap()).unwrap();
        check_text(
            &format!("dit-t2v-tiny-fp32-attention-{kind}"),
            &dump(&model),
        );
    }
}

#[test]
fn dit_bf16_dump_matches() {
    check("t2v-tiny", Precision::Bf16);
}

#[test]
fn both_layouts_give_the_same_graph() {
    let c = Case::new("i2v-tiny");
    let a = c.compile_dit(false, Precision::Fp32, BatchMode::Fixed(1));
    let b = c.compile_dit(true, Precision::Fp32, BatchMode::Fixed(1));
    let read = |d: &std::path::Path| std::fs::read(d.join("dit.onnx")).unwrap();
    assert_eq!(
        read(a.path()),
        read(b.path()),
        "graph protos differ between layouts"
    );
    let digest = |d: &std::path::Path| {
        wanrt::runtime::Artifacts::open(d)
            .unwrap()
            .manifest
            .networks
            .values()
            .next()
            .unwrap()
            .weights_digest
            .clone()
    };
    assert_eq!(
        digest(a.path()),
        digest(b.path()),
        "weights differ between layouts"
    );
}

/// Compares `text` with `tests/expected/<stem>.txt` (or writes it under
/// `WANRT_BLESS=1`).
fn check_text(stem: &str, text: &str) {
    let expected = common::fixtures()
        .parent()
        .unwrap()
        .join("expected")
        .join(format!("{stem}.txt"));
    if std::env::var_os("WANRT_BLESS").is_some() {
        std::fs::write(&expected, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&expected).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with WANRT_BLESS=1 to create it)",
            expected.display()
        )
    });
    if text != want {
        let first = text
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(text.lines().count().min(want.lines().count()));
        panic!(
            "graph dump {stem} differs from {} at line {}:\n  got:  {}\n  want: {}\n(if intended: WANRT_BLESS=1 cargo test --test graph_dump)",
            expected.display(),
            first + 1,
            text.lines().nth(first).unwrap_or("<end>"),
            want.lines().nth(first).unwrap_or("<end>")
        );
    }
}

#[test]
fn image_encoder_fp32_dump_matches() {
    let out = Case::new("i2v-tiny")
        .try_compile(
            false,
            Precision::Fp32,
            BatchMode::Fixed(1),
            &[wanrt::core::NetworkKind::ImageEncoder],
        )
        .unwrap();
    let model =
        ModelProto::from_bytes(&std::fs::read(out.path().join("image_encoder.onnx")).unwrap())
            .unwrap();
    check_text("image_encoder-i2v-tiny-fp32", &dump(&model));
}

#[test]
fn text_encoder_fp32_dump_matches() {
    let c = Case::new("t2v-tiny");
    let out = c.compile_text_encoder(Precision::Fp32, BatchMode::Fixed(1));
    let model =
        ModelProto::from_bytes(&std::fs::read(out.path().join("text_encoder.onnx")).unwrap())
            .unwrap();
    let text = dump(&model);
    let expected = common::fixtures()
        .parent()
        .unwrap()
        .join("expected")
        .join("text_encoder-t2v-tiny-fp32.txt");
    if std::env::var_os("WANRT_BLESS").is_some() {
        std::fs::write(&expected, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&expected).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with WANRT_BLESS=1 to create it)",
            expected.display()
        )
    });
    if let Some((i, (a, b))) = text
        .lines()
        .zip(want.lines())
        .enumerate()
        .find(|(_, (a, b))| a != b)
    {
        panic!(
            "graph dump of the t2v-tiny fp32 text encoder differs from {} at line {}:\n  got:  {a}\n  want: {b}\n(if intended: WANRT_BLESS=1 cargo test --test graph_dump)",
            expected.display(),
            i + 1
        );
    }
    assert_eq!(
        text.lines().count(),
        want.lines().count(),
        "graph dump of the t2v-tiny fp32 text encoder: line count differs from {}",
        expected.display()
    );
}

/// The quantized DiT graphs (`--precision fp8` with an fp32 base and the
/// default layer set, calibrated on one prompt for two steps; `--precision
/// int8`). The dump lists dtypes and nodes, not values, so it does not move
/// with the calibrated scales.
#[test]
fn dit_quantized_dumps_match() {
    use wanrt::compiler::quant::{CalibrationOptions, QuantOptions};
    use wanrt::core::{QuantLayers, QuantScheme};
    for case in CASES {
        let c = Case::new(case);
        for scheme in [QuantScheme::Fp8, QuantScheme::Int8] {
            let out = tempfile::tempdir().unwrap();
            let q = QuantOptions {
                scheme,
                layers: match scheme {
                    QuantScheme::Fp8 => QuantLayers::default(),
                    QuantScheme::Int8 => QuantLayers::AllLinear,
                },
                calibration: (scheme == QuantScheme::Fp8).then(|| CalibrationOptions {
                    steps: Some(2),
                    ..CalibrationOptions::new(1)
                }),
            };
            let mut opts = c
                .options(false, Precision::Fp32, BatchMode::Fixed(1), out.path())
                .with_quantization(Some(q));
            opts.networks = vec![wanrt::core::NetworkKind::Dit];
            wanrt::compiler::compile(&opts).unwrap();
            let model =
                ModelProto::from_bytes(&std::fs::read(out.path().join("dit.onnx")).unwrap())
                    .unwrap();
            check_text(&format!("dit-{case}-{scheme}"), &dump(&model));
        }
    }
}

/// The DiT's step-cache graphs (`docs/WAN.md` §15): each dump is checked
/// in, and the manifest lists each graph with the I/O of its contract.
#[test]
fn dit_cache_graph_dumps_match_their_contract() {
    use wanrt::core::{DitConfig, NetworkContract, NetworkKind};
    let c = Case::new("t2v-tiny");
    let out = c.compile_dit(false, Precision::Fp32, BatchMode::Fixed(1));
    let a = wanrt::runtime::Artifacts::open(out.path()).unwrap();
    let entry = &a.manifest.networks[&NetworkKind::Dit];
    let cfg: DitConfig = serde_json::from_value(entry.config.clone()).unwrap();
    let want = NetworkContract::dit_cache_graphs(&cfg, &entry.profile).unwrap();
    assert_eq!(entry.cache_graphs.len(), want.len());
    for (g, (graph, contract)) in entry.cache_graphs.iter().zip(&want) {
        assert_eq!(g.role, graph.name());
        assert_eq!(g.inputs, contract.inputs, "{}", g.role);
        assert_eq!(g.outputs, contract.outputs, "{}", g.role);
        let model =
            ModelProto::from_bytes(&std::fs::read(out.path().join(&g.file)).unwrap()).unwrap();
        check_text(&format!("dit-t2v-tiny-{}", g.role), &dump(&model));
    }
}
