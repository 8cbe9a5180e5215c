//! Writing generated videos: the last step of a run (`docs/WAN.md` §6.5).
//!
//! The VAE decodes to a `[3, F, H, W]` f32 tensor in [−1, 1]. This module
//! turns it into 8-bit RGB frames ([`RgbFrames::from_chw`]) and writes them
//! where `--output` says ([`output_kind`]):
//!
//! * `x.mp4` → an H.264 (Constrained Baseline, yuv420p, BT.601 limited range,
//!   tagged) MP4 with `moov` before `mdat` ("faststart"), at 16 fps by default
//!   (§9.2). The encoder is OpenH264 built from the source bundled in the
//!   `openh264` crate; the MP4 muxer is ours ([`mp4`]), so no ffmpeg binary
//!   is needed at run time.
//! * `dir/` (trailing separator) or an existing directory → numbered lossless
//!   PNG frames `frame_00000.png`, … ([`png`]).
//!
//! Every write is atomic (a temporary sibling, synced, then renamed into
//! place), refuses to replace existing outputs unless `overwrite`, and can be
//! interrupted through an [`AtomicBool`] checked once per frame; an interrupted
//! or failed write leaves no temporary file behind.
//!
//! Pixel rule: `u8 = round(clamp((x + 1) / 2, 0, 1) · 255)`. The reference
//! truncates instead of rounding (§6.5); rounding is the unbiased choice and
//! stays within one level of the reference's float frames · 255. NaN maps to
//! 0 (black): a NaN pixel is a numerical failure upstream, and black makes it
//! visible instead of inventing a plausible colour.

pub mod mp4;
pub mod png;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use wanrt_core::fsio::{parent_dir, temp_sibling};

use wanrt_runtime::error::{Error, Result};
use wanrt_runtime::tensorfile::HostTensor;

pub use mp4::{Mp4Options, write_mp4};
pub use png::{frame_file_name, write_png_frames};

/// Output frame rate of every Wan2.1 task (the runtime's, re-exported).
pub use wanrt_runtime::pipeline::DEFAULT_FPS;

/// The flag named in argument errors: the CLI option that chose the output.
const OUTPUT_FLAG: &str = "--output";

/// Converts one decoded sample in [−1, 1] to an 8-bit level:
/// `round(clamp((x + 1) / 2, 0, 1) · 255)`; ±∞ clamp, NaN → 0.
#[inline]
pub fn sample_to_u8(x: f32) -> u8 {
    if x.is_nan() {
        return 0;
    }
    let unit = ((x + 1.0) * 0.5).clamp(0.0, 1.0);
    // In [0, 255] after the clamp, so the cast cannot saturate.
    (unit * 255.0).round() as u8
}

/// A video as packed 8-bit RGB frames, frame-major: `[F, H, W, 3]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbFrames {
    width: usize,
    height: usize,
    frames: usize,
    data: Vec<u8>,
}

impl RgbFrames {
    /// Wraps packed `[F, H, W, 3]` RGB bytes. Refuses an empty video and a
    /// buffer whose length does not match.
    pub fn new(width: usize, height: usize, frames: usize, data: Vec<u8>) -> Result<Self> {
        let expected = checked_len(&[frames, height, width, 3])?;
        if width == 0 || height == 0 || frames == 0 {
            return Err(Error::arg(
                OUTPUT_FLAG,
                format!("video has no pixels ({frames} frames of {width}x{height})"),
            ));
        }
        if data.len() != expected {
            return Err(Error::arg(
                OUTPUT_FLAG,
                format!(
                    "RGB buffer has {} bytes, {frames} frames of {width}x{height} need {expected}",
                    data.len()
                ),
            ));
        }
        Ok(RgbFrames {
            width,
            height,
            frames,
            data,
        })
    }

