//! The DiT as step-scheduled stage graphs (`NetworkContract::dit_stages`):
//! `context` once per prompt and CFG branch, `time` once per schedule, and
//! per step `embed` → `block_first` → `block_rest` → `head`.
//!
//! Two ways to run them:
//! - [`StagedDit::run`] composes the stages on host tensors with the whole
//!   DiT's contract (`wan-run component dit`, the golden tests);
//! - [`StagedDit::bind`] binds one generation: every buffer the stages read
//!   or write is a [`Buffer`] allocated once in the backend's memory and
//!   bound once through IoBinding; the constants (text context per branch,
//!   image context, the I2V condition `y`) are written once, and a step
//!   writes the latents and its row of the precomputed time tables in
//!   place, runs the per-step stages and leaves `noise_pred` in a
//!   preallocated buffer that CFG and the sampler read in place.
//!
//! What moves per step, B = rows per call, n = elements of one latent:
//! on ort-cpu, B·n + B·7·dim floats copied host→host (latents and the
//! time rows into the bound inputs) and nothing allocated; on a GPU
//! backend the same bytes cross the bus host→device through pinned
//! mirrors, `noise_pred` (B·n floats per call) comes back device→host, CFG
//! and the sampler update run on the host, and the context, the image
//! context, `y` and every intermediate (`tokens`, `hidden_first`,
//! `hidden`) stay on the device.
//!
//! With a step cache (`docs/WAN.md` §15) the decisions are
//! [`StepCache`]'s and the arithmetic runs where the residency says: on the
//! host (the block stack's boundaries then get host mirrors and cross the
//! bus per call on a GPU), or in the compiled step-cache graphs on buffers
//! in the backend's memory, where a step adds only the `computed [B]`
//! write and, for fbcache, the read of its `[B]` sums.

use std::collections::BTreeMap;
use std::path::Path;

use ort::session::{IoBinding, Session};
use wanrt_core::manifest::{ChunkGraph, NetworkEntry};
use wanrt_core::{CacheGraph, Dim, DitStage, NetworkKind};

use crate::backend::Backend;
use crate::buffer::{Buffer, BufferAllocator, HostAccess};
use crate::cache::{CachePlan, CacheRecord, CacheResidency, CacheStore, StepCache};
use crate::engine::run_batched;
use crate::error::{Error, OrtCall, Result};
use crate::exec::{ExecutionSettings, SessionRole};
use crate::tensorfile::HostTensor;

struct Stage {
    role: DitStage,
    spec: ChunkGraph,
    session: Session,
}

/// A step-cache graph's session (`docs/WAN.md` §15).
struct CacheStage {
    graph: CacheGraph,
    spec: ChunkGraph,
    session: Session,
}

/// The DiT's stage sessions.
pub struct StagedDit {
    stages: Vec<Stage>,
    /// The step-cache graphs' sessions, created by the first generation
    /// that keeps its cache on the device (a DiT that never does loads
    /// none, and builds no engine for them).
    cache_graphs: Vec<CacheStage>,
    /// Where the sessions come from: the artifact directory, the DiT's
    /// entry (its `cache_graphs`: none in engines compiled before them) and
    /// the execution settings.
    source: Box<(std::path::PathBuf, NetworkEntry, ExecutionSettings)>,
    /// The engine's batch when it is static (every stage but `time`).
    fixed_batch: Option<u64>,
    backend: Backend,
    device_id: i32,
    /// Latent channels (the `embed` stage's `hidden_states`).
    latent_channels: u64,
}

fn fail(reason: impl std::fmt::Display) -> Error {
    Error::Inference {
        network: NetworkKind::Dit.name().into(),
        reason: reason.to_string(),
    }
}

/// Channels `0..c0` and `c0..` of a `[B, C, ...]` tensor.
fn split_channels(t: &HostTensor, c0: u64) -> (HostTensor, HostTensor) {
    let (b, c) = (t.shape[0] as usize, t.shape[1] as usize);
    let plane = t.shape[2..].iter().product::<u64>() as usize * t.dtype.size();
    let c0 = c0 as usize;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for row in t.data.chunks_exact(c * plane).take(b) {
        x.extend_from_slice(&row[..c0 * plane]);
        y.extend_from_slice(&row[c0 * plane..]);
    }
    let shape = |ch: usize| {
        let mut s = t.shape.clone();
        s[1] = ch as u64;
        s
    };
    (
        HostTensor {
            dtype: t.dtype,
            shape: shape(c0),
            data: x,
        },
        HostTensor {
            dtype: t.dtype,
            shape: shape(c - c0),
            data: y,
        },
    )
}

impl StagedDit {
    pub fn load(
        dir: &Path,
        entry: &NetworkEntry,
        backend: Backend,
        settings: &ExecutionSettings,
    ) -> Result<Self> {
        let mut stages = Vec::new();
        for spec in &entry.stages {
            let role = DitStage::from_name(&spec.role).ok_or_else(|| Error::Artifacts {
                dir: dir.to_path_buf(),
                reason: format!("dit: unknown stage '{}' in manifest.json", spec.role),
            })?;
            let session = crate::session::create_artifact_graph_with(
                dir,
                NetworkKind::Dit.name(),
                &spec.file,
                &spec.graph_digest,
                entry,
                backend,
                settings,
                SessionRole::DitStage,
            )?;
            stages.push(Stage {
                role,
                spec: spec.clone(),
                session,
            });
        }
        let embed = stages
            .iter()
            .find(|s| s.role == DitStage::Embed)
            .ok_or_else(|| Error::Artifacts {
                dir: dir.to_path_buf(),
                reason: "dit: the stage graphs have no 'embed' stage".into(),
            })?;
        let latent_channels = embed.spec.inputs[0].concrete_shape(1)[1];
        for spec in &entry.cache_graphs {
            if CacheGraph::from_name(&spec.role).is_none() {
                return Err(Error::Artifacts {
                    dir: dir.to_path_buf(),
                    reason: format!(
                        "dit: unknown step-cache graph '{}' in manifest.json",
                        spec.role
                    ),
                });
            }
        }
        Ok(StagedDit {
            stages,
            cache_graphs: Vec::new(),
            source: Box::new((dir.to_path_buf(), entry.clone(), settings.clone())),
            fixed_batch: entry.profile.batch.fixed().map(u64::from),
            backend,
            device_id: settings.device_id,
            latent_channels,
        })
    }

