//! The one strict reader (and header writer) of the safetensors format,
//! shared by the compiler's memory-mapped checkpoint loader and the
//! runtime's small tensor files. It has no dependency beyond `serde_json`,
//! so the runtime can use it without linking a checkpoint loader.
//!
//! A file is an 8-byte little-endian header length `N`, `N` bytes of JSON
//! header `{name: {dtype, shape, data_offsets: [start, end]}, "__metadata__":
//! {str: str}}` (space-padded), then the data section. The reader accepts a
//! file only when:
//!
//! * `N` is at most [`MAX_HEADER_BYTES`] and the header fits in the file;
//! * the header is one JSON object, without duplicate keys, whose entries
//!   have exactly the keys `dtype`, `shape`, `data_offsets`;
//! * every dtype is a known safetensors tag, every element count is computed
//!   without overflow and matches `end - start` bytes;
//! * the tensors, sorted by offset, tile the data section exactly: no
//!   overlap, no gap, no trailing byte, nothing past the end;
//! * `__metadata__`, if present, maps strings to strings.
//!
//! This is at least as strict as the reference `safetensors` library (which
//! also refuses overlaps, gaps and trailing bytes); the shared corpus in
//! `tests/hostile_inputs.rs` checks both loaders against it.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value as Json;

use crate::dtype::DType;

/// Largest header accepted: 100 MiB (the reference library's limit). A
/// real 14B checkpoint's header is a few hundred KiB.
pub const MAX_HEADER_BYTES: u64 = 100 << 20;

/// Most dimensions a tensor may have.
pub const MAX_RANK: usize = 32;

/// Why a safetensors file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HeaderError(pub String);

fn err<T>(reason: impl Into<String>) -> Result<T, HeaderError> {
    Err(HeaderError(reason.into()))
}

/// Size in bytes of one element of a safetensors dtype tag.
pub fn tag_size(tag: &str) -> Option<u64> {
    Some(match tag {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" | "C64" => 8,
        _ => return None,
    })
}

/// One tensor of a validated header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    /// The safetensors dtype tag (`F32`, `BF16`, ...).
    pub tag: String,
    /// The wanrt dtype, when wanrt has one for the tag.
    pub dtype: Option<DType>,
    pub shape: Vec<u64>,
    /// Byte range inside the data section.
    pub start: u64,
    pub end: u64,
}

impl TensorEntry {
    pub fn numel(&self) -> u64 {
        // Checked at validation: the product fits.
        self.shape.iter().product()
    }

    pub fn nbytes(&self) -> u64 {
        self.end - self.start
    }
}

/// A validated header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `N`, the JSON header's length.
    pub header_len: u64,
    /// Sorted by data offset.
    pub tensors: Vec<TensorEntry>,
    pub metadata: BTreeMap<String, String>,
}

impl Header {
    /// Where the data section starts in the file.
    pub fn data_start(&self) -> u64 {
        8 + self.header_len
    }

    /// Length of the data section (every tensor's bytes, nothing else).
    pub fn data_len(&self) -> u64 {
        self.tensors.last().map_or(0, |t| t.end)
    }

    /// The whole file's length.
    pub fn file_len(&self) -> u64 {
        self.data_start() + self.data_len()
    }
}

