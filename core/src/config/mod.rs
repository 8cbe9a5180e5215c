//! Model configurations: serde mirrors of each checkpoint's own config file
//! (field names verbatim) and the normalised configs the graph builders read.
//!
//! Presets are named constructors citing `docs/WAN.md` §2. The architecture is
//! never guessed from tensor counts: the config says it, and the weight
//! accessor checks every shape against it. Original-layout checkpoints of the
//! encoders and the VAE ship without a config file (the official code
//! hard-codes UMT5-XXL, ViT-H/14 and the Wan VAE); their presets are that
//! configuration.

mod clip;
mod dit;
mod t5;
mod vae;

pub use clip::{ClipVisionConfig, HfClipVisionConfig};
pub use dit::{DitConfig, Task, WanModelConfig, WanTransformer3DModelConfig};
pub use t5::{HfUmt5Config, Umt5Config};
pub use vae::{AutoencoderKlWanConfig, VaeConfig};

use std::path::Path;

use crate::error::{Error, Result};

/// Reads and parses a JSON config file, naming the file on failure.
/// Largest config file read (`config.json`, `model_index.json`, ...; real
/// ones are a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

pub fn read_json<T: serde::de::DeserializeOwned>(file: &Path) -> Result<T> {
    let text =
        crate::fsio::read_capped_string(file, MAX_CONFIG_BYTES).map_err(|source| Error::Io {
            file: file.to_path_buf(),
            source,
        })?;
    serde_json::from_str(&text).map_err(|e| Error::InvalidConfig {
        file: file.to_path_buf(),
        reason: e.to_string(),
    })
}

/// `name` must lie in `lo..=hi` (configs of absurd size are refused before
/// they size anything).
pub(crate) fn in_range(name: &str, v: u32, lo: u32, hi: u32) -> std::result::Result<(), String> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("{name} {v} is outside {lo}..={hi}"))
    }
}