    /// The whole DiT's call, composed from the stages on host tensors: the
    /// inputs of the whole contract (already checked) → `noise_pred`.
    pub fn run(
        &mut self,
        inputs: &BTreeMap<String, HostTensor>,
    ) -> Result<BTreeMap<String, HostTensor>> {
        let mut pool: BTreeMap<String, HostTensor> = inputs.clone();
        let hidden = pool
            .remove("hidden_states")
            .ok_or_else(|| fail("no hidden_states"))?;
        if hidden.shape[1] > self.latent_channels {
            // I2V: hidden_states = noise ‖ y; the stages take them apart.
            let (x, y) = split_channels(&hidden, self.latent_channels);
            pool.insert("hidden_states".into(), x);
            pool.insert("y".into(), y);
        } else {
            pool.insert("hidden_states".into(), hidden);
        }
        let fixed = self.fixed_batch;
        for stage in &mut self.stages {
            let batch = if stage.role == DitStage::Time {
                None
            } else {
                fixed
            };
            let name = format!("dit.{}", stage.role);
            let out = run_batched(&mut stage.session, &name, &stage.spec.inputs, batch, &pool)?;
            pool.extend(out);
        }
        let pred = pool
            .remove("noise_pred")
            .ok_or_else(|| fail("the head stage gave no noise_pred"))?;
        Ok(BTreeMap::from([("noise_pred".to_string(), pred)]))
    }

    /// Whether the engines have the step-cache graphs `policy` needs (the
    /// first-block cache also needs its indicator).
    pub fn has_cache_graphs(&self, first_block: bool) -> bool {
        let entry = &self.source.1;
        CacheGraph::ALL
            .into_iter()
            .filter(|g| first_block || *g != CacheGraph::FbIndicator)
            .all(|g| entry.cache_graph(g).is_some())
    }

    /// Creates the step-cache graphs' sessions, once.
    fn load_cache_graphs(&mut self) -> Result<()> {
        if !self.cache_graphs.is_empty() {
            return Ok(());
        }
        let (dir, entry, settings) = &*self.source;
        for spec in &entry.cache_graphs {
            let graph = CacheGraph::from_name(&spec.role).ok_or_else(|| Error::Artifacts {
                dir: dir.clone(),
                reason: format!(
                    "dit: unknown step-cache graph '{}' in manifest.json",
                    spec.role
                ),
            })?;
            let session = crate::session::create_artifact_graph_with(
                dir,
                NetworkKind::Dit.name(),
                &spec.file,
                &spec.graph_digest,
                entry,
                self.backend,
                settings,
                SessionRole::DitStage,
            )?;
            self.cache_graphs.push(CacheStage {
                graph,
                spec: spec.clone(),
                session,
            });
        }
        Ok(())
    }

    /// Whether a step cache of `plan` runs on the device: `auto` does on
    /// the GPU backends when the engines have the step-cache graphs.
    fn cache_on_device(&self, plan: &CachePlan) -> Result<bool> {
        let has = self.has_cache_graphs(plan.policy == crate::cache::CachePolicy::FbCache);
        match plan.residency {
            CacheResidency::Host => Ok(false),
            CacheResidency::Auto => Ok(self.backend.is_gpu() && has),
            CacheResidency::Device if has => Ok(true),
            CacheResidency::Device => Err(Error::arg(
                "--cache-residency",
                "device: these engines have no compiled step-cache graphs (they were compiled before them): recompile them with this wan-compile, or pass --cache-residency host",
            )),
        }
    }

    fn stage(&mut self, role: DitStage) -> Result<&mut Stage> {
        self.stages
            .iter_mut()
            .find(|s| s.role == role)
            .ok_or_else(|| fail(format!("no {role} stage")))
    }

    /// The time stage on `timesteps` (one row each): the time MLP's output
    /// `temb` `[S·d]` and the modulation input `timestep_proj` `[S·6d]`.
    /// A generation runs it once for its whole schedule.
    pub fn time_tables(&mut self, timesteps: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let stage = self.stage(DitStage::Time)?;
        let t_in = BTreeMap::from([(
            "timestep".to_string(),
            HostTensor::from_f32(vec![timesteps.len() as u64], timesteps),
        )]);
        let mut out = run_batched(
            &mut stage.session,
            "dit.time",
            &stage.spec.inputs,
            None,
            &t_in,
        )?;
        let mut table = |name: &str| {
            out.remove(name)
                .and_then(|t| t.to_f32())
                .ok_or_else(|| fail(format!("the time stage gave no float {name}")))
        };
        Ok((table("temb")?, table("timestep_proj")?))
    }

    /// Binds one generation's buffers (see the module doc).
    pub fn bind(&mut self, c: &Conditioning<'_>) -> Result<BoundDit<'_>> {
        BoundDit::new(self, c, &[], None)
    }

    /// [`StagedDit::bind`] with more constant stage inputs, by name, written
    /// once (VACE: `control_hidden_states [1, …]`, replicated to the call's
    /// rows, and `control_hidden_states_scale`, which has no batch axis).
    pub fn bind_with_constants(
        &mut self,
        c: &Conditioning<'_>,
        constants: &[(&str, &HostTensor)],
    ) -> Result<BoundDit<'_>> {
        BoundDit::new(self, c, constants, None)
    }

