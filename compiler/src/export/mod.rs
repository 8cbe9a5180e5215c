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

use wanrt_core::manifest::{ModelInfo, NetworkEntry, Tools};
use wanrt_core::{
    AttentionKind, DType, DitConfig, Manifest, NetworkContract, NetworkKind, Precision, Profile,
    Quantization, VaeConfig,
};
use wanrt_graphs::clip::{self, ClipOptions};
use wanrt_graphs::dit::{self, DitOptions};
use wanrt_graphs::names;
use wanrt_graphs::onnx::{IR_VERSION, OPSET};
use wanrt_graphs::t5::{self, T5Options};
use wanrt_graphs::{GraphBuilder, WeightSource, Weights};

use crate::checkpoint::{Checkpoint, ModelDir};
use crate::error::{Error, Result};
use crate::lora::{LoraFile, LoraMerge, LoraSpec};
use crate::quant::QuantOptions;
use crate::synthetic::SyntheticSource;

mod encoders;
pub mod engines;
mod vae;
use self::vae::export_vae;
use encoders::{export_image_encoder, export_text_encoder, export_text_encoder_synthetic};

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
    /// Also build GPU engines ahead of time (`--engine tensorrt`).
    pub engine: Option<wanrt_core::engines::EngineKind>,
    /// LoRAs merged into the DiT, in order (`--lora FILE[:SCALE]`).
    pub loras: Vec<LoraSpec>,
    /// Merge the keys that match and record the others instead of failing
    /// (`--lora-ignore-unmatched`).
    pub lora_ignore_unmatched: bool,
    /// How the DiT writes attention (`--attention`); `None` is `auto`
    /// ([`AttentionKind::auto`]).
    pub attention: Option<AttentionKind>,
    /// Quantize the DiT's block linears (`--precision fp8|int8`);
    /// `precision` is then the base precision of the DiT and the precision
    /// of the other networks.
    pub quant: Option<QuantOptions>,
    /// Give the whole DiT graph one `calibration.<linear>` amax output per
    /// linear of this set, and no stage graphs (what calibration compiles).
    pub calibration_taps: Option<wanrt_core::QuantLayers>,
}

impl CompileOptions {
    /// Options with the defaults of `wan-compile`: every network the model
    /// has, bf16 graphs with an fp32 VAE, the negative prompt cached, no
    /// overwrite, no progress display, no interrupt flag.
    pub fn new(model: ModelSource, out: impl Into<PathBuf>, profile: Profile) -> Self {
        CompileOptions {
            model,
            out: out.into(),
            profile,
            precision: Precision::Bf16,
            vae_precision: Precision::Fp32,
            cache_negative_prompt: true,
            networks: Vec::new(),
            debug_outputs: false,
            overwrite: false,
            show_progress: false,
            interrupt: None,
            engine: None,
            loras: Vec::new(),
            lora_ignore_unmatched: false,
            attention: None,
            quant: None,
            calibration_taps: None,
        }
    }

    /// The DiT's attention formulation (`None`: chosen from the precision
    /// and `--engine`, [`AttentionKind::auto`]).
    pub fn with_attention(mut self, kind: Option<AttentionKind>) -> Self {
        self.attention = kind;
        self
    }

    /// The formulation the DiT is written with (`auto`: from the precision,
    /// `--engine` and the profile's token count), or why `--attention` cannot
    /// be honoured: the contrib op and the matmul form are fp32 CPU
    /// formulations (ONNX Runtime's CPU `MultiHeadAttention` has no half
    /// kernel; a TensorRT engine would run them outside its fused
    /// attention).
    pub fn dit_attention(&self) -> Result<AttentionKind> {
        let Some(kind) = self.attention else {
            let tokens = self.profile.tokens();
            return Ok(AttentionKind::auto(
                self.precision,
                self.engine.is_some(),
                tokens,
            ));
        };
        if kind != AttentionKind::Onnx {
            if self.precision.compute_dtype() != DType::Float32 {
                return Err(Error::InvalidArgument {
                    flag: "--attention".into(),
                    reason: format!(
                        "{kind} is a formulation for float32 graphs on ONNX Runtime's CPU \
                         provider; --precision {} graphs are for GPUs: use --attention onnx or auto",
                        self.precision
                    ),
                });
            }
            if self.engine.is_some() {
                return Err(Error::InvalidArgument {
                    flag: "--attention".into(),
                    reason: format!(
                        "{kind} would run outside TensorRT's fused attention in the engines \
                         --engine builds: use --attention onnx or auto"
                    ),
                });
            }
        }
        Ok(kind)
    }

