//! Execution backends, chosen explicitly or by `auto`.
//!
//! A provider that fails to register is an error, never a silent fallback to
//! the CPU (`ort`'s `error_on_failure`). `auto` (the binaries' default)
//! resolves to one concrete backend before anything is loaded and says why;
//! [`check_precisions`] then refuses, at once and naming the flag to change,
//! every network whose compiled precision the backend has no kernels for.
//!
//! This build has no native TensorRT backend (the C++ bridge in `cpp/` is
//! not compiled; see `cpp/README.md`): TensorRT runs through ONNX Runtime's
//! TensorRT provider, `ort-tensorrt`. Asking for `tensorrt` is refused with
//! that explanation.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use wanrt_core::{Manifest, NetworkKind, Precision};

use crate::error::{Error, Result};

/// Where networks execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Backend {
    /// ONNX Runtime, CPU provider (what CI runs).
    #[default]
    OrtCpu,
    /// ONNX Runtime, CUDA provider.
    OrtCuda,
    /// ONNX Runtime, TensorRT provider.
    OrtTensorRt,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::OrtCpu, Backend::OrtCuda, Backend::OrtTensorRt];

    pub fn name(self) -> &'static str {
        match self {
            Backend::OrtCpu => "ort-cpu",
            Backend::OrtCuda => "ort-cuda",
            Backend::OrtTensorRt => "ort-tensorrt",
        }
    }

    /// Whether this backend runs on a GPU.
    pub fn is_gpu(self) -> bool {
        self != Backend::OrtCpu
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why `tensorrt` (the native backend) is refused.
pub fn native_tensorrt_unavailable() -> Error {
    Error::TensorRtUnavailable(format!(
        "the native TensorRT backend is not part of this build (the C++ bridge in cpp/ is not \
         compiled; build probe: {}); TensorRT runs through ONNX Runtime's TensorRT provider: \
         --backend ort-tensorrt",
        crate::trt::status()
    ))
}

impl FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "tensorrt" {
            return Err(native_tensorrt_unavailable());
        }
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                Error::arg(
                    "--backend",
                    format!(
                        "unknown backend '{s}' (expected auto, ort-cpu, ort-cuda or ort-tensorrt)"
                    ),
                )
            })
    }
}

/// What the user asked for: a backend, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// The best backend this machine and the loaded ONNX Runtime offer.
    #[default]
    Auto,
    Exactly(Backend),
}

impl FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "auto" {
            Ok(BackendChoice::Auto)
        } else {
            s.parse().map(BackendChoice::Exactly)
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendChoice::Auto => f.write_str("auto"),
            BackendChoice::Exactly(b) => b.fmt(f),
        }
    }
}

/// A resolved choice and the reason for it (printed by the binaries,
/// recorded in the sidecar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub backend: Backend,
    pub why: String,
}

/// Whether an NVIDIA GPU is visible to this process (its driver's device
/// nodes exist).
fn nvidia_gpu_visible() -> bool {
    std::path::Path::new("/dev/nvidiactl").exists() || std::path::Path::new("/dev/nvidia0").exists()
}

impl BackendChoice {
    /// The concrete backend. `auto` picks `ort-cuda` when the loaded ONNX
    /// Runtime has the CUDA provider and an NVIDIA GPU is visible, else
    /// `ort-cpu`. (`ort-tensorrt` is never picked automatically: without
    /// prebuilt engines its provider builds every engine in each process.)
    pub fn resolve(self) -> Result<Resolved> {
        match self {
            BackendChoice::Exactly(backend) => Ok(Resolved {
                backend,
                why: "--backend".into(),
            }),
            BackendChoice::Auto => {
                crate::ortlib::environment()?;
                use ort::ep::ExecutionProvider;
                let cuda = <ort::ep::CUDA as ExecutionProvider>::is_available().unwrap_or(false);
                let gpu = nvidia_gpu_visible();
                Ok(match (cuda, gpu) {
                    (true, true) => Resolved {
                        backend: Backend::OrtCuda,
                        why:
                            "auto: ONNX Runtime has the CUDA provider and an NVIDIA GPU is visible"
                                .into(),
                    },
                    (true, false) => Resolved {
                        backend: Backend::OrtCpu,
                        why:
                            "auto: ONNX Runtime has the CUDA provider but no NVIDIA GPU is visible"
                                .into(),
                    },
                    (false, _) => Resolved {
                        backend: Backend::OrtCpu,
                        why: "auto: the loaded ONNX Runtime has no CUDA provider (CPU wheel)"
                            .into(),
                    },
                })
            }
        }
    }
}