    /// [`StagedDit::bind_with_constants`] with a step cache (`docs/WAN.md`
    /// §15): its residuals are allocated here, once, and TeaCache/MagCache
    /// masks worked out from the time stage's tables before the first step.
    pub fn bind_cached(
        &mut self,
        c: &Conditioning<'_>,
        constants: &[(&str, &HostTensor)],
        cache: Option<&CachePlan>,
    ) -> Result<BoundDit<'_>> {
        BoundDit::new(self, c, constants, cache)
    }
}

/// What stays constant over a generation.
pub struct Conditioning<'a> {
    /// Prompt embedding `[1, L, text_dim]`.
    pub cond: &'a HostTensor,
    /// Negative prompt embedding, when CFG runs the unconditional branch.
    pub uncond: Option<&'a HostTensor>,
    /// I2V: CLIP tokens `[1, 257, image_dim]` (FLF2V: both frames' tokens
    /// in one row, `[1, 514, image_dim]`).
    pub image: Option<&'a HostTensor>,
    /// I2V: the condition `[1, 20, F', H', W']` (mask ‖ latent).
    pub y: Option<&'a HostTensor>,
    /// The schedule's timesteps, in step order.
    pub timesteps: &'a [f32],
}

/// Which buffer a stage tensor is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    Shared(usize),
    PerLane([usize; 2]),
}

/// One generation bound to the DiT's stages.
pub struct BoundDit<'s> {
    dit: &'s mut StagedDit,
    /// Rows per call.
    batch: usize,
    /// Calls per step: 2 when CFG runs as two batch-1 calls.
    lanes: usize,
    cfg: bool,
    /// Elements of one latent sample.
    n: usize,
    dim: usize,
    pool: Vec<Buffer>,
    latents: usize,
    temb: usize,
    proj: usize,
    pred: [usize; 2],
    temb_table: Vec<f32>,
    proj_table: Vec<f32>,
    /// The bindings in execution order for one step.
    calls: Vec<Call>,
    steps: usize,
    /// The step cache, with the buffers it reads and writes: the block
    /// stack's input (`tokens`), block 0's output and the block stack's
    /// output (what the head reads), each `m` values a row.
    cache: Option<Box<StepCache>>,
    /// The step cache's device buffers and graph bindings (device
    /// residency; `None`: its state is on the host).
    device: Option<Box<DeviceCache>>,
    tokens: usize,
    first: usize,
    last: usize,
    m: usize,
}

/// What a step-cache graph call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheOp {
    /// `cache_head` → the head's input.
    Head,
    /// `cache_store` of the residual into `next`, `cache_copy` back.
    StoreResidual,
    CopyResidual,
    /// fbcache: `cache_fb_indicator`, then the reference's store and copy.
    Indicator,
    StoreReference,
    CopyReference,
}

struct CacheCall {
    /// Index into the DiT's step-cache graphs.
    graph: usize,
    lane: usize,
    op: CacheOp,
    binding: IoBinding,
}

/// The step cache on the device (`docs/WAN.md` §15): per lane one residual
/// (and fbcache reference) buffer of the call's rows, the persistent state;
/// the head's input, the next residual and the decisions `computed [B]`,
/// step scratch the lanes share; fbcache's per-row sums in host memory.
struct DeviceCache {
    computed: usize,
    calls: Vec<CacheCall>,
    diff: ort::value::Tensor<f64>,
    norm: ort::value::Tensor<f64>,
}

struct Call {
    stage: usize,
    lane: usize,
    role: DitStage,
    binding: IoBinding,
}

/// The pool indices of the device step cache's buffers.
struct DeviceSlots {
    head_in: usize,
    next: usize,
    computed: usize,
    residual: [usize; 2],
    reference: [Option<usize>; 2],
}

