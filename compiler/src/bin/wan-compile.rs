//! `wan-compile`: Wan2.1 checkpoint → typed ONNX graphs → artifact directory.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::Parser;
use wanrt_compiler::export::{CompileOptions, ModelSource, compile};
use wanrt_compiler::lora::LoraSpec;
use wanrt_compiler::quant::{CalibrationOptions, QuantOptions};
use wanrt_core::profile::{DEFAULT_FRAMES, DEFAULT_TEXT_LEN};
use wanrt_core::quant::{AmaxStatistic, PrecisionChoice};
use wanrt_core::{
    AttentionKind, BatchMode, NetworkKind, Precision, Profile, QuantLayers, QuantScheme,
};

/// Compile a Wan2.1 model (original or diffusers layout) into typed ONNX
/// graphs for one resolution profile.
#[derive(Parser, Debug)]
#[command(name = "wan-compile", version)]
struct Args {
    /// Model directory (original Wan2.1 or diffusers layout, detected).
    #[arg(
        long,
        conflicts_with = "synthetic",
        required_unless_present = "synthetic"
    )]
    model: Option<PathBuf>,
    /// Random weights at a real config instead of a checkpoint:
    /// t2v-1.3B, t2v-14B, i2v-14B, vace-1.3B or vace-14B.
    #[arg(long)]
    synthetic: Option<String>,
    /// Output artifact directory.
    #[arg(long)]
    out: PathBuf,
    /// Built-in profile: 480p, 480p-portrait, 720p, 720p-portrait
    /// (default: 720p, or 480p for the 1.3B model, as the official CLI).
    #[arg(long, conflicts_with_all = ["width", "height"])]
    profile: Option<String>,
    /// Custom width (multiple of 16).
    #[arg(long, requires = "height")]
    width: Option<u32>,
    /// Custom height (multiple of 16).
    #[arg(long, requires = "width")]
    height: Option<u32>,
    /// Frame count, 4k+1 (default 81).
    #[arg(long)]
    frames: Option<u32>,
    /// Text length in tokens (default 512).
    #[arg(long)]
    text_len: Option<u32>,
    /// VACE: the number of reference images the engines take (each is one
    /// latent frame in front of the video; static shapes, default 0).
    #[arg(long, default_value_t = 0)]
    reference_images: u32,
    /// Batch of the graphs: a number (static shapes; the runtime loops) or
    /// `dynamic`.
    #[arg(long, default_value = "1")]
    batch: String,
    /// Precision written into the graphs: bf16 (default, the official
    /// compute type; for GPU backends), fp16, fp32 (for ONNX Runtime's CPU
    /// provider, which has no bf16 kernels); fp8 (the DiT's block linears in
    /// FP8 E4M3 Q/DQ for TensorRT, the rest in --fp8-base; needs
    /// --calibrate) or int8 (the DiT's block linears as W8A8 integer GEMMs
    /// for ONNX Runtime's CPU provider, the rest in fp32).
    #[arg(long, default_value = "bf16")]
    precision: PrecisionChoice,
    /// With --precision fp8: the precision of everything that is not an
    /// FP8 linear, and of the other networks (fp32 makes the graph runnable
    /// on ONNX Runtime's CPU provider).
    #[arg(long, default_value = "bf16")]
    fp8_base: Precision,
    /// With --precision fp8 (or int8): which block linears are quantized:
    /// ffn, ffn+cross (the FFN and cross-attention q/o) or all-linear.
    #[arg(long)]
    fp8_layers: Option<QuantLayers>,
    /// Calibrate FP8 activation scales over N prompts' full trajectories at
    /// this profile (every step, both CFG branches) on ONNX Runtime's CPU
    /// provider; required by --precision fp8.
    #[arg(long, value_name = "N")]
    calibrate: Option<usize>,
    /// Calibration prompts, one per line (default: a built-in set of 16
    /// varied prompts, see docs/PRECISION.md).
    #[arg(long, value_name = "FILE", requires = "calibrate")]
    calibration_prompts: Option<PathBuf>,
    /// Sampling steps of each calibration trajectory (default: the official
    /// default of the task, 50 for T2V, 40 for I2V).
    #[arg(long, requires = "calibrate")]
    calibration_steps: Option<usize>,
    /// Seed of calibration prompt k's noise is this + k.
    #[arg(long, default_value = "0", requires = "calibrate")]
    calibration_seed: u64,
    /// Make each scale from this percentile (0 < P ≤ 100) of the per-forward
    /// amax values instead of their maximum.
    #[arg(long, value_name = "P", requires = "calibrate")]
    calibration_percentile: Option<f64>,
    /// Precision of the VAE graphs (fp32 by default, as the reference
    /// recommends).
    #[arg(long, default_value = "fp32")]
    vae_precision: Precision,
    /// Do not compute the default negative prompt's embedding at compile time
    /// (it runs the text encoder on the CPU: ~25 GB for UMT5-XXL in fp32);
    /// wan-run then encodes it when needed.
    #[arg(long)]
    no_negative_cache: bool,
    /// Networks to compile, comma-separated (default: all the model has).
    #[arg(long, value_delimiter = ',')]
    networks: Vec<NetworkKind>,
    /// Also output the reference intermediates (for numeric debugging).
    #[arg(long)]
    debug_outputs: bool,
    /// Replace artifacts already in --out.
    #[arg(long)]
    overwrite: bool,
    /// Also build GPU engines ahead of time: `tensorrt` builds every
    /// network's TensorRT engines through ONNX Runtime's TensorRT provider
    /// into --out/engines, keyed in the manifest to this GPU and these
    /// library versions (needs a GPU, onnxruntime-gpu and TensorRT 10.x).
    #[arg(long, value_parser = ["tensorrt"])]
    engine: Option<String>,
    /// Merge a LoRA into the DiT at compile time, with scale SCALE (default
    /// 1.0); repeatable, applied in order. Layouts: diffusers/PEFT,
    /// kohya/musubi-tuner, ComfyUI/LightX2V extracted (`diffusion_model.`,
    /// with .diff/.diff_b/.diff_m), ai-toolkit/diffusion-pipe.
    #[arg(long, value_name = "FILE[:SCALE]")]
    lora: Vec<LoraSpec>,
    /// Merge what matches and list the LoRA keys that modify no tensor,
    /// instead of refusing the file.
    #[arg(long)]
    lora_ignore_unmatched: bool,
    /// How the DiT writes attention: auto (default: `onnx` for bf16/fp16
    /// graphs, --engine tensorrt and profiles under 1,024 tokens, `mha`
    /// otherwise, the fastest exact one on ONNX Runtime's CPU provider), onnx
    /// (opset-23 `Attention`, fused by TensorRT/CUDA), mha (ONNX Runtime's
    /// `com.microsoft.MultiHeadAttention`) or matmul (MatMul-Softmax-MatMul).
    #[arg(long, default_value = "auto", value_parser = parse_attention)]
    attention: AttentionChoice,
}

