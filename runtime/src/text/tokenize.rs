//! The UMT5 tokenizer call of `wan/modules/tokenizers.py` (`HuggingfaceTokenizer`
//! with `padding="max_length"`, `truncation=True`, `add_special_tokens=True`):
//! SentencePiece Unigram ids, cut to `text_len - 1` tokens, `</s>` appended,
//! padded with `<pad>` to `text_len`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Largest `tokenizer.json` read (UMT5's is about 16 MiB).
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// Runs `f`, turning a panic inside the tokenizers crate into a typed
/// [`Error::Tokenizer`].
fn guarded<T>(file: &Path, what: &str, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Error::Tokenizer {
            file: file.to_path_buf(),
            reason: format!("the tokenizer failed while {what} (damaged file?): {msg}"),
        }
    })
}

/// Structural checks of a UMT5 `tokenizer.json` before the tokenizers
/// crate sees it: a JSON object with a Unigram model whose vocabulary is a
/// non-empty list of `[piece, score]`, and every `Precompiled` normaliser's
/// `precompiled_charsmap` valid base64 whose trie length fits the blob.
pub fn validate_tokenizer_json(bytes: &[u8]) -> std::result::Result<(), String> {
    use serde_json::Value as J;
    let v: J = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let model = v.get("model").ok_or("no model")?;
    if model.get("type").and_then(J::as_str) != Some("Unigram") {
        return Err("model.type is not Unigram (SentencePiece)".into());
    }
    let vocab = model
        .get("vocab")
        .and_then(J::as_array)
        .ok_or("model.vocab is not a list")?;
    if vocab.is_empty() || vocab.len() > 1 << 22 {
        return Err(format!("model.vocab has {} entries", vocab.len()));
    }
    for (i, e) in vocab.iter().enumerate() {
        let ok = matches!(e.as_array().map(Vec::as_slice), Some([J::String(_), J::Number(n)]) if n.as_f64().is_some_and(f64::is_finite));
        if !ok {
            return Err(format!("model.vocab entry {i} is not [piece, score]"));
        }
    }
    if let Some(unk) = model.get("unk_id").filter(|u| !u.is_null())
        && unk.as_u64().is_none_or(|u| u as usize >= vocab.len())
    {
        return Err(format!("model.unk_id {unk} is not a vocabulary index"));
    }
    let mut stack: Vec<&J> = v.get("normalizer").into_iter().collect();
    while let Some(n) = stack.pop() {
        if n.is_null() {
            continue;
        }
        if let Some(list) = n.get("normalizers").and_then(J::as_array) {
            stack.extend(list);
        }
        if n.get("type").and_then(J::as_str) == Some("Precompiled") {
            let map = n
                .get("precompiled_charsmap")
                .and_then(J::as_str)
                .ok_or("Precompiled normalizer without precompiled_charsmap")?;
            let blob = base64_decode(map).ok_or("precompiled_charsmap is not base64")?;
            let trie = blob
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or("precompiled_charsmap is shorter than its header")?;
            if trie == 0 || !trie.is_multiple_of(4) || trie > blob.len() - 4 {
                return Err(format!(
                    "precompiled_charsmap: trie of {trie} bytes does not fit its {}-byte blob",
                    blob.len()
                ));
            }
        }
    }
    Ok(())
}

/// Standard base64 with `=` padding (what tokenizers writes).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let b = s.trim_end_matches('=').as_bytes();
    if !s.len().is_multiple_of(4) || s.len() - b.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() * 3 / 4);
    for chunk in b.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// Token ids and mask of one prompt, as the reference tokenizer call returns
/// them (one row of `input_ids` / `attention_mask`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// `text_len` ids: the tokens, `</s>`, then `<pad>`.
    pub input_ids: Vec<i64>,
    /// `text_len` entries, 1 for tokens and `</s>`, 0 for padding.
    pub attention_mask: Vec<i64>,
    /// Number of mask-1 positions, `</s>` included (so at least 1).
    pub seq_len: usize,
}