    /// Converts a decoded video `[3, F, H, W]` (or `[1, 3, F, H, W]`, the
    /// VAE's batch of one) of f32 in [−1, 1] with [`sample_to_u8`].
    pub fn from_chw(values: &[f32], shape: &[usize]) -> Result<Self> {
        let dims = match shape {
            [3, f, h, w] | [1, 3, f, h, w] => [*f, *h, *w],
            _ => {
                return Err(Error::arg(
                    OUTPUT_FLAG,
                    format!(
                        "decoded video must be [3, F, H, W] (or [1, 3, F, H, W]), got {shape:?}"
                    ),
                ));
            }
        };
        let [frames, height, width] = dims;
        let plane = checked_len(&[frames, height, width])?;
        if values.len() != checked_len(&[3, plane])? {
            return Err(Error::arg(
                OUTPUT_FLAG,
                format!(
                    "decoded video has {} values, shape {shape:?} needs {}",
                    values.len(),
                    plane.saturating_mul(3)
                ),
            ));
        }
        // Channel c of pixel i sits at c·plane + i; the output interleaves
        // the three planes. Walking the three plane slices in lockstep keeps
        // the reads sequential.
        let (r, rest) = values.split_at(plane);
        let (g, b) = rest.split_at(plane);
        let mut data = Vec::with_capacity(plane * 3);
        for ((&r, &g), &b) in r.iter().zip(g).zip(b) {
            data.extend_from_slice(&[sample_to_u8(r), sample_to_u8(g), sample_to_u8(b)]);
        }
        RgbFrames::new(width, height, frames, data)
    }

    /// Converts a decoded video held as a host tensor (f32, f16 or bf16).
    pub fn from_tensor(tensor: &HostTensor) -> Result<Self> {
        let values = tensor.to_f32().ok_or_else(|| {
            Error::arg(
                OUTPUT_FLAG,
                format!(
                    "decoded video must be a float tensor, got {:?}",
                    tensor.dtype
                ),
            )
        })?;
        let shape = tensor
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| Error::arg(OUTPUT_FLAG, format!("shape {:?} too large", tensor.shape)))?;
        RgbFrames::from_chw(&values, &shape)
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.frames
    }

    /// Always false: an empty video is refused at construction.
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// Packed RGB bytes of frame `index` (`H·W·3`), or `None` past the end.
    pub fn frame(&self, index: usize) -> Option<&[u8]> {
        let size = self.width * self.height * 3;
        let start = index.checked_mul(size)?;
        self.data.get(start..start.checked_add(size)?)
    }

    /// All frames, `[F, H, W, 3]`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }
}

fn checked_len(dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::arg(OUTPUT_FLAG, format!("video dimensions {dims:?} overflow")))
}

/// What `--output` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputKind {
    /// An H.264 MP4 file.
    Mp4(PathBuf),
    /// A directory of numbered PNG frames.
    PngFrames(PathBuf),
}

/// Decides the output kind from the `--output` path: a trailing path
/// separator or an existing directory → PNG frames; a `.mp4` extension (any
/// case) → MP4; anything else is an `InvalidArgument` error naming
/// `--output`, because guessing a container from an unknown name would write
/// a file that its name misdescribes.
pub fn output_kind(path: &Path) -> Result<OutputKind> {
    let text = path.as_os_str().to_string_lossy();
    if text.is_empty() {
        return Err(Error::arg(OUTPUT_FLAG, "empty path"));
    }
    if text.ends_with('/') || text.ends_with(std::path::MAIN_SEPARATOR) {
        return Ok(OutputKind::PngFrames(path.to_path_buf()));
    }
    let is_mp4 = path
        .extension()
        .is_some_and(|e| e.to_string_lossy().eq_ignore_ascii_case("mp4"));
    if is_mp4 {
        // A directory (or device, FIFO, link) named like a video is never
        // written into or replaced.
        if let Ok(m) = std::fs::symlink_metadata(path)
            && !m.is_file()
        {
            return Err(Error::OutputRefused {
                file: path.to_path_buf(),
                reason: format!(
                    "is {}, not an MP4 file (for PNG frames end the path with '/')",
                    wanrt_core::fsio::describe_type(&m.file_type())
                ),
            });
        }
        return Ok(OutputKind::Mp4(path.to_path_buf()));
    }
    if path.is_dir() {
        return Ok(OutputKind::PngFrames(path.to_path_buf()));
    }
    Err(Error::arg(
        OUTPUT_FLAG,
        format!(
            "{}: expected a .mp4 file or a directory (end it with '/') for PNG frames",
            path.display()
        ),
    ))
}

