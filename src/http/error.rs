//! `AppError`: the one place where failures become HTTP responses.
//!
//! Every error body is JSON: `{"error": {"code", "message", ...}}`. 4xx
//! bodies are stable; 5xx bodies say what the client can do (retry or not)
//! without internals. What went wrong in detail is attached to the response
//! as a [`Failure`] and written once, in the request's log line.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::ValidationError;
use crate::storage::StorageError;
use crate::units::ByteSize;

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the body breaks a rule of the contract.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// 400: the body could not be read at all (client went away, broken framing, bad gzip).
    #[error("cannot read the request body: {0}")]
    UnreadableBody(String),
    /// 404: no such import, citizen or path.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 408: the request took longer than the request timeout (seconds).
    #[error(
        "the request did not finish within {0} s (--request-timeout-secs / GIFTS_REQUEST_TIMEOUT_SECS); a write may still have been applied"
    )]
    Timeout(u64),
    /// 413: the body is larger than the configured limit.
    #[error(
        "the request body is larger than the limit of {0} ({bytes} bytes), set by --max-body-bytes / GIFTS_MAX_BODY_BYTES",
        bytes = .0.get()
    )]
    PayloadTooLarge(ByteSize),
    /// 415: a `Content-Encoding` other than gzip.
    #[error("unsupported Content-Encoding {0:?}: send the body plain or gzip-compressed")]
    UnsupportedEncoding(String),
    /// 400: a query parameter breaks its rule (name, why).
    #[error("query parameter {0}: {1}")]
    BadQuery(&'static str, String),
    /// 400: a request header breaks its rule (name, why).
    #[error("header {0}: {1}")]
    BadHeader(&'static str, String),
    /// 422: an idempotency key reused with a different body.
    #[error(
        "Idempotency-Key {key:?} was used for import {import} with a different body; use a new key for a new import"
    )]
    KeyReused {
        /// The key.
        key: String,
        /// The import stored under it.
        import: crate::domain::ImportId,
    },
    /// 503: too many requests wait for the store; not applied, retry in a second.
    #[error(
        "storage unavailable: the store is overloaded; the request was not applied, retry in a second"
    )]
    Overloaded(String),
    /// 504: a write was sent to the store and not confirmed in time: it may have been applied.
    #[error(
        "storage timeout: the store did not confirm the write in time, so it may have been applied; check before retrying (a POST /imports with an Idempotency-Key can simply be retried)"
    )]
    OutcomeUnknown(String),
    /// 507: the store has no room: the write was not applied; reads still work.
    #[error(
        "insufficient storage: the store has no room to write, so nothing was changed; reads are still served"
    )]
    InsufficientStorage(String),
    /// 503: the store does not answer; the request was not applied, retry later.
    #[error(
        "storage unavailable: the service's database did not answer, so the request was not applied; retry later"
    )]
    Unavailable(String),
    /// 503: the store refuses this service (wrong password, missing grants):
    /// not applied, and an operator must act. The text is safe to show.
    #[error("storage unavailable: the service is misconfigured: {0}; the request was not applied")]
    Misconfigured(String),
    /// 500: a bug or a broken store; details are logged only.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl AppError {
    /// A fault of the service (500), the cause logged only.
    pub fn internal(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(error.into())
    }
}

/// A blocking task that panicked or was cancelled: a fault of the service.
impl From<tokio::task::JoinError> for AppError {
    fn from(error: tokio::task::JoinError) -> Self {
        Self::internal(error)
    }
}

/// The render permits closed: a fault of the service. (No `From` for
/// `serde_json::Error`: a client's JSON is a 400, so a conversion that
/// made every JSON error a 500 would be a trap; rendering our own answers
/// says `AppError::internal`.)
impl From<tokio::sync::AcquireError> for AppError {
    fn from(error: tokio::sync::AcquireError) -> Self {
        Self::internal(error)
    }
}

impl From<StorageError> for AppError {
    fn from(error: StorageError) -> Self {
        match error {
            e @ (StorageError::ImportNotFound(_) | StorageError::CitizenNotFound { .. }) => {
                AppError::NotFound(e.to_string())
            }
            StorageError::Invalid(e) => AppError::Validation(e),
            StorageError::Unavailable(why) => AppError::Unavailable(why),
            StorageError::Misconfigured(why) => AppError::Misconfigured(why),
            StorageError::Full(why) => AppError::InsufficientStorage(why),
            StorageError::Overloaded(why) => AppError::Overloaded(why),
            StorageError::OutcomeUnknown(why) => AppError::OutcomeUnknown(why),
            StorageError::KeyReused { key, import } => AppError::KeyReused { key, import },
            e @ StorageError::Internal(_) => AppError::internal(e),
        }
    }
}

impl From<crate::reads::ReadError> for AppError {
    fn from(error: crate::reads::ReadError) -> Self {
        match error {
            crate::reads::ReadError::Store(e) => e.into(),
            crate::reads::ReadError::Internal(e) => AppError::Internal(e),
        }
    }
}