impl DeviceCache {
    /// Binds the step-cache graphs per lane: `base` is what a residual is
    /// relative to (the block stack's input, or block 0's output for
    /// fbcache), `last` the block stack's output.
    #[allow(clippy::too_many_arguments)]
    fn bind(
        dit: &mut StagedDit,
        pool: &mut [Buffer],
        d: &DeviceSlots,
        lanes: usize,
        batch: usize,
        base: usize,
        tokens: usize,
        first: usize,
        last: usize,
    ) -> Result<Self> {
        let host = ort::memory::Allocator::default();
        let sums = |name: &str| {
            ort::value::Tensor::<f64>::new(&host, vec![batch as i64]).map_err(|e| {
                Error::ort(
                    format!("dit.{}", CacheGraph::FbIndicator),
                    OrtCall::Tensor,
                    format!("allocating {name}"),
                    e,
                )
            })
        };
        let (mut diff, mut norm) = (sums("diff")?, sums("norm")?);
        let mut calls = Vec::new();
        let b = batch as u64;
        for lane in 0..lanes {
            let res = d.residual[lane];
            let mut plan: Vec<(CacheOp, CacheGraph, Vec<usize>, Option<usize>)> = vec![
                (
                    CacheOp::Head,
                    CacheGraph::Head,
                    vec![last, base, res, d.computed],
                    Some(d.head_in),
                ),
                (
                    CacheOp::StoreResidual,
                    CacheGraph::Store,
                    vec![last, base, res, d.computed],
                    Some(d.next),
                ),
                (
                    CacheOp::CopyResidual,
                    CacheGraph::Copy,
                    vec![d.next],
                    Some(res),
                ),
            ];
            if let Some(r) = d.reference[lane] {
                plan.extend([
                    (
                        CacheOp::Indicator,
                        CacheGraph::FbIndicator,
                        vec![tokens, first, r],
                        None,
                    ),
                    (
                        CacheOp::StoreReference,
                        CacheGraph::Store,
                        vec![first, tokens, r, d.computed],
                        Some(d.next),
                    ),
                    (
                        CacheOp::CopyReference,
                        CacheGraph::Copy,
                        vec![d.next],
                        Some(r),
                    ),
                ]);
            }
            for (op, graph, inputs, output) in plan {
                let gi = dit
                    .cache_graphs
                    .iter()
                    .position(|c| c.graph == graph)
                    .ok_or_else(|| fail(format!("no step-cache graph {graph}")))?;
                let stage = &dit.cache_graphs[gi];
                let bind_err =
                    |e| Error::ort(format!("dit.{graph}"), OrtCall::Tensor, "binding", e);
                let mut binding = stage.session.create_binding().map_err(bind_err)?;
                if stage.spec.inputs.len() != inputs.len() {
                    return Err(fail(format!(
                        "dit.{graph} takes {} inputs, the cache binds {}",
                        stage.spec.inputs.len(),
                        inputs.len()
                    )));
                }
                for (t, &i) in stage.spec.inputs.iter().zip(&inputs) {
                    check_rows(&graph, t, &pool[i], b)?;
                    binding
                        .bind_input(&t.name, pool[i].tensor())
                        .map_err(bind_err)?;
                }
                match (output, &stage.spec.outputs[..]) {
                    (Some(i), [t]) => {
                        check_rows(&graph, t, &pool[i], b)?;
                        binding
                            .bind_output(&t.name, pool[i].tensor_mut())
                            .map_err(bind_err)?;
                    }
                    (None, [t_diff, t_norm]) => {
                        binding
                            .bind_output(&t_diff.name, &mut diff)
                            .map_err(bind_err)?;
                        binding
                            .bind_output(&t_norm.name, &mut norm)
                            .map_err(bind_err)?;
                    }
                    _ => {
                        return Err(fail(format!(
                            "dit.{graph}: outputs {:?}",
                            stage
                                .spec
                                .outputs
                                .iter()
                                .map(|t| &t.name)
                                .collect::<Vec<_>>()
                        )));
                    }
                }
                calls.push(CacheCall {
                    graph: gi,
                    lane,
                    op,
                    binding,
                });
            }
        }
        Ok(DeviceCache {
            computed: d.computed,
            calls,
            diff,
            norm,
        })
    }
}

/// Two distinct buffers of the pool, mutably.
fn two(pool: &mut [Buffer], a: usize, b: usize) -> Result<(&mut Buffer, &mut Buffer)> {
    if a == b || a >= pool.len() || b >= pool.len() {
        return Err(fail(format!("buffers {a} and {b} of {}", pool.len())));
    }
    if a < b {
        let (lo, hi) = pool.split_at_mut(b);
        Ok((&mut lo[a], &mut hi[0]))
    } else {
        let (lo, hi) = pool.split_at_mut(a);
        Ok((&mut hi[0], &mut lo[b]))
    }
}

