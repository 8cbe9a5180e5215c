//! PyTorch `.pth` checkpoints (`torch.save` zip archives), read without
//! executing anything.
//!
//! The original Wan2.1 release ships the text encoder, the VAE and CLIP as
//! `torch.save` state dicts (`docs/WAN.md` §8.1): a zip archive holding
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
    /// Offset of its local header.
    header: usize,
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
            header: lho,
            start,
            size,
            crc32,
        });
        p = var_end;
    }
    // No entry may alias another's bytes (local headers included): sorted by
    // position, each must end before the next one's local header starts.
    let mut spans: Vec<(usize, usize, &str)> = Vec::with_capacity(entries.len());
    for e in &entries {
        spans.push((e.header, e.start + e.size, e.name.as_str()));
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(ZipProblem::Corrupt(format!(
                "entries '{}' and '{}' overlap (aliased data)",
                w[0].2, w[1].2
            )));
        }
    }
    let mut names = std::collections::HashSet::with_capacity(entries.len());
    if let Some(dup) = entries.iter().find(|e| !names.insert(e.name.as_str())) {
        return Err(ZipProblem::Corrupt(format!(
            "entry '{}' appears twice",
            dup.name
        )));
    }
    Ok(entries)
}

/// CRC-32 (IEEE, as zip uses), eight bytes per step ("slicing by 8"):
/// every storage read is checked, so this runs over whole checkpoints.
pub fn crc32(bytes: &[u8]) -> u32 {
    static TABLES: std::sync::OnceLock<[[u32; 256]; 8]> = std::sync::OnceLock::new();
    let t = TABLES.get_or_init(|| {
        let mut t = [[0u32; 256]; 8];
        for (i, slot) in t[0].iter_mut().enumerate() {
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
        for i in 0..256 {
            for k in 1..8 {
                let prev = t[k - 1][i];
                t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            }
        }
        t
    });
    let mut c = !0u32;
    let mut chunks = bytes.chunks_exact(8);
    for b in &mut chunks {
        let lo = c ^ u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let hi = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        c = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        c = t[0][((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Checks `bytes` (entry `e`'s data) against the CRC-32 of its header.
fn check_crc(file: &Path, e: &ZipEntry, bytes: &[u8]) -> Result<()> {
    let found = crc32(bytes);
    if found != e.crc32 {
        return Err(PthError::Corrupt {
            file: file.to_path_buf(),
            reason: format!(
                "entry '{}' has CRC-32 {found:08x}, the directory says {:08x} (damaged file)",
                e.name, e.crc32
            ),
        });
    }
    Ok(())
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
    /// Index of the storage's zip entry (for its CRC-32).
    entry: usize,
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
    /// Entries whose CRC-32 was checked (each storage once, at first use).
    verified: std::cell::RefCell<Vec<bool>>,
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
        entry: 0,
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
    let by_name: HashMap<&str, (usize, &ZipEntry)> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name.as_str(), (i, e)))
        .collect();
    if let Some((_, bo)) = by_name.get(format!("{prefix}byteorder").as_str()) {
        let v = &data[bo.start..bo.start + bo.size];
        check_crc(path, bo, v)?;
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
    let pkl_bytes = &data[pkl.start..pkl.start + pkl.size];
    check_crc(path, pkl, pkl_bytes)?;
    let records = pickle::load_state_dict(pkl_bytes)
        .map_err(|e| PthError::from_pickle(path, &pkl.name, e))?;

    let mut tensors = Vec::with_capacity(records.len());
    let mut storage_dtype: HashMap<&str, DType> = HashMap::new();
    for (name, r) in &records {
        let entry_name = format!("{prefix}data/{}", r.storage_key);
        let &(entry_index, entry) =
            by_name
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
        let mut info = check_record(path, name, r, entry)?;
        info.entry = entry_index;
        tensors.push(info);
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
        let file = wanrt_core::fsio::open_regular(path).map_err(io)?;
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
            verified: std::cell::RefCell::new(vec![false; entries.len()]),
            entries,
        })
    }

    /// Indexes an archive held in memory exactly as [`PthCheckpoint::open`]
    /// does (zip directory, CRC-32 of `data.pkl`, the restricted unpickler,
    /// every record against its storage) and returns the tensor count: the
    /// entry point of the fuzz harness.
    pub fn index_bytes(data: &[u8]) -> Result<usize> {
        index_archive(Path::new("<memory>"), data).map(|(_, t)| t.len())
    }

    /// The tensor `name` after checking its storage entry's CRC-32 (once
    /// per storage, at first use: a damaged download fails by name instead
    /// of compiling garbage). This is what the compiler reads through.
    pub fn tensor(&self, name: &str) -> Result<Option<SourceTensor<'_>>> {
        let Some(t) = self.info(name) else {
            return Ok(None);
        };
        let done = self
            .verified
            .borrow()
            .get(t.entry)
            .copied()
            .unwrap_or(false);
        if !done {
            let e = &self.entries[t.entry];
            check_crc(&self.path, e, &self.mmap[e.start..e.start + e.size])?;
            self.verified.borrow_mut()[t.entry] = true;
        }
        Ok(self.get(name))
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
    /// row-major order when it is a strided view. `None` if absent. Does not
    /// check the CRC-32 ([`PthCheckpoint::tensor`] does).
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
            check_crc(&self.path, e, &self.mmap[e.start..e.start + e.size])?;
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
mod tests;
