//! Chunk-by-chunk execution of the VAE's graphs (`graphs::vae` on the build
//! side): the first-chunk graph, then the steady-state graph once per later
//! chunk, with the causal-convolution caches carried from one call to the
//! next in two preallocated sets of buffers bound through ONNX Runtime's
//! IoBinding (the outputs of one call are the inputs of the next; the sets
//! swap). Memory therefore does not grow with the number of frames, and the
//! main output of each chunk is handed to a sink as soon as it exists.

use std::collections::BTreeMap;
use std::path::Path;

use ort::memory::Allocator;
use ort::session::Session;
use ort::value::Tensor;
use wanrt_core::DType;
use wanrt_core::manifest::{ChunkGraph, NetworkEntry};

use crate::backend::Backend;
use crate::error::{Error, OrtCall, Result};
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

/// A network run as a first-chunk graph and a steady-state graph.
pub struct ChunkedNetwork {
    name: String,
    first: Session,
    step: Session,
    first_spec: ChunkGraph,
    step_spec: ChunkGraph,
    /// Names of the step graph's cache inputs, in input order.
    cache_names: Vec<String>,
    /// Two sets of cache buffers (ping-pong).
    sets: [Vec<Tensor<f32>>; 2],
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
    pub fn load(dir: &Path, name: &str, entry: &NetworkEntry, backend: Backend) -> Result<Self> {
        let first_spec = chunk(entry, "first", name, dir)?.clone();
        let step_spec = chunk(entry, "step", name, dir)?.clone();
        let graph = |c: &ChunkGraph| {
            crate::session::create_artifact_graph(
                dir,
                name,
                &c.file,
                &c.graph_digest,
                entry,
                backend,
            )
        };
        let (first, step) = (graph(&first_spec)?, graph(&step_spec)?);
        let cache_names: Vec<String> = step_spec
            .inputs
            .iter()
            .filter(|t| t.name.starts_with("cache."))
            .map(|t| t.name.clone())
            .collect();
        let ort_fail = |call, e| Error::ort(name, call, "preparing the cache buffers", e);
        let mut sets: [Vec<Tensor<f32>>; 2] = [Vec::new(), Vec::new()];
        let alloc = Allocator::default();
        for set in sets.iter_mut() {
            for spec in step_spec
                .inputs
                .iter()
                .filter(|t| t.name.starts_with("cache."))
            {
                let shape: Vec<i64> = spec.concrete_shape(1).iter().map(|&d| d as i64).collect();
                let mut t = Tensor::<f32>::new(&alloc, shape).map_err(|e| {
                    Error::ort(
                        name,
                        OrtCall::Tensor,
                        format!("allocating {}", spec.name),
                        e,
                    )
                })?;
                // Caches start as zeros (no past frames).
                let (_, data) = t
                    .try_extract_tensor_mut::<f32>()
                    .map_err(|e| ort_fail(OrtCall::Tensor, e))?;
                data.fill(0.0);
                set.push(t);
            }
        }
        Ok(ChunkedNetwork {
            name: name.into(),
            first,
            step,
            first_spec,
            step_spec,
            cache_names,
            sets,
        })
    }

    fn frames_of(spec: &ChunkGraph) -> u64 {
        spec.inputs[0].concrete_shape(1)[2]
    }

