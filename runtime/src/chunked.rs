//! Chunk-by-chunk execution of the VAE's graphs (`graphs::vae` on the build
//! side): the first-chunk graph, then the steady-state graph once per later
//! chunk, with the causal-convolution caches carried from one call to the
//! next in two sets of buffers (the outputs of one call are the inputs of
//! the next; the sets swap). Memory therefore does not grow with the number
//! of frames, and the main output of each chunk is handed to a sink as soon
//! as it exists.
//!
//! Everything the loop touches is allocated and bound once per loaded
//! network, in the session's memory (device memory on a GPU backend): both
//! cache sets, the chunk input and output buffers, and four IoBindings
//! (first chunk, chunk 1, and one per ping-pong direction). Caches never
//! leave the device; per chunk only the input frames go in and the output
//! frames come out. With [`ExecutionSettings::cuda_graph`] (ort-cuda) the
//! two ping-pong calls are captured as CUDA graphs (`gpu_graph_id` 1 and
//! 2) on their first run and replayed after: their bound addresses never
//! change, and new input frames are written into the same bound buffer.

use std::collections::BTreeMap;
use std::path::Path;

use ort::session::{IoBinding, RunOptions, Session};
use wanrt_core::manifest::{ChunkGraph, NetworkEntry};
use wanrt_core::{DType, TensorSpec};

use crate::backend::Backend;
use crate::buffer::{Buffer, BufferAllocator, HostAccess};
use crate::error::{Error, OrtCall, Result};
use crate::exec::{ExecutionSettings, SessionRole};
use crate::tensorfile::HostTensor;

/// Frames `start..start + len` of a `[1, C, T, H, W]` tensor.
pub fn slice_time(t: &HostTensor, start: u64, len: u64) -> HostTensor {
    let (c, tt) = (t.shape[1] as usize, t.shape[2] as usize);
    let plane = (t.shape[3] * t.shape[4]) as usize * t.dtype.size();
    let mut data = Vec::with_capacity(c * len as usize * plane);
    for ch in 0..c {
        let base = (ch * tt + start as usize) * plane;
        data.extend_from_slice(&t.data[base..base + len as usize * plane]);
    }
    let mut shape = t.shape.clone();
    shape[2] = len;
    HostTensor {
        dtype: t.dtype,
        shape,
        data,
    }
}

/// Concatenation of `[1, C, t_i, H, W]` tensors along time.
pub fn concat_time(parts: &[HostTensor]) -> Option<HostTensor> {
    let first = parts.first()?;
    let c = first.shape[1] as usize;
    let plane = (first.shape[3] * first.shape[4]) as usize * first.dtype.size();
    let total: u64 = parts.iter().map(|p| p.shape[2]).sum();
    let mut data = Vec::with_capacity(c * total as usize * plane);
    for ch in 0..c {
        for p in parts {
            if p.shape[1] != first.shape[1] || p.shape[3..] != first.shape[3..] {
                return None;
            }
            let t = p.shape[2] as usize;
            data.extend_from_slice(&p.data[ch * t * plane..(ch + 1) * t * plane]);
        }
    }
    let mut shape = first.shape.clone();
    shape[2] = total;
    Some(HostTensor {
        dtype: first.dtype,
        shape,
        data,
    })
}

/// One chunk's main output, borrowed from the loop's bound output buffer
/// (valid until the next chunk runs).
#[derive(Debug, Clone, Copy)]
pub struct ChunkView<'a> {
    /// `[1, C, t, H, W]`.
    pub shape: &'a [u64],
    pub data: &'a [f32],
}

impl ChunkView<'_> {
    /// A host copy (for callers that keep chunks).
    pub fn to_host(&self) -> HostTensor {
        HostTensor::from_f32(self.shape.to_vec(), self.data)
    }
}

/// Collects chunk views into one preallocated `[1, C, T, H, W]` tensor.
pub struct TimeAssembler {
    shape: Vec<u64>,
    data: Vec<u8>,
    written: u64,
}

impl TimeAssembler {
    pub fn new(shape: Vec<u64>) -> Self {
        let n = shape.iter().product::<u64>() as usize;
        TimeAssembler {
            shape,
            data: vec![0u8; n * 4],
            written: 0,
        }
    }

