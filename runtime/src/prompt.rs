//! Prompt → text embeddings for the DiT: cleaning, tokenizing, the UMT5
//! encoder, trimming and zero-padding (`docs/WAN.md` §4.1–§4.4).
//!
//! The reference runs the encoder on the padded `[1, L]` ids with the mask,
//! keeps the first `seq_len` rows (`seq_len` = mask-1 positions, `</s>`
//! included) and zero-pads back to `L` rows before the DiT's text embedding.
//! [`PromptEncoder::encode`] does exactly that and returns a [`PromptEmbeds`].
//!
//! `wan-compile` caches the embedding of the task's default negative prompt
//! in the artifact directory (`negative_prompt_embeds.safetensors`, named in
//! the text encoder's manifest `config` with its digest and raw text), so a
//! run with the default negative prompt skips one encoder call:
//! [`PromptEncoder::encode_negative`] uses the cache when it is for the same
//! raw text and tokenizes identically, and encodes otherwise.
//!
//! ```no_run
//! use std::path::Path;
//! use wanrt_runtime::{Artifacts, Backend};
//! use wanrt_runtime::prompt::PromptEncoder;
//!
//! let artifacts = Artifacts::open(Path::new("engines/t2v-480p"))?;
//! let mut encoder = PromptEncoder::load(&artifacts, Backend::OrtCpu)?;
//! let positive = encoder.encode("A cat and a dog baking a cake in a kitchen.")?;
//! let negative = encoder.encode_negative("")?; // the task's default, cached
//! assert_eq!(positive.prompt_embeds().shape, negative.prompt_embeds().shape);
//! positive.write(Path::new("prompt.safetensors"), false)?;
//! # Ok::<(), wanrt_runtime::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use wanrt_core::{NetworkKind, Task};

use crate::backend::Backend;
use crate::engine::{Artifacts, Network};
use crate::error::{Error, Result};
use crate::tensorfile::{self, HostTensor};
use crate::text::{self, Encoded, PromptTokenizer};

/// The tokenizer's file name in an artifact directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The cached default negative prompt embedding in an artifact directory.
pub const NEGATIVE_CACHE_FILE: &str = "negative_prompt_embeds.safetensors";

/// Tensor names of a prompt file (`wan-run encode-prompt`, the cache).
pub const INPUT_IDS: &str = "input_ids";
pub const ATTENTION_MASK: &str = "attention_mask";
pub const PROMPT_EMBEDS: &str = "prompt_embeds";
/// The encoder's output, as the contract names it.
const LAST_HIDDEN_STATE: &str = "last_hidden_state";

/// One encoded prompt, as the DiT consumes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptEmbeds {
    /// `L` token ids: the tokens, `</s>`, `<pad>`s.
    pub input_ids: Vec<i64>,
    /// `L` entries, 1 for the tokens and `</s>`.
    pub attention_mask: Vec<i64>,
    /// Rows kept from the encoder output (mask-1 positions).
    pub seq_len: usize,
    pub d_model: usize,
    /// `[L, d_model]` row-major: the encoder's first `seq_len` rows, then
    /// zeros.
    pub embeds: Vec<f32>,
}

impl PromptEmbeds {
    pub fn text_len(&self) -> usize {
        self.input_ids.len()
    }

    /// Trims one row of the encoder output (`[L, d_model]`) to the prompt's
    /// length and zero-pads it back to `L` rows (§4.4).
    pub fn from_hidden(encoded: &Encoded, hidden: &[f32], d_model: usize) -> Result<Self> {
        let l = encoded.input_ids.len();
        if hidden.len() != l * d_model || encoded.seq_len > l || encoded.seq_len == 0 {
            return Err(Error::Inference {
                network: NetworkKind::TextEncoder.name().into(),
                reason: format!(
                    "{} output values for text length {l} × d_model {d_model} (seq_len {})",
                    hidden.len(),
                    encoded.seq_len
                ),
            });
        }
        let keep = encoded.seq_len * d_model;
        let mut embeds = hidden[..keep].to_vec();
        embeds.resize(l * d_model, 0.0);
        Ok(PromptEmbeds {
            input_ids: encoded.input_ids.clone(),
            attention_mask: encoded.attention_mask.clone(),
            seq_len: encoded.seq_len,
            d_model,
            embeds,
        })
    }

