//! `ApiError`: every failure an HTTP caller can see, as a status and
//! `{"error": "..."}` (a 404 for an epoch whose snapshot is not kept also
//! carries `"retained"`). A caller's mistake is a 4xx, never a 5xx.

use crate::actors::serving::QueryError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

/// `Retry-After` of a 503, seconds: about a restart of the daemon.
pub const RETRY_AFTER_SECS: u64 = 5;

/// An HTTP API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A parameter is malformed or out of range.
    #[error("{0}")]
    BadRequest(String),
    /// No such view, metric or route, or no state for the view in the
    /// snapshot asked for.
    #[error("{0}")]
    NotFound(String),
    /// A request body over a configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// A request body in a format the route does not take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A known route asked with a method it does not take.
    #[error("method not allowed: this route takes {allow}")]
    MethodNotAllowed {
        /// The methods it takes, for the `Allow` header.
        allow: &'static str,
    },
    /// A missing or wrong bearer token.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// A token whose role does not allow the request.
    #[error("{0}")]
    Forbidden(String),
    /// The system is stopping, or cannot write: worth trying again soon.
    #[error("{0}")]
    Unavailable(String),
    /// A batch run failed (a damaged segment, say): trying again does not
    /// help until an operator acts.
    #[error("{0}")]
    BatchFailed(String),
    /// What was waited for did not happen in time (it may still happen).
    #[error("{0}")]
    Timeout(String),
    /// No snapshot of the epoch asked for is kept; the body lists those that are.
    #[error("{message}")]
    NotKept {
        /// What was asked, and what is kept.
        message: String,
        /// The epochs whose snapshots are kept, ascending.
        kept: Vec<crate::event::Epoch>,
    },
    /// Stored data the answer needs cannot be read (a damaged file): not the
    /// caller's fault, and asking again does not help until an operator acts.
    #[error("{0}")]
    Damaged(String),
}

impl From<QueryError> for ApiError {
    fn from(err: QueryError) -> ApiError {
        match err {
            QueryError::UnknownView(_)
            | QueryError::UnknownMetric { .. }
            | QueryError::NotInSnapshot { .. } => ApiError::NotFound(err.to_string()),
            QueryError::BadN(_) | QueryError::EmptyRange => ApiError::BadRequest(err.to_string()),
            QueryError::Stopped | QueryError::Raced(_) => ApiError::Unavailable(err.to_string()),
            QueryError::NotRetained { ref retained, .. } => ApiError::NotKept {
                kept: retained.clone(),
                message: err.to_string(),
            },
            QueryError::Unreadable { .. } => ApiError::Damaged(err.to_string()),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) | ApiError::NotKept { .. } => StatusCode::NOT_FOUND,
            ApiError::Damaged(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_) | ApiError::BatchFailed(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::MethodNotAllowed { allow } => {
                response.insert_header((actix_web::http::header::ALLOW, *allow));
            }
            // Stopping, or the store refusing writes: worth trying again soon.
            ApiError::Unavailable(_) => {
                response.insert_header((actix_web::http::header::RETRY_AFTER, RETRY_AFTER_SECS));
            }
            _ => {}
        }
        match self {
            ApiError::NotKept { kept, .. } => {
                response.json(serde_json::json!({ "error": self.to_string(), "retained": kept }))
            }
            _ => response.json(serde_json::json!({ "error": self.to_string() })),
        }
    }
}
