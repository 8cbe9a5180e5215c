//! Small tensor files in the safetensors format: the I/O of `wan-run
//! component`, `--latents-in` and `--save-latents`.
//!
//! The runtime keeps its own reader/writer instead of a checkpoint loader:
//! the format is an 8-byte little-endian header length, a JSON header
//! `{name: {dtype, shape, data_offsets}}` and the packed data. Files written
//! here load in the `safetensors` Python package and vice versa.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use half::{bf16, f16};
use serde_json::{Map, Value as Json};
use wanrt_core::DType;

use crate::error::{Error, Result};

/// A tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub dtype: DType,
    pub shape: Vec<u64>,
    /// Little-endian element bytes, row-major.
    pub data: Vec<u8>,
}

impl HostTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product::<u64>() as usize
    }

    pub fn from_f32(shape: Vec<u64>, values: &[f32]) -> Self {
        debug_assert_eq!(shape.iter().product::<u64>() as usize, values.len());
        HostTensor {
            dtype: DType::Float32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn from_i64(shape: Vec<u64>, values: &[i64]) -> Self {
        debug_assert_eq!(shape.iter().product::<u64>() as usize, values.len());
        HostTensor {
            dtype: DType::Int64,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// Values as f32 (float types only).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        let d = &self.data;
        Some(match self.dtype {
            DType::Float32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::Float16 => d
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::Bfloat16 => d
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => return None,
        })
    }

    /// Values as i64 (int64 only).
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        (self.dtype == DType::Int64).then(|| {
            self.data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        })
    }

    /// Rows `start..end` of the first axis.
    pub fn slice_batch(&self, start: u64, end: u64) -> HostTensor {
        let row = self.data.len() / self.shape[0].max(1) as usize;
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        HostTensor {
            dtype: self.dtype,
            shape,
            data: self.data[start as usize * row..end as usize * row].to_vec(),
        }
    }

    /// Concatenation along the first axis.
    pub fn concat_batch(parts: &[HostTensor]) -> Option<HostTensor> {
        let first = parts.first()?;
        let mut shape = first.shape.clone();
        shape[0] = parts.iter().map(|p| p.shape[0]).sum();
        let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
        for p in parts {
            if p.dtype != first.dtype || p.shape[1..] != first.shape[1..] {
                return None;
            }
            data.extend_from_slice(&p.data);
        }
        Some(HostTensor {
            dtype: first.dtype,
            shape,
            data,
        })
    }
}

/// Reads every tensor of a safetensors file.
pub fn read(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes).map_err(|reason| Error::TensorFile {
        file: path.to_path_buf(),
        reason,
    })
}

fn parse(bytes: &[u8]) -> std::result::Result<BTreeMap<String, HostTensor>, String> {
    if bytes.len() < 8 {
        return Err("too short for a safetensors header (truncated?)".into());
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let header_end = 8u64
        .checked_add(n)
        .filter(|&e| e <= bytes.len() as u64)
        .ok_or_else(|| format!("header length {n} runs past the end of the file (truncated?)"))?
        as usize;
    let header: Map<String, Json> = serde_json::from_slice(&bytes[8..header_end])
        .map_err(|e| format!("header is not valid JSON: {e}"))?;
    let data = &bytes[header_end..];
    let mut out = BTreeMap::new();
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| format!("tensor '{name}': {what}");
        let tag = info["dtype"].as_str().ok_or_else(|| bad("no dtype"))?;
        let dtype = DType::from_safetensors_tag(tag)
            .ok_or_else(|| bad(&format!("unsupported dtype {tag}")))?;
        let shape: Vec<u64> = info["shape"]
            .as_array()
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .ok_or_else(|| bad("shape is not a list of sizes"))
            })
            .collect::<std::result::Result<_, _>>()?;
        let offs = info["data_offsets"]
            .as_array()
            .ok_or_else(|| bad("no data_offsets"))?;
        let (s, e) = match (
            offs.first().and_then(Json::as_u64),
            offs.get(1).and_then(Json::as_u64),
        ) {
            (Some(s), Some(e)) if s <= e => (s as usize, e as usize),
            _ => return Err(bad("bad data_offsets")),
        };
        if e > data.len() {
            return Err(bad("data runs past the end of the file (truncated?)"));
        }
        let numel: u64 = shape.iter().product();
        if (e - s) as u64 != numel * dtype.size() as u64 {
            return Err(bad(&format!(
                "{} bytes for {numel} elements of {dtype}",
                e - s
            )));
        }
        out.insert(
            name,
            HostTensor {
                dtype,
                shape,
                data: data[s..e].to_vec(),
            },
        );
    }
    Ok(out)
}

