//! Tests of conversion, output selection and PNG frames (MP4 tests live in
//! `mp4_tests.rs`).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use super::*;
use wanrt_runtime::ErrorKind;

/// A smooth moving pattern as it would come out of the VAE, converted
/// through [`RgbFrames::from_chw`]: drifting sinusoids and a soft moving
/// blob carry the detail in brightness, while colour varies slowly, as in
/// natural video (4:2:0 video keeps chroma at half resolution, so detailed
/// colour would measure the format, not the encoder).
pub(crate) fn moving_pattern(width: usize, height: usize, frames: usize) -> RgbFrames {
    use std::f32::consts::TAU;
    let plane = frames * height * width;
    let mut chw = vec![0f32; 3 * plane];
    for f in 0..frames {
        let t = f as f32;
        let (bx, by) = (
            width as f32 * (0.3 + 0.02 * t),
            height as f32 * (0.5 + 0.01 * t),
        );
        let radius = width.min(height) as f32 * 0.25;
        for y in 0..height {
            for x in 0..width {
                let (xf, yf) = (x as f32 / width as f32, y as f32 / height as f32);
                let d2 = ((x as f32 - bx).powi(2) + (y as f32 - by).powi(2)) / (radius * radius);
                let luma =
                    0.5 * (TAU * (1.5 * xf + 0.04 * t)).sin() * (TAU * (yf - 0.03 * t)).cos()
                        + 0.7 * (-d2).exp()
                        - 0.2;
                for c in 0..3 {
                    let tint =
                        0.2 * (TAU * (0.5 * xf + 0.3 * yf + c as f32 / 3.0 + 0.01 * t)).sin();
                    chw[c * plane + (f * height + y) * width + x] = (luma + tint).clamp(-1.0, 1.0);
                }
            }
        }
    }
    RgbFrames::from_chw(&chw, &[3, frames, height, width]).unwrap()
}

/// No temporary file or directory (`.name.tmp-…`) is left in `dir`.
pub(crate) fn assert_no_temps(dir: &Path) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(
        left.is_empty(),
        "temporaries left in {}: {left:?}",
        dir.display()
    );
}

// --- conversion -------------------------------------------------------------

#[test]
fn rounding_rule_hand_computed() {
    // (x + 1) / 2 · 255, rounded half away from zero.
    let cases: [(f32, u8); 12] = [
        (-1.0, 0),
        (1.0, 255),
        (0.0, 128),             // 127.5 → 128
        (-0.5, 64),             // 63.75 → 64
        (0.5, 191),             // 191.25 → 191
        (-0.99, 1),             // 1.275 → 1
        (-0.995, 1),            // 0.6375 → 1
        (-0.997, 0),            // 0.3825 → 0
        (0.9961, 255),          // 254.50275 → 255 (truncation would give 254)
        (0.99, 254),            // 253.725 → 254
        (2.0 / 255.0 - 1.0, 1), // exactly level 1
        (0.2, 153),             // 153.0
    ];
    for (x, want) in cases {
        assert_eq!(sample_to_u8(x), want, "x = {x}");
    }
}

