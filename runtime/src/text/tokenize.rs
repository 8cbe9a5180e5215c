//! The UMT5 tokenizer call of `wan/modules/tokenizers.py` (`HuggingfaceTokenizer`
//! with `padding="max_length"`, `truncation=True`, `add_special_tokens=True`):
//! SentencePiece Unigram ids, cut to `text_len - 1` tokens, `</s>` appended,
//! padded with `<pad>` to `text_len`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

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
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
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
        let encoding = self
            .inner
            .encode(cleaned, false)
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
        let encoding = self
            .inner
            .encode(cleaned, false)
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
