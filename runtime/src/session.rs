//! ONNX Runtime sessions: provider registration and tensor conversion.

use std::collections::BTreeMap;
use std::path::Path;

use ort::ep;
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use wanrt_core::DType;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensorfile::HostTensor;

/// A session for the graph at `path` on `backend`.
pub fn create(path: &Path, backend: Backend) -> Result<Session> {
    let env = crate::ortlib::environment()?;
    let inference = |reason: String| Error::Inference {
        network: path.display().to_string(),
        reason,
    };
    let provider = |reason: String| Error::Provider {
        provider: backend.name().into(),
        reason,
    };
    let mut builder = Session::builder(env).map_err(|e| inference(e.to_string()))?;
    builder = match backend {
        Backend::OrtCpu => builder,
        Backend::OrtCuda => builder
            .with_execution_providers([ep::CUDA::default().build().error_on_failure()])
            .map_err(|e| provider(e.to_string()))?,
        Backend::OrtTensorRt => builder
            .with_execution_providers([ep::TensorRT::default().build().error_on_failure()])
            .map_err(|e| provider(e.to_string()))?,
        Backend::TensorRt => return Err(crate::trt::unavailable()),
    };
    builder.commit_from_file(path).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("Could not find an implementation") {
            provider(format!(
                "{msg} (this graph's precision has no kernels on {backend})"
            ))
        } else {
            inference(format!("loading: {msg}"))
        }
    })
}

fn to_value(t: &HostTensor) -> std::result::Result<DynValue, String> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    let v = match t.dtype {
        DType::Float32 => {
            Tensor::from_array((shape, t.to_f32().unwrap_or_default())).map(|t| t.into_dyn())
        }
        DType::Int64 => {
            Tensor::from_array((shape, t.to_i64().unwrap_or_default())).map(|t| t.into_dyn())
        }
        DType::Uint8 => Tensor::from_array((shape, t.data.clone())).map(|t| t.into_dyn()),
        other => return Err(format!("inputs of dtype {other} are not supported")),
    };
    v.map_err(|e| e.to_string())
}

pub(crate) fn from_value(name: &str, v: &DynValue) -> std::result::Result<HostTensor, String> {
    let ValueType::Tensor { ty, .. } = v.dtype() else {
        return Err(format!("output {name} is not a tensor"));
    };
    match ty {
        TensorElementType::Float32 => {
            let (shape, data) = v.try_extract_tensor::<f32>().map_err(|e| e.to_string())?;
            Ok(HostTensor::from_f32(
                shape.iter().map(|&d| d as u64).collect(),
                data,
            ))
        }
        TensorElementType::Int64 => {
            let (shape, data) = v.try_extract_tensor::<i64>().map_err(|e| e.to_string())?;
            Ok(HostTensor::from_i64(
                shape.iter().map(|&d| d as u64).collect(),
                data,
            ))
        }
        other => Err(format!(
            "output {name} has unsupported element type {other:?}"
        )),
    }
}

/// One call of the session with named inputs.
pub fn run(
    session: &mut Session,
    network: &str,
    inputs: &[(String, HostTensor)],
) -> Result<BTreeMap<String, HostTensor>> {
    let fail = |reason: String| Error::Inference {
        network: network.into(),
        reason,
    };
    let mut values = Vec::with_capacity(inputs.len());
    for (name, t) in inputs {
        values.push((
            name.as_str(),
            to_value(t).map_err(|r| fail(format!("input {name}: {r}")))?,
        ));
    }
    let outputs = session.run(values).map_err(|e| fail(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, v) in outputs.iter() {
        out.insert(name.to_string(), from_value(name, &v).map_err(fail)?);
    }
    Ok(out)
}
