//! Random weights at a real configuration, generated on the fly.
//!
//! `wan-compile --synthetic t2v-1.3B` exports the real-size graph without
//! downloading 5.7 GB: latency does not depend on weight values, and memory
//! and time of an export do not either. Values are deterministic per tensor
//! name and scaled like an initialised network (so half-precision graphs stay
//! finite): norms ≈ 1, biases and modulation small, matrices ±1/√fan_in.

use std::borrow::Cow;

use wanrt_core::DType;
use wanrt_graphs::{SourceTensor, WeightSource};

/// SplitMix64: tiny, fast, good enough for weights nobody trains.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

fn seed_of(name: &str) -> u64 {
    // FNV-1a.
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Generates any requested tensor, stored as `dtype`.
pub struct SyntheticSource {
    pub preset: String,
    pub dtype: DType,
}

impl SyntheticSource {
    pub fn new(preset: &str) -> Self {
        SyntheticSource {
            preset: preset.to_string(),
            dtype: DType::Float32,
        }
    }

    /// Weights stored as `dtype`, as the real release stores that network
    /// (the UMT5 `.pth` is bf16; the DiT and VAE are fp32).
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    fn generate(&self, name: &str, shape: &[usize]) -> Vec<u8> {
        let numel: usize = shape.iter().product();
        let mut rng = SplitMix(seed_of(name));
        let (center, scale) = if name.ends_with("modulation") {
            (0.0, 0.1)
        } else if shape.len() == 1 && name.ends_with("weight") {
            (1.0, 0.1) // norm weights
        } else if name.ends_with("bias") {
            (0.0, 0.02)
        } else {
            let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
            (0.0, 1.0 / (fan_in as f32).sqrt())
        };
        let mut out = Vec::with_capacity(numel * self.dtype.size());
        for _ in 0..numel {
            let v = center + scale * rng.uniform();
            match self.dtype {
                DType::Bfloat16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                DType::Float16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                _ => out.extend_from_slice(&v.to_le_bytes()),
            }
        }
        out
    }
}

impl WeightSource for SyntheticSource {
    fn tensor(&self, _name: &str) -> wanrt_graphs::Result<Option<SourceTensor<'_>>> {
        // Without a shape nothing can be generated.
        Ok(None)
    }

    fn tensor_with_shape(
        &self,
        name: &str,
        shape: &[usize],
    ) -> wanrt_graphs::Result<Option<SourceTensor<'_>>> {
        Ok(Some(SourceTensor {
            dtype: self.dtype,
            shape: shape.to_vec(),
            data: Cow::Owned(self.generate(name, shape)),
        }))
    }

    fn location(&self, _name: &str) -> String {
        format!("synthetic weights for {}", self.preset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_scaled() {
        let s = SyntheticSource::new("t2v-1.3B");
        let a = s
            .tensor_with_shape("blocks.0.self_attn.q.weight", &[64, 64])
            .unwrap()
            .unwrap();
        let b = s
            .tensor_with_shape("blocks.0.self_attn.q.weight", &[64, 64])
            .unwrap()
            .unwrap();
        assert_eq!(a.data, b.data);
        let v = a.to_f32("x", "y").unwrap();
        assert!(v.iter().all(|x| x.abs() <= 0.125));
        let n = s
            .tensor_with_shape("blocks.0.norm3.weight", &[64])
            .unwrap()
            .unwrap();
        assert!(
            n.to_f32("x", "y")
                .unwrap()
                .iter()
                .all(|x| (x - 1.0).abs() <= 0.1)
        );
        assert!(s.tensor("anything").unwrap().is_none());
    }
}
