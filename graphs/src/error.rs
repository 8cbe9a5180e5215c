//! Typed errors of graph building.

use std::path::PathBuf;

use wanrt_core::DType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A tensor the network needs is not in the checkpoint.
    TensorMissing,
    /// A tensor has another shape than the config implies.
    ShapeMismatch,
    /// A tensor has a dtype the exporter cannot convert.
    DTypeUnsupported,
    /// The weight source failed (unreadable, corrupt or truncated file).
    Source,
    /// Writing the graph or its external data failed.
    Io,
    /// The config or profile cannot be built into a graph.
    Invalid,
    /// Export was interrupted (Ctrl-C).
    Interrupted,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tensor '{name}' is missing from {location}")]
    TensorMissing { name: String, location: String },
    #[error("tensor '{name}' has shape {found:?}, the config implies {expected:?} ({location})")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
        location: String,
    },
    #[error("tensor '{name}' has dtype {dtype}, which cannot be exported ({location})")]
    DTypeUnsupported {
        name: String,
        dtype: String,
        location: String,
    },
    #[error("{0}")]
    Source(Box<dyn std::error::Error + Send + Sync>, ErrorKind),
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::TensorMissing { .. } => ErrorKind::TensorMissing,
            Error::ShapeMismatch { .. } => ErrorKind::ShapeMismatch,
            Error::DTypeUnsupported { .. } => ErrorKind::DTypeUnsupported,
            Error::Source(_, k) => *k,
            Error::Io { .. } => ErrorKind::Io,
            Error::Invalid(_) => ErrorKind::Invalid,
            Error::Interrupted => ErrorKind::Interrupted,
        }
    }

    pub fn unsupported_dtype(name: &str, dtype: DType, location: &str) -> Self {
        Error::DTypeUnsupported {
            name: name.into(),
            dtype: dtype.to_string(),
            location: location.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
