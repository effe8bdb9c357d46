//! Probes: `GET /health` (the store answers and takes writes), `/livez`
//! (the process serves) and `/readyz` (send it traffic: the store is
//! healthy and the service is not draining). All are logged at DEBUG when
//! they succeed: probes come every few seconds.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::AppError;
use super::{AppState, Quiet, data};
use crate::storage::StorageError;

#[utoipa::path(
    get,
    path = "/health",
    operation_id = "health",
    tag = "operations",
    responses(
        (status = 200, description = "The store answers and takes writes", body = crate::http::openapi::StatusAnswer,
            example = json!({"data": {"status": "ok"}})),
        (status = 503, description = "The store is unavailable, refuses the service, or its disk is full", body = crate::http::openapi::ErrorAnswer,
            example = json!({"error": {"code": "storage_unavailable", "message": "the store is unavailable: tarantool at tarantool:3301 does not answer"}})),
        (status = 500, description = "A fault of the service", body = crate::http::openapi::ErrorAnswer),
    )
)]
/// Whether the service and its store work
///
/// 200 when the store answers and takes writes, 503 otherwise; the body says why:
/// `storage_unavailable` (the store does not answer within a second, or refuses the
/// service: a wrong password, a schema newer than this version), or `insufficient_storage`
/// when its disk is full and only reads are served. Needs no token. Logged at DEBUG when healthy:
/// container health checks call it every few seconds.
pub async fn check(State(state): State<AppState>) -> Result<Response, AppError> {
    // A probe answers within PROBE whatever the store does: a stalled store
    // is as unhealthy as a dead one, and a prober must not hang on it.
    let health = match tokio::time::timeout(PROBE, state.reads.health()).await {
        Ok(health) => health,
        Err(_) => Err(StorageError::Unavailable(format!(
            "the store did not answer the health check within {PROBE:?}"
        ))),
    };
    if let Err(e) = health {
        let full = matches!(e, StorageError::Full(_));
        let mut response = AppError::from(e).into_response();
        if full {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        return Ok(response);
    }
    let mut response = data(StatusCode::OK, &json!({"status": "ok"}))?;
    response.extensions_mut().insert(Quiet);
    Ok(response)
}

/// How long `/health` and `/readyz` wait for the store.
const PROBE: Duration = Duration::from_secs(1);

#[utoipa::path(
    get,
    path = "/livez",
    operation_id = "livez",
    tag = "operations",
    responses((status = 200, description = "The process serves", body = crate::http::openapi::StatusAnswer))
)]
/// Whether the process serves at all (liveness)
///
/// 200 whenever the process can answer a request, whatever the store's state: restart the
/// service only when this fails. Needs no token; never touches the store.
pub async fn live() -> Result<Response, AppError> {
    let mut response = data(StatusCode::OK, &json!({"status": "live"}))?;
    response.extensions_mut().insert(Quiet);
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Send traffic here", body = crate::http::openapi::StatusAnswer,
            example = json!({"data": {"status": "ready"}})),
        (status = 503, description = "Draining after SIGTERM, or the store is unhealthy", body = crate::http::openapi::ErrorAnswer,
            example = json!({"error": {"code": "draining", "message": "the service is shutting down: send requests to another instance"}})),
        (status = 500, description = "A fault of the service", body = crate::http::openapi::ErrorAnswer),
    )
)]
/// Whether to send traffic here (readiness)
///
/// 200 when the store answers and takes writes and the service is not draining; 503
/// otherwise. After SIGTERM the service answers 503 here for the drain period
/// (`--shutdown-drain-secs`, 5 s) while still serving requests, so a load balancer stops
/// sending before it stops accepting. Needs no token.
pub async fn ready(State(state): State<AppState>) -> Result<Response, AppError> {
    if state.draining.load(std::sync::atomic::Ordering::Acquire) {
        let body = json!({"error": {
            "code": "draining",
            "message": "the service is shutting down: send requests to another instance",
        }});
        return Ok(super::error::json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            &body,
        ));
    }
    let mut response = check(State(state)).await?;
    if response.status() == StatusCode::OK {
        response = data(StatusCode::OK, &json!({"status": "ready"}))?;
        response.extensions_mut().insert(Quiet);
    }
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    security(("bearer" = ["admin"]), ()),
    tag = "operations",
    responses(
        crate::http::openapi::Refusals,
        (status = 200, description = "Prometheus metrics: OpenMetrics text when `Accept` names `application/openmetrics-text` (as Prometheus sends), else the classic text format 0.0.4", content((String = "text/plain"), (String = "application/openmetrics-text"))),
    )
)]
/// Prometheus metrics
///
/// Requests by route and status, latency histograms, store operations by outcome, caches,
/// queues, the process (memory, CPU, open files) and the totals of imports and citizens,
/// read from the store at each scrape (cheaply: no citizen is read; a store that does not
/// answer within 500 ms leaves the last values). OpenMetrics text when `Accept` names
/// `application/openmetrics-text`, as Prometheus asks; else the classic text format 0.0.4.
/// With `--tokens-file`, needs a token of the `admin` scope.
pub async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    // A stalled store must not stall the scrape: the totals keep their
    // last values when the store does not answer within half a second.
    match tokio::time::timeout(Duration::from_millis(500), state.reads.totals()).await {
        Ok(Ok((imports, citizens))) => {
            state.metrics.imports.set(gauge(imports));
            state.metrics.citizens.set(gauge(citizens));
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "totals for the metrics"),
        Err(_) => tracing::debug!("totals for the metrics: no answer within 500 ms"),
    }
    state
        .metrics
        .cache_bytes
        .set(gauge(state.reads.cache_bytes()));
    // OpenMetrics for a scraper that asks for it (Prometheus does), the
    // classic text format for anyone else (promtool, curl).
    let openmetrics = headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let text = state.metrics.render();
    let mut response = if openmetrics {
        (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response()
    } else {
        (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::metrics::classic_text(&text),
        )
            .into_response()
    };
    response.extensions_mut().insert(Quiet);
    response
}

/// A count as a gauge's value (saturating: a gauge is an `i64`).
fn gauge(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}