/// `--attention`: `None` is `auto` (an alias, so that clap does not read the
/// field as an optional flag).
type AttentionChoice = Option<AttentionKind>;

fn parse_attention(s: &str) -> std::result::Result<AttentionChoice, String> {
    match s {
        "auto" => Ok(None),
        other => other.parse().map(Some),
    }
}

fn profile(args: &Args, default: &str) -> Result<Profile> {
    let frames = args.frames.unwrap_or(DEFAULT_FRAMES);
    let text_len = args.text_len.unwrap_or(DEFAULT_TEXT_LEN);
    let p = match (args.width, args.height, &args.profile) {
        (Some(w), Some(h), _) => Profile::custom(w, h, frames, text_len)?,
        (_, _, name) => {
            let mut p = Profile::builtin(name.as_deref().unwrap_or(default))?;
            if args.frames.is_some() || args.text_len.is_some() {
                p = Profile::custom(p.width, p.height, frames, text_len)?;
                p.name = name.clone().unwrap_or_else(|| default.to_string());
            }
            p
        }
    };
    let batch = match args.batch.as_str() {
        "dynamic" => BatchMode::Dynamic,
        n => BatchMode::Fixed(
            n.parse()
                .with_context(|| format!("--batch: '{n}' is neither a number nor 'dynamic'"))?,
        ),
    };
    Ok(p.with_batch(batch)?
        .with_reference_images(args.reference_images)?)
}

