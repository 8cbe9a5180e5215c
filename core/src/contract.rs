//! The I/O contract of each network: tensor names, dtypes and shapes for a
//! profile. Graph export, the manifest, the runtime's input checks and the
//! tests all read these functions; the shape math exists only here and in
//! [`Profile`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::{ClipVisionConfig, DitConfig, Task, Umt5Config, VaeConfig};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::profile::{BatchMode, Profile};

/// One dimension of a boundary tensor: a fixed size or the batch axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Fixed(u64),
    /// The (dynamic) batch axis; serialised as `"batch"`.
    Batch,
}

impl Serialize for Dim {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Dim::Fixed(n) => s.serialize_u64(*n),
            Dim::Batch => s.serialize_str("batch"),
        }
    }
}

impl<'de> Deserialize<'de> for Dim {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Dim::Fixed(n)),
            Raw::S(s) if s == "batch" => Ok(Dim::Batch),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "dimension '{s}' is neither a number nor \"batch\""
            ))),
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Batch => f.write_str("batch"),
        }
    }
}

/// A tensor at a graph boundary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl TensorSpec {
    fn new(name: &str, dtype: DType, batch: Dim, rest: &[u64]) -> Self {
        let mut shape = vec![batch];
        shape.extend(rest.iter().map(|&n| Dim::Fixed(n)));
        TensorSpec {
            name: name.to_string(),
            dtype,
            shape,
        }
    }

    /// The shape with the batch axis set to `batch`.
    pub fn concrete_shape(&self, batch: u64) -> Vec<u64> {
        self.shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => *n,
                Dim::Batch => batch,
            })
            .collect()
    }

    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        format!("[{}]", dims.join(", "))
    }

    /// Checks a runtime tensor against this spec. The batch axis (axis 0)
    /// accepts any positive size: a fixed-batch engine is looped over it.
    pub fn check(&self, network: &str, dtype: DType, shape: &[u64]) -> Result<()> {
        let mismatch = |reason: String| Error::ContractMismatch {
            network: network.to_string(),
            tensor: self.name.clone(),
            reason,
        };
        if dtype != self.dtype {
            return Err(mismatch(format!(
                "dtype is {dtype}, the engine takes {}",
                self.dtype
            )));
        }
        let ok = shape.len() == self.shape.len()
            && shape.first().is_some_and(|&b| b > 0)
            && shape
                .iter()
                .zip(&self.shape)
                .skip(1)
                .all(|(&s, d)| matches!(d, Dim::Fixed(n) if *n == s) || *d == Dim::Batch);
        if !ok {
            return Err(mismatch(format!(
                "shape {shape:?} does not fit the engine's {} (compiled for this profile)",
                self.shape_string()
            )));
        }
        Ok(())
    }
}

/// The networks of Wan2.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkKind {
    Dit,
    TextEncoder,
    ImageEncoder,
    VaeEncoder,
    VaeDecoder,
}

impl NetworkKind {
    pub const ALL: [NetworkKind; 5] = [
        NetworkKind::Dit,
        NetworkKind::TextEncoder,
        NetworkKind::ImageEncoder,
        NetworkKind::VaeEncoder,
        NetworkKind::VaeDecoder,
    ];

    /// Manifest key and file stem (`dit`, `text_encoder`, ...).
    pub fn name(self) -> &'static str {
        match self {
            NetworkKind::Dit => "dit",
            NetworkKind::TextEncoder => "text_encoder",
            NetworkKind::ImageEncoder => "image_encoder",
            NetworkKind::VaeEncoder => "vae_encoder",
            NetworkKind::VaeDecoder => "vae_decoder",
        }
    }
}

impl fmt::Display for NetworkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NetworkKind {
    type Err = String;
    /// Accepts `text_encoder` and `text-encoder` alike.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let norm = s.replace('-', "_");
        NetworkKind::ALL
            .into_iter()
            .find(|k| k.name() == norm)
            .ok_or_else(|| {
                format!(
                    "unknown network '{s}' (expected one of dit, text_encoder, image_encoder, vae_encoder, vae_decoder)"
                )
            })
    }
}