    /// Quantizes the DiT's block linears (FP8 needs calibration options).
    pub fn with_quantization(mut self, quant: Option<QuantOptions>) -> Self {
        self.quant = quant;
        self
    }

    pub fn with_engine(mut self, engine: Option<wanrt_core::engines::EngineKind>) -> Self {
        self.engine = engine;
        self
    }

    /// Merges `lora` into the DiT after the LoRAs given before it.
    pub fn with_lora(mut self, lora: LoraSpec) -> Self {
        self.loras.push(lora);
        self
    }

    /// Keys of a LoRA that modify no tensor are recorded, not refused.
    pub fn with_lora_ignore_unmatched(mut self, ignore: bool) -> Self {
        self.lora_ignore_unmatched = ignore;
        self
    }

    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    pub fn with_vae_precision(mut self, precision: Precision) -> Self {
        self.vae_precision = precision;
        self
    }

    pub fn with_networks(mut self, networks: impl IntoIterator<Item = NetworkKind>) -> Self {
        self.networks = networks.into_iter().collect();
        self
    }

    pub fn with_overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    pub fn with_debug_outputs(mut self, debug: bool) -> Self {
        self.debug_outputs = debug;
        self
    }

    pub fn with_negative_cache(mut self, cache: bool) -> Self {
        self.cache_negative_prompt = cache;
        self
    }

    /// Show progress bars on stderr.
    pub fn with_progress(mut self, show: bool) -> Self {
        self.show_progress = show;
        self
    }

    /// Stop with `ErrorKind::Interrupted` once `flag` is set (Ctrl-C).
    pub fn with_interrupt(mut self, flag: Arc<AtomicBool>) -> Self {
        self.interrupt = Some(flag);
        self
    }
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

/// The networks this version compiles (the others are refused with a typed
/// error naming `--networks`).
pub const SUPPORTED: &[NetworkKind] = &[
    NetworkKind::Dit,
    NetworkKind::TextEncoder,
    NetworkKind::ImageEncoder,
    NetworkKind::VaeEncoder,
    NetworkKind::VaeDecoder,
];

/// Removes the staging directory when dropped (after success it is empty;
/// after an error or interrupt it holds the partial output), and the
/// `--out` directory itself when this compile created it and failed.
struct Staging {
    dir: PathBuf,
    created_out: Option<PathBuf>,
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(out) = &self.created_out {
            // remove_dir only removes an empty directory.
            let _ = std::fs::remove_dir(out);
        }
    }
}

/// Prefix of the staging directories inside `--out`; the process id
/// follows, so a leftover of a killed compile can be told from a live one.
pub const STAGING_PREFIX: &str = ".wanrt-staging-";

/// Removes `.wanrt-staging-<pid>` directories of processes that no longer
/// run (a compile killed by SIGKILL or a power cut); returns how many.
pub fn clean_stale_staging(out: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(out) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(STAGING_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid != std::process::id() && wanrt_core::fsio::pid_alive(pid);
        if !alive
            && e.file_type().is_ok_and(|t| t.is_dir())
            && std::fs::remove_dir_all(e.path()).is_ok()
        {
            n += 1;
        }
    }
    n
}

