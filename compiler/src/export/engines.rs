//! `wan-compile --engine tensorrt`: TensorRT engines built ahead of time.
//!
//! Each graph written to the staging directory gets a session on ONNX
//! Runtime's TensorRT provider with the engine cache and the timing cache
//! pointed at `staging/engines/` and a cache prefix carrying our digest of
//! graph and weights (the provider's own key ignores weight values); one run
//! on zero inputs makes the provider build and serialise every engine. The
//! files that appear are recorded in the manifest with sizes and digests,
//! keyed to the GPU and library versions they were built for
//! (`wanrt_core::engines`). The engine cache was chosen over EP-context
//! models because EP-context models above 2 GiB cannot embed the engine,
//! which every real DiT exceeds, and the cache keeps the plain ONNX graphs
//! usable on the other backends.
//!
//! This needs a GPU, the `onnxruntime-gpu` build and TensorRT 10.x; where
//! any is missing the compile is refused before `--out` is touched.

use std::collections::BTreeMap;
use std::path::Path;

use wanrt_core::engines::{
    ENGINE_DIR, EngineFile, EngineKind, EngineRecord, EngineTarget, NetworkEngines,
};
use wanrt_core::manifest::NetworkEntry;
use wanrt_core::{Manifest, NetworkKind};
use wanrt_runtime::Backend;
use wanrt_runtime::engines::TrtCache;
use wanrt_runtime::placement::zero_inputs;
use wanrt_runtime::session::{SessionSetup, create_with};

use crate::error::{Error, Result};

/// Which engines `--engine` asks for.
pub fn probe(kind: EngineKind) -> Result<EngineTarget> {
    match kind {
        EngineKind::Tensorrt => {
            wanrt_runtime::engines::machine_target(0).map_err(|e| Error::Engine {
                what: "--engine tensorrt".into(),
                source: e,
            })
        }
    }
}

/// Builds the engines of one graph and returns its cache prefix.
fn build_graph(
    staging: &Path,
    kind: NetworkKind,
    file: &str,
    graph_digest: &str,
    entry: &NetworkEntry,
    inputs: &[wanrt_core::TensorSpec],
) -> Result<String> {
    let prefix = TrtCache::for_graph(staging, kind.name(), graph_digest, entry).prefix;
    let engine = |e| Error::Engine {
        what: format!("building the TensorRT engines of {file}"),
        source: e,
    };
    let setup = SessionSetup::for_artifact_graph(
        staging,
        kind.name(),
        graph_digest,
        entry,
        Backend::OrtTensorRt,
    );
    let mut session =
        create_with(&staging.join(file), Backend::OrtTensorRt, &setup).map_err(engine)?;
    let batch = entry.profile.batch.fixed().map(u64::from).unwrap_or(1);
    wanrt_runtime::session::run(&mut session, kind.name(), &zero_inputs(inputs, batch))
        .map_err(engine)?;
    Ok(prefix)
}

fn file_record(staging: &Path, name: &str) -> Result<EngineFile> {
    let p = staging.join(ENGINE_DIR).join(name);
    let bytes = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?.len();
    let digest = wanrt_core::fsio::sha256_file(&p).map_err(|e| Error::io(&p, e))?;
    Ok(EngineFile {
        file: format!("{ENGINE_DIR}/{name}"),
        bytes,
        digest,
    })
}

/// Builds every network's engines into `staging/engines` and returns the
/// manifest's record of them.
pub fn build(
    staging: &Path,
    manifest: &Manifest,
    kind: EngineKind,
    target: EngineTarget,
) -> Result<EngineRecord> {
    let dir = staging.join(ENGINE_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut networks = BTreeMap::new();
    let mut profile = String::new();
    for (net, entry) in &manifest.networks {
        profile = entry.profile.name.clone();
        let mut prefixes = Vec::new();
        // The DiT's stage graphs are what the runtime loads; the whole graph
        // (debug outputs, the stages' reference) is built only without them.
        if !entry.stages.is_empty() {
            // The step-cache graphs run beside them (tiny engines).
            for st in entry.stages.iter().chain(&entry.cache_graphs) {
                prefixes.push(build_graph(
                    staging,
                    *net,
                    &st.file,
                    &st.graph_digest,
                    entry,
                    &st.inputs,
                )?);
            }
        } else if entry.chunks.is_empty() {
            prefixes.push(build_graph(
                staging,
                *net,
                &entry.file,
                &entry.graph_digest,
                entry,
                &entry.inputs,
            )?);
        } else {
            for c in &entry.chunks {
                prefixes.push(build_graph(
                    staging,
                    *net,
                    &c.file,
                    &c.graph_digest,
                    entry,
                    &c.inputs,
                )?);
            }
        }
        networks.insert(
            *net,
            NetworkEngines {
                cache_prefixes: prefixes,
                graph_digest: entry.graph_digest.clone(),
                weights_digest: entry.weights_digest.clone(),
                precision: entry.precision,
                files: Vec::new(),
            },
        );
    }
    // Assign every file the provider wrote: to the network whose prefix it
    // carries, the rest (the timing cache) shared.
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    let mut timing_cache = None;
    for name in names {
        let owner = networks.values_mut().find(|n| {
            n.cache_prefixes
                .iter()
                .any(|p| name.starts_with(p.as_str()))
        });
        let rec = file_record(staging, &name)?;
        match owner {
            Some(n) => n.files.push(rec),
            None => timing_cache = Some(rec),
        }
    }
    for (net, n) in &networks {
        if n.files.is_empty() {
            return Err(Error::Engine {
                what: format!("--engine {kind}"),
                source: wanrt_runtime::Error::EngineMismatch {
                    dir: dir.clone(),
                    reason: format!(
                        "the TensorRT provider wrote no engine for {net} (prefixes {:?})",
                        n.cache_prefixes
                    ),
                },
            });
        }
    }
    Ok(EngineRecord {
        kind,
        target,
        profile,
        networks,
        timing_cache,
    })
}
