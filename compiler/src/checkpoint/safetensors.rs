//! Memory-mapped safetensors files, single or sharded with an index.
//!
//! Every file is validated by the strict shared reader
//! [`wanrt_core::safetensors`] (the same one the runtime uses): header cap,
//! overflow-checked sizes, tensors tiling the data section exactly.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use wanrt_core::DType;
use wanrt_core::safetensors::{Header, TensorEntry};
use wanrt_graphs::SourceTensor;

use crate::error::{Error, Result};

/// Largest `*.safetensors.index.json` read (a real one is ~100 KiB).
pub const MAX_INDEX_BYTES: u64 = 64 << 20;

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    header: Header,
    by_name: HashMap<String, usize>,
}

/// One or more safetensors files seen as one name space.
pub struct SafetensorsSet {
    shards: Vec<Shard>,
    index: HashMap<String, usize>,
    dir: PathBuf,
}

/// Validates a whole safetensors file held in memory exactly as
/// [`SafetensorsSet`] validates a mapped one (the fuzz harness and the
/// shared corpus test drive this).
pub fn validate_bytes(bytes: &[u8]) -> std::result::Result<Header, String> {
    wanrt_core::safetensors::parse(bytes).map_err(|e| e.0)
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let file = wanrt_core::fsio::open_regular(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a checkpoint modified while we export
        // is outside what any loader can guard against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = validate_bytes(&mmap).map_err(|reason| Error::Checkpoint {
            file: path.to_path_buf(),
            reason: format!("not a valid safetensors file (corrupt or truncated): {reason}"),
        })?;
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Shard {
            path: path.to_path_buf(),
            mmap,
            header,
            by_name,
        })
    }

    fn info(&self, name: &str) -> Option<&TensorEntry> {
        self.by_name.get(name).map(|&i| &self.header.tensors[i])
    }

    /// Byte range of `t` in the map (validated to lie inside it).
    fn range(&self, t: &TensorEntry) -> (usize, usize) {
        let base = self.header.data_start() as usize;
        (base + t.start as usize, base + t.end as usize)
    }
}

/// The shard file names of an index's `weight_map`, deduplicated in linear
/// time and sorted; a name with a path separator or `..` is refused.
pub fn shard_names(index_json: &str) -> std::result::Result<Vec<String>, String> {
    let v: serde_json::Value =
        serde_json::from_str(index_json).map_err(|e| format!("not valid JSON: {e}"))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("no weight_map object")?;
    let mut seen = HashSet::new();
    for f in map.values() {
        let f = f.as_str().ok_or("weight_map values must be file names")?;
        if f.is_empty() || f.contains('/') || f.contains('\\') || f == "." || f.contains("..") {
            return Err(format!("shard name '{f}' leaves the directory"));
        }
        seen.insert(f);
    }
    let mut files: Vec<String> = seen.into_iter().map(str::to_string).collect();
    files.sort();
    Ok(files)
}

impl SafetensorsSet {
    /// Opens `<dir>/<stem>.safetensors`, or the shards listed in
    /// `<dir>/<stem>.safetensors.index.json`.
    pub fn open_stem(dir: &Path, stem: &str) -> Result<Self> {
        let index_path = dir.join(format!("{stem}.safetensors.index.json"));
        let single = dir.join(format!("{stem}.safetensors"));
        let files: Vec<PathBuf> = if index_path.is_file() {
            let text = wanrt_core::fsio::read_capped_string(&index_path, MAX_INDEX_BYTES)
                .map_err(|e| Error::io(&index_path, e))?;
            shard_names(&text)
                .map_err(|reason| Error::Checkpoint {
                    file: index_path.clone(),
                    reason,
                })?
                .into_iter()
                .map(|f| dir.join(f))
                .collect()
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
            for name in shard.by_name.keys() {
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
        let index = shard.by_name.keys().map(|name| (name.clone(), 0)).collect();
        Ok(SafetensorsSet {
            shards: vec![shard],
            index,
            dir: wanrt_core::fsio::parent_dir(path),
        })
    }

    /// The header's `__metadata__` of the first file (string to string).
    pub fn metadata(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        self.shards.first().map(|s| &s.header.metadata)
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
        self.shards.iter().map(|s| s.header.data_len()).sum()
    }

    /// Drops the resident pages of tensor `name` (see `release_pages`).
    pub fn release(&self, name: &str) {
        let Some(&i) = self.index.get(name) else {
            return;
        };
        let shard = &self.shards[i];
        if let Some(info) = shard.info(name) {
            let (s, e) = shard.range(info);
            super::release_pages(&shard.mmap, s, e - s);
        }
    }

    /// The tensor, borrowed from the map.
    pub fn tensor(&self, name: &str) -> Option<SourceTensor<'_>> {
        let shard = &self.shards[*self.index.get(name)?];
        let info = shard.info(name)?;
        let (s, e) = shard.range(info);
        Some(SourceTensor {
            // Dtypes wanrt has no type for surface as Uint8 and are refused
            // by the accessor with the tensor's name.
            dtype: info.dtype.unwrap_or(DType::Uint8),
            shape: info.shape.iter().map(|&d| d as usize).collect(),
            data: std::borrow::Cow::Borrowed(&shard.mmap[s..e]),
        })
    }
}
