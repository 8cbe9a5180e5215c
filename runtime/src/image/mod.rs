//! Image input and preprocessing for image-to-video (I2V / FLF2V).
//!
//! Mirrors the official Wan2.1 code (`docs/WAN.md` §5, §9.1):
//!
//! * `wan/image2video.py` (`WanI2V.generate`): `img` is a PIL image in RGB
//!   (`Image.open(path).convert('RGB')` in `generate.py`), turned into
//!   `TF.to_tensor(img).sub_(0.5).div_(0.5)` ([`to_tensor_pm1`]); the video
//!   size comes from the image's aspect ratio and a maximum area
//!   ([`official_i2v_size`]); the conditioning frame is
//!   `F.interpolate(img[None].cpu(), size=(h, w), mode='bicubic')`
//!   ([`conditioning_frame`]).
//! * `wan/modules/clip.py` (`CLIPModel.visual`): the original-resolution
//!   image in [−1, 1] is squashed to 224×224 with
//!   `F.interpolate(mode='bicubic', align_corners=False)`, mapped by
//!   `mul_(0.5).add_(0.5)` and normalised with `T.Normalize(mean, std)`
//!   ([`clip_preprocess`]).
//!
//! The bicubic resize ([`resize_bicubic`]) reproduces PyTorch's CPU kernel
//! bit for bit (see `resize.rs`). This is **not** what the diffusers
//! pipeline does (PIL Lanczos for the frame, PIL bicubic + center crop for
//! CLIP; §10); wanrt follows the official code.
//!
//! Decoding image files (PNG, JPEG, WebP → [`RgbImage`] the way PIL does)
//! is the application layer's: `wanrt-media` (`wanrt_media::image`). The
//! pipeline takes decoded images.

mod resize;
#[cfg(test)]
mod tests;

use std::fmt;
use wanrt_core::profile::{PATCH, VAE_STRIDE_S};

use crate::error::{Error, Result};
use crate::tensorfile::HostTensor;

/// Largest accepted image side in pixels; larger files are refused before
/// decoding (`ImageProblem::TooLarge`). Also the largest resize target.
pub const MAX_IMAGE_SIDE: u32 = 16384;

/// Side of the square CLIP input (`image_size` of ViT-H/14, §2.3).
pub const CLIP_IMAGE_SIZE: usize = 224;
/// Per-channel mean of the CLIP normalisation (`wan/modules/clip.py`).
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// Per-channel standard deviation of the CLIP normalisation.
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Maximum areas of the official I2V presets (`--size 1280*720`,
/// `832*480`; `MAX_AREA_CONFIGS`).
pub const MAX_AREA_720P: u64 = 720 * 1280;
pub const MAX_AREA_480P: u64 = 480 * 832;

/// Why an image file was refused. Carried by [`Error::Image`] together with
/// the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageProblem {
    /// The file does not exist.
    Missing,
    /// The file exists but could not be read (permissions, a directory…).
    Unreadable(String),
    /// The file has no bytes.
    Empty,
    /// The bytes are not a PNG, JPEG or WebP image.
    NotAnImage,
    /// An image format or a feature of one that this build does not decode.
    Unsupported(String),
    /// A PNG, JPEG or WebP file that ends early.
    Truncated(String),
    /// A PNG, JPEG or WebP file whose contents are damaged.
    Corrupt(String),
    /// The image has no pixels.
    ZeroSized { width: u32, height: u32 },
    /// The image is larger than [`MAX_IMAGE_SIDE`] on a side.
    TooLarge { width: u32, height: u32, max: u32 },
}

impl fmt::Display for ImageProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageProblem::Missing => write!(f, "no such file"),
            ImageProblem::Unreadable(why) => write!(f, "cannot be read: {why}"),
            ImageProblem::Empty => write!(f, "the file is empty"),
            ImageProblem::NotAnImage => {
                write!(f, "not an image (expected PNG, JPEG or WebP)")
            }
            ImageProblem::Unsupported(why) => write!(f, "unsupported image: {why}"),
            ImageProblem::Truncated(why) => write!(f, "truncated image: {why}"),
            ImageProblem::Corrupt(why) => write!(f, "corrupt image: {why}"),
            ImageProblem::ZeroSized { width, height } => {
                write!(f, "the image has no pixels ({width}x{height})")
            }
            ImageProblem::TooLarge { width, height, max } => write!(
                f,
                "the image is {width}x{height} (width x height); at most {max} pixels a side are accepted"
            ),
        }
    }
}