/// The JSON object's entries in file order, duplicates kept (so they can be
/// refused: `serde_json::Map` would silently keep the last one).
struct Entries(Vec<(String, Json)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = m.next_entry::<String, Json>()? {
                    v.push(e);
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads `N` from the first 8 bytes, refusing more than [`MAX_HEADER_BYTES`].
pub fn header_len(prefix: &[u8]) -> Result<u64, HeaderError> {
    let Some(b) = prefix.get(..8) else {
        return err(format!(
            "{} bytes: too short for a safetensors header length (truncated?)",
            prefix.len()
        ));
    };
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    let n = u64::from_le_bytes(a);
    if n > MAX_HEADER_BYTES {
        return err(format!(
            "header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit (not a safetensors file?)"
        ));
    }
    if n < 2 {
        return err(format!("header length {n} cannot hold a JSON object"));
    }
    Ok(n)
}

/// Validates the JSON header `json` (the `N` bytes after the length) of a
/// file of `file_len` bytes.
pub fn parse_header(json: &[u8], file_len: u64) -> Result<Header, HeaderError> {
    let header_len = json.len() as u64;
    let data_start = 8 + header_len;
    let Some(data_len) = file_len.checked_sub(data_start) else {
        return err(format!(
            "header length {header_len} runs past the end of the file ({file_len} bytes; truncated?)"
        ));
    };
    if json.first() != Some(&b'{') {
        return err("the header does not start with a JSON object '{'");
    }
    let text =
        std::str::from_utf8(json).map_err(|e| HeaderError(format!("header is not UTF-8: {e}")))?;
    let Entries(entries) = serde_json::from_str(text)
        .map_err(|e| HeaderError(format!("header is not valid JSON: {e}")))?;
    let mut seen = HashSet::with_capacity(entries.len());
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, info) in entries {
        if !seen.insert(name.clone()) {
            return err(format!("'{name}' appears twice in the header"));
        }
        if name == "__metadata__" {
            let Json::Object(m) = info else {
                return err("__metadata__ is not an object");
            };
            for (k, v) in m {
                let Json::String(v) = v else {
                    return err(format!("__metadata__ '{k}' is not a string"));
                };
                metadata.insert(k, v);
            }
            continue;
        }
        tensors.push(tensor_entry(name, info)?);
    }
    tensors.sort_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
    let mut expected = 0u64;
    for t in &tensors {
        if t.end > data_len {
            return err(format!(
                "tensor '{}': data ends at byte {} of the data section, which has {data_len} (truncated?)",
                t.name, t.end
            ));
        }
        if t.start < expected {
            return err(format!(
                "tensor '{}' (bytes {}..{}) overlaps the tensor before it (which ends at {expected})",
                t.name, t.start, t.end
            ));
        }
        if t.start > expected {
            return err(format!(
                "gap of {} bytes before tensor '{}' (bytes {expected}..{} are no tensor's)",
                t.start - expected,
                t.name,
                t.start
            ));
        }
        expected = t.end;
    }
    if expected != data_len {
        return err(format!(
            "{} trailing bytes after the last tensor (the data section has {data_len}, the tensors cover {expected})",
            data_len - expected
        ));
    }
    Ok(Header {
        header_len,
        tensors,
        metadata,
    })
}

fn tensor_entry(name: String, info: Json) -> Result<TensorEntry, HeaderError> {
    let bad = |what: String| HeaderError(format!("tensor '{name}': {what}"));
    let Json::Object(info) = info else {
        return Err(bad("is not an object".into()));
    };
    if let Some(k) = info
        .keys()
        .find(|k| !matches!(k.as_str(), "dtype" | "shape" | "data_offsets"))
    {
        return Err(bad(format!("unknown field '{k}'")));
    }
    let tag = info
        .get("dtype")
        .and_then(Json::as_str)
        .ok_or_else(|| bad("no dtype".into()))?
        .to_string();
    let size = tag_size(&tag).ok_or_else(|| bad(format!("unknown dtype '{tag}'")))?;
    let dims = info
        .get("shape")
        .and_then(Json::as_array)
        .ok_or_else(|| bad("no shape".into()))?;
    if dims.len() > MAX_RANK {
        return Err(bad(format!(
            "{} dimensions (at most {MAX_RANK})",
            dims.len()
        )));
    }
    let shape = dims
        .iter()
        .map(|d| {
            d.as_u64()
                .ok_or_else(|| bad(format!("shape entry {d} is not a size")))
        })
        .collect::<Result<Vec<u64>, _>>()?;
    let offs = info
        .get("data_offsets")
        .and_then(Json::as_array)
        .ok_or_else(|| bad("no data_offsets".into()))?;
    let (start, end) = match offs.as_slice() {
        [s, e] => match (s.as_u64(), e.as_u64()) {
            (Some(s), Some(e)) if s <= e => (s, e),
            _ => return Err(bad(format!("data_offsets {offs:?} are not [start, end]"))),
        },
        _ => return Err(bad("data_offsets must be [start, end]".into())),
    };
    let nbytes = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_mul(size))
        .ok_or_else(|| bad(format!("shape {shape:?} of {tag} overflows 64 bits")))?;
    if end - start != nbytes {
        return Err(bad(format!(
            "{} bytes for shape {shape:?} of {tag}, which needs {nbytes}",
            end - start
        )));
    }
    Ok(TensorEntry {
        dtype: DType::from_safetensors_tag(&tag),
        name,
        tag,
        shape,
        start,
        end,
    })
}

