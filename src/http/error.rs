//! `AppError`: the one place where failures become HTTP responses.
//!
//! 4xx bodies are stable JSON: `{"error": {"code", "message", ...}}`. 5xx
//! bodies are generic; the cause chain goes to the log, never to the client.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::ValidationError;
use crate::storage::StorageError;

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the body breaks a rule of the contract.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// 400: the body could not be read at all (client went away, broken framing).
    #[error("cannot read the request body: {0}")]
    UnreadableBody(String),
    /// 404: no such import, citizen or path.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413: the body is larger than the configured limit (bytes).
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// 503: the store does not answer; retry later.
    #[error("storage unavailable")]
    Unavailable(String),
    /// 500: a bug or a broken store; details are logged only.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StorageError> for AppError {
    fn from(error: StorageError) -> Self {
        match error {
            e @ (StorageError::ImportNotFound(_) | StorageError::CitizenNotFound { .. }) => {
                AppError::NotFound(e.to_string())
            }
            StorageError::Invalid(e) => AppError::Validation(e),
            StorageError::Unavailable(why) => AppError::Unavailable(why),
            e @ StorageError::Internal(_) => AppError::Internal(Box::new(e)),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            AppError::Validation(e) => (
                StatusCode::BAD_REQUEST,
                json!({"error": {
                    "code": e.reason.code(),
                    "message": e.to_string(),
                    "field": e.field,
                    "citizen_id": e.citizen_id,
                }}),
            ),
            AppError::UnreadableBody(_) => (
                StatusCode::BAD_REQUEST,
                error_body("unreadable_body", &self),
            ),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, error_body("not_found", &self)),
            AppError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                error_body("method_not_allowed", &self),
            ),
            AppError::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                error_body("payload_too_large", &self),
            ),
            AppError::Unavailable(why) => {
                tracing::warn!(reason = %why, "storage unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    error_body("storage_unavailable", &self),
                )
            }
            AppError::Internal(cause) => {
                tracing::error!(error = ?cause, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    error_body("internal", &self),
                )
            }
        };
        json_response(status, body.to_string())
    }
}

fn error_body(code: &str, error: &AppError) -> serde_json::Value {
    json!({"error": {"code": code, "message": error.to_string()}})
}

/// A response with a JSON body that is already serialised.
pub fn json_response(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let body: axum::body::Body = body.into();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
