//! PyTorch `.pth` checkpoints (`torch.save` zip archives), read without
//! executing anything.
//!
//! The original Wan2.1 release ships the text encoder, the VAE and CLIP as
//! `torch.save` state dicts (`WAN_SPEC.md` §7.1): a zip archive holding
//! `<prefix>/data.pkl` (the pickle) and one *stored* (uncompressed) entry
//! `<prefix>/data/<key>` per storage. [`PthCheckpoint::open`]
//!
//! 1. memory-maps the file (the 11.4 GB UMT5 file is never read into memory),
//! 2. reads the zip central directory and the local headers (zip64 too) to
//!    find where each entry's bytes are,
//! 3. parses `data.pkl` with the restricted unpickler of
//!    [`super::pickle`] (no code runs; only the globals and opcodes a state
//!    dict needs are accepted),
//! 4. checks every tensor against its storage entry (dtype, bounds).
//!
//! Only metadata is touched by `open`: the central directory, one local
//! header per entry and the pickle. Tensor bytes are read when a tensor is
//! asked for, straight from the map for contiguous tensors (the normal case),
//! copied into row-major order for strided views.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use wanrt_core::DType;
use wanrt_graphs::{SourceTensor, WeightSource};

use super::pickle::{self, PickleError, TensorRecord};

/// What kind of failure a [`PthError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PthErrorKind {
    /// The file cannot be opened or mapped.
    Io,
    /// The file is not a zip archive, or not a `torch.save` one.
    NotAZip,
    /// The archive ends before a structure it announces.
    Truncated,
    /// Inconsistent zip structures or a CRC mismatch.
    Corrupt,
    /// A valid archive using a feature this reader does not implement
    /// (compression, encryption, big-endian storages, …).
    Unsupported,
    /// The pickle uses an opcode outside the allowed set.
    UnsupportedOpcode,
    /// The pickle names a global outside the allowed set.
    ForbiddenGlobal,
    /// The pickle is not a well-formed state dict.
    BadPickle,
    /// A tensor's storage entry is missing from the archive.
    MissingStorage,
    /// A tensor's metadata does not fit its storage.
    BadTensor,
}

/// A failure to read a `.pth` checkpoint; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PthError {
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a torch.save zip archive: {reason}", file.display())]
    NotAZip { file: PathBuf, reason: String },
    #[error("{}: truncated: {reason}", file.display())]
    Truncated { file: PathBuf, reason: String },
    #[error("{}: corrupt zip archive: {reason}", file.display())]
    Corrupt { file: PathBuf, reason: String },
    #[error("{}: unsupported: {reason}", file.display())]
    Unsupported { file: PathBuf, reason: String },
    #[error("{}: {entry}: {source}", file.display())]
    UnsupportedOpcode {
        file: PathBuf,
        entry: String,
        #[source]
        source: PickleError,
    },
    #[error("{}: {entry}: {source}", file.display())]
    ForbiddenGlobal {
        file: PathBuf,
        entry: String,
        #[source]
        source: PickleError,
    },
    #[error("{}: {entry}: {source}", file.display())]
    BadPickle {
        file: PathBuf,
        entry: String,
        #[source]
        source: PickleError,
    },
    #[error("{}: tensor '{tensor}' uses storage '{key}', but the archive has no entry '{entry}'", file.display())]
    MissingStorage {
        file: PathBuf,
        tensor: String,
        key: String,
        entry: String,
    },
    #[error("{}: tensor '{tensor}': {reason}", file.display())]
    BadTensor {
        file: PathBuf,
        tensor: String,
        reason: String,
    },
}

impl PthError {
    pub fn kind(&self) -> PthErrorKind {
        match self {
            PthError::Io { .. } => PthErrorKind::Io,
            PthError::NotAZip { .. } => PthErrorKind::NotAZip,
            PthError::Truncated { .. } => PthErrorKind::Truncated,
            PthError::Corrupt { .. } => PthErrorKind::Corrupt,
            PthError::Unsupported { .. } => PthErrorKind::Unsupported,
            PthError::UnsupportedOpcode { .. } => PthErrorKind::UnsupportedOpcode,
            PthError::ForbiddenGlobal { .. } => PthErrorKind::ForbiddenGlobal,
            PthError::BadPickle { .. } => PthErrorKind::BadPickle,
            PthError::MissingStorage { .. } => PthErrorKind::MissingStorage,
            PthError::BadTensor { .. } => PthErrorKind::BadTensor,
        }
    }

    /// The checkpoint file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            PthError::Io { file, .. }
            | PthError::NotAZip { file, .. }
            | PthError::Truncated { file, .. }
            | PthError::Corrupt { file, .. }
            | PthError::Unsupported { file, .. }
            | PthError::UnsupportedOpcode { file, .. }
            | PthError::ForbiddenGlobal { file, .. }
            | PthError::BadPickle { file, .. }
            | PthError::MissingStorage { file, .. }
            | PthError::BadTensor { file, .. } => file,
        }
    }

    fn from_pickle(file: &Path, entry: &str, e: PickleError) -> Self {
        let (file, entry) = (file.to_path_buf(), entry.to_string());
        match e {
            PickleError::UnsupportedOpcode { .. } => PthError::UnsupportedOpcode {
                file,
                entry,
                source: e,
            },
            PickleError::ForbiddenGlobal { .. } => PthError::ForbiddenGlobal {
                file,
                entry,
                source: e,
            },
            PickleError::Malformed { .. } => PthError::BadPickle {
                file,
                entry,
                source: e,
            },
        }
    }
}

impl From<PthError> for wanrt_graphs::Error {
    fn from(e: PthError) -> Self {
        wanrt_graphs::Error::Source(Box::new(e), wanrt_graphs::ErrorKind::Source)
    }
}

pub type Result<T, E = PthError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------
// Zip (stored entries, zip64), central directory only.

/// A zip-level problem, before the file name is attached.
#[derive(Debug)]
enum ZipProblem {
    NotAZip(String),
    Truncated(String),
    Corrupt(String),
    Unsupported(String),
}

impl ZipProblem {
    fn with_file(self, file: &Path) -> PthError {
        let file = file.to_path_buf();
        match self {
            ZipProblem::NotAZip(reason) => PthError::NotAZip { file, reason },
            ZipProblem::Truncated(reason) => PthError::Truncated { file, reason },
            ZipProblem::Corrupt(reason) => PthError::Corrupt { file, reason },
            ZipProblem::Unsupported(reason) => PthError::Unsupported { file, reason },
        }
    }
}

/// One stored entry: its bytes are `data[start..start + size]`.
#[derive(Debug, Clone)]
struct ZipEntry {
    name: String,
    start: usize,
    size: usize,
    crc32: u32,
}

const SIG_LOCAL: u32 = 0x0403_4b50;
const SIG_CENTRAL: u32 = 0x0201_4b50;
const SIG_EOCD: u32 = 0x0605_4b50;
const SIG_EOCD64: u32 = 0x0606_4b50;
const SIG_EOCD64_LOCATOR: u32 = 0x0706_4b50;