/// Inputs and outputs of one network for one profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkContract {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

fn batch_dim(profile: &Profile) -> Dim {
    match profile.batch {
        BatchMode::Dynamic => Dim::Batch,
        BatchMode::Fixed(n) => Dim::Fixed(n as u64),
    }
}

impl NetworkContract {
    /// DiT: `hidden_states [B, C_in, F', H', W']`, `timestep [B]`,
    /// `encoder_hidden_states [B, text_len, text_dim]`, for I2V
    /// `encoder_hidden_states_image [B, 257, image_dim]`; output
    /// `noise_pred [B, 16, F', H', W']`. All float32 at the boundary.
    pub fn dit(cfg: &DitConfig, profile: &Profile) -> Result<Self> {
        let (fp, hp, wp) = profile.patch_grid();
        let max = cfg.rope_max_seq_len;
        if fp > max || hp > max || wp > max {
            return Err(Error::InvalidProfile {
                flag: "--width/--height/--frames",
                reason: format!(
                    "patch grid {fp}x{hp}x{wp} exceeds the RoPE table length {max} of the model"
                ),
            });
        }
        let b = batch_dim(profile);
        let [_, f, h, w] = profile.latent_shape(cfg.in_dim).map(u64::from);
        let f32_ = DType::Float32;
        let mut inputs = vec![
            TensorSpec::new("hidden_states", f32_, b, &[cfg.in_dim as u64, f, h, w]),
            TensorSpec::new("timestep", f32_, b, &[]),
            TensorSpec::new(
                "encoder_hidden_states",
                f32_,
                b,
                &[profile.text_len as u64, cfg.text_dim as u64],
            ),
        ];
        if cfg.task == Task::I2v {
            let image_dim = cfg.image_dim.unwrap_or(1280) as u64;
            inputs.push(TensorSpec::new(
                "encoder_hidden_states_image",
                f32_,
                b,
                &[cfg.image_tokens as u64, image_dim],
            ));
        }
        let outputs = vec![TensorSpec::new(
            "noise_pred",
            f32_,
            b,
            &[cfg.out_dim as u64, f, h, w],
        )];
        Ok(NetworkContract { inputs, outputs })
    }

    /// Text encoder: `input_ids`, `attention_mask [B, text_len]` int64 →
    /// `last_hidden_state [B, text_len, d_model]` (the raw encoder output;
    /// trimming and zero-padding are the runtime's).
    pub fn text_encoder(cfg: &Umt5Config, profile: &Profile) -> Self {
        let b = batch_dim(profile);
        let l = profile.text_len as u64;
        NetworkContract {
            inputs: vec![
                TensorSpec::new("input_ids", DType::Int64, b, &[l]),
                TensorSpec::new("attention_mask", DType::Int64, b, &[l]),
            ],
            outputs: vec![TensorSpec::new(
                "last_hidden_state",
                DType::Float32,
                b,
                &[l, cfg.d_model as u64],
            )],
        }
    }

    /// Image encoder: `pixel_values [B, 3, S, S]` (CLIP-normalised) →
    /// `image_embeds [B, tokens, width]` (penultimate block, no final norm).
    pub fn image_encoder(cfg: &ClipVisionConfig, profile: &Profile) -> Self {
        let b = batch_dim(profile);
        let s = cfg.image_size as u64;
        NetworkContract {
            inputs: vec![TensorSpec::new(
                "pixel_values",
                DType::Float32,
                b,
                &[3, s, s],
            )],
            outputs: vec![TensorSpec::new(
                "image_embeds",
                DType::Float32,
                b,
                &[cfg.tokens() as u64, cfg.width as u64],
            )],
        }
    }