/// The files an artifact directory's manifest says are wanrt's (the only
/// ones `--overwrite` may replace). Read leniently: a manifest of another
/// version still names its files.
fn files_of_manifest(out: &Path) -> std::collections::HashSet<String> {
    let mut ours = std::collections::HashSet::new();
    let Ok(text) = wanrt_core::fsio::read_capped_string(
        &Manifest::path(out),
        wanrt_core::manifest::MAX_MANIFEST_BYTES,
    ) else {
        return ours;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return ours;
    };
    ours.insert(wanrt_core::manifest::MANIFEST_FILE.to_string());
    let plain = |s: &str| !s.is_empty() && !s.contains('/') && s != "..";
    if let Some(nets) = v.get("networks").and_then(|n| n.as_object()) {
        for net in nets.values() {
            let chunks = ["chunks", "stages", "cache_graphs"]
                .iter()
                .filter_map(|k| net.get(*k).and_then(|c| c.as_array()))
                .flatten();
            let names = ["file", "external_data"]
                .iter()
                .filter_map(|k| net.get(*k))
                .chain(chunks.filter_map(|c| c.get("file")))
                .chain(
                    ["tokenizer", "negative_prompt_embeds"]
                        .iter()
                        .filter_map(|k| net.get("config").and_then(|c| c.get(*k))),
                );
            for n in names.filter_map(|n| n.as_str()).filter(|n| plain(n)) {
                ours.insert(n.to_string());
            }
        }
    }
    ours
}

fn file_digest(bytes: &[u8]) -> String {
    wanrt_core::fsio::sha256_bytes(bytes)
}

fn tools() -> Tools {
    Tools {
        wanrt: env!("CARGO_PKG_VERSION").to_string(),
        onnx_opset: OPSET,
        onnx_ir_version: IR_VERSION,
    }
}

/// Prepares `out`: a directory we may write into, holding no artifacts
/// (unless `overwrite`) and nothing else of the user's (an existing
/// non-empty directory without a wanrt manifest is refused without
/// `overwrite`; with it, [`compile`] still never replaces a file that is
/// not one of ours). Stale staging directories of dead compiles are removed.
fn prepare_out(out: &Path, overwrite: bool) -> Result<Staging> {
    let fail = |reason: String| Error::Output {
        dir: out.to_path_buf(),
        reason,
    };
    let created_out = match std::fs::metadata(out) {
        Ok(m) if m.is_dir() => None,
        Ok(m) => {
            return Err(fail(format!(
                "is {}, not a directory (--out)",
                wanrt_core::fsio::describe_type(&m.file_type())
            )));
        }
        Err(_) => {
            std::fs::create_dir_all(out)
                .map_err(|e| fail(format!("cannot create it: {e} (--out)")))?;
            Some(out.to_path_buf())
        }
    };
    let cleaned = clean_stale_staging(out);
    if cleaned > 0 {
        eprintln!(
            "wan-compile: removed {cleaned} staging director{} left by an interrupted compile",
            if cleaned == 1 { "y" } else { "ies" }
        );
    }
    let has_manifest = Manifest::path(out).exists();
    if has_manifest && !overwrite {
        return Err(fail(
            "it already holds compiled artifacts (manifest.json); pass --overwrite to replace them"
                .into(),
        ));
    }
    if !has_manifest && !overwrite {
        let user_file = std::fs::read_dir(out)
            .map_err(|e| fail(format!("cannot list it: {e} (--out)")))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| !n.starts_with(STAGING_PREFIX));
        if let Some(f) = user_file {
            return Err(fail(format!(
                "it is not empty (it holds '{f}') and has no wanrt manifest; choose an empty or new directory, \
                 or pass --overwrite (files that are not wanrt's are never replaced)"
            )));
        }
    }
    let dir = out.join(format!("{STAGING_PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).map_err(|e| fail(format!("not writable: {e} (--out)")))?;
    Ok(Staging { dir, created_out })
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

/// A graph builder for network `name` streaming its weights to
/// `staging/<name>.onnx.data`, with the compile's progress bar and interrupt
/// flag attached. Every export (single-graph or chunked) starts here.
fn start_builder<'a>(
    name: &str,
    opts: &'a CompileOptions,
    staging: &Path,
    pb: &'a indicatif::ProgressBar,
) -> Result<GraphBuilder<'a>> {
    let data_file = format!("{name}.onnx.data");
    let mut builder =
        GraphBuilder::new(name, Some(&staging.join(&data_file)))?.with_progress(|n| pb.inc(n));
    if let Some(flag) = &opts.interrupt {
        builder = builder.with_interrupt(flag);
    }
    Ok(builder)
}