/// The base precision and the quantization `--precision` and its companion
/// flags ask for.
fn quantization(args: &Args) -> Result<(Precision, Option<QuantOptions>)> {
    let calibration = args.calibrate.map(|n| CalibrationOptions {
        prompts: n,
        prompt_file: args.calibration_prompts.clone(),
        steps: args.calibration_steps,
        seed: args.calibration_seed,
        statistic: args
            .calibration_percentile
            .map_or(AmaxStatistic::Max, AmaxStatistic::Percentile),
    });
    match args.precision {
        PrecisionChoice::Plain(p) => {
            if args.calibrate.is_some() || args.fp8_layers.is_some() {
                anyhow::bail!(
                    "--calibrate and --fp8-layers apply to --precision fp8 (and --fp8-layers to \
                     int8), not {p}"
                );
            }
            Ok((p, None))
        }
        PrecisionChoice::Quantized(scheme) => {
            let base = match scheme {
                QuantScheme::Fp8 => args.fp8_base,
                QuantScheme::Int8 => Precision::Fp32,
            };
            Ok((
                base,
                Some(QuantOptions {
                    scheme,
                    layers: args.fp8_layers.unwrap_or(match scheme {
                        QuantScheme::Fp8 => QuantLayers::default(),
                        QuantScheme::Int8 => QuantLayers::AllLinear,
                    }),
                    calibration,
                }),
            ))
        }
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    let (precision, quant) = quantization(&args)?;
    let model = match (&args.model, &args.synthetic) {
        (Some(dir), _) => ModelSource::Dir(dir.clone()),
        (None, Some(preset)) => ModelSource::Synthetic(preset.clone()),
        (None, None) => unreachable!("clap requires one"),
    };
    let default_profile = match &args.synthetic {
        Some(p) if p == "t2v-1.3B" || p == "vace-1.3B" => "480p",
        _ => "720p",
    };
    let interrupt = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupt.clone();
        // SIGINT, SIGTERM and SIGHUP (ctrlc's `termination` feature): the
        // compile stops at the next check and removes its staging directory.
        ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C/SIGTERM/SIGHUP handler")?;
    }
    let opts = CompileOptions::new(model, args.out.clone(), profile(&args, default_profile)?)
        .with_precision(precision)
        .with_quantization(quant)
        .with_vae_precision(args.vae_precision)
        .with_negative_cache(!args.no_negative_cache)
        .with_networks(args.networks.iter().copied())
        .with_debug_outputs(args.debug_outputs)
        .with_overwrite(args.overwrite)
        .with_engine(
            args.engine
                .as_deref()
                .map(|_| wanrt_core::engines::EngineKind::Tensorrt),
        )
        .with_lora_ignore_unmatched(args.lora_ignore_unmatched)
        .with_attention(args.attention)
        .with_progress(true)
        .with_interrupt(interrupt);
    let opts = args
        .lora
        .iter()
        .cloned()
        .fold(opts, CompileOptions::with_lora);
    let start = std::time::Instant::now();
    let (manifest, reports) = compile(&opts)?;
    for entry in manifest.networks.values() {
        for l in &entry.loras {
            eprintln!(
                "merged LoRA {} ({}, scale {}): {} keys into {} tensors",
                l.file, l.layout, l.scale, l.keys_applied, l.tensors_modified
            );
            if !l.unmatched_keys.is_empty() {
                eprintln!(
                    "  {} keys matched no tensor and were ignored:",
                    l.unmatched_keys.len()
                );
                for k in &l.unmatched_keys {
                    eprintln!("    {k}");
                }
            }
        }
    }
    for r in &reports {
        eprintln!(
            "{}: {} nodes, graph {} KiB, weights {:.1} MiB, {:.1} s",
            r.network,
            r.nodes,
            r.graph_bytes / 1024,
            r.weight_bytes as f64 / (1 << 20) as f64,
            r.elapsed.as_secs_f64()
        );
    }
    let peak = wanrt_runtime::peak_rss_mib()
        .map(|m| format!(", peak RSS {m:.0} MiB"))
        .unwrap_or_default();
    let precisions: Vec<String> = manifest
        .networks
        .iter()
        .map(|(k, e)| match (k, &e.quantization) {
            (NetworkKind::Dit, Some(q)) => format!(
                "{k} {} ({}) on {} attention {}",
                q.scheme, q.layers, e.precision, e.attention
            ),
            (NetworkKind::Dit, None) => format!("{k} {} attention {}", e.precision, e.attention),
            _ => format!("{k} {}", e.precision),
        })
        .collect();
    for e in manifest.networks.values() {
        if let Some(c) = e.quantization.as_ref().and_then(|q| q.calibration.as_ref()) {
            eprintln!(
                "calibrated {} activation scales: {} prompts ({}), {} steps, {} DiT forwards, {}",
                e.quantization
                    .as_ref()
                    .map_or(0, |q| q.activation_scales.len()),
                c.prompts,
                c.prompt_set,
                c.steps,
                c.forwards,
                c.statistic
            );
        }
    }
    eprintln!(
        "wrote {} ({}; {} {}x{}x{}) in {:.1} s{peak}",
        args.out.display(),
        precisions.join(", "),
        opts.profile.name,
        opts.profile.width,
        opts.profile.height,
        opts.profile.frames,
        start.elapsed().as_secs_f64()
    );
    if manifest
        .networks
        .values()
        .any(|e| e.precision == Precision::Bf16)
    {
        eprintln!(
            "note: bf16 networks run on GPU backends (wan-run --backend ort-cuda / ort-tensorrt); \
             ONNX Runtime's CPU provider has no bf16 kernels: compile with --precision fp32 for it"
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wan-compile: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_flag_takes_auto_and_the_three_formulations() {
        let parse = |v: &str| {
            Args::try_parse_from([
                "wan-compile",
                "--synthetic",
                "t2v-1.3B",
                "--out",
                "x",
                "--attention",
                v,
            ])
        };
        assert_eq!(parse("auto").unwrap().attention, None);
        assert_eq!(parse("mha").unwrap().attention, Some(AttentionKind::Mha));
        assert_eq!(
            parse("matmul").unwrap().attention,
            Some(AttentionKind::Matmul)
        );
        assert_eq!(parse("onnx").unwrap().attention, Some(AttentionKind::Onnx));
        let e = parse("flash").unwrap_err().to_string();
        assert!(e.contains("expected onnx, mha or matmul"), "{e}");
        let default =
            Args::try_parse_from(["wan-compile", "--synthetic", "t2v-1.3B", "--out", "x"]);
        assert_eq!(default.unwrap().attention, None);
    }
}
