//! `wan-compile`'s driver: checkpoint → typed ONNX graphs → artifact directory.
//!
//! Everything is written into a staging directory inside `--out` and moved
//! into place only when every network is done, manifest last; an error or
//! Ctrl-C removes the staging directory, so nothing half-written is left.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wanrt_core::manifest::{ModelInfo, NetworkEntry, Tools};
use wanrt_core::{
    DitConfig, Manifest, NetworkContract, NetworkKind, Precision, Profile, VaeConfig,
};
use wanrt_graphs::builder::hex;
use wanrt_graphs::clip::{self, ClipOptions};
use wanrt_graphs::dit::{self, DitOptions};
use wanrt_graphs::names;
use wanrt_graphs::onnx::{IR_VERSION, OPSET};
use wanrt_graphs::t5::{self, T5Options};
use wanrt_graphs::vae::{self, Chunk};
use wanrt_graphs::{GraphBuilder, WeightSource, Weights};

use crate::checkpoint::{Checkpoint, ModelDir};
use crate::error::{Error, Result};
use crate::synthetic::SyntheticSource;

/// Where the weights come from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A model directory in either layout.
    Dir(PathBuf),
    /// Random weights at a preset's real config (`t2v-1.3B`, ...).
    Synthetic(String),
    /// Random weights at any config (benches, tests).
    SyntheticConfig { name: String, config: DitConfig },
}

/// What to compile.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    pub model: ModelSource,
    pub out: PathBuf,
    pub profile: Profile,
    pub precision: Precision,
    /// Precision of the VAE graphs (fp32 by default, as the reference).
    pub vae_precision: Precision,
    /// Compute and cache the default negative prompt's embedding at compile
    /// time (on ONNX Runtime's CPU provider). Off for a real UMT5-XXL on a
    /// machine without ~25 GB to spare; wan-run then encodes it when needed.
    pub cache_negative_prompt: bool,
    /// Empty: every network the model has (that this version compiles).
    pub networks: Vec<NetworkKind>,
    pub debug_outputs: bool,
    pub overwrite: bool,
    pub show_progress: bool,
    pub interrupt: Option<Arc<AtomicBool>>,
}

/// What one network's export took.
#[derive(Debug, Clone)]
pub struct NetworkReport {
    pub network: NetworkKind,
    pub graph_bytes: u64,
    pub weight_bytes: u64,
    pub nodes: usize,
    pub elapsed: Duration,
}

/// The networks this version compiles.
/// The networks this version compiles (the others are refused with a typed
/// error naming `--networks`).
pub const SUPPORTED: &[NetworkKind] = &[
    NetworkKind::Dit,
    NetworkKind::TextEncoder,
    NetworkKind::ImageEncoder,
    NetworkKind::VaeEncoder,
    NetworkKind::VaeDecoder,
];

