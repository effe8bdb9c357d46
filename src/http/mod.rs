//! The HTTP edge: router, shared state, one module per resource.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::Response;
use axum::routing::{get, patch, post};
use serde::Serialize;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::domain::{Citizen, ImportId};
use crate::storage::Storage;

pub mod cache;
mod citizens;
pub mod error;
pub mod extract;
mod health;
mod imports;
mod towns;
pub mod wire;

use cache::{Citizens, ResponseCache, View};
use error::{AppError, json_response};

/// What every handler shares; cloning is cheap.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub storage: Arc<dyn Storage>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Bodies of the read endpoints, validated by import version.
    pub cache: Arc<ResponseCache>,
    /// Permits to load and render an answer that is not cached.
    pub renders: Arc<tokio::sync::Semaphore>,
}

/// Builds the router with its middleware: request id, one log line per
/// request, a whole-request timeout and the body limit.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let header = axum::http::HeaderName::from_static("x-request-id");
    Router::new()
        .route("/imports", post(imports::create))
        .route("/imports/{import_id}/citizens", get(citizens::list))
        .route(
            "/imports/{import_id}/citizens/{citizen_id}",
            patch(citizens::update),
        )
        .route(
            "/imports/{import_id}/citizens/birthdays",
            get(citizens::birthdays),
        )
        .route(
            "/imports/{import_id}/towns/stat/percentile/age",
            get(towns::percentiles),
        )
        .route("/health", get(health::check))
        .fallback(|| async { AppError::NotFound("no such resource".into()) })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    let route = request
                        .extensions()
                        .get::<MatchedPath>()
                        .map(MatchedPath::as_str)
                        .unwrap_or("(unmatched)");
                    let id = request
                        .extensions()
                        .get::<RequestId>()
                        .and_then(|id| id.header_value().to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("request", method = %request.method(), route, id)
                })
                .on_request(())
                .on_response(
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(tower_http::LatencyUnit::Micros),
                ),
        )
        .layer(PropagateRequestIdLayer::new(header.clone()))
        .layer(SetRequestIdLayer::new(header, Counter::default()))
        .with_state(state)
}

/// Request ids: a process-wide counter, unless the client sent one.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicU64>);

impl MakeRequestId for Counter {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        HeaderValue::from_str(&n.to_string())
            .ok()
            .map(RequestId::new)
    }
}

#[derive(Serialize)]
struct Data<T> {
    data: T,
}

/// `{"data": value}` serialised.
fn to_data<T: Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&Data { data: value })
}

/// `{"data": value}` with the given status.
fn data<T: Serialize>(status: StatusCode, value: &T) -> Result<Response, AppError> {
    let body = to_data(value).map_err(|e| AppError::Internal(Box::new(e)))?;
    Ok(json_response(status, body))
}

/// Answers a read endpoint from the cache when the import has not changed
/// since the body was rendered. Otherwise renders it off the async threads
/// from the import's citizens — held in memory at this version, or loaded
/// from storage; at most `state.renders` permits render at once, which bounds
/// the memory of cold reads of big imports.
async fn cached_view<F>(
    state: &AppState,
    import: ImportId,
    view: View,
    render: F,
) -> Result<Response, AppError>
where
    F: FnOnce(&[Arc<Citizen>]) -> serde_json::Result<Vec<u8>> + Send + 'static,
{
    let version = state.storage.import_version(import).await?;
    let body = state
        .cache
        .get_or_render(import, view, version, async {
            let _permit = state
                .renders
                .acquire()
                .await
                .map_err(|e| AppError::Internal(Box::new(e)))?;
            let citizens = match state.cache.snapshot(import, version) {
                Some(citizens) => citizens,
                None => {
                    // The snapshot may be newer than `version` if a write just
                    // landed; a newer answer is never stale.
                    let snapshot = state.storage.citizens(import).await?;
                    let citizens: Citizens =
                        Arc::new(snapshot.citizens.into_iter().map(Arc::new).collect());
                    state
                        .cache
                        .keep_snapshot(import, snapshot.version, Arc::clone(&citizens));
                    citizens
                }
            };
            let body = tokio::task::spawn_blocking(move || render(&citizens))
                .await
                .map_err(|e| AppError::Internal(Box::new(e)))?
                .map_err(|e| AppError::Internal(Box::new(e)))?;
            Ok::<_, AppError>(axum::body::Bytes::from(body))
        })
        .await?;
    Ok(json_response(StatusCode::OK, body))
}