    /// VAE encoder, as a whole call: `video [1, 3, F, H, W]` in [−1, 1] →
    /// `latent_mean [1, z, F', H/8, W/8]` (raw, not normalised). Batch 1.
    pub fn vae_encoder(cfg: &VaeConfig, profile: &Profile) -> Self {
        let one = Dim::Fixed(1);
        let (f, h, w) = (
            profile.frames as u64,
            profile.height as u64,
            profile.width as u64,
        );
        let [z, lf, lh, lw] = profile.latent_shape(cfg.z_dim).map(u64::from);
        NetworkContract {
            inputs: vec![TensorSpec::new("video", DType::Float32, one, &[3, f, h, w])],
            outputs: vec![TensorSpec::new(
                "latent_mean",
                DType::Float32,
                one,
                &[z, lf, lh, lw],
            )],
        }
    }

    /// VAE decoder, as a whole call: `latents [1, z, F', H', W']` (raw) →
    /// `video [1, 3, F, H, W]` clamped to [−1, 1]. Batch 1.
    pub fn vae_decoder(cfg: &VaeConfig, profile: &Profile) -> Self {
        let e = Self::vae_encoder(cfg, profile);
        NetworkContract {
            inputs: vec![TensorSpec {
                name: "latents".into(),
                ..e.outputs[0].clone()
            }],
            outputs: e.inputs,
        }
    }

    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dit_contract_for_480p() {
        let p = Profile::builtin("480p").unwrap();
        let c = NetworkContract::dit(&DitConfig::t2v_1_3b(), &p).unwrap();
        assert_eq!(c.inputs.len(), 3);
        assert_eq!(c.inputs[0].concrete_shape(1), vec![1, 16, 21, 60, 104]);
        assert_eq!(c.inputs[2].concrete_shape(1), vec![1, 512, 4096]);
        assert_eq!(c.outputs[0].concrete_shape(1), vec![1, 16, 21, 60, 104]);
        let c = NetworkContract::dit(&DitConfig::i2v_14b(), &p).unwrap();
        assert_eq!(c.inputs[0].concrete_shape(1), vec![1, 36, 21, 60, 104]);
        assert_eq!(c.inputs[3].concrete_shape(1), vec![1, 257, 1280]);
    }

    #[test]
    fn check_names_tensor_and_reason() {
        let p = Profile::custom(32, 32, 9, 32)
            .unwrap()
            .with_batch(BatchMode::Fixed(1))
            .unwrap();
        let mut cfg = DitConfig::t2v_1_3b();
        cfg.text_dim = 32;
        let c = NetworkContract::dit(&cfg, &p).unwrap();
        let hs = &c.inputs[0];
        // Batch 2 on a batch-1 engine is fine (the runtime loops).
        hs.check("dit", DType::Float32, &[2, 16, 3, 4, 4]).unwrap();
        let e = hs
            .check("dit", DType::Float32, &[1, 16, 3, 8, 4])
            .unwrap_err();
        assert!(e.to_string().contains("hidden_states"), "{e}");
        let e = hs
            .check("dit", DType::Float16, &[1, 16, 3, 4, 4])
            .unwrap_err();
        assert!(e.to_string().contains("dtype"), "{e}");
        assert!(hs.check("dit", DType::Float32, &[0, 16, 3, 4, 4]).is_err());
    }

    #[test]
    fn dims_serialise_as_numbers_or_batch() {
        let s = serde_json::to_string(&vec![Dim::Batch, Dim::Fixed(16)]).unwrap();
        assert_eq!(s, r#"["batch",16]"#);
        let back: Vec<Dim> = serde_json::from_str(&s).unwrap();
        assert_eq!(back, vec![Dim::Batch, Dim::Fixed(16)]);
        assert!(serde_json::from_str::<Dim>(r#""time""#).is_err());
    }

    #[test]
    fn network_names_parse_both_spellings() {
        assert_eq!(
            "text-encoder".parse::<NetworkKind>().unwrap(),
            NetworkKind::TextEncoder
        );
        assert_eq!("dit".parse::<NetworkKind>().unwrap(), NetworkKind::Dit);
        assert!("unet".parse::<NetworkKind>().is_err());
    }
}
