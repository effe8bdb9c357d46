//! `GET /health`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::AppError;
use super::{AppState, Quiet, data};
use crate::storage::StorageError;

/// 200 when the store answers and takes writes, 503 otherwise (the body
/// says why: `storage_unavailable`, or `insufficient_storage` when its disk
/// is full and only reads are served). Logged at DEBUG when healthy:
/// container health checks call it every few seconds.
pub async fn check(State(state): State<AppState>) -> Result<Response, AppError> {
    if let Err(e) = state.storage.health().await {
        let full = matches!(e, StorageError::Full(_));
        let mut response = AppError::from(e).into_response();
        if full {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        return Ok(response);
    }
    let mut response = data(StatusCode::OK, &json!({"status": "ok"}))?;
    response.extensions_mut().insert(Quiet);
    Ok(response)
}
