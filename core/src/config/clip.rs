//! CLIP ViT-H/14 visual tower configuration (`docs/WAN.md` §2.3).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `image_encoder/config.json` (transformers `CLIPVisionConfig`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HfClipVisionConfig {
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub num_hidden_layers: u32,
    pub num_attention_heads: u32,
    pub image_size: u32,
    pub patch_size: u32,
    pub layer_norm_eps: f64,
    pub hidden_act: String,
    #[serde(default = "three")]
    pub num_channels: u32,
}

fn three() -> u32 {
    3
}

/// The visual tower the graph builder reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    pub width: u32,
    pub mlp_dim: u32,
    pub layers: u32,
    pub heads: u32,
    pub image_size: u32,
    pub patch_size: u32,
    pub eps: f64,
    /// Blocks actually run: all but the last (Wan uses the penultimate
    /// block's output, no final norm).
    pub used_layers: u32,
}

impl ClipVisionConfig {
    /// ViT-H/14 at 224: width 1280, MLP 5120, 32 layers, 16 heads.
    pub fn vit_h_14() -> Self {
        ClipVisionConfig {
            width: 1280,
            mlp_dim: 5120,
            layers: 32,
            heads: 16,
            image_size: 224,
            patch_size: 14,
            eps: 1e-5,
            used_layers: 31,
        }
    }

    pub fn from_hf(c: &HfClipVisionConfig, file: &Path) -> Result<Self> {
        let bad = |reason: String| Error::InvalidConfig {
            file: file.to_path_buf(),
            reason,
        };
        if c.hidden_act != "gelu" {
            return Err(bad(format!(
                "hidden_act '{}': Wan's CLIP uses exact GELU ('gelu')",
                c.hidden_act
            )));
        }
        if c.num_channels != 3 {
            return Err(bad(format!("num_channels {}: expected 3", c.num_channels)));
        }
        let cfg = ClipVisionConfig {
            width: c.hidden_size,
            mlp_dim: c.intermediate_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            image_size: c.image_size,
            patch_size: c.patch_size,
            eps: c.layer_norm_eps,
            used_layers: c.num_hidden_layers.saturating_sub(1),
        };
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Every size is in range and consistent (the error names the field).
    pub fn validate(&self) -> std::result::Result<(), String> {
        use super::in_range;
        in_range("hidden_size", self.width, 1, 65536)?;
        in_range("intermediate_size", self.mlp_dim, 1, 1 << 18)?;
        in_range("num_hidden_layers", self.layers, 2, 1024)?;
        in_range("num_attention_heads", self.heads, 1, 1024)?;
        in_range("patch_size", self.patch_size, 1, 1024)?;
        in_range("image_size", self.image_size, 1, 4096)?;
        if !self.width.is_multiple_of(self.heads) {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.width, self.heads
            ));
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return Err(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if !(self.eps > 0.0 && self.eps < 1e-2) {
            return Err(format!("layer_norm_eps {} is out of range", self.eps));
        }
        Ok(())
    }

    /// Tokens: patches plus the class token (257 for ViT-H/14 at 224).
    pub fn tokens(&self) -> u32 {
        let g = self.image_size / self.patch_size;
        g * g + 1
    }
}
