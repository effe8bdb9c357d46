//! The HTTP edge: router, shared state, one module per resource.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderValue, Request, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde::Serialize;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::config::ByteSize;
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

use cache::{CitizenList, ResponseCache, View};
use error::{AppError, Failure, json_response};

/// What every handler shares; cloning is cheap.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub storage: Arc<dyn Storage>,
    /// Largest accepted request body (decompressed).
    pub max_body_bytes: ByteSize,
    /// Bodies of the read endpoints, validated by import version.
    pub cache: Arc<ResponseCache>,
    /// Permits to load and render an answer that is not cached.
    pub renders: Arc<tokio::sync::Semaphore>,
}

/// Builds the router with its middleware: request id, one log line per
/// request, a whole-request timeout and the body limit.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let header = axum::http::HeaderName::from_static(REQUEST_ID);
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
        .layer(DefaultBodyLimit::max(state.max_body_bytes.as_usize()))
        .layer(middleware::from_fn_with_state(
            state.max_body_bytes,
            refuse_oversized,
        ))
        .layer(middleware::from_fn(|request, next: middleware::Next| {
            crate::storage::deadline::scope(next.run(request))
        }))
        .layer(middleware::from_fn_with_state(request_timeout, time_limit))
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
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        route,
                        id,
                        import_id = tracing::field::Empty,
                        citizens = tracing::field::Empty,
                    )
                })
                .on_request(())
                .on_response(log_response)
                // 5xx answers are logged once, by `log_response`, with their cause.
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(header.clone()))
        .layer(SetRequestIdLayer::new(header, NewRequestId))
        .layer(middleware::from_fn(check_request_id))
        .with_state(state)
}

/// The request id header, taken from the client or made here, echoed back.
const REQUEST_ID: &str = "x-request-id";

/// Longest client-supplied request id kept (longer ones are cut).
const MAX_REQUEST_ID: usize = 128;

/// Marks a response whose request is logged at DEBUG, not INFO (health
/// checks every few seconds would drown the log).
#[derive(Clone, Copy)]
pub struct Quiet;

/// The one log line of a request: its status, latency and, for a 5xx, why.
fn log_response(response: &Response, latency: Duration, _span: &tracing::Span) {
    let status = response.status().as_u16();
    let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    match response.extensions().get::<Failure>() {
        Some(f) if f.fault => {
            tracing::error!(status, latency_us, error = %f.detail, "request failed")
        }
        Some(f) => tracing::warn!(status, latency_us, error = %f.detail, "request not served"),
        None if response.extensions().get::<Quiet>().is_some() => {
            tracing::debug!(status, latency_us, "answered")
        }
        None => tracing::info!(status, latency_us, "answered"),
    }
}

/// Bounds a whole request, body upload included; past the limit the client
/// gets 408 with the JSON error body.
async fn time_limit(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: Request<axum::body::Body>,
    next: middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => AppError::Timeout(limit.as_secs()).into_response(),
    }
}

/// Answers 413 to a request whose `Content-Length` is over the limit before
/// any of its body is read (and, to `Expect: 100-continue`, instead of
/// `100 Continue`), on every route. The connection is then closed rather
/// than drained.
async fn refuse_oversized(
    axum::extract::State(limit): axum::extract::State<ByteSize>,
    request: Request<axum::body::Body>,
    next: middleware::Next,
) -> Response {
    let announced = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit.get()) {
        let mut response = AppError::PayloadTooLarge(limit).into_response();
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
        return response;
    }
    next.run(request).await
}

/// Keeps a client's request id only if it is printable ASCII, cut to
/// [`MAX_REQUEST_ID`] characters; otherwise a new one is made.
async fn check_request_id(
    mut request: Request<axum::body::Body>,
    next: middleware::Next,
) -> Response {
    if let Some(value) = request.headers().get(REQUEST_ID) {
        let bytes = value.as_bytes();
        let printable = !bytes.is_empty() && bytes.iter().all(|b| b.is_ascii_graphic());
        if !printable {
            request.headers_mut().remove(REQUEST_ID);
        } else if bytes.len() > MAX_REQUEST_ID {
            let cut = HeaderValue::from_bytes(&bytes[..MAX_REQUEST_ID])
                .expect("printable ASCII is a valid header value");
            request.headers_mut().insert(REQUEST_ID, cut);
        }
    }
    next.run(request).await
}

/// New request ids: UUIDv7, unique across restarts and instances, and
/// ordered by time.
#[derive(Clone, Copy, Default)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let id = uuid::Uuid::now_v7();
        HeaderValue::from_str(
            id.hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer()),
        )
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
                    let citizens: CitizenList =
                        Arc::new(snapshot.citizens.into_iter().map(Arc::new).collect());
                    state
                        .cache
                        .keep_snapshot(import, snapshot.version, Arc::clone(&citizens));
                    citizens
                }
            };
            let body = tokio::task::spawn_blocking(move || render(&citizens).map(cache::compact))
                .await
                .map_err(|e| AppError::Internal(Box::new(e)))?
                .map_err(|e| AppError::Internal(Box::new(e)))?;
            Ok::<_, AppError>(body)
        })
        .await?;
    Ok(json_response(StatusCode::OK, body))
}