impl<'s> BoundDit<'s> {
    fn new(
        dit: &'s mut StagedDit,
        c: &Conditioning<'_>,
        constants: &[(&str, &HostTensor)],
        cache: Option<&CachePlan>,
    ) -> Result<Self> {
        let cfg = c.uncond.is_some();
        for (what, t) in [
            ("cond", Some(c.cond)),
            ("uncond", c.uncond),
            ("image", c.image),
            ("y", c.y),
        ] {
            if let Some(t) = t
                && t.shape.first() != Some(&1)
            {
                return Err(fail(format!(
                    "the {what} conditioning must be one row [1, …], got {:?}",
                    t.shape
                )));
            }
        }
        // One batch-2 call where the engine takes two rows, two batch-1
        // calls otherwise; without CFG a fixed batch of 2 runs the prompt
        // twice and reads row 0.
        let (batch, lanes) = match (dit.fixed_batch, cfg) {
            (Some(1), true) => (1, 2),
            (Some(b), _) => (b as usize, 1),
            (None, true) => (2, 1),
            (None, false) => (1, 1),
        };
        if cfg && batch == 1 && lanes != 2 || batch > 2 {
            return Err(fail(format!(
                "an engine of fixed batch {batch} cannot run this generation (compile with --batch 1, 2 or dynamic)"
            )));
        }
        let placement = match dit.stages.first() {
            Some(s) => BufferAllocator::for_session(&s.session, dit.backend, dit.device_id)?,
            None => return Err(fail("no stages")),
        };
        let device = match cache {
            Some(plan) => dit.cache_on_device(plan)?,
            None => false,
        };
        if device {
            dit.load_cache_graphs()?;
        }
        let first_block = cache.is_some_and(|p| p.policy == crate::cache::CachePolicy::FbCache);
        let mut pool: Vec<Buffer> = Vec::new();
        let mut slots: BTreeMap<String, Slot> = BTreeMap::new();
        let add = |pool: &mut Vec<Buffer>, b: Buffer| {
            pool.push(b);
            pool.len() - 1
        };

        // Context stage, once per lane (rows: cond, or cond then uncond).
        let branches: Vec<&HostTensor> = std::iter::once(c.cond).chain(c.uncond).collect();
        let rows_of_lane = |lane: usize| -> Vec<&HostTensor> {
            if lanes == 2 {
                vec![branches[lane]]
            } else {
                (0..batch)
                    .map(|r| branches[r.min(branches.len() - 1)])
                    .collect()
            }
        };
        let fixed = dit.fixed_batch;
        let mut ctx_slots: BTreeMap<String, [usize; 2]> = BTreeMap::new();
        for lane in 0..lanes {
            let rows = rows_of_lane(lane);
            let text = HostTensor::concat_batch(&rows.into_iter().cloned().collect::<Vec<_>>())
                .ok_or_else(|| fail("prompt embeddings differ in shape"))?;
            let mut inputs = BTreeMap::from([("encoder_hidden_states".to_string(), text)]);
            if let Some(img) = c.image {
                let rows: Vec<HostTensor> = (0..batch).map(|_| img.clone()).collect();
                let img = HostTensor::concat_batch(&rows).ok_or_else(|| fail("image tokens"))?;
                inputs.insert("encoder_hidden_states_image".into(), img);
            }
            let stage = dit.stage(DitStage::Context)?;
            let out = run_batched(
                &mut stage.session,
                "dit.context",
                &stage.spec.inputs,
                fixed,
                &inputs,
            )?;
            for (name, t) in out {
                let v = t
                    .to_f32()
                    .ok_or_else(|| fail(format!("{name} is not float")))?;
                let i = add(&mut pool, placement.upload(&name, &t.shape, &v)?);
                ctx_slots.entry(name).or_insert([i, i])[lane] = i;
            }
        }
        for (name, s) in ctx_slots {
            slots.insert(name, Slot::PerLane(s));
        }

        // Time stage, once for the whole schedule: tables [S, d], [S, 6d].
        let steps = c.timesteps.len();
        let (temb_table, proj_table) = dit.time_tables(c.timesteps)?;
        let dim = temb_table.len() / steps.max(1);

        // Per-step inputs and the I2V condition.
        let embed = dit.stage(DitStage::Embed)?;
        let latent_shape = embed.spec.inputs[0].concrete_shape(batch as u64);
        let n = latent_shape[1..].iter().product::<u64>() as usize;
        let latents = add(
            &mut pool,
            placement.alloc("hidden_states", &latent_shape, HostAccess::ReadWrite)?,
        );
        slots.insert("hidden_states".into(), Slot::Shared(latents));
        if let Some(y) = c.y {
            let v = y.to_f32().ok_or_else(|| fail("y is not float"))?;
            let rows: Vec<f32> = (0..batch).flat_map(|_| v.iter().copied()).collect();
            let mut shape = y.shape.clone();
            shape[0] = batch as u64;
            let i = add(&mut pool, placement.upload("y", &shape, &rows)?);
            slots.insert("y".into(), Slot::Shared(i));
        }
        for (name, t) in constants {
            let spec = dit
                .stages
                .iter()
                .flat_map(|s| &s.spec.inputs)
                .find(|s| s.name == *name)
                .ok_or_else(|| fail(format!("no stage takes {name}")))?;
            let v = t
                .to_f32()
                .ok_or_else(|| fail(format!("{name} is not float")))?;
            let (shape, values) = if spec.is_batched() {
                if t.shape.first() != Some(&1) {
                    return Err(fail(format!(
                        "{name} must be one row [1, …], got {:?}",
                        t.shape
                    )));
                }
                let mut shape = t.shape.clone();
                shape[0] = batch as u64;
                (shape, v.repeat(batch))
            } else {
                (t.shape.clone(), v)
            };
            let i = add(&mut pool, placement.upload(name, &shape, &values)?);
            slots.insert((*name).to_string(), Slot::Shared(i));
        }
        let b = batch as u64;
        let temb = add(
            &mut pool,
            placement.alloc("temb", &[b, dim as u64], HostAccess::ReadWrite)?,
        );
        let proj = add(
            &mut pool,
            placement.alloc("timestep_proj", &[b, 6, dim as u64], HostAccess::ReadWrite)?,
        );
        slots.insert("temb".into(), Slot::Shared(temb));
        slots.insert("timestep_proj".into(), Slot::Shared(proj));

        // Intermediates (shared by the lanes, which run one after the
        // other) and the per-lane noise_pred.
        let mut pred = [0usize; 2];
        for stage in dit.stages.iter().filter(|s| s.role.per_step()) {
            for out in &stage.spec.outputs {
                if slots.contains_key(&out.name) {
                    continue;
                }
                let shape = out.concrete_shape(b);
                if out.name == "noise_pred" {
                    for (lane, p) in pred.iter_mut().enumerate().take(lanes) {
                        let name = format!("noise_pred.{lane}");
                        *p = add(
                            &mut pool,
                            placement.alloc(&name, &shape, HostAccess::ReadWrite)?,
                        );
                    }
                    if lanes == 1 {
                        pred[1] = pred[0];
                    }
                    slots.insert(out.name.clone(), Slot::PerLane(pred));
                } else {
                    // A host step cache reads and writes the block stack's
                    // boundaries on the host (pinned mirrors on a GPU).
                    let access = if cache.is_some() && !device {
                        HostAccess::ReadWrite
                    } else {
                        HostAccess::None
                    };
                    let i = add(&mut pool, placement.alloc(&out.name, &shape, access)?);
                    slots.insert(out.name.clone(), Slot::Shared(i));
                }
            }
        }

        let head_input = dit
            .stages
            .iter()
            .find(|s| s.role == DitStage::Head)
            .map(|s| s.spec.inputs[0].name.clone())
            .ok_or_else(|| fail("no head stage"))?;
        // Device residency: the persistent residuals (and references) per
        // lane, the shared step scratch.
        let mut dev_slots: Option<DeviceSlots> = None;
        if device {
            let row = match slots.get("tokens") {
                Some(Slot::Shared(i)) => pool[*i].shape().to_vec(),
                _ => return Err(fail("no shared tokens buffer")),
            };
            let none = HostAccess::None;
            let mut d = DeviceSlots {
                head_in: add(&mut pool, placement.alloc("cache.head_in", &row, none)?),
                next: add(&mut pool, placement.alloc("cache.next", &row, none)?),
                computed: add(
                    &mut pool,
                    placement.alloc("cache.computed", &[b], HostAccess::ReadWrite)?,
                ),
                residual: [0; 2],
                reference: [None; 2],
            };
            for lane in 0..lanes {
                let name = format!("cache.residual.{lane}");
                d.residual[lane] = add(&mut pool, placement.alloc(&name, &row, none)?);
                if first_block {
                    let name = format!("cache.first_ref.{lane}");
                    d.reference[lane] = Some(add(&mut pool, placement.alloc(&name, &row, none)?));
                }
            }
            dev_slots = Some(d);
        }

        // One binding per per-step stage and lane, in lane order (the lanes
        // share the intermediates, so lane 1 starts after lane 0 is done);
        // a stage whose tensors are all shared runs once per step (the
        // patch embedding of the latent is the same for both branches).
        let mut calls = Vec::new();
        for lane in 0..lanes {
            for (si, stage) in dit.stages.iter().enumerate() {
                if !stage.role.per_step() {
                    continue;
                }
                let lane_dependent = stage
                    .spec
                    .inputs
                    .iter()
                    .chain(&stage.spec.outputs)
                    .any(|t| matches!(slots.get(&t.name), Some(Slot::PerLane(_))));
                if lane > 0 && !lane_dependent {
                    continue;
                }
                let slot = |name: &str| -> Result<usize> {
                    match slots.get(name) {
                        Some(Slot::Shared(i)) => Ok(*i),
                        Some(Slot::PerLane(l)) => Ok(l[lane]),
                        None => Err(fail(format!("dit.{}: nothing produces {name}", stage.role))),
                    }
                };
                let bind_err =
                    |e| Error::ort(format!("dit.{}", stage.role), OrtCall::Tensor, "binding", e);
                let mut binding = stage.session.create_binding().map_err(bind_err)?;
                for t in &stage.spec.inputs {
                    // Device residency: the head reads the cache's output.
                    let i = match &dev_slots {
                        Some(d) if stage.role == DitStage::Head && t.name == head_input => {
                            d.head_in
                        }
                        _ => slot(&t.name)?,
                    };
                    check_rows(&stage.role, t, &pool[i], b)?;
                    binding
                        .bind_input(&t.name, pool[i].tensor())
                        .map_err(fail)?;
                }
                for t in &stage.spec.outputs {
                    let i = slot(&t.name)?;
                    check_rows(&stage.role, t, &pool[i], b)?;
                    binding
                        .bind_output(&t.name, pool[i].tensor_mut())
                        .map_err(bind_err)?;
                }
                calls.push(Call {
                    stage: si,
                    lane,
                    role: stage.role,
                    binding,
                });
            }
        }
        let shared = |name: &str| match slots.get(name) {
            Some(Slot::Shared(i)) => Ok(*i),
            _ => Err(fail(format!("no shared {name} buffer"))),
        };
        let (tokens, first, last) = (
            shared("tokens")?,
            shared("hidden_first")?,
            shared(&head_input)?,
        );
        let m = pool[tokens].numel() / batch;
        let branches = if cfg { 2 } else { 1 };
        let mut dev = None;
        let cache = match cache {
            Some(plan) => {
                let store = match dev_slots {
                    Some(d) => {
                        let base = if first_block { first } else { tokens };
                        let built = DeviceCache::bind(
                            dit, &mut pool, &d, lanes, batch, base, tokens, first, last,
                        )?;
                        let bytes = (0..lanes)
                            .flat_map(|l| std::iter::once(d.residual[l]).chain(d.reference[l]))
                            .map(|i| pool[i].bytes())
                            .sum();
                        let scratch_bytes = [d.head_in, d.next, d.computed]
                            .into_iter()
                            .map(|i| pool[i].bytes())
                            .sum::<usize>()
                            + 2 * batch * std::mem::size_of::<f64>();
                        dev = Some(Box::new(built));
                        CacheStore::Device {
                            memory: placement.memory(),
                            bytes,
                            scratch_bytes,
                        }
                    }
                    None => CacheStore::host(branches, m, first_block),
                };
                Some(Box::new(StepCache::new(
                    plan,
                    steps,
                    branches,
                    store,
                    &temb_table,
                    &proj_table,
                )?))
            }
            None => None,
        };
        Ok(BoundDit {
            dit,
            batch,
            lanes,
            cfg,
            n,
            dim,
            pool,
            latents,
            temb,
            proj,
            pred,
            temb_table,
            proj_table,
            calls,
            steps,
            cache,
            device: dev,
            tokens,
            first,
            last,
            m,
        })
    }