/// Refuses, before any session is created, a network whose compiled
/// precision `backend` has no kernels for, naming the flags to change:
/// bf16 on ONNX Runtime's CPU provider (no bf16 kernels at all), and a bf16
/// VAE on the CUDA provider (ONNX Runtime 1.31 has no bf16 Pad, Resize,
/// ConvTranspose or InstanceNorm kernels there).
pub fn check_precisions(
    manifest: &Manifest,
    only: Option<NetworkKind>,
    r: &Resolved,
) -> Result<()> {
    for (kind, entry) in &manifest.networks {
        if only.is_some_and(|k| k != *kind) {
            continue;
        }
        if let Some(q) = &entry.quantization {
            check_quantized(kind.name(), entry.precision, q.scheme, r)?;
        }
        if entry.precision != Precision::Bf16 {
            continue;
        }
        let is_vae = matches!(kind, NetworkKind::VaeEncoder | NetworkKind::VaeDecoder);
        let compile_flag = if is_vae {
            "--vae-precision"
        } else {
            "--precision"
        };
        match r.backend {
            Backend::OrtCpu => {
                return Err(Error::NoKernels {
                    network: kind.name().into(),
                    reason: format!(
                        "compiled in bf16, and ONNX Runtime's CPU provider ({}) has no bf16 kernels: \
                         recompile with wan-compile {compile_flag} fp32 (or fp16), or run on a GPU \
                         with wan-run --backend ort-cuda",
                        r.why
                    ),
                });
            }
            Backend::OrtCuda if is_vae => {
                return Err(Error::NoKernels {
                    network: kind.name().into(),
                    reason: "compiled in bf16, and ONNX Runtime 1.31's CUDA provider has no bf16 \
                             kernels for the VAE's Pad/Resize/ConvTranspose: recompile with \
                             wan-compile --vae-precision fp32 (the default) or fp16"
                        .into(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// A quantized DiT on `r`'s backend: INT8 (MatMulInteger, uint8
/// activations) is for ONNX Runtime's CPU provider only; FP8 runs on the CPU
/// provider only with an fp32 base (it has fp32 Q/DQ kernels for float8, no
/// half ones).
pub fn check_quantized(
    network: &str,
    base: Precision,
    scheme: wanrt_core::QuantScheme,
    r: &Resolved,
) -> Result<()> {
    use wanrt_core::QuantScheme;
    let refuse = |reason: String| {
        Err(Error::NoKernels {
            network: network.into(),
            reason,
        })
    };
    match (scheme, r.backend) {
        (QuantScheme::Int8, Backend::OrtCpu) => Ok(()),
        (QuantScheme::Int8, other) => refuse(format!(
            "compiled with INT8 block linears (DynamicQuantizeLinear/MatMulInteger), which are \
             for ONNX Runtime's CPU provider; on {other} use wan-run --backend ort-cpu, or \
             recompile with wan-compile --precision fp8 (TensorRT) or bf16"
        )),
        (QuantScheme::Fp8, Backend::OrtCpu) if base != Precision::Fp32 => refuse(format!(
            "compiled with FP8 block linears on a {base} base; ONNX Runtime's CPU provider ({}) \
             runs FP8 QuantizeLinear/DequantizeLinear only around fp32: recompile with \
             wan-compile --precision fp8 --fp8-base fp32, or run on a GPU",
            r.why
        )),
        (QuantScheme::Fp8, _) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_engines_run_where_their_kernels_are() {
        use wanrt_core::QuantScheme;
        let on = |backend| Resolved {
            backend,
            why: "test".into(),
        };
        let ok = |s, base, b| check_quantized("dit", base, s, &on(b)).is_ok();
        assert!(ok(QuantScheme::Int8, Precision::Fp32, Backend::OrtCpu));
        assert!(!ok(QuantScheme::Int8, Precision::Fp32, Backend::OrtCuda));
        assert!(!ok(
            QuantScheme::Int8,
            Precision::Fp32,
            Backend::OrtTensorRt
        ));
        assert!(ok(QuantScheme::Fp8, Precision::Fp32, Backend::OrtCpu));
        assert!(ok(QuantScheme::Fp8, Precision::Bf16, Backend::OrtTensorRt));
        let e = check_quantized(
            "dit",
            Precision::Fp16,
            QuantScheme::Fp8,
            &on(Backend::OrtCpu),
        )
        .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::NoKernel);
        assert!(e.to_string().contains("--fp8-base fp32"), "{e}");
    }

    #[test]
    fn names_round_trip_and_native_tensorrt_is_refused() {
        for b in Backend::ALL {
            assert_eq!(b.name().parse::<Backend>().unwrap(), b);
            assert_eq!(
                b.name().parse::<BackendChoice>().unwrap(),
                BackendChoice::Exactly(b)
            );
        }
        assert_eq!(
            "auto".parse::<BackendChoice>().unwrap(),
            BackendChoice::Auto
        );
        let e = "tensorrt".parse::<BackendChoice>().unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::TensorRtUnavailable);
        assert!(e.to_string().contains("--backend ort-tensorrt"), "{e}");
        let e = "cuda".parse::<Backend>().unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("--backend"), "{e}");
    }
}
