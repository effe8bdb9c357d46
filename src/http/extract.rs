//! Extractors that fail with [`AppError`], so every rejection has our JSON body.

use std::io::Read;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::CONTENT_ENCODING;
use axum::http::request::Parts;

use super::AppState;
use super::error::AppError;
use crate::domain::{CitizenId, ImportId};
use crate::units::ByteSize;

/// The request body, read whatever the Content-Type says, gzip-decompressed
/// when `Content-Encoding: gzip` says so, within the configured size limit
/// (413 past it; a `Content-Length` over the limit was already refused by the
/// router's middleware, before any of the body was read).
pub struct RequestBody(pub Bytes);

/// Bodies of this many compressed bytes or more are decompressed off the
/// async worker threads.
const INLINE_GUNZIP: usize = 64 * 1024;

impl FromRequest<AppState> for RequestBody {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, AppError> {
        let limit = state.max_body_bytes;
        read_body(req, limit.get(), || AppError::PayloadTooLarge(limit))
            .await
            .map(RequestBody)
    }
}

/// Reads (and, for `Content-Encoding: gzip`, decompresses) a body of at
/// most `limit` bytes; `too_large` past it.
async fn read_body(
    req: Request,
    limit: u64,
    too_large: impl Fn() -> AppError,
) -> Result<Bytes, AppError> {
    let gzip = match req.headers().get(CONTENT_ENCODING).map(|v| v.to_str()) {
        None => false,
        Some(Ok(v)) if v.trim().eq_ignore_ascii_case("identity") => false,
        Some(Ok(v))
            if v.trim().eq_ignore_ascii_case("gzip") || v.trim().eq_ignore_ascii_case("x-gzip") =>
        {
            true
        }
        Some(other) => {
            return Err(AppError::UnsupportedEncoding(
                other.unwrap_or("(not text)").to_owned(),
            ));
        }
    };
    let bytes = axum::body::to_bytes(
        req.into_body(),
        usize::try_from(limit).unwrap_or(usize::MAX),
    )
    .await
    .map_err(|e| {
        let cause = e.into_inner();
        if cause.is::<http_body_util::LengthLimitError>() {
            too_large()
        } else {
            AppError::UnreadableBody(format!("Failed to buffer the request body: {cause}"))
        }
    })?;
    if !gzip {
        return Ok(bytes);
    }
    let gunzipped = if bytes.len() < INLINE_GUNZIP {
        gunzip(&bytes, limit)
    } else {
        tokio::task::spawn_blocking(move || gunzip(&bytes, limit)).await?
    };
    match gunzipped {
        Err(AppError::PayloadTooLarge(_)) => Err(too_large()),
        other => other,
    }
}

/// Decompresses a gzip body, reading at most `limit` bytes of output: a
/// body that would grow past it (a zip bomb) is a 413 after `limit` bytes of
/// work, not after all of it.
fn gunzip(compressed: &[u8], limit: u64) -> Result<Bytes, AppError> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(compressed)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| AppError::UnreadableBody(format!("the gzip body is corrupt: {e}")))?;
    if out.len() as u64 > limit {
        return Err(AppError::PayloadTooLarge(ByteSize(limit)));
    }
    Ok(Bytes::from(out))
}

/// `{import_id}` from the path: a positive integer, or the resource does not exist.
pub struct ImportPath(pub ImportId);

/// `{import_id}` and `{citizen_id}` from the path; anything unparsable is a 404.
pub struct CitizenPath(pub ImportId, pub CitizenId);

fn parse_import(raw: &str) -> Result<ImportId, AppError> {
    raw.parse::<i64>()
        .ok()
        .filter(|_| raw.bytes().all(|b| b.is_ascii_digit()))
        .and_then(ImportId::new)
        .ok_or_else(|| AppError::NotFound(format!("import {raw} not found")))
}

fn parse_citizen(raw: &str) -> Result<CitizenId, AppError> {
    raw.parse::<u64>()
        .ok()
        .filter(|_| raw.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|id| CitizenId::parse(id).ok())
        .ok_or_else(|| AppError::NotFound(format!("citizen {raw} not found")))
}

fn not_found() -> AppError {
    AppError::NotFound("no such resource".into())
}

impl FromRequestParts<AppState> for ImportPath {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| not_found())?;
        let import = parse_import(&raw)?;
        tracing::Span::current().record("import_id", import.get());
        Ok(ImportPath(import))
    }
}

impl FromRequestParts<AppState> for CitizenPath {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let Path((import, citizen)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| not_found())?;
        let (import, citizen) = (parse_import(&import)?, parse_citizen(&citizen)?);
        let span = tracing::Span::current();
        span.record("import_id", import.get());
        span.record("citizen_id", citizen.get());
        Ok(CitizenPath(import, citizen))
    }
}
