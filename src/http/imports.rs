//! `POST /imports`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::error::AppError;
use super::extract::Body;
use super::wire::{self, ImportBody, Object};
use super::{AppState, data};
use crate::domain::{ImportId, today_utc};
use crate::storage::Idempotency;

#[derive(Serialize)]
struct Created {
    import_id: ImportId,
}

/// Longest accepted `Idempotency-Key`.
const MAX_KEY: usize = 255;

/// The `Idempotency-Key` header, if sent: 1–255 printable ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, AppError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_KEY || !bytes.iter().all(|b| (0x20..0x7f).contains(b))
    {
        return Err(AppError::BadHeader(
            "Idempotency-Key",
            format!("must be 1 to {MAX_KEY} printable ASCII characters"),
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// Validates and stores an import atomically; 201 with its new id. With an
/// `Idempotency-Key` seen before: the same body gets the same import id
/// (201, nothing new stored), another body 422.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, AppError> {
    let key = idempotency_key(&headers)?;
    let today = today_utc();
    // Parsing and validating up to the body limit (64 MiB by default) is CPU
    // work of tens of milliseconds: keep it off the async worker threads.
    let (citizens, idempotency) = tokio::task::spawn_blocking(move || {
        let citizens = wire::parse::<Object<ImportBody>>(&body)?
            .0
            .into_citizens(today)?;
        let idempotency = key.map(|key| Idempotency {
            key,
            body_hash: Sha256::digest(&body).into(),
        });
        Ok::<_, AppError>((citizens, idempotency))
    })
    .await
    .map_err(|e| AppError::Internal(Box::new(e)))??;
    let span = tracing::Span::current();
    span.record("citizens", citizens.len());
    let import_id = state.storage.create_import(citizens, idempotency).await?;
    span.record("import_id", import_id);
    data(StatusCode::CREATED, &Created { import_id })
}