    /// `prompt_embeds [1, L, d_model]` float32.
    pub fn prompt_embeds(&self) -> HostTensor {
        HostTensor::from_f32(
            vec![1, self.text_len() as u64, self.d_model as u64],
            &self.embeds,
        )
    }

    /// `input_ids`, `attention_mask [1, L]` int64 and `prompt_embeds [1, L,
    /// d_model]` float32, by name.
    pub fn to_tensors(&self) -> BTreeMap<String, HostTensor> {
        let l = self.text_len() as u64;
        BTreeMap::from([
            (
                INPUT_IDS.to_string(),
                HostTensor::from_i64(vec![1, l], &self.input_ids),
            ),
            (
                ATTENTION_MASK.to_string(),
                HostTensor::from_i64(vec![1, l], &self.attention_mask),
            ),
            (PROMPT_EMBEDS.to_string(), self.prompt_embeds()),
        ])
    }

    /// Reads the tensors [`Self::to_tensors`] writes, checking their shapes,
    /// the mask (ones, then zeros) and that the padding rows are zero.
    pub fn from_tensors(tensors: &BTreeMap<String, HostTensor>, file: &Path) -> Result<Self> {
        let bad = |reason: String| Error::TensorFile {
            file: file.to_path_buf(),
            reason,
        };
        let get = |name: &str| {
            tensors
                .get(name)
                .ok_or_else(|| bad(format!("no tensor {name}")))
        };
        let ids = get(INPUT_IDS)?;
        let mask = get(ATTENTION_MASK)?;
        let emb = get(PROMPT_EMBEDS)?;
        let (input_ids, attention_mask, embeds) = match (ids.to_i64(), mask.to_i64(), emb.to_f32())
        {
            (Some(i), Some(m), Some(e)) if emb.dtype == wanrt_core::DType::Float32 => (i, m, e),
            _ => {
                return Err(bad(format!(
                    "{INPUT_IDS} and {ATTENTION_MASK} must be int64, {PROMPT_EMBEDS} float32"
                )));
            }
        };
        let l = input_ids.len() as u64;
        let [1, el, d] = emb.shape[..] else {
            return Err(bad(format!(
                "{PROMPT_EMBEDS} has shape {:?}, expected [1, L, d_model]",
                emb.shape
            )));
        };
        if ids.shape != [1, l] || mask.shape != [1, l] || el != l || d == 0 {
            return Err(bad(format!(
                "shapes {:?}, {:?}, {:?} do not fit [1, L], [1, L], [1, L, d_model]",
                ids.shape, mask.shape, emb.shape
            )));
        }
        let seq_len = attention_mask.iter().take_while(|&&m| m == 1).count();
        if seq_len == 0 || attention_mask[seq_len..].iter().any(|&m| m != 0) {
            return Err(bad(format!(
                "{ATTENTION_MASK} must be ones (at least one) followed by zeros"
            )));
        }
        let d = d as usize;
        if embeds[seq_len * d..].iter().any(|&v| v != 0.0) {
            return Err(bad(format!(
                "{PROMPT_EMBEDS} rows past the prompt's {seq_len} tokens are not zero"
            )));
        }
        Ok(PromptEmbeds {
            input_ids,
            attention_mask,
            seq_len,
            d_model: d,
            embeds,
        })
    }

    /// Writes [`Self::to_tensors`] as safetensors, atomically.
    pub fn write(&self, path: &Path, overwrite: bool) -> Result<()> {
        tensorfile::write(path, &self.to_tensors(), overwrite)
    }

    pub fn read(path: &Path) -> Result<Self> {
        Self::from_tensors(&tensorfile::read(path)?, path)
    }
}