/// Removes the staging directory unless disarmed.
struct Staging {
    dir: PathBuf,
    armed: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn file_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn tools() -> Tools {
    Tools {
        wanrt: env!("CARGO_PKG_VERSION").to_string(),
        onnx_opset: OPSET,
        onnx_ir_version: IR_VERSION,
    }
}

/// Prepares `out`: creatable, writable, and not holding artifacts unless
/// `overwrite`.
fn prepare_out(out: &Path, overwrite: bool) -> Result<Staging> {
    let fail = |reason: String| Error::Output {
        dir: out.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(out).map_err(|e| fail(format!("cannot create it: {e} (--out)")))?;
    if Manifest::path(out).exists() && !overwrite {
        return Err(fail(
            "it already holds compiled artifacts (manifest.json); pass --overwrite to replace them"
                .into(),
        ));
    }
    let dir = out.join(format!(".wanrt-staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).map_err(|e| fail(format!("not writable: {e} (--out)")))?;
    Ok(Staging { dir, armed: true })
}

fn progress_bar(show: bool, what: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg}: {bytes} weights written ({binary_bytes_per_sec}, {elapsed})",
        )
        .expect("static template"),
    );
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// What a network's export needs besides its graph-building closure.
pub struct GraphJob {
    pub kind: NetworkKind,
    pub contract: NetworkContract,
    /// The network's config, as recorded in the manifest.
    pub config: serde_json::Value,
    pub doc: String,
}

/// Builds one graph into `staging` (`<name>.onnx` + `<name>.onnx.data`) and
/// returns its manifest entry.
pub fn export_graph(
    job: GraphJob,
    opts: &CompileOptions,
    staging: &Path,
    build: impl FnOnce(&mut GraphBuilder<'_>) -> wanrt_graphs::Result<()>,
) -> Result<(NetworkEntry, NetworkReport)> {
    let start = Instant::now();
    let name = job.kind.name();
    let onnx_file = format!("{name}.onnx");
    let data_file = format!("{onnx_file}.data");
    let pb = progress_bar(opts.show_progress, name);
    let mut builder =
        GraphBuilder::new(name, Some(&staging.join(&data_file)))?.with_progress(|n| pb.inc(n));
    if let Some(flag) = &opts.interrupt {
        builder = builder.with_interrupt(flag);
    }
    build(&mut builder)?;
    let exported = builder.finish(&job.doc)?;
    pb.finish_and_clear();
    let nodes = exported.model.graph.as_ref().map_or(0, |g| g.node.len());
    let bytes = exported.model.to_bytes();
    let path = staging.join(&onnx_file);
    let mut f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(&path, e))?;
    let entry = NetworkEntry {
        file: onnx_file,
        external_data: Some(data_file),
        external_data_bytes: exported.external_data_bytes,
        precision: opts.precision,
        profile: opts.profile.clone(),
        config: job.config,
        weights_digest: exported.weights_digest,
        graph_digest: file_digest(&bytes),
        inputs: job.contract.inputs,
        outputs: job.contract.outputs,
        tools: tools(),
        chunks: vec![],
    };
    let report = NetworkReport {
        network: job.kind,
        graph_bytes: bytes.len() as u64,
        weight_bytes: exported.external_data_bytes,
        nodes,
        elapsed: start.elapsed(),
    };
    Ok((entry, report))
}

/// Fails if the checkpoint holds tensors the graph did not use.
fn check_unused(ck: &Checkpoint, kind: NetworkKind) -> Result<()> {
    let unused = ck.unused();
    if unused.is_empty() {
        Ok(())
    } else {
        Err(Error::UnusedTensors {
            dir: PathBuf::from(ck.describe()),
            network: kind.name().into(),
            names: unused,
        })
    }
}

fn precision_doc(opts: &CompileOptions) -> String {
    let p = &opts.profile;
    format!(
        "profile {} {}x{}x{} text {}, precision {}",
        p.name, p.width, p.height, p.frames, p.text_len, opts.precision
    )
}

/// Exports the DiT.
fn export_dit(
    source: &dyn WeightSource,
    cfg: &DitConfig,
    opts: &CompileOptions,
    staging: &Path,
) -> Result<(NetworkEntry, NetworkReport)> {
    let job = GraphJob {
        kind: NetworkKind::Dit,
        contract: NetworkContract::dit(cfg, &opts.profile)?,
        config: serde_json::to_value(cfg).expect("config serialises"),
        doc: format!("Wan2.1 DiT ({}), {}", cfg.task.name(), precision_doc(opts)),
    };
    let dopts = DitOptions {
        precision: opts.precision,
        debug_outputs: opts.debug_outputs,
    };
    export_graph(job, opts, staging, |b| {
        dit::build(b, Weights::new(source), cfg, &opts.profile, &dopts)
    })
}

fn spec_of(vi: &wanrt_graphs::onnx::ValueInfoProto) -> wanrt_core::TensorSpec {
    use wanrt_graphs::onnx::{tensor_shape_proto::dimension::Value as D, type_proto::Value as T};
    let (dtype, shape) = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(T::TensorType(t)) => (
            wanrt_core::DType::from_onnx_code(t.elem_type).unwrap_or(wanrt_core::DType::Float32),
            t.shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(D::DimValue(n)) => wanrt_core::Dim::Fixed(*n as u64),
                            _ => wanrt_core::Dim::Batch,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        ),
        None => (wanrt_core::DType::Float32, vec![]),
    };
    wanrt_core::TensorSpec {
        name: vi.name.clone(),
        dtype,
        shape,
    }
}

/// Exports the VAE encoder or decoder as a first-chunk and a steady-state
/// graph sharing one weight file.
fn export_vae(
    cfg: &VaeConfig,
    source: &dyn WeightSource,
    checkpoint: Option<&Checkpoint>,
    opts: &CompileOptions,
    staging: &Path,
    kind: NetworkKind,
) -> Result<(NetworkEntry, NetworkReport)> {
    let start = Instant::now();
    let precision = opts.vae_precision;
    let name = kind.name();
    let data_file = format!("{name}.onnx.data");
    let pb = progress_bar(opts.show_progress, name);
    let mut builder =
        GraphBuilder::new(name, Some(&staging.join(&data_file)))?.with_progress(|n| pb.inc(n));
    if let Some(flag) = &opts.interrupt {
        builder = builder.with_interrupt(flag);
    }
    let (p, encoder) = (&opts.profile, kind == NetworkKind::VaeEncoder);
    let mut chunks = Vec::new();
    let mut nodes = 0;
    let mut graph_bytes = 0u64;
    for chunk in [Chunk::First, Chunk::Step] {
        let w = Weights::new(source);
        if encoder {
            vae::build_encoder(&mut builder, w, cfg, p.height, p.width, chunk, precision)?;
        } else {
            vae::build_decoder(&mut builder, w, cfg, p.height, p.width, chunk, precision)?;
        }
        let file = format!("{name}.{}.onnx", chunk.name());
        let model = builder.take_graph(
            &format!("{name}_{}", chunk.name()),
            &format!(
                "Wan2.1 VAE {} ({} chunk), {}",
                if encoder { "encoder" } else { "decoder" },
                chunk.name(),
                precision_doc(opts)
            ),
        );
        let g = model.graph.as_ref().expect("take_graph sets the graph");
        nodes += g.node.len();
        let (inputs, outputs) = (
            g.input.iter().map(spec_of).collect(),
            g.output.iter().map(spec_of).collect(),
        );
        let bytes = model.to_bytes();
        graph_bytes += bytes.len() as u64;
        let path = staging.join(&file);
        std::fs::write(&path, &bytes).map_err(|e| Error::io(&path, e))?;
        chunks.push(wanrt_core::manifest::ChunkGraph {
            role: chunk.name().into(),
            file,
            graph_digest: file_digest(&bytes),
            inputs,
            outputs,
        });
    }
    let (weights_digest, external_data_bytes, _) = builder.finish_external()?;
    pb.finish_and_clear();
    // Each direction uses its half of the checkpoint.
    let prefix = if encoder {
        ["encoder.", "conv1."]
    } else {
        ["decoder.", "conv2."]
    };
    let foreign: fn(&str, &[&str; 2]) -> bool = |n, pre| !pre.iter().any(|p| n.starts_with(p));
    let Some(ck) = checkpoint else {
        return Ok(vae_entry(
            cfg,
            opts,
            kind,
            chunks,
            data_file,
            weights_digest,
            external_data_bytes,
            graph_bytes,
            nodes,
            start,
        ));
    };
    let unused: Vec<String> = ck
        .unused()
        .into_iter()
        .filter(|n| {
            let canonical = match names::vae_from_diffusers(n) {
                Some(c) => c,
                None => n.clone(),
            };
            !foreign(&canonical, &prefix)
        })
        .collect();
    if !unused.is_empty() {
        return Err(Error::UnusedTensors {
            dir: PathBuf::from(ck.describe()),
            network: name.into(),
            names: unused,
        });
    }
    Ok(vae_entry(
        cfg,
        opts,
        kind,
        chunks,
        data_file,
        weights_digest,
        external_data_bytes,
        graph_bytes,
        nodes,
        start,
    ))
}

#[allow(clippy::too_many_arguments)]
fn vae_entry(
    cfg: &VaeConfig,
    opts: &CompileOptions,
    kind: NetworkKind,
    chunks: Vec<wanrt_core::manifest::ChunkGraph>,
    data_file: String,
    weights_digest: String,
    external_data_bytes: u64,
    graph_bytes: u64,
    nodes: usize,
    start: Instant,
) -> (NetworkEntry, NetworkReport) {
    let (p, encoder) = (&opts.profile, kind == NetworkKind::VaeEncoder);
    let contract = if encoder {
        NetworkContract::vae_encoder(cfg, p)
    } else {
        NetworkContract::vae_decoder(cfg, p)
    };
    let step = chunks.last().expect("two chunk graphs");
    let entry = NetworkEntry {
        file: step.file.clone(),
        external_data: Some(data_file),
        external_data_bytes,
        precision: opts.vae_precision,
        profile: p.clone(),
        config: serde_json::to_value(cfg).expect("config serialises"),
        weights_digest,
        graph_digest: step.graph_digest.clone(),
        inputs: contract.inputs,
        outputs: contract.outputs,
        tools: tools(),
        chunks,
    };
    let report = NetworkReport {
        network: kind,
        graph_bytes,
        weight_bytes: external_data_bytes,
        nodes,
        elapsed: start.elapsed(),
    };
    (entry, report)
}

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
fn export_text_encoder(
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
        Error::Graph(wanrt_graphs::Error::Invalid(format!(
            "running the exported text encoder on the default negative prompt: {e}"
        )))
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
            return Err(Error::Graph(wanrt_graphs::Error::Invalid(format!(
                "the default negative prompt's embedding holds {bad} at precision {}: \
                 the graph overflows for this checkpoint; compile the text encoder at bf16 or fp32",
                entry.precision
            ))));
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
    std::fs::copy(&tokenizer_src, &tok_dst).map_err(|e| Error::io(&tok_dst, e))?;
    entry.config["tokenizer"] = TOKENIZER_FILE.into();
    let bytes = std::fs::read(&tok_dst).map_err(|e| Error::io(&tok_dst, e))?;
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
fn export_text_encoder_synthetic(
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
fn export_image_encoder(
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

/// Compiles the requested networks into `opts.out`.
pub fn compile(opts: &CompileOptions) -> Result<(Manifest, Vec<NetworkReport>)> {
    // Open the model before touching the output directory.
    let (cfg, checkpoint, synthetic, info) = match &opts.model {
        ModelSource::Dir(dir) => {
            let md = ModelDir::open(dir)?;
            let cfg = md.dit_config()?;
            let ck = md.dit_weights()?;
            let info = ModelInfo {
                task: cfg.task,
                layout: md.layout.name().to_string(),
                source: dir.display().to_string(),
            };
            (cfg, Some((ck, md)), None, info)
        }
        ModelSource::Synthetic(preset) => {
            let cfg =
                DitConfig::from_preset_name(preset).ok_or_else(|| Error::InvalidArgument {
                    flag: "--synthetic".into(),
                    reason: format!("unknown preset '{preset}' (t2v-1.3B, t2v-14B, i2v-14B)"),
                })?;
            let info = ModelInfo {
                task: cfg.task,
                layout: format!("synthetic:{preset}"),
                source: String::new(),
            };
            (cfg, None, Some(SyntheticSource::new(preset)), info)
        }
        ModelSource::SyntheticConfig { name, config } => {
            let info = ModelInfo {
                task: config.task,
                layout: format!("synthetic:{name}"),
                source: String::new(),
            };
            (config.clone(), None, Some(SyntheticSource::new(name)), info)
        }
    };
    NetworkContract::dit(&cfg, &opts.profile)?;
    let available = match &checkpoint {
        Some((_, md)) => md.networks(cfg.task),
        // Synthetic weights: the DiT at the preset's config and the
        // networks whose official configuration is fixed.
        None => vec![
            NetworkKind::Dit,
            NetworkKind::TextEncoder,
            NetworkKind::VaeEncoder,
            NetworkKind::VaeDecoder,
        ],
    };
    let networks: Vec<NetworkKind> = if opts.networks.is_empty() {
        available
            .iter()
            .copied()
            .filter(|n| SUPPORTED.contains(n))
            .collect()
    } else {
        let mut v = opts.networks.clone();
        v.sort();
        v.dedup();
        v
    };
    for n in &networks {
        let supported: Vec<&str> = SUPPORTED.iter().map(|k| k.name()).collect();
        if !SUPPORTED.contains(n) {
            return Err(Error::InvalidArgument {
                flag: "--networks".into(),
                reason: format!(
                    "'{n}' cannot be compiled by this version yet (supported: {})",
                    supported.join(", ")
                ),
            });
        }
        if !available.contains(n) {
            return Err(Error::InvalidArgument {
                flag: "--networks".into(),
                reason: format!(
                    "this {} model has no '{n}' (it has: {})",
                    cfg.task.name(),
                    available
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }

    let mut staging = prepare_out(&opts.out, opts.overwrite)?;
    let mut manifest = Manifest::new(info);
    let mut reports = Vec::new();
    for n in networks {
        let (entry, report) = match (n, &checkpoint) {
            (NetworkKind::Dit, Some((ck, _))) => {
                let r = export_dit(ck, &cfg, opts, &staging.dir)?;
                check_unused(ck, n)?;
                r
            }
            (NetworkKind::Dit, None) => {
                let s = synthetic
                    .as_ref()
                    .expect("a synthetic source without a checkpoint");
                export_dit(s, &cfg, opts, &staging.dir)?
            }
            (NetworkKind::TextEncoder, Some((_, md))) => {
                export_text_encoder(md, opts, &staging.dir)?
            }
            (NetworkKind::ImageEncoder, Some((_, md))) => {
                export_image_encoder(md, opts, &staging.dir)?
            }
            (NetworkKind::VaeEncoder | NetworkKind::VaeDecoder, Some((_, md))) => {
                let (vcfg, ck) = md.vae()?;
                export_vae(&vcfg, &ck, Some(&ck), opts, &staging.dir, n)?
            }
            (NetworkKind::TextEncoder, None) => {
                // The released UMT5 is bf16: generate it so, as big as the real file.
                let s = SyntheticSource::new("umt5-xxl").with_dtype(wanrt_core::DType::Bfloat16);
                export_text_encoder_synthetic(
                    &wanrt_core::Umt5Config::xxl(),
                    &s,
                    opts,
                    &staging.dir,
                )?
            }
            (NetworkKind::VaeEncoder | NetworkKind::VaeDecoder, None) => {
                let s = synthetic
                    .as_ref()
                    .expect("a synthetic source without a checkpoint");
                export_vae(&VaeConfig::wan21(), s, None, opts, &staging.dir, n)?
            }
            (other, _) => {
                return Err(Error::InvalidArgument {
                    flag: "--networks".into(),
                    reason: format!(
                        "'{other}' cannot be compiled from this source by this version"
                    ),
                });
            }
        };
        manifest.networks.insert(n, entry);
        reports.push(report);
    }
    // Files a network adds beside its graph (tokenizer, cached embeddings).
    let extra: Vec<String> = std::fs::read_dir(&staging.dir)
        .map_err(|e| Error::io(&staging.dir, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    let mpath = Manifest::path(&staging.dir);
    std::fs::write(&mpath, manifest.to_json()).map_err(|e| Error::io(&mpath, e))?;

    // Move into place: every network file first, the manifest last, so a
    // manifest only ever describes files that are all there.
    let mut files: Vec<String> = extra;
    files.retain(|f| f != wanrt_core::manifest::MANIFEST_FILE);
    files.sort();
    files.push(wanrt_core::manifest::MANIFEST_FILE.to_string());
    if opts.overwrite {
        let _ = std::fs::remove_file(Manifest::path(&opts.out));
    }
    for f in &files {
        let (from, to) = (staging.dir.join(f), opts.out.join(f));
        std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
    }
    staging.armed = true;
    drop(staging);
    Ok((manifest, reports))
}
