//! First-last-frame-to-video conditioning (`docs/WAN.md` §13), shared with
//! I2V where the two agree.
//!
//! - the condition mask: which pixel frames of the conditioning video are
//!   known (frame 0 for I2V, frames 0 and F−1 for FLF2V), folded into 4
//!   channels per latent frame the way `wan/first_last_frame2video.py` and
//!   `wan/image2video.py` fold it;
//! - the image context: the CLIP tokens of a sample's images side by side
//!   in one row, `[1, images·257, W]` (FLF2V: first frame's, then last
//!   frame's), and the view of the reference `[2B, 257, W]` layout as the
//!   engine's `[B, 514, W]` (the same bytes).

use std::collections::BTreeMap;

use wanrt_core::TensorSpec;

use crate::error::{Error, Result};
use crate::tensorfile::HostTensor;

/// The condition mask `[1, 4, T', H', W']` for a conditioning video of
/// `frames` pixel frames (`4·(T'−1) + 1`) of which `known` are given.
///
/// Per pixel frame a flag (1 known, 0 generated); frame 0's flag is
/// repeated four times in front (the first latent frame encodes one pixel
/// frame, the others four), and the `4·T'` flags are read four per latent
/// frame as its four channels. So I2V's first latent frame is `[1,1,1,1]`,
/// and FLF2V's last one `[0,0,0,1]` (frame F−1 is the fourth of its group).
pub fn condition_mask(
    frames: usize,
    known: &[usize],
    latent_height: usize,
    latent_width: usize,
) -> Result<HostTensor> {
    if frames == 0 || !(frames - 1).is_multiple_of(4) {
        return Err(Error::arg(
            "--frames",
            format!("{frames} frames is not of the form 4k+1"),
        ));
    }
    if let Some(&f) = known.iter().find(|&&f| f >= frames) {
        return Err(Error::arg(
            "--frames",
            format!("known frame {f} outside the {frames} frames"),
        ));
    }
    let lt = (frames - 1) / 4 + 1;
    let mut flags = vec![0f32; frames];
    for &f in known {
        flags[f] = 1.0;
    }
    let folded: Vec<f32> = std::iter::repeat_n(flags[0], 4)
        .chain(flags[1..].iter().copied())
        .collect();
    let plane = latent_height * latent_width;
    let mut mask = vec![0f32; 4 * lt * plane];
    for t in 0..lt {
        for c in 0..4 {
            let v = folded[4 * t + c];
            let at = (c * lt + t) * plane;
            mask[at..at + plane].fill(v);
        }
    }
    Ok(HostTensor::from_f32(
        vec![1, 4, lt as u64, latent_height as u64, latent_width as u64],
        &mask,
    ))
}

/// One sample's image context from the CLIP output of its `k` images
/// `[k, T, W]`: `[1, k·T, W]` (the rows side by side, a view).
pub fn tokens_of_one_sample(clip_out: HostTensor) -> Result<HostTensor> {
    match clip_out.shape[..] {
        [k, t, w] if k > 0 => Ok(HostTensor {
            shape: vec![1, k * t, w],
            ..clip_out
        }),
        _ => Err(Error::Inference {
            network: "image_encoder".into(),
            reason: format!(
                "image_embeds has shape {:?}, expected [k, T, W]",
                clip_out.shape
            ),
        }),
    }
}

/// The name of the DiT's image-token input.
pub const IMAGE_INPUT: &str = "encoder_hidden_states_image";

/// `encoder_hidden_states_image` as the reference FLF2V code lays it out,
/// `[2B, 257, W]` (the images of a sample on consecutive rows), is the
/// engine's `[B, 514, W]` with the same bytes: the shape to view it as, or
/// `None` when the input is absent, already in the engine's shape, or not
/// such a layout (the contract check then names the mismatch).
pub fn image_rows_view(
    specs: &[TensorSpec],
    inputs: &BTreeMap<String, HostTensor>,
) -> Option<Vec<u64>> {
    let want = specs
        .iter()
        .find(|s| s.name == IMAGE_INPUT)?
        .concrete_shape(1);
    let got = &inputs.get(IMAGE_INPUT)?.shape;
    let ([rows, tokens, width], [_, want_tokens, want_width]) = (&got[..], &want[..]) else {
        return None;
    };
    if *tokens == 0 || want_tokens == tokens || width != want_width {
        return None;
    }
    if !want_tokens.is_multiple_of(*tokens) {
        return None;
    }
    let per_sample = want_tokens / tokens;
    (*rows > 0 && rows.is_multiple_of(per_sample))
        .then(|| vec![rows / per_sample, *want_tokens, *width])
}

/// `inputs` with the image tokens viewed in the engine's layout
/// ([`image_rows_view`]); borrowed unchanged when no view applies.
pub fn with_image_rows_viewed<'a>(
    specs: &[TensorSpec],
    inputs: &'a BTreeMap<String, HostTensor>,
) -> std::borrow::Cow<'a, BTreeMap<String, HostTensor>> {
    match image_rows_view(specs, inputs) {
        None => std::borrow::Cow::Borrowed(inputs),
        Some(shape) => {
            let mut owned = inputs.clone();
            if let Some(t) = owned.get_mut(IMAGE_INPUT) {
                t.shape = shape;
            }
            std::borrow::Cow::Owned(owned)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wanrt_core::{DType, Dim};

    #[test]
    fn flf2v_mask_knows_the_first_and_last_frames() {
        // 9 frames → 3 latent frames.
        let m = condition_mask(9, &[0, 8], 1, 2).unwrap();
        assert_eq!(m.shape, vec![1, 4, 3, 1, 2]);
        let v = m.to_f32().unwrap();
        // [c][t][plane 2]
        let at = |c: usize, t: usize| v[(c * 3 + t) * 2];
        for c in 0..4 {
            assert_eq!(at(c, 0), 1.0);
            assert_eq!(at(c, 1), 0.0);
            assert_eq!(at(c, 2), if c == 3 { 1.0 } else { 0.0 }, "channel {c}");
        }
        // I2V: only the first latent frame.
        let m = condition_mask(9, &[0], 1, 1).unwrap().to_f32().unwrap();
        assert_eq!(m, [1., 0., 0., 1., 0., 0., 1., 0., 0., 1., 0., 0.]);
        assert!(condition_mask(8, &[0], 1, 1).is_err());
        assert!(condition_mask(9, &[9], 1, 1).is_err());
    }

    #[test]
    fn reference_image_rows_view_as_one_row_per_sample() {
        let spec = TensorSpec {
            name: "encoder_hidden_states_image".into(),
            dtype: DType::Float32,
            shape: vec![Dim::Batch, Dim::Fixed(514), Dim::Fixed(8)],
        };
        let v: Vec<f32> = (0..4 * 257 * 8).map(|i| i as f32).collect();
        let specs = std::slice::from_ref(&spec);
        let inputs =
            BTreeMap::from([(spec.name.clone(), HostTensor::from_f32(vec![4, 257, 8], &v))]);
        let viewed = with_image_rows_viewed(specs, &inputs);
        let t = &viewed[&spec.name];
        assert_eq!(t.shape, vec![2, 514, 8]);
        assert_eq!(t.to_f32().unwrap(), v);
        // Already the engine's shape, or an odd row count: untouched.
        assert!(image_rows_view(specs, &viewed).is_none());
        let odd = BTreeMap::from([(
            spec.name.clone(),
            HostTensor::from_f32(vec![3, 257, 8], &v[..3 * 257 * 8]),
        )]);
        assert!(image_rows_view(specs, &odd).is_none());
    }
}