    /// Copies the frames of `chunk` after those appended so far.
    pub fn append(&mut self, chunk: ChunkView<'_>) -> Result<()> {
        let (c, total) = (self.shape[1] as usize, self.shape[2]);
        let t = chunk.shape[2];
        if chunk.shape.len() != 5
            || chunk.shape[1] != self.shape[1]
            || chunk.shape[3..] != self.shape[3..]
            || self.written + t > total
        {
            return Err(Error::Inference {
                network: "chunk loop".into(),
                reason: format!("chunk {:?} does not fit {:?}", chunk.shape, self.shape),
            });
        }
        let plane = (self.shape[3] * self.shape[4]) as usize;
        let (t, total, at) = (t as usize, total as usize, self.written as usize);
        for ch in 0..c {
            let src = &chunk.data[ch * t * plane..(ch + 1) * t * plane];
            let off = (ch * total + at) * plane * 4;
            for (dst, v) in self.data[off..off + src.len() * 4]
                .chunks_exact_mut(4)
                .zip(src)
            {
                dst.copy_from_slice(&v.to_le_bytes());
            }
        }
        self.written += t as u64;
        Ok(())
    }

    /// The whole tensor; an error unless every frame was appended.
    pub fn finish(self) -> Result<HostTensor> {
        if self.written != self.shape[2] {
            return Err(Error::Inference {
                network: "chunk loop".into(),
                reason: format!("{} of {} frames produced", self.written, self.shape[2]),
            });
        }
        Ok(HostTensor {
            dtype: DType::Float32,
            shape: self.shape,
            data: self.data,
        })
    }
}

/// Frames `start..start + len` of a float32 `[1, C, T, H, W]` host tensor
/// into `dst` (`[1, C, len, H, W]`), without allocating.
fn copy_frames(t: &HostTensor, start: u64, len: u64, dst: &mut [f32]) {
    let (c, tt) = (t.shape[1] as usize, t.shape[2] as usize);
    let plane = (t.shape[3] * t.shape[4]) as usize;
    let (start, len) = (start as usize, len as usize);
    for ch in 0..c {
        let src = &t.data[(ch * tt + start) * plane * 4..(ch * tt + start + len) * plane * 4];
        let out = &mut dst[ch * len * plane..(ch + 1) * len * plane];
        for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
            *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
}

/// The loop's buffers and bindings, made once per loaded network.
///
/// Cache set 0 is written by the first graph (the caches it produces) and
/// by every even chunk; set 1 by every odd chunk. The caches the first
/// graph does not produce are read once, by chunk 1, from a zero buffer
/// filled when the network is loaded and never written: no set is ever
/// zero-filled, since each is written before it is read.
struct ChunkLoop {
    x_first: Buffer,
    out_first: Buffer,
    x_step: Buffer,
    out_step: Buffer,
    _sets: [Vec<Buffer>; 2],
    _zeros: Vec<Buffer>,
    /// Chunk 0: `x_first` → `out_first` + set 0.
    first: IoBinding,
    /// Chunk 1: set 0 (+ zeros) → set 1.
    entry: IoBinding,
    /// Chunks 2, 4, …: set 1 → set 0; chunks 3, 5, …: set 0 → set 1.
    ping_pong: [IoBinding; 2],
}

/// A network run as a first-chunk graph and a steady-state graph.
pub struct ChunkedNetwork {
    name: String,
    first: Session,
    step: Session,
    first_spec: ChunkGraph,
    step_spec: ChunkGraph,
    bound: ChunkLoop,
    /// Run options of the entry call and of the two ping-pong calls
    /// (`gpu_graph_id` -1, 1, 2 when CUDA graphs are on).
    run_options: Option<[RunOptions; 3]>,
}

fn chunk<'a>(
    entry: &'a NetworkEntry,
    role: &str,
    name: &str,
    dir: &Path,
) -> Result<&'a ChunkGraph> {
    entry
        .chunks
        .iter()
        .find(|c| c.role == role)
        .ok_or_else(|| Error::Artifacts {
            dir: dir.to_path_buf(),
            reason: format!("network {name} has no '{role}' chunk graph"),
        })
}

