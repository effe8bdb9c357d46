//! The HTTP edge: router, shared state, one module per resource.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde::Serialize;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::domain::ImportId;
use crate::units::ByteSize;

pub mod auth;
mod citizens;
pub mod error;
pub(crate) mod extract;
mod health;
mod imports;
#[doc(hidden)] // public for the hot-path benchmark only
pub mod openapi;
mod paging;
mod towns;
mod ui;
#[doc(hidden)] // public for the hot-path benchmark only
pub mod wire;

use crate::reads::Answer;
use crate::reads::body::to_data;
use crate::reads::cache::View;
use error::{AppError, Failure, json_response};

/// What every handler shares; cloning is cheap.
#[derive(Clone)]
pub struct AppState {
    /// The store behind the read cache: every read and write goes through it.
    pub reads: Arc<crate::reads::Reads>,
    /// Largest accepted request body (decompressed).
    pub max_body_bytes: ByteSize,
    /// True after SIGTERM, while the service drains: `/readyz` answers 503.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// What the service counts.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The bearer tokens in force, when access is restricted.
    pub tokens: Option<Arc<auth::Tokens>>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<Vec<std::net::IpAddr>>,
}

/// The peer address of a request's connection (set per connection by the server).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// The client a request came from: the peer, or — when the peer is a
/// trusted proxy — the last address in `X-Forwarded-For` that is not one.
fn client_address<B>(
    request: &Request<B>,
    trusted: &[std::net::IpAddr],
) -> Option<std::net::IpAddr> {
    let peer = request.extensions().get::<Peer>()?.0.ip();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded: Vec<std::net::IpAddr> = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    Some(
        forwarded
            .into_iter()
            .rev()
            .find(|a| !trusted.contains(a))
            .unwrap_or(peer),
    )
}

/// Builds the router with its middleware: request id, one log line per
/// request, a whole-request timeout and the body limit.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let header = axum::http::HeaderName::from_static(REQUEST_ID);
    let trusted = Arc::clone(&state.trusted_proxies);
    let tokens = state.tokens.clone();
    let router = Router::new()
        .route("/imports", post(imports::create).get(imports::list))
        .route(
            "/imports/{import_id}",
            get(imports::show).delete(imports::delete),
        )
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
        .route("/livez", get(health::live))
        .route("/metrics", get(health::metrics))
        // Swagger UI at /docs (assets in the binary), and the document it shows at /openapi.json.
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", openapi::document()))
        .route("/readyz", get(health::ready))
        // The analysts' page (`ui/`, in the binary), on the public API.
        .route("/", get(ui::index))
        .route("/ui/{file}", get(ui::asset))
        .fallback(|| async { AppError::NotFound("no such resource".into()) })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.max_body_bytes.as_usize()))
        .layer(middleware::from_fn_with_state(
            state.max_body_bytes,
            refuse_oversized,
        ))
        .layer(middleware::from_fn(|request, next: middleware::Next| {
            crate::storage::deadline::scope(next.run(request))
        }));
    // Checked inside the request's span, so its log line names the token, and
    // inside the metrics, so refused requests are counted.
    let router = match tokens {
        Some(tokens) => router.layer(middleware::from_fn_with_state(tokens, auth::require_token)),
        None => router,
    };
    router
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state.metrics),
            count_request,
        ))
        .layer(middleware::from_fn_with_state(request_timeout, time_limit))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(move |request: &Request<_>| {
                    let route = request
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("(unmatched)", MatchedPath::as_str);
                    let id = request
                        .extensions()
                        .get::<RequestId>()
                        .and_then(|id| id.header_value().to_str().ok())
                        .unwrap_or("-");
                    let client = client_address(request, &trusted)
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    let trace = trace_context(request);
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        route,
                        id,
                        client,
                        trace_id = trace.map(|t| t.0),
                        parent_id = trace.map(|t| t.1),
                        token = tracing::field::Empty,
                        import_id = tracing::field::Empty,
                        citizen_id = tracing::field::Empty,
                        citizens = tracing::field::Empty,
                        code = tracing::field::Empty,
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
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state.draining),
            close_when_draining,
        ))
        // Outermost: whatever answers an error, the body is the service's JSON error.
        .layer(middleware::from_fn(error::json_errors))
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

