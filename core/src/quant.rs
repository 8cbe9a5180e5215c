//! Quantized DiT engines: which block linears are quantized, in which
//! format, and the scales a compile wrote (`docs/PRECISION.md`, "Quantized
//! DiT engines"; `docs/WAN.md` §16).
//!
//! A quantized DiT keeps its [`crate::Precision`] as the *base*: everything
//! that is not a quantized linear (embeddings, modulation, norms, RoPE,
//! softmax, the head) computes as that precision says. The manifest records
//! the quantization beside it ([`Quantization`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::dtype::Precision;

/// Largest finite FP8 E4M3 (`FLOAT8E4M3FN`) value: `1.75 · 2⁸`.
pub const FP8_E4M3_MAX: f32 = 448.0;

/// Largest magnitude of a symmetric INT8 weight (−127..=127; −128 unused so
/// the grid is symmetric).
pub const INT8_WEIGHT_MAX: f32 = 127.0;

/// How the quantized linears compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantScheme {
    /// FP8 E4M3 QuantizeLinear → DequantizeLinear on the activation (one
    /// static per-tensor scale from calibration) and FP8 weights with one
    /// scale per output channel behind a DequantizeLinear: the pattern
    /// TensorRT fuses into FP8 GEMMs.
    Fp8,
    /// W8A8 for ONNX Runtime's CPU provider: uint8 activations quantized per
    /// tensor at run time (`DynamicQuantizeLinear`), int8 weights with one
    /// scale per output channel, `MatMulInteger` (fused by ONNX Runtime into
    /// `DynamicQuantizeMatMul`).
    Int8,
}

impl QuantScheme {
    pub fn name(self) -> &'static str {
        match self {
            QuantScheme::Fp8 => "fp8",
            QuantScheme::Int8 => "int8",
        }
    }
}

impl fmt::Display for QuantScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which linears of every transformer block are quantized
/// (`--fp8-layers`). Nothing outside the blocks ever is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum QuantLayers {
    /// `ffn.0` and `ffn.2`.
    #[serde(rename = "ffn")]
    Ffn,
    /// The FFN and the cross-attention's `q` and `o` (the projections that
    /// see the video tokens; `k`/`v` see the text context).
    #[default]
    #[serde(rename = "ffn+cross")]
    FfnCross,
    /// Every block linear: self-attention q/k/v/o, cross-attention
    /// q/k/v/o (and I2V's k_img/v_img), the FFN.
    #[serde(rename = "all-linear")]
    AllLinear,
}

impl QuantLayers {
    pub const ALL: [QuantLayers; 3] = [
        QuantLayers::Ffn,
        QuantLayers::FfnCross,
        QuantLayers::AllLinear,
    ];

    pub fn name(self) -> &'static str {
        match self {
            QuantLayers::Ffn => "ffn",
            QuantLayers::FfnCross => "ffn+cross",
            QuantLayers::AllLinear => "all-linear",
        }
    }

    /// Whether the linear at weight path `prefix` (`blocks.3.ffn.0`,
    /// `blocks.0.cross_attn.q`, VACE's `vace_blocks.1.ffn.2`) is quantized.
    /// Paths outside the transformer blocks `blocks.N.` and VACE's
    /// `vace_blocks.N.` never are (nor VACE's `before_proj`/`after_proj`).
    pub fn covers(self, prefix: &str) -> bool {
        let Some(rest) = prefix
            .strip_prefix("blocks.")
            .or_else(|| prefix.strip_prefix("vace_blocks."))
        else {
            return false;
        };
        let Some((index, layer)) = rest.split_once('.') else {
            return false;
        };
        if index.is_empty() || !index.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
        let ffn = matches!(layer, "ffn.0" | "ffn.2");
        match self {
            QuantLayers::Ffn => ffn,
            QuantLayers::FfnCross => ffn || matches!(layer, "cross_attn.q" | "cross_attn.o"),
            QuantLayers::AllLinear => {
                ffn || matches!(
                    layer,
                    "self_attn.q"
                        | "self_attn.k"
                        | "self_attn.v"
                        | "self_attn.o"
                        | "cross_attn.q"
                        | "cross_attn.k"
                        | "cross_attn.v"
                        | "cross_attn.o"
                        | "cross_attn.k_img"
                        | "cross_attn.v_img"
                )
            }
        }
    }
}

impl fmt::Display for QuantLayers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantLayers {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        QuantLayers::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| {
                format!("unknown layer set '{s}' (expected ffn, ffn+cross or all-linear)")
            })
    }
}

/// What `wan-compile --precision` asks for: a plain precision, or a
/// quantized DiT (whose base precision comes from `--fp8-base`; INT8's is
/// fp32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecisionChoice {
    Plain(Precision),
    Quantized(QuantScheme),
}

impl FromStr for PrecisionChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp8" => Ok(PrecisionChoice::Quantized(QuantScheme::Fp8)),
            "int8" => Ok(PrecisionChoice::Quantized(QuantScheme::Int8)),
            other => other.parse().map(PrecisionChoice::Plain).map_err(|_| {
                format!("unknown precision '{other}' (expected bf16, fp16, fp32, fp8 or int8)")
            }),
        }
    }
}

