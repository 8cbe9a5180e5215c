//! Reading an H.264 MP4 back into RGB frames (`wan-run compare A.mp4
//! B.mp4`): the first video track's `avc1` samples, located through
//! `stsz`/`stsc`/`stco` (or `co64`), converted from length-prefixed NAL
//! units to Annex B with the `avcC` record's SPS/PPS in front, decoded by
//! OpenH264 and converted to RGB with the inverse of the BT.601
//! limited-range matrix the writer uses. Files of other writers work when
//! they hold one AVC video track (B-frames come out in decoding order, so
//! compare two files of the same encoder settings).

use std::path::Path;

use openh264::OpenH264API;
use openh264::decoder::{Decoder, DecoderConfig};
use openh264::formats::YUVSource;

use super::super::RgbFrames;
use wanrt_runtime::error::{Error, Result};

/// Largest MP4 read (the whole file is held while it is parsed).
pub const MAX_MP4_BYTES: u64 = 4 << 30;

struct Reader<'a> {
    file: &'a Path,
    /// The flag that named the file, for errors.
    flag: &'a str,
    buf: &'a [u8],
}

#[derive(Clone, Copy)]
struct Bx {
    kind: [u8; 4],
    body: usize,
    end: usize,
}

/// SPS and PPS NAL units of an `avcC` record, and its NAL length size.
type ParameterSets = (Vec<Vec<u8>>, Vec<Vec<u8>>, usize);

struct Track {
    sps: Vec<Vec<u8>>,
    pps: Vec<Vec<u8>>,
    nal_length: usize,
    samples: Vec<(usize, usize)>,
}

