//! VACE conditioning: the 96-channel context a VACE DiT reads
//! (`control_hidden_states`), built the way the official code builds it
//! (`wan/vace.py`: `WanVace.prepare_source`, `vace_encode_frames`,
//! `vace_encode_masks`, `vace_latent`; `docs/WAN.md` §14).
//!
//! From decoded frames (the caller reads the files):
//!
//! * the control video in [−1, 1] (`u8 / 127.5 − 1`) and the mask
//!   (`clamp((u8 / 127.5 − 1 + 1) / 2, 0, 1)` of its first channel, white =
//!   generate), both exactly the profile's frame count and size; without a
//!   control video the video is zeros and the mask ones (reference-only
//!   generation), without a mask the mask is ones;
//! * `inactive = video · (1 − m)`, `reactive = video · m` with the
//!   thresholded mask `m = mask > 0.5`, each through the VAE encoder and
//!   normalised: 16 + 16 channels over the video's `F'` latent frames;
//! * the reference images, each letterboxed onto a white canvas of the
//!   video size (scale `min(H/h, W/w)`, bilinear, centred) and encoded
//!   alone (one latent frame each), placed in front in the order given
//!   (the official order; diffusers reverses several), with zeros in the
//!   reactive half;
//! * 64 mask channels from the **un-thresholded** mask (each 8×8 pixel
//!   block's values become channels `8·row + column`), nearest-exact in
//!   time to `F'` frames, zeros for the reference frames.
//!
//! `control_hidden_states = [inactive ‖ reactive ‖ mask]`, `[1, 96, refs +
//! F', H/8, W/8]`; the DiT's latents carry the same reference frames in
//! front, and the decode drops them.

use crate::chunked::TimeAssembler;
use crate::engine::Network;
use crate::error::{Error, Result};
use crate::image::{ImageTensor, RgbImage, to_tensor_pm1};
use crate::tensorfile::HostTensor;
use wanrt_core::{Profile, VaeConfig};

/// The official default context scale (`generate.py --context_scale`).
pub const DEFAULT_CONTEXT_SCALE: f32 = 1.0;

/// What a VACE generation is conditioned on, decoded.
#[derive(Debug, Clone, Default)]
pub struct VaceInputs {
    /// Control video frames (`--control-video`), exactly the profile's
    /// frame count and size; `None`: reference-only (zeros, all generated).
    pub video: Option<Vec<RgbImage>>,
    /// Mask frames (`--control-mask`; the first channel is read, white =
    /// generate, grey levels stay fractional); `None`: generate everywhere.
    pub mask: Option<Vec<RgbImage>>,
    /// Reference images (`--reference-image`), in the official order: the
    /// first is latent frame 0.
    pub reference_images: Vec<RgbImage>,
    /// `--context-scale` (default [`DEFAULT_CONTEXT_SCALE`]).
    pub context_scale: Option<f32>,
}

/// The tensors of a VACE context, as the official code names its stages
/// (each `[1, C, T, H, W]`, float32).
#[derive(Debug, Clone)]
pub struct VaceContext {
    /// The control video in [−1, 1], `[1, 3, F, H, W]`.
    pub video: HostTensor,
    /// The un-thresholded mask, `[1, 1, F, H, W]`.
    pub mask: HostTensor,
    /// The letterboxed reference images, `[1, refs, 3, H, W]` (none: 0).
    pub reference_images: HostTensor,
    /// `z0`: `[1, 32, refs + F', h, w]`.
    pub latents: HostTensor,
    /// `m0`: `[1, 64, refs + F', h, w]`.
    pub mask_channels: HostTensor,
    /// `z = z0 ‖ m0`: `control_hidden_states [1, 96, refs + F', h, w]`.
    pub context: HostTensor,
}

fn bad(flag: &str, reason: String) -> Error {
    Error::arg(flag, reason)
}

/// Checks a control video's frame count against the profile (`flag`: the
/// option that gave it). Readers call it before decoding the frames.
pub fn check_frame_count(flag: &str, frames: usize, p: &Profile) -> Result<()> {
    if frames != p.frames as usize {
        return Err(bad(
            flag,
            format!(
                "{frames} frames; these engines were compiled for {} (wan-compile --frames)",
                p.frames
            ),
        ));
    }
    Ok(())
}

