//! Which backends run a graph's attention formulation as compiled
//! (`wan-compile --attention`, recorded in the manifest; `docs/WAN.md` §11).
//!
//! `onnx` (the opset-23 `Attention` op) and `matmul` (`MatMul → Softmax →
//! MatMul`, which TensorRT fuses as well) run everywhere. `mha`, ONNX
//! Runtime's `com.microsoft.MultiHeadAttention` contrib op, is the CPU
//! provider's formulation: the CUDA provider has a kernel for it, TensorRT
//! has none, so an `mha` graph on `ort-tensorrt` would be cut into engines
//! between the attention nodes, each of those run by the CUDA provider.
//! That is refused before any session is created.

use wanrt_core::manifest::Manifest;
use wanrt_core::{AttentionKind, NetworkKind};

use crate::backend::{Backend, Resolved};
use crate::error::{Error, Result};

/// Refuses a network whose attention formulation `r.backend` cannot run in
/// its own kernels, naming the flags that fix it.
pub fn check_attention(manifest: &Manifest, only: Option<NetworkKind>, r: &Resolved) -> Result<()> {
    for (kind, entry) in &manifest.networks {
        if only.is_some_and(|k| k != *kind) {
            continue;
        }
        if entry.attention == AttentionKind::Mha && r.backend == Backend::OrtTensorRt {
            return Err(Error::NoKernels {
                network: kind.name().into(),
                reason: format!(
                    "compiled with --attention mha (ONNX Runtime's contrib op for its CPU \
                     provider), which TensorRT has no kernel for ({}): recompile with \
                     wan-compile --attention onnx (what auto picks for bf16/fp16 graphs and \
                     --engine tensorrt), or run with --backend ort-cuda or ort-cpu",
                    r.why
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wanrt_core::manifest::ModelInfo;
    use wanrt_core::{DitConfig, NetworkContract, Precision, Profile, Task};

    fn manifest(attention: AttentionKind) -> Manifest {
        let profile = Profile::custom(32, 32, 9, 16).unwrap();
        let cfg = DitConfig::t2v_1_3b();
        let c = NetworkContract::dit(&cfg, &profile).unwrap();
        let mut m = Manifest::new(ModelInfo {
            task: Task::T2v,
            layout: "diffusers".into(),
            source: "x".into(),
        });
        m.networks.insert(
            NetworkKind::Dit,
            wanrt_core::manifest::NetworkEntry {
                file: "dit.onnx".into(),
                external_data: None,
                external_data_bytes: 0,
                precision: Precision::Fp32,
                profile,
                config: serde_json::Value::Null,
                weights_digest: String::new(),
                graph_digest: String::new(),
                inputs: c.inputs,
                outputs: c.outputs,
                tools: wanrt_core::manifest::Tools {
                    wanrt: "0".into(),
                    onnx_opset: 23,
                    onnx_ir_version: 10,
                },
                chunks: vec![],
                loras: vec![],
                stages: vec![],
                cache_graphs: vec![],
                quantization: None,
                attention,
            },
        );
        m
    }

    fn on(backend: Backend) -> Resolved {
        Resolved {
            backend,
            why: "--backend".into(),
        }
    }

    #[test]
    fn mha_is_refused_on_tensorrt_only() {
        for kind in AttentionKind::ALL {
            for backend in Backend::ALL {
                let r = check_attention(&manifest(kind), None, &on(backend));
                if kind == AttentionKind::Mha && backend == Backend::OrtTensorRt {
                    let e = r.unwrap_err();
                    assert_eq!(e.kind(), crate::ErrorKind::NoKernel);
                    assert!(e.to_string().contains("--attention onnx"), "{e}");
                    assert!(e.to_string().starts_with("network dit:"), "{e}");
                } else {
                    r.unwrap();
                }
            }
        }
        // Only the networks a command loads are checked.
        let m = manifest(AttentionKind::Mha);
        check_attention(&m, Some(NetworkKind::VaeDecoder), &on(Backend::OrtTensorRt)).unwrap();
    }
}
