//! Reading a video given as numbered image frames (VACE's `--control-video
//! DIR/` and `--control-mask DIR/`): every `*.png` of a directory, in the
//! order of the number in its name (`0.png`, `00001.png`, `frame_12.png`),
//! each decoded as [`crate::image::load_image`] decodes (PIL's
//! `convert('RGB')`).
//!
//! Only plain PNG directories are read; an MP4 is refused with a typed
//! error saying how to extract its frames (`ffmpeg -i in.mp4 dir/%05d.png`).

use std::path::{Path, PathBuf};

use wanrt_runtime::error::{Error, Result};
use wanrt_runtime::image::RgbImage;

use crate::image::load_image;

/// Most frames a directory may hold (the largest profile has 1025).
pub const MAX_FRAME_FILES: usize = 1025;

/// The number in a frame's file stem: its last run of digits.
fn frame_number(stem: &str) -> Option<u64> {
    let end = stem.rfind(|c: char| c.is_ascii_digit())? + 1;
    let start = stem[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    stem[start..end].parse().ok()
}

/// The numbered PNG files of `dir`, in frame order.
pub fn frame_files(dir: &Path, flag: &str) -> Result<Vec<PathBuf>> {
    let fail = |reason: String| Error::arg(flag, format!("{}: {reason}", dir.display()));
    let meta = std::fs::metadata(dir).map_err(|e| fail(e.to_string()))?;
    if !meta.is_dir() {
        let mp4 = dir
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("mp4"));
        return Err(fail(if mp4 {
            "MP4 input is not read yet: pass a directory of numbered PNG frames \
             (ffmpeg -i in.mp4 DIR/%05d.png)"
                .into()
        } else {
            "not a directory of numbered PNG frames".into()
        }));
    }
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| fail(e.to_string()))? {
        let e = e.map_err(|e| fail(e.to_string()))?;
        let path = e.path();
        let png = path
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("png"));
        if !png {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let n = frame_number(&stem).ok_or_else(|| {
            fail(format!(
                "{} has no frame number in its name",
                path.display()
            ))
        })?;
        files.push((n, path));
        if files.len() > MAX_FRAME_FILES {
            return Err(fail(format!("more than {MAX_FRAME_FILES} PNG frames")));
        }
    }
    files.sort();
    if let Some(w) = files.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(fail(format!(
            "{} and {} have the same frame number {}",
            w[0].1.display(),
            w[1].1.display(),
            w[0].0
        )));
    }
    if files.is_empty() {
        return Err(fail("holds no PNG frames".into()));
    }
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// Decodes the numbered PNG frames of `dir` (see the module docs).
pub fn read_frames(dir: &Path, flag: &str) -> Result<Vec<RgbImage>> {
    frame_files(dir, flag)?
        .iter()
        .map(|p| load_image(p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_numbers_come_from_the_last_digits() {
        assert_eq!(frame_number("00012"), Some(12));
        assert_eq!(frame_number("frame_7"), Some(7));
        assert_eq!(frame_number("v2_frame_0031"), Some(31));
        assert_eq!(frame_number("mask"), None);
    }

    #[test]
    fn directories_are_read_in_number_order() {
        let dir = tempfile::tempdir().unwrap();
        for n in [10, 2, 1] {
            std::fs::write(dir.path().join(format!("f{n}.png")), b"x").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let names: Vec<String> = frame_files(dir.path(), "--control-video")
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["f1.png", "f2.png", "f10.png"]);
        std::fs::write(dir.path().join("g1.png"), b"x").unwrap();
        let e = frame_files(dir.path(), "--control-video").unwrap_err();
        assert!(e.to_string().contains("same frame number"), "{e}");
        let e = frame_files(&dir.path().join("clip.mp4"), "--control-video").unwrap_err();
        assert!(e.to_string().contains("--control-video"), "{e}");
        // An MP4 file is refused with the way to extract its frames.
        let mp4 = dir.path().join("clip.mp4");
        std::fs::write(&mp4, b"x").unwrap();
        let e = frame_files(&mp4, "--control-video").unwrap_err();
        assert!(e.to_string().contains("ffmpeg"), "{e}");
    }

    #[test]
    fn too_many_frames_are_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        for n in 0..=MAX_FRAME_FILES {
            std::fs::write(dir.path().join(format!("{n:05}.png")), b"").unwrap();
        }
        let e = frame_files(dir.path(), "--control-mask").unwrap_err();
        assert!(e.to_string().contains("more than 1025"), "{e}");
        // Files that are not images fail by name when decoded.
        let small = tempfile::tempdir().unwrap();
        std::fs::write(small.path().join("0.png"), b"not a png").unwrap();
        let e = read_frames(small.path(), "--control-mask").unwrap_err();
        assert!(e.to_string().contains("0.png"), "{e}");
    }
}