/// Checks frame `index`'s size against the profile. Readers call it as
/// each frame is decoded, so a wrong video is refused at its first frame.
pub fn check_frame_size(
    flag: &str,
    index: usize,
    width: u32,
    height: u32,
    p: &Profile,
) -> Result<()> {
    if (width, height) != (p.width, p.height) {
        return Err(bad(
            flag,
            format!(
                "frame {index} is {width}x{height}; these engines take {}x{} (resize the frames to the profile's size)",
                p.width, p.height
            ),
        ));
    }
    Ok(())
}

/// Checks a frame list against the profile: count and size.
fn check_frames(flag: &str, frames: &[RgbImage], p: &Profile) -> Result<()> {
    check_frame_count(flag, frames.len(), p)?;
    frames
        .iter()
        .enumerate()
        .try_for_each(|(i, f)| check_frame_size(flag, i, f.width(), f.height(), p))
}

/// `[3, F, H, W]` of `u8 / 127.5 − 1` (the official video normalisation;
/// bitwise equal to diffusers' `2·(u8/255) − 1`).
fn video_pm1(frames: &[RgbImage], p: &Profile) -> Vec<f32> {
    let (f, plane) = (frames.len(), (p.width * p.height) as usize);
    let mut v = vec![0f32; 3 * f * plane];
    for (t, frame) in frames.iter().enumerate() {
        for (i, px) in frame.pixels().chunks_exact(3).enumerate() {
            for c in 0..3 {
                v[(c * f + t) * plane + i] = px[c] as f32 / 127.5 - 1.0;
            }
        }
    }
    v
}

/// `[F, H, W]`: `clamp((x + 1) / 2, 0, 1)` of the normalised first channel.
fn mask_unit(frames: &[RgbImage]) -> Vec<f32> {
    frames
        .iter()
        .flat_map(|f| f.pixels().chunks_exact(3).map(|px| px[0]))
        .map(|u| ((u as f32 / 127.5 - 1.0 + 1.0) / 2.0).clamp(0.0, 1.0))
        .collect()
}

/// `F.interpolate(x[None], size=(h, w), mode='bilinear',
/// align_corners=False)` of `[C, H, W]` planes, bit for bit as PyTorch's
/// x86-64 CPU kernel computes it for three channels on one thread (the
/// channels-last kernel, which the official code's references go
/// through). Per axis: `scale = in/out` in f32, the source
/// `max(fma(scale, dst + 0.5, −0.5), 0)`, `i0 = min(⌊src⌋, in − 1)`,
/// `λ1 = clamp(src − i0, 0, 1)` and `λ0 = 1 − λ1`; an axis of equal size
/// is copied. The four weights are `w_ab = λh_a·λw_b` and the sum is
/// contracted as the compiled kernel contracts it, `fma(v11, w11,
/// fma(v10, w10, fma(v00, w00, v01·w01)))`. Checked against the
/// reference's letterboxed images: the separable form, or other
/// contractions, differ by an ulp in up to 810 of their 2016 values.
pub fn resize_bilinear(x: &ImageTensor, height: usize, width: usize) -> Result<ImageTensor> {
    let taps = |inp: usize, out: usize| -> Vec<(usize, usize, f32, f32)> {
        let scale = inp as f32 / out as f32;
        (0..out)
            .map(|d| {
                if inp == out {
                    return (d, d, 1.0, 0.0);
                }
                let real = scale.mul_add(d as f32 + 0.5, -0.5).max(0.0);
                let i0 = (real.floor() as usize).min(inp - 1);
                let l1 = (real - i0 as f32).clamp(0.0, 1.0);
                let i1 = if i0 < inp - 1 { i0 + 1 } else { i0 };
                (i0, i1, 1.0 - l1, l1)
            })
            .collect()
    };
    let (c, ih, iw) = (x.channels(), x.height(), x.width());
    let (th, tw) = (taps(ih, height), taps(iw, width));
    let mut out = Vec::with_capacity(c * height * width);
    for plane in x.data().chunks_exact(ih * iw) {
        for &(h0, h1, a0, a1) in &th {
            for &(w0, w1, b0, b1) in &tw {
                let at = |h: usize, w: usize| plane[h * iw + w];
                let (w00, w01, w10, w11) = (a0 * b0, a0 * b1, a1 * b0, a1 * b1);
                let v = at(h1, w1).mul_add(
                    w11,
                    at(h1, w0).mul_add(w10, at(h0, w0).mul_add(w00, at(h0, w1) * w01)),
                );
                out.push(v);
            }
        }
    }
    ImageTensor::new(c, height, width, out)
}