/// A `tokenizer.json` (the converted `google/umt5-xxl` SentencePiece model)
/// with the ids of its `<pad>` and `</s>` tokens.
pub struct PromptTokenizer {
    inner: tokenizers::Tokenizer,
    file: PathBuf,
    pad_id: u32,
    eos_id: u32,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("file", &self.file)
            .field("pad_id", &self.pad_id)
            .field("eos_id", &self.eos_id)
            .finish_non_exhaustive()
    }
}

impl PromptTokenizer {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let fail = |reason: String| Error::Tokenizer {
            file: path.to_path_buf(),
            reason,
        };
        let bytes = wanrt_core::fsio::read_capped(path, MAX_TOKENIZER_BYTES)
            .map_err(|e| fail(e.to_string()))?;
        validate_tokenizer_json(&bytes)
            .map_err(|e| fail(format!("not a UMT5 tokenizer.json: {e}")))?;
        // The tokenizers crate can panic on damaged data it accepted
        // (a corrupt precompiled_charsmap): the panic stops at this boundary.
        let inner = guarded(path, "loading", || {
            tokenizers::Tokenizer::from_bytes(&bytes)
        })?
        .map_err(|e| fail(format!("not a tokenizer.json: {e}")))?;
        // Looked up by name rather than assumed, so that a tokenizer with
        // another layout fails here instead of producing wrong ids.
        let special = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| fail(format!("has no {token} token")))
        };
        let pad_id = special("<pad>")?;
        let eos_id = special("</s>")?;
        // Exercise the normaliser once, so damage shows at load time.
        guarded(path, "normalising a probe text", || {
            inner.encode("a Ab 1", false)
        })?
        .map_err(|e| fail(format!("encoding a probe text failed: {e}")))?;
        Ok(Self {
            inner,
            file: path.to_path_buf(),
            pad_id,
            eos_id,
        })
    }

    /// Loads `tokenizer.json` from a tokenizer folder (diffusers' `tokenizer/`
    /// or the original release's `google/umt5-xxl/`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("tokenizer.json"))
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Tokenizes an already cleaned prompt (see [`clean`](fn@super::clean)) to exactly
    /// `text_len` ids.
    pub fn encode(&self, cleaned: &str, text_len: usize) -> Result<Encoded> {
        if text_len == 0 {
            return Err(Error::arg("text_len", "must be at least 1 (room for </s>)"));
        }
        // Without special tokens the post-processor adds nothing, so the
        // truncation and `</s>` below are those of `truncation=True` with
        // the template `$A </s>`.
        let encoding = guarded(&self.file, "encoding", || self.inner.encode(cleaned, false))?
            .map_err(|e| Error::Tokenizer {
                file: self.file.clone(),
                reason: format!("encoding failed: {e}"),
            })?;
        let ids = encoding.get_ids();
        let kept = ids.len().min(text_len - 1);
        let seq_len = kept + 1;
        let mut input_ids = Vec::with_capacity(text_len);
        input_ids.extend(ids[..kept].iter().map(|&id| i64::from(id)));
        input_ids.push(i64::from(self.eos_id));
        input_ids.resize(text_len, i64::from(self.pad_id));
        let mut attention_mask = vec![1i64; seq_len];
        attention_mask.resize(text_len, 0);
        Ok(Encoded {
            input_ids,
            attention_mask,
            seq_len,
        })
    }

    /// [`clean`](fn@super::clean) then [`Self::encode`]: what the reference does with a
    /// raw prompt.
    pub fn clean_and_encode(&self, raw: &str, text_len: usize) -> Result<Encoded> {
        self.encode(&super::clean(raw), text_len)
    }

    /// The vocabulary pieces of a cleaned prompt's ids, untruncated and
    /// without `</s>`, as `convert_ids_to_tokens` shows them (unknown text is
    /// `<unk>`); for diagnostics.
    pub fn tokens(&self, cleaned: &str) -> Result<Vec<String>> {
        let encoding = guarded(&self.file, "encoding", || self.inner.encode(cleaned, false))?
            .map_err(|e| Error::Tokenizer {
                file: self.file.clone(),
                reason: format!("encoding failed: {e}"),
            })?;
        Ok(encoding
            .get_ids()
            .iter()
            .map(|&id| self.inner.id_to_token(id).unwrap_or_default())
            .collect())
    }
}