/// Writes one graph's proto to `staging/file`, synced to disk before the
/// manifest can name it; returns its size and `sha256:` digest.
fn write_graph(
    staging: &Path,
    file: &str,
    model: &wanrt_graphs::onnx::ModelProto,
) -> Result<(u64, String)> {
    let bytes = model.to_bytes();
    let path = staging.join(file);
    let mut f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(&path, e))?;
    Ok((bytes.len() as u64, file_digest(&bytes)))
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
    let mut builder = start_builder(name, opts, staging, &pb)?;
    build(&mut builder)?;
    let exported = builder.finish(&job.doc)?;
    pb.finish_and_clear();
    let nodes = exported.model.graph.as_ref().map_or(0, |g| g.node.len());
    let (graph_bytes, graph_digest) = write_graph(staging, &onnx_file, &exported.model)?;
    let entry = NetworkEntry {
        file: onnx_file,
        external_data: Some(data_file),
        external_data_bytes: exported.external_data_bytes,
        precision: opts.precision,
        profile: opts.profile.clone(),
        config: job.config,
        weights_digest: exported.weights_digest,
        graph_digest,
        inputs: job.contract.inputs,
        outputs: job.contract.outputs,
        tools: tools(),
        chunks: vec![],
        loras: vec![],
        stages: vec![],
        cache_graphs: vec![],
        attention: AttentionKind::Onnx,
        quantization: None,
    };
    let report = NetworkReport {
        network: job.kind,
        graph_bytes,
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

fn quant_doc(q: Option<&Quantization>) -> String {
    match q {
        Some(q) => format!(", {} block linears ({})", q.scheme, q.layers),
        None => String::new(),
    }
}

/// Exports the DiT: the whole graph (`dit.onnx`: debug outputs, dumps, the
/// reference for the stages) and its stage graphs (`dit.<stage>.onnx`, what
/// the runtime runs), all sharing one weight file: each weight is
/// converted and written once.
fn export_dit(
    source: &dyn WeightSource,
    cfg: &DitConfig,
    opts: &CompileOptions,
    quant: Option<&Quantization>,
    staging: &Path,
) -> Result<(NetworkEntry, NetworkReport)> {
    let start = Instant::now();
    let name = NetworkKind::Dit.name();
    let contract = NetworkContract::dit(cfg, &opts.profile)?;
    // With --debug-outputs the whole graph is what gets run (its
    // intermediates are outputs of that graph only): no stage graphs.
    let stages = if opts.debug_outputs || opts.calibration_taps.is_some() {
        Vec::new()
    } else {
        NetworkContract::dit_stages(cfg, &opts.profile)?
    };
    let data_file = format!("{name}.onnx.data");
    let pb = progress_bar(opts.show_progress, name);
    let attention = opts.dit_attention()?;
    let mut builder = GraphBuilder::new(name, Some(&staging.join(&data_file)))?
        .with_progress(|n| pb.inc(n))
        .with_attention(attention);
    if let Some(flag) = &opts.interrupt {
        builder = builder.with_interrupt(flag);
    }
    let doc = format!(
        "Wan2.1 DiT ({}), {}, attention {attention}{}",
        cfg.task.name(),
        precision_doc(opts),
        quant_doc(quant)
    );
    let dopts = DitOptions {
        precision: opts.precision,
        debug_outputs: opts.debug_outputs,
        quant: quant.map(|q| wanrt_graphs::quant::QuantPlan {
            scheme: q.scheme,
            layers: q.layers,
            activation_scales: q.activation_scales.clone(),
        }),
        calibration_taps: opts.calibration_taps,
    };
    let write =
        |file: &str, model: &wanrt_graphs::onnx::ModelProto| -> Result<(String, u64, usize)> {
            let bytes = model.to_bytes();
            let path = staging.join(file);
            let mut f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
            f.write_all(&bytes)
                .and_then(|_| f.sync_all())
                .map_err(|e| Error::io(&path, e))?;
            let nodes = model.graph.as_ref().map_or(0, |g| g.node.len());
            Ok((file_digest(&bytes), bytes.len() as u64, nodes))
        };
    dit::build(
        &mut builder,
        Weights::new(source),
        cfg,
        &opts.profile,
        &dopts,
    )?;
    let file = format!("{name}.onnx");
    let (graph_digest, mut graph_bytes, nodes) = write(&file, &builder.take_graph(name, &doc))?;
    let mut stage_graphs = Vec::new();
    for (stage, c) in stages {
        dit::build_stage_with(
            &mut builder,
            Weights::new(source),
            cfg,
            &opts.profile,
            &dopts,
            stage,
        )?;
        let sfile = format!("{name}.{}.onnx", stage.name());
        let model = builder.take_graph(
            &format!("{name}_{}", stage.name()),
            &format!("{doc}, stage {stage}"),
        );
        let (digest, bytes, _) = write(&sfile, &model)?;
        graph_bytes += bytes;
        stage_graphs.push(wanrt_core::manifest::ChunkGraph {
            role: stage.name().into(),
            file: sfile,
            graph_digest: digest,
            inputs: c.inputs,
            outputs: c.outputs,
        });
    }
    // The step-cache graphs (no weights) beside the stages, which they
    // serve (docs/WAN.md §15).
    let mut cache_graphs = Vec::new();
    if !stage_graphs.is_empty() {
        for (graph, c) in NetworkContract::dit_cache_graphs(cfg, &opts.profile)? {
            wanrt_graphs::cache::build(&mut builder, cfg, &opts.profile, graph)?;
            let file = format!("{name}.{}.onnx", graph.name());
            let model = builder.take_graph(
                &format!("{name}_{}", graph.name()),
                &format!("Wan2.1 DiT ({}), step cache: {graph}", cfg.task.name()),
            );
            let (digest, bytes, _) = write(&file, &model)?;
            graph_bytes += bytes;
            cache_graphs.push(wanrt_core::manifest::ChunkGraph {
                role: graph.name().into(),
                file,
                graph_digest: digest,
                inputs: c.inputs,
                outputs: c.outputs,
            });
        }
    }
    let (weights_digest, external_data_bytes, _) = builder.finish_external()?;
    pb.finish_and_clear();
    let mut contract = contract;
    if let Some(layers) = opts.calibration_taps {
        // The taps are outputs of the whole graph: list them so the runtime
        // accepts (and returns) them.
        contract.outputs.extend(calibration_outputs(cfg, layers));
    }
    let entry = NetworkEntry {
        file,
        external_data: Some(data_file),
        external_data_bytes,
        precision: opts.precision,
        profile: opts.profile.clone(),
        config: serde_json::to_value(cfg).expect("config serialises"),
        weights_digest,
        graph_digest,
        inputs: contract.inputs,
        outputs: contract.outputs,
        tools: tools(),
        chunks: vec![],
        stages: stage_graphs,
        cache_graphs,
        quantization: quant.cloned(),
        loras: vec![],
        attention,
    };
    let report = NetworkReport {
        network: NetworkKind::Dit,
        graph_bytes,
        weight_bytes: external_data_bytes,
        nodes,
        elapsed: start.elapsed(),
    };
    Ok((entry, report))
}

/// The `calibration.<linear>` outputs `[batch]` of a tapped DiT graph, in
/// block order.
fn calibration_outputs(
    cfg: &DitConfig,
    layers: wanrt_core::QuantLayers,
) -> Vec<wanrt_core::TensorSpec> {
    let mut names = vec!["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o"];
    names.extend(["cross_attn.q", "cross_attn.k", "cross_attn.v"]);
    if cfg.task.has_image() {
        names.extend(["cross_attn.k_img", "cross_attn.v_img"]);
    }
    names.extend(["cross_attn.o", "ffn.0", "ffn.2"]);
    // VACE: the VACE blocks (same linears) after the main blocks.
    let blocks = (0..cfg.num_layers)
        .map(|i| format!("blocks.{i}"))
        .chain((0..cfg.vace_layers.len()).map(|j| format!("vace_blocks.{j}")));
    blocks
        .flat_map(|block| names.iter().map(move |n| format!("{block}.{n}")))
        .filter(|p| layers.covers(p))
        .map(|p| wanrt_core::TensorSpec {
            name: wanrt_graphs::quant::tap_output(&p),
            dtype: wanrt_core::DType::Float32,
            shape: vec![wanrt_core::Dim::Batch],
        })
        .collect()
}

/// Exports the DiT with `loras` merged into its weights while they stream
/// (before quantizing: the merged weights are what gets quantized).
fn export_dit_merged(
    source: &dyn WeightSource,
    loras: &[LoraFile],
    cfg: &DitConfig,
    opts: &CompileOptions,
    quant: Option<&Quantization>,
    staging: &Path,
) -> Result<(NetworkEntry, NetworkReport)> {
    if loras.is_empty() {
        return export_dit(source, cfg, opts, quant, staging);
    }
    let merge = LoraMerge::new(source, loras);
    let exported = export_dit(&merge, cfg, opts, quant, staging);
    if let Some(e) = merge.take_failure() {
        return Err(e);
    }
    let (mut entry, report) = exported?;
    entry.loras = merge.finish(opts.lora_ignore_unmatched)?;
    Ok((entry, report))
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
                    reason: format!(
                        "unknown preset '{preset}' (t2v-1.3B, t2v-14B, i2v-14B, flf2v-14B, vace-1.3B, vace-14B)"
                    ),
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

    // LoRAs: open and check them against the checkpoint before writing.
    if !opts.loras.is_empty() && !networks.contains(&NetworkKind::Dit) {
        return Err(Error::InvalidArgument {
            flag: "--lora".into(),
            reason: "LoRAs are merged into the DiT, which --networks leaves out".into(),
        });
    }
    let loras = opts
        .loras
        .iter()
        .map(LoraFile::open)
        .collect::<Result<Vec<_>>>()?;
    if let (false, Some((ck, _))) = (loras.is_empty(), &checkpoint) {
        let unmatched = LoraMerge::precheck(&loras, &ck.canonical_shapes())?;
        if !opts.lora_ignore_unmatched {
            crate::lora::refuse_unmatched(&loras, &unmatched)?;
        }
    }

    // Quantization: the DiT's, checked before --out is touched.
    if let Some(q) = &opts.quant {
        if !networks.contains(&NetworkKind::Dit) {
            return Err(Error::InvalidArgument {
                flag: "--precision".into(),
                reason: format!(
                    "{} quantizes the DiT, which --networks leaves out",
                    q.scheme
                ),
            });
        }
        q.check(opts.precision)?;
        if q.scheme == wanrt_core::QuantScheme::Int8 && opts.engine.is_some() {
            return Err(Error::InvalidArgument {
                flag: "--engine".into(),
                reason: "INT8 engines are for ONNX Runtime's CPU provider (MatMulInteger);                          TensorRT engines take --precision fp8, bf16 or fp16"
                    .into(),
            });
        }
    }

    // Engines need a GPU and TensorRT: refuse before --out is touched.
    let engine_target = match opts.engine {
        Some(kind) => Some((kind, engines::probe(kind)?)),
        None => None,
    };
    let mut staging = prepare_out(&opts.out, opts.overwrite)?;
    let mut manifest = Manifest::new(info);
    let mut reports = Vec::new();
    let quantization = match &opts.quant {
        Some(q) => Some(match &q.calibration {
            Some(cal) => crate::quant::calibrate(opts, q, cal, &staging.dir)?,
            None => Quantization {
                scheme: q.scheme,
                layers: q.layers,
                activation_scales: Default::default(),
                calibration: None,
            },
        }),
        None => None,
    };
    let quantization = quantization.as_ref();
    for n in networks {
        let (entry, report) = match (n, &checkpoint) {
            (NetworkKind::Dit, Some((ck, _))) => {
                let r = export_dit_merged(ck, &loras, &cfg, opts, quantization, &staging.dir)?;
                check_unused(ck, n)?;
                r
            }
            (NetworkKind::Dit, None) => {
                let s = synthetic
                    .as_ref()
                    .expect("a synthetic source without a checkpoint");
                export_dit_merged(s, &loras, &cfg, opts, quantization, &staging.dir)?
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
    if let Some((kind, target)) = engine_target {
        manifest.engines = Some(engines::build(&staging.dir, &manifest, kind, target)?);
    }
    // Files a network adds beside its graph (tokenizer, cached embeddings,
    // the engines directory).
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
    // Only our own regular files are ever replaced: anything at a target
    // name that the old manifest does not list (or that is not a regular
    // file) stops the compile before a single file is moved.
    let ours = files_of_manifest(&opts.out);
    for f in &files {
        let to = opts.out.join(f);
        match std::fs::symlink_metadata(&to) {
            Err(_) => {}
            Ok(m) if m.is_file() && ours.contains(f) && opts.overwrite => {}
            Ok(m) => {
                return Err(Error::Output {
                    dir: opts.out.clone(),
                    reason: format!(
                        "'{f}' exists and is {} that is not one of this directory's wanrt artifacts; \
                         it is never replaced (move it away or choose another --out)",
                        wanrt_core::fsio::describe_type(&m.file_type())
                    ),
                });
            }
        }
    }
    if opts.overwrite {
        let _ = std::fs::remove_file(Manifest::path(&opts.out));
    }
    for f in &files {
        let (from, to) = (staging.dir.join(f), opts.out.join(f));
        std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
    }
    // Everything moved: remove the (now empty) staging directory, keep --out.
    staging.created_out = None;
    drop(staging);
    Ok((manifest, reports))
}

#[cfg(test)]
mod attention_tests {
    use super::*;

    /// Options at 480p (32,760 tokens: `auto` picks the CPU formulation).
    fn opts(precision: Precision) -> CompileOptions {
        CompileOptions::new(
            ModelSource::Synthetic("t2v-1.3B".into()),
            "/nonexistent",
            Profile::builtin("480p").unwrap(),
        )
        .with_precision(precision)
    }

    #[test]
    fn auto_and_explicit_attention_and_the_refusals() {
        let tensorrt = Some(wanrt_core::engines::EngineKind::Tensorrt);
        assert_eq!(
            opts(Precision::Fp32).dit_attention().unwrap(),
            AttentionKind::Mha
        );
        assert_eq!(
            opts(Precision::Bf16).dit_attention().unwrap(),
            AttentionKind::Onnx
        );
        let trt = opts(Precision::Fp32).with_engine(tensorrt);
        assert_eq!(trt.dit_attention().unwrap(), AttentionKind::Onnx);
        let mut short = opts(Precision::Fp32);
        short.profile = Profile::custom(32, 32, 9, 16).unwrap();
        assert_eq!(short.dit_attention().unwrap(), AttentionKind::Onnx);
        for kind in AttentionKind::ALL {
            let o = opts(Precision::Fp32).with_attention(Some(kind));
            assert_eq!(o.dit_attention().unwrap(), kind);
        }
        for kind in [AttentionKind::Mha, AttentionKind::Matmul] {
            for o in [
                opts(Precision::Fp16).with_attention(Some(kind)),
                opts(Precision::Fp32)
                    .with_engine(tensorrt)
                    .with_attention(Some(kind)),
            ] {
                let e = o.dit_attention().unwrap_err();
                assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{e}");
                let msg = e.to_string();
                assert!(msg.starts_with("--attention:"), "{msg}");
                assert!(msg.contains("--attention onnx"), "{msg}");
            }
        }
        let o = opts(Precision::Bf16).with_attention(Some(AttentionKind::Onnx));
        assert_eq!(o.dit_attention().unwrap(), AttentionKind::Onnx);
    }
}