/// A reference image on a white (1.0) canvas of the video size, `[3, H,
/// W]` in [−1, 1]: scaled by `min(H/h, W/w)` to `int(h·s) × int(w·s)`
/// (bilinear), centred at `((H − h')/2, (W − w')/2)`; an image of the video
/// size is taken as it is (the official code skips the resize).
pub fn letterbox_reference(img: &RgbImage, height: u32, width: u32) -> Result<ImageTensor> {
    let x = to_tensor_pm1(img);
    let (h, w) = (img.height() as usize, img.width() as usize);
    let (ch, cw) = (height as usize, width as usize);
    if (h, w) == (ch, cw) {
        return Ok(x);
    }
    let scale = f64::min(ch as f64 / h as f64, cw as f64 / w as f64);
    let (nh, nw) = ((h as f64 * scale) as usize, (w as f64 * scale) as usize);
    if nh == 0 || nw == 0 {
        return Err(bad(
            "--reference-image",
            format!("a {w}x{h} image scales to nothing on a {cw}x{ch} canvas"),
        ));
    }
    let r = resize_bilinear(&x, nh.min(ch), nw.min(cw))?;
    let (nh, nw) = (r.height(), r.width());
    let (top, left) = ((ch - nh) / 2, (cw - nw) / 2);
    let mut canvas = vec![1.0f32; 3 * ch * cw];
    for c in 0..3 {
        for y in 0..nh {
            let src = &r.data()[(c * nh + y) * nw..(c * nh + y + 1) * nw];
            let at = (c * ch + top + y) * cw + left;
            canvas[at..at + nw].copy_from_slice(src);
        }
    }
    ImageTensor::new(3, ch, cw, canvas)
}

/// The official `vace_encode_masks` of one mask `[F, H, W]`: `[64, F', H/8,
/// W/8]`, channel `8·p + q` of latent pixel `(y, x)` holding pixel `(8y +
/// p, 8x + q)`, nearest-exact in time (`src = min(⌊(t + 0.5)·F/F'⌋, F −
/// 1)`, as torch computes it in f32).
pub fn mask_channels(
    mask: &[f32],
    frames: usize,
    height: usize,
    width: usize,
    latent_frames: usize,
) -> Vec<f32> {
    let (h, w) = (height / 8, width / 8);
    let scale = frames as f32 / latent_frames as f32;
    let mut out = vec![0f32; 64 * latent_frames * h * w];
    for t in 0..latent_frames {
        let src = ((((t as f64 + 0.5) * scale as f64) as f32).floor() as usize).min(frames - 1);
        for p in 0..8 {
            for q in 0..8 {
                let ch = p * 8 + q;
                for y in 0..h {
                    for x in 0..w {
                        out[((ch * latent_frames + t) * h + y) * w + x] =
                            mask[(src * height + y * 8 + p) * width + x * 8 + q];
                    }
                }
            }
        }
    }
    out
}

/// Encodes `[1, 3, T, H, W]` (`T` = 1 + 4k) and normalises the latent.
fn encode(vae: &mut Network, cfg: &VaeConfig, video: &HostTensor) -> Result<Vec<f32>> {
    let mut shape = vae.entry.outputs[0].concrete_shape(1);
    shape[2] = (video.shape[2] - 1) / 4 + 1;
    let mut mu = TimeAssembler::new(shape);
    vae.run_streaming_frames(video, |c| mu.append(c))?;
    let mu = mu.finish()?;
    let plane = (mu.shape[2] * mu.shape[3] * mu.shape[4]) as usize;
    let mut z = mu.to_f32().ok_or_else(|| Error::Inference {
        network: "vae_encoder".into(),
        reason: "the latent is not float".into(),
    })?;
    cfg.normalize_latents(&mut z, plane);
    Ok(z)
}

