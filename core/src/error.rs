//! Typed errors of the shared layer.

use std::path::PathBuf;

/// What went wrong, for callers that match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A profile name, size, frame count or text length is not valid.
    InvalidProfile,
    /// A model config is missing a field, has a wrong value or is inconsistent.
    InvalidConfig,
    /// The manifest cannot be read, has another version, or does not match.
    Manifest,
    /// A tensor does not match the contract (name, dtype or shape).
    ContractMismatch,
    /// An I/O error on a named file.
    Io,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid profile ({flag}): {reason}")]
    InvalidProfile { flag: &'static str, reason: String },
    #[error("invalid model config {file}: {reason}")]
    InvalidConfig { file: PathBuf, reason: String },
    #[error("manifest {file}: {reason}")]
    Manifest { file: PathBuf, reason: String },
    #[error("tensor '{tensor}' of network {network}: {reason}")]
    ContractMismatch {
        network: String,
        tensor: String,
        reason: String,
    },
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidProfile { .. } => ErrorKind::InvalidProfile,
            Error::InvalidConfig { .. } => ErrorKind::InvalidConfig,
            Error::Manifest { .. } => ErrorKind::Manifest,
            Error::ContractMismatch { .. } => ErrorKind::ContractMismatch,
            Error::Io { .. } => ErrorKind::Io,
        }
    }

    pub(crate) fn profile(flag: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidProfile {
            flag,
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