/// Validates a whole file held in memory (or memory-mapped).
pub fn parse(bytes: &[u8]) -> Result<Header, HeaderError> {
    let n = header_len(bytes)?;
    let end = 8 + n as usize;
    let Some(json) = bytes.get(8..end) else {
        return err(format!(
            "header length {n} runs past the end of the file ({} bytes; truncated?)",
            bytes.len()
        ));
    };
    parse_header(json, bytes.len() as u64)
}

/// Why reading a header from a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Header(#[from] HeaderError),
}

/// Reads and validates the header at the start of `r`, a file of
/// `file_len` bytes; never reads more than 8 + [`MAX_HEADER_BYTES`] bytes.
pub fn read_header(r: &mut impl Read, file_len: u64) -> Result<Header, ReadError> {
    let mut prefix = [0u8; 8];
    if file_len < 8 {
        return Err(HeaderError(format!(
            "{file_len} bytes: too short for a safetensors header length (truncated?)"
        ))
        .into());
    }
    r.read_exact(&mut prefix)?;
    let n = header_len(&prefix)?;
    if 8 + n > file_len {
        return Err(HeaderError(format!(
            "header length {n} runs past the end of the file ({file_len} bytes; truncated?)"
        ))
        .into());
    }
    let mut json = vec![0u8; n as usize];
    r.read_exact(&mut json)?;
    Ok(parse_header(&json, file_len)?)
}

/// One tensor to describe in a header being written.
pub struct NewTensor<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [u64],
}

