//! Model configurations: serde mirrors of the checkpoints' own `config.json`
//! (field names verbatim) and the normalised config the graph builders read.
//!
//! Presets are named constructors whose numbers come from `docs/WAN.md` §2.1.
//! The architecture is never guessed from tensor counts: the config says it,
//! and the weight accessor checks every shape against it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which Wan2.1 task a DiT serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    T2v,
    I2v,
    /// Video creation and editing (VACE-1.3B/14B): a T2V DiT with VACE
    /// blocks fed by a 96-channel context (`docs/WAN.md` §14).
    Vace,
    /// First-last-frame-to-video (FLF2V-14B, `docs/WAN.md` §13): the I2V
    /// network with a learned position embedding over two images' tokens.
    Flf2v,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::T2v => "t2v",
            Task::I2v => "i2v",
            Task::Vace => "vace",
            Task::Flf2v => "flf2v",
        }
    }

    /// Conditioning images per sample: 0 (T2V, VACE), 1 (I2V), 2 (FLF2V).
    pub fn images(self) -> u32 {
        match self {
            Task::T2v => 0,
            Task::I2v => 1,
            Task::Flf2v => 2,
            Task::Vace => 0,
        }
    }

    /// Whether the DiT takes CLIP tokens and the 20-channel condition `y`
    /// (I2V and FLF2V).
    pub fn has_image(self) -> bool {
        self.images() > 0
    }
}

/// `config.json` of an original Wan2.1 DiT (`WanModel`, ConfigMixin format).
/// The release omits `patch_size`, `cross_attn_norm`, `qk_norm`, `text_dim`
/// and `window_size`; they take the `WanModel.__init__` defaults.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WanModelConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    pub model_type: String,
    #[serde(default = "default_patch")]
    pub patch_size: [u32; 3],
    pub text_len: u32,
    pub in_dim: u32,
    pub dim: u32,
    pub ffn_dim: u32,
    pub freq_dim: u32,
    #[serde(default = "default_text_dim")]
    pub text_dim: u32,
    pub out_dim: u32,
    pub num_heads: u32,
    pub num_layers: u32,
    #[serde(default = "default_window")]
    pub window_size: [i64; 2],
    #[serde(default = "default_true")]
    pub qk_norm: bool,
    #[serde(default = "default_true")]
    pub cross_attn_norm: bool,
    pub eps: f64,
    /// Not in the official file (ORIG hard-codes 1280 for the CLIP width);
    /// accepted when present.
    #[serde(default)]
    pub image_dim: Option<u32>,
    /// VACE (`VaceWanModel`): the main blocks followed by a VACE hint;
    /// absent = the official rule `range(0, num_layers, 2)`.
    #[serde(default)]
    pub vace_layers: Option<Vec<u32>>,
    /// VACE: channels of the context (96); absent = `in_dim`, as the
    /// official constructor.
    #[serde(default)]
    pub vace_in_dim: Option<u32>,
}

/// `transformer/config.json` of a diffusers checkpoint (`WanTransformer3DModel`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WanTransformer3DModelConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    pub patch_size: [u32; 3],
    pub num_attention_heads: u32,
    pub attention_head_dim: u32,
    pub in_channels: u32,
    pub out_channels: u32,
    pub text_dim: u32,
    pub freq_dim: u32,
    pub ffn_dim: u32,
    pub num_layers: u32,
    pub cross_attn_norm: bool,
    pub qk_norm: Option<String>,
    pub eps: f64,
    pub image_dim: Option<u32>,
    pub added_kv_proj_dim: Option<u32>,
    #[serde(default = "default_rope_len")]
    pub rope_max_seq_len: u32,
    #[serde(default)]
    pub pos_embed_seq_len: Option<u32>,
    /// `WanVACETransformer3DModel` only.
    #[serde(default)]
    pub vace_layers: Option<Vec<u32>>,
    #[serde(default)]
    pub vace_in_channels: Option<u32>,
}

