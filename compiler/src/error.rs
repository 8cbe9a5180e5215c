//! Typed errors of the compiler.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The model directory is neither layout.
    UnknownLayout,
    /// A file the layout requires is missing.
    MissingFile,
    /// A checkpoint file is corrupt or truncated.
    CorruptCheckpoint,
    /// A config file is invalid.
    InvalidConfig,
    /// A tensor is missing from the checkpoint.
    TensorMissing,
    /// A tensor has another shape than the config implies.
    ShapeMismatch,
    /// A tensor has a dtype that cannot be exported.
    DTypeUnsupported,
    /// The checkpoint holds tensors no network uses (config/weights mismatch).
    UnusedTensors,
    /// An invalid flag (profile, precision, network, preset).
    InvalidArgument,
    /// The output directory cannot be written or holds artifacts already.
    Output,
    /// The export was interrupted.
    Interrupted,
    /// Running an exported graph at compile time (caching the default
    /// negative prompt's embedding) failed; the runtime's error is the
    /// source, and `runtime_kind()` says which kind it was.
    CompileTimeRun,
    /// Prebuilt engines were asked for (`--engine`) and cannot be built
    /// here (no TensorRT, no GPU) or failed to build; `runtime_kind()` has
    /// the runtime's kind.
    Engine,
    /// A `--lora` file cannot be merged (which problem: the payload).
    Lora(crate::lora::LoraProblem),
    /// `--precision fp8` without `--calibrate`: FP8 needs static activation
    /// scales that only calibration chooses.
    NeedsCalibration,
    /// Calibration saw something it cannot make a scale of (a non-finite
    /// activation, a missing tap); runtime failures during calibration are
    /// `CompileTimeRun`.
    Calibration,
    Io,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{dir}: unknown model layout: {reason}")]
    UnknownLayout { dir: PathBuf, reason: String },
    #[error("{file}: missing ({reason})")]
    MissingFile { file: PathBuf, reason: String },
    #[error("{file}: {reason}")]
    Checkpoint { file: PathBuf, reason: String },
    #[error("{file}: invalid config: {reason}")]
    Config { file: PathBuf, reason: String },
    #[error("{dir}: {} tensors are not used by the {network} graph (first: {}); the config does not match the weights", names.len(), names.first().map(String::as_str).unwrap_or(""))]
    UnusedTensors {
        dir: PathBuf,
        network: String,
        names: Vec<String>,
    },
    #[error(transparent)]
    Core(#[from] wanrt_core::Error),
    #[error(transparent)]
    Graph(#[from] wanrt_graphs::Error),
    #[error("{flag}: {reason}")]
    InvalidArgument { flag: String, reason: String },
    #[error("output directory {dir}: {reason}")]
    Output { dir: PathBuf, reason: String },
    #[error("{what}: {source}")]
    Engine {
        what: String,
        #[source]
        source: wanrt_runtime::Error,
    },
    #[error("{what}: {source}")]
    CompileTimeRun {
        what: String,
        #[source]
        source: wanrt_runtime::Error,
    },
    #[error("{}: LoRA{}: {reason}", file.display(), if key.is_empty() { String::new() } else { format!(" key '{key}'") })]
    Lora {
        file: PathBuf,
        key: String,
        problem: crate::lora::LoraProblem,
        reason: String,
    },
    #[error("--precision fp8 needs --calibrate: {reason}")]
    NeedsCalibration { reason: String },
    #[error("calibration: {reason}")]
    Calibration { reason: String },
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        use wanrt_graphs::ErrorKind as G;
        match self {
            Error::UnknownLayout { .. } => ErrorKind::UnknownLayout,
            Error::MissingFile { .. } => ErrorKind::MissingFile,
            Error::Checkpoint { .. } => ErrorKind::CorruptCheckpoint,
            Error::Config { .. } => ErrorKind::InvalidConfig,
            Error::UnusedTensors { .. } => ErrorKind::UnusedTensors,
            Error::Core(e) => match e.kind() {
                wanrt_core::ErrorKind::InvalidProfile => ErrorKind::InvalidArgument,
                wanrt_core::ErrorKind::InvalidConfig => ErrorKind::InvalidConfig,
                wanrt_core::ErrorKind::Io => ErrorKind::Io,
                wanrt_core::ErrorKind::Manifest => ErrorKind::Output,
                wanrt_core::ErrorKind::ContractMismatch => ErrorKind::ShapeMismatch,
            },
            Error::Graph(e) => match e.kind() {
                G::TensorMissing => ErrorKind::TensorMissing,
                G::ShapeMismatch => ErrorKind::ShapeMismatch,
                G::DTypeUnsupported => ErrorKind::DTypeUnsupported,
                G::Source => ErrorKind::CorruptCheckpoint,
                G::Io => ErrorKind::Io,
                G::Invalid => ErrorKind::InvalidConfig,
                G::Interrupted => ErrorKind::Interrupted,
            },
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::Output { .. } => ErrorKind::Output,
            Error::CompileTimeRun { .. } => ErrorKind::CompileTimeRun,
            Error::Engine { .. } => ErrorKind::Engine,
            Error::Lora { problem, .. } => ErrorKind::Lora(*problem),
            Error::NeedsCalibration { .. } => ErrorKind::NeedsCalibration,
            Error::Calibration { .. } => ErrorKind::Calibration,
            Error::Io { .. } => ErrorKind::Io,
        }
    }

    /// For [`ErrorKind::CompileTimeRun`]: the runtime's kind (out of memory,
    /// no kernel, …).
    pub fn runtime_kind(&self) -> Option<wanrt_runtime::ErrorKind> {
        match self {
            Error::CompileTimeRun { source, .. } | Error::Engine { source, .. } => {
                Some(source.kind())
            }
            _ => None,
        }
    }

    pub fn io(file: &Path, source: std::io::Error) -> Self {
        Error::Io {
            file: file.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
