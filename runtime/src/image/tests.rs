//! Tests of I2V preprocessing (decoding is tested in `wanrt-media`).
//!
//! Expected values come from the reference stack: the golden tensors of
//! `tests/fixtures/i2v-tiny/golden` (PIL + torch), and numbers printed by
//! torch 2.15.0 (`F.interpolate(mode='bicubic', align_corners=False)` on the
//! CPU, AVX512 and AVX2 kernels agree) and Pillow 13.0 (`convert('RGB')`)
//! while this module was written. The bicubic resize is also checked
//! against an independent f64 implementation of the formula.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::ErrorKind;
use crate::tensorfile::{self, HostTensor};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/i2v-tiny/golden")
}

fn golden(file: &str) -> BTreeMap<String, HostTensor> {
    tensorfile::read(&golden_dir().join(file)).expect("golden tensors")
}

/// The golden image's pixels as PIL decoded them (`image_uint8`, `[H, W, 3]`).
fn golden_image() -> RgbImage {
    let t = &golden("image_encoder.safetensors")["image_uint8"];
    assert_eq!(t.shape, vec![32, 32, 3]);
    RgbImage::new(32, 32, t.data.clone()).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

// ---------------------------------------------------------------- golden

#[test]
fn golden_pm1_tensor() {
    let img = golden_image();

    let x = to_tensor_pm1(&img);
    assert_eq!((x.channels(), x.height(), x.width()), (3, 32, 32));
    let p = &golden("pipeline.safetensors")["image_preprocessed"];
    assert_eq!(p.shape, vec![1, 3, 32, 32]);
    let want = p.to_f32().unwrap();
    let err = max_abs_diff(x.data(), &want);
    assert!(err <= 1e-7, "to_tensor_pm1 max error {err}");
    assert_eq!(x.to_host_tensor().shape, vec![1, 3, 32, 32]);
}

#[test]
fn golden_clip_pixel_values() {
    let img = golden_image();
    let got = clip_preprocess(&to_tensor_pm1(&img), CLIP_IMAGE_SIZE).unwrap();
    let want = &golden("pipeline.safetensors")["image_pixel_values"];
    assert_eq!(got.shape, want.shape);
    assert_eq!(got.shape, vec![1, 3, 224, 224]);
    let (got, want) = (got.to_f32().unwrap(), want.to_f32().unwrap());
    let err = max_abs_diff(&got, &want);
    let exact = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.to_bits() == b.to_bits())
        .count();
    eprintln!(
        "CLIP pixel values: max abs error {err:e}, {exact}/{} bit-identical",
        got.len()
    );
    assert!(err <= 1e-6, "CLIP preprocessing max error {err}");
}

// ---------------------------------------------------------------- bicubic

/// Test input of the torch runs: `((c·131 + y·71 + x·29) mod 97 − 48) / 32`
/// (exact in f32).
fn pattern(c: usize, h: usize, w: usize) -> ImageTensor {
    let mut v = Vec::with_capacity(c * h * w);
    for ci in 0..c {
        for y in 0..h {
            for x in 0..w {
                v.push((((ci * 131 + y * 71 + x * 29) % 97) as f32 - 48.0) / 32.0);
            }
        }
    }
    ImageTensor::new(c, h, w, v).unwrap()
}

fn assert_bits(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            (*w as f32).to_bits(),
            "{what}[{i}]: {g} != torch {w}"
        );
    }
}

