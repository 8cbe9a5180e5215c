//! ONNX Runtime sessions: provider registration and tensor conversion.

use std::collections::BTreeMap;
use std::path::Path;

use ort::ep;
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use wanrt_core::DType;

use crate::backend::Backend;
use crate::error::{Error, OrtCall, Result, classify_ort};
use crate::exec::{ExecutionSettings, SessionRole};
use crate::tensorfile::HostTensor;

/// How a session is set up besides its backend.
#[derive(Debug, Clone, Default)]
pub struct SessionSetup {
    /// For `ort-tensorrt`: where the graph's prebuilt engines are.
    pub trt: Option<crate::engines::TrtCache>,
    /// Write ONNX Runtime's profile (per-node events, with the provider
    /// that ran each node) under this path prefix.
    pub profiling: Option<std::path::PathBuf>,
    /// The backend's execution settings (device, TF32, cuDNN search,
    /// arena, CUDA graphs).
    pub exec: ExecutionSettings,
    /// What the session is for (decides which settings apply).
    pub role: SessionRole,
}

/// A session for one graph of an artifact directory: `file` of network
/// `name` (`entry`), whose digest is `graph_digest`. On `ort-tensorrt` the
/// provider loads the graph's prebuilt engines from `dir/engines`.
pub fn create_artifact_graph(
    dir: &Path,
    name: &str,
    file: &str,
    graph_digest: &str,
    entry: &wanrt_core::manifest::NetworkEntry,
    backend: Backend,
) -> Result<Session> {
    create_artifact_graph_with(
        dir,
        name,
        file,
        graph_digest,
        entry,
        backend,
        &ExecutionSettings::default(),
        SessionRole::General,
    )
}

/// [`create_artifact_graph`] with execution settings for a session of
/// `role`.
#[allow(clippy::too_many_arguments)]
pub fn create_artifact_graph_with(
    dir: &Path,
    name: &str,
    file: &str,
    graph_digest: &str,
    entry: &wanrt_core::manifest::NetworkEntry,
    backend: Backend,
    exec: &ExecutionSettings,
    role: SessionRole,
) -> Result<Session> {
    let setup = SessionSetup {
        exec: exec.clone(),
        role,
        ..SessionSetup::for_artifact_graph(dir, name, graph_digest, entry, backend)
    };
    create_with(&dir.join(file), backend, &setup)
}

impl SessionSetup {
    /// The default setup of one graph of an artifact directory, plus, on
    /// `ort-tensorrt`, its prebuilt engines in `dir/engines`.
    pub fn for_artifact_graph(
        dir: &Path,
        name: &str,
        graph_digest: &str,
        entry: &wanrt_core::manifest::NetworkEntry,
        backend: Backend,
    ) -> Self {
        SessionSetup {
            trt: (backend == Backend::OrtTensorRt)
                .then(|| crate::engines::TrtCache::for_graph(dir, name, graph_digest, entry)),
            ..Default::default()
        }
    }
}

/// A session for the graph at `path` on `backend`.
pub fn create(path: &Path, backend: Backend) -> Result<Session> {
    create_with(path, backend, &SessionSetup::default())
}

