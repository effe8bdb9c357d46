//! `POST /imports`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::error::AppError;
use super::extract::Body;
use super::wire::{self, ImportBody, Object};
use super::{AppState, data};
use crate::domain::{ImportId, today_utc};

#[derive(Serialize)]
struct Created {
    import_id: ImportId,
}

/// Validates and stores an import atomically; 201 with its new id.
pub async fn create(State(state): State<AppState>, Body(body): Body) -> Result<Response, AppError> {
    let today = today_utc();
    // Parsing and validating up to the body limit (64 MiB by default) is CPU
    // work of tens of milliseconds: keep it off the async worker threads.
    let citizens = tokio::task::spawn_blocking(move || {
        wire::parse::<Object<ImportBody>>(&body)?
            .0
            .into_citizens(today)
    })
    .await
    .map_err(|e| AppError::Internal(Box::new(e)))??;
    let span = tracing::Span::current();
    span.record("citizens", citizens.len());
    let import_id = state.storage.create_import(citizens).await?;
    span.record("import_id", import_id);
    data(StatusCode::CREATED, &Created { import_id })
}