/// How to write a video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VideoOptions {
    /// MP4 settings (ignored for PNG frames, which carry no timing).
    pub mp4: Mp4Options,
    /// Replace existing outputs instead of refusing.
    pub overwrite: bool,
}

/// Writes `frames` where `output` says ([`output_kind`]) and returns what
/// was written. `cancel`, when set (e.g. by a Ctrl-C handler), stops the
/// write at the next frame with [`Error::Interrupted`].
pub fn write_video(
    output: &Path,
    frames: &RgbFrames,
    options: &VideoOptions,
    cancel: Option<&AtomicBool>,
) -> Result<OutputKind> {
    let kind = output_kind(output)?;
    match &kind {
        OutputKind::Mp4(path) => write_mp4(path, frames, &options.mp4, options.overwrite, cancel)?,
        OutputKind::PngFrames(dir) => {
            write_png_frames(dir, frames, options.overwrite, cancel)?;
        }
    }
    Ok(kind)
}

fn check_cancel(cancel: Option<&AtomicBool>) -> Result<()> {
    match cancel {
        Some(flag) if flag.load(Ordering::Relaxed) => Err(Error::Interrupted),
        _ => Ok(()),
    }
}

/// A temporary file that becomes `target` on [`TempFile::persist`] and is
/// removed if dropped before that, so errors, cancellation and panics leave
/// nothing behind.
struct TempFile {
    path: PathBuf,
    target: PathBuf,
    file: Option<File>,
}

impl TempFile {
    /// Creates the temporary next to `target` (same directory, so the final
    /// rename stays on one filesystem and is atomic).
    fn create(target: &Path) -> Result<Self> {
        let path = temp_sibling(target);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(target, e))?;
        Ok(TempFile {
            path,
            target: target.to_path_buf(),
            file: Some(file),
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        match self.file.as_mut() {
            Some(f) => f.write_all(bytes).map_err(|e| Error::io(&self.target, e)),
            None => Err(Error::io(
                &self.target,
                std::io::Error::other("temporary file already closed"),
            )),
        }
    }

    /// Syncs and closes the file, leaving it in place for [`Self::persist`].
    fn finish(&mut self) -> Result<()> {
        if let Some(f) = self.file.take() {
            f.sync_all().map_err(|e| Error::io(&self.target, e))?;
        }
        Ok(())
    }

    /// Syncs the data and moves it to `target` ([`publish`]).
    fn persist(mut self, overwrite: bool) -> Result<()> {
        self.finish()?;
        publish(&self.path, &self.target, overwrite)?;
        // Published: the temporary name no longer exists, nothing to clean.
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.file = None;
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Moves the finished file `tmp` to `target`. Without `overwrite` the move
/// must not replace anything, including a file that appeared while we were
/// encoding; a hard link fails atomically on an existing name, so it is the
/// no-clobber publish where the filesystem supports links, with a
/// check-then-rename fallback where it does not.
fn publish(tmp: &Path, target: &Path, overwrite: bool) -> Result<()> {
    if overwrite {
        // Only a regular file is ever replaced (never a device, FIFO,
        // directory or symbolic link), checked right before the rename.
        wanrt_runtime::tensorfile::check_output(target, true)?;
        return std::fs::rename(tmp, target).map_err(|e| Error::io(target, e));
    }
    match std::fs::hard_link(tmp, target) {
        Ok(()) => {
            // The target holds the data; the temporary name is just a
            // second link to drop.
            let _ = std::fs::remove_file(tmp);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::OutputExists {
            file: target.to_path_buf(),
        }),
        Err(_) => {
            if target.exists() {
                return Err(Error::OutputExists {
                    file: target.to_path_buf(),
                });
            }
            std::fs::rename(tmp, target).map_err(|e| Error::io(target, e))
        }
    }
}

/// Makes renames in `dir` durable. Best effort: some filesystems and
/// platforms cannot open or sync a directory, and the data itself is synced.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
pub(crate) mod tests;