fn rd_u16(d: &[u8], at: usize) -> Option<u16> {
    let b = d.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn rd_u32(d: &[u8], at: usize) -> Option<u32> {
    let b = d.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn rd_u64(d: &[u8], at: usize) -> Option<u64> {
    let b = d.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

fn to_usize(v: u64, what: &str) -> Result<usize, ZipProblem> {
    usize::try_from(v)
        .map_err(|_| ZipProblem::Unsupported(format!("{what} {v} exceeds the address space")))
}

fn parse_zip(d: &[u8]) -> Result<Vec<ZipEntry>, ZipProblem> {
    let len = d.len();
    let starts_zip =
        d.starts_with(&SIG_LOCAL.to_le_bytes()) || d.starts_with(&SIG_EOCD.to_le_bytes());
    if !starts_zip {
        return Err(ZipProblem::NotAZip(if d.is_empty() {
            "the file is empty".into()
        } else if d.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) {
            // PROTO 2, LONG1 of 10 bytes: torch's legacy magic number.
            "it starts with a bare pickle: the legacy (torch < 1.6) torch.save format is not supported; re-save it with a current torch".into()
        } else {
            format!(
                "no zip signature at the start (found {:02x?})",
                &d[..d.len().min(4)]
            )
        }));
    }
    // End of central directory: 22 bytes + a comment of at most 64 KiB.
    let lowest = len.saturating_sub(22 + 0xffff);
    let mut eocd = None;
    let mut at = len.checked_sub(22);
    while let Some(p) = at {
        if p < lowest {
            break;
        }
        if rd_u32(d, p) == Some(SIG_EOCD) {
            let comment = usize::from(rd_u16(d, p + 20).unwrap_or(0));
            if p + 22 + comment <= len {
                eocd = Some(p);
                break;
            }
        }
        at = p.checked_sub(1);
    }
    let Some(eocd) = eocd else {
        return Err(ZipProblem::Truncated(format!(
            "no end-of-central-directory record in the last {} bytes (the file, {len} bytes, was cut short?)",
            len - lowest
        )));
    };
    let field16 = |off: usize| rd_u16(d, eocd + off).unwrap_or(0);
    let field32 = |off: usize| rd_u32(d, eocd + off).unwrap_or(0);
    if field16(4) != 0 || field16(6) != 0 {
        return Err(ZipProblem::Unsupported("multi-disk zip archive".into()));
    }
    let mut count = u64::from(field16(10));
    let mut cd_size = u64::from(field32(12));
    let mut cd_off = u64::from(field32(16));
    if count == 0xffff || cd_size == 0xffff_ffff || cd_off == 0xffff_ffff {
        let loc = eocd
            .checked_sub(20)
            .filter(|&l| rd_u32(d, l) == Some(SIG_EOCD64_LOCATOR))
            .ok_or_else(|| {
                ZipProblem::Corrupt(
                    "zip64 sizes but no zip64 end-of-central-directory locator".into(),
                )
            })?;
        let z = rd_u64(d, loc + 8).unwrap_or(u64::MAX);
        let z = to_usize(z, "zip64 record offset")?;
        if z.checked_add(56).is_none_or(|e| e > loc) {
            return Err(ZipProblem::Corrupt(
                "zip64 end-of-central-directory record out of place".into(),
            ));
        }
        if rd_u32(d, z) != Some(SIG_EOCD64) {
            return Err(ZipProblem::Corrupt(
                "bad zip64 end-of-central-directory signature".into(),
            ));
        }
        count = rd_u64(d, z + 32).unwrap_or(0);
        cd_size = rd_u64(d, z + 40).unwrap_or(0);
        cd_off = rd_u64(d, z + 48).unwrap_or(0);
    }
    let cd_off = to_usize(cd_off, "central directory offset")?;
    let cd_size = to_usize(cd_size, "central directory size")?;
    let cd_end = cd_off
        .checked_add(cd_size)
        .ok_or_else(|| ZipProblem::Corrupt("central directory size overflows".into()))?;
    if cd_end > eocd {
        return Err(ZipProblem::Truncated(format!(
            "the central directory (bytes {cd_off}..{cd_end}) runs past its end record at byte {eocd}"
        )));
    }
    // Each central header takes at least 46 bytes: bound the count by the
    // directory size before trusting it for anything.
    if count > (cd_size / 46) as u64 {
        return Err(ZipProblem::Corrupt(format!(
            "{count} entries cannot fit a {cd_size}-byte central directory"
        )));
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut p = cd_off;
    for i in 0..count {
        let h = d
            .get(p..p.saturating_add(46))
            .filter(|h| h.len() == 46 && p + 46 <= cd_end)
            .ok_or_else(|| ZipProblem::Corrupt(format!("central header {i} is cut off")))?;
        if rd_u32(h, 0) != Some(SIG_CENTRAL) {
            return Err(ZipProblem::Corrupt(format!(
                "bad signature of central header {i}"
            )));
        }
        let h16 = |o: usize| rd_u16(h, o).unwrap_or(0);
        let h32 = |o: usize| rd_u32(h, o).unwrap_or(0);
        let (flags, method, crc32) = (h16(8), h16(10), h32(16));
        let mut csize = u64::from(h32(20));
        let mut usize_ = u64::from(h32(24));
        let (n, e, c) = (
            usize::from(h16(28)),
            usize::from(h16(30)),
            usize::from(h16(32)),
        );
        let mut lho = u64::from(h32(42));
        let var_end = p + 46 + n + e + c;
        if var_end > cd_end {
            return Err(ZipProblem::Corrupt(format!(
                "central header {i} runs past the directory"
            )));
        }
        let name_bytes = &d[p + 46..p + 46 + n];
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        // zip64 extended information: the 0xffffffff fields, in order.
        let mut extra = &d[p + 46 + n..p + 46 + n + e];
        while extra.len() >= 4 {
            let id = rd_u16(extra, 0).unwrap_or(0);
            let sz = usize::from(rd_u16(extra, 2).unwrap_or(0));
            let body = extra.get(4..4 + sz).ok_or_else(|| {
                ZipProblem::Corrupt(format!("extra field of '{name}' runs past its header"))
            })?;
            if id == 1 {
                let mut q = 0;
                let mut next = |v: &mut u64| -> Result<(), ZipProblem> {
                    if *v == 0xffff_ffff {
                        *v = rd_u64(body, q).ok_or_else(|| {
                            ZipProblem::Corrupt(format!("short zip64 field of '{name}'"))
                        })?;
                        q += 8;
                    }
                    Ok(())
                };
                next(&mut usize_)?;
                next(&mut csize)?;
                next(&mut lho)?;
            }
            extra = &extra[4 + sz..];
        }
        if flags & 1 != 0 {
            return Err(ZipProblem::Unsupported(format!(
                "entry '{name}' is encrypted"
            )));
        }
        if method != 0 {
            return Err(ZipProblem::Unsupported(format!(
                "entry '{name}' is compressed (method {method}); torch.save stores entries uncompressed"
            )));
        }
        if csize != usize_ {
            return Err(ZipProblem::Corrupt(format!(
                "stored entry '{name}' has compressed size {csize} != size {usize_}"
            )));
        }
        let lho = to_usize(lho, "local header offset")?;
        let size = to_usize(usize_, "entry size")?;
        if lho.checked_add(30).is_none_or(|x| x > len) {
            return Err(ZipProblem::Truncated(format!(
                "the local header of '{name}' at byte {lho} is past the end ({len} bytes)"
            )));
        }
        if rd_u32(d, lho) != Some(SIG_LOCAL) {
            return Err(ZipProblem::Corrupt(format!(
                "bad local header signature of '{name}' at byte {lho}"
            )));
        }
        let ln = usize::from(rd_u16(d, lho + 26).unwrap_or(0));
        let le = usize::from(rd_u16(d, lho + 28).unwrap_or(0));
        let start = lho + 30 + ln + le;
        let end = start
            .checked_add(size)
            .ok_or_else(|| ZipProblem::Corrupt(format!("size of '{name}' overflows")))?;
        if end > len {
            return Err(ZipProblem::Truncated(format!(
                "entry '{name}' needs bytes {start}..{end}, the file has {len}"
            )));
        }
        if end > cd_off && start < cd_end {
            return Err(ZipProblem::Corrupt(format!(
                "entry '{name}' overlaps the central directory"
            )));
        }
        entries.push(ZipEntry {
            name,
            start,
            size,
            crc32,
        });
        p = var_end;
    }
    Ok(entries)
}

/// CRC-32 (IEEE, as zip uses).
fn crc32(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    let mut c = !0u32;
    for &b in bytes {
        c = table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

// ---------------------------------------------------------------------------
// The checkpoint.

/// What the pickle says about one tensor, checked against the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// In elements.
    pub strides: Vec<usize>,
    /// The storage key; its bytes are the entry `<prefix>/data/<key>`.
    pub storage_key: String,
    /// In elements, from the start of the storage.
    pub storage_offset: usize,
    /// Byte offset of the storage's first element in the file.
    storage_start: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        // Checked at open not to overflow.
        self.shape.iter().product()
    }

    /// Bytes of the tensor in row-major order.
    pub fn nbytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }

    /// Row-major contiguous (strides of size-1 axes are ignored, as torch
    /// does).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1usize;
        for (&n, &s) in self.shape.iter().zip(&self.strides).rev() {
            if n == 0 {
                return true;
            }
            if n != 1 && s != expected {
                return false;
            }
            expected *= n;
        }
        true
    }
}

/// A memory-mapped `torch.save` state dict.
pub struct PthCheckpoint {
    path: PathBuf,
    mmap: Mmap,
    /// In file (pickle) order.
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    /// Every zip entry, for [`PthCheckpoint::verify_crc32`].
    entries: Vec<ZipEntry>,
}

impl std::fmt::Debug for PthCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PthCheckpoint")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Checks one pickle record against the archive.
fn check_record(file: &Path, name: &str, r: &TensorRecord, entry: &ZipEntry) -> Result<TensorInfo> {
    let bad = |reason: String| PthError::BadTensor {
        file: file.to_path_buf(),
        tensor: name.to_string(),
        reason,
    };
    let nonneg =
        |v: i64, what: &str| usize::try_from(v).map_err(|_| bad(format!("{what} {v} is negative")));
    let shape = r
        .shape
        .iter()
        .map(|&v| nonneg(v, "size"))
        .collect::<Result<Vec<_>>>()?;
    let strides = r
        .strides
        .iter()
        .map(|&v| nonneg(v, "stride"))
        .collect::<Result<Vec<_>>>()?;
    let offset = nonneg(r.storage_offset, "storage offset")?;
    let storage_numel = nonneg(r.storage_numel, "storage numel")?;
    let es = r.dtype.size();
    let storage_bytes = storage_numel
        .checked_mul(es)
        .ok_or_else(|| bad(format!("storage numel {storage_numel} overflows")))?;
    if storage_bytes != entry.size {
        return Err(bad(format!(
            "storage '{}' is {storage_numel} × {es} bytes ({}), but entry '{}' holds {} bytes",
            r.storage_key, r.dtype, entry.name, entry.size
        )));
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &n| a.checked_mul(n))
        .and_then(|n| n.checked_mul(es).map(|_| n))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    if offset > storage_numel {
        return Err(bad(format!(
            "storage offset {offset} is past the end of storage '{}' ({storage_numel} elements)",
            r.storage_key
        )));
    }
    if numel > 0 {
        // Last element addressed: offset + Σ (n_i − 1)·s_i.
        let last = shape
            .iter()
            .zip(&strides)
            .try_fold(offset, |a, (&n, &s)| a.checked_add((n - 1).checked_mul(s)?))
            .ok_or_else(|| bad("strides overflow".into()))?;
        if last >= storage_numel {
            return Err(bad(format!(
                "shape {shape:?} with strides {strides:?} at offset {offset} reaches element {last}, the storage '{}' has {storage_numel}",
                r.storage_key
            )));
        }
    }
    Ok(TensorInfo {
        name: name.to_string(),
        dtype: r.dtype,
        shape,
        strides,
        storage_key: r.storage_key.clone(),
        storage_offset: offset,
        storage_start: entry.start,
    })
}

/// Reads the zip directory and the pickle of the archive `data` (the bytes
/// of `path`) and checks every tensor against its storage entry.
fn index_archive(path: &Path, data: &[u8]) -> Result<(Vec<ZipEntry>, Vec<TensorInfo>)> {
    let entries = parse_zip(data).map_err(|p| p.with_file(path))?;

    let pkls: Vec<&ZipEntry> = entries
        .iter()
        .filter(|e| {
            e.name
                .strip_suffix("/data.pkl")
                .is_some_and(|prefix| !prefix.is_empty() && !prefix.contains('/'))
        })
        .collect();
    let pkl = match pkls.as_slice() {
        [one] => *one,
        [] => {
            return Err(PthError::NotAZip {
                file: path.to_path_buf(),
                reason: "a zip archive without a '<name>/data.pkl' entry".into(),
            });
        }
        _ => {
            return Err(PthError::Unsupported {
                file: path.to_path_buf(),
                reason: format!("{} 'data.pkl' entries in one archive", pkls.len()),
            });
        }
    };
    let prefix = &pkl.name[..pkl.name.len() - "data.pkl".len()];
    let by_name: HashMap<&str, &ZipEntry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    if let Some(bo) = by_name.get(format!("{prefix}byteorder").as_str()) {
        let v = &data[bo.start..bo.start + bo.size];
        if v != b"little" {
            return Err(PthError::Unsupported {
                file: path.to_path_buf(),
                reason: format!(
                    "byteorder '{}'; only little-endian checkpoints are supported",
                    String::from_utf8_lossy(v)
                ),
            });
        }
    }
    let records = pickle::load_state_dict(&data[pkl.start..pkl.start + pkl.size])
        .map_err(|e| PthError::from_pickle(path, &pkl.name, e))?;

    let mut tensors = Vec::with_capacity(records.len());
    let mut storage_dtype: HashMap<&str, DType> = HashMap::new();
    for (name, r) in &records {
        let entry_name = format!("{prefix}data/{}", r.storage_key);
        let entry = by_name
            .get(entry_name.as_str())
            .ok_or_else(|| PthError::MissingStorage {
                file: path.to_path_buf(),
                tensor: name.clone(),
                key: r.storage_key.clone(),
                entry: entry_name.clone(),
            })?;
        if let Some(&d) = storage_dtype.get(r.storage_key.as_str())
            && d != r.dtype
        {
            return Err(PthError::BadTensor {
                file: path.to_path_buf(),
                tensor: name.clone(),
                reason: format!(
                    "storage '{}' is read as {} here and as {d} by another tensor",
                    r.storage_key, r.dtype
                ),
            });
        }
        storage_dtype.insert(&r.storage_key, r.dtype);
        tensors.push(check_record(path, name, r, entry)?);
    }
    Ok((entries, tensors))
}

/// The row-major bytes of `t` in the archive bytes `data`: a borrowed slice
/// when `t` is contiguous, a copy otherwise. `t` comes from
/// [`index_archive`] over the same `data`, which checked that every element
/// it addresses lies inside its storage entry, inside `data`.
fn tensor_data<'d>(data: &'d [u8], t: &TensorInfo) -> Cow<'d, [u8]> {
    let storage = &data[t.storage_start..];
    if t.is_contiguous() {
        let start = t.storage_offset * t.dtype.size();
        Cow::Borrowed(&storage[start..start + t.nbytes()])
    } else {
        Cow::Owned(strided_copy(storage, t))
    }
}

