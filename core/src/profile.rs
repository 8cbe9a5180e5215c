//! Resolution profiles: the one place where pixel, latent and token shapes are
//! derived from a width, height, frame count and text length.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// VAE compression of the Wan2.1 VAE: time ×4, space ×8 (`docs/WAN.md` §2.4).
pub const VAE_STRIDE_T: u32 = 4;
pub const VAE_STRIDE_S: u32 = 8;
/// DiT patch size (t, h, w) of every Wan2.1 variant (§2.1).
pub const PATCH: (u32, u32, u32) = (1, 2, 2);
/// Default text length of Wan2.1 (`text_len`, §2.1).
pub const DEFAULT_TEXT_LEN: u32 = 512;
/// Default frame count (§9.2).
pub const DEFAULT_FRAMES: u32 = 81;
/// Largest frame count accepted (256 latent frames).
pub const MAX_FRAMES: u32 = 1025;
/// Largest width or height accepted, in pixels.
pub const MAX_SIDE: u32 = 4096;
/// Most VACE reference images a profile may carry (each adds a latent frame).
pub const MAX_REFERENCE_IMAGES: u32 = 16;

/// How the batch dimension of the graphs is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchMode {
    /// Any batch size at run time (one graph for CFG as two calls or one
    /// batch-2 call).
    Dynamic,
    /// A static batch; the runtime loops over larger inputs. Static shapes
    /// are what TensorRT builds fastest engines for.
    Fixed(u32),
}

impl BatchMode {
    pub fn fixed(self) -> Option<u32> {
        match self {
            BatchMode::Dynamic => None,
            BatchMode::Fixed(n) => Some(n),
        }
    }
}

/// A resolution profile. Engines are built for exactly one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// `480p`, `720p-portrait`, ... or `custom`.
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub text_len: u32,
    pub batch: BatchMode,
    /// VACE: reference images encoded in front of the video, one latent
    /// frame each, in the DiT's latents (`wan-compile --reference-images`;
    /// static shapes). 0 for every other task (and absent from their
    /// manifests).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reference_images: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The built-in profiles: name, width, height (`docs/WAN.md` §9.2).
pub const BUILTIN: [(&str, u32, u32); 4] = [
    ("480p", 832, 480),
    ("480p-portrait", 480, 832),
    ("720p", 1280, 720),
    ("720p-portrait", 720, 1280),
];

impl Profile {
    /// A built-in profile by name, 81 frames, text length 512.
    pub fn builtin(name: &str) -> Result<Self> {
        let (_, width, height) = BUILTIN.iter().find(|(n, _, _)| *n == name).ok_or_else(|| {
            let names: Vec<_> = BUILTIN.iter().map(|(n, _, _)| *n).collect();
            Error::profile(
                "--profile",
                format!("unknown profile '{name}' (built-in: {})", names.join(", ")),
            )
        })?;
        Self::new(name, *width, *height, DEFAULT_FRAMES, DEFAULT_TEXT_LEN)
    }

    /// A custom profile; every constraint is checked here.
    pub fn custom(width: u32, height: u32, frames: u32, text_len: u32) -> Result<Self> {
        Self::new("custom", width, height, frames, text_len)
    }

    fn new(name: &str, width: u32, height: u32, frames: u32, text_len: u32) -> Result<Self> {
        // The VAE divides by 8 and the DiT patch by 2 more.
        let multiple = VAE_STRIDE_S * PATCH.1;
        for (flag, v) in [("--width", width), ("--height", height)] {
            if v == 0 || v % multiple != 0 {
                return Err(Error::profile(
                    flag,
                    format!("{v} is not a positive multiple of {multiple}"),
                ));
            }
            if v > MAX_SIDE {
                return Err(Error::profile(
                    flag,
                    format!("{v} exceeds {MAX_SIDE} pixels"),
                ));
            }
        }
        if frames > MAX_FRAMES {
            return Err(Error::profile(
                "--frames",
                format!("{frames} exceeds {MAX_FRAMES} frames"),
            ));
        }
        if frames == 0 || !(frames - 1).is_multiple_of(VAE_STRIDE_T) {
            return Err(Error::profile(
                "--frames",
                format!("{frames} is not of the form 4k+1 (1, 5, 9, ..., 81)"),
            ));
        }
        if text_len == 0 || text_len > 4096 {
            return Err(Error::profile(
                "--text-len",
                format!("{text_len} is not in 1..=4096"),
            ));
        }
        Ok(Profile {
            name: name.to_string(),
            width,
            height,
            frames,
            text_len,
            batch: BatchMode::Fixed(1),
            reference_images: 0,
        })
    }

    /// The profile with `n` VACE reference images (`--reference-images`).
    pub fn with_reference_images(mut self, n: u32) -> Result<Self> {
        if n > MAX_REFERENCE_IMAGES {
            return Err(Error::profile(
                "--reference-images",
                format!("{n} exceeds {MAX_REFERENCE_IMAGES} reference images"),
            ));
        }
        self.reference_images = n;
        Ok(self)
    }