    /// Calls per step (2: CFG as two batch-1 calls).
    pub fn calls_per_step(&self) -> usize {
        self.lanes
    }

    /// Bytes of every buffer bound for this generation.
    pub fn bound_bytes(&self) -> usize {
        self.pool.iter().map(Buffer::bytes).sum()
    }

    /// Runs the DiT of step `index` on `latents` (`n` elements): writes the
    /// latents into every row of the bound input and the step's time rows
    /// into the bound modulation inputs, then runs the per-step stages.
    pub fn run(&mut self, index: usize, latents: &[f32]) -> Result<()> {
        if index >= self.steps || latents.len() != self.n {
            return Err(fail(format!(
                "step {index} of {} on {} latent values (the engine takes {})",
                self.steps,
                latents.len(),
                self.n
            )));
        }
        let n = self.n;
        self.pool[self.latents].write(|d| {
            for row in d.chunks_exact_mut(n) {
                row.copy_from_slice(latents);
            }
        })?;
        let d = self.dim;
        let e = &self.temb_table[index * d..(index + 1) * d];
        self.pool[self.temb]
            .write(|dst| dst.chunks_exact_mut(d).for_each(|r| r.copy_from_slice(e)))?;
        let e0 = &self.proj_table[index * 6 * d..(index + 1) * 6 * d];
        self.pool[self.proj].write(|dst| {
            dst.chunks_exact_mut(6 * d)
                .for_each(|r| r.copy_from_slice(e0))
        })?;
        if self.cache.is_some() {
            return self.run_cached(index);
        }
        for ci in 0..self.calls.len() {
            self.call(ci)?;
        }
        Ok(())
    }