/// A session for the graph at `path` on `backend`, set up as `setup` says.
///
/// GPU sessions run with ONNX Runtime's CPU fallback disabled, so a node
/// without a GPU kernel fails the load instead of silently running on the
/// CPU; `ort-tensorrt` registers the TensorRT provider first and the CUDA
/// provider second, so nodes TensorRT rejects go to CUDA, never to the CPU.
pub fn create_with(path: &Path, backend: Backend, setup: &SessionSetup) -> Result<Session> {
    let exec = &setup.exec;
    exec.check(backend)?;
    let env = crate::ortlib::environment()?;
    let net = path.display().to_string();
    let mut builder = Session::builder(env)
        .map_err(|e| Error::ort(&net, OrtCall::Configure, "creating the session builder", e))?;
    if let Some(prefix) = &setup.profiling {
        builder = builder
            .with_profiling(prefix)
            .map_err(|e| Error::ort(&net, OrtCall::Configure, "enabling profiling", e))?;
    }
    if setup.role == SessionRole::DitStage {
        builder = builder
            .with_intra_op_spinning(false)
            .map_err(|e| Error::ort(&net, OrtCall::Configure, "turning spinning off", e))?;
    }
    if backend.is_gpu() {
        builder = builder
            .with_disable_cpu_fallback()
            .map_err(|e| Error::ort(&net, OrtCall::Configure, "disabling the CPU fallback", e))?;
    }
    let registering = || format!("registering the {backend} execution provider");
    let cuda = || exec.cuda_provider(setup.role).build().error_on_failure();
    builder = match backend {
        // The CPU provider ONNX Runtime registers by itself has its arena.
        Backend::OrtCpu if exec.arena => builder,
        Backend::OrtCpu => builder
            .with_execution_providers([ep::CPU::default()
                .with_arena_allocator(false)
                .build()
                .error_on_failure()])
            .map_err(|e| Error::ort(&net, OrtCall::Provider, registering(), e))?,
        Backend::OrtCuda => builder
            .with_execution_providers([cuda()])
            .map_err(|e| Error::ort(&net, OrtCall::Provider, registering(), e))?,
        Backend::OrtTensorRt => {
            let device = exec.device_id;
            let trt = match &setup.trt {
                Some(cache) => cache.provider(device as u32),
                None => ep::TensorRT::default().with_device_id(device),
            };
            builder
                .with_execution_providers([trt.build().error_on_failure(), cuda()])
                .map_err(|e| Error::ort(&net, OrtCall::Provider, registering(), e))?
        }
    };
    builder.commit_from_file(path).map_err(|e| {
        let what = if classify_ort(OrtCall::Load, &e) == crate::ErrorKind::NoKernel {
            format!(
                "loading on {backend}: this graph's precision has no kernel on {backend} \
                 (compile with another wan-compile --precision, or choose another --backend)"
            )
        } else {
            format!("loading on {backend}")
        };
        Error::ort(&net, OrtCall::Load, what, e)
    })
}

fn to_value(network: &str, name: &str, t: &HostTensor) -> Result<DynValue> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    let what = || format!("input {name}");
    let v = match t.dtype {
        DType::Float32 => {
            Tensor::from_array((shape, t.to_f32().unwrap_or_default())).map(|t| t.into_dyn())
        }
        DType::Int64 => {
            Tensor::from_array((shape, t.to_i64().unwrap_or_default())).map(|t| t.into_dyn())
        }
        DType::Uint8 => Tensor::from_array((shape, t.data.clone())).map(|t| t.into_dyn()),
        other => {
            return Err(Error::Core(wanrt_core::Error::ContractMismatch {
                network: network.into(),
                tensor: name.into(),
                reason: format!("inputs of dtype {other} are not supported"),
            }));
        }
    };
    v.map_err(|e| Error::ort(network, OrtCall::Tensor, what(), e))
}

pub(crate) fn from_value(network: &str, name: &str, v: &DynValue) -> Result<HostTensor> {
    let unsupported = |reason: String| Error::Inference {
        network: network.into(),
        reason,
    };
    let ValueType::Tensor { ty, .. } = v.dtype() else {
        return Err(unsupported(format!("output {name} is not a tensor")));
    };
    let reading = |e| {
        Error::ort(
            network,
            OrtCall::Tensor,
            format!("reading output {name}"),
            e,
        )
    };
    match ty {
        TensorElementType::Float32 => {
            let (shape, data) = v.try_extract_tensor::<f32>().map_err(reading)?;
            Ok(HostTensor::from_f32(
                shape.iter().map(|&d| d as u64).collect(),
                data,
            ))
        }
        TensorElementType::Int64 => {
            let (shape, data) = v.try_extract_tensor::<i64>().map_err(reading)?;
            Ok(HostTensor::from_i64(
                shape.iter().map(|&d| d as u64).collect(),
                data,
            ))
        }
        other => Err(unsupported(format!(
            "output {name} has unsupported element type {other:?}"
        ))),
    }
}

/// One call of the session with named inputs.
pub fn run(
    session: &mut Session,
    network: &str,
    inputs: &[(String, HostTensor)],
) -> Result<BTreeMap<String, HostTensor>> {
    let mut values = Vec::with_capacity(inputs.len());
    for (name, t) in inputs {
        values.push((name.as_str(), to_value(network, name, t)?));
    }
    let outputs = session
        .run(values)
        .map_err(|e| Error::ort(network, OrtCall::Run, "running", e))?;
    let mut out = BTreeMap::new();
    for (name, v) in outputs.iter() {
        out.insert(name.to_string(), from_value(network, name, &v)?);
    }
    Ok(out)
}