/// An 8-bit RGB image: `height` rows of `width` interleaved RGB pixels (the
/// layout of `np.array(pil_image)`, `[H, W, 3]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl RgbImage {
    /// Wraps `[H, W, 3]` bytes; the length must be `width · height · 3` and
    /// both sides non-zero.
    pub fn new(width: u32, height: u32, pixels: Vec<u8>) -> Result<Self> {
        let expected = width as u64 * height as u64 * 3;
        if width == 0 || height == 0 || pixels.len() as u64 != expected {
            return Err(Error::arg(
                "image",
                format!(
                    "{} bytes for a {width}x{height} RGB image (expected {expected}, non-zero sides)",
                    pixels.len()
                ),
            ));
        }
        Ok(RgbImage {
            width,
            height,
            pixels,
        })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// Interleaved RGB bytes, row-major `[H, W, 3]`.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The pixel at column `x`, row `y`, or `None` outside the image.
    pub fn get(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        Some([self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]])
    }
}

/// A float image as `[C, H, W]` planes, row-major (a torch image tensor
/// without the batch dimension).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTensor {
    channels: usize,
    height: usize,
    width: usize,
    data: Vec<f32>,
}

impl ImageTensor {
    /// Wraps `[C, H, W]` values; the length must match and all sizes be
    /// non-zero.
    pub fn new(channels: usize, height: usize, width: usize, data: Vec<f32>) -> Result<Self> {
        let expected = channels
            .checked_mul(height)
            .and_then(|n| n.checked_mul(width));
        if channels == 0 || height == 0 || width == 0 || expected != Some(data.len()) {
            return Err(Error::arg(
                "image tensor",
                format!(
                    "{} values for [{channels}, {height}, {width}] (sizes must be non-zero and match)",
                    data.len()
                ),
            ));
        }
        Ok(ImageTensor {
            channels,
            height,
            width,
            data,
        })
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// `[C, H, W]` values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// As an f32 host tensor of shape `[1, C, H, W]`.
    pub fn to_host_tensor(&self) -> HostTensor {
        HostTensor::from_f32(
            vec![
                1,
                self.channels as u64,
                self.height as u64,
                self.width as u64,
            ],
            &self.data,
        )
    }
}

/// `TF.to_tensor(img).sub_(0.5).div_(0.5)`: `[3, H, W]` in [−1, 1], with
/// torch's float32 operations (`x / 255`, then `(x − 0.5) / 0.5`), so the
/// values are bit-identical.
pub fn to_tensor_pm1(img: &RgbImage) -> ImageTensor {
    let (w, h) = (img.width as usize, img.height as usize);
    let plane = w * h;
    let mut data = vec![0.0f32; 3 * plane];
    for (i, px) in img.pixels.chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * plane + i] = (px[c] as f32 / 255.0 - 0.5) / 0.5;
        }
    }
    ImageTensor {
        channels: 3,
        height: h,
        width: w,
        data,
    }
}

/// Bicubic resize of `[C, H, W]` planes to `height × width`, matching
/// `F.interpolate(x[None], size=(height, width), mode='bicubic',
/// align_corners=False)` (no antialias, values not clamped) of PyTorch's CPU
/// kernel bit for bit. Resizing to the input size returns the input.
pub fn resize_bicubic(x: &ImageTensor, height: usize, width: usize) -> Result<ImageTensor> {
    let max = MAX_IMAGE_SIDE as usize;
    if height == 0 || width == 0 || height > max || width > max {
        return Err(Error::arg(
            "resize",
            format!("target size {height}x{width} must be 1..={max} pixels a side"),
        ));
    }
    if x.height > max || x.width > max {
        return Err(Error::arg(
            "resize",
            format!(
                "input size {}x{} exceeds {max} pixels a side",
                x.height, x.width
            ),
        ));
    }
    let data = resize::bicubic_planes(&x.data, x.channels, (x.height, x.width), (height, width));
    Ok(ImageTensor {
        channels: x.channels,
        height,
        width,
        data,
    })
}

/// The official CLIP input of one image (`CLIPModel.visual`, §5.1): the
/// original-resolution image in [−1, 1] (`[3, H, W]`, from
/// [`to_tensor_pm1`]) squashed to `size × size` by [`resize_bicubic`]
/// (aspect ratio not kept, no crop), then `x · 0.5 + 0.5` and
/// `(x − mean) / std` per channel, each a separate f32 operation as in
/// torch. Returns `[1, 3, size, size]` (FLF2V batches two with
/// [`HostTensor::concat_batch`]). `size` is [`CLIP_IMAGE_SIZE`] for Wan2.1.
pub fn clip_preprocess(img_pm1: &ImageTensor, size: usize) -> Result<HostTensor> {
    if img_pm1.channels != 3 {
        return Err(Error::arg(
            "clip image",
            format!("expected 3 channels, got {}", img_pm1.channels),
        ));
    }
    let mut x = resize_bicubic(img_pm1, size, size)?.into_data();
    let plane = size * size;
    for (c, values) in x.chunks_exact_mut(plane).enumerate() {
        // `torch.as_tensor(mean, dtype=float32)`: the f64 constants rounded
        // to f32.
        let mean = CLIP_MEAN[c] as f32;
        let std = CLIP_STD[c] as f32;
        for v in values {
            let unit = *v * 0.5 + 0.5;
            *v = (unit - mean) / std;
        }
    }
    Ok(HostTensor::from_f32(
        vec![1, 3, size as u64, size as u64],
        &x,
    ))
}

