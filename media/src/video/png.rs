//! `--output <DIR>/`: one lossless 8-bit RGB PNG per frame,
//! `frame_00000.png`, `frame_00001.png`, …
//!
//! A new directory is built under a temporary sibling name and renamed into
//! place when every frame is written, so the frame set appears whole or not
//! at all. Into an existing directory each frame goes to a temporary file,
//! and the renames happen only after every frame has been encoded and synced
//! (a cancel or error before that leaves the directory untouched).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::{RgbFrames, TempFile, check_cancel, parent_dir, sync_dir, temp_sibling};
use wanrt_runtime::error::{Error, Result};

/// File name of frame `index`: `frame_00000.png` (five digits, more past
/// 99 999 frames, so names sort in frame order for the usual lengths).
pub fn frame_file_name(index: usize) -> String {
    format!("frame_{index:05}.png")
}

/// Whether `name` is one of our frame names (`frame_` + ≥5 digits + `.png`),
/// and its index.
fn parse_frame_file_name(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("frame_")?.strip_suffix(".png")?;
    if digits.len() < 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes one frame as a PNG (RGB, 8 bits, sRGB chunk: the frames are
/// display-referred sRGB-like values, and the chunk keeps viewers from
/// applying a guessed gamma).
fn encode_png(frames: &RgbFrames, index: usize, file: &Path) -> Result<Vec<u8>> {
    let pixels = frames
        .frame(index)
        .ok_or_else(|| Error::arg("--output", format!("frame {index} out of range")))?;
    let (width, height) = (
        dim_u32(frames.width(), file)?,
        dim_u32(frames.height(), file)?,
    );
    let mut bytes = Vec::new();
    let mut encoder = ::png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(::png::ColorType::Rgb);
    encoder.set_depth(::png::BitDepth::Eight);
    encoder.set_source_srgb(::png::SrgbRenderingIntent::Perceptual);
    let png_err = |e: ::png::EncodingError| Error::VideoEncode {
        file: file.to_path_buf(),
        reason: format!("PNG: {e}"),
    };
    let mut writer = encoder.write_header().map_err(png_err)?;
    writer.write_image_data(pixels).map_err(png_err)?;
    writer.finish().map_err(png_err)?;
    Ok(bytes)
}

fn dim_u32(d: usize, file: &Path) -> Result<u32> {
    u32::try_from(d).map_err(|_| Error::VideoEncode {
        file: file.to_path_buf(),
        reason: format!("dimension {d} too large for PNG"),
    })
}

/// Writes every frame of `frames` into `dir` as `frame_NNNNN.png` and
/// returns the paths written, in frame order.
///
/// * `dir` missing: it is created (its parent must exist) atomically with
///   all frames in it.
/// * `dir` existing: refuses if any frame file exists, unless `overwrite`;
///   with `overwrite`, frame files beyond this video's length left by a
///   longer earlier video are removed, so the directory holds exactly this
///   video's frames and never a mix of two.
/// * `cancel` is checked before each frame; when set, everything written so
///   far is removed and [`Error::Interrupted`] returned.
pub fn write_png_frames(
    dir: &Path,
    frames: &RgbFrames,
    overwrite: bool,
    cancel: Option<&AtomicBool>,
) -> Result<Vec<PathBuf>> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => write_into_existing(dir, frames, overwrite, cancel),
        Ok(_) => Err(Error::arg(
            "--output",
            format!("{} exists and is not a directory", dir.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_new_dir(dir, frames, overwrite, cancel)
        }
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Removes a temporary directory (and what is in it) unless disarmed.
struct TempDir(Option<PathBuf>);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn write_new_dir(
    dir: &Path,
    frames: &RgbFrames,
    overwrite: bool,
    cancel: Option<&AtomicBool>,
) -> Result<Vec<PathBuf>> {
    let tmp = temp_sibling(dir);
    std::fs::create_dir(&tmp).map_err(|e| Error::io(dir, e))?;
    let mut guard = TempDir(Some(tmp.clone()));
    for index in 0..frames.len() {
        check_cancel(cancel)?;
        let final_path = dir.join(frame_file_name(index));
        let bytes = encode_png(frames, index, &final_path)?;
        write_synced(&tmp.join(frame_file_name(index)), &bytes)
            .map_err(|e| Error::io(&final_path, e))?;
    }
    check_cancel(cancel)?;
    sync_dir(&tmp);
    // rename(2) moves the whole directory at once; it fails on a non-empty
    // directory that appeared meanwhile, which is then someone else's output.
    match std::fs::rename(&tmp, dir) {
        Ok(()) => {}
        Err(_) if dir.exists() => {
            drop(guard);
            // Someone created the directory while we encoded: fall back to
            // the per-file path, which applies the overwrite rules to it.
            return write_into_existing(dir, frames, overwrite, cancel);
        }
        Err(e) => return Err(Error::io(dir, e)),
    }
    // Renamed into place: nothing left to clean up.
    guard.0 = None;
    sync_dir(&parent_dir(dir));
    Ok((0..frames.len())
        .map(|i| dir.join(frame_file_name(i)))
        .collect())
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn write_into_existing(
    dir: &Path,
    frames: &RgbFrames,
    overwrite: bool,
    cancel: Option<&AtomicBool>,
) -> Result<Vec<PathBuf>> {
    let targets: Vec<PathBuf> = (0..frames.len())
        .map(|i| dir.join(frame_file_name(i)))
        .collect();
    // Refuse before the expensive part; `publish` re-checks at the end.
    for t in &targets {
        wanrt_runtime::tensorfile::check_output(t, overwrite)?;
    }
    let mut temps = Vec::with_capacity(targets.len());
    for (index, target) in targets.iter().enumerate() {
        check_cancel(cancel)?;
        let bytes = encode_png(frames, index, target)?;
        let mut tmp = TempFile::create(target)?;
        tmp.write_all(&bytes)?;
        tmp.finish()?;
        temps.push(tmp);
    }
    check_cancel(cancel)?;
    for tmp in temps {
        tmp.persist(overwrite)?;
    }
    if overwrite {
        remove_stale_frames(dir, frames.len())?;
    }
    sync_dir(dir);
    Ok(targets)
}

/// Removes `frame_NNNNN.png` files with an index at or past `count`.
fn remove_stale_frames(dir: &Path, count: usize) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let stale = name
            .to_str()
            .and_then(parse_frame_file_name)
            .is_some_and(|i| i >= count);
        if stale && entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(&entry.path(), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_names() {
        assert_eq!(frame_file_name(0), "frame_00000.png");
        assert_eq!(frame_file_name(80), "frame_00080.png");
        assert_eq!(frame_file_name(123_456), "frame_123456.png");
        assert_eq!(parse_frame_file_name("frame_00080.png"), Some(80));
        assert_eq!(parse_frame_file_name("frame_123456.png"), Some(123_456));
        assert_eq!(parse_frame_file_name("frame_0080.png"), None);
        assert_eq!(parse_frame_file_name("frame_0008a.png"), None);
        assert_eq!(parse_frame_file_name("my_frame_00001.png"), None);
        assert_eq!(parse_frame_file_name("frame_00001.png.bak"), None);
    }
}
