//! `--output x.mp4`: H.264 in an MP4 file that ordinary players open.
//!
//! Encoding: OpenH264 (the `openh264` crate compiles Cisco's encoder from
//! the C++ source it bundles; no system library, no download, no ffmpeg).
//! Constrained Baseline profile, 4:2:0, fixed quantiser (default QP 12, see
//! [`Mp4Options::qp`]), an IDR every [`Mp4Options::keyframe_interval`]
//! frames so players can seek. RGB → Y'CbCr is BT.601 limited range with
//! rounding, the conversion ffmpeg applies to the reference's RGB frames;
//! unlike the reference we tag it (VUI in the SPS and an `nclx` `colr` box),
//! so players need not guess.
//!
//! Container: written here, not by a muxer crate, because the layout is
//! small and fixed: `ftyp`, then `moov` (before the media: "faststart", a
//! player can start before reading the whole file), then one `mdat` holding
//! all samples as one chunk. The sample entry is `avc1` with an `avcC`
//! record carrying the SPS/PPS, which are therefore removed from the
//! samples. Timing is exact for integer rates: timescale `fps · 1000`, every
//! sample lasts 1000 ticks, movie and media share the timescale.
//!
//! Samples are kept in memory until the end (a few MB for 81 frames of
//! 832×480 at the default QP) so `moov` can be written first.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use openh264::OpenH264API;
use openh264::Timestamp;
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, QpRange,
    RateControlMode, SpsPpsStrategy, UsageType, VuiConfig,
};
use openh264::formats::YUVSource;

use super::{DEFAULT_FPS, RgbFrames, TempFile, check_cancel, parent_dir, sync_dir};
use wanrt_runtime::error::{Error, Result};

/// Largest frame rate accepted: keeps `fps · 1000` far inside `u32`.
pub const MAX_FPS: u32 = 1000;

/// Largest picture OpenH264 encodes (its level-5.2 limit), either way round.
const MAX_LONG_SIDE: usize = 3840;
const MAX_SHORT_SIDE: usize = 2160;

/// Quantiser bounds. H.264 allows 0..=51, but OpenH264's rate control
/// raises anything below 12 to 12; refusing is clearer than ignoring.
pub const MIN_QP: u8 = 12;
pub const MAX_QP: u8 = 51;

/// Ticks per frame; the timescale is `fps · TICKS_PER_FRAME`.
const TICKS_PER_FRAME: u32 = 1000;

/// How to encode an MP4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mp4Options {
    /// Frames per second, 1..=[`MAX_FPS`]; Wan's outputs are 16.
    pub fps: u32,
    /// H.264 quantiser, [`MIN_QP`] (best) ..= [`MAX_QP`], used for every
    /// frame and macroblock (no rate control): the input is the result of an
    /// expensive diffusion run, so quality, not size, is the target. The
    /// default is the finest OpenH264 allows, 12, the closest it gets to the
    /// reference's libx264 CRF 10 (imageio quality 8, `docs/WAN.md` §6.5); 81 frames of
    /// 832×480 come to a few MB.
    pub qp: u8,
    /// Frames between IDR (key) frames; 0 = only the first frame. The
    /// default, two seconds at 16 fps, keeps seeking quick for little size.
    pub keyframe_interval: u32,
}

impl Default for Mp4Options {
    fn default() -> Self {
        Mp4Options {
            fps: DEFAULT_FPS,
            qp: MIN_QP,
            keyframe_interval: 2 * DEFAULT_FPS,
        }
    }
}