/// The W3C trace context of a request (`traceparent`: version 00, a trace
/// id and a parent id, neither all zeros), as its trace id and parent id;
/// anything else is ignored, as the recommendation asks.
fn trace_context<B>(request: &Request<B>) -> Option<(&str, &str)> {
    let value = request.headers().get("traceparent")?.to_str().ok()?;
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && s.bytes().any(|b| b != b'0')
    };
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace, 32)
        && hex(parent, 16)
        && flags.len() == 2
        && flags.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then_some((trace, parent))
}

/// The one log line of a request: its status, latency and, for a 5xx, why;
/// an error answer's code goes into the request's span (`code`).
fn log_response(response: &Response, latency: Duration, span: &tracing::Span) {
    if response.status().as_u16() >= 400 {
        match response.extensions().get::<error::ErrorCode>() {
            Some(code) => span.record("code", code.0),
            None => span.record("code", error::fallback_code(response.status()).as_str()),
        };
    }
    let status = response.status().as_u16();
    let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    match response.extensions().get::<Failure>() {
        Some(f) if f.fault => {
            tracing::error!(status, latency_us, error = %f.detail, "request failed");
        }
        Some(f) => tracing::warn!(status, latency_us, error = %f.detail, "request not served"),
        None if response.extensions().get::<Quiet>().is_some() => {
            tracing::debug!(status, latency_us, "answered");
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

/// Counts a request and times it, by method, matched route and status, and
/// keeps the gauge of requests in flight (a request whose client went away
/// leaves it too: the guard is dropped with the request's future).
async fn count_request(
    axum::extract::State(metrics): axum::extract::State<Arc<crate::metrics::Metrics>>,
    request: Request<axum::body::Body>,
    next: middleware::Next,
) -> Response {
    struct InFlight(prometheus_client::metrics::gauge::Gauge);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    metrics.requests_in_flight.inc();
    let _in_flight = InFlight(metrics.requests_in_flight.clone());
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("(unmatched)", MatchedPath::as_str)
        .to_owned();
    let method = method_label(request.method()).to_owned();
    let response = next.run(request).await;
    let labels = crate::metrics::RequestLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    metrics
        .request_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    metrics.requests.get_or_create(&labels).inc();
    response
}

/// While draining after SIGTERM, every answer says `Connection: close`: a
/// client opens a new connection for its next request (still served until
/// the drain ends), so no keep-alive connection is left idle when the
/// listener closes, where a request sent at that moment would go unanswered.
async fn close_when_draining(
    axum::extract::State(draining): axum::extract::State<Arc<std::sync::atomic::AtomicBool>>,
    request: Request<axum::body::Body>,
    next: middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    if draining.load(std::sync::atomic::Ordering::Acquire) {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// A metrics label for `method`: the standard methods by name, any other as
/// `OTHER`. The client chooses the method, so its label values must be a
/// closed set (each distinct value is a new series, kept forever).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// Bodies announced this big or smaller that are over the limit are read
/// and thrown away after the 413 is sent, so that the client, still
/// sending, reads its answer: a connection closed with unread data in it is
/// reset, and a reset can destroy the answer before the client reads it.
const DRAINED_AT_MOST: u64 = 8 << 20;

/// How long such a body may take to arrive before the connection is closed.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Answers 413 to a request whose `Content-Length` is over the limit before
/// any of its body is read (and, to `Expect: 100-continue`, instead of
/// `100 Continue`), on every route. The connection is then closed: at once
/// for a bigger body than [`DRAINED_AT_MOST`] or a client that waits for
/// `100 Continue`, else once the body has arrived (and been thrown away).
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
    if let Some(announced) = announced.filter(|&n| n > limit.get()) {
        let waits = request.headers().contains_key(axum::http::header::EXPECT);
        if announced <= DRAINED_AT_MOST && !waits {
            let mut body = request.into_body();
            tokio::spawn(async move {
                use http_body_util::BodyExt;
                let _ = tokio::time::timeout(DRAIN_TIME, async {
                    while let Some(Ok(_)) = body.frame().await {}
                })
                .await;
            });
        }
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
        let printable = !bytes.is_empty() && bytes.iter().all(u8::is_ascii_graphic);
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

/// `{"data": value}` with the given status.
fn data<T: Serialize>(status: StatusCode, value: &T) -> Result<Response, AppError> {
    let body = to_data(value).map_err(AppError::internal)?;
    Ok(json_response(status, body))
}

/// Answers a read endpoint: 304 when the client's `If-None-Match` names the
/// current answer; else the body by the read policy of [`crate::reads::Reads`]
/// (gzipped for a client that accepts it, or streamed when too big to cache).
///
/// The `ETag` is weak and names the import, its version and the view (and
/// the day, for percentiles): the same at every instance, and new after
/// every write. Answers say `Cache-Control: no-cache`: clients revalidate.
async fn cached_view(
    state: &AppState,
    headers: &HeaderMap,
    import: ImportId,
    view: View,
) -> Result<Response, AppError> {
    let version = state.reads.import_version(import).await?;
    let tag = entity_tag(import, version, view);
    if if_none_match(headers, &tag) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        revalidation_headers(&mut response, &tag);
        return Ok(response);
    }
    let answer = state
        .reads
        .answer(import, view, version, accepts_gzip(headers))
        .await?;
    let (mut response, gzip) = match answer {
        Answer::Body(body, gzip) => (json_response(StatusCode::OK, body), gzip),
        Answer::Stream(chunks, gzip) => {
            let body = axum::body::Body::from_stream(futures_util::stream::iter(*chunks));
            (json_response(StatusCode::OK, body), gzip)
        }
    };
    revalidation_headers(&mut response, &tag);
    if gzip {
        response.headers_mut().insert(
            axum::http::header::CONTENT_ENCODING,
            HeaderValue::from_static("gzip"),
        );
    }
    Ok(response)
}

/// The weak entity tag of one answer: `W/"7-3-citizens"`.
fn entity_tag(import: ImportId, version: crate::storage::Version, view: View) -> String {
    let view = match view {
        View::Citizens => "citizens".to_owned(),
        View::Birthdays => "birthdays".to_owned(),
        View::Percentiles(day) => format!("percentiles-{day}"),
    };
    format!("W/\"{import}-{version}-{view}\"")
}

/// Whether `If-None-Match` names `tag` (weak comparison, as for GET) or is `*`.
fn if_none_match(headers: &HeaderMap, tag: &str) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let wanted = opaque(tag);
    headers
        .get_all(axum::http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || opaque(t) == wanted)
}

/// Whether `Accept-Encoding` takes gzip (a `q=0` refuses it).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

fn revalidation_headers(response: &mut Response, tag: &str) {
    let headers = response.headers_mut();
    if let Ok(tag) = HeaderValue::from_str(tag) {
        headers.insert(axum::http::header::ETAG, tag);
    }
    headers.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    headers.insert(
        axum::http::header::VARY,
        HeaderValue::from_static("accept-encoding"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    axum::http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn if_none_match_compares_weakly_and_takes_lists_and_stars() {
        let tag = entity_tag(ImportId::new(7).unwrap(), 3, View::Citizens);
        assert_eq!(tag, "W/\"7-3-citizens\"");
        for (value, matches) in [
            ("W/\"7-3-citizens\"", true),
            ("\"7-3-citizens\"", true),
            ("\"x\", W/\"7-3-citizens\"", true),
            ("*", true),
            ("W/\"7-2-citizens\"", false),
            ("W/\"7-3-birthdays\"", false),
        ] {
            assert_eq!(
                if_none_match(&headers(&[("if-none-match", value)]), &tag),
                matches,
                "{value}"
            );
        }
        assert!(!if_none_match(&HeaderMap::new(), &tag));
        assert_eq!(
            entity_tag(ImportId::new(7).unwrap(), 3, View::Percentiles(2_461_000)),
            "W/\"7-3-percentiles-2461000\""
        );
    }

    #[test]
    fn gzip_is_taken_unless_refused() {
        for (value, accepted) in [
            ("gzip", true),
            ("br, gzip;q=0.5", true),
            ("GZIP", true),
            ("*", true),
            ("gzip;q=0", false),
            ("br, deflate", false),
            ("identity", false),
        ] {
            assert_eq!(
                accepts_gzip(&headers(&[("accept-encoding", value)])),
                accepted,
                "{value}"
            );
        }
    }
}
