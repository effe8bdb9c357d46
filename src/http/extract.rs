//! Extractors that fail with [`AppError`], so every rejection has our JSON body.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;

use super::AppState;
use super::error::AppError;
use crate::domain::{CitizenId, ImportId};

/// The raw request body, read whatever the Content-Type says, within the
/// configured size limit (413 past it).
pub struct Body(pub Bytes);

impl FromRequest<AppState> for Body {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, AppError> {
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|rejection| match rejection {
                BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
                    AppError::PayloadTooLarge(state.max_body_bytes)
                }
                other => AppError::UnreadableBody(other.body_text()),
            })
    }
}

/// `{import_id}` from the path: a positive integer, or the resource does not exist.
pub struct ImportPath(pub ImportId);

/// `{import_id}` and `{citizen_id}` from the path; anything unparsable is a 404.
pub struct CitizenPath(pub ImportId, pub CitizenId);

fn parse_import(raw: &str) -> Result<ImportId, AppError> {
    raw.parse::<ImportId>()
        .ok()
        .filter(|id| *id > 0 && raw.bytes().all(|b| b.is_ascii_digit()))
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
        parse_import(&raw).map(ImportPath)
    }
}

impl FromRequestParts<AppState> for CitizenPath {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let Path((import, citizen)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| not_found())?;
        Ok(CitizenPath(
            parse_import(&import)?,
            parse_citizen(&citizen)?,
        ))
    }
}
