//! The analysts' page: `GET /` and its assets under `/ui/`, compiled into
//! the binary (plain HTML, CSS and ES modules from `ui/`; no build step, no
//! CDN). It uses the public API only, as any other client.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::error::AppError;

/// The page's files: name, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "charts.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/charts.js"),
    ),
    (
        "i18n.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/i18n.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/style.css"),
    ),
];

const INDEX: &str = include_str!("../../ui/index.html");

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidated on each load: a new binary serves its own page at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Only our own files and the API: no inline script, nothing from elsewhere.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    response
}

/// `GET /`: the page.
pub async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/{file}`: one of the page's files.
pub async fn asset(Path(name): Path<String>) -> Result<Response, AppError> {
    ASSETS
        .iter()
        .find(|(file_name, ..)| *file_name == name)
        .map(|&(_, content_type, body)| file(content_type, body))
        .ok_or_else(|| AppError::NotFound(format!("no page file {name:?}")))
}