impl PthCheckpoint {
    /// Maps and indexes `path`. Reads only metadata: the zip directory, the
    /// local headers and `data.pkl`, never tensor bytes.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| PthError::Io {
            file: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this value; a
        // checkpoint modified while it is read is outside what any loader can
        // guard against (the same contract as the safetensors reader).
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (entries, tensors) = index_archive(path, &mmap)?;
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(PthCheckpoint {
            path: path.to_path_buf(),
            mmap,
            tensors,
            index,
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names as stored in the file, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.tensors.iter().map(|t| t.name.as_str())
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Metadata of every tensor, in file order.
    pub fn infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// Bytes of all tensors (row-major).
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.nbytes() as u64).sum()
    }

    /// The tensor `name`: borrowed from the map when contiguous, copied into
    /// row-major order when it is a strided view. `None` if absent.
    pub fn get(&self, name: &str) -> Option<SourceTensor<'_>> {
        let t = self.info(name)?;
        let data = tensor_data(&self.mmap, t);
        Some(SourceTensor {
            dtype: t.dtype,
            shape: t.shape.clone(),
            data,
        })
    }

    /// Drops the resident pages of tensor `name` (see
    /// `checkpoint::release_pages`).
    pub fn release(&self, name: &str) {
        if let Some(t) = self.info(name) {
            let start = t.storage_start + t.storage_offset * t.dtype.size();
            super::release_pages(&self.mmap, start, t.nbytes());
        }
    }

    /// Checks every entry's CRC-32 against the zip directory. Reads the
    /// whole file (what `open` avoids); use it to vet a download.
    pub fn verify_crc32(&self) -> Result<()> {
        for e in &self.entries {
            let found = crc32(&self.mmap[e.start..e.start + e.size]);
            if found != e.crc32 {
                return Err(PthError::Corrupt {
                    file: self.path.clone(),
                    reason: format!(
                        "entry '{}' has CRC-32 {found:08x}, the directory says {:08x}",
                        e.name, e.crc32
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Gathers a strided view into row-major bytes. The caller has checked that
/// every addressed element lies in `storage`.
fn strided_copy(storage: &[u8], t: &TensorInfo) -> Vec<u8> {
    let es = t.dtype.size();
    let numel = t.numel();
    let mut out = Vec::with_capacity(numel * es);
    if numel == 0 {
        return out;
    }
    let rank = t.shape.len();
    let mut idx = vec![0usize; rank];
    let mut elem = t.storage_offset;
    loop {
        let b = elem * es;
        out.extend_from_slice(&storage[b..b + es]);
        // Advance the multi-index, last axis fastest.
        let mut axis = rank;
        loop {
            if axis == 0 {
                return out;
            }
            axis -= 1;
            idx[axis] += 1;
            elem += t.strides[axis];
            if idx[axis] < t.shape[axis] {
                break;
            }
            elem -= t.strides[axis] * t.shape[axis];
            idx[axis] = 0;
        }
    }
}

impl WeightSource for PthCheckpoint {
    fn tensor(&self, name: &str) -> wanrt_graphs::Result<Option<SourceTensor<'_>>> {
        Ok(self.get(name))
    }

    fn location(&self, _name: &str) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use half::bf16;
    use safetensors::SafeTensors;
    use wanrt_graphs::names::{self, Derivation};

    use super::super::pickle::build::P;
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
    }

    fn original(case: &str, file: &str) -> PathBuf {
        fixtures().join(case).join("model/original").join(file)
    }

    const T5: &str = "models_t5_umt5-xxl-enc-bf16.pth";
    const VAE: &str = "Wan2.1_VAE.pth";
    const CLIP: &str = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth";

    /// A zip of stored entries, optionally with zip64 records throughout
    /// (sizes and offsets in the zip64 extra field, zip64 end records).
    fn zip_stored(entries: &[(String, Vec<u8>)], zip64: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data) in entries {
            let off = out.len() as u64;
            let crc = crc32(data);
            let n = name.len() as u16;
            // local header
            out.extend(SIG_LOCAL.to_le_bytes());
            out.extend([45u8, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend(crc.to_le_bytes());
            out.extend((data.len() as u32).to_le_bytes());
            out.extend((data.len() as u32).to_le_bytes());
            out.extend(n.to_le_bytes());
            // an alignment pad in the extra field, as torch writes
            let pad = (64 - (out.len() + 2 + name.len() + 4) % 64) % 64;
            out.extend(((4 + pad) as u16).to_le_bytes());
            out.extend(name.as_bytes());
            out.extend([b'F', b'B']);
            out.extend((pad as u16).to_le_bytes());
            out.extend(std::iter::repeat_n(b'Z', pad));
            out.extend(data);
            // central header
            let (sz32, off32, extra) = if zip64 {
                let mut e = vec![1u8, 0, 24, 0];
                e.extend((data.len() as u64).to_le_bytes());
                e.extend((data.len() as u64).to_le_bytes());
                e.extend(off.to_le_bytes());
                (0xffff_ffffu32, 0xffff_ffffu32, e)
            } else {
                (data.len() as u32, off as u32, vec![])
            };
            central.extend(SIG_CENTRAL.to_le_bytes());
            central.extend([45u8, 3, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            central.extend(crc.to_le_bytes());
            central.extend(sz32.to_le_bytes());
            central.extend(sz32.to_le_bytes());
            central.extend(n.to_le_bytes());
            central.extend((extra.len() as u16).to_le_bytes());
            central.extend([0u8; 10]);
            central.extend(off32.to_le_bytes());
            central.extend(name.as_bytes());
            central.extend(extra);
        }
        let cd_off = out.len() as u64;
        let cd_size = central.len() as u64;
        out.extend(central);
        let count = entries.len() as u64;
        if zip64 {
            let z = out.len() as u64;
            out.extend(SIG_EOCD64.to_le_bytes());
            out.extend(44u64.to_le_bytes());
            out.extend([45u8, 3, 45, 0]);
            out.extend([0u8; 8]);
            out.extend(count.to_le_bytes());
            out.extend(count.to_le_bytes());
            out.extend(cd_size.to_le_bytes());
            out.extend(cd_off.to_le_bytes());
            out.extend(SIG_EOCD64_LOCATOR.to_le_bytes());
            out.extend(0u32.to_le_bytes());
            out.extend(z.to_le_bytes());
            out.extend(1u32.to_le_bytes());
        }
        out.extend(SIG_EOCD.to_le_bytes());
        out.extend([0u8; 4]);
        let (c16, s32, o32) = if zip64 {
            (0xffffu16, 0xffff_ffffu32, 0xffff_ffffu32)
        } else {
            (count as u16, cd_size as u32, cd_off as u32)
        };
        out.extend(c16.to_le_bytes());
        out.extend(c16.to_le_bytes());
        out.extend(s32.to_le_bytes());
        out.extend(o32.to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out
    }

    fn entries_of(path: &Path) -> Vec<(String, Vec<u8>)> {
        let d = std::fs::read(path).unwrap();
        parse_zip(&d)
            .unwrap()
            .into_iter()
            .map(|e| (e.name, d[e.start..e.start + e.size].to_vec()))
            .collect()
    }

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// A one-storage checkpoint: `pkl` over `archive/data/0` = `storage`.
    fn archive(pkl: Vec<u8>, storage: &[u8]) -> Vec<u8> {
        zip_stored(
            &[
                ("archive/data.pkl".into(), pkl),
                ("archive/byteorder".into(), b"little".to_vec()),
                ("archive/data/0".into(), storage.to_vec()),
            ],
            false,
        )
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Opens `path`, expecting an error of `kind` whose message names the
    /// file and contains every `needle`.
    fn expect_err(path: &Path, kind: PthErrorKind, needles: &[&str]) -> PthError {
        let e = PthCheckpoint::open(path).expect_err("opening must fail");
        assert_eq!(e.kind(), kind, "{e}");
        assert_eq!(e.file(), path);
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        for n in needles {
            assert!(msg.contains(n), "'{n}' not in: {msg}");
        }
        e
    }

    // -- fixtures against the diffusers-layout safetensors ------------------

    struct Diffusers {
        bytes: Vec<u8>,
    }

    impl Diffusers {
        fn load(case: &str, rel: &str) -> Self {
            Diffusers {
                bytes: std::fs::read(fixtures().join(case).join("model").join(rel)).unwrap(),
            }
        }
        fn st(&self) -> SafeTensors<'_> {
            SafeTensors::deserialize(&self.bytes).unwrap()
        }
    }

    fn f32s(d: &[u8]) -> Vec<f32> {
        d.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// `t` transformed as `how` says, as (shape, f32 values).
    fn derive(shape: &[usize], v: &[f32], how: Derivation) -> (Vec<usize>, Vec<f32>) {
        match how {
            Derivation::Same => (shape.to_vec(), v.to_vec()),
            Derivation::Reshape => {
                let first = shape.iter().position(|&n| n != 1).unwrap_or(shape.len());
                (shape[first..].to_vec(), v.to_vec())
            }
            Derivation::Transpose => {
                let (r, c) = (shape[0], shape[1]);
                let mut o = vec![0.0; v.len()];
                for i in 0..r {
                    for j in 0..c {
                        o[j * r + i] = v[i * c + j];
                    }
                }
                (vec![c, r], o)
            }
            Derivation::Rows { index, parts } => {
                let rows = shape[0] / parts;
                let row: usize = shape[1..].iter().product();
                let mut s = shape.to_vec();
                s[0] = rows;
                (s, v[index * rows * row..(index + 1) * rows * row].to_vec())
            }
        }
    }

    /// Every pth tensor equals its diffusers counterpart(s) bit for bit, and
    /// the mapping covers every diffusers tensor exactly once. Returns the
    /// pth names with no counterpart.
    fn compare(
        pth: &Path,
        diffusers: &Diffusers,
        map: impl Fn(&str) -> Option<Vec<(String, Derivation)>>,
        dtype: DType,
    ) -> Vec<String> {
        let ck = PthCheckpoint::open(pth).unwrap();
        let st = diffusers.st();
        let mut covered: BTreeMap<String, String> = BTreeMap::new();
        let mut unmapped = Vec::new();
        assert!(!ck.is_empty());
        for name in ck.names() {
            let t = ck.get(name).unwrap();
            assert_eq!(t.dtype, dtype, "{name}");
            assert_eq!(t.data.len(), t.numel() * dtype.size(), "{name}");
            // Contiguous tensors are borrowed from the map, not copied.
            assert!(matches!(t.data, Cow::Borrowed(_)), "{name} was copied");
            let Some(targets) = map(name) else {
                unmapped.push(name.to_string());
                continue;
            };
            let values = t.to_f32(name, "").unwrap();
            for (dname, how) in targets {
                let d = st
                    .tensor(&dname)
                    .unwrap_or_else(|e| panic!("{name} → {dname}: {e}"));
                assert_eq!(d.dtype(), safetensors::Dtype::F32, "{dname}");
                let (shape, v) = derive(&t.shape, &values, how);
                assert_eq!(shape, d.shape(), "{name} → {dname}");
                let dv = f32s(d.data());
                match dtype {
                    DType::Float32 => {
                        let a: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
                        let b: Vec<u32> = dv.iter().map(|x| x.to_bits()).collect();
                        assert!(a == b, "{name} → {dname}: values differ");
                    }
                    DType::Bfloat16 => {
                        let a: Vec<u16> = v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
                        let b: Vec<u16> = dv.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
                        assert!(
                            a == b,
                            "{name} → {dname}: values differ after bf16 rounding"
                        );
                    }
                    other => panic!("{other}"),
                }
                if let Some(prev) = covered.insert(dname.clone(), name.to_string()) {
                    panic!("{dname} is the image of both {prev} and {name}");
                }
            }
        }
        let all: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        let missing: Vec<&String> = all.iter().filter(|n| !covered.contains_key(*n)).collect();
        assert!(
            missing.is_empty(),
            "diffusers tensors not covered: {missing:?}"
        );
        assert_eq!(covered.len(), all.len());
        unmapped
    }

    fn renamed(
        f: fn(&str) -> Option<String>,
    ) -> impl Fn(&str) -> Option<Vec<(String, Derivation)>> {
        move |n| f(n).map(|d| vec![(d, Derivation::Same)])
    }

    #[test]
    fn t5_fixtures_equal_the_diffusers_text_encoder() {
        for case in ["t2v-tiny", "i2v-tiny"] {
            let d = Diffusers::load(case, "text_encoder/model.safetensors");
            let path = original(case, T5);
            let unmapped = compare(&path, &d, renamed(names::t5_to_diffusers), DType::Float32);
            assert!(unmapped.is_empty(), "{unmapped:?}");
            let ck = PthCheckpoint::open(&path).unwrap();
            assert_eq!(ck.len(), 22);
            for n in ck.names() {
                assert_eq!(
                    names::t5_from_diffusers(&names::t5_to_diffusers(n).unwrap()).as_deref(),
                    Some(n)
                );
            }
            ck.verify_crc32().unwrap();
        }
    }

    #[test]
    fn t5_bf16_fixture_equals_the_diffusers_text_encoder_rounded() {
        let path =
            fixtures().join("t2v-tiny/extra/models_t5_umt5-xxl-enc-bf16.as-released-dtype.pth");
        let d = Diffusers::load("t2v-tiny", "text_encoder/model.safetensors");
        let unmapped = compare(&path, &d, renamed(names::t5_to_diffusers), DType::Bfloat16);
        assert!(unmapped.is_empty(), "{unmapped:?}");
        let ck = PthCheckpoint::open(&path).unwrap();
        let info = ck.info("blocks.0.ffn.fc2.weight").unwrap();
        assert_eq!(
            (info.dtype, info.shape.as_slice()),
            (DType::Bfloat16, &[32usize, 64][..])
        );
        assert_eq!(
            ck.total_bytes(),
            ck.infos().iter().map(|t| t.numel() as u64 * 2).sum::<u64>()
        );
        ck.verify_crc32().unwrap();
    }

    #[test]
    fn vae_fixtures_equal_the_diffusers_vae() {
        for case in ["t2v-tiny", "i2v-tiny"] {
            let d = Diffusers::load(case, "vae/diffusion_pytorch_model.safetensors");
            let path = original(case, VAE);
            let unmapped = compare(&path, &d, renamed(names::vae_to_diffusers), DType::Float32);
            assert!(unmapped.is_empty(), "{unmapped:?}");
            let ck = PthCheckpoint::open(&path).unwrap();
            assert_eq!(ck.len(), 194);
            for n in ck.names() {
                assert_eq!(
                    names::vae_from_diffusers(&names::vae_to_diffusers(n).unwrap()).as_deref(),
                    Some(n)
                );
            }
            // RMS-norm gammas are [C,1,1,1] with torch's strides (1,1,1,1):
            // contiguous despite the odd strides of the size-1 axes.
            let g = ck.info("decoder.head.0.gamma").unwrap();
            assert_eq!(g.shape, [8, 1, 1, 1]);
            assert_eq!(g.strides, [1, 1, 1, 1]);
            assert!(g.is_contiguous());
        }
    }

    #[test]
    fn clip_fixture_equals_the_diffusers_image_encoder() {
        let d = Diffusers::load("i2v-tiny", "image_encoder/model.safetensors");
        let path = original("i2v-tiny", CLIP);
        let unmapped = compare(&path, &d, names::clip_to_diffusers, DType::Float32);
        assert_eq!(unmapped, ["log_scale"]);
        let ck = PthCheckpoint::open(&path).unwrap();
        assert_eq!(ck.get("log_scale").unwrap().shape, Vec::<usize>::new());
        assert_eq!(
            ck.info("visual.transformer.2.attn.to_qkv.weight")
                .unwrap()
                .shape,
            [96, 32]
        );
    }

    #[test]
    fn weight_source_serves_original_names() {
        let path = original("t2v-tiny", T5);
        let ck = PthCheckpoint::open(&path).unwrap();
        let src: &dyn WeightSource = &ck;
        let w = wanrt_graphs::Weights::new(src);
        let (name, t) = w
            .pp("blocks")
            .pp(1)
            .get("attn.q.weight", &[32, 32])
            .unwrap();
        assert_eq!(name, "blocks.1.attn.q.weight");
        assert_eq!(t.data.len(), 32 * 32 * 4);
        assert!(src.tensor("no.such.tensor").unwrap().is_none());
        assert_eq!(src.location("x"), path.display().to_string());
        let Err(e) = w.get("token_embedding.weight", &[1, 32]) else {
            panic!("a wrong shape must fail");
        };
        assert_eq!(e.kind(), wanrt_graphs::ErrorKind::ShapeMismatch);
    }

    // -- a zip64 archive, strided views, shared storages ---------------------

    #[test]
    fn zip64_archives_read_like_plain_ones() {
        let dir = tempfile::tempdir().unwrap();
        let src = original("t2v-tiny", T5);
        let entries = entries_of(&src);
        let p64 = write(&dir, "z64.pth", &zip_stored(&entries, true));
        let p32 = write(&dir, "z32.pth", &zip_stored(&entries, false));
        let (a, b, c) = (
            PthCheckpoint::open(&src).unwrap(),
            PthCheckpoint::open(&p64).unwrap(),
            PthCheckpoint::open(&p32).unwrap(),
        );
        b.verify_crc32().unwrap();
        for n in a.names() {
            let x = a.get(n).unwrap();
            for other in [&b, &c] {
                let y = other.get(n).unwrap();
                assert_eq!(
                    (x.shape.clone(), &*x.data),
                    (y.shape.clone(), &*y.data),
                    "{n}"
                );
            }
        }
    }

    #[test]
    fn strided_views_are_copied_into_row_major_order() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Vec<f32> = (0..12).map(|i| i as f32).collect();
        // t = storage[1:7].view(2,3).t()  → shape (3,2), strides (1,3), offset 1
        // u = storage[0:12].view(3,4)     → contiguous
        // s = storage[5]                  → a 0-d tensor at offset 5
        // e = empty (0,4)
        let pkl = P::start()
            .op(b'}')
            .op(b'(')
            .s("t")
            .view("FloatStorage", "0", 12, 1, &[3, 2], &[1, 3])
            .s("u")
            .view("FloatStorage", "0", 12, 0, &[3, 4], &[4, 1])
            .s("s")
            .view("FloatStorage", "0", 12, 5, &[], &[])
            .s("e")
            .view("FloatStorage", "0", 12, 12, &[0, 4], &[4, 1])
            .op(b'u')
            .op(b'.');
        let p = write(&dir, "v.pth", &archive(pkl.0, &f32_bytes(&storage)));
        let ck = PthCheckpoint::open(&p).unwrap();
        let t = ck.get("t").unwrap();
        assert!(matches!(t.data, Cow::Owned(_)));
        assert_eq!(t.shape, [3, 2]);
        assert_eq!(f32s(&t.data), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let u = ck.get("u").unwrap();
        assert!(matches!(u.data, Cow::Borrowed(_)));
        assert_eq!(f32s(&u.data), storage);
        let s = ck.get("s").unwrap();
        assert_eq!((s.shape.len(), f32s(&s.data)), (0, vec![5.0]));
        let e = ck.get("e").unwrap();
        assert_eq!((e.shape.as_slice(), e.data.len()), (&[0usize, 4][..], 0));
        assert_eq!(ck.names().collect::<Vec<_>>(), ["t", "u", "s", "e"]);
    }

    // -- bad input -----------------------------------------------------------

    #[test]
    fn forbidden_globals_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // Hand-built: os.system('echo pwned').
        let pkl = P::start()
            .global("os", "system")
            .s("echo pwned")
            .op(0x85)
            .op(b'R')
            .op(b'.');
        let p = write(&dir, "os.pth", &archive(pkl.0, &[]));
        let e = expect_err(
            &p,
            PthErrorKind::ForbiddenGlobal,
            &["os.system", "archive/data.pkl", "byte 2"],
        );
        assert!(matches!(e, PthError::ForbiddenGlobal { .. }));

        // A real fixture whose OrderedDict global was swapped for
        // builtins.eval (same length keeps nothing aligned on purpose: the
        // pickle has no offsets) and re-zipped.
        let mut entries = entries_of(&original("t2v-tiny", VAE));
        let pkl = &mut entries[0].1;
        let needle = b"collections\nOrderedDict\n";
        let at = pkl.windows(needle.len()).position(|w| w == needle).unwrap();
        pkl.splice(at..at + needle.len(), b"builtins\neval\n".iter().copied());
        let p = write(&dir, "eval.pth", &zip_stored(&entries, false));
        expect_err(&p, PthErrorKind::ForbiddenGlobal, &["builtins.eval"]);

        // The legacy v1 rebuild function is not on the list either.
        let mut entries = entries_of(&original("t2v-tiny", T5));
        let pkl = &mut entries[0].1;
        let needle = b"_rebuild_tensor_v2\n";
        let at = pkl.windows(needle.len()).position(|w| w == needle).unwrap();
        pkl.splice(at..at + needle.len(), b"_rebuild_tensor\n".iter().copied());
        let p = write(&dir, "v1.pth", &zip_stored(&entries, false));
        expect_err(
            &p,
            PthErrorKind::ForbiddenGlobal,
            &["torch._utils._rebuild_tensor`"],
        );
    }

    #[test]
    fn unknown_opcodes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut entries = entries_of(&original("t2v-tiny", T5));
        // Byte 2 is EMPTY_DICT; make it INST, then an undefined byte.
        assert_eq!(entries[0].1[2], b'}');
        entries[0].1[2] = b'i';
        let p = write(&dir, "inst.pth", &zip_stored(&entries, false));
        expect_err(
            &p,
            PthErrorKind::UnsupportedOpcode,
            &["INST", "0x69", "byte 2", "data.pkl"],
        );
        entries[0].1[2] = 0xf0;
        let p = write(&dir, "f0.pth", &zip_stored(&entries, false));
        expect_err(
            &p,
            PthErrorKind::UnsupportedOpcode,
            &["0xf0", "not a pickle opcode"],
        );
        let pkl = P::start().op(b'}').op(0x95);
        let p = write(&dir, "frame.pth", &archive(pkl.0, &[]));
        expect_err(&p, PthErrorKind::UnsupportedOpcode, &["FRAME"]);
    }

    #[test]
    fn truncated_archives_are_reported_as_truncated() {
        let dir = tempfile::tempdir().unwrap();
        for file in [T5, VAE] {
            let full = std::fs::read(original("t2v-tiny", file)).unwrap();
            let entries = parse_zip(&full).unwrap();
            let pkl_end = entries[0].start + entries[0].size;
            let last_data = entries.last().unwrap();
            let cuts = [
                4,
                30,
                entries[0].start + 10,
                pkl_end,
                entries[5].start + 3,
                last_data.start + last_data.size,
                full.len() - 100,
                full.len() - 23,
                full.len() - 1,
            ];
            for cut in cuts {
                let p = write(&dir, &format!("cut{cut}.pth"), &full[..cut]);
                expect_err(&p, PthErrorKind::Truncated, &["truncated"]);
            }
        }
        // A directory that is intact but points past the end of the file.
        let mut entries = entries_of(&original("t2v-tiny", T5));
        let last = entries.len() - 1;
        entries[last].1 = vec![0u8; 4096];
        let mut bytes = zip_stored(&entries, false);
        // Rewrite the last entry's size in its central header to 1 GB.
        let cd = parse_zip(&bytes).unwrap();
        let start = cd[last].start;
        let name = entries[last].0.clone();
        let pos = bytes
            .windows(4)
            .rposition(|w| w == SIG_CENTRAL.to_le_bytes())
            .unwrap();
        assert_eq!(&bytes[pos + 46..pos + 46 + name.len()], name.as_bytes());
        for off in [20, 24] {
            bytes[pos + off..pos + off + 4].copy_from_slice(&(1u32 << 30).to_le_bytes());
        }
        let p = write(&dir, "big.pth", &bytes);
        expect_err(&p, PthErrorKind::Truncated, &[&name, &format!("{start}..")]);
    }

    #[test]
    fn missing_storage_entries_name_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let src = original("t2v-tiny", T5);
        let mut entries = entries_of(&src);
        let gone = "models_t5_umt5-xxl-enc-bf16/data/3";
        entries.retain(|(n, _)| n != gone);
        let p = write(&dir, "missing.pth", &zip_stored(&entries, false));
        let e = expect_err(
            &p,
            PthErrorKind::MissingStorage,
            &[gone, "'blocks.0.pos_embedding.embedding.weight'"],
        );
        let PthError::MissingStorage { tensor, key, .. } = e else {
            unreachable!()
        };
        assert_eq!(
            (tensor.as_str(), key.as_str()),
            ("blocks.0.pos_embedding.embedding.weight", "3")
        );
    }

    #[test]
    fn files_that_are_not_torch_zips() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty.pth", vec![], "empty"),
            (
                "text.pth",
                b"hello, this is not a checkpoint\n".to_vec(),
                "no zip signature",
            ),
            (
                "st.pth",
                std::fs::read(fixtures().join("t2v-tiny/model/text_encoder/model.safetensors"))
                    .unwrap(),
                "no zip signature",
            ),
            (
                "legacy.pth",
                vec![0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc],
                "legacy",
            ),
            (
                "plainzip.pth",
                zip_stored(&[("readme.txt".into(), b"hi".to_vec())], false),
                "data.pkl",
            ),
        ];
        for (name, bytes, needle) in cases {
            let p = write(&dir, name, &bytes);
            expect_err(&p, PthErrorKind::NotAZip, &[needle]);
        }
        let e = PthCheckpoint::open(dir.path().join("absent.pth")).unwrap_err();
        assert_eq!(e.kind(), PthErrorKind::Io);
        assert!(e.to_string().contains("absent.pth"));
    }

    #[test]
    fn bad_tensors_and_unsupported_archives() {
        let dir = tempfile::tempdir().unwrap();
        let storage = f32_bytes(&[0.0; 6]);
        let one = |v: P| v.op(b'.').0;
        let cases: Vec<(P, &str)> = vec![
            (
                P::start()
                    .op(b'}')
                    .s("big")
                    .view("FloatStorage", "0", 6, 2, &[5], &[1])
                    .op(b's'),
                "reaches element 6",
            ),
            (
                P::start()
                    .op(b'}')
                    .s("empty")
                    .view("FloatStorage", "0", 6, 1 << 30, &[0], &[1])
                    .op(b's'),
                "storage offset 1073741824 is past the end",
            ),
            (
                P::start()
                    .op(b'}')
                    .s("neg")
                    .view("FloatStorage", "0", 6, 0, &[-2, 3], &[3, 1])
                    .op(b's'),
                "size -2 is negative",
            ),
            (
                P::start()
                    .op(b'}')
                    .s("numel")
                    .view("FloatStorage", "0", 7, 0, &[6], &[1])
                    .op(b's'),
                "holds 24 bytes",
            ),
            (
                P::start()
                    .op(b'}')
                    .op(b'(')
                    .s("a")
                    .view("FloatStorage", "0", 6, 0, &[6], &[1])
                    .s("b")
                    .view("HalfStorage", "0", 12, 0, &[12], &[1])
                    .op(b'u'),
                "read as",
            ),
        ];
        for (pkl, needle) in cases {
            let p = write(&dir, "bad.pth", &archive(one(pkl), &storage));
            expect_err(&p, PthErrorKind::BadTensor, &[needle]);
        }
        // A state dict whose value is not a tensor.
        let p = write(
            &dir,
            "notensor.pth",
            &archive(one(P::start().op(b'}').s("k").int(1).op(b's')), &[]),
        );
        expect_err(&p, PthErrorKind::BadPickle, &["'k' is a int"]);

        // Big-endian storages.
        let pkl = one(P::start().op(b'}'));
        let bytes = zip_stored(
            &[
                ("a/data.pkl".into(), pkl.clone()),
                ("a/byteorder".into(), b"big".to_vec()),
            ],
            false,
        );
        let p = write(&dir, "be.pth", &bytes);
        expect_err(&p, PthErrorKind::Unsupported, &["byteorder 'big'"]);

        // A compressed entry: flip the method to deflate in the directory.
        let mut bytes = zip_stored(&[("a/data.pkl".into(), pkl)], false);
        let pos = bytes
            .windows(4)
            .position(|w| w == SIG_CENTRAL.to_le_bytes())
            .unwrap();
        bytes[pos + 10] = 8;
        let p = write(&dir, "deflate.pth", &bytes);
        expect_err(&p, PthErrorKind::Unsupported, &["compressed (method 8)"]);

        // An empty state dict is valid.
        let p = write(
            &dir,
            "empty_sd.pth",
            &archive(one(P::start().op(b'}')), &[]),
        );
        assert!(PthCheckpoint::open(&p).unwrap().is_empty());
    }

    /// Single-byte changes (to 0xff, and of the low bit) of every byte of the
    /// pickle, the first local header and (T5) the zip directory, and cuts
    /// every 1009 bytes: an error or a valid
    /// index whose tensors all read back with their size, never a panic.
    #[test]
    fn mutated_archives_never_panic() {
        let path = Path::new("mutated.pth");
        for file in [original("t2v-tiny", T5), original("i2v-tiny", CLIP)] {
            let full = std::fs::read(&file).unwrap();
            let entries = parse_zip(&full).unwrap();
            let pkl = &entries[0];
            assert!(pkl.name.ends_with("/data.pkl"));
            let cd_start = full
                .windows(4)
                .position(|w| w == SIG_CENTRAL.to_le_bytes())
                .unwrap();
            // The directory once (the fixtures share its structure).
            let dir_end = if file.ends_with(T5) {
                full.len()
            } else {
                cd_start
            };
            let positions = (0..pkl.start + pkl.size).chain(cd_start..dir_end);
            let (mut ok, mut err) = (0, 0);
            let mut m = full.clone();
            for pos in positions {
                let orig = full[pos];
                for v in [0xff, orig ^ 0x01] {
                    if v == orig {
                        continue;
                    }
                    m[pos] = v;
                    match index_archive(path, &m) {
                        Ok((_, tensors)) => {
                            ok += 1;
                            for t in &tensors {
                                assert_eq!(tensor_data(&m, t).len(), t.nbytes(), "{}", t.name);
                            }
                        }
                        Err(e) => {
                            err += 1;
                            assert_eq!(e.file(), path);
                        }
                    }
                    m[pos] = orig;
                }
            }
            assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
            for cut in (4..full.len()).step_by(1009) {
                let e = index_archive(path, &full[..cut]).unwrap_err();
                assert_eq!(e.kind(), PthErrorKind::Truncated, "cut at {cut}: {e}");
            }
        }
    }

    #[test]
    fn corrupted_bytes_fail_the_crc_check() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = std::fs::read(original("t2v-tiny", T5)).unwrap();
        let entries = parse_zip(&bytes).unwrap();
        let last = entries.last().unwrap().clone();
        bytes[last.start + 1] ^= 0x40;
        let p = write(&dir, "flip.pth", &bytes);
        let ck = PthCheckpoint::open(&p).unwrap();
        let e = ck.verify_crc32().unwrap_err();
        assert_eq!(e.kind(), PthErrorKind::Corrupt);
        assert!(e.to_string().contains(&last.name), "{e}");
        assert!(e.to_string().contains("flip.pth"), "{e}");
    }

    #[test]
    fn errors_convert_into_graph_source_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "x.pth", b"nope");
        let e = PthCheckpoint::open(&p).unwrap_err();
        let msg = e.to_string();
        let g: wanrt_graphs::Error = e.into();
        assert_eq!(g.kind(), wanrt_graphs::ErrorKind::Source);
        assert_eq!(g.to_string(), msg);
    }

    // -- open reads metadata only --------------------------------------------

    #[cfg(target_os = "linux")]
    fn rss_bytes() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// A 1 GiB storage (a sparse file: nothing on disk) behind a small
    /// pickle. Opening and indexing it must leave the resident set nearly
    /// unchanged; touching the tensor's pages must grow it, which shows the
    /// measurement would catch an `open` that read the data.
    #[cfg(target_os = "linux")]
    #[test]
    fn open_reads_metadata_only() {
        use std::io::{Seek, SeekFrom, Write};
        const N: i32 = 1 << 28; // f32 elements: 1 GiB
        let dir = tempfile::tempdir().unwrap();
        let pkl = P::start()
            .op(b'}')
            .s("huge")
            .view(
                "FloatStorage",
                "0",
                N,
                0,
                &[1 << 14, 1 << 14],
                &[1 << 14, 1],
            )
            .op(b's')
            .op(b'.')
            .0;
        // Zip it with a placeholder storage, then grow that entry in place.
        let head = zip_stored(
            &[
                ("big/data.pkl".into(), pkl.clone()),
                ("big/data/0".into(), vec![]),
            ],
            true,
        );
        let entries = parse_zip(&head).unwrap();
        let data_start = entries[1].start;
        let size = (N as u64) * 4;
        // Rebuild: local headers as written, sparse data, then a fresh
        // directory describing the grown entry.
        let mut local = head[..data_start].to_vec();
        // Local header of the storage: sizes are informational for us, but
        // keep them consistent (zip64 would be needed past 4 GiB).
        let lho = local
            .windows(4)
            .rposition(|w| w == SIG_LOCAL.to_le_bytes())
            .unwrap();
        local[lho + 18..lho + 26].copy_from_slice(
            &[
                &(size as u32).to_le_bytes()[..],
                &(size as u32).to_le_bytes()[..],
            ]
            .concat(),
        );
        let path = dir.path().join("huge.pth");
        let mut f = File::create(&path).unwrap();
        f.write_all(&local).unwrap();
        f.seek(SeekFrom::Current(size as i64)).unwrap();
        let cd_off = data_start as u64 + size;
        let mut tail = Vec::new();
        let mut cd = Vec::new();
        for (i, (name, sz, crc)) in [
            ("big/data.pkl", pkl.len() as u64, crc32(&pkl)),
            ("big/data/0", size, 0),
        ]
        .into_iter()
        .enumerate()
        {
            let off = if i == 0 { 0u64 } else { lho as u64 };
            cd.extend(SIG_CENTRAL.to_le_bytes());
            cd.extend([45u8, 3, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            cd.extend(crc.to_le_bytes());
            cd.extend(0xffff_ffffu32.to_le_bytes());
            cd.extend(0xffff_ffffu32.to_le_bytes());
            cd.extend((name.len() as u16).to_le_bytes());
            cd.extend(28u16.to_le_bytes());
            cd.extend([0u8; 10]);
            cd.extend(0xffff_ffffu32.to_le_bytes());
            cd.extend(name.as_bytes());
            cd.extend([1u8, 0, 24, 0]);
            cd.extend(sz.to_le_bytes());
            cd.extend(sz.to_le_bytes());
            cd.extend(off.to_le_bytes());
        }
        let z = cd_off + cd.len() as u64;
        tail.extend(&cd);
        tail.extend(SIG_EOCD64.to_le_bytes());
        tail.extend(44u64.to_le_bytes());
        tail.extend([45u8, 3, 45, 0]);
        tail.extend([0u8; 8]);
        tail.extend(2u64.to_le_bytes());
        tail.extend(2u64.to_le_bytes());
        tail.extend((cd.len() as u64).to_le_bytes());
        tail.extend(cd_off.to_le_bytes());
        tail.extend(SIG_EOCD64_LOCATOR.to_le_bytes());
        tail.extend(0u32.to_le_bytes());
        tail.extend(z.to_le_bytes());
        tail.extend(1u32.to_le_bytes());
        tail.extend(SIG_EOCD.to_le_bytes());
        tail.extend([0u8; 4]);
        tail.extend(0xffffu16.to_le_bytes());
        tail.extend(0xffffu16.to_le_bytes());
        tail.extend(0xffff_ffffu32.to_le_bytes());
        tail.extend(0xffff_ffffu32.to_le_bytes());
        tail.extend(0u16.to_le_bytes());
        f.write_all(&tail).unwrap();
        drop(f);

        let before = rss_bytes();
        let ck = PthCheckpoint::open(&path).unwrap();
        let info = ck.info("huge").unwrap().clone();
        let t = ck.get("huge").unwrap();
        let after_open = rss_bytes();
        assert_eq!(info.shape, [1 << 14, 1 << 14]);
        assert_eq!(t.data.len() as u64, size);
        assert!(matches!(t.data, Cow::Borrowed(_)));
        let grown = after_open.saturating_sub(before);
        assert!(
            grown < 64 << 20,
            "open + get grew the resident set by {grown} bytes"
        );

        // Touch 256 MiB of it: the resident set must follow.
        let mut sum = 0u64;
        for b in t.data[..256 << 20].iter().step_by(4096) {
            sum += u64::from(*b);
        }
        assert_eq!(sum, 0);
        let touched = rss_bytes().saturating_sub(after_open);
        assert!(
            touched > 200 << 20,
            "touching 256 MiB grew the resident set by only {touched} bytes"
        );
    }
}