/// `F.interpolate(pattern(1, 4, 4)[None], size=(8, 8), mode='bicubic')`.
const TORCH_4X4_TO_8X8: [f64; 64] = [
    -1.8633084297180176,
    -1.488114356994629,
    -0.8813924789428711,
    -0.20529508590698242,
    0.14038991928100586,
    0.6990966796875,
    1.1309814453125,
    1.4000244140625,
    -0.980659008026123,
    -0.9787745475769043,
    -0.9882378578186035,
    -0.6463198661804199,
    -0.16409540176391602,
    0.46912527084350586,
    0.893517017364502,
    1.1588134765625,
    0.4871649742126465,
    -0.13962411880493164,
    -1.1871943473815918,
    -1.3956894874572754,
    -0.6653628349304199,
    0.10439729690551758,
    0.5138030052185059,
    0.7716064453125,
    0.9826483726501465,
    0.3949894905090332,
    -0.5743203163146973,
    -1.1561250686645508,
    -1.0419836044311523,
    -0.6064028739929199,
    -0.060457706451416016,
    0.27185964584350586,
    0.24211931228637695,
    0.3414130210876465,
    0.5267682075500488,
    -0.0625295639038086,
    -1.1180391311645508,
    -1.2986435890197754,
    -0.5045962333679199,
    -0.03573942184448242,
    -0.4928250312805176,
    -0.023968219757080078,
    0.7700791358947754,
    0.5857281684875488,
    -0.47727441787719727,
    -1.0311884880065918,
    -0.7875542640686035,
    -0.6528768539428711,
    -0.8575530052185059,
    -0.525235652923584,
    0.020709514617919922,
    0.4450507164001465,
    0.5367131233215332,
    0.06105947494506836,
    -0.7334132194519043,
    -1.214920997619629,
    -1.0875244140625,
    -0.8297209739685059,
    -0.4203152656555176,
    0.37358903884887695,
    1.1522040367126465,
    0.7156805992126465,
    -0.707465648651123,
    -1.5622830390930176,
];

/// `F.interpolate(pattern(1, 8, 8)[None], size=(3, 5), mode='bicubic')`.
const TORCH_8X8_TO_3X5: [f64; 15] = [
    -0.1293172687292099,
    -0.47698867321014404,
    1.0970561504364014,
    -0.9144328832626343,
    0.6758830547332764,
    -0.11585196852684021,
    0.7115136981010437,
    -0.75152587890625,
    0.37561410665512085,
    -0.5077351927757263,
    -0.30204838514328003,
    1.6312980651855469,
    -0.6925303339958191,
    1.1711972951889038,
    -0.44213852286338806,
];

#[test]
fn bicubic_small_cases_match_torch_bits() {
    let up = resize_bicubic(&pattern(1, 4, 4), 8, 8).unwrap();
    assert_eq!((up.channels(), up.height(), up.width()), (1, 8, 8));
    assert_bits(up.data(), &TORCH_4X4_TO_8X8, "4x4 -> 8x8");
    let down = resize_bicubic(&pattern(1, 8, 8), 3, 5).unwrap();
    assert_eq!((down.height(), down.width()), (3, 5));
    assert_bits(down.data(), &TORCH_8X8_TO_3X5, "8x8 -> 3x5");
}