/// Encodes `frames` as H.264 and writes them to `path` as an MP4.
///
/// Refuses an existing `path` unless `overwrite`; writes a temporary file
/// in the same directory, syncs and renames it. `cancel` is checked before
/// every frame: when set, the temporary is removed and
/// [`Error::Interrupted`] returned. Width and height must be even (4:2:0)
/// and at most 3840×2160 (either orientation).
pub fn write_mp4(
    path: &Path,
    frames: &RgbFrames,
    options: &Mp4Options,
    overwrite: bool,
    cancel: Option<&AtomicBool>,
) -> Result<()> {
    validate(frames, options)?;
    // Refuse before the expensive part; `persist` re-checks atomically.
    wanrt_runtime::tensorfile::check_output(path, overwrite)?;
    // Creating the temporary first surfaces an unwritable destination
    // before minutes of encoding, not after.
    let mut tmp = TempFile::create(path)?;
    let stream = encode(frames, options, path, cancel)?;
    check_cancel(cancel)?;
    let layout = Layout::new(&stream, frames, options, path)?;
    tmp.write_all(&layout.ftyp)?;
    tmp.write_all(&layout.moov)?;
    tmp.write_all(&layout.mdat_header)?;
    for sample in &stream.samples {
        tmp.write_all(&sample.data)?;
    }
    check_cancel(cancel)?;
    tmp.persist(overwrite)?;
    sync_dir(&parent_dir(path));
    Ok(())
}

fn validate(frames: &RgbFrames, options: &Mp4Options) -> Result<()> {
    let (w, h) = (frames.width(), frames.height());
    if w % 2 != 0 || h % 2 != 0 {
        return Err(Error::arg(
            "--output",
            format!(
                "H.264 4:2:0 needs even width and height, got {w}x{h}; write PNG frames instead"
            ),
        ));
    }
    if w.max(h) > MAX_LONG_SIDE || w.min(h) > MAX_SHORT_SIDE {
        return Err(Error::arg(
            "--output",
            format!("{w}x{h} exceeds the H.264 encoder's limit of 3840x2160"),
        ));
    }
    if options.fps == 0 || options.fps > MAX_FPS {
        return Err(Error::arg(
            "--fps",
            format!("{} is outside 1..={MAX_FPS}", options.fps),
        ));
    }
    if !(MIN_QP..=MAX_QP).contains(&options.qp) {
        return Err(Error::arg(
            "--qp",
            format!("{} is outside {MIN_QP}..={MAX_QP}", options.qp),
        ));
    }
    // Durations are u32 tick counts in `stts`/`mdhd`/`tkhd`/`mvhd`.
    let duration = (frames.len() as u64) * u64::from(TICKS_PER_FRAME);
    if u32::try_from(frames.len()).is_err() || u32::try_from(duration).is_err() {
        return Err(Error::arg(
            "--output",
            format!("{} frames are too many for one MP4 track", frames.len()),
        ));
    }
    Ok(())
}

/// One encoded frame: NAL units with 4-byte big-endian length prefixes
/// (the `avcC` `lengthSizeMinusOne = 3` form), SPS/PPS removed.
struct Sample {
    data: Vec<u8>,
    /// An IDR access unit: decoding can start here (`stss`).
    sync: bool,
}

/// The encoded stream: parameter sets for `avcC` and the samples.
struct H264Stream {
    sps: Vec<u8>,
    pps: Vec<u8>,
    samples: Vec<Sample>,
}

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;

