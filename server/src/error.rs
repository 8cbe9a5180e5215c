//! Typed errors: [`Error`] for the server's own work (storage, Redis,
//! engines), [`ApiError`] for what a client gets back as JSON.

use std::path::{Path, PathBuf};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A file or directory of `--data` could not be read or written.
    Storage,
    /// A stored job record is not valid JSON of a job.
    Corrupt,
    /// The Redis server refused a command or could not be reached.
    Queue,
    /// The engines failed to load or a run failed.
    Engine,
    /// A command-line flag is invalid.
    InvalidArgument,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: {source}")]
    Storage {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a job record: {source}")]
    Corrupt {
        file: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("redis: {context}: {source}")]
    Queue {
        context: String,
        #[source]
        source: redis::RedisError,
    },
    #[error(transparent)]
    Engine(#[from] wanrt_runtime::Error),
    #[error("{flag}: {reason}")]
    InvalidArgument { flag: String, reason: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Storage { .. } => ErrorKind::Storage,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Queue { .. } => ErrorKind::Queue,
            Error::Engine(_) => ErrorKind::Engine,
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
        }
    }

    pub fn storage(file: &Path, source: std::io::Error) -> Self {
        Error::Storage {
            file: file.to_path_buf(),
            source,
        }
    }

    pub fn queue(context: impl Into<String>) -> impl FnOnce(redis::RedisError) -> Self {
        let context = context.into();
        move |source| Error::Queue { context, source }
    }

    pub fn arg(flag: &str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            flag: flag.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error answer: the HTTP status and the JSON body
/// `{"error": {"message", "type", "param", "code"}}` (the shape the OpenAI
/// API answers with, so its clients show it).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Machine-readable: `invalid_json`, `invalid_value`, `unknown_size`, …
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// Seconds to wait before retrying (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    /// 422: `param` is present but wrong.
    pub fn field(param: &str, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.into()),
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
        }
    }

    pub fn not_found(id: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no video with id '{id}'"),
        )
    }

    /// 500 for a failure of the server itself; the cause is logged.
    pub fn internal(e: &Error) -> Self {
        eprintln!("wan-serve: error: {e}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            format!("the server failed: {e}"),
        )
    }

    fn error_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            429 => "rate_limit_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::internal(&e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.error_type(),
                "param": self.param,
                "code": self.code,
            }
        });
        let mut res = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}
