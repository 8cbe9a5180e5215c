//! Typed errors of the runtime.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// ONNX Runtime's library could not be found or loaded.
    OrtLibrary,
    /// An execution provider failed to register (never a silent fallback).
    Provider,
    /// TensorRT was asked for and is not available: the native backend is
    /// not part of this build (see `cpp/README.md`), or this machine lacks
    /// ONNX Runtime's TensorRT provider, TensorRT itself or a GPU.
    TensorRtUnavailable,
    /// A node of a graph ran on a provider the backend does not allow (a CPU
    /// node on a GPU backend).
    Placement,
    /// The artifact's prebuilt engines do not fit: built for another GPU
    /// architecture or library version, from other graphs, or missing.
    EngineMismatch,
    /// The artifact directory is missing files, has another version, or a
    /// file does not match its digest or size.
    Artifacts,
    /// An input does not fit the compiled contract.
    ContractMismatch,
    /// A tensor file cannot be read.
    TensorFile,
    /// An output exists and overwriting was not asked for.
    OutputExists,
    /// An output path holds something wanrt never replaces (a directory,
    /// device, FIFO, symbolic link), or collides with another output.
    OutputRefused,
    /// A user-supplied argument is invalid.
    InvalidArgument,
    /// Inference failed inside the backend (none of the more specific kinds
    /// below).
    Inference,
    /// The backend ran out of memory (host or device) loading or running a
    /// network.
    OutOfMemory,
    /// The backend has no kernel for an operator at the graph's precision
    /// (e.g. bf16 on ONNX Runtime's CPU provider): compile another precision
    /// or run on another backend.
    NoKernel,
    /// The run was interrupted (Ctrl-C).
    Interrupted,
    Io,
    /// A tokenizer file is missing, unreadable or not a tokenizer.
    Tokenizer,
    /// An input image is missing, unreadable, not an image, damaged or of
    /// an unacceptable size (see `image`).
    Image,
    /// The video encoder failed on valid input (see `video`).
    VideoEncode,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ONNX Runtime library: {0}")]
    OrtLibrary(String),
    #[error("execution provider {provider} failed to register: {reason}")]
    Provider { provider: String, reason: String },
    #[error("TensorRT: {0}")]
    TensorRtUnavailable(String),
    #[error("placement of {graph}: {reason}")]
    Placement { graph: String, reason: String },
    #[error("engines in {dir}: {reason}")]
    EngineMismatch { dir: PathBuf, reason: String },
    #[error("artifacts {dir}: {reason}")]
    Artifacts { dir: PathBuf, reason: String },
    #[error(transparent)]
    Core(#[from] wanrt_core::Error),
    #[error("tensor file {file}: {reason}")]
    TensorFile { file: PathBuf, reason: String },
    #[error("{file} exists; pass --overwrite to replace it")]
    OutputExists { file: PathBuf },
    #[error("output {file}: {reason}")]
    OutputRefused { file: PathBuf, reason: String },
    #[error("{flag}: {reason}")]
    InvalidArgument { flag: String, reason: String },
    #[error("inference of {network}: {reason}")]
    Inference { network: String, reason: String },
    /// Known before loading: the backend has no kernels for the network's
    /// compiled precision.
    #[error("network {network}: {reason}")]
    NoKernels { network: String, reason: String },
    /// A call into ONNX Runtime failed; the source is ONNX Runtime's own
    /// error, and `kind` its classification (see [`classify_ort`]).
    #[error("{network}: {what}: {source}")]
    Ort {
        network: String,
        what: String,
        kind: ErrorKind,
        #[source]
        source: ort::Error,
    },
    #[error("interrupted")]
    Interrupted,
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tokenizer {file}: {reason}")]
    Tokenizer { file: PathBuf, reason: String },
    #[error("image {file}: {problem}")]
    Image {
        file: PathBuf,
        problem: crate::image::ImageProblem,
    },
    #[error("encoding video {file}: {reason}")]
    VideoEncode { file: PathBuf, reason: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::OrtLibrary(_) => ErrorKind::OrtLibrary,
            Error::Provider { .. } => ErrorKind::Provider,
            Error::TensorRtUnavailable(_) => ErrorKind::TensorRtUnavailable,
            Error::EngineMismatch { .. } => ErrorKind::EngineMismatch,
            Error::Placement { .. } => ErrorKind::Placement,
            Error::Artifacts { .. } => ErrorKind::Artifacts,
            Error::Core(e) => match e.kind() {
                wanrt_core::ErrorKind::ContractMismatch => ErrorKind::ContractMismatch,
                wanrt_core::ErrorKind::Io => ErrorKind::Io,
                wanrt_core::ErrorKind::InvalidProfile => ErrorKind::InvalidArgument,
                // A config or manifest read from the artifact directory.
                wanrt_core::ErrorKind::InvalidConfig | wanrt_core::ErrorKind::Manifest => {
                    ErrorKind::Artifacts
                }
            },
            Error::TensorFile { .. } => ErrorKind::TensorFile,
            Error::OutputExists { .. } => ErrorKind::OutputExists,
            Error::OutputRefused { .. } => ErrorKind::OutputRefused,
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::Inference { .. } => ErrorKind::Inference,
            Error::Ort { kind, .. } => *kind,
            Error::NoKernels { .. } => ErrorKind::NoKernel,
            Error::Interrupted => ErrorKind::Interrupted,
            Error::Io { .. } => ErrorKind::Io,
            Error::Tokenizer { .. } => ErrorKind::Tokenizer,
            Error::Image { .. } => ErrorKind::Image,
            Error::VideoEncode { .. } => ErrorKind::VideoEncode,
        }
    }

    pub fn io(file: &Path, source: std::io::Error) -> Self {
        Error::Io {
            file: file.to_path_buf(),
            source,
        }
    }

    pub fn arg(flag: &str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            flag: flag.into(),
            reason: reason.into(),
        }
    }
}

