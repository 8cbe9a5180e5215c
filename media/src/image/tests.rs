//! Tests of image decoding: PIL's `convert('RGB')` rules and typed errors
//! for bad files.

use std::path::{Path, PathBuf};

use super::*;
use wanrt_runtime::ErrorKind;
use wanrt_runtime::image::to_tensor_pm1;
use wanrt_runtime::tensorfile;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/i2v-tiny/golden")
}

#[test]
fn golden_image_decodes_to_pils_pixels() {
    let img = load_image(&golden_dir().join("image.png")).unwrap();
    assert_eq!((img.width(), img.height()), (32, 32));
    let golden = tensorfile::read(&golden_dir().join("image_encoder.safetensors")).unwrap();
    let t = &golden["image_uint8"];
    assert_eq!(t.shape, vec![32, 32, 3]);
    assert_eq!(img.pixels(), &t.data[..], "decoded pixels != PIL's");
}

// ---------------------------------------------------------------- bad files

fn problem(e: &Error) -> &ImageProblem {
    match e {
        Error::Image { problem, .. } => problem,
        other => panic!("expected an image error, got {other:?}"),
    }
}

fn expect_image_error(path: &Path) -> Error {
    let e = load_image(path).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Image, "{e}");
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(
        e.to_string().contains(name),
        "message does not name the file: {e}"
    );
    e
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = expect_image_error(&dir.path().join("nope.png"));
    assert_eq!(problem(&e), &ImageProblem::Missing);
}

#[test]
fn directory_is_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("folder.png");
    std::fs::create_dir(&sub).unwrap();
    let e = expect_image_error(&sub);
    assert!(matches!(problem(&e), ImageProblem::Unreadable(_)), "{e}");
}

#[test]
fn empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.png");
    std::fs::write(&p, b"").unwrap();
    let e = expect_image_error(&p);
    assert_eq!(problem(&e), &ImageProblem::Empty);
}

#[test]
fn text_file_named_png() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.png");
    std::fs::write(&p, "a prompt, not a picture\n").unwrap();
    let e = expect_image_error(&p);
    assert_eq!(problem(&e), &ImageProblem::NotAnImage);
}

#[test]
fn unsupported_format() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("anim.gif");
    std::fs::write(&p, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap();
    let e = expect_image_error(&p);
    assert!(matches!(problem(&e), ImageProblem::Unsupported(_)), "{e}");
}

