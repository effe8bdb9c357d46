//! `/imports/{import_id}/towns/stat/percentile/age`.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::cache::View;
use super::error::AppError;
use super::extract::ImportPath;
use super::{AppState, cached_view, to_data};
use crate::domain::{stats, today_utc};

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
        move |citizens| to_data(&stats::town_percentiles(citizens, today)),
    )
    .await
}