/// Builds the context of `inputs` for engines of profile `p` (their
/// `reference_images` is the number the DiT takes), through the VAE
/// encoder `vae` with the latent statistics `cfg`.
pub fn build_context(
    inputs: &VaceInputs,
    p: &Profile,
    vae: &mut Network,
    cfg: &VaeConfig,
) -> Result<VaceContext> {
    let refs = inputs.reference_images.len();
    if refs != p.reference_images as usize {
        return Err(bad(
            "--reference-image",
            format!(
                "{refs} reference image(s); these engines were compiled for {} (give that many, \
                 or compile engines for {refs} with wan-compile --reference-images {refs})",
                p.reference_images
            ),
        ));
    }
    let (f, hh, ww) = (p.frames as usize, p.height as usize, p.width as usize);
    let (lf, lh, lw) = (
        p.latent_frames() as usize,
        p.latent_height() as usize,
        p.latent_width() as usize,
    );
    let plane = hh * ww;
    let (video, mask) = match (&inputs.video, &inputs.mask) {
        (Some(v), m) => {
            check_frames("--control-video", v, p)?;
            let mask = match m {
                Some(m) => {
                    check_frames("--control-mask", m, p)?;
                    mask_unit(m)
                }
                None => vec![1.0; f * plane],
            };
            (video_pm1(v, p), mask)
        }
        (None, Some(_)) => {
            return Err(bad(
                "--control-mask",
                "a mask needs the control video it masks (--control-video)".into(),
            ));
        }
        (None, None) => (vec![0.0; 3 * f * plane], vec![1.0; f * plane]),
    };
    let shape =
        |c: usize, t: usize, h: usize, w: usize| vec![1, c as u64, t as u64, h as u64, w as u64];

    // inactive / reactive through the VAE encoder (mask > 0.5 only here).
    let mut inactive = video.clone();
    let mut reactive = video.clone();
    for c in 0..3 {
        for i in 0..f * plane {
            let m = if mask[i] > 0.5 { 1.0f32 } else { 0.0 };
            let v = video[c * f * plane + i];
            inactive[c * f * plane + i] = v * (1.0 - m) + 0.0 * m;
            reactive[c * f * plane + i] = v * m + 0.0 * (1.0 - m);
        }
    }
    let z_in = encode(
        vae,
        cfg,
        &HostTensor::from_f32(shape(3, f, hh, ww), &inactive),
    )?;
    let z_re = encode(
        vae,
        cfg,
        &HostTensor::from_f32(shape(3, f, hh, ww), &reactive),
    )?;

    // Reference images, each encoded alone.
    let mut ref_pixels = Vec::with_capacity(refs * 3 * plane);
    let mut ref_latents = Vec::with_capacity(refs);
    for img in &inputs.reference_images {
        let r = letterbox_reference(img, p.height, p.width)?;
        let t = HostTensor::from_f32(shape(3, 1, hh, ww), r.data());
        ref_latents.push(encode(vae, cfg, &t)?);
        ref_pixels.extend_from_slice(r.data());
    }

    // z0 = [ref ‖ 0] frames, then [inactive ‖ reactive]; m0 = [0…, mask].
    let (tt, lp) = (refs + lf, lh * lw);
    let mut z0 = vec![0f32; 32 * tt * lp];
    for c in 0..16 {
        for (j, r) in ref_latents.iter().enumerate() {
            z0[(c * tt + j) * lp..(c * tt + j + 1) * lp].copy_from_slice(&r[c * lp..(c + 1) * lp]);
        }
        let video_at = |ch: usize| (ch * tt + refs) * lp;
        z0[video_at(c)..video_at(c) + lf * lp]
            .copy_from_slice(&z_in[c * lf * lp..(c + 1) * lf * lp]);
        z0[video_at(16 + c)..video_at(16 + c) + lf * lp]
            .copy_from_slice(&z_re[c * lf * lp..(c + 1) * lf * lp]);
    }
    let m = mask_channels(&mask, f, hh, ww, lf);
    let mut m0 = vec![0f32; 64 * tt * lp];
    for c in 0..64 {
        let at = (c * tt + refs) * lp;
        m0[at..at + lf * lp].copy_from_slice(&m[c * lf * lp..(c + 1) * lf * lp]);
    }
    let mut z = z0.clone();
    z.extend_from_slice(&m0);
    Ok(VaceContext {
        video: HostTensor::from_f32(shape(3, f, hh, ww), &video),
        mask: HostTensor::from_f32(shape(1, f, hh, ww), &mask),
        reference_images: HostTensor::from_f32(
            vec![1, refs as u64, 3, hh as u64, ww as u64],
            &ref_pixels,
        ),
        latents: HostTensor::from_f32(shape(32, tt, lh, lw), &z0),
        mask_channels: HostTensor::from_f32(shape(64, tt, lh, lw), &m0),
        context: HostTensor::from_f32(shape(96, tt, lh, lw), &z),
    })
}

