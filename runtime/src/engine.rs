//! Loading an artifact directory and executing its networks.
//!
//! [`Artifacts::open`] validates the manifest and the files it lists (format
//! version, presence, external-data size, graph digest) before anything is
//! loaded. [`Artifacts::load`] creates the sessions on the chosen backend
//! (the DiT's stage graphs, the VAE's chunk graphs, or one graph);
//! [`Network::run`] checks inputs against the compiled contract, loops over
//! the batch when the engine's batch is fixed, and returns outputs by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use wanrt_core::manifest::NetworkEntry;
use wanrt_core::{DType, Manifest, NetworkKind, TensorSpec};

use crate::backend::Backend;
use crate::chunked::ChunkedNetwork;
use crate::dit::StagedDit;
use crate::error::{Error, Result};
use crate::exec::{ExecutionSettings, SessionRole};
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
        let root = dir
            .canonicalize()
            .map_err(|e| fail(format!("cannot resolve it: {e}")))?;
        let manifest = Manifest::read(dir)?;
        for (kind, net) in &manifest.networks {
            for (file, want) in net.graph_files() {
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

    /// Creates a session for `kind` on `backend` with the default
    /// [`ExecutionSettings`].
    pub fn load(&self, kind: NetworkKind, backend: Backend) -> Result<Network> {
        self.load_with(kind, backend, &ExecutionSettings::default())
    }

    /// Creates the sessions of `kind` on `backend`: the DiT's stage graphs
    /// when the artifacts have them, the VAE's chunk graphs, or the one
    /// graph of the other networks.
    pub fn load_with(
        &self,
        kind: NetworkKind,
        backend: Backend,
        settings: &ExecutionSettings,
    ) -> Result<Network> {
        let entry = self.checked_entry(kind, backend)?;
        let inner = if !entry.chunks.is_empty() {
            Inner::Chunked(Box::new(ChunkedNetwork::load(
                &self.dir,
                kind.name(),
                &entry,
                backend,
                settings,
            )?))
        } else if !entry.stages.is_empty() {
            Inner::Staged(Box::new(StagedDit::load(
                &self.dir, &entry, backend, settings,
            )?))
        } else {
            Inner::Plain(crate::session::create_artifact_graph_with(
                &self.dir,
                kind.name(),
                &entry.file,
                &entry.graph_digest,
                &entry,
                backend,
                settings,
                SessionRole::General,
            )?)
        };
        Ok(Network { kind, entry, inner })
    }

    /// The DiT's whole graph as one session, even where the artifacts have
    /// its stage graphs (to compare the two, or to read debug outputs).
    pub fn load_whole(&self, kind: NetworkKind, backend: Backend) -> Result<Network> {
        let entry = self.checked_entry(kind, backend)?;
        if !entry.chunks.is_empty() {
            return Err(Error::arg(
                "network",
                format!("{kind} is chunked: it has no whole graph"),
            ));
        }
        let inner = Inner::Plain(crate::session::create_artifact_graph(
            &self.dir,
            kind.name(),
            &entry.file,
            &entry.graph_digest,
            &entry,
            backend,
        )?);
        Ok(Network { kind, entry, inner })
    }

    /// The entry of `kind`, once its precisions fit `backend` and, on
    /// `ort-tensorrt`, its prebuilt engines fit this machine.
    fn checked_entry(&self, kind: NetworkKind, backend: Backend) -> Result<NetworkEntry> {
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
        crate::attention::check_attention(
            &self.manifest,
            Some(kind),
            &crate::backend::Resolved {
                backend,
                why: "--backend".into(),
            },
        )?;
        Ok(entry)
    }
}

/// A loaded network.
pub struct Network {
    pub kind: NetworkKind,
    pub entry: NetworkEntry,
    inner: Inner,
}

enum Inner {
    Plain(ort::session::Session),
    /// The DiT as stage graphs, composed.
    Staged(Box<StagedDit>),
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
        sink: impl FnMut(crate::chunked::ChunkView<'_>) -> Result<()>,
    ) -> Result<()> {
        let spec = &self.entry.inputs[0];
        spec.check(self.kind.name(), input.dtype, &input.shape)?;
        match &mut self.inner {
            Inner::Chunked(c) => c.run_streaming(input, sink),
            Inner::Plain(_) | Inner::Staged(_) => Err(Error::arg(
                "network",
                format!("{} is not a chunked network", self.kind),
            )),
        }
    }

    /// [`Network::run_streaming`] on a sequence of any length the chunk
    /// graphs take (the first chunk's frames plus whole steady-state
    /// chunks: one image, for VACE's reference images, or the profile's
    /// frames), every other axis as the contract says.
    pub fn run_streaming_frames(
        &mut self,
        input: &HostTensor,
        sink: impl FnMut(crate::chunked::ChunkView<'_>) -> Result<()>,
    ) -> Result<()> {
        let spec = &self.entry.inputs[0];
        let mut want = spec.concrete_shape(1);
        if let (Some(t), Some(&given)) = (want.get_mut(2), input.shape.get(2)) {
            *t = given;
        }
        let as_spec = wanrt_core::TensorSpec {
            shape: want.iter().map(|&n| wanrt_core::Dim::Fixed(n)).collect(),
            ..spec.clone()
        };
        as_spec.check(self.kind.name(), input.dtype, &input.shape)?;
        match &mut self.inner {
            Inner::Chunked(c) => c.run_streaming(input, sink),
            Inner::Plain(_) | Inner::Staged(_) => Err(Error::arg(
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
        let fixed = self.fixed_batch();
        // FLF2V image tokens in the reference [2B, 257, W] layout.
        let viewed = crate::flf2v::with_image_rows_viewed(&self.entry.inputs, inputs);
        let inputs = &*viewed;
        match &mut self.inner {
            Inner::Plain(session) => run_batched(session, net, &self.entry.inputs, fixed, inputs),
            Inner::Staged(dit) => {
                check_inputs(net, &self.entry.inputs, inputs)?;
                dit.run(inputs)
            }
            Inner::Chunked(c) => {
                let spec = &self.entry.inputs[0];
                let t = inputs
                    .get(&spec.name)
                    .ok_or_else(|| missing(net, &spec.name))?;
                spec.check(net, t.dtype, &t.shape)?;
                c.run(t)
            }
        }
    }

    /// The DiT's stage graphs, for binding a generation's buffers; `None`
    /// for every other network (and a DiT loaded whole).
    pub fn staged_dit(&mut self) -> Option<&mut StagedDit> {
        match &mut self.inner {
            Inner::Staged(d) => Some(d),
            _ => None,
        }
    }

    /// The chunked network (the VAE), for its loop's figures.
    pub fn chunked(&self) -> Option<&ChunkedNetwork> {
        match &self.inner {
            Inner::Chunked(c) => Some(c),
            _ => None,
        }
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

fn missing(net: &str, tensor: &str) -> Error {
    Error::Core(wanrt_core::Error::ContractMismatch {
        network: net.into(),
        tensor: tensor.into(),
        reason: "missing from the input".into(),
    })
}

/// Checks `inputs` against `specs` (presence, dtype, shape, one batch) and
/// returns them in spec order with the common batch.
pub(crate) fn check_inputs<'a>(
    net: &str,
    specs: &[TensorSpec],
    inputs: &'a BTreeMap<String, HostTensor>,
) -> Result<(Vec<(String, &'a HostTensor)>, u64)> {
    let mut batch = None;
    let mut ordered = Vec::new();
    for spec in specs {
        let t = inputs
            .get(&spec.name)
            .ok_or_else(|| missing(net, &spec.name))?;
        spec.check(net, t.dtype, &t.shape)?;
        if !spec.is_batched() {
            ordered.push((spec.name.clone(), t));
            continue;
        }
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
    Ok((ordered, batch.unwrap_or(1)))
}

/// One graph on `inputs`, looping over batch slices when the graph's batch
/// is `fixed`.
pub(crate) fn run_batched(
    session: &mut ort::session::Session,
    net: &str,
    specs: &[TensorSpec],
    fixed: Option<u64>,
    inputs: &BTreeMap<String, HostTensor>,
) -> Result<BTreeMap<String, HostTensor>> {
    let (ordered, batch) = check_inputs(net, specs, inputs)?;
    let unbatched: Vec<bool> = specs.iter().map(|s| !s.is_batched()).collect();
    let step = fixed.unwrap_or(batch);
    if batch % step != 0 {
        return Err(Error::Core(wanrt_core::Error::ContractMismatch {
            network: net.into(),
            tensor: ordered.first().map(|(n, _)| n.clone()).unwrap_or_default(),
            reason: format!("batch {batch} is not a multiple of the engine's fixed batch {step}"),
        }));
    }
    let mut chunks: Vec<BTreeMap<String, HostTensor>> = Vec::new();
    for start in (0..batch).step_by(step as usize) {
        let slice: Vec<(String, HostTensor)> = ordered
            .iter()
            .zip(&unbatched)
            .map(|((n, t), &whole)| {
                let t = if step == batch || whole {
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
        let parts: Vec<HostTensor> = chunks.iter_mut().filter_map(|c| c.remove(&name)).collect();
        let joined = HostTensor::concat_batch(&parts).ok_or_else(|| Error::Inference {
            network: net.into(),
            reason: format!("output {name} changed shape between batch slices"),
        })?;
        out.insert(name, joined);
    }
    Ok(out)
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
