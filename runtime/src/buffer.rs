//! Typed, persistent tensor buffers for the hot paths (the denoising loop,
//! the VAE chunk loop): a float32 tensor of a fixed shape in one kind of
//! memory, allocated once and bound to sessions through IoBinding, written
//! and read in place.
//!
//! On ONNX Runtime's CPU provider a buffer is host memory that the sessions
//! read and write directly (a bound host tensor is aliased, not copied), so
//! the step's own host code (CFG, the sampler update) works on the very
//! memory the networks see. On a GPU backend a buffer lives in device
//! memory; one the host must write or read has a pinned-host mirror of the
//! same shape, and [`Buffer::write`] / [`Buffer::read`] move it across the
//! bus in one copy each.

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::value::Tensor;
use serde::Serialize;
use wanrt_core::DType;

use crate::backend::Backend;
use crate::error::{Error, OrtCall, Result};

/// Where a buffer's elements live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Memory {
    /// Pageable host memory (ONNX Runtime's CPU allocator).
    Host,
    /// Page-locked host memory: the staging side of device copies.
    PinnedHost,
    /// Memory of the CUDA device `device_id`.
    Device { device_id: i32 },
}

impl Memory {
    pub fn host_accessible(self) -> bool {
        !matches!(self, Memory::Device { .. })
    }
}

/// Whether the host reads or writes a buffer (decides its mirror on a GPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAccess {
    /// Only sessions touch it (intermediates between stage graphs, caches).
    None,
    /// The host writes or reads it.
    ReadWrite,
}

/// A float32 tensor of fixed shape in [`Memory`], bindable to sessions.
pub struct Buffer {
    name: String,
    shape: Vec<u64>,
    memory: Memory,
    tensor: Tensor<f32>,
    /// Pinned-host copy of a device buffer the host accesses.
    mirror: Option<Tensor<f32>>,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("name", &self.name)
            .field("shape", &self.shape)
            .field("memory", &self.memory)
            .finish()
    }
}

fn ort_err<R>(name: &str, e: ort::Error<R>) -> Error
where
    ort::Error: From<ort::Error<R>>,
{
    Error::ort(
        format!("buffer {name}"),
        OrtCall::Tensor,
        "allocating, copying or reading it",
        e,
    )
}

fn fail(name: &str, e: impl std::fmt::Display) -> Error {
    Error::Inference {
        network: format!("buffer {name}"),
        reason: e.to_string(),
    }
}

impl Buffer {
    /// The dtype of every hot-path buffer: the networks' boundaries are
    /// float32 for every precision.
    pub const DTYPE: DType = DType::Float32;

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    pub fn memory(&self) -> Memory {
        self.memory
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product::<u64>() as usize
    }

    pub fn bytes(&self) -> usize {
        self.numel() * Self::DTYPE.size()
    }

    /// The tensor, for binding as a session input.
    pub fn tensor(&self) -> &Tensor<f32> {
        &self.tensor
    }

    /// The tensor, for binding as a session output.
    pub fn tensor_mut(&mut self) -> &mut Tensor<f32> {
        &mut self.tensor
    }

    /// The elements, where the host can see them directly.
    pub fn host(&self) -> Result<&[f32]> {
        if !self.memory.host_accessible() {
            return Err(fail(&self.name, "device memory: use read()"));
        }
        let (_, d) = self
            .tensor
            .try_extract_tensor::<f32>()
            .map_err(|e| ort_err(&self.name, e))?;
        Ok(d)
    }

    /// The elements, mutably, where the host can see them directly.
    pub fn host_mut(&mut self) -> Result<&mut [f32]> {
        if !self.memory.host_accessible() {
            return Err(fail(&self.name, "device memory: use write()"));
        }
        let (_, d) = self
            .tensor
            .try_extract_tensor_mut::<f32>()
            .map_err(|e| ort_err(&self.name, e))?;
        Ok(d)
    }

    /// Lets `edit` change the elements as the host sees them, then makes
    /// the change visible to the sessions: in place on host memory; on a
    /// device buffer through its pinned mirror and one host→device copy.
    pub fn write(&mut self, edit: impl FnOnce(&mut [f32])) -> Result<()> {
        if self.memory.host_accessible() {
            edit(self.host_mut()?);
            return Ok(());
        }
        let name = self.name.clone();
        let mirror = self
            .mirror
            .as_mut()
            .ok_or_else(|| fail(&name, "device buffer without a host mirror"))?;
        let (_, d) = mirror
            .try_extract_tensor_mut::<f32>()
            .map_err(|e| ort_err(&name, e))?;
        edit(d);
        mirror
            .copy_into(&mut self.tensor)
            .map_err(|e| ort_err(&name, e))
    }