fn encode(
    frames: &RgbFrames,
    options: &Mp4Options,
    path: &Path,
    cancel: Option<&AtomicBool>,
) -> Result<H264Stream> {
    let enc_err = |what: &str, e: openh264::Error| Error::VideoEncode {
        file: path.to_path_buf(),
        reason: format!("{what}: {e}"),
    };
    let qp = options.qp;
    let config = EncoderConfig::new()
        // Camera (natural) content. The "non-real-time" usage types exist
        // in the API but this OpenH264 rejects them; frame dropping, the
        // real-time trade-off, is switched off below.
        .usage_type(UsageType::CameraVideoRealTime)
        // Buffer-based rate control clips every frame's QP to [qp, qp], so
        // the quantiser is fixed. (OpenH264's "off" mode ignores the range
        // and uses QP 26; its quality/bitrate modes do the same clipping but
        // print a warning on stderr when frame skipping is off.)
        .rate_control_mode(RateControlMode::Bufferbased)
        // `validate` bounded qp to 12..=51, so `QpRange::new` cannot panic.
        .qp(QpRange::new(qp, qp))
        // The target bitrate then only steers the level written in the SPS,
        // which OpenH264 raises to fit the bitrate: 20 Mbit/s keeps it at
        // or below 4.0 for Wan's sizes, which every hardware decoder takes.
        .bitrate(BitRate::from_bps(20_000_000))
        .skip_frames(false)
        .complexity(Complexity::High)
        // Per-macroblock QP offsets would undercut the fixed quantiser.
        .adaptive_quantization(false)
        .background_detection(false)
        // Keyframes on a fixed cadence only, so `stss` is predictable.
        .scene_change_detect(false)
        .intra_frame_period(IntraFramePeriod::from_num_frames(options.keyframe_interval))
        // The frame rate feeds the level choice and rate model.
        .max_frame_rate(FrameRate::from_hz(options.fps as f32))
        // Same SPS/PPS ids for every IDR, so the single `avcC` record
        // describes the whole stream.
        .sps_pps_strategy(SpsPpsStrategy::ConstantId)
        .vui(VuiConfig::bt601());
    let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(|e| enc_err("starting OpenH264", e))?;

    let mut yuv = Yuv420::new(frames.width(), frames.height());
    let mut sps: Option<Vec<u8>> = None;
    let mut pps: Option<Vec<u8>> = None;
    let mut samples = Vec::with_capacity(frames.len());
    for index in 0..frames.len() {
        check_cancel(cancel)?;
        let rgb = frames.frame(index).ok_or_else(|| Error::VideoEncode {
            file: path.to_path_buf(),
            reason: format!("frame {index} missing"),
        })?;
        yuv.fill_from_rgb(rgb);
        let millis = index as u64 * 1000 / u64::from(options.fps);
        let bitstream = encoder
            .encode_at(&yuv, Timestamp::from_millis(millis))
            .map_err(|e| enc_err(&format!("frame {index}"), e))?;

        let mut sample = Sample {
            data: Vec::new(),
            sync: false,
        };
        for l in 0..bitstream.num_layers() {
            let Some(layer) = bitstream.layer(l) else {
                continue;
            };
            for n in 0..layer.nal_count() {
                let Some(raw) = layer.nal_unit(n) else {
                    continue;
                };
                let nal = strip_start_code(raw).ok_or_else(|| Error::VideoEncode {
                    file: path.to_path_buf(),
                    reason: format!("frame {index}: NAL unit without start code"),
                })?;
                let Some(&header) = nal.first() else {
                    continue;
                };
                match header & 0x1f {
                    NAL_SPS => keep_parameter_set(&mut sps, nal, "SPS", path)?,
                    NAL_PPS => keep_parameter_set(&mut pps, nal, "PPS", path)?,
                    kind => {
                        sample.sync |= kind == NAL_IDR;
                        let len = u32::try_from(nal.len()).map_err(|_| Error::VideoEncode {
                            file: path.to_path_buf(),
                            reason: format!("frame {index}: NAL unit over 4 GiB"),
                        })?;
                        sample.data.extend_from_slice(&len.to_be_bytes());
                        sample.data.extend_from_slice(nal);
                    }
                }
            }
        }
        if sample.data.is_empty() {
            // Frame skipping is off, so an empty frame would be an encoder
            // fault; an MP4 sample must hold a picture.
            return Err(Error::VideoEncode {
                file: path.to_path_buf(),
                reason: format!("encoder produced no picture for frame {index}"),
            });
        }
        samples.push(sample);
    }
    match (sps, pps) {
        (Some(sps), Some(pps)) if sps.len() >= 4 => {
            if samples.first().is_some_and(|s| s.sync) {
                Ok(H264Stream { sps, pps, samples })
            } else {
                Err(Error::VideoEncode {
                    file: path.to_path_buf(),
                    reason: "first frame is not an IDR frame".into(),
                })
            }
        }
        _ => Err(Error::VideoEncode {
            file: path.to_path_buf(),
            reason: "encoder produced no SPS/PPS".into(),
        }),
    }
}