    fn call(&mut self, ci: usize) -> Result<()> {
        let call = &self.calls[ci];
        let stage = &mut self.dit.stages[call.stage];
        let out = stage
            .session
            .run_binding(&call.binding)
            .map_err(|e| Error::ort(format!("dit.{}", stage.role), OrtCall::Run, "running", e))?;
        drop(out);
        Ok(())
    }

    /// One step with the step cache: per lane, block 0 and the rest run
    /// only where a row's branch computes (block 0 always for fbcache,
    /// which decides after it); then each row either stores its residual
    /// or takes `base + residual` as the block stack's output, and the head
    /// runs as usual. The decisions are [`StepCache`]'s; the arithmetic is
    /// the host's or the step-cache graphs' (device residency).
    fn run_cached(&mut self, index: usize) -> Result<()> {
        let rows = if self.lanes == 2 { 1 } else { self.batch };
        let fb = self
            .cache
            .as_ref()
            .is_some_and(|c| c.decides_after_first_block());
        for lane in 0..self.lanes {
            let mut computed = [true; 2];
            if !fb {
                let cache = self.cache.as_ref().ok_or_else(|| fail("no step cache"))?;
                for (row, c) in computed.iter_mut().enumerate().take(rows) {
                    *c = cache
                        .planned(index, self.branch(lane, row))
                        .ok_or_else(|| {
                            fail(format!("the step cache has no decision for step {index}"))
                        })?;
                }
            }
            for ci in 0..self.calls.len() {
                if self.calls[ci].lane != lane {
                    continue;
                }
                let any = computed[..rows].iter().any(|&c| c);
                match self.calls[ci].role {
                    DitStage::BlockFirst => {
                        if fb || any {
                            self.call(ci)?;
                        }
                        if fb {
                            computed = self.decide_first_block(index, lane, rows)?;
                        }
                    }
                    DitStage::BlockRest => {
                        if any {
                            self.call(ci)?;
                        }
                    }
                    DitStage::Head => {
                        self.apply_cache(lane, rows, computed)?;
                        self.call(ci)?;
                    }
                    _ => self.call(ci)?,
                }
            }
        }
        if let Some(c) = self.cache.as_mut() {
            c.end_step();
        }
        Ok(())
    }

    /// The CFG branch of `row` of `lane`'s call.
    fn branch(&self, lane: usize, row: usize) -> usize {
        if self.lanes == 2 {
            lane
        } else if self.cfg {
            row.min(1)
        } else {
            0
        }
    }

    /// fbcache after block 0 of `lane`: each row's decision from its
    /// change against the reference (summed by the host or by
    /// `cache_fb_indicator`, whose `[B]` sums are the one read back), and
    /// the reference kept where a row computed. A row that repeats row 0's
    /// branch (a fixed batch of 2 without CFG) takes row 0's decision.
    fn decide_first_block(&mut self, index: usize, lane: usize, rows: usize) -> Result<[bool; 2]> {
        let branch = [self.branch(lane, 0), self.branch(lane, 1)];
        let distinct = |row: usize| row == 0 || branch[row] != branch[0];
        let m = self.m;
        let cache = self.cache.as_mut().ok_or_else(|| fail("no step cache"))?;
        let mut sums = [None; 2];
        match self.device.as_deref_mut() {
            None => {
                let (t, f) = two(&mut self.pool, self.tokens, self.first)?;
                let (t, f) = (t.read()?, f.read()?);
                for (row, s) in sums.iter_mut().enumerate().take(rows) {
                    let span = row * m..(row + 1) * m;
                    if distinct(row) {
                        *s = cache.host_fb_sums(branch[row], &t[span.clone()], &f[span])?;
                    }
                }
            }
            Some(dev) => {
                if (0..rows).any(|r| cache.has_first_block_reference(branch[r])) {
                    cache_call(&mut self.dit.cache_graphs, dev, lane, CacheOp::Indicator)?;
                    let (diff, norm) = (read_sums(&dev.diff)?, read_sums(&dev.norm)?);
                    for (row, s) in sums.iter_mut().enumerate().take(rows) {
                        if cache.has_first_block_reference(branch[row]) {
                            *s = Some((diff[row], norm[row]));
                        }
                    }
                }
            }
        }
        let mut computed = [true; 2];
        for row in 0..rows {
            computed[row] = if distinct(row) {
                cache.decide_first_block_from(index, branch[row], sums[row])?
            } else {
                computed[0]
            };
        }
        if !computed[..rows].iter().any(|&c| c) {
            return Ok(computed);
        }
        match self.device.as_deref_mut() {
            None => {
                let (t, f) = two(&mut self.pool, self.tokens, self.first)?;
                let (t, f) = (t.read()?, f.read()?);
                for row in (0..rows).filter(|&r| distinct(r) && computed[r]) {
                    let span = row * m..(row + 1) * m;
                    cache.host_store_first_block(branch[row], &t[span.clone()], &f[span])?;
                }
            }
            Some(dev) => {
                write_computed(&mut self.pool[dev.computed], &computed)?;
                let graphs = &mut self.dit.cache_graphs;
                cache_call(graphs, dev, lane, CacheOp::StoreReference)?;
                cache_call(graphs, dev, lane, CacheOp::CopyReference)?;
            }
        }
        Ok(computed)
    }