impl<'a> Reader<'a> {
    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::arg(
            self.flag,
            format!(
                "{}: not a readable H.264 MP4: {}",
                self.file.display(),
                reason.into()
            ),
        )
    }

    fn bytes(&self, at: usize, n: usize) -> Result<&'a [u8]> {
        self.buf
            .get(
                at..at
                    .checked_add(n)
                    .ok_or_else(|| self.bad("offset overflow"))?,
            )
            .ok_or_else(|| self.bad(format!("truncated at byte {at}")))
    }

    fn u8(&self, at: usize) -> Result<u8> {
        Ok(self.bytes(at, 1)?[0])
    }

    fn u16(&self, at: usize) -> Result<u16> {
        let b = self.bytes(at, 2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&self, at: usize) -> Result<u32> {
        let b = self.bytes(at, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&self, at: usize) -> Result<u64> {
        let b = self.bytes(at, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// The boxes inside `[start, end)`.
    fn children(&self, start: usize, end: usize) -> Result<Vec<Bx>> {
        let mut out = Vec::new();
        let mut at = start;
        while at + 8 <= end {
            let size32 = self.u32(at)? as u64;
            let kind: [u8; 4] = self.bytes(at + 4, 4)?.try_into().expect("4 bytes");
            let (size, header) = match size32 {
                1 => (self.u64(at + 8)?, 16u64),
                0 => ((end - at) as u64, 8),
                s => (s, 8),
            };
            let box_end = (at as u64).checked_add(size).filter(|&e| e <= end as u64);
            let Some(box_end) = box_end.filter(|_| size >= header) else {
                return Err(self.bad(format!(
                    "box '{}' at byte {at} overruns its parent",
                    String::from_utf8_lossy(&kind)
                )));
            };
            out.push(Bx {
                kind,
                body: at + header as usize,
                end: box_end as usize,
            });
            at = box_end as usize;
        }
        Ok(out)
    }

    fn child(&self, parent: Bx, kind: &[u8; 4]) -> Result<Option<Bx>> {
        Ok(self
            .children(parent.body, parent.end)?
            .into_iter()
            .find(|b| &b.kind == kind))
    }

    fn need(&self, parent: Bx, kind: &[u8; 4]) -> Result<Bx> {
        self.child(parent, kind)?.ok_or_else(|| {
            self.bad(format!(
                "no '{}' box in '{}'",
                String::from_utf8_lossy(kind),
                String::from_utf8_lossy(&parent.kind)
            ))
        })
    }

    /// The first track whose sample description is `avc1`.
    fn track(&self) -> Result<Track> {
        let top = self.children(0, self.buf.len())?;
        let moov = top
            .iter()
            .find(|b| &b.kind == b"moov")
            .copied()
            .ok_or_else(|| self.bad("no 'moov' box"))?;
        for trak in self.children(moov.body, moov.end)? {
            if &trak.kind != b"trak" {
                continue;
            }
            let stbl = self.need(self.need(self.need(trak, b"mdia")?, b"minf")?, b"stbl")?;
            let stsd = self.need(stbl, b"stsd")?;
            // stsd: version/flags, entry count, then sample entries.
            let entries = self.children(stsd.body + 8, stsd.end)?;
            let Some(avc1) = entries.iter().find(|e| &e.kind == b"avc1").copied() else {
                continue;
            };
            // VisualSampleEntry: 78 bytes before its child boxes.
            let avcc = self
                .children(avc1.body + 78, avc1.end)?
                .into_iter()
                .find(|b| &b.kind == b"avcC")
                .ok_or_else(|| self.bad("no 'avcC' record"))?;
            let (sps, pps, nal_length) = self.avcc(avcc)?;
            let samples = self.samples(stbl)?;
            return Ok(Track {
                sps,
                pps,
                nal_length,
                samples,
            });
        }
        Err(self.bad("no H.264 (avc1) video track"))
    }

    fn avcc(&self, b: Bx) -> Result<ParameterSets> {
        let nal_length = usize::from(self.u8(b.body + 4)? & 3) + 1;
        let mut at = b.body + 5;
        let mut sets = [Vec::new(), Vec::new()];
        for (i, set) in sets.iter_mut().enumerate() {
            let n = if i == 0 {
                self.u8(at)? & 31
            } else {
                self.u8(at)?
            };
            at += 1;
            for _ in 0..n {
                let len = usize::from(self.u16(at)?);
                set.push(self.bytes(at + 2, len)?.to_vec());
                at += 2 + len;
            }
        }
        let [sps, pps] = sets;
        if sps.is_empty() || pps.is_empty() {
            return Err(self.bad("the avcC record holds no SPS or no PPS"));
        }
        Ok((sps, pps, nal_length))
    }

    /// (offset, size) of every sample, in decoding order.
    fn samples(&self, stbl: Bx) -> Result<Vec<(usize, usize)>> {
        let stsz = self.need(stbl, b"stsz")?;
        let fixed = self.u32(stsz.body + 4)? as usize;
        let count = self.u32(stsz.body + 8)? as usize;
        if count > self.buf.len() {
            return Err(self.bad(format!("{count} samples in a {}-byte file", self.buf.len())));
        }
        let sizes: Vec<usize> = (0..count)
            .map(|i| {
                if fixed != 0 {
                    Ok(fixed)
                } else {
                    self.u32(stsz.body + 12 + 4 * i).map(|s| s as usize)
                }
            })
            .collect::<Result<_>>()?;
        let chunks: Vec<u64> = match (self.child(stbl, b"stco")?, self.child(stbl, b"co64")?) {
            (Some(b), _) => {
                let n = self.u32(b.body + 4)? as usize;
                (0..n)
                    .map(|i| self.u32(b.body + 8 + 4 * i).map(u64::from))
                    .collect::<Result<_>>()?
            }
            (None, Some(b)) => {
                let n = self.u32(b.body + 4)? as usize;
                (0..n)
                    .map(|i| self.u64(b.body + 8 + 8 * i))
                    .collect::<Result<_>>()?
            }
            (None, None) => return Err(self.bad("no 'stco' or 'co64' box")),
        };
        let stsc = self.need(stbl, b"stsc")?;
        let runs = self.u32(stsc.body + 4)? as usize;
        let mut table = Vec::with_capacity(runs.min(chunks.len()));
        for i in 0..runs {
            let at = stsc.body + 8 + 12 * i;
            table.push((self.u32(at)? as usize, self.u32(at + 4)? as usize));
        }
        let mut out = Vec::with_capacity(count);
        for (ci, &offset) in chunks.iter().enumerate() {
            let chunk = ci + 1;
            let per = table
                .iter()
                .rev()
                .find(|(first, _)| *first <= chunk)
                .map(|&(_, n)| n)
                .ok_or_else(|| self.bad("the 'stsc' table does not cover chunk 1"))?;
            let mut at = offset as usize;
            for _ in 0..per {
                let Some(&size) = sizes.get(out.len()) else {
                    break;
                };
                self.bytes(at, size)?;
                out.push((at, size));
                at += size;
            }
        }
        if out.len() != count {
            return Err(self.bad(format!(
                "the chunk tables place {} of {count} samples",
                out.len()
            )));
        }
        Ok(out)
    }

    /// Annex B of one sample's length-prefixed NAL units.
    fn annexb(
        &self,
        (at, size): (usize, usize),
        nal_length: usize,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let sample = self.bytes(at, size)?;
        let mut i = 0;
        while i < sample.len() {
            let head = sample
                .get(i..i + nal_length)
                .ok_or_else(|| self.bad("a NAL length field is truncated"))?;
            let n = head.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
            i += nal_length;
            let nal = sample
                .get(i..i + n)
                .ok_or_else(|| self.bad("a NAL unit overruns its sample"))?;
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
            i += n;
        }
        Ok(())
    }
}

/// BT.601 limited range → 8-bit RGB (the inverse of the writer's matrix).
fn yuv_to_rgb(yuv: &dyn YUVSource, out: &mut Vec<u8>) {
    let (w, h) = yuv.dimensions();
    let (sy, su, sv) = yuv.strides();
    for y in 0..h {
        for x in 0..w {
            let l = (f32::from(yuv.y()[y * sy + x]) - 16.0) * (255.0 / 219.0);
            let cb = (f32::from(yuv.u()[(y / 2) * su + x / 2]) - 128.0) * (255.0 / 224.0);
            let cr = (f32::from(yuv.v()[(y / 2) * sv + x / 2]) - 128.0) * (255.0 / 224.0);
            let r = l + 1.402 * cr;
            let g = l - (0.114 * 1.772 / 0.587) * cb - (0.299 * 1.402 / 0.587) * cr;
            let b = l + 1.772 * cb;
            out.extend([r, g, b].map(|c| c.round().clamp(0.0, 255.0) as u8));
        }
    }
}

/// Decodes the MP4 at `path` into RGB frames (`wan-run compare`).
pub fn read_mp4(path: &Path) -> Result<RgbFrames> {
    read_mp4_for(path, "compare", usize::MAX)
}

/// Decodes the MP4 at `path` into at most `max_frames` RGB frames; errors
/// name `flag`, the option that gave the file. A file with more frames is
/// refused before any is decoded.
pub fn read_mp4_for(path: &Path, flag: &str, max_frames: usize) -> Result<RgbFrames> {
    decode_mp4(&read_mp4_bytes(path, flag)?, path, flag, max_frames)
}

/// The bytes of the MP4 at `path` (at most [`MAX_MP4_BYTES`]; errors name
/// `flag`).
pub fn read_mp4_bytes(path: &Path, flag: &str) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > MAX_MP4_BYTES {
        return Err(Error::arg(
            flag,
            format!("{} is larger than {MAX_MP4_BYTES} bytes", path.display()),
        ));
    }
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Decodes the bytes of an MP4 file (`file`, for errors) into at most
/// `max_frames` RGB frames, as [`read_mp4_for`] does with a file's bytes.
pub fn decode_mp4(buf: &[u8], file: &Path, flag: &str, max_frames: usize) -> Result<RgbFrames> {
    let mut rgb = Vec::new();
    let (w, h, n) = decode_mp4_with(buf, file, flag, max_frames, |_, _, _, frame| {
        rgb.extend_from_slice(frame);
        Ok(())
    })?;
    RgbFrames::new(w, h, n, rgb)
}

/// Decodes the bytes of an MP4 file frame by frame: `sink(index, width,
/// height, rgb)` gets each decoded frame (8-bit RGB, row-major) in turn and
/// may refuse it, which stops the decode (a caller checks the size of the
/// first frame before any other is decoded). A track of more than
/// `max_frames` samples is refused before any is decoded. Returns the
/// frame size and count.
pub fn decode_mp4_with(
    buf: &[u8],
    file: &Path,
    flag: &str,
    max_frames: usize,
    mut sink: impl FnMut(usize, usize, usize, &[u8]) -> Result<()>,
) -> Result<(usize, usize, usize)> {
    let r = Reader { file, flag, buf };
    let track = r.track()?;
    if track.samples.len() > max_frames {
        return Err(r.bad(format!(
            "{} frames; at most {max_frames} are read",
            track.samples.len()
        )));
    }
    let fail = |e: openh264::Error| r.bad(format!("OpenH264: {e}"));
    let mut decoder =
        Decoder::with_api_config(OpenH264API::from_source(), DecoderConfig::new()).map_err(fail)?;
    let mut header = Vec::new();
    for nal in track.sps.iter().chain(&track.pps) {
        header.extend_from_slice(&[0, 0, 0, 1]);
        header.extend_from_slice(nal);
    }
    // One frame's RGB, reused.
    let mut rgb = Vec::new();
    let mut size: Option<(usize, usize)> = None;
    let mut frames = 0usize;
    let mut take = |yuv: &dyn YUVSource| -> Result<()> {
        let d = yuv.dimensions();
        if *size.get_or_insert(d) != d {
            return Err(r.bad("the frame size changes within the track"));
        }
        if frames == max_frames {
            return Err(r.bad(format!("more than {max_frames} frames decoded")));
        }
        rgb.clear();
        yuv_to_rgb(yuv, &mut rgb);
        sink(frames, d.0, d.1, &rgb)?;
        frames += 1;
        Ok(())
    };
    let mut packet = Vec::new();
    for (i, &s) in track.samples.iter().enumerate() {
        packet.clear();
        if i == 0 {
            packet.extend_from_slice(&header);
        }
        r.annexb(s, track.nal_length, &mut packet)?;
        if let Some(yuv) = decoder.decode(&packet).map_err(fail)? {
            take(&yuv)?;
        }
    }
    for yuv in decoder.flush_remaining().map_err(fail)? {
        take(&yuv)?;
    }
    let (w, h) = size.ok_or_else(|| r.bad("no frame decoded"))?;
    Ok((w, h, frames))
}

/// Reads a video to compare: an MP4 file, or a directory of PNG frames
/// (`frame_NNNNN.png`, as `wan-run --output DIR` writes them) in name order.
pub fn read_video(path: &Path) -> Result<RgbFrames> {
    if !path.is_dir() {
        return read_mp4(path);
    }
    let mut files: Vec<_> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")))
        .collect();
    files.sort();
    let mut data = Vec::new();
    let mut size = None;
    for f in &files {
        let img = crate::image::load_image(f)?;
        let d = (img.width() as usize, img.height() as usize);
        if *size.get_or_insert(d) != d {
            return Err(Error::arg(
                "compare",
                format!("{}: frames of different sizes", path.display()),
            ));
        }
        data.extend_from_slice(img.pixels());
    }
    let (w, h) = size
        .ok_or_else(|| Error::arg("compare", format!("{} holds no PNG frame", path.display())))?;
    RgbFrames::new(w, h, files.len(), data)
}

/// How close two videos are: PSNR over all 8-bit RGB samples, and per frame.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoPsnr {
    /// `10·log10(255² / MSE)` over every sample; `inf` for equal videos.
    pub psnr_db: f64,
    pub per_frame_db: Vec<f64>,
    pub max_abs: u8,
}

fn psnr_of(mse: f64) -> f64 {
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// PSNR of `a` against `b`; they must have the same size and frame count.
pub fn psnr(a: &RgbFrames, b: &RgbFrames) -> Result<VideoPsnr> {
    if (a.width(), a.height(), a.len()) != (b.width(), b.height(), b.len()) {
        return Err(Error::arg(
            "compare",
            format!(
                "the videos differ in size or length: {}x{}x{} vs {}x{}x{}",
                a.width(),
                a.height(),
                a.len(),
                b.width(),
                b.height(),
                b.len()
            ),
        ));
    }
    let mut total = 0f64;
    let mut max_abs = 0u8;
    let mut per_frame_db = Vec::with_capacity(a.len());
    for i in 0..a.len() {
        let (fa, fb) = (
            a.frame(i).expect("index below len"),
            b.frame(i).expect("same length"),
        );
        let sse: f64 = fa
            .iter()
            .zip(fb)
            .map(|(&x, &y)| {
                let d = x.abs_diff(y);
                max_abs = max_abs.max(d);
                f64::from(d) * f64::from(d)
            })
            .sum();
        total += sse;
        per_frame_db.push(psnr_of(sse / fa.len() as f64));
    }
    Ok(VideoPsnr {
        psnr_db: psnr_of(total / a.as_bytes().len().max(1) as f64),
        per_frame_db,
        max_abs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::mp4::{Mp4Options, write_mp4};
    use crate::video::tests::moving_pattern;

    #[test]
    fn written_videos_read_back_close_and_compare() {
        let dir = tempfile::tempdir().unwrap();
        let frames = moving_pattern(64, 48, 9);
        let path = dir.path().join("a.mp4");
        write_mp4(&path, &frames, &Mp4Options::default(), false, None).unwrap();
        let back = read_mp4(&path).unwrap();
        assert_eq!((back.width(), back.height(), back.len()), (64, 48, 9));
        let p = psnr(&back, &frames).unwrap();
        // QP 12 H.264 with 4:2:0 chroma of a synthetic pattern.
        assert!(p.psnr_db > 30.0, "{p:?}");
        assert_eq!(psnr(&back, &back).unwrap().psnr_db, f64::INFINITY);
        // Another video is further away than the encoding error.
        let other = moving_pattern(64, 48, 9);
        let mut shifted = other.as_bytes().to_vec();
        shifted.iter_mut().for_each(|v| *v = v.wrapping_add(40));
        let shifted = RgbFrames::new(64, 48, 9, shifted).unwrap();
        assert!(psnr(&back, &shifted).unwrap().psnr_db < p.psnr_db - 10.0);
        let short = RgbFrames::new(64, 48, 1, frames.frame(0).unwrap().to_vec()).unwrap();
        assert!(psnr(&back, &short).is_err());
    }

    #[test]
    fn truncated_and_foreign_files_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.mp4");
        write_mp4(
            &path,
            &moving_pattern(32, 32, 3),
            &Mp4Options::default(),
            false,
            None,
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
            let p = dir.path().join(format!("cut{cut}.mp4"));
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let e = read_mp4(&p).unwrap_err();
            assert_eq!(
                e.kind(),
                wanrt_runtime::ErrorKind::InvalidArgument,
                "cut {cut}: {e}"
            );
        }
    }
}
