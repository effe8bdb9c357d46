//! `/imports/{import_id}/towns/stat/percentile/age`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::error::AppError;
use super::extract::ImportPath;
use super::{AppState, data};
use crate::domain::{stats, today_utc};

/// p50/p75/p99 of ages per town, ordered by town.
pub async fn percentiles(
    State(state): State<AppState>,
    ImportPath(import): ImportPath,
) -> Result<Response, AppError> {
    let citizens = state.storage.citizens(import).await?;
    data(
        StatusCode::OK,
        &stats::town_percentiles(&citizens, today_utc()),
    )
}
