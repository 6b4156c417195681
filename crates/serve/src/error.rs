//! The two error types of the service: [`ServeError`], why the service could not start (or
//! stop cleanly), naming the file or address; and [`ApiError`], what one request gets back, a
//! status with a JSON body `{"code": STABLE_CODE, "message": ...}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use siamese_infer::InferError;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the service could not start, or what went wrong while it stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The model, a gallery file or an image could not be used.
    #[error(transparent)]
    Infer(#[from] InferError),
    /// The operating system refused a read, write or listing.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The address could not be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A collection in the store cannot be recovered (the message says why and what to do).
    #[error("{}: {message}", path.display())]
    Store {
        /// The collection's folder or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The token file cannot be used.
    #[error("{}: {message}", path.display())]
    Token {
        /// The token file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A setting that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The async runtime or the encoder thread could not be started.
    #[error("cannot start the service's threads: {0}")]
    Runtime(std::io::Error),
}

impl ServeError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ServeError::Io {
            path: path.into(),
            source,
        }
    }
}

/// A failed request: its status, a stable machine-readable code, a message for people, and
/// for 503s how many seconds to wait before retrying.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code (`bad_json`, `image_too_large`, `unauthorized`, ...), listed in
    /// `/openapi.json`.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// `Retry-After` seconds (503s).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error with `status` and `code`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 with `code`.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 413 with `code`.
    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }

    /// 503 with `code` and `Retry-After: seconds`.
    pub fn unavailable(code: &'static str, message: impl Into<String>, seconds: u32) -> Self {
        ApiError {
            retry_after: Some(seconds),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// 500 `internal`: something the request did not cause (the message says what).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "message": self.message });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
