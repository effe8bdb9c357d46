//! `/imports`: store one, list them, delete one.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::AppError;
use super::extract::{ImportPath, RequestBody};
use super::wire::{self, ImportBody, Object};
use super::{AppState, data};
use crate::domain::{ImportId, today_utc};
use crate::storage::{Idempotency, Version};

#[derive(Serialize)]
struct Created {
    import_id: ImportId,
}

/// Imports per page when the client does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// Most imports per page.
pub const MAX_LIMIT: usize = 1000;

/// The query of `GET /imports`, as sent (checked by `list`).
#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// One import in the list.
#[derive(Serialize)]
struct Listed {
    import_id: ImportId,
    citizens: u64,
    /// RFC 3339, UTC.
    created_at: String,
    version: Version,
}

#[derive(Serialize)]
struct Page {
    imports: Vec<Listed>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    next_cursor: Option<String>,
}

/// A cursor names the last import of a page; it is opaque to clients.
fn encode_cursor(import: ImportId) -> String {
    URL_SAFE_NO_PAD.encode(format!("before:{import}"))
}

fn decode_cursor(cursor: &str) -> Option<ImportId> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    text.strip_prefix("before:")?
        .parse()
        .ok()
        .and_then(ImportId::new)
}

/// `2026-11-28T10:00:00Z`.
fn rfc3339(unix_seconds: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix_seconds)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[utoipa::path(
    get,
    path = "/imports",
    operation_id = "listImports",
    security(("bearer" = ["read"]), ()),
    tag = "imports",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Imports per page (default 100)"),
        ("cursor" = Option<String>, Query, min_length = 1, pattern = "^[A-Za-z0-9_-]+$", description = "next_cursor of the previous page (opaque; one the service did not give is 400)"),
    ),
    responses(
        crate::http::openapi::Refusals,
        (status = 200, description = "A page of imports, newest first", body = crate::http::openapi::ImportsAnswer),
        (status = 400, description = "A bad limit or cursor", body = crate::http::openapi::ErrorAnswer),
        (status = 503, description = "The store is unavailable: retry", body = crate::http::openapi::ErrorAnswer),
    )
)]
/// Imports, newest first, a page at a time (`limit` 1–1000, default 100;
/// `cursor` from the previous page's `next_cursor`).
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|e| AppError::BadQuery("query", e.body_text()))?;
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                AppError::BadQuery(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_LIMIT}, got {text:?}"),
                )
            })?,
    };
    let before = match query.cursor.as_deref() {
        None => None,
        Some(cursor) => Some(decode_cursor(cursor).ok_or_else(|| {
            AppError::BadQuery(
                "cursor",
                "is not a cursor this service gave out (use next_cursor as it came)".into(),
            )
        })?),
    };
    // One more than asked tells whether there is a next page.
    let mut found = state.reads.list_imports(limit + 1, before).await?;
    let more = found.len() > limit;
    found.truncate(limit);
    let next_cursor = more
        .then(|| found.last().map(|i| encode_cursor(i.import_id)))
        .flatten();
    let imports = found
        .into_iter()
        .map(|i| Listed {
            import_id: i.import_id,
            citizens: i.citizens,
            created_at: rfc3339(i.created_at),
            version: i.version,
        })
        .collect();
    data(
        StatusCode::OK,
        &Page {
            imports,
            next_cursor,
        },
    )
}

#[utoipa::path(
    delete,
    path = "/imports/{import_id}",
    operation_id = "deleteImport",
    security(("bearer" = ["delete"]), ()),
    tag = "imports",
    params(("import_id" = u64, Path, minimum = 1, description = "The import")),
    responses(
        crate::http::openapi::Refusals,
        (status = 204, description = "Deleted, with all its citizens"),
        (status = 404, description = "No such import", body = crate::http::openapi::ErrorAnswer),
        (status = 503, description = "Not deleted: retry later", body = crate::http::openapi::ErrorAnswer),
        (status = 504, description = "Sent to the store, not confirmed: it may have been deleted", body = crate::http::openapi::ErrorAnswer),
        (status = 507, description = "The store has no room", body = crate::http::openapi::ErrorAnswer),
    )
)]
/// Deletes an import and all its citizens; 204.
pub async fn delete(
    State(state): State<AppState>,
    ImportPath(import): ImportPath,
) -> Result<Response, AppError> {
    state.reads.delete_import(import).await?;
    tracing::Span::current().record("import_id", import.get());
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Longest accepted `Idempotency-Key`.
const MAX_KEY: usize = 255;

/// The `Idempotency-Key` header, if sent: 1–255 printable ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, AppError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_KEY || !bytes.iter().all(|b| (0x20..0x7f).contains(b))
    {
        return Err(AppError::BadHeader(
            "Idempotency-Key",
            format!("must be 1 to {MAX_KEY} printable ASCII characters"),
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

#[utoipa::path(
    post,
    path = "/imports",
    operation_id = "createImport",
    security(("bearer" = ["write"]), ()),
    tag = "imports",
    request_body(content = crate::http::openapi::ImportRequestSchema, description = "The import; may be gzip-compressed (Content-Encoding: gzip)"),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$", description = "1–255 printable ASCII characters: a retry with the same key and body gets the same import")),
    responses(
        crate::http::openapi::Refusals,
        (status = 201, description = "Stored", body = crate::http::openapi::ImportCreated),
        (status = 400, description = "The body breaks a rule: the error names the field and the citizen", body = crate::http::openapi::ErrorAnswer),
        (status = 413, description = "The body is over the size limit", body = crate::http::openapi::ErrorAnswer),
        (status = 415, description = "A Content-Encoding other than gzip", body = crate::http::openapi::ErrorAnswer),
        (status = 422, description = "The Idempotency-Key was used with another body", body = crate::http::openapi::ErrorAnswer),
        (status = 503, description = "Not stored: retry later", body = crate::http::openapi::ErrorAnswer),
        (status = 504, description = "Sent to the store, not confirmed: it may have been stored", body = crate::http::openapi::ErrorAnswer),
        (status = 507, description = "The store has no room: nothing stored", body = crate::http::openapi::ErrorAnswer),
    )
)]
/// Validates and stores an import atomically; 201 with its new id. With an
/// `Idempotency-Key` seen before: the same body gets the same import id
/// (201, nothing new stored), another body 422.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response, AppError> {
    let key = idempotency_key(&headers)?;
    let today = today_utc();
    // Parsing and validating up to the body limit (64 MiB by default) is CPU
    // work of tens of milliseconds: keep it off the async worker threads.
    let (citizens, idempotency) = tokio::task::spawn_blocking(move || {
        let citizens = wire::parse::<Object<ImportBody>>(&body)?
            .0
            .into_citizens(today)?;
        let idempotency = key.map(|key| Idempotency {
            key,
            body_hash: Sha256::digest(&body).into(),
        });
        Ok::<_, AppError>((citizens, idempotency))
    })
    .await??;
    let span = tracing::Span::current();
    span.record("citizens", citizens.len());
    let import_id = state.reads.create_import(citizens, idempotency).await?;
    span.record("import_id", import_id.get());
    data(StatusCode::CREATED, &Created { import_id })
}