    /// The elements as the sessions last wrote them, mutable on the host
    /// side (CFG in place): the buffer itself on host memory, the pinned
    /// mirror after one device→host copy on a device buffer (changes there
    /// are not sent back).
    pub fn read_mut(&mut self) -> Result<&mut [f32]> {
        if self.memory.host_accessible() {
            return self.host_mut();
        }
        let name = self.name.clone();
        let mirror = self
            .mirror
            .as_mut()
            .ok_or_else(|| fail(&name, "device buffer without a host mirror"))?;
        self.tensor
            .copy_into(&mut *mirror)
            .map_err(|e| ort_err(&name, e))?;
        let (_, d) = mirror
            .try_extract_tensor_mut::<f32>()
            .map_err(|e| ort_err(&name, e))?;
        Ok(d)
    }

    /// The elements as the sessions last wrote them: in place on host
    /// memory; a device buffer is first copied into its pinned mirror.
    pub fn read(&mut self) -> Result<&[f32]> {
        self.read_mut().map(|d| &*d)
    }
}

/// Allocates buffers in the memory a backend's sessions compute in.
pub struct BufferAllocator {
    memory: Memory,
    main: Allocator,
    pinned: Option<Allocator>,
}

impl BufferAllocator {
    /// Host memory (ONNX Runtime's CPU allocator), for ort-cpu.
    pub fn host() -> Self {
        BufferAllocator {
            memory: Memory::Host,
            main: Allocator::default(),
            pinned: None,
        }
    }

    /// The memory `session` computes in on `backend`: host for ort-cpu,
    /// the device `device_id` (with pinned-host mirrors) for the CUDA-based
    /// backends.
    pub fn for_session(session: &Session, backend: Backend, device_id: i32) -> Result<Self> {
        if !backend.is_gpu() {
            return Ok(Self::host());
        }
        let info = |device, memory_type| {
            MemoryInfo::new(device, device_id, AllocatorType::Device, memory_type)
                .and_then(|m| Allocator::new(session, m))
                .map_err(|e| Error::Provider {
                    provider: backend.name().into(),
                    reason: format!("allocator: {e}"),
                })
        };
        Ok(BufferAllocator {
            memory: Memory::Device { device_id },
            main: info(AllocationDevice::CUDA, MemoryType::Default)?,
            pinned: Some(info(AllocationDevice::CUDA_PINNED, MemoryType::CPUOutput)?),
        })
    }

    pub fn memory(&self) -> Memory {
        self.memory
    }

    /// A buffer of `shape` in this placement's memory; its initial contents
    /// are unspecified (every user writes before it reads).
    pub fn alloc(&self, name: &str, shape: &[u64], access: HostAccess) -> Result<Buffer> {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let tensor = Tensor::<f32>::new(&self.main, dims.clone()).map_err(|e| ort_err(name, e))?;
        let mirror = match (&self.pinned, access) {
            (Some(p), HostAccess::ReadWrite) => {
                Some(Tensor::<f32>::new(p, dims).map_err(|e| ort_err(name, e))?)
            }
            _ => None,
        };
        Ok(Buffer {
            name: name.into(),
            shape: shape.to_vec(),
            memory: self.memory,
            tensor,
            mirror,
        })
    }

    /// A buffer filled with `values` (constants bound once per generation).
    pub fn upload(&self, name: &str, shape: &[u64], values: &[f32]) -> Result<Buffer> {
        let mut b = self.alloc(name, shape, HostAccess::ReadWrite)?;
        if values.len() != b.numel() {
            return Err(fail(
                name,
                format!("{} values for shape {shape:?}", values.len()),
            ));
        }
        b.write(|d| d.copy_from_slice(values))?;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_buffers_write_and_read_in_place() {
        if crate::ortlib::environment().is_err() {
            eprintln!("skipped: ONNX Runtime's library is not available here");
            return;
        }
        let p = BufferAllocator::host();
        let mut b = p.alloc("x", &[2, 3], HostAccess::ReadWrite).unwrap();
        assert_eq!((b.numel(), b.bytes(), b.memory()), (6, 24, Memory::Host));
        b.write(|d| d.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32))
            .unwrap();
        assert_eq!(b.read().unwrap(), &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let e = p.upload("y", &[2], &[1.0]).unwrap_err();
        assert!(e.to_string().contains("buffer y"), "{e}");
    }
}
