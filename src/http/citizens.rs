//! `/imports/{import_id}/citizens`: list, patch one, birthdays.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::error::AppError;
use super::extract::{CitizenPath, ImportPath, RequestBody};
use super::wire::{self, Object, PatchBody};
use super::{AppState, cached_view, data};
use crate::domain::today_utc;
use crate::reads::cache::View;

#[utoipa::path(
    get,
    path = "/imports/{import_id}/citizens",
    operation_id = "listCitizens",
    security(("bearer" = ["read"]), ()),
    tag = "citizens",
    params(
        ("import_id" = u64, Path, minimum = 1, description = "The import"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag of an earlier answer"),
        ("Accept-Encoding" = Option<String>, Header, description = "gzip for a compressed answer"),
    ),
    responses(
        crate::http::openapi::Refusals,
        (status = 200, description = "All citizens, by citizen_id, relatives ascending", body = crate::http::openapi::CitizensAnswer,
            headers(("ETag" = String, description = "Weak tag of the import, its version and the view"), ("Cache-Control" = String, description = "no-cache"))),
        (status = 304, description = "Not modified: If-None-Match named the current answer"),
        (status = 404, description = "No such import", body = crate::http::openapi::ErrorAnswer),
        (status = 503, description = "The store is unavailable: retry", body = crate::http::openapi::ErrorAnswer),
    )
)]
/// All citizens of the import, by citizen_id.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    ImportPath(import): ImportPath,
) -> Result<Response, AppError> {
    cached_view(&state, &headers, import, View::Citizens).await
}

/// PATCH bodies of this many bytes or more are parsed off the async
/// worker threads (a few milliseconds of work and up).
const INLINE_PATCH: usize = 64 * 1024;

#[utoipa::path(
    patch,
    path = "/imports/{import_id}/citizens/{citizen_id}",
    operation_id = "patchCitizen",
    security(("bearer" = ["write"]), ()),
    tag = "citizens",
    params(
        ("import_id" = u64, Path, minimum = 1, description = "The import"),
        ("citizen_id" = u64, Path, description = "The citizen"),
    ),
    request_body(content = crate::http::openapi::CitizenPatchSchema, description = "The fields to change"),
    responses(
        crate::http::openapi::Refusals,
        (status = 200, description = "The whole citizen as it is now", body = crate::http::openapi::CitizenAnswer),
        (status = 400, description = "The body breaks a rule: the error names the field", body = crate::http::openapi::ErrorAnswer),
        (status = 404, description = "No such import or citizen", body = crate::http::openapi::ErrorAnswer),
        (status = 413, description = "The body is over the size limit", body = crate::http::openapi::ErrorAnswer),
        (status = 415, description = "A Content-Encoding other than gzip", body = crate::http::openapi::ErrorAnswer),
        (status = 503, description = "Not changed: retry later", body = crate::http::openapi::ErrorAnswer),
        (status = 504, description = "Sent to the store, not confirmed: it may have been changed", body = crate::http::openapi::ErrorAnswer),
        (status = 507, description = "The store has no room: nothing changed", body = crate::http::openapi::ErrorAnswer),
    )
)]
/// Replaces the given fields of one citizen, mirroring relatives; 200 with the citizen.
pub async fn update(
    State(state): State<AppState>,
    CitizenPath(import, citizen): CitizenPath,
    RequestBody(body): RequestBody,
) -> Result<Response, AppError> {
    let body_len = body.len();
    let today = today_utc();
    let parse = move || {
        let Object(patch) = wire::parse::<Object<PatchBody>>(&body).map_err(|mut e| {
            e.citizen_id = Some(citizen);
            e
        })?;
        Ok::<_, AppError>(patch.into_patch(citizen, today)?)
    };
    // A PATCH may carry a relatives list as long as an import allows (a
    // citizen related to 100,000 others): a big one is parsed and checked
    // off the async worker threads.
    let patch = if body_len < INLINE_PATCH {
        parse()?
    } else {
        tokio::task::spawn_blocking(parse).await??
    };
    let patched = state.reads.patch_citizen(import, citizen, patch).await?;
    data(StatusCode::OK, &patched.citizen)
}

#[utoipa::path(
    get,
    path = "/imports/{import_id}/citizens/birthdays",
    operation_id = "birthdays",
    security(("bearer" = ["read"]), ()),
    tag = "analytics",
    params(
        ("import_id" = u64, Path, minimum = 1, description = "The import"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag of an earlier answer"),
        ("Accept-Encoding" = Option<String>, Header, description = "gzip for a compressed answer"),
    ),
    responses(
        crate::http::openapi::Refusals,
        (status = 200, description = "Presents per month", body = crate::http::openapi::BirthdaysAnswer,
            headers(("ETag" = String, description = "Weak tag of the import, its version and the view"), ("Cache-Control" = String, description = "no-cache"))),
        (status = 304, description = "Not modified: If-None-Match named the current answer"),
        (status = 404, description = "No such import", body = crate::http::openapi::ErrorAnswer),
        (status = 503, description = "The store is unavailable: retry", body = crate::http::openapi::ErrorAnswer),
    )
)]
/// Presents per month.
pub async fn birthdays(
    State(state): State<AppState>,
    headers: HeaderMap,
    ImportPath(import): ImportPath,
) -> Result<Response, AppError> {
    cached_view(&state, &headers, import, View::Birthdays).await
}