/// The `code` of an error answer's body, for the request's one log line.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// An error answer `{"error": {...}}` (`body`) whose code is `code`: the
/// code goes into the request's log line too.
pub fn json_error(status: StatusCode, code: &'static str, body: &serde_json::Value) -> Response {
    let mut response = json_response(status, body.to_string());
    response.extensions_mut().insert(ErrorCode(code));
    response
}

/// The code of an error answer the service did not make itself (a
/// framework's rejection), as [`json_errors`] writes it.
pub fn fallback_code(status: StatusCode) -> String {
    match status {
        StatusCode::NOT_FOUND => "not_found".to_owned(),
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed".to_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or("error")
            .to_lowercase()
            .replace([' ', '-'], "_"),
    }
}

/// A server-side failure behind a response, for the request's one log line.
#[derive(Debug, Clone)]
pub struct Failure {
    /// True for faults (500), false for conditions the service expects (503).
    pub fault: bool,
    /// What happened, with the cause chain; never sent to the client.
    pub detail: String,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            AppError::Validation(e) => (StatusCode::BAD_REQUEST, e.reason.code()),
            AppError::UnreadableBody(_) => (StatusCode::BAD_REQUEST, "unreadable_body"),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AppError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            AppError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            AppError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            AppError::UnsupportedEncoding(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_encoding",
            ),
            AppError::BadHeader(..) => (StatusCode::BAD_REQUEST, "invalid_header"),
            AppError::BadQuery(..) => (StatusCode::BAD_REQUEST, "invalid_query"),
            AppError::KeyReused { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            AppError::Unavailable(_) | AppError::Misconfigured(_) | AppError::Overloaded(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable")
            }
            AppError::OutcomeUnknown(_) => (StatusCode::GATEWAY_TIMEOUT, "storage_timeout"),
            AppError::InsufficientStorage(_) => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
            }
            AppError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let body = match &self {
            AppError::Validation(e) => json!({"error": {
                "code": code,
                "message": e.to_string(),
                "field": e.field,
                "citizen_id": e.citizen_id,
            }}),
            AppError::BadHeader(name, _) | AppError::BadQuery(name, _) => json!({"error": {
                "code": code,
                "message": self.to_string(),
                "field": name,
                "citizen_id": null,
            }}),
            _ => json!({"error": {"code": code, "message": self.to_string()}}),
        };
        let failure = match &self {
            AppError::Unavailable(why)
            | AppError::Misconfigured(why)
            | AppError::Overloaded(why)
            | AppError::OutcomeUnknown(why)
            | AppError::InsufficientStorage(why) => Some(Failure {
                fault: false,
                detail: why.clone(),
            }),
            AppError::Internal(cause) => Some(Failure {
                fault: true,
                detail: format!("{cause:?}"),
            }),
            _ => None,
        };
        let mut response = json_error(status, code, &body);
        if let Some(failure) = failure {
            response.extensions_mut().insert(failure);
        }
        if matches!(self, AppError::Overloaded(_)) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

/// A response with a JSON body that is already serialised.
pub fn json_response(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let body: axum::body::Body = body.into();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Makes every error answer the service's JSON error: an answer of 400 or
/// above whose body is not JSON (a framework's rejection in text, Swagger
/// UI's empty 404) becomes `{"error": {"code", "message"}}` with the same
/// status and headers; a short text body becomes the message.
pub async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty());
    let reason = status.canonical_reason().unwrap_or("error");
    let code = fallback_code(status);
    let message = text.map_or_else(|| reason.to_lowercase(), |t| t.to_lowercase());
    let body = json!({"error": {"code": code, "message": message}}).to_string();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_storage_failure_gets_its_status_code_and_retry_hint() {
        let cases = [
            (
                StorageError::Unavailable("down".into()),
                503,
                "storage_unavailable",
            ),
            (
                StorageError::Misconfigured("password".into()),
                503,
                "storage_unavailable",
            ),
            (
                StorageError::Overloaded("queue".into()),
                503,
                "storage_unavailable",
            ),
            (
                StorageError::OutcomeUnknown("sent".into()),
                504,
                "storage_timeout",
            ),
            (
                StorageError::Full("disk".into()),
                507,
                "insufficient_storage",
            ),
            (
                StorageError::KeyReused {
                    key: "k".into(),
                    import: crate::domain::ImportId::new(1).unwrap(),
                },
                422,
                "idempotency_key_reused",
            ),
            (StorageError::internal("bug"), 500, "internal"),
        ];
        for (error, status, code) in cases {
            let overloaded = matches!(error, StorageError::Overloaded(_));
            let response = AppError::from(error).into_response();
            assert_eq!(response.status().as_u16(), status, "{code}");
            assert_eq!(
                response.headers().get(header::RETRY_AFTER).is_some(),
                overloaded,
                "Retry-After only when overloaded ({code})"
            );
            assert_eq!(
                response.extensions().get::<Failure>().is_some(),
                status >= 500,
                "5xx carry their cause for the log ({code})"
            );
        }
    }
}