/// Records the first SPS/PPS; later IDRs repeat them, and `avcC` can only
/// describe them if they never change.
fn keep_parameter_set(
    slot: &mut Option<Vec<u8>>,
    nal: &[u8],
    what: &str,
    path: &Path,
) -> Result<()> {
    match slot {
        None => {
            *slot = Some(nal.to_vec());
            Ok(())
        }
        Some(first) if first.as_slice() == nal => Ok(()),
        Some(_) => Err(Error::VideoEncode {
            file: path.to_path_buf(),
            reason: format!("{what} changed mid-stream"),
        }),
    }
}

/// The NAL unit in an Annex-B unit: without its `00 00 01` or
/// `00 00 00 01` prefix.
fn strip_start_code(unit: &[u8]) -> Option<&[u8]> {
    unit.strip_prefix(&[0, 0, 0, 1])
        .or_else(|| unit.strip_prefix(&[0, 0, 1]))
}

/// A 4:2:0 picture in three tightly packed planes.
struct Yuv420 {
    width: usize,
    height: usize,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

/// BT.601 limited-range ("studio swing") coefficients for 8-bit R'G'B' in
/// 0..=255: Y' = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, and so on
/// (ITU-R BT.601-7 §2.5.1 scaled to 8 bits).
const KY: [f32; 3] = [65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0];
const KCB: [f32; 3] = [-37.797 / 255.0, -74.203 / 255.0, 112.0 / 255.0];
const KCR: [f32; 3] = [112.0 / 255.0, -93.786 / 255.0, -18.214 / 255.0];

#[inline]
fn dot(k: [f32; 3], r: f32, g: f32, b: f32) -> f32 {
    k[0] * r + k[1] * g + k[2] * b
}

/// Rounds a level to u8; the inputs are already inside 0..=255 (limited
/// range cannot leave it), the clamp guards the cast anyway.
#[inline]
fn level(x: f32) -> u8 {
    x.round().clamp(0.0, 255.0) as u8
}

impl Yuv420 {
    /// Caller guarantees even `width`/`height` ([`validate`]).
    fn new(width: usize, height: usize) -> Self {
        let chroma = (width / 2) * (height / 2);
        Yuv420 {
            width,
            height,
            y: vec![0; width * height],
            u: vec![0; chroma],
            v: vec![0; chroma],
        }
    }

    /// Converts one packed RGB frame (`H·W·3` bytes; the caller passes a
    /// frame of this size). Chroma is the 2×2 average, computed on R'G'B'
    /// before the matrix (the matrix is linear, so this equals averaging
    /// Cb/Cr), which is the centred siting ffmpeg's default scaler uses.
    fn fill_from_rgb(&mut self, rgb: &[u8]) {
        let w = self.width;
        for (out, p) in self.y.iter_mut().zip(rgb.chunks_exact(3)) {
            let (r, g, b) = (f32::from(p[0]), f32::from(p[1]), f32::from(p[2]));
            *out = level(16.0 + dot(KY, r, g, b));
        }
        let px = |x: usize, y: usize| -> (f32, f32, f32) {
            let i = (y * w + x) * 3;
            match rgb.get(i..i + 3) {
                Some(p) => (f32::from(p[0]), f32::from(p[1]), f32::from(p[2])),
                None => (0.0, 0.0, 0.0),
            }
        };
        let cw = w / 2;
        for cy in 0..self.height / 2 {
            for cx in 0..cw {
                let (mut r, mut g, mut b) = (0.0, 0.0, 0.0);
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let p = px(2 * cx + dx, 2 * cy + dy);
                    r += p.0;
                    g += p.1;
                    b += p.2;
                }
                let (r, g, b) = (r * 0.25, g * 0.25, b * 0.25);
                self.u[cy * cw + cx] = level(128.0 + dot(KCB, r, g, b));
                self.v[cy * cw + cx] = level(128.0 + dot(KCR, r, g, b));
            }
        }
    }
}