    /// Checks a profile read from a file (a manifest) against every rule
    /// [`Profile::custom`] and [`Profile::with_batch`] apply.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() || self.name.len() > 64 {
            return Err(Error::profile("profile", "name must have 1 to 64 bytes"));
        }
        Self::new(
            &self.name,
            self.width,
            self.height,
            self.frames,
            self.text_len,
        )?
        .with_batch(self.batch)?
        .with_reference_images(self.reference_images)?;
        if let BatchMode::Fixed(b) = self.batch
            && b > 64
        {
            return Err(Error::profile("--batch", format!("batch {b} exceeds 64")));
        }
        Ok(())
    }

    pub fn with_batch(mut self, batch: BatchMode) -> Result<Self> {
        if batch == BatchMode::Fixed(0) {
            return Err(Error::profile("--batch", "batch must be at least 1"));
        }
        self.batch = batch;
        Ok(self)
    }

    /// Latent frames `T' = (F - 1)/4 + 1`.
    pub fn latent_frames(&self) -> u32 {
        (self.frames - 1) / VAE_STRIDE_T + 1
    }
    pub fn latent_height(&self) -> u32 {
        self.height / VAE_STRIDE_S
    }
    pub fn latent_width(&self) -> u32 {
        self.width / VAE_STRIDE_S
    }
    /// Latent shape without batch: `[16, T', H/8, W/8]`.
    pub fn latent_shape(&self, channels: u32) -> [u32; 4] {
        [
            channels,
            self.latent_frames(),
            self.latent_height(),
            self.latent_width(),
        ]
    }
    /// Latent frames the DiT sees: the video's `T'` plus one per VACE
    /// reference image (in front; `docs/WAN.md` §14).
    pub fn dit_latent_frames(&self) -> u32 {
        self.latent_frames() + self.reference_images
    }
    /// The DiT's latent shape without batch: `[c, T' + refs, H/8, W/8]`
    /// (the video's [`Profile::latent_shape`] when there are no references).
    pub fn dit_latent_shape(&self, channels: u32) -> [u32; 4] {
        [
            channels,
            self.dit_latent_frames(),
            self.latent_height(),
            self.latent_width(),
        ]
    }
    /// Patch grid `(F_p, H_p, W_p)` of the DiT (reference frames included).
    pub fn patch_grid(&self) -> (u32, u32, u32) {
        (
            self.dit_latent_frames() / PATCH.0,
            self.latent_height() / PATCH.1,
            self.latent_width() / PATCH.2,
        )
    }
    /// DiT sequence length `F_p·H_p·W_p`.
    pub fn tokens(&self) -> u32 {
        let (f, h, w) = self.patch_grid();
        f * h * w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn builtin_shapes_match_the_spec() {
        let p = Profile::builtin("480p").unwrap();
        assert_eq!(p.latent_shape(16), [16, 21, 60, 104]);
        assert_eq!(p.tokens(), 32_760);
        let p = Profile::builtin("720p").unwrap();
        assert_eq!(p.latent_shape(16), [16, 21, 90, 160]);
        assert_eq!(p.tokens(), 75_600);
        let p = Profile::builtin("720p-portrait").unwrap();
        assert_eq!((p.width, p.height), (720, 1280));
        assert_eq!(p.tokens(), 75_600);
        assert_eq!(Profile::builtin("480p-portrait").unwrap().tokens(), 32_760);
    }

    #[test]
    fn invalid_sizes_name_the_flag() {
        let e = Profile::custom(840, 480, 81, 512).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidProfile);
        assert!(e.to_string().contains("--width"), "{e}");
        let e = Profile::custom(832, 488, 81, 512).unwrap_err();
        assert!(e.to_string().contains("--height"), "{e}");
        let e = Profile::custom(832, 480, 80, 512).unwrap_err();
        assert!(e.to_string().contains("--frames"), "{e}");
        let e = Profile::custom(832, 480, 0, 512).unwrap_err();
        assert!(e.to_string().contains("--frames"), "{e}");
        let e = Profile::custom(832, 480, 81, 0).unwrap_err();
        assert!(e.to_string().contains("--text-len"), "{e}");
        let e = Profile::builtin("1080p").unwrap_err();
        assert!(e.to_string().contains("--profile"), "{e}");
        assert!(Profile::custom(32, 32, 9, 32).is_ok());
        assert!(Profile::custom(32, 32, 1, 32).is_ok());
    }

    #[test]
    fn frame_rule_holds_for_every_valid_count() {
        for k in 0..40 {
            let p = Profile::custom(64, 48, 4 * k + 1, 16).unwrap();
            assert_eq!(p.latent_frames(), k + 1);
            assert!(Profile::custom(64, 48, 4 * k + 2, 16).is_err());
            assert!(Profile::custom(64, 48, 4 * k + 3, 16).is_err());
            assert!(Profile::custom(64, 48, 4 * k + 4, 16).is_err());
        }
    }

    #[test]
    fn profile_round_trips_through_json() {
        let p = Profile::builtin("720p")
            .unwrap()
            .with_batch(BatchMode::Dynamic)
            .unwrap();
        let s = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Profile>(&s).unwrap(), p);
        let p = p.with_batch(BatchMode::Fixed(2)).unwrap();
        let s = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Profile>(&s).unwrap(), p);
        assert!(p.with_batch(BatchMode::Fixed(0)).is_err());
        // No reference images: no field (older manifests read the same).
        assert!(!s.contains("reference_images"));
        let v = Profile::builtin("720p")
            .unwrap()
            .with_reference_images(2)
            .unwrap();
        let s = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<Profile>(&s).unwrap(), v);
    }

    #[test]
    fn reference_frames_lengthen_only_the_dit_latents() {
        let p = Profile::custom(32, 32, 9, 64)
            .unwrap()
            .with_reference_images(2)
            .unwrap();
        assert_eq!(p.latent_shape(16), [16, 3, 4, 4]);
        assert_eq!(p.dit_latent_shape(16), [16, 5, 4, 4]);
        assert_eq!(p.patch_grid(), (5, 2, 2));
        let e = p.with_reference_images(17).unwrap_err();
        assert!(e.to_string().contains("--reference-images"), "{e}");
    }
}
