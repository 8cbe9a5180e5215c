//! Memory-mapped safetensors files, single or sharded with an index.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, Metadata};
use wanrt_core::DType;
use wanrt_graphs::SourceTensor;

use crate::error::{Error, Result};

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    meta: Metadata,
}

/// One or more safetensors files seen as one name space.
pub struct SafetensorsSet {
    shards: Vec<Shard>,
    index: HashMap<String, usize>,
    dir: PathBuf,
}

fn dtype_of(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F32 => DType::Float32,
        Dtype::F16 => DType::Float16,
        Dtype::BF16 => DType::Bfloat16,
        Dtype::I64 => DType::Int64,
        Dtype::I32 => DType::Int32,
        Dtype::U8 => DType::Uint8,
        Dtype::BOOL => DType::Bool,
        _ => return None,
    })
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a checkpoint modified while we export
        // is outside what any loader can guard against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let corrupt = |reason: String| Error::Checkpoint {
            file: path.to_path_buf(),
            reason,
        };
        let (header_len, meta) = SafeTensors::read_metadata(&mmap[..]).map_err(|e| {
            corrupt(format!(
                "not a valid safetensors file (corrupt or truncated): {e}"
            ))
        })?;
        let data_start = 8 + header_len;
        // read_metadata checks the header; check that every tensor's bytes are
        // really in the file, so a truncated download fails here, by name.
        let available = mmap.len().saturating_sub(data_start);
        for (name, info) in meta.tensors() {
            let (s, e) = info.data_offsets;
            if e > available {
                return Err(corrupt(format!(
                    "tensor '{name}' ends at byte {} but the file has {} (truncated?)",
                    data_start + e,
                    mmap.len()
                )));
            }
            let numel: usize = info.shape.iter().product();
            if dtype_of(info.dtype).is_some_and(|d| numel * d.size() != e - s) {
                return Err(corrupt(format!(
                    "tensor '{name}': size does not match its shape"
                )));
            }
        }
        Ok(Shard {
            path: path.to_path_buf(),
            mmap,
            data_start,
            meta,
        })
    }
}

impl SafetensorsSet {
    /// Opens `<dir>/<stem>.safetensors`, or the shards listed in
    /// `<dir>/<stem>.safetensors.index.json`.
    pub fn open_stem(dir: &Path, stem: &str) -> Result<Self> {
        let index_path = dir.join(format!("{stem}.safetensors.index.json"));
        let single = dir.join(format!("{stem}.safetensors"));
        let files: Vec<PathBuf> = if index_path.is_file() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
                    file: index_path.clone(),
                    reason: format!("not valid JSON: {e}"),
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Checkpoint {
                    file: index_path.clone(),
                    reason: "no weight_map".into(),
                })?;
            let mut files: Vec<PathBuf> = Vec::new();
            for f in map.values() {
                let f = f.as_str().ok_or_else(|| Error::Checkpoint {
                    file: index_path.clone(),
                    reason: "weight_map values must be file names".into(),
                })?;
                if f.contains('/') || f.contains("..") {
                    return Err(Error::Checkpoint {
                        file: index_path.clone(),
                        reason: format!("shard name '{f}' leaves the directory"),
                    });
                }
                let p = dir.join(f);
                if !files.contains(&p) {
                    files.push(p);
                }
            }
            files.sort();
            files
        } else if single.is_file() {
            vec![single]
        } else {
            return Err(Error::MissingFile {
                file: single,
                reason: format!("neither it nor {} exists", index_path.display()),
            });
        };
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for f in &files {
            if !f.is_file() {
                return Err(Error::MissingFile {
                    file: f.clone(),
                    reason: format!("listed in {}", index_path.display()),
                });
            }
            let shard = Shard::open(f)?;
            for name in shard.meta.tensors().keys() {
                if index.insert(name.clone(), shards.len()).is_some() {
                    return Err(Error::Checkpoint {
                        file: f.clone(),
                        reason: format!("tensor '{name}' appears in two shards"),
                    });
                }
            }
            shards.push(shard);
        }
        Ok(SafetensorsSet {
            shards,
            index,
            dir: dir.to_path_buf(),
        })
    }

    /// Opens one safetensors file on its own (a LoRA, say).
    pub fn open_file(path: &Path) -> Result<Self> {
        let shard = Shard::open(path)?;
        let index = shard
            .meta
            .tensors()
            .keys()
            .map(|name| (name.clone(), 0))
            .collect();
        Ok(SafetensorsSet {
            shards: vec![shard],
            index,
            dir: wanrt_core::fsio::parent_dir(path),
        })
    }

    /// The header's `__metadata__` of the first file (string to string).
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.shards.first()?.meta.metadata().as_ref()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.index.get(name).map(|&i| self.shards[i].path.as_path())
    }

    pub fn describe(&self) -> String {
        match self.shards.as_slice() {
            [one] => one.path.display().to_string(),
            many => format!("{} ({} shards)", self.dir.display(), many.len()),
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| (s.mmap.len() - s.data_start) as u64)
            .sum()
    }

    /// Drops the resident pages of tensor `name` (see `release_pages`).
    pub fn release(&self, name: &str) {
        let Some(&i) = self.index.get(name) else {
            return;
        };
        let shard = &self.shards[i];
        if let Some(info) = shard.meta.info(name) {
            let (s, e) = info.data_offsets;
            super::release_pages(&shard.mmap, shard.data_start + s, e - s);
        }
    }

    /// The tensor, borrowed from the map.
    pub fn tensor(&self, name: &str) -> Option<SourceTensor<'_>> {
        let shard = &self.shards[*self.index.get(name)?];
        let info = shard.meta.info(name)?;
        let (s, e) = info.data_offsets;
        let data = &shard.mmap[shard.data_start + s..shard.data_start + e];
        Some(SourceTensor {
            // Unknown dtypes surface as Uint8 and are refused by the accessor
            // with the tensor's name.
            dtype: dtype_of(info.dtype).unwrap_or(DType::Uint8),
            shape: info.shape.clone(),
            data: std::borrow::Cow::Borrowed(data),
        })
    }
}