impl YUVSource for Yuv420 {
    fn dimensions(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    fn strides(&self) -> (usize, usize, usize) {
        (self.width, self.width / 2, self.width / 2)
    }

    fn y(&self) -> &[u8] {
        &self.y
    }

    fn u(&self) -> &[u8] {
        &self.u
    }

    fn v(&self) -> &[u8] {
        &self.v
    }
}

// ---------------------------------------------------------------------------
// ISO BMFF (ISO/IEC 14496-12) and AVC file format (14496-15) boxes.

/// The bytes that precede the samples: `ftyp`, `moov`, the `mdat` header.
struct Layout {
    ftyp: Vec<u8>,
    moov: Vec<u8>,
    mdat_header: Vec<u8>,
}

impl Layout {
    fn new(
        stream: &H264Stream,
        frames: &RgbFrames,
        options: &Mp4Options,
        path: &Path,
    ) -> Result<Self> {
        let too_big = |what: &str| Error::VideoEncode {
            file: path.to_path_buf(),
            reason: format!("{what} too large for MP4"),
        };
        let ftyp = ftyp().ok_or_else(|| too_big("ftyp"))?;
        let payload: u64 = stream.samples.iter().map(|s| s.data.len() as u64).sum();
        // A 64-bit "largesize" header only when the 32-bit size overflows.
        let mut mdat_header = Vec::with_capacity(16);
        match u32::try_from(payload + 8) {
            Ok(size) => {
                mdat_header.u32(size).bytes(b"mdat");
            }
            Err(_) => {
                mdat_header.u32(1).bytes(b"mdat");
                mdat_header.extend_from_slice(&(payload + 16).to_be_bytes());
            }
        }
        // `stco` has a fixed size, so a first pass with offset 0 gives the
        // `moov` length, and with it the real offset of the samples.
        let probe = moov(stream, frames, options, 0).ok_or_else(|| too_big("moov"))?;
        let offset = ftyp.len() + probe.len() + mdat_header.len();
        let offset = u32::try_from(offset).map_err(|_| too_big("moov"))?;
        let moov = moov(stream, frames, options, offset).ok_or_else(|| too_big("moov"))?;
        Ok(Layout {
            ftyp,
            moov,
            mdat_header,
        })
    }
}

trait Put {
    fn u8(&mut self, v: u8) -> &mut Self;
    fn u16(&mut self, v: u16) -> &mut Self;
    fn u32(&mut self, v: u32) -> &mut Self;
    fn bytes(&mut self, v: &[u8]) -> &mut Self;
}

impl Put for Vec<u8> {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.extend_from_slice(v);
        self
    }
}

/// A box: 32-bit size, type, then the children/payload in order. `None`
/// if it would exceed 4 GiB (only `mdat` could, and it is built apart).
fn mp4_box(kind: &[u8; 4], parts: &[&[u8]]) -> Option<Vec<u8>> {
    let len: usize = 8 + parts.iter().map(|p| p.len()).sum::<usize>();
    let size = u32::try_from(len).ok()?;
    let mut b = Vec::with_capacity(len);
    b.u32(size).bytes(kind);
    for p in parts {
        b.bytes(p);
    }
    Some(b)
}

/// A full box: a box whose payload starts with version and 24-bit flags.
fn full_box(kind: &[u8; 4], version: u8, flags: u32, payload: &[u8]) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(4);
    head.u32((u32::from(version) << 24) | (flags & 0x00ff_ffff));
    mp4_box(kind, &[&head, payload])
}