/// How calibration reduces the amax each forward observed for one
/// activation to the one the scale is made from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AmaxStatistic {
    /// The largest amax of any forward: nothing calibration saw clips.
    #[default]
    Max,
    /// The given percentile (0 < p ≤ 100) of the per-forward amax values:
    /// a few outlier forwards may clip, the rest keep finer steps.
    Percentile(f64),
}

impl AmaxStatistic {
    /// Reduces per-forward amax values (at least one).
    pub fn reduce(self, values: &[f32]) -> f32 {
        match self {
            AmaxStatistic::Max => values.iter().copied().fold(0f32, f32::max),
            AmaxStatistic::Percentile(p) => {
                let mut v = values.to_vec();
                v.sort_by(f32::total_cmp);
                if v.is_empty() {
                    return 0.0;
                }
                // Nearest rank: the smallest value with at least p% of the
                // values at or below it.
                let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
                v[rank.clamp(1, v.len()) - 1]
            }
        }
    }
}

impl fmt::Display for AmaxStatistic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmaxStatistic::Max => f.write_str("max"),
            AmaxStatistic::Percentile(p) => write!(f, "percentile {p}"),
        }
    }
}

/// How the activation scales of an FP8 DiT were measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationRecord {
    /// Prompts run (`--calibrate N`).
    pub prompts: usize,
    /// `built-in` or the `--calibration-prompts` file name.
    pub prompt_set: String,
    /// `sha256:` of the prompts used, one per line.
    pub prompts_digest: String,
    /// Sampling steps of each trajectory.
    pub steps: usize,
    /// Seed of prompt `k`'s noise is `seed + k`.
    pub seed: u64,
    /// DiT forwards observed (prompts × steps × CFG branches).
    pub forwards: usize,
    pub statistic: AmaxStatistic,
    /// The backend the unquantized DiT ran on.
    pub backend: String,
}

/// The quantization of a DiT entry (absent: not quantized).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    pub scheme: QuantScheme,
    pub layers: QuantLayers,
    /// FP8: the static per-tensor scale of each quantized linear's input,
    /// by the linear's weight path (`blocks.0.ffn.0`): calibrated amax / 448.
    /// The graph holds the same values (rounded to the base type when that
    /// is a half type). Empty for INT8 (its activation scales are dynamic).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub activation_scales: BTreeMap<String, f32>,
    /// FP8: how the scales were measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_sets_nest_and_stay_inside_blocks() {
        for l in QuantLayers::ALL {
            assert!(l.covers("blocks.0.ffn.0") && l.covers("blocks.12.ffn.2"));
            assert!(!l.covers("head.head") && !l.covers("text_embedding.0"));
            assert!(!l.covers("time_projection.1") && !l.covers("img_emb.proj.1"));
            assert!(!l.covers("blocks.x.ffn.0") && !l.covers("blocks..ffn.0"));
            assert!(l.covers("vace_blocks.1.ffn.2"));
            assert!(
                !l.covers("vace_blocks.0.before_proj") && !l.covers("vace_blocks.0.after_proj")
            );
            assert!(!l.covers("vace_patch_embedding") && !l.covers("xvace_blocks.0.ffn.0"));
            assert_eq!(l.name().parse::<QuantLayers>(), Ok(l));
        }
        assert!(!QuantLayers::Ffn.covers("blocks.0.cross_attn.q"));
        assert!(QuantLayers::FfnCross.covers("blocks.0.cross_attn.o"));
        assert!(!QuantLayers::FfnCross.covers("blocks.0.cross_attn.k"));
        assert!(!QuantLayers::FfnCross.covers("blocks.0.self_attn.q"));
        assert!(QuantLayers::AllLinear.covers("blocks.0.self_attn.v"));
        assert!(QuantLayers::AllLinear.covers("blocks.1.cross_attn.k_img"));
    }

    #[test]
    fn precision_choices_parse() {
        assert_eq!(
            "fp8".parse(),
            Ok(PrecisionChoice::Quantized(QuantScheme::Fp8))
        );
        assert_eq!(
            "int8".parse(),
            Ok(PrecisionChoice::Quantized(QuantScheme::Int8))
        );
        assert_eq!("bf16".parse(), Ok(PrecisionChoice::Plain(Precision::Bf16)));
        assert!(
            "fp4"
                .parse::<PrecisionChoice>()
                .unwrap_err()
                .contains("int8")
        );
    }

    #[test]
    fn statistics_reduce() {
        let v = [3.0, 1.0, 10.0, 2.0];
        assert_eq!(AmaxStatistic::Max.reduce(&v), 10.0);
        assert_eq!(AmaxStatistic::Percentile(100.0).reduce(&v), 10.0);
        assert_eq!(AmaxStatistic::Percentile(75.0).reduce(&v), 3.0);
        assert_eq!(AmaxStatistic::Percentile(1.0).reduce(&v), 1.0);
    }

    #[test]
    fn quantization_round_trips() {
        let q = Quantization {
            scheme: QuantScheme::Fp8,
            layers: QuantLayers::FfnCross,
            activation_scales: BTreeMap::from([("blocks.0.ffn.0".into(), 0.25)]),
            calibration: None,
        };
        let s = serde_json::to_string(&q).unwrap();
        assert!(s.contains("\"ffn+cross\"") && s.contains("\"fp8\""), "{s}");
        assert_eq!(serde_json::from_str::<Quantization>(&s).unwrap(), q);
    }
}