#[test]
fn truncated_png() {
    let bytes = std::fs::read(golden_dir().join("image.png")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 20, 40, 20] {
        let p = dir.path().join(format!("cut{cut}.png"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = expect_image_error(&p);
        assert!(
            matches!(
                problem(&e),
                ImageProblem::Truncated(_) | ImageProblem::Corrupt(_)
            ),
            "cut at {cut}: {e}"
        );
    }
    // Cut inside the pixel data: reported as truncated.
    let p = dir.path().join("half.png");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = expect_image_error(&p);
    assert!(matches!(problem(&e), ImageProblem::Truncated(_)), "{e}");
}

#[test]
fn corrupt_png_data() {
    let mut bytes = std::fs::read(golden_dir().join("image.png")).unwrap();
    // Overwrite the middle of the IDAT stream (CRCs are then wrong too).
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("garbled.png");
    std::fs::write(&p, &bytes).unwrap();
    let e = expect_image_error(&p);
    assert!(
        matches!(
            problem(&e),
            ImageProblem::Corrupt(_) | ImageProblem::Truncated(_)
        ),
        "{e}"
    );
}

#[test]
fn absurdly_large_png_is_refused_before_decoding() {
    // A valid header for 20000x20000 RGB and a token IDAT chunk (the
    // decoder reads the header up to the first IDAT).
    let idat = zlib_stored(&[0]);
    let png = png_file(20_000, 20_000, 8, 2, &[], &[(b"IDAT", &idat)]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge.png");
    std::fs::write(&p, &png).unwrap();
    let e = expect_image_error(&p);
    assert_eq!(
        problem(&e),
        &ImageProblem::TooLarge {
            width: 20_000,
            height: 20_000,
            max: MAX_IMAGE_SIDE
        }
    );
}

#[test]
fn zero_sized_png_is_refused() {
    let png = png_file(0, 4, 8, 2, &[], &[]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("zero.png");
    std::fs::write(&p, &png).unwrap();
    let e = expect_image_error(&p);
    // The PNG decoder itself rejects a zero width as an invalid header.
    assert!(
        matches!(
            problem(&e),
            ImageProblem::ZeroSized { .. } | ImageProblem::Corrupt(_)
        ),
        "{e}"
    );
}

// ---------------------------------------------------------------- conversions

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// zlib stream of stored (uncompressed) deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(65535).collect()
    };
    for (i, c) in chunks.iter().enumerate() {
        out.push((i + 1 == chunks.len()) as u8);
        let n = c.len() as u16;
        out.extend(n.to_le_bytes());
        out.extend((!n).to_le_bytes());
        out.extend(*c);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    out.extend(((b << 16) | a).to_be_bytes());
    out
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend(kind);
    out.extend(data);
    let crc = crc32(&out[start..]);
    out.extend(crc.to_be_bytes());
}

/// A PNG file: `rows` are the packed scanlines (filter byte added here);
/// `extra` chunks go between IHDR and IDAT. No IDAT when `rows` is empty.
fn png_file(
    w: u32,
    h: u32,
    depth: u8,
    color: u8,
    rows: &[&[u8]],
    extra: &[(&[u8; 4], &[u8])],
) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([depth, color, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    for (kind, data) in extra {
        chunk(&mut out, kind, data);
    }
    if !rows.is_empty() {
        let raw: Vec<u8> = rows.iter().flat_map(|r| [&[0u8][..], r].concat()).collect();
        chunk(&mut out, b"IDAT", &zlib_stored(&raw));
    }
    chunk(&mut out, b"IEND", &[]);
    out
}

fn be16(values: &[u16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

fn decode(bytes: &[u8]) -> Vec<[u8; 3]> {
    let img = decode_image(bytes, Path::new("mem.png")).unwrap();
    img.pixels()
        .chunks_exact(3)
        .map(|p| [p[0], p[1], p[2]])
        .collect()
}

fn grays(v: &[u8]) -> Vec<[u8; 3]> {
    v.iter().map(|&g| [g, g, g]).collect()
}

#[test]
fn low_bit_depth_gray_and_palette_like_pil() {
    // Pillow: 1-bit 0b10110010, 2-bit 0..3, 4-bit 5 and 15.
    assert_eq!(
        decode(&png_file(8, 1, 1, 0, &[&[0b1011_0010]], &[])),
        grays(&[255, 0, 255, 255, 0, 0, 255, 0])
    );
    assert_eq!(
        decode(&png_file(4, 1, 2, 0, &[&[0b0001_1011]], &[])),
        grays(&[0, 85, 170, 255])
    );
    assert_eq!(
        decode(&png_file(2, 1, 4, 0, &[&[0x5f]], &[])),
        grays(&[85, 255])
    );
    // 4-bit palette with tRNS (entry 1 transparent): transparency ignored.
    let plte: &[u8] = &[10, 20, 30, 200, 100, 50, 7, 8, 9];
    let trns: &[u8] = &[255, 0];
    assert_eq!(
        decode(&png_file(
            4,
            1,
            4,
            3,
            &[&[0x01, 0x20]],
            &[(b"PLTE", plte), (b"tRNS", trns)]
        )),
        vec![[10, 20, 30], [200, 100, 50], [7, 8, 9], [10, 20, 30]]
    );
    // 8-bit gray with a tRNS colour key.
    assert_eq!(
        decode(&png_file(
            3,
            1,
            8,
            0,
            &[&[0, 77, 255]],
            &[(b"tRNS", &[0, 77])]
        )),
        grays(&[0, 77, 255])
    );
}

#[test]
fn alpha_is_dropped_not_composited() {
    assert_eq!(
        decode(&png_file(3, 1, 8, 4, &[&[10, 0, 20, 128, 30, 255]], &[])),
        grays(&[10, 20, 30])
    );
    assert_eq!(
        decode(&png_file(2, 1, 8, 6, &[&[1, 2, 3, 0, 4, 5, 6, 255]], &[])),
        vec![[1, 2, 3], [4, 5, 6]]
    );
}

#[test]
fn sixteen_bit_like_pil() {
    let v: [u16; 8] = [0, 100, 255, 256, 1000, 65535, 32896, 128];
    let rgb: Vec<u16> = (0..8)
        .flat_map(|i| [v[i], v[7 - i], v[i].wrapping_mul(7)])
        .collect();
    // Pillow: RGB;16B keeps the high byte.
    let want = vec![
        [0, 0, 0],
        [0, 128, 2],
        [0, 255, 6],
        [1, 3, 7],
        [3, 1, 27],
        [255, 0, 255],
        [128, 0, 131],
        [0, 0, 3],
    ];
    assert_eq!(decode(&png_file(8, 1, 16, 2, &[&be16(&rgb)], &[])), want);
    let rgba: Vec<u16> = rgb
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 1234])
        .collect();
    assert_eq!(decode(&png_file(8, 1, 16, 6, &[&be16(&rgba)], &[])), want);
    let la: Vec<u16> = (0..8).flat_map(|i| [v[i], v[7 - i]]).collect();
    assert_eq!(
        decode(&png_file(8, 1, 16, 4, &[&be16(&la)], &[])),
        grays(&[0, 0, 0, 1, 3, 255, 128, 0])
    );
    // Pillow opens 16-bit gray as I;16 and clips it to 255 in RGB.
    let g = [0u16, 100, 255, 256, 1000, 65535];
    assert_eq!(
        decode(&png_file(6, 1, 16, 0, &[&be16(&g)], &[])),
        grays(&[0, 100, 255, 255, 255, 255])
    );
    // ... also when a tRNS chunk makes the decoder add an alpha channel.
    assert_eq!(
        decode(&png_file(
            6,
            1,
            16,
            0,
            &[&be16(&g)],
            &[(b"tRNS", &[0, 100])]
        )),
        grays(&[0, 100, 255, 255, 255, 255])
    );
}

fn sample_rgb(w: u32, h: u32) -> Vec<u8> {
    (0..w * h * 3)
        .map(|i| ((i * 37 + i / 7) % 256) as u8)
        .collect()
}

#[test]
fn webp_lossless_round_trip() {
    let (w, h) = (13, 7);
    let rgb = sample_rgb(w, h);
    let mut bytes = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut bytes)
        .encode(&rgb, w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("frame.webp");
    std::fs::write(&p, &bytes).unwrap();
    let img = load_image(&p).unwrap();
    assert_eq!((img.width(), img.height()), (w, h));
    assert_eq!(img.pixels(), &rgb[..]);
    assert_eq!(img.get(1, 0), Some([rgb[3], rgb[4], rgb[5]]));
    assert_eq!(img.get(w, 0), None);
}

#[test]
fn jpeg_decodes_close_to_the_source() {
    let (w, h) = (16, 16);
    // A smooth image, which JPEG keeps well at quality 100.
    let rgb: Vec<u8> = (0..h)
        .flat_map(|y| (0..w).flat_map(move |x| [(x * 15) as u8, (y * 15) as u8, 128]))
        .collect();
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 100)
        .encode(&rgb, w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    // Named .png on purpose: the contents decide.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("photo.png");
    std::fs::write(&p, &bytes).unwrap();
    let img = load_image(&p).unwrap();
    assert_eq!((img.width(), img.height()), (w, h));
    let worst = img
        .pixels()
        .iter()
        .zip(&rgb)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 6, "JPEG error {worst}");
    // Truncated JPEG: an image error naming the file.
    let p = dir.path().join("cut.jpg");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    // Some decoders pad a cut JPEG with grey instead of failing; either way
    // nothing panics, and a failure is a typed image error.
    if let Err(e) = load_image(&p) {
        assert_eq!(e.kind(), ErrorKind::Image, "{e}");
    }
}

#[test]
fn rgb_image_constructor_checks_length() {
    assert!(RgbImage::new(2, 2, vec![0; 12]).is_ok());
    assert!(RgbImage::new(2, 2, vec![0; 11]).is_err());
    assert!(RgbImage::new(0, 2, vec![]).is_err());
    let img = RgbImage::new(1, 1, vec![0, 128, 255]).unwrap();
    let t = to_tensor_pm1(&img);
    assert_eq!(t.data(), &[-1.0, (128.0f32 / 255.0 - 0.5) / 0.5, 1.0]);
}