/// FNV-1a 64 over the little-endian bytes of the f32 values (the same
/// digest was computed over torch's output).
fn fnv1a(values: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for b in v.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[test]
fn bicubic_larger_cases_match_torch_digests() {
    // (C, H, W, out_h, out_w, FNV-1a of torch's output).
    const CASES: &[(usize, usize, usize, usize, usize, u64)] = &[
        (3, 37, 53, 224, 224, 0x00cb_70fd_0ab7_ae83),
        (3, 37, 53, 20, 31, 0xdd72_4264_47b8_f373),
        (3, 37, 53, 100, 7, 0xec91_b1e2_c7f3_d36f),
        (3, 5, 3, 1, 1, 0x16dd_7637_44bf_3012),
        (3, 1, 1, 3, 4, 0x40f7_03e3_a0f6_79fd),
        (3, 2, 9, 7, 2, 0x9be3_4ccb_076d_eecd),
        (2, 16, 16, 480, 832, 0xc59b_9190_af2b_4ce7),
        (3, 720, 1280, 224, 224, 0xa552_f9e5_06b0_ac4d),
    ];
    for &(c, h, w, oh, ow, digest) in CASES {
        let out = resize_bicubic(&pattern(c, h, w), oh, ow).unwrap();
        assert_eq!(
            fnv1a(out.data()),
            digest,
            "[{c}, {h}, {w}] -> {oh}x{ow} differs from torch"
        );
    }
}

/// The textbook definition in f64: Keys' kernel with a = −0.75, half-pixel
/// source coordinates, taps floor(src) − 1 … floor(src) + 2 clamped to the
/// border.
fn reference_f64(x: &ImageTensor, oh: usize, ow: usize) -> Vec<f64> {
    fn kernel(d: f64) -> f64 {
        let a = -0.75;
        let d = d.abs();
        if d <= 1.0 {
            ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
        } else if d < 2.0 {
            ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
        } else {
            0.0
        }
    }
    fn taps(input: usize, output: usize, dst: usize) -> Vec<(usize, f64)> {
        let src = (dst as f64 + 0.5) * input as f64 / output as f64 - 0.5;
        let base = src.floor();
        (-1..=2)
            .map(|k| {
                let i = base + k as f64;
                let idx = i.clamp(0.0, input as f64 - 1.0) as usize;
                (idx, kernel(src - i))
            })
            .collect()
    }
    let (c, h, w) = (x.channels(), x.height(), x.width());
    let mut out = Vec::with_capacity(c * oh * ow);
    for ci in 0..c {
        for i in 0..oh {
            let ty = taps(h, oh, i);
            for j in 0..ow {
                let tx = taps(w, ow, j);
                let mut acc = 0.0;
                for &(yy, wy) in &ty {
                    for &(xx, wx) in &tx {
                        acc += wy * wx * x.data()[(ci * h + yy) * w + xx] as f64;
                    }
                }
                out.push(acc);
            }
        }
    }
    out
}

#[test]
fn bicubic_agrees_with_f64_reference() {
    // A small deterministic generator (xorshift) for the input values.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let sizes = [
        (4, 4, 8, 8),
        (8, 8, 3, 5),
        (1, 1, 5, 3),
        (7, 2, 1, 1),
        (3, 17, 29, 6),
        (32, 32, 224, 224),
        (45, 80, 16, 16),
        (6, 9, 6, 13),
        (2, 2, 2, 3),
    ];
    for (h, w, oh, ow) in sizes {
        let x = ImageTensor::new(2, h, w, (0..2 * h * w).map(|_| next()).collect()).unwrap();
        let got = resize_bicubic(&x, oh, ow).unwrap();
        let want = reference_f64(&x, oh, ow);
        let err = got
            .data()
            .iter()
            .zip(&want)
            .map(|(g, w)| (*g as f64 - w).abs())
            .fold(0.0, f64::max);
        // torch rounds the weights in f32 (cubic_convolution2 cancels from
        // terms near 6 to results near 0.1, a few 1e-7 each) and sums 16
        // taps in f32: a few 1e-6 on values in [-1, 1]. A wrong coordinate,
        // kernel or border rule shows up as 1e-2 or more.
        assert!(err < 1e-5, "{h}x{w} -> {oh}x{ow}: max error {err} vs f64");
    }
}

#[test]
fn bicubic_identity_returns_input_exactly() {
    let mut x = pattern(3, 5, 7);
    let mut data = x.clone().into_data();
    data[0] = -0.0;
    data[1] = 1e30;
    x = ImageTensor::new(3, 5, 7, data).unwrap();
    let y = resize_bicubic(&x, 5, 7).unwrap();
    let bits = |t: &ImageTensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&y), bits(&x));
}

#[test]
fn bicubic_values_are_not_clamped() {
    // A step edge overshoots on both sides with a = −0.75.
    let mut v = vec![-1.0f32; 8];
    v[4..].fill(1.0);
    let x = ImageTensor::new(1, 1, 8, v).unwrap();
    let y = resize_bicubic(&x, 1, 32).unwrap();
    let max = y.data().iter().cloned().fold(f32::MIN, f32::max);
    let min = y.data().iter().cloned().fold(f32::MAX, f32::min);
    assert!(max > 1.0 && min < -1.0, "range {min}..{max}");
}