/// Video size of the official I2V size rule (§5.2), with its inputs kept
/// for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct I2vSize {
    /// Image height and width the rule was applied to.
    pub image_height: u32,
    pub image_width: u32,
    /// Maximum pixel area (e.g. [`MAX_AREA_480P`]).
    pub max_area: u64,
    /// Latent height and width (multiples of the DiT patch, 2).
    pub lat_h: u32,
    pub lat_w: u32,
    /// Video height and width (`8 · lat_h`, `8 · lat_w`).
    pub height: u32,
    pub width: u32,
}

impl I2vSize {
    /// Whether engines compiled for `height × width` (pixels) run this image
    /// at the official size.
    pub fn matches(&self, height: u32, width: u32) -> bool {
        self.height == height && self.width == width
    }

    /// `None` when the engines' `height × width` is the official size of
    /// this image; otherwise a sentence explaining the difference.
    pub fn mismatch(&self, engine_height: u32, engine_width: u32) -> Option<String> {
        if self.matches(engine_height, engine_width) {
            return None;
        }
        Some(format!(
            "this {}x{} image maps to {}x{} (height x width) under the official Wan2.1 rule \
             (max area {}); the engines were compiled for {}x{}",
            self.image_height,
            self.image_width,
            self.height,
            self.width,
            self.max_area,
            engine_height,
            engine_width
        ))
    }
}

/// The official I2V size rule (`wan/image2video.py`, §5.2): for an image
/// of `image_height × image_width` and a maximum area `A`, with
/// `ar = h0 / w0` in f64:
/// `lat_h = round(√(A·ar) // 8 // 2 · 2)`, `lat_w = round(√(A/ar) // 8 // 2 · 2)`,
/// `h = 8·lat_h`, `w = 8·lat_w`, all float64 as in Python/NumPy (so an exact
/// 480×832 image at area 480·832 gives 464×832: √ = 479.99999999999994).
/// Errors when a side is zero or the area is too small for one latent patch.
pub fn official_i2v_size(image_height: u32, image_width: u32, max_area: u64) -> Result<I2vSize> {
    if image_height == 0 || image_width == 0 || max_area == 0 {
        return Err(Error::arg(
            "image size",
            format!("image {image_height}x{image_width} and max area {max_area} must be non-zero"),
        ));
    }
    let stride = VAE_STRIDE_S as f64;
    let patch_h = PATCH.1 as f64;
    let patch_w = PATCH.2 as f64;
    let aspect = image_height as f64 / image_width as f64;
    let area = max_area as f64;
    // Python's `float // float` is `floor(x / y)` here: both divisors are
    // powers of two, so the quotients are exact.
    let lat = |side: f64, patch: f64| ((side.sqrt() / stride).floor() / patch).floor() * patch;
    let lat_h = lat(area * aspect, patch_h);
    let lat_w = lat(area / aspect, patch_w);
    let limit = (MAX_IMAGE_SIDE / VAE_STRIDE_S) as f64;
    if !(lat_h >= patch_h && lat_w >= patch_w && lat_h <= limit && lat_w <= limit) {
        return Err(Error::arg(
            "image size",
            format!(
                "image {image_height}x{image_width} at max area {max_area} gives a latent of \
                 {lat_h}x{lat_w}, outside {patch_h}..={limit} per side"
            ),
        ));
    }
    // In range 2..=2048, integral: exact conversions.
    let (lat_h, lat_w) = (lat_h.round() as u32, lat_w.round() as u32);
    Ok(I2vSize {
        image_height,
        image_width,
        max_area,
        lat_h,
        lat_w,
        height: lat_h * VAE_STRIDE_S,
        width: lat_w * VAE_STRIDE_S,
    })
}

/// Frame 0 of the I2V conditioning video (frame F−1 for FLF2V's last
/// image): the image in [−1, 1] resized to the video's `height × width`
/// with [`resize_bicubic`] (`F.interpolate(img[None].cpu(), size=(h, w),
/// mode='bicubic')`, values not clamped).
pub fn conditioning_frame(img_pm1: &ImageTensor, height: u32, width: u32) -> Result<ImageTensor> {
    resize_bicubic(img_pm1, height as usize, width as usize)
}