    /// Runs the whole sequence `input` (`[1, C, T, H, W]`), calling `sink`
    /// with the main output of each chunk in order.
    pub fn run_streaming(
        &mut self,
        input: &HostTensor,
        mut sink: impl FnMut(HostTensor) -> Result<()>,
    ) -> Result<()> {
        let name = self.name.clone();
        let fail = |reason: String| Error::Inference {
            network: name.clone(),
            reason,
        };
        let ort_fail = |call, e| Error::ort(&name, call, "running a chunk", e);
        let (f0, fs) = (
            Self::frames_of(&self.first_spec),
            Self::frames_of(&self.step_spec),
        );
        let total = input.shape[2];
        if total < f0 || !(total - f0).is_multiple_of(fs) {
            return Err(Error::Core(wanrt_core::Error::ContractMismatch {
                network: name.clone(),
                tensor: self.first_spec.inputs[0].name.clone(),
                reason: format!("{total} frames: expected {f0} + {fs}·k"),
            }));
        }
        let main_in = self.first_spec.inputs[0].name.clone();
        let main_out = self.first_spec.outputs[0].name.clone();

        // Chunk 0: the first graph; its cache outputs seed set 0, and caches
        // it does not produce stay zero.
        let out = crate::session::run(
            &mut self.first,
            &name,
            &[(main_in.clone(), slice_time(input, 0, f0))],
        )?;
        for (k, cache) in self.cache_names.iter().enumerate() {
            let dst = &mut self.sets[0][k];
            let (_, d) = dst
                .try_extract_tensor_mut::<f32>()
                .map_err(|e| ort_fail(OrtCall::Tensor, e))?;
            match out.get(&format!("{cache}.out")) {
                Some(src) => {
                    let v = src
                        .to_f32()
                        .ok_or_else(|| fail(format!("{cache}.out is not float")))?;
                    if v.len() != d.len() {
                        return Err(fail(format!(
                            "{cache}.out has {} values, the step graph takes {}",
                            v.len(),
                            d.len()
                        )));
                    }
                    d.copy_from_slice(&v);
                }
                None => d.fill(0.0),
            }
        }
        let first_out = out
            .get(&main_out)
            .cloned()
            .ok_or_else(|| fail(format!("no output {main_out}")))?;
        sink(first_out)?;

        let mut cur = 0usize;
        let mut start = f0;
        while start < total {
            let x = slice_time(input, start, fs);
            let xv = Tensor::from_array((
                x.shape.iter().map(|&d| d as i64).collect::<Vec<_>>(),
                x.to_f32().unwrap_or_default(),
            ))
            .map_err(|e| ort_fail(OrtCall::Tensor, e))?;
            let mut binding = self
                .step
                .create_binding()
                .map_err(|e| ort_fail(OrtCall::Tensor, e))?;
            binding
                .bind_input(&main_in, &xv)
                .map_err(|e| ort_fail(OrtCall::Tensor, e))?;
            let (a, b) = self.sets.split_at_mut(1);
            let (src, dst) = if cur == 0 {
                (&a[0], &mut b[0])
            } else {
                (&b[0], &mut a[0])
            };
            for (k, cache) in self.cache_names.iter().enumerate() {
                binding
                    .bind_input(cache, &src[k])
                    .map_err(|e| ort_fail(OrtCall::Tensor, e))?;
                binding
                    .bind_output(format!("{cache}.out"), &mut dst[k])
                    .map_err(|e| ort_fail(OrtCall::Tensor, e))?;
            }
            binding
                .bind_output_to_device(&main_out, self.step.allocator().memory_info())
                .map_err(|e| ort_fail(OrtCall::Tensor, e))?;
            let outputs = self
                .step
                .run_binding(&binding)
                .map_err(|e| ort_fail(OrtCall::Run, e))?;
            let v = outputs
                .get(&main_out)
                .ok_or_else(|| fail(format!("no output {main_out}")))?;
            let (shape, data) = v
                .try_extract_tensor::<f32>()
                .map_err(|e| ort_fail(OrtCall::Tensor, e))?;
            let chunk = HostTensor::from_f32(shape.iter().map(|&d| d as u64).collect(), data);
            drop(outputs);
            sink(chunk)?;
            cur = 1 - cur;
            start += fs;
        }
        // Leave both sets zeroed for the next call.
        for set in self.sets.iter_mut() {
            for t in set.iter_mut() {
                let (_, d) = t
                    .try_extract_tensor_mut::<f32>()
                    .map_err(|e| ort_fail(OrtCall::Tensor, e))?;
                d.fill(0.0);
            }
        }
        Ok(())
    }

    /// Runs the whole sequence and returns the concatenated output.
    pub fn run(&mut self, input: &HostTensor) -> Result<BTreeMap<String, HostTensor>> {
        if input.dtype != DType::Float32 {
            return Err(Error::arg(
                "--input",
                format!("{} must be float32", self.first_spec.inputs[0].name),
            ));
        }
        let mut parts = Vec::new();
        self.run_streaming(input, |c| {
            parts.push(c);
            Ok(())
        })?;
        let out = concat_time(&parts).ok_or_else(|| Error::Inference {
            network: self.name.clone(),
            reason: "chunk outputs differ in shape".into(),
        })?;
        Ok(BTreeMap::from([(
            self.first_spec.outputs[0].name.clone(),
            out,
        )]))
    }
}