#[test]
fn within_one_level_of_reference_float_frames() {
    // DIFF's float frames are (x/2 + 0.5).clamp(0, 1); ORIG/DIFF video
    // writers truncate ·255. Ours rounds: never more than one level away.
    for i in 0..=20_000 {
        let x = -1.0 + 2.0 * i as f32 / 20_000.0;
        let reference = (x / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0;
        let ours = f32::from(sample_to_u8(x));
        assert!((ours - reference).abs() <= 0.5 + 1e-3, "x = {x}");
        assert!((ours - reference.trunc()).abs() <= 1.0, "x = {x}");
    }
}

#[test]
fn clamps_and_nan() {
    assert_eq!(sample_to_u8(-1.5), 0);
    assert_eq!(sample_to_u8(7.0), 255);
    assert_eq!(sample_to_u8(f32::INFINITY), 255);
    assert_eq!(sample_to_u8(f32::NEG_INFINITY), 0);
    assert_eq!(sample_to_u8(f32::MAX), 255);
    assert_eq!(sample_to_u8(f32::NAN), 0, "NaN is documented as black");
    assert_eq!(sample_to_u8(-f32::NAN), 0);
}

#[test]
fn chw_to_interleaved_layout() {
    // [3, F=2, H=1, W=2]: channel planes become RGB triples per pixel.
    let (f, h, w) = (2, 1, 2);
    let plane = f * h * w;
    let mut chw = vec![0f32; 3 * plane];
    for c in 0..3 {
        for i in 0..plane {
            // level = 10·c + i encoded back into [−1, 1].
            chw[c * plane + i] = (10 * c + i) as f32 / 255.0 * 2.0 - 1.0;
        }
    }
    let frames = RgbFrames::from_chw(&chw, &[3, f, h, w]).unwrap();
    assert_eq!((frames.width(), frames.height(), frames.len()), (2, 1, 2));
    assert_eq!(frames.frame(0).unwrap(), &[0, 10, 20, 1, 11, 21]);
    assert_eq!(frames.frame(1).unwrap(), &[2, 12, 22, 3, 13, 23]);
    assert!(frames.frame(2).is_none());
    // A leading batch of one is accepted and means the same.
    let batched = RgbFrames::from_chw(&chw, &[1, 3, f, h, w]).unwrap();
    assert_eq!(batched, frames);
    // Through a host tensor as well.
    let t = HostTensor::from_f32(vec![3, 2, 1, 2], &chw);
    assert_eq!(RgbFrames::from_tensor(&t).unwrap(), frames);
}

#[test]
fn bad_tensors_are_refused() {
    let v = vec![0f32; 12];
    for shape in [
        &[4usize, 1, 1, 3][..],
        &[3, 4],
        &[2, 3, 1, 2, 2],
        &[3, 1, 2, 3],
    ] {
        let e = RgbFrames::from_chw(&v, shape).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{shape:?}");
    }
    let e = RgbFrames::from_chw(&[], &[3, 0, 4, 4]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let e = RgbFrames::from_chw(&v, &[3, usize::MAX, 2, 2]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let t = HostTensor::from_i64(vec![3, 1, 2, 2], &[0; 12]);
    assert_eq!(
        RgbFrames::from_tensor(&t).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    let e = RgbFrames::new(2, 2, 1, vec![0; 11]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

// --- output kind ------------------------------------------------------------

#[test]
fn output_kind_from_path() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        output_kind(Path::new("out/video.mp4")).unwrap(),
        OutputKind::Mp4("out/video.mp4".into())
    );
    assert!(matches!(
        output_kind(Path::new("A.MP4")).unwrap(),
        OutputKind::Mp4(_)
    ));
    assert_eq!(
        output_kind(Path::new("frames/")).unwrap(),
        OutputKind::PngFrames("frames/".into())
    );
    // Trailing separator wins over the extension.
    assert!(matches!(
        output_kind(Path::new("x.mp4/")).unwrap(),
        OutputKind::PngFrames(_)
    ));
    // An existing directory, even without the separator.
    assert_eq!(
        output_kind(dir.path()).unwrap(),
        OutputKind::PngFrames(dir.path().to_path_buf())
    );
    for bad in ["video.avi", "video", "video.mp4.tmp", ""] {
        let e = output_kind(Path::new(bad)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
        assert!(e.to_string().starts_with("--output"), "{e}");
    }
}

#[test]
fn write_video_dispatches() {
    let dir = tempfile::tempdir().unwrap();
    let frames = moving_pattern(32, 32, 2);
    let opts = VideoOptions::default();
    let mp4 = dir.path().join("a.mp4");
    assert_eq!(
        write_video(&mp4, &frames, &opts, None).unwrap(),
        OutputKind::Mp4(mp4.clone())
    );
    assert!(std::fs::read(&mp4).unwrap()[4..8] == *b"ftyp");
    let pngs = dir.path().join("frames/");
    assert!(matches!(
        write_video(&pngs, &frames, &opts, None).unwrap(),
        OutputKind::PngFrames(_)
    ));
    assert!(pngs.join("frame_00001.png").is_file());
    let e = write_video(&dir.path().join("a.gif"), &frames, &opts, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert_no_temps(dir.path());
}

// --- PNG frames -------------------------------------------------------------

fn read_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = ::png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, ::png::ColorType::Rgb);
    assert_eq!(info.bit_depth, ::png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

#[test]
fn png_frames_round_trip_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("frames");
    let frames = moving_pattern(48, 20, 5);
    let written = write_png_frames(&out, &frames, false, None).unwrap();
    assert_eq!(written.len(), 5);
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        (0..5)
            .map(|i| format!("frame_0000{i}.png"))
            .collect::<Vec<_>>()
    );
    for (i, path) in written.iter().enumerate() {
        let (w, h, pixels) = read_png(path);
        assert_eq!((w, h), (48, 20));
        assert_eq!(pixels, frames.frame(i).unwrap(), "frame {i}");
    }
    assert_no_temps(dir.path());
}

#[test]
fn png_odd_sizes_are_fine() {
    let dir = tempfile::tempdir().unwrap();
    let frames = moving_pattern(7, 3, 2);
    let written = write_png_frames(&dir.path().join("f"), &frames, false, None).unwrap();
    assert_eq!(read_png(&written[1]).2, frames.frame(1).unwrap());
}

#[test]
fn png_no_overwrite_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("frames");
    write_png_frames(&out, &moving_pattern(16, 16, 4), false, None).unwrap();
    let newer = moving_pattern(16, 16, 2);
    let before = std::fs::read(out.join("frame_00000.png")).unwrap();
    let e = write_png_frames(&out, &newer, false, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutputExists);
    assert!(e.to_string().contains("frame_00000.png"), "{e}");
    assert_eq!(std::fs::read(out.join("frame_00000.png")).unwrap(), before);
    assert_no_temps(&out);

    // Overwrite replaces the frames and drops the stale tail of the longer
    // earlier video, but leaves unrelated files alone.
    std::fs::write(out.join("notes.txt"), b"mine").unwrap();
    write_png_frames(&out, &newer, true, None).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["frame_00000.png", "frame_00001.png", "notes.txt"]);
    assert_eq!(
        read_png(&out.join("frame_00001.png")).2,
        newer.frame(1).unwrap()
    );
    assert_no_temps(&out);
}

#[test]
fn png_into_existing_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let frames = moving_pattern(16, 16, 3);
    let written = write_png_frames(dir.path(), &frames, false, None).unwrap();
    assert_eq!(read_png(&written[2]).2, frames.frame(2).unwrap());
    assert_no_temps(dir.path());
}

#[test]
fn png_cancel_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let frames = moving_pattern(16, 16, 3);
    let cancel = AtomicBool::new(true);
    // New directory: nothing created.
    let out = dir.path().join("frames");
    let e = write_png_frames(&out, &frames, false, Some(&cancel)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Interrupted);
    assert!(!out.exists());
    assert_no_temps(dir.path());
    // Existing directory: nothing added.
    let e = write_png_frames(dir.path(), &frames, false, Some(&cancel)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Interrupted);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn png_bad_destinations() {
    let dir = tempfile::tempdir().unwrap();
    let frames = moving_pattern(16, 16, 1);
    // Parent missing: typed Io error naming the path.
    let out = dir.path().join("no").join("such");
    let e = write_png_frames(&out, &frames, false, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(e.to_string().contains("no/such"), "{e}");
    // A file where the directory should be.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = write_png_frames(&file, &frames, false, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_no_temps(dir.path());
}

#[test]
fn publish_refuses_a_file_that_appeared() {
    // The no-clobber publish itself (not just the early check) refuses.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("x.bin");
    let mut tmp = TempFile::create(&target).unwrap();
    tmp.write_all(b"new").unwrap();
    std::fs::write(&target, b"old").unwrap();
    let e = tmp.persist(false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutputExists);
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
    assert_no_temps(dir.path());
    let mut tmp = TempFile::create(&target).unwrap();
    tmp.write_all(b"new").unwrap();
    tmp.persist(true).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"new");
    assert_no_temps(dir.path());
}