/// The encoder inputs for a batch of tokenized prompts: `input_ids` and
/// `attention_mask` `[N, L]` int64.
pub fn encoder_inputs(encoded: &[Encoded]) -> BTreeMap<String, HostTensor> {
    let n = encoded.len() as u64;
    let l = encoded.first().map_or(0, |e| e.input_ids.len()) as u64;
    let ids: Vec<i64> = encoded.iter().flat_map(|e| e.input_ids.clone()).collect();
    let mask: Vec<i64> = encoded
        .iter()
        .flat_map(|e| e.attention_mask.clone())
        .collect();
    BTreeMap::from([
        (
            INPUT_IDS.to_string(),
            HostTensor::from_i64(vec![n, l], &ids),
        ),
        (
            ATTENTION_MASK.to_string(),
            HostTensor::from_i64(vec![n, l], &mask),
        ),
    ])
}

/// Splits the encoder's `last_hidden_state [N, L, d]` into one trimmed and
/// zero-padded [`PromptEmbeds`] per prompt (the first `encoded.len()` rows).
pub fn embeds_from_output(
    encoded: &[Encoded],
    outputs: &BTreeMap<String, HostTensor>,
) -> Result<Vec<PromptEmbeds>> {
    let fail = |reason: String| Error::Inference {
        network: NetworkKind::TextEncoder.name().into(),
        reason,
    };
    let out = outputs
        .get(LAST_HIDDEN_STATE)
        .ok_or_else(|| fail(format!("no output {LAST_HIDDEN_STATE}")))?;
    let values = out
        .to_f32()
        .ok_or_else(|| fail(format!("{LAST_HIDDEN_STATE} is {}", out.dtype)))?;
    let [n, l, d] = out.shape[..] else {
        return Err(fail(format!(
            "{LAST_HIDDEN_STATE} has shape {:?}, expected [N, L, d_model]",
            out.shape
        )));
    };
    if (n as usize) < encoded.len() {
        return Err(fail(format!(
            "{n} output rows for {} prompts",
            encoded.len()
        )));
    }
    let row = (l * d) as usize;
    encoded
        .iter()
        .enumerate()
        .map(|(i, e)| PromptEmbeds::from_hidden(e, &values[i * row..(i + 1) * row], d as usize))
        .collect()
}

/// `sha256:<hex>` of a file's bytes, as the manifest records digests.
pub fn sha256_file(path: &Path) -> Result<String> {
    wanrt_core::fsio::sha256_file(path).map_err(|e| Error::io(path, e))
}

/// What `wan-compile` records in the text encoder's manifest `config` beside
/// the UMT5 config.
#[derive(Debug, Clone, Deserialize)]
pub struct TextEncoderFiles {
    /// Tokenizer file, relative to the artifact directory.
    pub tokenizer: String,
    /// Required: a version-1 manifest without it is refused, so the check
    /// cannot be switched off by deleting the field.
    pub tokenizer_sha256: String,
    /// The raw negative prompt the cache holds (none: no cache).
    pub negative_prompt: Option<String>,
    /// The cache file, relative to the artifact directory.
    pub negative_prompt_embeds: Option<String>,
    pub negative_prompt_embeds_sha256: Option<String>,
}

impl TextEncoderFiles {
    /// Reads the file names from the text encoder's manifest entry.
    pub fn of(artifacts: &Artifacts) -> Result<Self> {
        let entry = artifacts.entry(NetworkKind::TextEncoder)?;
        let files: TextEncoderFiles =
            serde_json::from_value(entry.config.clone()).map_err(|e| Error::Artifacts {
                dir: artifacts.dir.clone(),
                reason: format!("text_encoder config in manifest.json: {e}"),
            })?;
        if files.negative_prompt_embeds.is_some() != files.negative_prompt_embeds_sha256.is_some()
            || files.negative_prompt_embeds.is_some() != files.negative_prompt.is_some()
        {
            return Err(Error::Artifacts {
                dir: artifacts.dir.clone(),
                reason: "text_encoder config in manifest.json: negative_prompt, negative_prompt_embeds and its sha256 must be present together".into(),
            });
        }
        for f in std::iter::once(&files.tokenizer).chain(&files.negative_prompt_embeds) {
            let p = Path::new(f);
            if p.is_absolute() || p.components().count() != 1 {
                return Err(Error::Artifacts {
                    dir: artifacts.dir.clone(),
                    reason: format!("text_encoder file '{f}' is not a plain file name"),
                });
            }
        }
        Ok(files)
    }
}