fn default_patch() -> [u32; 3] {
    [1, 2, 2]
}
fn default_text_dim() -> u32 {
    4096
}
fn default_window() -> [i64; 2] {
    [-1, -1]
}
fn default_true() -> bool {
    true
}
fn default_rope_len() -> u32 {
    1024
}

/// The DiT configuration the graph builder reads, whatever the layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DitConfig {
    pub task: Task,
    pub dim: u32,
    pub ffn_dim: u32,
    pub freq_dim: u32,
    pub text_dim: u32,
    pub in_dim: u32,
    pub out_dim: u32,
    pub num_heads: u32,
    pub num_layers: u32,
    pub eps: f64,
    pub patch_size: [u32; 3],
    /// CLIP width for I2V and FLF2V (`None` for T2V).
    pub image_dim: Option<u32>,
    /// Number of CLIP tokens of one image (257 for ViT-H/14 at 224).
    pub image_tokens: u32,
    /// RoPE table length per axis.
    pub rope_max_seq_len: u32,
    /// The text length the checkpoint was trained with (ORIG `text_len`).
    pub text_len: u32,
    /// VACE: indices of the main blocks each followed by a hint, in hint
    /// order (empty for the other tasks; older manifests have none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vace_layers: Vec<u32>,
    /// VACE: channels of the context (`control_hidden_states`), 96.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vace_in_dim: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The VACE fields of a config: `vace_layers` (default: every second block,
/// the official rule) and the context channels (default: `in_dim`).
fn vace_fields(
    layers: &Option<Vec<u32>>,
    in_dim: Option<u32>,
    num_layers: u32,
    default_in: u32,
) -> (Vec<u32>, u32) {
    let layers = layers
        .clone()
        .unwrap_or_else(|| (0..num_layers).step_by(2).collect());
    (layers, in_dim.unwrap_or(default_in))
}

impl DitConfig {
    /// T2V-1.3B: dim 1536, ffn 8960, 12 heads, 30 layers.
    pub fn t2v_1_3b() -> Self {
        Self::preset(Task::T2v, 1536, 8960, 12, 30)
    }
    /// T2V-14B: dim 5120, ffn 13824, 40 heads, 40 layers.
    pub fn t2v_14b() -> Self {
        Self::preset(Task::T2v, 5120, 13824, 40, 40)
    }
    /// I2V-14B (480P and 720P share the architecture).
    pub fn i2v_14b() -> Self {
        Self::preset(Task::I2v, 5120, 13824, 40, 40)
    }
    /// FLF2V-14B (720P): the I2V-14B sizes plus `img_emb.emb_pos`.
    pub fn flf2v_14b() -> Self {
        Self::preset(Task::Flf2v, 5120, 13824, 40, 40)
    }

    /// VACE-1.3B: the T2V-1.3B DiT with a hint after every second block
    /// (`vace_layers` 0, 2, …, 28) from a 96-channel context.
    pub fn vace_1_3b() -> Self {
        let mut c = Self::preset(Task::Vace, 1536, 8960, 12, 30);
        c.vace_layers = (0..30).step_by(2).collect();
        c.vace_in_dim = 96;
        c
    }
    /// VACE-14B: the T2V-14B DiT with hints after blocks 0, 5, …, 35.
    pub fn vace_14b() -> Self {
        let mut c = Self::preset(Task::Vace, 5120, 13824, 40, 40);
        c.vace_layers = (0..40).step_by(5).collect();
        c.vace_in_dim = 96;
        c
    }

    /// Preset by the task key users know from `generate.py --task`.
    pub fn from_preset_name(name: &str) -> Option<Self> {
        Some(match name {
            "t2v-1.3B" => Self::t2v_1_3b(),
            "t2v-14B" => Self::t2v_14b(),
            "i2v-14B" => Self::i2v_14b(),
            "vace-1.3B" => Self::vace_1_3b(),
            "vace-14B" => Self::vace_14b(),
            "flf2v-14B" => Self::flf2v_14b(),
            _ => return None,
        })
    }

