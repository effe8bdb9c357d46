//! `GET /health`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::error::AppError;
use super::{AppState, Quiet, data};

/// 200 when the store answers, 503 otherwise (the body says why). Logged at
/// DEBUG when healthy: container health checks call it every few seconds.
pub async fn check(State(state): State<AppState>) -> Result<Response, AppError> {
    state.storage.health().await?;
    let mut response = data(StatusCode::OK, &json!({"status": "ok"}))?;
    response.extensions_mut().insert(Quiet);
    Ok(response)
}
