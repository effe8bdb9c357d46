//! `GET /health`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::error::AppError;
use super::{AppState, data};

/// 200 when the store answers, 503 otherwise.
pub async fn check(State(state): State<AppState>) -> Result<Response, AppError> {
    state.storage.health().await?;
    data(StatusCode::OK, &json!({"status": "ok"}))
}