#[test]
fn resize_rejects_bad_sizes() {
    let x = pattern(1, 4, 4);
    for (h, w) in [(0, 4), (4, 0), (16385, 4)] {
        let e = resize_bicubic(&x, h, w).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{h}x{w}: {e}");
    }
    assert!(ImageTensor::new(1, 2, 2, vec![0.0; 3]).is_err());
    assert!(ImageTensor::new(0, 2, 2, vec![]).is_err());
    let gray = pattern(1, 4, 4);
    assert_eq!(
        clip_preprocess(&gray, 224).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn conditioning_frame_is_the_bicubic_resize() {
    let img = golden_image();
    let x = to_tensor_pm1(&img);
    let frame = conditioning_frame(&x, 48, 80).unwrap();
    assert_eq!(
        (frame.channels(), frame.height(), frame.width()),
        (3, 48, 80)
    );
    assert_eq!(frame, resize_bicubic(&x, 48, 80).unwrap());
    // Same size: the image itself.
    assert_eq!(conditioning_frame(&x, 32, 32).unwrap(), x);
}

// ---------------------------------------------------------------- size rule

#[test]
fn official_size_rule_examples() {
    let s = |h, w, a| {
        let r = official_i2v_size(h, w, a).unwrap();
        (r.height, r.width, r.lat_h, r.lat_w)
    };
    // The examples of docs/WAN.md §5.2.
    assert_eq!(s(720, 1280, MAX_AREA_720P), (720, 1280, 90, 160));
    assert_eq!(s(1080, 1920, MAX_AREA_480P), (464, 832, 58, 104));
    // The quirk: √(399360 · 480/832) = 479.99999999999994.
    assert_eq!(s(480, 832, MAX_AREA_480P), (464, 832, 58, 104));
    assert_eq!(s(480, 832, MAX_AREA_720P), (720, 1248, 90, 156));
    // Portrait: 9:16 at 480P and 720P, and a 3:4 photo.
    assert_eq!(s(1920, 1080, MAX_AREA_480P), (832, 464, 104, 58));
    assert_eq!(s(1280, 720, MAX_AREA_720P), (1280, 720, 160, 90));
    assert_eq!(s(4032, 3024, MAX_AREA_480P), (720, 544, 90, 68));
    // Square.
    assert_eq!(s(512, 512, MAX_AREA_480P), (624, 624, 78, 78));
    // Latent sides are even (DiT patch 2).
    let r = official_i2v_size(333, 777, MAX_AREA_720P).unwrap();
    assert_eq!((r.lat_h % 2, r.lat_w % 2), (0, 0));
    assert_eq!((r.height, r.width), (r.lat_h * 8, r.lat_w * 8));
}

#[test]
fn official_size_rule_explains_mismatches() {
    let r = official_i2v_size(480, 832, MAX_AREA_480P).unwrap();
    assert!(r.matches(464, 832));
    assert_eq!(r.mismatch(464, 832), None);
    let msg = r.mismatch(480, 832).unwrap();
    assert!(msg.contains("maps to 464x832"), "{msg}");
    assert!(msg.contains("compiled for 480x832"), "{msg}");
}

#[test]
fn official_size_rule_rejects_degenerate_inputs() {
    for (h, w, a) in [
        (0, 10, MAX_AREA_480P),
        (10, 0, MAX_AREA_480P),
        (10, 10, 0),
        (10, 10, 100),
    ] {
        let e = official_i2v_size(h, w, a).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{h}x{w} @ {a}: {e}");
    }
    // An extreme aspect ratio whose short side rounds to no latent patch.
    assert!(official_i2v_size(1, 10_000, MAX_AREA_480P).is_err());
}