impl ChunkedNetwork {
    pub fn load(
        dir: &Path,
        name: &str,
        entry: &NetworkEntry,
        backend: Backend,
        settings: &ExecutionSettings,
    ) -> Result<Self> {
        let first_spec = chunk(entry, "first", name, dir)?.clone();
        let step_spec = chunk(entry, "step", name, dir)?.clone();
        let graph = |c: &ChunkGraph, role| {
            crate::session::create_artifact_graph_with(
                dir,
                name,
                &c.file,
                &c.graph_digest,
                entry,
                backend,
                settings,
                role,
            )
        };
        let first = graph(&first_spec, SessionRole::Vae)?;
        let step = graph(&step_spec, SessionRole::VaeStep)?;
        let fail = |e: ort::Error| Error::ort(name, OrtCall::Tensor, "binding the chunk loop", e);
        let bad = |reason: String| Error::Artifacts {
            dir: dir.to_path_buf(),
            reason: format!("network {name}: {reason}"),
        };
        let placement = BufferAllocator::for_session(&step, backend, settings.device_id)?;
        let caches: Vec<&TensorSpec> = step_spec
            .inputs
            .iter()
            .filter(|t| t.name.starts_with("cache."))
            .collect();
        for c in &caches {
            let out = format!("{}.out", c.name);
            match step_spec.outputs.iter().find(|o| o.name == out) {
                Some(o) if o.shape == c.shape => {}
                _ => {
                    return Err(bad(format!(
                        "the step graph has no {out} of {}",
                        c.shape_string()
                    )));
                }
            }
            if let Some(o) = first_spec.outputs.iter().find(|o| o.name == out)
                && o.shape != c.shape
            {
                return Err(bad(format!(
                    "the first graph's {out} is {}, the step graph's cache {}",
                    o.shape_string(),
                    c.shape_string()
                )));
            }
        }
        let alloc = |spec: &TensorSpec, access| {
            placement.alloc(&spec.name, &spec.concrete_shape(1), access)
        };
        let x_first = alloc(&first_spec.inputs[0], HostAccess::ReadWrite)?;
        let out_first = alloc(&first_spec.outputs[0], HostAccess::ReadWrite)?;
        let x_step = alloc(&step_spec.inputs[0], HostAccess::ReadWrite)?;
        let out_step = alloc(&step_spec.outputs[0], HostAccess::ReadWrite)?;
        let mut sets: [Vec<Buffer>; 2] = [Vec::new(), Vec::new()];
        for set in sets.iter_mut() {
            for c in &caches {
                set.push(alloc(c, HostAccess::None)?);
            }
        }
        // Zeros for the caches chunk 0 does not produce ("no past frames").
        let mut zeros: Vec<Buffer> = Vec::new();
        let mut zero_of: Vec<Option<usize>> = Vec::new();
        for c in &caches {
            let produced = first_spec
                .outputs
                .iter()
                .any(|o| o.name == format!("{}.out", c.name));
            if produced {
                zero_of.push(None);
            } else {
                let shape = c.concrete_shape(1);
                let n = shape.iter().product::<u64>() as usize;
                zeros.push(placement.upload(&c.name, &shape, &vec![0.0; n])?);
                zero_of.push(Some(zeros.len() - 1));
            }
        }
        let (main_in, main_out) = (&step_spec.inputs[0].name, &step_spec.outputs[0].name);
        let mut first_b = first.create_binding().map_err(fail)?;
        first_b
            .bind_input(&first_spec.inputs[0].name, x_first.tensor())
            .map_err(fail)?;
        let mut out_first = out_first;
        first_b
            .bind_output(&first_spec.outputs[0].name, out_first.tensor_mut())
            .map_err(fail)?;
        for (k, c) in caches.iter().enumerate() {
            if zero_of[k].is_none() {
                first_b
                    .bind_output(format!("{}.out", c.name), sets[0][k].tensor_mut())
                    .map_err(fail)?;
            }
        }
        let mut out_step = out_step;
        let mut step_binding = |src: usize, dst: usize, with_zeros: bool| -> Result<IoBinding> {
            let mut b = step.create_binding().map_err(fail)?;
            b.bind_input(main_in, x_step.tensor()).map_err(fail)?;
            b.bind_output(main_out, out_step.tensor_mut())
                .map_err(fail)?;
            for (k, c) in caches.iter().enumerate() {
                let input = match zero_of[k] {
                    Some(z) if with_zeros => zeros[z].tensor(),
                    _ => sets[src][k].tensor(),
                };
                b.bind_input(&c.name, input).map_err(fail)?;
                b.bind_output(format!("{}.out", c.name), sets[dst][k].tensor_mut())
                    .map_err(fail)?;
            }
            Ok(b)
        };
        let entry_b = step_binding(0, 1, true)?;
        let ping_pong = [step_binding(1, 0, false)?, step_binding(0, 1, false)?];
        let run_options = if settings.cuda_graph {
            let opts = |id: &str| -> Result<RunOptions> {
                let mut o = RunOptions::new().map_err(fail)?;
                o.set("gpu_graph_id", id).map_err(fail)?;
                Ok(o)
            };
            // The entry call runs once per decode and is not captured.
            Some([opts("-1")?, opts("1")?, opts("2")?])
        } else {
            None
        };
        Ok(ChunkedNetwork {
            name: name.into(),
            first,
            step,
            first_spec,
            step_spec,
            bound: ChunkLoop {
                x_first,
                out_first,
                x_step,
                out_step,
                _sets: sets,
                _zeros: zeros,
                first: first_b,
                entry: entry_b,
                ping_pong,
            },
            run_options,
        })
    }