/// Checks `file` against the digest the manifest records for it.
fn check_digest(artifacts: &Artifacts, file: &Path, want: &str) -> Result<()> {
    let got = sha256_file(file)?;
    if got != want {
        return Err(Error::Artifacts {
            dir: artifacts.dir.clone(),
            reason: format!(
                "{} does not match its digest in manifest.json (modified or from another compile)",
                file.display()
            ),
        });
    }
    Ok(())
}

/// The text encoder of an artifact directory with its tokenizer.
pub struct PromptEncoder {
    network: Network,
    tokenizer: PromptTokenizer,
    task: Task,
    text_len: usize,
    d_model: usize,
    /// The cached negative prompt: its raw text and file.
    negative: Option<(String, PathBuf)>,
    /// Recent embeddings by raw prompt (off unless given a capacity).
    recent: PromptCache,
}

/// A bounded least-recently-used map from a raw prompt to its embedding,
/// so a long-lived process (`wan-serve`) skips the text encoder for prompts
/// it has seen. The encoder is deterministic, so a hit equals a fresh
/// encode.
#[derive(Debug, Default)]
pub struct PromptCache {
    capacity: usize,
    /// Most recent last.
    entries: std::collections::VecDeque<(String, PromptEmbeds)>,
    hits: u64,
    misses: u64,
}

impl PromptCache {
    /// A cache of at most `capacity` prompts (0: caches nothing).
    pub fn new(capacity: usize) -> Self {
        PromptCache {
            capacity,
            ..Default::default()
        }
    }

