//! Decoding image files into the runtime's [`RgbImage`] (`--image`,
//! uploaded `input_reference` images).
//!
//! Decoding ([`load_image`]) reads PNG, JPEG and WebP and converts to 8-bit
//! RGB the way PIL's `convert('RGB')` does after `Image.open`:
//!
//! * alpha is dropped, never composited;
//! * gray (and gray + alpha) is replicated to three channels; palette
//!   images are expanded through their palette (transparency ignored);
//! * 16-bit RGB, RGBA and gray + alpha keep the high byte (PIL decodes them
//!   with the `;16B` raw modes); 16-bit gray becomes PIL's `I;16`, whose
//!   conversion to RGB **clips** to 255 rather than scaling — reproduced
//!   here, so such images come out nearly white exactly as in the official
//!   pipeline;
//! * EXIF orientation and ICC profiles are ignored (PIL's `open` applies
//!   neither; the official code calls no `exif_transpose`).
//!
//! PNG and lossless WebP decode to exactly PIL's pixels. Lossy formats
//! (JPEG, lossy WebP) are decoded by pure-Rust decoders (`zune-jpeg`,
//! `image-webp`), whose IDCT, chroma upsampling and YUV conversion may
//! differ from libjpeg-turbo / libwebp by a level or two on some pixels;
//! CMYK JPEGs are converted by the decoder, not by PIL's formula.

#[cfg(test)]
mod tests;

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageError, ImageFormat, ImageReader, Limits};
use wanrt_runtime::error::{Error, Result};
use wanrt_runtime::image::{ImageProblem, MAX_IMAGE_SIDE, RgbImage};

/// Largest image file read (`--image`): 256 MiB, a regular file only.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;

fn image_error(file: &Path, problem: ImageProblem) -> Error {
    Error::Image {
        file: file.to_path_buf(),
        problem,
    }
}

/// Reads and decodes a PNG, JPEG or WebP file into 8-bit RGB (PIL's
/// `Image.open(path).convert('RGB')`; see the module docs for the
/// conversions). The format is taken from the file's contents, not its
/// name. Every failure is an [`Error::Image`] naming the file.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bytes = wanrt_core::fsio::read_capped(path, MAX_IMAGE_FILE_BYTES).map_err(|e| {
        let problem = match e.kind() {
            std::io::ErrorKind::NotFound => ImageProblem::Missing,
            _ => ImageProblem::Unreadable(e.to_string()),
        };
        image_error(path, problem)
    })?;
    decode_image(&bytes, path)
}

/// Decodes an in-memory PNG, JPEG or WebP file like [`load_image`]; `file`
/// only names the source in errors.
pub fn decode_image(bytes: &[u8], file: &Path) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(image_error(file, ImageProblem::Empty));
    }
    let format = match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)) => f,
        Ok(other) => {
            return Err(image_error(
                file,
                ImageProblem::Unsupported(format!(
                    "{other:?} images are not read; use PNG, JPEG or WebP"
                )),
            ));
        }
        Err(_) => return Err(image_error(file, ImageProblem::NotAnImage)),
    };

    // Dimensions first, so that absurd sizes are refused before any
    // allocation proportional to them.
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| image_error(file, problem_of(e)))?;
    check_dimensions(file, width, height)?;

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    // The decoded buffer of the largest accepted image (RGBA, 16 bits),
    // plus slack for the decoders' working memory.
    limits.max_alloc = Some(MAX_IMAGE_SIDE as u64 * MAX_IMAGE_SIDE as u64 * 8 + (256 << 20));
    reader.limits(limits);
    let decoded = reader
        .decode()
        .map_err(|e| image_error(file, problem_of(e)))?;
    check_dimensions(file, decoded.width(), decoded.height())?;

    let gray16_png = format == ImageFormat::Png && png_is_gray16(bytes);
    to_rgb8_like_pil(decoded, gray16_png)
        .ok_or_else(|| {
            image_error(
                file,
                ImageProblem::Unsupported("floating-point pixels".into()),
            )
        })
        .and_then(|(w, h, pixels)| {
            RgbImage::new(w, h, pixels).map_err(|e| {
                image_error(file, ImageProblem::Corrupt(format!("decoded buffer: {e}")))
            })
        })
}

fn check_dimensions(file: &Path, width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(image_error(file, ImageProblem::ZeroSized { width, height }));
    }
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(image_error(
            file,
            ImageProblem::TooLarge {
                width,
                height,
                max: MAX_IMAGE_SIDE,
            },
        ));
    }
    Ok(())
}

fn problem_of(e: ImageError) -> ImageProblem {
    match e {
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageProblem::Truncated(io.to_string())
        }
        ImageError::IoError(io) => ImageProblem::Corrupt(io.to_string()),
        ImageError::Unsupported(u) => ImageProblem::Unsupported(u.to_string()),
        // Dimensions were checked before decoding; a limit hit here is the
        // decoder's working memory, still an image we refuse.
        ImageError::Limits(l) => ImageProblem::Unsupported(format!("too large to decode: {l}")),
        other => {
            let text = other.to_string();
            // The PNG and WebP decoders report a cut-off stream as a decoding
            // error rather than an I/O error.
            let lower = text.to_ascii_lowercase();
            if lower.contains("eof") || lower.contains("end of file") || lower.contains("truncat") {
                ImageProblem::Truncated(text)
            } else {
                ImageProblem::Corrupt(text)
            }
        }
    }
}

/// Whether a PNG's IHDR declares 16-bit grayscale (colour type 0): PIL opens
/// those as `I;16` even when a `tRNS` chunk makes the decoder add alpha.
fn png_is_gray16(bytes: &[u8]) -> bool {
    // Signature (8) + chunk length (4) + "IHDR" (4) + width, height (8) +
    // bit depth (1) + colour type (1).
    bytes.len() > 25 && &bytes[12..16] == b"IHDR" && bytes[24] == 16 && bytes[25] == 0
}

/// PIL's `convert('RGB')` of the mode PIL would have opened the image in.
/// `None` for float images (not produced by the PNG/JPEG/WebP decoders).
fn to_rgb8_like_pil(img: DynamicImage, gray16_png: bool) -> Option<(u32, u32, Vec<u8>)> {
    let (w, h) = (img.width(), img.height());
    let gray = |v: u8| [v, v, v];
    let hi = |v: u16| (v >> 8) as u8;
    // PIL `I;16` → `RGB`: values above 255 saturate.
    let clip = |v: u16| v.min(255) as u8;
    let pixels: Vec<u8> = match img {
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => b.pixels().flat_map(|p| [p[0], p[1], p[2]]).collect(),
        DynamicImage::ImageLuma8(b) => b.pixels().flat_map(|p| gray(p[0])).collect(),
        DynamicImage::ImageLumaA8(b) => b.pixels().flat_map(|p| gray(p[0])).collect(),
        DynamicImage::ImageRgb16(b) => b.pixels().flat_map(|p| p.0.map(hi)).collect(),
        DynamicImage::ImageRgba16(b) => b
            .pixels()
            .flat_map(|p| [hi(p[0]), hi(p[1]), hi(p[2])])
            .collect(),
        DynamicImage::ImageLuma16(b) => b.pixels().flat_map(|p| gray(clip(p[0]))).collect(),
        DynamicImage::ImageLumaA16(b) if gray16_png => {
            b.pixels().flat_map(|p| gray(clip(p[0]))).collect()
        }
        DynamicImage::ImageLumaA16(b) => b.pixels().flat_map(|p| gray(hi(p[0]))).collect(),
        _ => return None,
    };
    Some((w, h, pixels))
}
