//! `/imports/{import_id}/citizens`: list, patch one, birthdays.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::cache::View;
use super::error::AppError;
use super::extract::{Body, CitizenPath, ImportPath};
use super::wire::{self, Object, PatchBody};
use super::{AppState, cached_view, data, to_data};
use crate::domain::{stats, today_utc};

/// Snapshots up to this many citizens are moved forward on the async thread
/// (tens of microseconds); bigger ones on a blocking thread.
const INLINE_SNAPSHOT_UPDATE: usize = 20_000;

/// All citizens of the import, by citizen_id.
pub async fn list(
    State(state): State<AppState>,
    ImportPath(import): ImportPath,
) -> Result<Response, AppError> {
    cached_view(&state, import, View::Citizens, |citizens| {
        to_data(&citizens)
    })
    .await
}

/// Replaces the given fields of one citizen, mirroring relatives; 200 with the citizen.
pub async fn update(
    State(state): State<AppState>,
    CitizenPath(import, citizen): CitizenPath,
    Body(body): Body,
) -> Result<Response, AppError> {
    let Object(patch) = wire::parse::<Object<PatchBody>>(&body).map_err(|mut e| {
        e.citizen_id = Some(citizen);
        e
    })?;
    let patch = patch.into_patch(citizen, today_utc())?;
    let patched = state.storage.patch_citizen(import, citizen, patch).await?;
    // Move the in-memory copy of the import forward before answering, so a
    // read right after this PATCH re-renders without a trip to storage. It
    // copies one pointer per citizen: big imports do it off the async threads.
    match state.cache.snapshot_len(import) {
        None => {}
        Some(n) if n <= INLINE_SNAPSHOT_UPDATE => {
            state
                .cache
                .apply_patch(import, patched.version, &patched.citizen);
        }
        Some(_) => {
            let cache = Arc::clone(&state.cache);
            let updated = patched.citizen.clone();
            let moved = tokio::task::spawn_blocking(move || {
                cache.apply_patch(import, patched.version, &updated)
            })
            .await;
            // The write is stored; a cache that did not move only costs a reload.
            if let Err(e) = moved {
                tracing::error!(error = %e, "moving the import snapshot failed");
            }
        }
    }
    data(StatusCode::OK, &patched.citizen)
}

/// Presents per month.
pub async fn birthdays(
    State(state): State<AppState>,
    ImportPath(import): ImportPath,
) -> Result<Response, AppError> {
    cached_view(&state, import, View::Birthdays, |citizens| {
        to_data(&stats::birthdays(citizens))
    })
    .await
}