    fn preset(task: Task, dim: u32, ffn_dim: u32, num_heads: u32, num_layers: u32) -> Self {
        DitConfig {
            task,
            dim,
            ffn_dim,
            freq_dim: 256,
            text_dim: 4096,
            in_dim: if task.has_image() { 36 } else { 16 },
            out_dim: 16,
            num_heads,
            num_layers,
            eps: 1e-6,
            patch_size: [1, 2, 2],
            image_dim: task.has_image().then_some(1280),
            image_tokens: 257,
            rope_max_seq_len: 1024,
            text_len: 512,
            vace_layers: Vec::new(),
            vace_in_dim: 0,
        }
    }

    /// Image tokens of one sample's image context: 257 (I2V), 2 × 257
    /// (FLF2V, the first frame's then the last frame's), 0 (T2V).
    pub fn image_context_tokens(&self) -> u32 {
        self.image_tokens * self.task.images()
    }

    pub fn head_dim(&self) -> u32 {
        self.dim / self.num_heads
    }

    /// Real dimensions of the (t, h, w) RoPE sub-ranges of a head (`docs/WAN.md` §3.6):
    /// `d - 4·⌊d/6⌋`, `2·⌊d/6⌋`, `2·⌊d/6⌋`.
    pub fn rope_axes(&self) -> [u32; 3] {
        let d = self.head_dim();
        [d - 4 * (d / 6), 2 * (d / 6), 2 * (d / 6)]
    }

