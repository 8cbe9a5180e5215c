//! Wan-VAE configuration (`docs/WAN.md` §2.4, §6.4).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `vae/config.json` of a diffusers checkpoint (`AutoencoderKLWan`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AutoencoderKlWanConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    pub base_dim: u32,
    pub z_dim: u32,
    pub dim_mult: Vec<u32>,
    pub num_res_blocks: u32,
    pub attn_scales: Vec<f64>,
    pub temperal_downsample: Vec<bool>,
    pub latents_mean: Vec<f32>,
    pub latents_std: Vec<f32>,
    #[serde(default)]
    pub is_residual: bool,
    #[serde(default)]
    pub patch_size: Option<u32>,
}

/// The VAE the graph builders and the runtime read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    pub base_dim: u32,
    pub z_dim: u32,
    pub dim_mult: Vec<u32>,
    pub num_res_blocks: u32,
    pub temperal_downsample: Vec<bool>,
    /// Latent normalisation: `z = (mu − mean) / std` (encode), inverse on decode.
    pub latents_mean: Vec<f32>,
    pub latents_std: Vec<f32>,
}

impl VaeConfig {
    /// The Wan2.1 VAE. The original release has no config file: the official
    /// code hard-codes this architecture and these latent statistics (§2.4),
    /// so for the original layout this preset *is* the checkpoint's config.
    pub fn wan21() -> Self {
        VaeConfig {
            base_dim: 96,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            temperal_downsample: vec![false, true, true],
            latents_mean: vec![
                -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134,
                -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
            ],
            latents_std: vec![
                2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526,
                2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
            ],
        }
    }

    pub fn from_diffusers(c: &AutoencoderKlWanConfig, file: &Path) -> Result<Self> {
        let bad = |reason: String| Error::InvalidConfig {
            file: file.to_path_buf(),
            reason,
        };
        if c.class_name != "AutoencoderKLWan" {
            return Err(bad(format!(
                "_class_name '{}' is not AutoencoderKLWan",
                c.class_name
            )));
        }
        if c.is_residual || c.patch_size.is_some() {
            return Err(bad(
                "is_residual / patch_size: the Wan2.2 VAE is not supported".into(),
            ));
        }
        if !c.attn_scales.is_empty() {
            return Err(bad("attn_scales must be empty (Wan2.1 VAE)".into()));
        }
        if c.dim_mult.len() != c.temperal_downsample.len() + 1 {
            return Err(bad(
                "dim_mult needs one entry more than temperal_downsample".into(),
            ));
        }
        let cfg = VaeConfig {
            base_dim: c.base_dim,
            z_dim: c.z_dim,
            dim_mult: c.dim_mult.clone(),
            num_res_blocks: c.num_res_blocks,
            temperal_downsample: c.temperal_downsample.clone(),
            latents_mean: c.latents_mean.clone(),
            latents_std: c.latents_std.clone(),
        };
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Every value that sizes a graph, a buffer or a loop is in range: the
    /// compiler checks it on `config.json`, the runtime again on the
    /// manifest (the latent statistics index the latent channels).
    pub fn validate(&self) -> std::result::Result<(), String> {
        super::in_range("base_dim", self.base_dim, 1, 4096)?;
        super::in_range("z_dim", self.z_dim, 1, 1024)?;
        super::in_range("num_res_blocks", self.num_res_blocks, 1, 64)?;
        if self.dim_mult.is_empty() || self.dim_mult.len() > 8 {
            return Err(format!(
                "dim_mult has {} entries (1..=8)",
                self.dim_mult.len()
            ));
        }
        for &m in &self.dim_mult {
            super::in_range("dim_mult entry", m, 1, 64)?;
        }
        if self.dim_mult.len() != self.temperal_downsample.len() + 1 {
            return Err("dim_mult needs one entry more than temperal_downsample".into());
        }
        let z = self.z_dim as usize;
        if self.latents_mean.len() != z || self.latents_std.len() != z {
            return Err(format!(
                "latents_mean/latents_std have {}/{} entries, z_dim is {z}",
                self.latents_mean.len(),
                self.latents_std.len()
            ));
        }
        if let Some(m) = self.latents_mean.iter().find(|m| !m.is_finite()) {
            return Err(format!("latents_mean holds {m}"));
        }
        if let Some(s) = self
            .latents_std
            .iter()
            .find(|s| !(s.is_finite() && **s > 0.0))
        {
            return Err(format!(
                "latents_std holds {s}; it must be finite and positive"
            ));
        }
        Ok(())
    }

    /// Temporal compression: 2 per downsampling stage.
    pub fn temporal_stride(&self) -> u32 {
        1 << self.temperal_downsample.iter().filter(|&&t| t).count()
    }

    /// Spatial compression: 2 per stage.
    pub fn spatial_stride(&self) -> u32 {
        1 << self.temperal_downsample.len()
    }

    /// The VAE's raw latent `[c, …]` (channel-major, `plane` values per
    /// channel) to the normalised space the DiT works in, in place, in the
    /// official order of operations: `(z − mean) · (1/std)`
    /// (docs/WAN.md §6.4). Channels past `z_dim` are left alone.
    pub fn normalize_latents(&self, z: &mut [f32], plane: usize) {
        for (c, chunk) in z
            .chunks_mut(plane.max(1))
            .take(self.latents_mean.len())
            .enumerate()
        {
            let (mean, inv) = (self.latents_mean[c], 1.0f32 / self.latents_std[c]);
            for v in chunk {
                *v = (*v - mean) * inv;
            }
        }
    }

    /// The inverse of [`normalize_latents`](Self::normalize_latents), in
    /// place, as the official code and diffusers compute it: `z / (1/std) +
    /// mean`.
    pub fn denormalize_latents(&self, z: &mut [f32], plane: usize) {
        for (c, chunk) in z
            .chunks_mut(plane.max(1))
            .take(self.latents_mean.len())
            .enumerate()
        {
            let (mean, inv) = (self.latents_mean[c], 1.0f32 / self.latents_std[c]);
            for v in chunk {
                *v = *v / inv + mean;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latent_normalisation_round_trips_in_the_official_order() {
        let mut cfg = VaeConfig::wan21();
        cfg.latents_mean = (0..16).map(|c| c as f32 * 0.1 - 0.7).collect();
        cfg.latents_std = (0..16).map(|c| 0.5 + c as f32 * 0.25).collect();
        let plane = 3;
        let raw: Vec<f32> = (0..16 * plane)
            .map(|i| (i as f32 * 0.37).sin() * 2.0)
            .collect();
        let mut z = raw.clone();
        cfg.normalize_latents(&mut z, plane);
        for (i, (&n, &r)) in z.iter().zip(&raw).enumerate() {
            let c = i / plane;
            // Bit for bit the official expression.
            assert_eq!(n, (r - cfg.latents_mean[c]) * (1.0 / cfg.latents_std[c]));
        }
        cfg.denormalize_latents(&mut z, plane);
        for (a, b) in z.iter().zip(&raw) {
            assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
        }
    }
}
