//! `/imports/{import_id}/towns/stat/percentile/age`.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::error::AppError;
use super::extract::ImportPath;
use super::{AppState, cached_view};
use crate::domain::today_utc;
use crate::reads::cache::View;

#[utoipa::path(
    get,
    path = "/imports/{import_id}/towns/stat/percentile/age",
    operation_id = "agePercentiles",
    security(("bearer" = ["read"]), ()),
    tag = "analytics",
    params(
        ("import_id" = u64, Path, minimum = 1, description = "The import"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag of an earlier answer"),
        ("Accept-Encoding" = Option<String>, Header, description = "gzip for a compressed answer"),
    ),
    responses(
        crate::http::openapi::Refusals,
        (status = 200, description = "p50, p75 and p99 of ages per town, by town", body = crate::http::openapi::PercentilesAnswer,
            headers(("ETag" = String, description = "Weak tag of the import, its version and the view"), ("Cache-Control" = String, description = "no-cache"))),
        (status = 304, description = "Not modified: If-None-Match named the current answer"),
        (status = 404, description = "No such import", body = crate::http::openapi::ErrorAnswer),
        (status = 503, description = "The store is unavailable: retry", body = crate::http::openapi::ErrorAnswer),
    )
)]
/// p50/p75/p99 of ages per town, ordered by town.
pub async fn percentiles(
    State(state): State<AppState>,
    headers: HeaderMap,
    ImportPath(import): ImportPath,
) -> Result<Response, AppError> {
    let today = today_utc();
    cached_view(
        &state,
        &headers,
        import,
        View::Percentiles(today.to_julian_day()),
    )
    .await
}
