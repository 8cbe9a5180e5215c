//! The encoders' export: UMT5 (with its tokenizer and the cached negative
//! prompt) and the CLIP visual tower.

use super::*;

/// Exports the UMT5 text encoder, copies its tokenizer and caches the
/// embedding of the task's default negative prompt.
///
/// The tokenizer is loaded before the graph is built, so a missing or broken
/// `tokenizer.json` fails in a second with its path, not after the export.
/// The cache (`negative_prompt_embeds.safetensors`: `prompt_embeds [1, L,
/// d_model]` trimmed and zero-padded, `input_ids`, `attention_mask [1, L]`)
/// comes from running the graph just written, on ONNX Runtime's CPU
/// provider. A bf16 graph has no CPU kernels there, so it runs a copy
/// rewritten by `wanrt_graphs::emulate::emulate_bf16` (every bf16 tensor
/// still rounded where the graph rounds it); the copy is deleted afterwards.
/// For UMT5-XXL this run holds the weights in fp32 (≈23 GB) for a minute or
/// so. When ONNX Runtime cannot be loaded at all, the cache is skipped with a
/// printed reason and the runtime encodes the negative prompt itself; any
/// other failure (the graph does not run, the embedding is not finite, e.g.
/// fp16 overflow) is an error.
///
/// The manifest entry's `config` holds `umt5` (the config the graph was
/// built from), `tokenizer` and `negative_prompt_embeds` (file names in the
/// artifact directory, with `…_sha256` digests), `negative_prompt` (the raw
/// text the cache holds) and `negative_prompt_embeds_from` (how it was run);
/// `wanrt_runtime::prompt` reads them.
pub(super) fn export_text_encoder(
    md: &ModelDir,
    opts: &CompileOptions,
    staging: &Path,
) -> Result<(NetworkEntry, NetworkReport)> {
    use wanrt_runtime::prompt::{self as rt_prompt, NEGATIVE_CACHE_FILE, TOKENIZER_FILE};

    /// Removes a temporary file when dropped.
    struct RemoveOnDrop(PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A runtime failure while caching, as a compiler error.
    fn run_error(e: wanrt_runtime::Error) -> Error {
        Error::CompileTimeRun {
            what: "caching the default negative prompt's embedding (running the exported text \
                   encoder; --no-negative-cache skips it)"
                .into(),
            source: e,
        }
    }

    /// Runs the graph in `staging` on `negative`; `Ok(None)` when ONNX
    /// Runtime is not available.
    fn cache_negative(
        staging: &Path,
        entry: &NetworkEntry,
        tokenizer: &wanrt_runtime::text::PromptTokenizer,
        negative: &str,
    ) -> Result<Option<(String, String)>> {
        if let Err(e) = wanrt_runtime::ortlib::environment() {
            if e.kind() == wanrt_runtime::ErrorKind::OrtLibrary {
                eprintln!(
                    "wan-compile: note: the default negative prompt's embedding is not cached ({e}); \
                     wan-run will encode it when it is needed"
                );
                return Ok(None);
            }
            return Err(run_error(e));
        }
        let graph = staging.join(&entry.file);
        let (path, from, _tmp) = if entry.precision == Precision::Bf16 {
            let bytes = std::fs::read(&graph).map_err(|e| Error::io(&graph, e))?;
            let mut model = wanrt_graphs::onnx::ModelProto::from_bytes(&bytes).map_err(|e| {
                Error::Graph(wanrt_graphs::Error::Invalid(format!(
                    "{}: cannot read back the graph just written: {e}",
                    graph.display()
                )))
            })?;
            wanrt_graphs::emulate::emulate_bf16(&mut model);
            // Beside the original, so that its external data resolves.
            let copy = staging.join(".text_encoder.bf16-emulated.onnx");
            let guard = RemoveOnDrop(copy.clone());
            std::fs::write(&copy, model.to_bytes()).map_err(|e| Error::io(&copy, e))?;
            (copy, "ort-cpu, bf16 emulated in fp32", Some(guard))
        } else {
            (graph, "ort-cpu", None)
        };
        let l = entry.profile.text_len as usize;
        let encoded = tokenizer.clean_and_encode(negative, l).map_err(run_error)?;
        // A fixed-batch graph takes exactly its batch: repeat the prompt.
        let batch = entry.profile.batch.fixed().unwrap_or(1).max(1) as usize;
        let inputs = rt_prompt::encoder_inputs(&vec![encoded.clone(); batch]);
        let ordered: Vec<(String, wanrt_runtime::HostTensor)> = entry
            .inputs
            .iter()
            .filter_map(|s| inputs.get(&s.name).map(|t| (s.name.clone(), t.clone())))
            .collect();
        let mut session = wanrt_runtime::session::create(&path, wanrt_runtime::Backend::OrtCpu)
            .map_err(run_error)?;
        let outputs = wanrt_runtime::session::run(&mut session, "text_encoder", &ordered)
            .map_err(run_error)?;
        drop(session);
        let embeds = rt_prompt::embeds_from_output(&[encoded], &outputs)
            .map_err(run_error)?
            .remove(0);
        if let Some(bad) = embeds.embeds.iter().find(|v| !v.is_finite()) {
            return Err(run_error(wanrt_runtime::Error::Inference {
                network: "text_encoder".into(),
                reason: format!(
                    "the default negative prompt's embedding holds {bad} at precision {}: \
                     the graph overflows for this checkpoint; compile the text encoder at bf16 \
                     or fp32",
                    entry.precision
                ),
            }));
        }
        let file = staging.join(NEGATIVE_CACHE_FILE);
        embeds.write(&file, true).map_err(run_error)?;
        let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
        Ok(Some((file_digest(&bytes), from.to_string())))
    }

    let (cfg, ck, tokenizer_src) = md.text_encoder()?;
    if !tokenizer_src.is_file() {
        return Err(Error::MissingFile {
            file: tokenizer_src,
            reason: "the text encoder's tokenizer".into(),
        });
    }
    let tokenizer =
        wanrt_runtime::text::PromptTokenizer::from_file(&tokenizer_src).map_err(|e| {
            Error::Config {
                file: tokenizer_src.clone(),
                reason: format!("not a usable tokenizer: {e}"),
            }
        })?;
    let task = md.dit_config()?.task;

    let job = GraphJob {
        kind: NetworkKind::TextEncoder,
        contract: NetworkContract::text_encoder(&cfg, &opts.profile),
        config: serde_json::json!({ "umt5": cfg }),
        doc: format!(
            "Wan2.1 UMT5 encoder ({} layers, d_model {}), {}",
            cfg.num_layers,
            cfg.d_model,
            precision_doc(opts)
        ),
    };
    let topts = T5Options {
        precision: opts.precision,
        debug_outputs: opts.debug_outputs,
    };
    let (mut entry, report) = export_graph(job, opts, staging, |b| {
        t5::build(b, Weights::new(&ck), &cfg, &opts.profile, &topts)
    })?;
    check_unused(&ck, NetworkKind::TextEncoder)?;

    let tok_dst = staging.join(TOKENIZER_FILE);
    // Bounded read of a regular file, validated as the runtime will.
    let bytes =
        wanrt_core::fsio::read_capped(&tokenizer_src, wanrt_runtime::text::MAX_TOKENIZER_BYTES)
            .map_err(|e| Error::io(&tokenizer_src, e))?;
    wanrt_runtime::text::validate_tokenizer_json(&bytes).map_err(|reason| Error::Config {
        file: tokenizer_src.clone(),
        reason: format!("not a UMT5 tokenizer.json: {reason}"),
    })?;
    std::fs::write(&tok_dst, &bytes).map_err(|e| Error::io(&tok_dst, e))?;
    entry.config["tokenizer"] = TOKENIZER_FILE.into();
    entry.config["tokenizer_sha256"] = file_digest(&bytes).into();

    let negative = wanrt_runtime::text::default_negative_prompt(task);
    let cached = if opts.cache_negative_prompt {
        cache_negative(staging, &entry, &tokenizer, negative)?
    } else {
        None
    };
    match cached {
        Some((digest, from)) => {
            entry.config["negative_prompt"] = negative.into();
            entry.config["negative_prompt_embeds"] = NEGATIVE_CACHE_FILE.into();
            entry.config["negative_prompt_embeds_sha256"] = digest.into();
            entry.config["negative_prompt_embeds_from"] = from.into();
        }
        None => {
            entry.config["negative_prompt"] = serde_json::Value::Null;
            entry.config["negative_prompt_embeds"] = serde_json::Value::Null;
        }
    }
    Ok((entry, report))
}

/// Exports a text encoder with generated weights (`--synthetic`): the graph
/// only; without a tokenizer nothing can be cached.
pub(super) fn export_text_encoder_synthetic(
    cfg: &wanrt_core::Umt5Config,
    source: &dyn WeightSource,
    opts: &CompileOptions,
    staging: &Path,
) -> Result<(NetworkEntry, NetworkReport)> {
    let job = GraphJob {
        kind: NetworkKind::TextEncoder,
        contract: NetworkContract::text_encoder(cfg, &opts.profile),
        config: serde_json::json!({ "umt5": cfg, "tokenizer": null, "negative_prompt_embeds": null }),
        doc: format!("synthetic UMT5 encoder, {}", precision_doc(opts)),
    };
    let topts = T5Options {
        precision: opts.precision,
        debug_outputs: opts.debug_outputs,
    };
    export_graph(job, opts, staging, |b| {
        t5::build(b, Weights::new(source), cfg, &opts.profile, &topts)
    })
}

/// Exports the CLIP image encoder (visual tower up to its penultimate block).
///
/// The manifest entry's `config` is the `ClipVisionConfig` the graph was
/// built from plus `preprocessing`: the input side and the per-channel
/// mean/std the runtime normalises `pixel_values` with. Those come from the
/// diffusers `image_processor/preprocessor_config.json` when the model has
/// one (checked for sanity), else the official `wan/modules/clip.py` values.
pub(super) fn export_image_encoder(
    md: &ModelDir,
    opts: &CompileOptions,
    staging: &Path,
) -> Result<(NetworkEntry, NetworkReport)> {
    /// The normalisation of `image_processor/preprocessor_config.json`.
    #[derive(serde::Deserialize)]
    struct Processor {
        image_mean: Vec<f64>,
        image_std: Vec<f64>,
    }

    let (cfg, ck) = md.image_encoder()?;
    let processor = md.root.join("image_processor/preprocessor_config.json");
    let (mean, std, from) = if processor.is_file() {
        let p: Processor = wanrt_core::config::read_json(&processor)?;
        let ok = |v: &[f64], positive: bool| {
            v.len() == 3 && v.iter().all(|x| x.is_finite() && (!positive || *x > 0.0))
        };
        if !ok(&p.image_mean, false) || !ok(&p.image_std, true) {
            return Err(Error::Config {
                file: processor,
                reason: "image_mean and image_std must hold 3 finite values (std > 0)".into(),
            });
        }
        // Relative to the model directory, which the manifest records.
        let from = "image_processor/preprocessor_config.json".to_string();
        (p.image_mean, p.image_std, from)
    } else {
        let from = "wan/modules/clip.py (official constants)".to_string();
        (clip::MEAN.to_vec(), clip::STD.to_vec(), from)
    };
    let mut config = serde_json::to_value(&cfg).expect("config serialises");
    config["preprocessing"] = serde_json::json!({
        "image_size": cfg.image_size,
        "mean": mean,
        "std": std,
        "source": from,
    });
    let job = GraphJob {
        kind: NetworkKind::ImageEncoder,
        contract: NetworkContract::image_encoder(&cfg, &opts.profile),
        config,
        doc: format!(
            "Wan2.1 CLIP visual tower, {} of {} blocks (penultimate output), {}",
            cfg.used_layers,
            cfg.layers,
            precision_doc(opts)
        ),
    };
    let copts = ClipOptions {
        precision: opts.precision,
        debug_outputs: opts.debug_outputs,
    };
    let r = export_graph(job, opts, staging, |b| {
        clip::build(b, Weights::new(&ck), &cfg, &opts.profile, &copts)
    })?;
    check_unused(&ck, NetworkKind::ImageEncoder)?;
    Ok(r)
}
