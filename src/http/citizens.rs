//! `/imports/{import_id}/citizens`: list, patch one, birthdays.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::cache::View;
use super::error::AppError;
use super::extract::{Body, CitizenPath, ImportPath};
use super::wire::{self, Object, PatchBody};
use super::{AppState, cached_view, data, to_data};
use crate::domain::{stats, today_utc};

/// All citizens of the import, by citizen_id.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    ImportPath(import): ImportPath,
) -> Result<Response, AppError> {
    cached_view(&state, &headers, import, View::Citizens, |citizens| {
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
    // Before answering, so a read right after this PATCH finds the snapshot moved.
    state.cache.after_patch(import, &patched).await;
    data(StatusCode::OK, &patched.citizen)
}

/// Presents per month.
pub async fn birthdays(
    State(state): State<AppState>,
    headers: HeaderMap,
    ImportPath(import): ImportPath,
) -> Result<Response, AppError> {
    cached_view(&state, &headers, import, View::Birthdays, |citizens| {
        to_data(&stats::birthdays(citizens))
    })
    .await
}
