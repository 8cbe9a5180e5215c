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
        if c.num_channels != 3 || c.patch_size == 0 || !c.image_size.is_multiple_of(c.patch_size) {
            return Err(bad(
                "image_size must be a multiple of patch_size, 3 channels".into(),
            ));
        }
        if c.num_hidden_layers < 2 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(bad(
                "need ≥ 2 layers and hidden_size divisible by heads".into()
            ));
        }
        Ok(ClipVisionConfig {
            width: c.hidden_size,
            mlp_dim: c.intermediate_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            image_size: c.image_size,
            patch_size: c.patch_size,
            eps: c.layer_norm_eps,
            used_layers: c.num_hidden_layers - 1,
        })
    }

    /// Tokens: patches plus the class token (257 for ViT-H/14 at 224).
    pub fn tokens(&self) -> u32 {
        let g = self.image_size / self.patch_size;
        g * g + 1
    }
}