/// Which kind of call into ONNX Runtime failed, for [`Error::ort`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrtCall {
    /// Creating the session builder or setting its options.
    Configure,
    /// Registering an execution provider.
    Provider,
    /// Loading (and optimising) a graph.
    Load,
    /// Creating, binding or reading tensors.
    Tensor,
    /// Running the graph.
    Run,
}

/// The kind a failed ONNX Runtime call belongs to. ONNX Runtime reports most
/// failures with a generic status code, so the message is read too: an
/// allocation failure (host or CUDA) is [`ErrorKind::OutOfMemory`], a
/// missing kernel [`ErrorKind::NoKernel`], a tensor that does not fit the
/// graph [`ErrorKind::ContractMismatch`]; the rest follow the call.
pub fn classify_ort(call: OrtCall, e: &ort::Error) -> ErrorKind {
    use ort::ErrorCode as C;
    let msg = e.message();
    const OOM: [&str; 6] = [
        "Failed to allocate memory",
        "out of memory",
        "bad_alloc",
        "CUBLAS_STATUS_ALLOC_FAILED",
        "cudaErrorMemoryAllocation",
        "CUDNN_STATUS_ALLOC_FAILED",
    ];
    if OOM.iter().any(|p| msg.contains(p)) {
        return ErrorKind::OutOfMemory;
    }
    if msg.contains("Could not find an implementation for") || e.code() == C::NotImplemented {
        return ErrorKind::NoKernel;
    }
    match call {
        OrtCall::Provider => ErrorKind::Provider,
        OrtCall::Configure => ErrorKind::Inference,
        OrtCall::Load => match e.code() {
            C::NoSuchFile | C::NoModel | C::InvalidProtobuf | C::InvalidGraph => {
                ErrorKind::Artifacts
            }
            C::ExecutionProviderFailure => ErrorKind::Provider,
            _ => ErrorKind::Inference,
        },
        OrtCall::Tensor | OrtCall::Run => {
            if msg.contains("Got invalid dimensions")
                || msg.contains("Unexpected input data type")
                || msg.contains("Invalid input name")
                || msg.contains("Invalid rank")
            {
                ErrorKind::ContractMismatch
            } else if e.code() == C::ExecutionProviderFailure {
                ErrorKind::Provider
            } else {
                ErrorKind::Inference
            }
        }
    }
}

impl Error {
    /// Wraps a failed ONNX Runtime call on `network` (the source is kept).
    pub fn ort<R>(
        network: impl Into<String>,
        call: OrtCall,
        what: impl Into<String>,
        e: ort::Error<R>,
    ) -> Self
    where
        ort::Error: From<ort::Error<R>>,
    {
        let source = ort::Error::from(e);
        Error::Ort {
            network: network.into(),
            what: what.into(),
            kind: classify_ort(call, &source),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    fn ort_err(code: ort::ErrorCode, msg: &str) -> ort::Error {
        // An ort::Error owns an ONNX Runtime status: the library must be loaded.
        crate::ortlib::environment().expect("ONNX Runtime (source scripts/env.sh)");
        ort::Error::new_with_code(code, msg)
    }

    #[test]
    fn ort_failures_are_classified_and_keep_their_source() {
        use ort::ErrorCode as C;
        let cases = [
            (
                OrtCall::Run,
                C::GenericFailure,
                "Failed to allocate memory for requested buffer of size 123",
                ErrorKind::OutOfMemory,
            ),
            (
                OrtCall::Run,
                C::GenericFailure,
                "CUDA failure 2: out of memory",
                ErrorKind::OutOfMemory,
            ),
            (
                OrtCall::Load,
                C::NotImplemented,
                "Could not find an implementation for MatMul(13) node with name 'x'",
                ErrorKind::NoKernel,
            ),
            (
                OrtCall::Run,
                C::InvalidArgument,
                "Got invalid dimensions for input: x for the following indices",
                ErrorKind::ContractMismatch,
            ),
            (
                OrtCall::Load,
                C::InvalidProtobuf,
                "Protobuf parsing failed",
                ErrorKind::Artifacts,
            ),
            (
                OrtCall::Load,
                C::NoSuchFile,
                "Load model from x failed: File doesn't exist",
                ErrorKind::Artifacts,
            ),
            (
                OrtCall::Provider,
                C::GenericFailure,
                "CUDA execution provider is not enabled",
                ErrorKind::Provider,
            ),
            (
                OrtCall::Run,
                C::RuntimeException,
                "Non-zero status code returned while running Add node",
                ErrorKind::Inference,
            ),
        ];
        for (call, code, msg, want) in cases {
            let e = Error::ort("dit", call, "running", ort_err(code, msg));
            assert_eq!(e.kind(), want, "{msg}");
            let source = e.source().expect("the ort error is kept as source");
            assert_eq!(source.to_string(), msg);
            assert!(e.to_string().contains(msg) && e.to_string().starts_with("dit: running"));
        }
    }
}