/// The unity transformation matrix of `mvhd`/`tkhd` (16.16 and 2.30 fixed).
const UNITY_MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

fn ftyp() -> Option<Vec<u8>> {
    let mut p = Vec::new();
    // Major brand isom (version 0x200), compatible with the brands players
    // look for: ISO base media v1/v2, AVC, MP4 v1.
    p.bytes(b"isom")
        .u32(0x200)
        .bytes(b"isom")
        .bytes(b"iso2")
        .bytes(b"avc1")
        .bytes(b"mp41");
    mp4_box(b"ftyp", &[&p])
}

fn moov(
    stream: &H264Stream,
    frames: &RgbFrames,
    options: &Mp4Options,
    chunk_offset: u32,
) -> Option<Vec<u8>> {
    let timescale = options.fps.checked_mul(TICKS_PER_FRAME)?;
    let count = u32::try_from(stream.samples.len()).ok()?;
    let duration = count.checked_mul(TICKS_PER_FRAME)?;
    let width = u16::try_from(frames.width()).ok()?;
    let height = u16::try_from(frames.height()).ok()?;

    // mvhd (version 0): creation/modification times 0 ("unknown") keep the
    // output reproducible.
    let mut p = Vec::new();
    p.u32(0).u32(0).u32(timescale).u32(duration);
    p.u32(0x0001_0000).u16(0x0100).u16(0).u32(0).u32(0); // rate 1.0, volume 1.0, reserved
    for m in UNITY_MATRIX {
        p.u32(m);
    }
    p.bytes(&[0; 24]).u32(2); // pre_defined, next_track_ID
    let mvhd = full_box(b"mvhd", 0, 0, &p)?;

    // tkhd: flags enabled | in movie | in preview.
    let mut p = Vec::new();
    p.u32(0).u32(0).u32(1).u32(0).u32(duration); // times, track_ID 1, reserved, duration
    p.u32(0).u32(0).u16(0).u16(0).u16(0).u16(0); // reserved, layer, alternate group, volume, reserved
    for m in UNITY_MATRIX {
        p.u32(m);
    }
    p.u32(u32::from(width) << 16).u32(u32::from(height) << 16);
    let tkhd = full_box(b"tkhd", 0, 0x7, &p)?;

    // mdhd: language "und" packed as three 5-bit letters (ISO 639-2/T).
    let mut p = Vec::new();
    p.u32(0)
        .u32(0)
        .u32(timescale)
        .u32(duration)
        .u16(0x55c4)
        .u16(0);
    let mdhd = full_box(b"mdhd", 0, 0, &p)?;

    let mut p = Vec::new();
    p.u32(0)
        .bytes(b"vide")
        .bytes(&[0; 12])
        .bytes(b"VideoHandler\0");
    let hdlr = full_box(b"hdlr", 0, 0, &p)?;

    let vmhd = full_box(b"vmhd", 0, 1, &[0; 8])?; // graphicsmode 0, opcolor 0
    // One data reference: "the media is in this file" (flag 1).
    let url = full_box(b"url ", 0, 1, &[])?;
    let mut p = Vec::new();
    p.u32(1).bytes(&url);
    let dref = full_box(b"dref", 0, 0, &p)?;
    let dinf = mp4_box(b"dinf", &[&dref])?;

    let stbl = stbl(stream, width, height, chunk_offset)?;
    let minf = mp4_box(b"minf", &[&vmhd, &dinf, &stbl])?;
    let mdia = mp4_box(b"mdia", &[&mdhd, &hdlr, &minf])?;
    let trak = mp4_box(b"trak", &[&tkhd, &mdia])?;
    mp4_box(b"moov", &[&mvhd, &trak])
}

