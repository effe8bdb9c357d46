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
            headers(
                ("ETag" = String, description = "Weak tag of the import, its version, the view and today's date (UTC)"),
                ("Cache-Control" = String, description = "no-cache"),
                ("Vary" = String, description = "accept-encoding"),
                ("Content-Encoding" = String, description = "gzip, when the request's Accept-Encoding allows it and the answer is big enough to gain"),
            ),
            example = json!({"data": [{"town": "Керчь", "p50": 40.0, "p75": 40.0, "p99": 40.0}, {"town": "Москва", "p50": 34.0, "p75": 36.5, "p99": 38.9}]})),
        (status = 304, description = "Not modified: If-None-Match named the current answer"),
        (status = 404, description = "No such import", body = crate::http::openapi::ErrorAnswer),
        (status = 503, description = "The store is unavailable: retry", body = crate::http::openapi::ErrorAnswer),
    )
)]
/// Age percentiles per town
///
/// One entry per town of the import, ordered by town name: the 50th, 75th and 99th
/// percentiles of its citizens' ages, as `numpy.percentile` computes them (linear
/// interpolation), rounded to 2 decimals. An age is in whole years on today's date in UTC,
/// so answers change at midnight UTC (the `ETag` includes the date). The example is the
/// example import on 5 December 2026: in Москва, ages 39 and 29.
///
/// `If-None-Match` as for the citizens. Failures: 404 no such import; 503 the store does not
/// answer (retry).
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