    fn frames_of(spec: &ChunkGraph) -> u64 {
        spec.inputs[0].concrete_shape(1)[2]
    }

    /// Whether the steady-state chunk calls replay CUDA graphs.
    pub fn uses_cuda_graphs(&self) -> bool {
        self.run_options.is_some()
    }

    /// Bytes of the loop's bound buffers (two cache sets, zeros, chunk
    /// inputs and outputs), allocated once when the network was loaded.
    pub fn bound_bytes(&self) -> usize {
        let b = &self.bound;
        [&b.x_first, &b.out_first, &b.x_step, &b.out_step]
            .iter()
            .map(|x| x.bytes())
            .chain(b._sets.iter().flatten().map(Buffer::bytes))
            .chain(b._zeros.iter().map(Buffer::bytes))
            .sum()
    }

    /// Runs the whole sequence `input` (`[1, C, T, H, W]`), calling `sink`
    /// with the main output of each chunk in order.
    pub fn run_streaming(
        &mut self,
        input: &HostTensor,
        mut sink: impl FnMut(ChunkView<'_>) -> Result<()>,
    ) -> Result<()> {
        let name = self.name.clone();
        let fail = |e: ort::Error| Error::ort(&name, OrtCall::Run, "running a chunk", e);
        let (f0, fs) = (
            Self::frames_of(&self.first_spec),
            Self::frames_of(&self.step_spec),
        );
        let total = input.shape[2];
        if input.dtype != DType::Float32
            || input.shape.len() != 5
            || total < f0
            || !(total - f0).is_multiple_of(fs)
        {
            return Err(Error::Core(wanrt_core::Error::ContractMismatch {
                network: name.clone(),
                tensor: self.first_spec.inputs[0].name.clone(),
                reason: format!(
                    "{:?} {}: expected float32 with {f0} + {fs}·k frames",
                    input.shape, input.dtype
                ),
            }));
        }
        let b = &mut self.bound;
        b.x_first.write(|d| copy_frames(input, 0, f0, d))?;
        drop(self.first.run_binding(&b.first).map_err(fail)?);
        let shape = b.out_first.shape().to_vec();
        sink(ChunkView {
            shape: &shape,
            data: b.out_first.read()?,
        })?;

        let step_shape = b.out_step.shape().to_vec();
        let mut start = f0;
        let mut k = 1usize;
        while start < total {
            b.x_step.write(|d| copy_frames(input, start, fs, d))?;
            let (binding, which) = if k == 1 {
                (&b.entry, 0)
            } else {
                (&b.ping_pong[k % 2], 1 + k % 2)
            };
            let out = match &self.run_options {
                Some(opts) => self.step.run_binding_with_options(binding, &opts[which]),
                None => self.step.run_binding(binding),
            }
            .map_err(fail)?;
            drop(out);
            sink(ChunkView {
                shape: &step_shape,
                data: b.out_step.read()?,
            })?;
            start += fs;
            k += 1;
        }
        Ok(())
    }

    /// The shape of the whole output for `frames` input frames.
    fn output_shape(&self, frames: u64) -> Vec<u64> {
        let (f0, fs) = (
            Self::frames_of(&self.first_spec),
            Self::frames_of(&self.step_spec),
        );
        let first = self.first_spec.outputs[0].concrete_shape(1);
        let step = self.step_spec.outputs[0].concrete_shape(1);
        let mut shape = first.clone();
        shape[2] = first[2] + (frames.saturating_sub(f0) / fs) * step[2];
        shape
    }

    /// Runs the whole sequence and returns the concatenated output.
    pub fn run(&mut self, input: &HostTensor) -> Result<BTreeMap<String, HostTensor>> {
        if input.dtype != DType::Float32 {
            return Err(Error::arg(
                "--input",
                format!("{} must be float32", self.first_spec.inputs[0].name),
            ));
        }
        let mut out = TimeAssembler::new(self.output_shape(input.shape[2]));
        self.run_streaming(input, |c| out.append(c))?;
        Ok(BTreeMap::from([(
            self.first_spec.outputs[0].name.clone(),
            out.finish()?,
        )]))
    }

    /// Like [`Self::run`], into an assembler the caller sized.
    pub fn output_shape_for(&self, input: &HostTensor) -> Vec<u64> {
        self.output_shape(input.shape[2])
    }
}