    /// Before `lane`'s head: a computed row keeps its block-stack output
    /// and stores `out − base` as its branch's residual, a skipped row
    /// takes `base + residual` (host: in place in the block stack's
    /// output; device: into the head's input, `cache_head`).
    fn apply_cache(&mut self, lane: usize, rows: usize, computed: [bool; 2]) -> Result<()> {
        let fb = self
            .cache
            .as_ref()
            .is_some_and(|c| c.decides_after_first_block());
        let base = if fb { self.first } else { self.tokens };
        let branch = [self.branch(lane, 0), self.branch(lane, 1)];
        let m = self.m;
        let cache = self.cache.as_mut().ok_or_else(|| fail("no step cache"))?;
        match self.device.as_deref_mut() {
            None => {
                let (b, out) = two(&mut self.pool, base, self.last)?;
                let b = b.read()?;
                out.read()?;
                let mut result = Ok(());
                out.write(|o| {
                    result = (0..rows).try_for_each(|row| {
                        let span = row * m..(row + 1) * m;
                        cache.apply(branch[row], computed[row], &b[span.clone()], &mut o[span])
                    });
                })?;
                result
            }
            Some(dev) => {
                write_computed(&mut self.pool[dev.computed], &computed)?;
                let graphs = &mut self.dit.cache_graphs;
                cache_call(graphs, dev, lane, CacheOp::Head)?;
                if computed[..rows].iter().any(|&c| c) {
                    cache_call(graphs, dev, lane, CacheOp::StoreResidual)?;
                    cache_call(graphs, dev, lane, CacheOp::CopyResidual)?;
                }
                Ok(())
            }
        }
    }

    /// What the step cache did so far (`None` without one).
    pub fn cache_record(&self) -> Option<CacheRecord> {
        self.cache.as_ref().map(|c| c.record())
    }

    /// Hands the step's prediction to `f` in place: the conditional
    /// velocity (mutable, for CFG to overwrite) and, with CFG, the
    /// unconditional one.
    pub fn with_prediction<T>(
        &mut self,
        f: impl FnOnce(&mut [f32], Option<&[f32]>) -> Result<T>,
    ) -> Result<T> {
        let n = self.n;
        if self.lanes == 2 {
            let [a, b] = self.pred;
            let (lo, hi) = self.pool.split_at_mut(a.max(b));
            let (ca, cb) = if a < b {
                (&mut lo[a], &mut hi[0])
            } else {
                (&mut hi[0], &mut lo[b])
            };
            let cond = ca.read_mut()?;
            let uncond = cb.read()?;
            return f(&mut cond[..n], Some(&uncond[..n]));
        }
        let cfg = self.cfg;
        let all = self.pool[self.pred[0]].read_mut()?;
        let (cond, rest) = all.split_at_mut(n);
        // Without CFG there is no second row to read (then_some would
        // slice it eagerly).
        let uncond = if cfg { rest.get(..n) } else { None };
        f(cond, uncond)
    }

    /// Rows per call.
    pub fn batch(&self) -> usize {
        self.batch
    }
}

/// The decisions of a call's rows as `computed [B]` (1 computed, 0
/// skipped): the one host→device write of a device step cache.
fn write_computed(buf: &mut Buffer, computed: &[bool; 2]) -> Result<()> {
    buf.write(|d| {
        for (v, &c) in d.iter_mut().zip(computed) {
            *v = if c { 1.0 } else { 0.0 };
        }
    })
}

/// fbcache's per-row sums as the indicator graph left them.
fn read_sums(t: &ort::value::Tensor<f64>) -> Result<&[f64]> {
    t.try_extract_tensor::<f64>()
        .map(|(_, v)| v)
        .map_err(|e| Error::ort("dit.cache_fb_indicator", OrtCall::Tensor, "reading", e))
}

/// Runs `lane`'s step-cache call `op`.
fn cache_call(
    graphs: &mut [CacheStage],
    dev: &DeviceCache,
    lane: usize,
    op: CacheOp,
) -> Result<()> {
    let call = dev
        .calls
        .iter()
        .find(|c| c.lane == lane && c.op == op)
        .ok_or_else(|| fail(format!("no step-cache call {op:?} for lane {lane}")))?;
    let stage = graphs
        .get_mut(call.graph)
        .ok_or_else(|| fail(format!("no step-cache graph {}", call.graph)))?;
    let out = stage
        .session
        .run_binding(&call.binding)
        .map_err(|e| Error::ort(format!("dit.{}", stage.graph), OrtCall::Run, "running", e))?;
    drop(out);
    Ok(())
}

fn check_rows(
    role: &dyn std::fmt::Display,
    spec: &wanrt_core::TensorSpec,
    buf: &Buffer,
    b: u64,
) -> Result<()> {
    let want = spec.concrete_shape(b);
    let ok = buf.shape().len() == want.len()
        && buf.shape()[1..] == want[1..]
        && (spec.shape[0] == Dim::Batch || buf.shape()[0] == want[0]);
    if ok {
        Ok(())
    } else {
        Err(fail(format!(
            "dit.{role}: {} is bound to a {:?} buffer, the stage takes {}",
            spec.name,
            buf.shape(),
            spec.shape_string()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_split_keeps_rows_apart() {
        // [2, 3, 2]: channel c of row r holds r·10 + c.
        let v: Vec<f32> = (0..2)
            .flat_map(|r| (0..3).flat_map(move |c| [(r * 10 + c) as f32; 2]))
            .collect();
        let t = HostTensor::from_f32(vec![2, 3, 2], &v);
        let (x, y) = split_channels(&t, 1);
        assert_eq!(x.shape, vec![2, 1, 2]);
        assert_eq!(x.to_f32().unwrap(), vec![0.0, 0.0, 10.0, 10.0]);
        assert_eq!(y.shape, vec![2, 2, 2]);
        assert_eq!(
            y.to_f32().unwrap(),
            vec![1.0, 1.0, 2.0, 2.0, 11.0, 11.0, 12.0, 12.0]
        );
    }
}
