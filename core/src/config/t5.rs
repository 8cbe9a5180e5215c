//! UMT5-XXL encoder configuration (`docs/WAN.md` §2.2).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `text_encoder/config.json` of a diffusers checkpoint (transformers
/// `UMT5Config`); only the fields the encoder uses.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HfUmt5Config {
    pub model_type: String,
    pub vocab_size: u32,
    pub d_model: u32,
    pub d_kv: u32,
    pub d_ff: u32,
    pub num_layers: u32,
    pub num_heads: u32,
    pub relative_attention_num_buckets: u32,
    pub relative_attention_max_distance: u32,
    pub layer_norm_epsilon: f64,
    pub feed_forward_proj: String,
}

/// The encoder the graph builder reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Umt5Config {
    pub vocab_size: u32,
    pub d_model: u32,
    pub d_kv: u32,
    pub d_ff: u32,
    pub num_layers: u32,
    pub num_heads: u32,
    pub num_buckets: u32,
    pub max_distance: u32,
    pub eps: f64,
}

impl Umt5Config {
    /// UMT5-XXL as the official code hard-codes it: vocab 256384, d_model
    /// 4096, d_ff 10240, 64 heads × 64, 24 layers, 32 buckets, distance 128.
    pub fn xxl() -> Self {
        Umt5Config {
            vocab_size: 256_384,
            d_model: 4096,
            d_kv: 64,
            d_ff: 10240,
            num_layers: 24,
            num_heads: 64,
            num_buckets: 32,
            max_distance: 128,
            eps: 1e-6,
        }
    }

    pub fn from_hf(c: &HfUmt5Config, file: &Path) -> Result<Self> {
        let bad = |reason: String| Error::InvalidConfig {
            file: file.to_path_buf(),
            reason,
        };
        if c.model_type != "umt5" {
            return Err(bad(format!("model_type '{}' is not umt5", c.model_type)));
        }
        if c.feed_forward_proj != "gated-gelu" {
            return Err(bad(format!(
                "feed_forward_proj '{}': only gated-gelu is supported",
                c.feed_forward_proj
            )));
        }
        let cfg = Umt5Config {
            vocab_size: c.vocab_size,
            d_model: c.d_model,
            d_kv: c.d_kv,
            d_ff: c.d_ff,
            num_layers: c.num_layers,
            num_heads: c.num_heads,
            num_buckets: c.relative_attention_num_buckets,
            max_distance: c.relative_attention_max_distance,
            eps: c.layer_norm_epsilon,
        };
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Every size is in range (the error names the field).
    pub fn validate(&self) -> std::result::Result<(), String> {
        use super::in_range;
        in_range("vocab_size", self.vocab_size, 2, 1 << 22)?;
        in_range("d_model", self.d_model, 1, 65536)?;
        in_range("d_kv", self.d_kv, 1, 4096)?;
        in_range("d_ff", self.d_ff, 1, 1 << 18)?;
        in_range("num_layers", self.num_layers, 1, 1024)?;
        in_range("num_heads", self.num_heads, 1, 1024)?;
        if self.num_buckets < 4 || !self.num_buckets.is_multiple_of(2) || self.num_buckets > 4096 {
            return Err(format!(
                "relative_attention_num_buckets {} must be even and in 4..=4096",
                self.num_buckets
            ));
        }
        in_range(
            "relative_attention_max_distance",
            self.max_distance,
            1,
            1 << 20,
        )?;
        if !(self.eps > 0.0 && self.eps < 1e-2) {
            return Err(format!("layer_norm_epsilon {} is out of range", self.eps));
        }
        Ok(())
    }

    /// Inner width of the attention (`heads × d_kv`).
    pub fn inner_dim(&self) -> u32 {
        self.num_heads * self.d_kv
    }
}
