//! Small tensor files in the safetensors format: the I/O of `wan-run
//! component`, `--latents-in` and `--save-latents`.
//!
//! The runtime links no checkpoint loader: headers are read and written by
//! the strict, dependency-free [`wanrt_core::safetensors`] (shared with the
//! compiler), and the data is read here into host memory. Files written
//! here load in the `safetensors` Python package and vice versa.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use half::{bf16, f16};
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

/// Largest tensor file the runtime reads (16 GiB): far above any input of
/// `wan-run component`, and a bound on what a wrong path can make it load.
pub const MAX_TENSOR_FILE: u64 = 16 << 30;

/// Reads every tensor of a safetensors file (at most [`MAX_TENSOR_FILE`]
/// bytes), validated by the strict shared reader ([`wanrt_core::safetensors`]).
pub fn read(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    read_capped(path, MAX_TENSOR_FILE)
}

/// [`read`] with another size limit. The header is read and validated
/// before any tensor data, and only a regular file is opened.
pub fn read_capped(path: &Path, cap: u64) -> Result<BTreeMap<String, HostTensor>> {
    use std::io::Read;
    let bad = |reason: String| Error::TensorFile {
        file: path.to_path_buf(),
        reason,
    };
    let mut f = wanrt_core::fsio::open_regular(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > cap {
        return Err(bad(format!("{len} bytes exceed the {cap}-byte limit")));
    }
    let header = match wanrt_core::safetensors::read_header(&mut f, len) {
        Ok(h) => h,
        Err(wanrt_core::safetensors::ReadError::Io(e)) => return Err(Error::io(path, e)),
        Err(wanrt_core::safetensors::ReadError::Header(e)) => return Err(bad(e.0)),
    };
    let mut out = BTreeMap::new();
    for t in header.tensors {
        let mut data = vec![0u8; t.nbytes() as usize];
        f.read_exact(&mut data).map_err(|e| Error::io(path, e))?;
        out.insert(t.name.clone(), host_tensor(t, data).map_err(bad)?);
    }
    Ok(out)
}

fn host_tensor(
    t: wanrt_core::safetensors::TensorEntry,
    data: Vec<u8>,
) -> std::result::Result<HostTensor, String> {
    let dtype = t
        .dtype
        .ok_or_else(|| format!("tensor '{}': dtype {} is not supported here", t.name, t.tag))?;
    Ok(HostTensor {
        dtype,
        shape: t.shape,
        data,
    })
}

/// Parses a whole safetensors file held in memory (the strict shared
/// reader; the fuzz harness drives this entry point).
pub fn parse(bytes: &[u8]) -> std::result::Result<BTreeMap<String, HostTensor>, String> {
    let header = wanrt_core::safetensors::parse(bytes).map_err(|e| e.0)?;
    let base = header.data_start() as usize;
    let mut out = BTreeMap::new();
    for t in header.tensors {
        // parse() checked that every range lies inside `bytes`.
        let data = bytes[base + t.start as usize..base + t.end as usize].to_vec();
        out.insert(t.name.clone(), host_tensor(t, data)?);
    }
    Ok(out)
}

/// Serialises tensors in the safetensors format (names sorted).
pub fn serialize(tensors: &BTreeMap<String, HostTensor>) -> Vec<u8> {
    let entries: Vec<_> = tensors
        .iter()
        .map(|(name, t)| wanrt_core::safetensors::NewTensor {
            name,
            dtype: t.dtype,
            shape: &t.shape,
        })
        .collect();
    let (mut out, len) = wanrt_core::safetensors::encode_header(&entries);
    out.reserve(len as usize);
    for t in tensors.values() {
        out.extend_from_slice(&t.data);
    }
    out
}

/// Applies the output rule of [`wanrt_core::fsio::check_output`] to `path`:
/// an existing regular file only with `overwrite`, never anything else.
pub fn check_output(path: &Path, overwrite: bool) -> Result<()> {
    match wanrt_core::fsio::check_output(path, overwrite) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::OutputExists {
            file: path.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Err(Error::OutputRefused {
            file: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory, synced, then renamed. An existing file is refused unless
/// `overwrite`.
pub fn write_atomic(path: &Path, bytes: &[u8], overwrite: bool) -> Result<()> {
    check_output(path, overwrite)?;
    let tmp = wanrt_core::fsio::temp_sibling(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        // Checked again just before the rename: the path may have changed
        // while the file was written.
        check_output(path, overwrite).map_err(std::io::Error::other)?;
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
    overwrite: bool,
    done: bool,
    /// Byte buffer of [`Self::append_view`], reused from chunk to chunk.
    scratch: Vec<u8>,
}

impl TimeStreamWriter {
    pub fn create(path: &Path, name: &str, shape: Vec<u64>, overwrite: bool) -> Result<Self> {
        check_output(path, overwrite)?;
        if shape.len() != 5 || shape[0] != 1 {
            return Err(Error::arg(
                "--output",
                format!("{name}: streaming needs [1, C, T, H, W], got {shape:?}"),
            ));
        }
        let (h, data_len) =
            wanrt_core::safetensors::encode_header(&[wanrt_core::safetensors::NewTensor {
                name,
                dtype: DType::Float32,
                shape: &shape,
            }]);
        let tmp = wanrt_core::fsio::temp_sibling(path);
        let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(path, e))?;
        let data_start = h.len() as u64;
        file.write_all(&h)
            .and_then(|_| file.set_len(data_start + data_len))
            .map_err(|e| Error::io(&tmp, e))?;
        Ok(TimeStreamWriter {
            path: path.to_path_buf(),
            tmp,
            file,
            data_start,
            shape,
            written_t: 0,
            overwrite,
            done: false,
            scratch: Vec::new(),
        })
    }

    /// Appends the frames of `chunk` (`[1, C, t, H, W]`, float32).
    pub fn append(&mut self, chunk: &HostTensor) -> Result<()> {
        if chunk.dtype != DType::Float32 {
            return Err(Error::arg(
                "--output",
                format!("chunk of dtype {} is not float32", chunk.dtype),
            ));
        }
        self.append_bytes(&chunk.shape, &chunk.data)
    }

    /// Appends a float32 chunk the loop still holds (no host copy of it).
    pub fn append_view(&mut self, chunk: crate::chunked::ChunkView<'_>) -> Result<()> {
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.clear();
        bytes.extend(chunk.data.iter().flat_map(|v| v.to_le_bytes()));
        let r = self.append_bytes(chunk.shape, &bytes);
        self.scratch = bytes;
        r
    }

    fn append_bytes(&mut self, shape: &[u64], data: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let (c, t_total) = (self.shape[1], self.shape[2]);
        let plane = self.shape[3] * self.shape[4] * 4;
        let t = shape[2];
        if shape.len() != 5
            || shape[1] != c
            || shape[3..] != self.shape[3..]
            || self.written_t + t > t_total
        {
            return Err(Error::arg(
                "--output",
                format!("chunk {shape:?} does not fit {:?}", self.shape),
            ));
        }
        for ch in 0..c {
            let src = &data[(ch * t * plane) as usize..((ch + 1) * t * plane) as usize];
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
        check_output(&self.path, self.overwrite)?;
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