/// The 8-byte length and the JSON header of a file holding `tensors` in
/// this order, packed; the header is space-padded so the data section
/// starts 8-byte aligned. Returns the header bytes and the data length.
pub fn encode_header(tensors: &[NewTensor<'_>]) -> (Vec<u8>, u64) {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for t in tensors {
        let nbytes = t.shape.iter().product::<u64>() * t.dtype.size() as u64;
        let mut info = serde_json::Map::new();
        info.insert("dtype".into(), t.dtype.safetensors_tag().into());
        info.insert("shape".into(), t.shape.to_vec().into());
        info.insert("data_offsets".into(), vec![offset, offset + nbytes].into());
        offset += nbytes;
        header.insert(t.name.to_string(), Json::Object(info));
    }
    let mut h = Json::Object(header).to_string().into_bytes();
    while !(8 + h.len()).is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    (out, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file with `header` as its JSON and `data` bytes after it.
    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.resize(v.len() + data, 0);
        v
    }

    #[test]
    fn a_written_header_reads_back() {
        let (h, n) = encode_header(&[
            NewTensor {
                name: "b",
                dtype: DType::Float32,
                shape: &[2, 3],
            },
            NewTensor {
                name: "a",
                dtype: DType::Int64,
                shape: &[1],
            },
        ]);
        assert_eq!(h.len() % 8, 0);
        let mut bytes = h.clone();
        bytes.resize(h.len() + n as usize, 0);
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.data_start() as usize, h.len());
        assert_eq!(parsed.file_len() as usize, bytes.len());
        let names: Vec<_> = parsed.tensors.iter().map(|t| t.name.as_str()).collect();
        // Sorted by offset, which follows the order given to the writer.
        assert_eq!(names, ["b", "a"]);
        let mut slow = std::io::Cursor::new(&bytes);
        assert_eq!(read_header(&mut slow, bytes.len() as u64).unwrap(), parsed);
    }

    #[test]
    fn every_lenient_case_is_refused() {
        let t = |s: &str, e: &str| format!(r#""dtype":"F32","shape":[{s}],"data_offsets":[{e}]"#);
        let cases: Vec<(String, usize, &str)> = vec![
            // Element count wrapping around 64 bits (4.6e18 × 4 bytes).
            (
                format!("{{\"a\":{{{}}}}}", t("4611686018427387904", "0,0")),
                0,
                "overflows",
            ),
            (
                format!("{{\"a\":{{{}}}}}", t("1152921504606846977,16", "0,64")),
                64,
                "overflows",
            ),
            // Overlap, gap, trailing bytes, past the end.
            (
                format!(
                    "{{\"a\":{{{}}},\"b\":{{{}}}}}",
                    t("2", "0,8"),
                    t("2", "4,12")
                ),
                12,
                "overlaps",
            ),
            (
                format!(
                    "{{\"a\":{{{}}},\"b\":{{{}}}}}",
                    t("2", "0,8"),
                    t("2", "12,20")
                ),
                20,
                "gap",
            ),
            (format!("{{\"a\":{{{}}}}}", t("2", "0,8")), 9, "trailing"),
            (format!("{{\"a\":{{{}}}}}", t("2", "0,8")), 7, "truncated"),
            (format!("{{\"a\":{{{}}}}}", t("3", "0,8")), 8, "needs 12"),
            (
                format!(
                    "{{\"a\":{{{}}},\"a\":{{{}}}}}",
                    t("1", "0,4"),
                    t("1", "4,8")
                ),
                8,
                "twice",
            ),
            (
                format!("{{\"a\":{{{},\"x\":1}}}}", t("1", "0,4")),
                4,
                "unknown field",
            ),
            (
                r#"{"a":{"dtype":"Q7","shape":[],"data_offsets":[0,1]}}"#.into(),
                1,
                "dtype",
            ),
            (r#"{"__metadata__":{"k":1}}"#.into(), 0, "not a string"),
            (r#"[]"#.into(), 0, "JSON object"),
            (format!("{{\"a\":{{{}}}}}", t("-1", "0,4")), 4, "not a size"),
            (
                format!("{{\"a\":{{{}}}}}", t("1", "4,0")),
                4,
                "[start, end]",
            ),
        ];
        for (header, data, want) in cases {
            let e = parse(&file(&header, data)).unwrap_err();
            assert!(e.0.contains(want), "{header}: '{e}' lacks '{want}'");
        }
        // An absurd header length is refused before any allocation.
        let mut big = (MAX_HEADER_BYTES + 1).to_le_bytes().to_vec();
        big.extend_from_slice(b"{}");
        assert!(parse(&big).unwrap_err().0.contains("limit"));
        let mut r = std::io::Cursor::new(&big);
        assert!(read_header(&mut r, u64::MAX).is_err());
    }

    #[test]
    fn metadata_and_empty_files() {
        let ok = file(r#"{"__metadata__":{"format":"pt"}}  "#, 0);
        let h = parse(&ok).unwrap();
        assert_eq!(h.metadata["format"], "pt");
        assert!(h.tensors.is_empty());
        // Zero-sized tensors share an offset without overlapping.
        let z = file(
            r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#,
            2,
        );
        assert_eq!(parse(&z).unwrap().tensors.len(), 2);
    }
}
