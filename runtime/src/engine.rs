//! Loading an artifact directory and executing its networks.
//!
//! [`Artifacts::open`] validates the manifest and the files it lists (format
//! version, presence, external-data size, graph digest) before anything is
//! loaded. [`Artifacts::load`] creates a session on the chosen backend;
//! [`Network::run`] checks inputs against the compiled contract, loops over
//! the batch when the engine's batch is fixed, and returns outputs by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use wanrt_core::manifest::NetworkEntry;
use wanrt_core::{DType, Manifest, NetworkKind};

use crate::backend::Backend;
use crate::chunked::ChunkedNetwork;
use crate::error::{Error, Result};
use crate::tensorfile::HostTensor;

/// A validated artifact directory.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Artifacts {
    /// Reads `manifest.json` and checks every file it lists.
    pub fn open(dir: &Path) -> Result<Self> {
        let fail = |reason: String| Error::Artifacts {
            dir: dir.to_path_buf(),
            reason,
        };
        if !dir.is_dir() {
            return Err(fail("not a directory (--engines)".into()));
        }
        let manifest = Manifest::read(dir)?;
        let root = dir
            .canonicalize()
            .map_err(|e| fail(format!("cannot resolve it: {e}")))?;
        for (kind, net) in &manifest.networks {
            let graphs = std::iter::once((&net.file, &net.graph_digest))
                .chain(net.chunks.iter().map(|c| (&c.file, &c.graph_digest)));
            for (file, want) in graphs {
                let graph = resolve_inside(dir, &root, file)
                    .map_err(|e| fail(format!("network {kind}: {e}")))?;
                let digest = wanrt_core::fsio::sha256_file(&graph)
                    .map_err(|e| fail(format!("network {kind}: {}: {e}", graph.display())))?;
                if &digest != want {
                    return Err(fail(format!(
                        "network {kind}: {file} does not match its digest in manifest.json (modified or from another compile)"
                    )));
                }
            }
            if let Some(data) = &net.external_data {
                let p = resolve_inside(dir, &root, data)
                    .map_err(|e| fail(format!("network {kind}: {e}")))?;
                let len = std::fs::metadata(&p)
                    .map_err(|e| fail(format!("network {kind}: {}: {e}", p.display())))?
                    .len();
                if len != net.external_data_bytes {
                    return Err(fail(format!(
                        "network {kind}: {data} has {len} bytes, the manifest says {} (truncated or replaced)",
                        net.external_data_bytes
                    )));
                }
            }
        }
        Ok(Artifacts {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// The path of `file` (relative, from the manifest) after checking that
    /// it resolves to a regular file inside the artifact directory (a
    /// symbolic link to elsewhere is refused).
    pub fn file(&self, file: &str) -> Result<PathBuf> {
        let root = self
            .dir
            .canonicalize()
            .map_err(|e| Error::io(&self.dir, e))?;
        resolve_inside(&self.dir, &root, file).map_err(|reason| Error::Artifacts {
            dir: self.dir.clone(),
            reason,
        })
    }

    pub fn entry(&self, kind: NetworkKind) -> Result<&NetworkEntry> {
        Ok(self.manifest.network(kind, &self.dir)?)
    }

    /// Creates a session for `kind` on `backend`.
    pub fn load(&self, kind: NetworkKind, backend: Backend) -> Result<Network> {
        let entry = self.entry(kind)?.clone();
        crate::backend::check_precisions(
            &self.manifest,
            Some(kind),
            &crate::backend::Resolved {
                backend,
                why: "--backend".into(),
            },
        )?;
        if backend == Backend::OrtTensorRt {
            // Prebuilt engines for this machine, or a typed refusal: the
            // provider must never rebuild them silently.
            let machine = crate::engines::machine_target_lenient(0);
            crate::engines::check_record(&self.dir, &self.manifest, &machine)?;
        }
        let inner = if entry.chunks.is_empty() {
            Inner::Plain(crate::session::create_artifact_graph(
                &self.dir,
                kind.name(),
                &entry.file,
                &entry.graph_digest,
                &entry,
                backend,
            )?)
        } else {
            Inner::Chunked(Box::new(ChunkedNetwork::load(
                &self.dir,
                kind.name(),
                &entry,
                backend,
            )?))
        };
        Ok(Network { kind, entry, inner })
    }
}

/// `dir/file`, required to be a regular file whose canonical path lies
/// under `root` (the canonical `dir`).
fn resolve_inside(dir: &Path, root: &Path, file: &str) -> std::result::Result<PathBuf, String> {
    let p = dir.join(file);
    let real = p
        .canonicalize()
        .map_err(|e| format!("{}: {e}", p.display()))?;
    if !real.starts_with(root) {
        return Err(format!(
            "{file} resolves to {}, outside the artifact directory (symbolic link?)",
            real.display()
        ));
    }
    wanrt_core::fsio::require_regular(&real).map_err(|e| format!("{file} {e}"))?;
    Ok(p)
}

/// A loaded network.
pub struct Network {
    pub kind: NetworkKind,
    pub entry: NetworkEntry,
    inner: Inner,
}

enum Inner {
    Plain(ort::session::Session),
    /// The VAE: first-chunk and steady-state graphs driven chunk by chunk.
    Chunked(Box<ChunkedNetwork>),
}

impl Network {
    /// The engine's batch when it is static.
    pub fn fixed_batch(&self) -> Option<u64> {
        self.entry.profile.batch.fixed().map(u64::from)
    }

    /// For a chunked network (the VAE), runs `input` and hands each chunk's
    /// output to `sink` as soon as it exists (constant memory in the number
    /// of frames).
    pub fn run_streaming(
        &mut self,
        input: &HostTensor,
        sink: impl FnMut(HostTensor) -> Result<()>,
    ) -> Result<()> {
        let spec = &self.entry.inputs[0];
        spec.check(self.kind.name(), input.dtype, &input.shape)?;
        match &mut self.inner {
            Inner::Chunked(c) => c.run_streaming(input, sink),
            Inner::Plain(_) => Err(Error::arg(
                "network",
                format!("{} is not a chunked network", self.kind),
            )),
        }
    }

    /// Runs the network on `inputs` (by contract name; extra tensors are
    /// ignored). Any batch size works: a fixed-batch engine is called once
    /// per slice.
    pub fn run(
        &mut self,
        inputs: &BTreeMap<String, HostTensor>,
    ) -> Result<BTreeMap<String, HostTensor>> {
        let net = self.kind.name();
        let mut batch = None;
        let mut ordered = Vec::new();
        for spec in &self.entry.inputs {
            let t = inputs.get(&spec.name).ok_or_else(|| {
                Error::Core(wanrt_core::Error::ContractMismatch {
                    network: net.into(),
                    tensor: spec.name.clone(),
                    reason: "missing from the input".into(),
                })
            })?;
            spec.check(net, t.dtype, &t.shape)?;
            match batch {
                None => batch = Some(t.shape[0]),
                Some(b) if b != t.shape[0] => {
                    return Err(Error::Core(wanrt_core::Error::ContractMismatch {
                        network: net.into(),
                        tensor: spec.name.clone(),
                        reason: format!("batch {} differs from the other inputs' {b}", t.shape[0]),
                    }));
                }
                _ => {}
            }
            ordered.push((spec.name.clone(), t));
        }
        let batch = batch.unwrap_or(1);
        let step = self.fixed_batch().unwrap_or(batch);
        let session = match &mut self.inner {
            Inner::Plain(s) => s,
            Inner::Chunked(c) => {
                let (_, t) = ordered.first().ok_or_else(|| Error::Inference {
                    network: net.into(),
                    reason: "no input".into(),
                })?;
                return c.run(t);
            }
        };
        if batch % step != 0 {
            return Err(Error::Core(wanrt_core::Error::ContractMismatch {
                network: net.into(),
                tensor: ordered.first().map(|(n, _)| n.clone()).unwrap_or_default(),
                reason: format!(
                    "batch {batch} is not a multiple of the engine's fixed batch {step}"
                ),
            }));
        }
        let mut chunks: Vec<BTreeMap<String, HostTensor>> = Vec::new();
        for start in (0..batch).step_by(step as usize) {
            let slice: Vec<(String, HostTensor)> = ordered
                .iter()
                .map(|(n, t)| {
                    let t = if step == batch {
                        (*t).clone()
                    } else {
                        t.slice_batch(start, start + step)
                    };
                    (n.clone(), t)
                })
                .collect();
            chunks.push(crate::session::run(session, net, &slice)?);
        }
        let mut out = BTreeMap::new();
        let names: Vec<String> = chunks
            .first()
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default();
        for name in names {
            let parts: Vec<HostTensor> =
                chunks.iter_mut().filter_map(|c| c.remove(&name)).collect();
            let joined = HostTensor::concat_batch(&parts).ok_or_else(|| Error::Inference {
                network: net.into(),
                reason: format!("output {name} changed shape between batch slices"),
            })?;
            out.insert(name, joined);
        }
        Ok(out)
    }

    /// The dtype the contract gives an input.
    pub fn input_dtype(&self, name: &str) -> Option<DType> {
        self.entry
            .inputs
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.dtype)
    }
}
