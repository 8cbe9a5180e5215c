//! Reading a video given as numbered image frames (VACE's `--control-video
//! DIR/` and `--control-mask DIR/`): every `*.png` of a directory, in the
//! order of the number in its name (`0.png`, `00001.png`, `frame_12.png`),
//! each decoded as [`crate::image::load_image`] decodes (PIL's
//! `convert('RGB')`).
//!
//! A control video may also be an H.264 MP4 file (what `wan-run` writes,
//! or any `avc1` track), decoded by OpenH264 and converted with the inverse
//! BT.601 limited-range matrix ([`crate::video::mp4::read`]). An MP4 is
//! lossy: its frames are close to, not equal to, the frames it was made
//! from, so a control video that must match exactly is passed as PNGs.

use std::path::{Path, PathBuf};

use wanrt_core::Profile;
use wanrt_runtime::error::{Error, Result};
use wanrt_runtime::image::RgbImage;
use wanrt_runtime::vace::{check_frame_count, check_frame_size};

use crate::image::load_image;
use crate::video::mp4::read::{decode_mp4_with, read_mp4_bytes};

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
        return Err(fail(if is_mp4(dir) {
            "an MP4 file, not a directory of numbered PNG frames".into()
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

/// Whether `path` names an MP4 file (by its extension; the contents are
/// checked when it is read).
fn is_mp4(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("mp4"))
}

/// Decodes a video given as `path`: the numbered PNG frames of a directory,
/// or the frames of an `.mp4` file (see the module docs). With `expect`,
/// the engines' profile, the frame count and each frame's size are checked
/// while reading (`wanrt_runtime::vace::check_frame_count` / `_size`): a
/// directory of the wrong length is refused before a frame is decoded, an
/// MP4 with too many frames before its first is, and a frame of the wrong
/// size as soon as it is decoded, so a wrong video never sits whole in
/// memory.
pub fn read_frames(path: &Path, flag: &str, expect: Option<&Profile>) -> Result<Vec<RgbImage>> {
    let check_size = |i: usize, w: u32, h: u32| match expect {
        Some(p) => check_frame_size(flag, i, w, h, p),
        None => Ok(()),
    };
    if is_mp4(path) && !path.is_dir() {
        return decode_mp4_frames(&read_mp4_bytes(path, flag)?, path, flag, expect);
    }
    let files = frame_files(path, flag)?;
    if let Some(p) = expect {
        check_frame_count(flag, files.len(), p)?;
    }
    let mut frames = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        let image = load_image(f)?;
        check_size(i, image.width(), image.height())?;
        frames.push(image);
    }
    Ok(frames)
}

/// Decodes the bytes of an H.264 MP4 (`file` names it in errors; a
/// server's upload, a file's contents) into frames, checked against
/// `expect` while decoding as [`read_frames`] checks an `.mp4` file: a
/// track of more frames than the profile's is refused before its first is
/// decoded, a frame of the wrong size as soon as it is.
pub fn decode_mp4_frames(
    bytes: &[u8],
    file: &Path,
    flag: &str,
    expect: Option<&Profile>,
) -> Result<Vec<RgbImage>> {
    let max = expect.map_or(MAX_FRAME_FILES, |p| {
        (p.frames as usize).min(MAX_FRAME_FILES)
    });
    let mut frames = Vec::new();
    decode_mp4_with(bytes, file, flag, max, |i, w, h, rgb| {
        if let Some(p) = expect {
            check_frame_size(flag, i, w as u32, h as u32, p)?;
        }
        frames.push(RgbImage::new(w as u32, h as u32, rgb.to_vec())?);
        Ok(())
    })?;
    if let Some(p) = expect {
        check_frame_count(flag, frames.len(), p)?;
    }
    Ok(frames)
}

/// Checks the bytes of an H.264 MP4 against the engines' profile as
/// [`decode_mp4_frames`] does, keeping no frame (a server's check of an
/// upload before it stores it): each frame's size as it is decoded, the
/// count before the first (too many) or after the last (too few).
pub fn check_mp4_frames(bytes: &[u8], file: &Path, flag: &str, expect: &Profile) -> Result<()> {
    let max = (expect.frames as usize).min(MAX_FRAME_FILES);
    let (_, _, n) = decode_mp4_with(bytes, file, flag, max, |i, w, h, _| {
        check_frame_size(flag, i, w as u32, h as u32, expect)
    })?;
    check_frame_count(flag, n, expect)
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
        // An MP4 file is not a frame directory; read_frames decodes it, and
        // one that is not an H.264 MP4 is a typed error naming the flag.
        let mp4 = dir.path().join("clip.mp4");
        std::fs::write(&mp4, b"x").unwrap();
        let e = frame_files(&mp4, "--control-video").unwrap_err();
        assert!(e.to_string().contains("an MP4 file"), "{e}");
        let e = read_frames(&mp4, "--control-video", None).unwrap_err();
        assert!(
            e.to_string().contains("--control-video") && e.to_string().contains("H.264 MP4"),
            "{e}"
        );
    }

    #[test]
    fn mp4_control_videos_are_decoded_close_to_their_frames() {
        use crate::video::mp4::{Mp4Options, write_mp4};
        use crate::video::tests::moving_pattern;
        let dir = tempfile::tempdir().unwrap();
        let frames = moving_pattern(64, 48, 9);
        let path = dir.path().join("control.mp4");
        write_mp4(&path, &frames, &Mp4Options::default(), false, None).unwrap();
        let got = read_frames(&path, "--control-video", None).unwrap();
        assert_eq!(got.len(), 9);
        let mut sq = 0f64;
        for (i, img) in got.iter().enumerate() {
            assert_eq!((img.width(), img.height()), (64, 48));
            let want = frames.frame(i).unwrap();
            sq += img
                .pixels()
                .iter()
                .zip(want)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum::<f64>();
        }
        let mse = sq / (9.0 * 64.0 * 48.0 * 3.0);
        let psnr = 10.0 * (255.0f64.powi(2) / mse).log10();
        // H.264 at the writer's quality with 4:2:0 chroma: close, not equal.
        assert!(psnr > 30.0, "PSNR {psnr} dB");
        // More frames than asked for are refused before decoding.
        let e = crate::video::mp4::read::read_mp4_for(&path, "--control-video", 8).unwrap_err();
        assert!(e.to_string().contains("9 frames; at most 8"), "{e}");
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
        let e = read_frames(small.path(), "--control-mask", None).unwrap_err();
        assert!(e.to_string().contains("0.png"), "{e}");
    }

    #[test]
    fn a_video_not_of_the_profile_is_refused_while_it_is_read() {
        use crate::video::mp4::read::decode_mp4_with;
        use crate::video::mp4::{Mp4Options, write_mp4};
        use crate::video::tests::moving_pattern;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.mp4");
        write_mp4(
            &path,
            &moving_pattern(64, 48, 9),
            &Mp4Options::default(),
            false,
            None,
        )
        .unwrap();
        // 9 frames of 64x48 fit a 64x48x9 profile …
        let fits = Profile::custom(64, 48, 9, 16).unwrap();
        assert_eq!(
            read_frames(&path, "--control-video", Some(&fits))
                .unwrap()
                .len(),
            9
        );
        // … not a 32x48x9 one: refused at frame 0, naming the flag.
        let narrow = Profile::custom(32, 48, 9, 16).unwrap();
        let e = read_frames(&path, "--control-video", Some(&narrow)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("--control-video") && msg.contains("frame 0 is 64x48"),
            "{msg}"
        );
        // A sink's refusal stops the decode at that frame.
        let bytes = std::fs::read(&path).unwrap();
        let mut calls = 0;
        let e = decode_mp4_with(&bytes, &path, "--control-video", 9, |_, _, _, _| {
            calls += 1;
            Err(wanrt_runtime::Error::arg("--control-video", "no"))
        })
        .unwrap_err();
        assert_eq!(
            (calls, e.kind()),
            (1, wanrt_runtime::ErrorKind::InvalidArgument)
        );
        // More frames than the profile's are refused before the first is
        // decoded (5 frames: 64x48x5).
        let short = Profile::custom(64, 48, 5, 16).unwrap();
        let e = read_frames(&path, "--control-video", Some(&short)).unwrap_err();
        assert!(e.to_string().contains("9 frames; at most 5"), "{e}");
        // The bytes-level check (a server's upload) applies the same rules.
        check_mp4_frames(&bytes, Path::new("control_video"), "--control-video", &fits).unwrap();
        for (p, want) in [
            (&narrow, "frame 0 is 64x48"),
            (&short, "9 frames; at most 5"),
            (
                &Profile::custom(64, 48, 13, 16).unwrap(),
                "9 frames; these engines were compiled for 13",
            ),
        ] {
            let e = check_mp4_frames(&bytes, Path::new("control_video"), "--control-video", p)
                .unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
        let e =
            check_mp4_frames(b"not an mp4", Path::new("x"), "--control-mask", &fits).unwrap_err();
        assert!(e.to_string().contains("--control-mask"), "{e}");
        // A directory of the wrong length is refused before any file is
        // decoded (these are not even images).
        let frames = tempfile::tempdir().unwrap();
        for n in 0..3 {
            std::fs::write(frames.path().join(format!("{n}.png")), b"not a png").unwrap();
        }
        let e = read_frames(frames.path(), "--control-mask", Some(&fits)).unwrap_err();
        assert!(
            e.to_string()
                .contains("3 frames; these engines were compiled for 9"),
            "{e}"
        );
    }
}