fn stbl(stream: &H264Stream, width: u16, height: u16, chunk_offset: u32) -> Option<Vec<u8>> {
    let count = u32::try_from(stream.samples.len()).ok()?;
    let (sps, pps) = (&stream.sps, &stream.pps);

    // avcC (AVCDecoderConfigurationRecord): profile, compatibility and
    // level are bytes 1..4 of the SPS (`encode` only accepts an SPS of at
    // least 4 bytes, so the indexing holds); NAL lengths are 4 bytes (0xff);
    // one SPS (0xe1), one PPS.
    let mut p = Vec::new();
    p.u8(1).u8(sps[1]).u8(sps[2]).u8(sps[3]).u8(0xff).u8(0xe1);
    p.u16(u16::try_from(sps.len()).ok()?).bytes(sps);
    p.u8(1).u16(u16::try_from(pps.len()).ok()?).bytes(pps);
    let avcc = mp4_box(b"avcC", &[&p])?;
    // colr nclx: BT.601 (SMPTE 170M) primaries, transfer and matrix, limited
    // range — the same as the VUI, for players that read only the container.
    let mut p = Vec::new();
    p.bytes(b"nclx").u16(6).u16(6).u16(6).u8(0);
    let colr = mp4_box(b"colr", &[&p])?;
    let mut p = Vec::new();
    p.u32(1).u32(1); // square pixels
    let pasp = mp4_box(b"pasp", &[&p])?;

    // VisualSampleEntry 'avc1'.
    let mut p = Vec::new();
    p.bytes(&[0; 6]).u16(1); // reserved, data_reference_index
    p.u16(0).u16(0).bytes(&[0; 12]); // pre_defined, reserved, pre_defined
    p.u16(width).u16(height);
    p.u32(0x0048_0000).u32(0x0048_0000).u32(0).u16(1); // 72 dpi, reserved, frame_count
    let mut name = [0u8; 32]; // compressorname: Pascal string in 32 bytes
    let label = b"OpenH264 (wanrt)";
    name[0] = label.len() as u8;
    name[1..=label.len()].copy_from_slice(label);
    p.bytes(&name).u16(0x0018).u16(0xffff); // depth 24, pre_defined −1
    let avc1 = mp4_box(b"avc1", &[&p, &avcc, &colr, &pasp])?;
    let mut p = Vec::new();
    p.u32(1).bytes(&avc1);
    let stsd = full_box(b"stsd", 0, 0, &p)?;

    // stts: every sample lasts one frame.
    let mut p = Vec::new();
    p.u32(1).u32(count).u32(TICKS_PER_FRAME);
    let stts = full_box(b"stts", 0, 0, &p)?;

    // stss: 1-based numbers of the IDR samples.
    let sync: Vec<u32> = (1..=count)
        .zip(&stream.samples)
        .filter(|(_, s)| s.sync)
        .map(|(n, _)| n)
        .collect();
    let mut p = Vec::new();
    p.u32(u32::try_from(sync.len()).ok()?);
    for n in sync {
        p.u32(n);
    }
    let stss = full_box(b"stss", 0, 0, &p)?;

    // stsc: one chunk holding every sample, described by entry 1.
    let mut p = Vec::new();
    p.u32(1).u32(1).u32(count).u32(1);
    let stsc = full_box(b"stsc", 0, 0, &p)?;

    // stsz: per-sample sizes (sample_size 0 = sizes follow).
    let mut p = Vec::with_capacity(8 + 4 * stream.samples.len());
    p.u32(0).u32(count);
    for s in &stream.samples {
        p.u32(u32::try_from(s.data.len()).ok()?);
    }
    let stsz = full_box(b"stsz", 0, 0, &p)?;

    let mut p = Vec::new();
    p.u32(1).u32(chunk_offset);
    let stco = full_box(b"stco", 0, 0, &p)?;

    mp4_box(b"stbl", &[&stsd, &stts, &stss, &stsc, &stsz, &stco])
}

pub mod read;

#[cfg(test)]
mod tests;
