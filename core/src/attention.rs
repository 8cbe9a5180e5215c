//! How a graph writes scaled dot-product attention (`docs/WAN.md` §11).
//!
//! The three formulations compute the same `softmax(q·kᵀ/√d)·v` in the
//! graph's compute type; they differ in which kernels ONNX Runtime picks:
//!
//! * [`AttentionKind::Onnx`]: the opset-23 `Attention` op, which TensorRT and
//!   the CUDA provider map to fused flash-attention kernels;
//! * [`AttentionKind::Mha`]: ONNX Runtime's `com.microsoft.MultiHeadAttention`
//!   contrib op, whose CPU kernel runs a blocked (flash) attention that never
//!   holds the whole score matrix;
//! * [`AttentionKind::Matmul`]: plain `MatMul → Softmax → MatMul` on
//!   `[b, heads, s, d]` with `1/√d` folded into q, runnable by every backend
//!   (it holds the `[b, heads, s, s]` scores).
//!
//! `wan-compile --attention` chooses one per compile and the manifest records
//! it ([`crate::manifest::NetworkEntry::attention`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Precision;

/// The attention formulation written into a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKind {
    /// Opset-23 `Attention` (manifests written before the choice existed
    /// hold this one).
    #[default]
    Onnx,
    /// `com.microsoft.MultiHeadAttention` (ONNX Runtime contrib op).
    Mha,
    /// `MatMul → Softmax → MatMul`.
    Matmul,
}

impl AttentionKind {
    pub const ALL: [AttentionKind; 3] = [
        AttentionKind::Onnx,
        AttentionKind::Mha,
        AttentionKind::Matmul,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AttentionKind::Onnx => "onnx",
            AttentionKind::Mha => "mha",
            AttentionKind::Matmul => "matmul",
        }
    }

    /// The formulation `wan-compile --attention auto` writes for a DiT of
    /// `tokens` tokens: the standard op for graphs meant for GPUs (half
    /// precision, which ONNX Runtime's CPU provider cannot run, or a TensorRT
    /// engine built at compile time), whose providers fuse it; otherwise the
    /// fastest exact one on ONNX Runtime's CPU provider, measured
    /// (docs/MEASUREMENTS.md): `mha` from [`Self::MHA_MIN_TOKENS`] tokens on,
    /// the op below (its kernel is as fast or faster on short sequences).
    pub fn auto(precision: Precision, gpu_engine: bool, tokens: u32) -> AttentionKind {
        let gpu_precision = matches!(precision, Precision::Bf16 | Precision::Fp16);
        if gpu_precision || gpu_engine || tokens < Self::MHA_MIN_TOKENS {
            AttentionKind::Onnx
        } else {
            AttentionKind::Mha
        }
    }

    /// Sequence length from which `auto` writes `mha` for the CPU provider.
    pub const MHA_MIN_TOKENS: u32 = 1024;
}

impl fmt::Display for AttentionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AttentionKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        AttentionKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown attention '{s}' (expected onnx, mha or matmul)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_old_manifests_mean_onnx() {
        for k in AttentionKind::ALL {
            assert_eq!(k.name().parse::<AttentionKind>(), Ok(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
        }
        assert!("flash".parse::<AttentionKind>().is_err());
        assert_eq!(AttentionKind::default(), AttentionKind::Onnx);
    }

    #[test]
    fn auto_keeps_the_standard_op_for_gpu_graphs_and_short_sequences() {
        let long = 32_760; // the 1.3B model at 480p
        for p in [Precision::Bf16, Precision::Fp16] {
            assert_eq!(AttentionKind::auto(p, false, long), AttentionKind::Onnx);
        }
        let auto = AttentionKind::auto;
        assert_eq!(auto(Precision::Fp32, true, long), AttentionKind::Onnx);
        assert_eq!(auto(Precision::Fp32, false, long), AttentionKind::Mha);
        assert_eq!(auto(Precision::Fp32, false, 1024), AttentionKind::Mha);
        assert_eq!(auto(Precision::Fp32, false, 1023), AttentionKind::Onnx);
        assert_eq!(auto(Precision::Fp32, false, 12), AttentionKind::Onnx);
    }
}