/// Serialises tensors in the safetensors format (names sorted).
pub fn serialize(tensors: &BTreeMap<String, HostTensor>) -> Vec<u8> {
    let mut header = Map::new();
    let mut offset = 0usize;
    for (name, t) in tensors {
        let mut info = Map::new();
        info.insert("dtype".into(), t.dtype.safetensors_tag().into());
        info.insert("shape".into(), t.shape.clone().into());
        info.insert(
            "data_offsets".into(),
            vec![offset, offset + t.data.len()].into(),
        );
        offset += t.data.len();
        header.insert(name.clone(), Json::Object(info));
    }
    let mut h = Json::Object(header).to_string().into_bytes();
    // Pad the header with spaces so the data starts 8-byte aligned.
    while !(8 + h.len()).is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + offset);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for t in tensors.values() {
        out.extend_from_slice(&t.data);
    }
    out
}

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory, synced, then renamed. An existing file is refused unless
/// `overwrite`.
pub fn write_atomic(path: &Path, bytes: &[u8], overwrite: bool) -> Result<()> {
    if path.exists() && !overwrite {
        return Err(Error::OutputExists {
            file: path.to_path_buf(),
        });
    }
    let tmp = wanrt_core::fsio::temp_sibling(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Writes tensors to a safetensors file atomically.
pub fn write(path: &Path, tensors: &BTreeMap<String, HostTensor>, overwrite: bool) -> Result<()> {
    write_atomic(path, &serialize(tensors), overwrite)
}

/// Writes one `[1, C, T, H, W]` tensor chunk by chunk along T, at its final
/// offsets, so a long decode never holds the whole video in memory. The file
/// is built under a temporary name and renamed by [`TimeStreamWriter::finish`];
/// dropping the writer unfinished removes it.
pub struct TimeStreamWriter {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    file: std::fs::File,
    data_start: u64,
    shape: Vec<u64>,
    written_t: u64,
    done: bool,
}

impl TimeStreamWriter {
    pub fn create(path: &Path, name: &str, shape: Vec<u64>, overwrite: bool) -> Result<Self> {
        if path.exists() && !overwrite {
            return Err(Error::OutputExists {
                file: path.to_path_buf(),
            });
        }
        if shape.len() != 5 || shape[0] != 1 {
            return Err(Error::arg(
                "--output",
                format!("{name}: streaming needs [1, C, T, H, W], got {shape:?}"),
            ));
        }
        let numel: u64 = shape.iter().product();
        let mut header = Map::new();
        let mut info = Map::new();
        info.insert("dtype".into(), "F32".into());
        info.insert("shape".into(), shape.clone().into());
        info.insert("data_offsets".into(), vec![0, numel * 4].into());
        header.insert(name.to_string(), Json::Object(info));
        let mut h = Json::Object(header).to_string().into_bytes();
        while !(8 + h.len()).is_multiple_of(8) {
            h.push(b' ');
        }
        let tmp = wanrt_core::fsio::temp_sibling(path);
        let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(path, e))?;
        let data_start = 8 + h.len() as u64;
        file.write_all(&(h.len() as u64).to_le_bytes())
            .and_then(|_| file.write_all(&h))
            .and_then(|_| file.set_len(data_start + numel * 4))
            .map_err(|e| Error::io(&tmp, e))?;
        Ok(TimeStreamWriter {
            path: path.to_path_buf(),
            tmp,
            file,
            data_start,
            shape,
            written_t: 0,
            done: false,
        })
    }

    /// Appends the frames of `chunk` (`[1, C, t, H, W]`, float32).
    pub fn append(&mut self, chunk: &HostTensor) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let (c, t_total) = (self.shape[1], self.shape[2]);
        let plane = self.shape[3] * self.shape[4] * 4;
        let t = chunk.shape[2];
        if chunk.dtype != DType::Float32
            || chunk.shape[1] != c
            || chunk.shape[3..] != self.shape[3..]
            || self.written_t + t > t_total
        {
            return Err(Error::arg(
                "--output",
                format!("chunk {:?} does not fit {:?}", chunk.shape, self.shape),
            ));
        }
        for ch in 0..c {
            let src = &chunk.data[(ch * t * plane) as usize..((ch + 1) * t * plane) as usize];
            let off = self.data_start + (ch * t_total + self.written_t) * plane;
            self.file
                .write_all_at(src, off)
                .map_err(|e| Error::io(&self.tmp, e))?;
        }
        self.written_t += t;
        Ok(())
    }

    /// Syncs and renames into place; every frame must have been written.
    pub fn finish(mut self) -> Result<()> {
        if self.written_t != self.shape[2] {
            return Err(Error::arg(
                "--output",
                format!("{} of {} frames written", self.written_t, self.shape[2]),
            ));
        }
        self.file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for TimeStreamWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let mut m = BTreeMap::new();
        m.insert(
            "a".to_string(),
            HostTensor::from_f32(vec![2, 3], &[1., 2., 3., 4., 5., 6.]),
        );
        m.insert(
            "ids".to_string(),
            HostTensor::from_i64(vec![3], &[7, -1, 0]),
        );
        write(&p, &m, false).unwrap();
        assert_eq!(read(&p).unwrap(), m);
        // No overwrite without being asked.
        let e = write(&p, &m, false).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::OutputExists);
        write(&p, &m, true).unwrap();
    }

    #[test]
    fn truncated_file_is_refused() {
        let mut m = BTreeMap::new();
        m.insert(
            "a".to_string(),
            HostTensor::from_f32(vec![4], &[1., 2., 3., 4.]),
        );
        let bytes = serialize(&m);
        for cut in [0, 5, 12, bytes.len() - 1] {
            assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn batch_slicing() {
        let t = HostTensor::from_f32(vec![3, 2], &[0., 1., 2., 3., 4., 5.]);
        let parts: Vec<_> = (0..3).map(|i| t.slice_batch(i, i + 1)).collect();
        assert_eq!(parts[1].to_f32().unwrap(), vec![2., 3.]);
        assert_eq!(HostTensor::concat_batch(&parts).unwrap(), t);
    }
}