/// The hint scales `[n_vace_layers]`: the context scale for every hint, as
/// the official `generate(context_scale=…)`; a non-finite scale is refused.
pub fn hint_scales(context_scale: Option<f32>, n_vace_layers: usize) -> Result<Vec<f32>> {
    let s = context_scale.unwrap_or(DEFAULT_CONTEXT_SCALE);
    if !s.is_finite() {
        return Err(bad(
            "--context-scale",
            format!("{s} is not a finite number"),
        ));
    }
    Ok(vec![s; n_vace_layers])
}

/// Latent frames `refs..` of a `[1, C, T, H, W]` latent: what the decode
/// sees (the official `decode_latent` drops the reference frames).
pub fn video_frames(latents: &HostTensor, refs: u64) -> HostTensor {
    if refs == 0 {
        return latents.clone();
    }
    crate::chunked::slice_time(latents, refs, latents.shape[2] - refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_blocks_become_channels() {
        // 1 frame of 16x8: pixel (y, x) = y·8 + x; latent 2x1.
        let mask: Vec<f32> = (0..128).map(|v| v as f32).collect();
        let m = mask_channels(&mask, 1, 16, 8, 1);
        assert_eq!(m.len(), 64 * 2);
        // channel 8p + q, latent row y: pixel (8y + p, q).
        for p in 0..8 {
            for q in 0..8 {
                for y in 0..2 {
                    assert_eq!(m[(p * 8 + q) * 2 + y], ((8 * y + p) * 8 + q) as f32);
                }
            }
        }
        // Nearest-exact in time: 9 frames → 3 picks frames 1, 4, 7; 81 → 21
        // picks ⌊(t + 0.5)·81/21⌋.
        let frames: Vec<f32> = (0..9).flat_map(|t| [t as f32; 64]).collect();
        let m = mask_channels(&frames, 9, 8, 8, 3);
        assert_eq!([m[0], m[1], m[2]], [1.0, 4.0, 7.0]);
        let frames: Vec<f32> = (0..81).flat_map(|t| [t as f32; 64]).collect();
        let m = mask_channels(&frames, 81, 8, 8, 21);
        assert_eq!(m[0], 1.0);
        assert_eq!(m[20], 79.0);
    }

    #[test]
    fn bilinear_keeps_constants_and_sizes() {
        let x = ImageTensor::new(1, 2, 2, vec![0.0, 1.0, 2.0, 3.0]).unwrap();
        let y = resize_bilinear(&x, 4, 4).unwrap();
        // Corners stay (clamped source), the centre averages.
        assert_eq!(y.data()[0], 0.0);
        assert_eq!(y.data()[15], 3.0);
        assert_eq!(y.data()[5], 0.75);
        let c = ImageTensor::new(1, 3, 5, vec![0.5; 15]).unwrap();
        assert!(
            resize_bilinear(&c, 7, 2)
                .unwrap()
                .data()
                .iter()
                .all(|&v| v == 0.5)
        );
    }

    #[test]
    fn letterbox_centres_on_white() {
        let img = RgbImage::new(4, 2, vec![0; 24]).unwrap(); // black 4x2
        let t = letterbox_reference(&img, 8, 8).unwrap();
        // Scale 2 → 8x4 at rows 2..6.
        let d = t.data();
        assert_eq!(d[0], 1.0);
        assert_eq!(d[2 * 8], -1.0);
        assert_eq!(d[5 * 8 + 7], -1.0);
        assert_eq!(d[6 * 8], 1.0);
    }

    #[test]
    fn scales_default_to_one_and_refuse_nan() {
        assert_eq!(hint_scales(None, 3).unwrap(), vec![1.0; 3]);
        assert_eq!(hint_scales(Some(0.75), 2).unwrap(), vec![0.75; 2]);
        let e = hint_scales(Some(f32::NAN), 2).unwrap_err();
        assert!(e.to_string().contains("--context-scale"), "{e}");
    }
}