    /// The embedding of `raw`, marked most recent; counts a hit or a miss.
    pub fn get(&mut self, raw: &str) -> Option<PromptEmbeds> {
        if self.capacity == 0 {
            return None;
        }
        match self.entries.iter().position(|(k, _)| k == raw) {
            Some(i) => {
                self.hits += 1;
                let entry = self.entries.remove(i)?;
                let value = entry.1.clone();
                self.entries.push_back(entry);
                Some(value)
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Remembers `raw`'s embedding, dropping the least recent past capacity.
    pub fn put(&mut self, raw: &str, embeds: &PromptEmbeds) {
        if self.capacity == 0 {
            return;
        }
        self.entries.retain(|(k, _)| k != raw);
        self.entries.push_back((raw.to_string(), embeds.clone()));
        while self.entries.len() > self.capacity {
            self.entries.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// (hits, misses) since creation.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

impl std::fmt::Debug for PromptEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptEncoder")
            .field("tokenizer", &self.tokenizer)
            .field("task", &self.task)
            .field("text_len", &self.text_len)
            .field("d_model", &self.d_model)
            .field("negative", &self.negative)
            .finish_non_exhaustive()
    }
}

impl PromptEncoder {
    /// Loads the text encoder on `backend` and its tokenizer, checking the
    /// tokenizer and the cache against their digests in the manifest.
    pub fn load(artifacts: &Artifacts, backend: Backend) -> Result<Self> {
        let entry = artifacts.entry(NetworkKind::TextEncoder)?;
        let fail = |reason: String| Error::Artifacts {
            dir: artifacts.dir.clone(),
            reason,
        };
        let text_len = entry.profile.text_len as usize;
        let d_model = match entry.outputs.first().map(|o| &o.shape[..]) {
            Some([_, _, wanrt_core::Dim::Fixed(d)]) => *d as usize,
            _ => {
                return Err(fail(
                    "text_encoder output is not [B, L, d_model] in manifest.json".into(),
                ));
            }
        };
        let files = TextEncoderFiles::of(artifacts)?;
        let tok_path = artifacts.file(&files.tokenizer)?;
        check_digest(artifacts, &tok_path, &files.tokenizer_sha256)?;
        let tokenizer = PromptTokenizer::from_file(&tok_path)?;
        let negative = match (&files.negative_prompt, &files.negative_prompt_embeds) {
            (Some(text), Some(file)) => {
                let p = artifacts.file(file)?;
                check_digest(
                    artifacts,
                    &p,
                    files
                        .negative_prompt_embeds_sha256
                        .as_deref()
                        .unwrap_or_default(),
                )?;
                Some((text.clone(), p))
            }
            _ => None,
        };
        let network = artifacts.load(NetworkKind::TextEncoder, backend)?;
        Ok(PromptEncoder {
            network,
            tokenizer,
            task: artifacts.manifest.model.task,
            text_len,
            d_model,
            negative,
            recent: PromptCache::default(),
        })
    }

    /// Keeps the embeddings of the `capacity` most recent prompts (0, the
    /// default: none).
    pub fn set_cache_capacity(&mut self, capacity: usize) {
        self.recent = PromptCache::new(capacity);
    }

    /// The cache of recent prompts (its hit and miss counts).
    pub fn recent(&self) -> &PromptCache {
        &self.recent
    }

    pub fn text_len(&self) -> usize {
        self.text_len
    }

    pub fn d_model(&self) -> usize {
        self.d_model
    }

    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    /// Cleans, tokenizes and encodes one raw prompt.
    pub fn encode(&mut self, raw: &str) -> Result<PromptEmbeds> {
        if let Some(hit) = self.recent.get(raw) {
            return Ok(hit);
        }
        let mut v = self.encode_many(&[raw])?;
        let embeds = v.pop().ok_or_else(|| Error::Inference {
            network: NetworkKind::TextEncoder.name().into(),
            reason: "no output for the prompt".into(),
        })?;
        self.recent.put(raw, &embeds);
        Ok(embeds)
    }

    /// Encodes several raw prompts in one batch (a fixed-batch engine is
    /// called per slice; a partial last slice is padded with copies).
    pub fn encode_many(&mut self, raws: &[&str]) -> Result<Vec<PromptEmbeds>> {
        if raws.is_empty() {
            return Ok(Vec::new());
        }
        let encoded = raws
            .iter()
            .map(|r| self.tokenizer.clean_and_encode(r, self.text_len))
            .collect::<Result<Vec<_>>>()?;
        let step = self.network.fixed_batch().unwrap_or(1).max(1) as usize;
        let mut batch = encoded.clone();
        while batch.len() % step != 0 {
            batch.push(encoded[0].clone());
        }
        let outputs = self.network.run(&encoder_inputs(&batch))?;
        embeds_from_output(&encoded, &outputs)
    }

    /// The negative prompt's embedding: the user's text, or the task's
    /// default when `user` is empty (as the reference). The cached embedding
    /// is used when it holds this very text and the tokenizer gives it the
    /// same ids; otherwise the prompt is encoded.
    pub fn encode_negative(&mut self, user: &str) -> Result<PromptEmbeds> {
        let raw = text::negative_prompt_or_default(user, self.task);
        if let Some(cached) = self.cached(raw)? {
            return Ok(cached);
        }
        self.encode(raw)
    }

    /// The cached embedding of `raw`, if the artifacts hold one for it.
    pub fn cached(&self, raw: &str) -> Result<Option<PromptEmbeds>> {
        let Some((text, file)) = &self.negative else {
            return Ok(None);
        };
        if text != raw {
            return Ok(None);
        }
        let cached = PromptEmbeds::read(file)?;
        let fresh = self.tokenizer.clean_and_encode(raw, self.text_len)?;
        // A cache from another cleaning or tokenizer version is stale, not
        // an error: encode instead.
        let fits = cached.input_ids == fresh.input_ids
            && cached.attention_mask == fresh.attention_mask
            && cached.d_model == self.d_model;
        Ok(fits.then_some(cached))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(seq_len: usize, l: usize) -> Encoded {
        let mut input_ids: Vec<i64> = (5..5 + seq_len as i64 - 1).collect();
        input_ids.push(1);
        input_ids.resize(l, 0);
        let mut attention_mask = vec![1; seq_len];
        attention_mask.resize(l, 0);
        Encoded {
            input_ids,
            attention_mask,
            seq_len,
        }
    }

    #[test]
    fn trims_and_zero_pads() {
        let e = encoded(2, 4);
        let hidden: Vec<f32> = (1..=12).map(|v| v as f32).collect(); // [4, 3]
        let p = PromptEmbeds::from_hidden(&e, &hidden, 3).unwrap();
        assert_eq!(
            p.embeds,
            vec![1., 2., 3., 4., 5., 6., 0., 0., 0., 0., 0., 0.]
        );
        assert_eq!(p.prompt_embeds().shape, vec![1, 4, 3]);
        assert!(PromptEmbeds::from_hidden(&e, &hidden[..11], 3).is_err());
    }

    #[test]
    fn tensors_round_trip_and_are_checked() {
        let e = encoded(3, 5);
        let hidden: Vec<f32> = (0..10).map(|v| v as f32 + 0.5).collect();
        let p = PromptEmbeds::from_hidden(&e, &hidden, 2).unwrap();
        let t = p.to_tensors();
        let f = Path::new("x.safetensors");
        assert_eq!(PromptEmbeds::from_tensors(&t, f).unwrap(), p);
        // Non-zero padding rows are refused.
        let mut bad = t.clone();
        let mut v = p.embeds.clone();
        v[9] = 1.0;
        bad.insert(
            PROMPT_EMBEDS.into(),
            HostTensor::from_f32(vec![1, 5, 2], &v),
        );
        let err = PromptEmbeds::from_tensors(&bad, f).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::TensorFile);
        // A missing tensor names itself.
        let mut bad = t;
        bad.remove(INPUT_IDS);
        let err = PromptEmbeds::from_tensors(&bad, f).unwrap_err();
        assert!(err.to_string().contains(INPUT_IDS), "{err}");
    }

    #[test]
    fn recent_prompts_are_bounded_and_least_recent_goes_first() {
        let e = encoded(1, 2);
        let p = |v: f32| PromptEmbeds::from_hidden(&e, &[v, 0.0], 1).unwrap();
        let mut off = PromptCache::new(0);
        off.put("a", &p(1.0));
        assert!(off.get("a").is_none() && off.is_empty());
        assert_eq!(off.stats(), (0, 0));

        let mut c = PromptCache::new(2);
        c.put("a", &p(1.0));
        c.put("b", &p(2.0));
        assert_eq!(c.get("a").unwrap(), p(1.0)); // "a" is now the most recent
        c.put("c", &p(3.0)); // evicts "b"
        assert_eq!(c.len(), 2);
        assert!(c.get("b").is_none());
        assert_eq!(c.get("a").unwrap(), p(1.0));
        assert_eq!(c.get("c").unwrap(), p(3.0));
        c.put("c", &p(4.0)); // replaces, does not duplicate
        assert_eq!((c.len(), c.get("c").unwrap()), (2, p(4.0)));
        assert_eq!(c.stats(), (4, 1));
    }

    #[test]
    fn batch_output_splits_per_prompt() {
        let es = [encoded(1, 2), encoded(2, 2)];
        let out = BTreeMap::from([(
            LAST_HIDDEN_STATE.to_string(),
            HostTensor::from_f32(vec![3, 2, 1], &[1., 2., 3., 4., 5., 6.]),
        )]);
        let v = embeds_from_output(&es, &out).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].embeds, vec![1., 0.]);
        assert_eq!(v[1].embeds, vec![3., 4.]);
        let ins = encoder_inputs(&es);
        assert_eq!(ins[INPUT_IDS].shape, vec![2, 2]);
        assert_eq!(ins[ATTENTION_MASK].to_i64().unwrap(), vec![1, 0, 1, 1]);
    }
}
