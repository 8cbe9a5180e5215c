//! Typed errors of the runtime.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// ONNX Runtime's library could not be found or loaded.
    OrtLibrary,
    /// An execution provider failed to register (never a silent fallback).
    Provider,
    /// This build has no TensorRT, or the GPU/TensorRT does not match.
    TensorRtUnavailable,
    /// The artifact directory is missing files, has another version, or a
    /// file does not match its digest or size.
    Artifacts,
    /// An input does not fit the compiled contract.
    ContractMismatch,
    /// A tensor file cannot be read.
    TensorFile,
    /// An output exists and overwriting was not asked for.
    OutputExists,
    /// A user-supplied argument is invalid.
    InvalidArgument,
    /// Inference failed inside the backend.
    Inference,
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
    #[error("artifacts {dir}: {reason}")]
    Artifacts { dir: PathBuf, reason: String },
    #[error(transparent)]
    Core(#[from] wanrt_core::Error),
    #[error("tensor file {file}: {reason}")]
    TensorFile { file: PathBuf, reason: String },
    #[error("{file} exists; pass --overwrite to replace it")]
    OutputExists { file: PathBuf },
    #[error("{flag}: {reason}")]
    InvalidArgument { flag: String, reason: String },
    #[error("inference of {network}: {reason}")]
    Inference { network: String, reason: String },
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
            Error::Artifacts { .. } => ErrorKind::Artifacts,
            Error::Core(e) => match e.kind() {
                wanrt_core::ErrorKind::ContractMismatch => ErrorKind::ContractMismatch,
                wanrt_core::ErrorKind::Io => ErrorKind::Io,
                wanrt_core::ErrorKind::InvalidProfile => ErrorKind::InvalidArgument,
                _ => ErrorKind::Artifacts,
            },
            Error::TensorFile { .. } => ErrorKind::TensorFile,
            Error::OutputExists { .. } => ErrorKind::OutputExists,
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::Inference { .. } => ErrorKind::Inference,
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

pub type Result<T, E = Error> = std::result::Result<T, E>;