    /// From an original-layout `config.json`.
    pub fn from_original(c: &WanModelConfig, file: &Path) -> Result<Self> {
        let bad = |reason: String| Error::InvalidConfig {
            file: file.to_path_buf(),
            reason,
        };
        let vace = c.class_name == "VaceWanModel";
        if c.class_name != "WanModel" && !vace {
            return Err(bad(format!(
                "_class_name is '{}', expected 'WanModel' or 'VaceWanModel'",
                c.class_name
            )));
        }
        let task = match c.model_type.as_str() {
            // The VACE release's config says "vace" (some copies "t2v").
            _ if vace => Task::Vace,
            "t2v" | "t2i" => Task::T2v,
            "i2v" => Task::I2v,
            "flf2v" => Task::Flf2v,
            other => {
                return Err(bad(format!(
                    "model_type '{other}' is not supported (t2v, i2v, flf2v)"
                )));
            }
        };
        if c.window_size != [-1, -1] {
            return Err(bad(format!(
                "window_size {:?}: only global attention (-1, -1) is supported",
                c.window_size
            )));
        }
        if !c.qk_norm || !c.cross_attn_norm {
            return Err(bad(
                "qk_norm and cross_attn_norm must be true (every Wan2.1 checkpoint)".into(),
            ));
        }
        let cfg = DitConfig {
            task,
            dim: c.dim,
            ffn_dim: c.ffn_dim,
            freq_dim: c.freq_dim,
            text_dim: c.text_dim,
            in_dim: c.in_dim,
            out_dim: c.out_dim,
            num_heads: c.num_heads,
            num_layers: c.num_layers,
            eps: c.eps,
            patch_size: c.patch_size,
            image_dim: task.has_image().then(|| c.image_dim.unwrap_or(1280)),
            image_tokens: 257,
            rope_max_seq_len: 1024,
            text_len: c.text_len,
            vace_layers: Vec::new(),
            vace_in_dim: 0,
        };
        let mut cfg = cfg;
        if vace {
            (cfg.vace_layers, cfg.vace_in_dim) =
                vace_fields(&c.vace_layers, c.vace_in_dim, c.num_layers, c.in_dim);
        }
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// From a diffusers `transformer/config.json`.
    pub fn from_diffusers(c: &WanTransformer3DModelConfig, file: &Path) -> Result<Self> {
        let bad = |reason: String| Error::InvalidConfig {
            file: file.to_path_buf(),
            reason,
        };
        let vace = c.class_name == "WanVACETransformer3DModel";
        if c.class_name != "WanTransformer3DModel" && !vace {
            return Err(bad(format!(
                "_class_name is '{}', expected 'WanTransformer3DModel' or 'WanVACETransformer3DModel'",
                c.class_name
            )));
        }
        if c.qk_norm.as_deref() != Some("rms_norm_across_heads") || !c.cross_attn_norm {
            return Err(bad(format!(
                "qk_norm {:?} / cross_attn_norm {}: only 'rms_norm_across_heads' with cross_attn_norm is supported",
                c.qk_norm, c.cross_attn_norm
            )));
        }
        let task = match (c.image_dim, c.added_kv_proj_dim, c.pos_embed_seq_len) {
            (None, None, None) if vace => Task::Vace,
            (None, None, None) => Task::T2v,
            _ if vace => {
                return Err(bad(
                    "a VACE DiT has no image branch: image_dim and added_kv_proj_dim must be null"
                        .into(),
                ));
            }
            (Some(_), Some(_), None) => Task::I2v,
            // FLF2V: the position embedding spans both images' tokens.
            (Some(_), Some(_), Some(n)) if n == 2 * 257 => Task::Flf2v,
            (_, _, Some(n)) => {
                return Err(bad(format!(
                    "pos_embed_seq_len {n}: FLF2V takes two images of 257 CLIP tokens (514), \
                     with image_dim and added_kv_proj_dim set"
                )));
            }
            _ => {
                return Err(bad(
                    "image_dim and added_kv_proj_dim must be both set (I2V) or both null (T2V)"
                        .into(),
                ));
            }
        };
        let dim = c
            .num_attention_heads
            .checked_mul(c.attention_head_dim)
            .ok_or_else(|| bad("num_attention_heads × attention_head_dim overflows".into()))?;
        if let Some(kv) = c.added_kv_proj_dim
            && kv != dim
        {
            return Err(bad(format!(
                "added_kv_proj_dim {kv} differs from the inner dim {dim}"
            )));
        }
        let cfg = DitConfig {
            task,
            dim,
            ffn_dim: c.ffn_dim,
            freq_dim: c.freq_dim,
            text_dim: c.text_dim,
            in_dim: c.in_channels,
            out_dim: c.out_channels,
            num_heads: c.num_attention_heads,
            num_layers: c.num_layers,
            eps: c.eps,
            patch_size: c.patch_size,
            image_dim: c.image_dim,
            image_tokens: 257,
            rope_max_seq_len: c.rope_max_seq_len,
            // diffusers has no trained text length; Wan2.1 uses 512.
            text_len: 512,
            vace_layers: Vec::new(),
            vace_in_dim: 0,
        };
        let mut cfg = cfg;
        if vace {
            (cfg.vace_layers, cfg.vace_in_dim) = vace_fields(
                &c.vace_layers,
                c.vace_in_channels,
                c.num_layers,
                c.in_channels,
            );
        }
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Internal consistency; the error names the offending field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.patch_size != [1, 2, 2] {
            return Err(format!(
                "patch_size {:?}: only [1, 2, 2] is supported",
                self.patch_size
            ));
        }
        use super::in_range;
        in_range("dim", self.dim, 1, 65536)?;
        in_range("ffn_dim", self.ffn_dim, 1, 1 << 18)?;
        in_range("text_dim", self.text_dim, 1, 65536)?;
        in_range("num_layers", self.num_layers, 1, 1024)?;
        in_range("freq_dim", self.freq_dim, 2, 65536)?;
        in_range("out_dim", self.out_dim, 1, 1024)?;
        in_range("text_len", self.text_len, 1, 4096)?;
        in_range("rope_max_seq_len", self.rope_max_seq_len, 1, 1 << 20)?;
        if let Some(d) = self.image_dim {
            in_range("image_dim", d, 1, 65536)?;
        }
        if self.num_heads == 0 || !self.dim.is_multiple_of(self.num_heads) {
            return Err(format!(
                "dim {} is not divisible by num_heads {}",
                self.dim, self.num_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) || self.head_dim() < 6 {
            return Err(format!(
                "head dim {} must be even and at least 6 for the 3-D RoPE",
                self.head_dim()
            ));
        }
        if !self.freq_dim.is_multiple_of(2) || self.freq_dim == 0 {
            return Err(format!("freq_dim {} must be even", self.freq_dim));
        }
        if self.task == Task::Vace {
            in_range("vace_in_dim", self.vace_in_dim, 1, 4096)?;
            if self.vace_layers.is_empty() {
                return Err("vace_layers is empty".into());
            }
            if !self.vace_layers.windows(2).all(|w| w[0] < w[1]) {
                return Err(format!(
                    "vace_layers {:?} must be strictly increasing",
                    self.vace_layers
                ));
            }
            if let Some(&l) = self.vace_layers.iter().find(|&&l| l >= self.num_layers) {
                return Err(format!(
                    "vace_layers names block {l}, the model has {} blocks",
                    self.num_layers
                ));
            }
        } else if !self.vace_layers.is_empty() || self.vace_in_dim != 0 {
            return Err(format!(
                "vace_layers / vace_in_dim are set on a {} model",
                self.task.name()
            ));
        }
        let want_in = if self.task.has_image() {
            self.out_dim * 2 + 4
        } else {
            self.out_dim
        };
        if self.in_dim != want_in {
            return Err(format!(
                "in_dim {} does not fit a {} model with out_dim {} (expected {want_in})",
                self.in_dim,
                self.task.name(),
                self.out_dim
            ));
        }
        if !(self.eps > 0.0 && self.eps < 1e-2) {
            return Err(format!("eps {} is out of range", self.eps));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_split_follows_the_spec() {
        assert_eq!(DitConfig::t2v_1_3b().rope_axes(), [44, 42, 42]);
        let mut tiny = DitConfig::t2v_1_3b();
        tiny.dim = 24;
        tiny.num_heads = 2;
        assert_eq!(tiny.rope_axes(), [4, 4, 4]);
    }

    #[test]
    fn presets_are_consistent() {
        for name in [
            "t2v-1.3B",
            "t2v-14B",
            "i2v-14B",
            "flf2v-14B",
            "vace-1.3B",
            "vace-14B",
        ] {
            let c = DitConfig::from_preset_name(name).unwrap();
            c.validate().unwrap();
            assert_eq!(c.head_dim(), 128);
        }
        assert!(DitConfig::from_preset_name("t2v-2B").is_none());
    }

    #[test]
    fn original_config_defaults_apply() {
        let text = r#"{"_class_name":"WanModel","_diffusers_version":"0.30.0","dim":1536,
            "eps":1e-06,"ffn_dim":8960,"freq_dim":256,"in_dim":16,"model_type":"t2v",
            "num_heads":12,"num_layers":30,"out_dim":16,"text_len":512}"#;
        let c: WanModelConfig = serde_json::from_str(text).unwrap();
        let d = DitConfig::from_original(&c, Path::new("config.json")).unwrap();
        assert_eq!(d, DitConfig::t2v_1_3b());
    }

    #[test]
    fn vace_configs_of_both_layouts_agree() {
        let orig = r#"{"_class_name":"VaceWanModel","model_type":"vace","dim":24,"eps":1e-06,
            "ffn_dim":64,"freq_dim":32,"in_dim":16,"num_heads":2,"num_layers":4,"out_dim":16,
            "text_len":64,"text_dim":32,"vace_layers":[0,2],"vace_in_dim":96}"#;
        let c: WanModelConfig = serde_json::from_str(orig).unwrap();
        let a = DitConfig::from_original(&c, Path::new("config.json")).unwrap();
        assert_eq!(a.task, Task::Vace);
        assert_eq!((a.vace_layers.clone(), a.vace_in_dim), (vec![0, 2], 96));
        let diff = r#"{"_class_name":"WanVACETransformer3DModel","patch_size":[1,2,2],
            "num_attention_heads":2,"attention_head_dim":12,"in_channels":16,"out_channels":16,
            "text_dim":32,"freq_dim":32,"ffn_dim":64,"num_layers":4,"cross_attn_norm":true,
            "qk_norm":"rms_norm_across_heads","eps":1e-06,"image_dim":null,
            "added_kv_proj_dim":null,"vace_in_channels":96,"vace_layers":[0,2]}"#;
        let c: WanTransformer3DModelConfig = serde_json::from_str(diff).unwrap();
        let b = DitConfig::from_diffusers(&c, Path::new("config.json")).unwrap();
        assert_eq!(
            (b.task, b.vace_layers.clone(), b.vace_in_dim),
            (Task::Vace, vec![0, 2], 96)
        );
        // Without vace_layers: the official rule, every second block.
        let c: WanModelConfig =
            serde_json::from_str(&orig.replace(r#""vace_layers":[0,2],"#, "")).unwrap();
        let d = DitConfig::from_original(&c, Path::new("config.json")).unwrap();
        assert_eq!(d.vace_layers, vec![0, 2]);
        // A hint after a block the model does not have is refused.
        let c: WanModelConfig = serde_json::from_str(&orig.replace("[0,2]", "[0,4]")).unwrap();
        let e = DitConfig::from_original(&c, Path::new("config.json")).unwrap_err();
        assert!(e.to_string().contains("vace_layers"), "{e}");
    }

    #[test]
    fn flf2v_is_recognised_in_both_layouts() {
        let text = r#"{"_class_name":"WanModel","_diffusers_version":"0.30.0","dim":5120,
            "eps":1e-06,"ffn_dim":13824,"freq_dim":256,"in_dim":36,"model_type":"flf2v",
            "num_heads":40,"num_layers":40,"out_dim":16,"text_len":512}"#;
        let c: WanModelConfig = serde_json::from_str(text).unwrap();
        let d = DitConfig::from_original(&c, Path::new("config.json")).unwrap();
        assert_eq!(d, DitConfig::flf2v_14b());
        assert_eq!(d.image_context_tokens(), 514);
        let text = r#"{"_class_name":"WanTransformer3DModel","patch_size":[1,2,2],
            "num_attention_heads":40,"attention_head_dim":128,"in_channels":36,
            "out_channels":16,"text_dim":4096,"freq_dim":256,"ffn_dim":13824,"num_layers":40,
            "cross_attn_norm":true,"qk_norm":"rms_norm_across_heads","eps":1e-06,
            "image_dim":1280,"added_kv_proj_dim":5120,"pos_embed_seq_len":514}"#;
        let c: WanTransformer3DModelConfig = serde_json::from_str(text).unwrap();
        let d = DitConfig::from_diffusers(&c, Path::new("config.json")).unwrap();
        assert_eq!(d, DitConfig::flf2v_14b());
        let bad = text.replace("514", "257");
        let c: WanTransformer3DModelConfig = serde_json::from_str(&bad).unwrap();
        let e = DitConfig::from_diffusers(&c, Path::new("config.json")).unwrap_err();
        assert!(e.to_string().contains("pos_embed_seq_len 257"), "{e}");
    }

    #[test]
    fn inconsistent_config_is_refused() {
        let mut c = DitConfig::t2v_1_3b();
        c.in_dim = 36;
        assert!(c.validate().unwrap_err().contains("in_dim"));
        let mut c = DitConfig::t2v_1_3b();
        c.num_heads = 7;
        assert!(c.validate().unwrap_err().contains("num_heads"));
    }
}
