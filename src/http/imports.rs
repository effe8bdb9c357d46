//! `/imports`: store one, list them, delete one.

use std::num::NonZeroUsize;
use std::sync::OnceLock;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::Date;

use super::error::AppError;
use super::extract::{ImportPath, RequestBody};
use super::wire;
use super::{AppState, data, paging};
use crate::domain::{Citizen, ImportId, today_utc};
use crate::storage::{ImportInfo, Upload, Version};

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
    digest: Option<String>,
}

/// The query of `POST /imports`, as sent (checked by `create`).
#[derive(Deserialize)]
pub struct CreateQuery {
    name: Option<String>,
}

/// Longest import name, in characters (as the contract's text fields).
const MAX_NAME: usize = 256;

/// An import's name as sent: 1–256 characters, none a control character
/// (a name is a label in lists, never a place for a newline or a NUL).
fn import_name(name: Option<String>) -> Result<Option<String>, AppError> {
    let Some(name) = name else {
        return Ok(None);
    };
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME {
        return Err(AppError::BadQuery(
            "name",
            format!("must be 1 to {MAX_NAME} characters, got {chars}"),
        ));
    }
    if let Some(at) = name.chars().position(char::is_control) {
        return Err(AppError::BadQuery(
            "name",
            format!(
                "must have no control characters, got one at character {}",
                at + 1
            ),
        ));
    }
    Ok(Some(name))
}

/// A `digest` query: 64 hex digits (either case).
fn parse_digest(text: &str) -> Result<[u8; 32], AppError> {
    let mut digest = [0; 32];
    hex::decode_to_slice(text, &mut digest).map_err(|_| {
        AppError::BadQuery(
            "digest",
            format!("must be a SHA-256 in 64 hex digits, got {text:?}"),
        )
    })?;
    Ok(digest)
}

/// One import in the list.
#[derive(Serialize)]
struct Listed {
    import_id: ImportId,
    citizens: u64,
    /// RFC 3339, UTC.
    created_at: String,
    version: Version,
    name: Option<String>,
    /// Lowercase hex.
    digest: Option<String>,
}

#[derive(Serialize)]
struct Page {
    imports: Vec<Listed>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    next_cursor: Option<String>,
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
        ("digest" = Option<String>, Query, pattern = "^[0-9A-Fa-f]{64}$", description = "Only the imports uploaded with this body: its SHA-256 in hex (as `digest` in the answer)"),
    ),
    responses(
        crate::http::openapi::Refusals,
        (status = 200, description = "A page of imports, newest first", body = crate::http::openapi::ImportsAnswer,
            example = json!({"data": {"imports": [{"import_id": 2, "citizens": 3, "created_at": "2026-12-05T10:00:00Z", "version": 2, "name": "december.json", "digest": "5b41e3a0c9d3b1a2d3f0e7c1a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0"}, {"import_id": 1, "citizens": 10000, "created_at": "2026-12-04T09:30:00Z", "version": 1, "name": null, "digest": "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"}], "next_cursor": null}})),
        (status = 400, description = "A bad limit, cursor or digest", body = crate::http::openapi::ErrorAnswer,
            example = json!({"error": {"code": "invalid_query", "message": "query parameter limit: must be a whole number from 1 to 1000, got \"0\"", "field": "limit", "citizen_id": null}})),
        (status = 503, description = "The store is unavailable: retry", body = crate::http::openapi::ErrorAnswer),
    )
)]
/// List the stored imports, newest first
///
/// A page at a time: `limit` imports (1–1000, default 100), then the next page with
/// `cursor` set to the answer's `next_cursor` (null on the last page). Each import says how
/// many citizens it has, when it was stored (RFC 3339, UTC), its `version` (1 when
/// stored, +1 per PATCH), the `name` it was uploaded with (or null) and the `digest` of its
/// body (SHA-256 in hex). No citizen is read, so a page costs the same for any import size.
/// Imports stored or deleted between two pages do not make a page repeat or skip another.
///
/// With `digest`, only the imports uploaded with that body are listed (found by an index):
/// a client can tell, before sending a file, whether it is stored already.
///
/// Failures: 400 for a `limit` out of range, a `cursor` the service did not give or a
/// `digest` that is not 64 hex digits.
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|e| AppError::BadQuery("query", e.body_text()))?;
    let limit = paging::limit(query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    // A cursor names the last import of a page.
    let before = paging::cursor(query.cursor.as_deref(), "before", |id| {
        id.parse().ok().and_then(ImportId::new)
    })?;
    let digest = query.digest.as_deref().map(parse_digest).transpose()?;
    // One more than asked tells whether there is a next page.
    let mut found = state.reads.list_imports(limit + 1, before, digest).await?;
    let more = found.len() > limit;
    found.truncate(limit);
    let next_cursor = more
        .then(|| found.last().map(|i| paging::encode("before", i.import_id)))
        .flatten();
    let imports = found.into_iter().map(listed).collect();
    data(
        StatusCode::OK,
        &Page {
            imports,
            next_cursor,
        },
    )
}

/// An import as the list shows it.
fn listed(i: ImportInfo) -> Listed {
    Listed {
        import_id: i.import_id,
        citizens: i.citizens,
        created_at: rfc3339(i.created_at),
        version: i.version,
        name: i.name,
        digest: i.digest.map(hex::encode),
    }
}

#[utoipa::path(
    get,
    path = "/imports/{import_id}",
    operation_id = "getImport",
    security(("bearer" = ["read"]), ()),
    tag = "imports",
    params(("import_id" = u64, Path, minimum = 1, description = "The import")),
    responses(
        crate::http::openapi::Refusals,
        (status = 200, description = "The import, as the list shows it", body = crate::http::openapi::ImportAnswer,
            example = json!({"data": {"import_id": 2, "citizens": 3, "created_at": "2026-12-05T10:00:00Z", "version": 2, "name": "december.json", "digest": "5b41e3a0c9d3b1a2d3f0e7c1a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0"}})),
        (status = 404, description = "No such import", body = crate::http::openapi::ErrorAnswer),
        (status = 503, description = "The store is unavailable: retry", body = crate::http::openapi::ErrorAnswer),
    )
)]
/// One import: its size, name, digest, version and when it was stored
///
/// What `GET /imports` says about this import (no citizen is read): so a client knows an
/// import's size before asking for its citizens, all at once or a page at a time.
///
/// Failures: 404 when there is no such import; 503 when the store does not answer (retry).
pub async fn show(
    State(state): State<AppState>,
    ImportPath(import): ImportPath,
) -> Result<Response, AppError> {
    // The newest import older than the next id: this one, if it exists.
    let before = import.get().checked_add(1).and_then(ImportId::new);
    let found = state.reads.list_imports(1, before, None).await?;
    match found.into_iter().next() {
        Some(info) if info.import_id == import => data(StatusCode::OK, &listed(info)),
        _ => Err(crate::storage::StorageError::ImportNotFound(import).into()),
    }
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
/// Delete an import and all its citizens
///
/// 204, and the import is gone at once for every reader: its citizens and analytics
/// answer 404 from then on. Import ids are never reused, so a later import never takes its
/// place. The space is given back to the store.
///
/// Failures: 404 when there is no such import (also when it was deleted before); 503 when
/// nothing was deleted (retry); 504 when the store did not confirm (it may have been
/// deleted: a retry answers 204 or 404).
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

/// The citizens of a `POST /imports` body, parsed and checked off the async
/// workers; a big body in parts side by side, one per core up to
/// [`MAX_PARTS`] (`wire::cut_import`: the answer is the one-piece parse's,
/// always).
async fn parse_import(body: Bytes, today: Date) -> Result<Vec<Citizen>, AppError> {
    let parts = cores().min(MAX_PARTS);
    if body.len() >= wire::PARTS_FROM && parts > 1 {
        let tasks: Vec<_> = wire::cut_import(&body, parts)
            .into_iter()
            .map(|range| {
                let body = body.clone();
                tokio::task::spawn_blocking(move || wire::parse_part(&body, range, today))
            })
            .collect();
        if !tasks.is_empty() {
            let mut parsed = Vec::with_capacity(tasks.len());
            for task in tasks {
                parsed.push(task.await?);
            }
            if let Some(parsed) = parsed.into_iter().collect::<Option<Vec<_>>>() {
                return Ok(tokio::task::spawn_blocking(move || wire::join_parts(parsed)).await??);
            }
        }
    }
    Ok(tokio::task::spawn_blocking(move || wire::import_citizens(&body, today)).await??)
}

/// The most parts a body of `POST /imports` is parsed in.
const MAX_PARTS: usize = 8;

/// The cores this process may run on (read once: on Linux it reads the
/// cgroup's files).
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
}

#[utoipa::path(
    post,
    path = "/imports",
    operation_id = "createImport",
    security(("bearer" = ["write"]), ()),
    tag = "imports",
    request_body(content = crate::http::openapi::ImportRequestSchema, description = "The import; may be gzip-compressed (Content-Encoding: gzip)",
        example = json!({"citizens": [
            {"citizen_id": 1, "town": "Москва", "street": "Льва Толстого", "building": "16к7стр5", "apartment": 7, "name": "Иванов Иван Иванович", "birth_date": "26.12.1986", "gender": "male", "relatives": [2]},
            {"citizen_id": 2, "town": "Москва", "street": "Льва Толстого", "building": "16к7стр5", "apartment": 7, "name": "Иванов Сергей Иванович", "birth_date": "01.04.1997", "gender": "male", "relatives": [1]},
            {"citizen_id": 3, "town": "Керчь", "street": "Иосифа Бродского", "building": "2", "apartment": 11, "name": "Романова Мария Леонидовна", "birth_date": "23.11.1986", "gender": "female", "relatives": []}
        ]})),
    params(
        ("name" = Option<String>, Query, min_length = 1, max_length = 256, description = "A name for the import (1–256 characters, no control characters), listed by GET /imports; the analysts' page sends the file's name"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$", description = "1–255 printable ASCII characters: a retry with the same key and body gets the same import"),
    ),
    responses(
        crate::http::openapi::Refusals,
        (status = 201, description = "Stored", body = crate::http::openapi::ImportCreated,
            example = json!({"data": {"import_id": 1}})),
        (status = 400, description = "The body breaks a rule (the error names the field and the citizen), or the name does", body = crate::http::openapi::ErrorAnswer,
            example = json!({"error": {"code": "not_a_calendar_date", "message": "citizens[1].birth_date (citizen 2): 31.02.2019 is not a calendar date", "field": "citizens[1].birth_date", "citizen_id": 2}})),
        (status = 413, description = "The body is over the size limit", body = crate::http::openapi::ErrorAnswer),
        (status = 415, description = "A Content-Encoding other than gzip", body = crate::http::openapi::ErrorAnswer),
        (status = 422, description = "The Idempotency-Key was used with another body", body = crate::http::openapi::ErrorAnswer),
        (status = 503, description = "Not stored: retry later", body = crate::http::openapi::ErrorAnswer),
        (status = 504, description = "Sent to the store, not confirmed: it may have been stored", body = crate::http::openapi::ErrorAnswer),
        (status = 507, description = "The store has no room: nothing stored", body = crate::http::openapi::ErrorAnswer),
    )
)]
/// Store an import of citizens
///
/// Checks every citizen and stores them all, or nothing: 201 with the new `import_id`
/// (positive, increasing, never reused). An empty list is a valid, empty import.
///
/// The rules (a broken one is a 400 naming the field and the citizen, and nothing is stored):
/// every field present, no other field; `citizen_id` unique in the import; `town`, `street`
/// and `building` 1–256 characters with at least one letter or digit, `name` 1–256
/// characters; `apartment` and ids 0 to 2^63−1; `birth_date` a real `DD.MM.YYYY` date not after
/// today (UTC); `gender` `male` or `female`; `relatives` ids of this import, each once, and
/// symmetric (if 1 lists 2, 2 lists 1; a citizen may list itself).
///
/// The body may be gzip-compressed (`Content-Encoding: gzip`); its size after decompression
/// is limited (413; 64 MiB by default). With an `Idempotency-Key`, a retry of the same body
/// gets the same `import_id` (201, nothing new stored) and another body with that key 422: so a
/// client that got no answer (a 504, a lost connection) can send again safely.
///
/// The import is stored with the SHA-256 of its body (after decompression), listed as
/// `digest` by `GET /imports`, and with `name` if one is given (1–256 characters, no control
/// characters): the body is the contract's, unchanged. The same file sent twice is stored
/// twice (two imports with one digest); `GET /imports?digest=` finds the earlier one first.
///
/// Failures: 503 nothing stored (retry); 504 sent but not confirmed (it may have been stored:
/// retry with the same `Idempotency-Key`); 507 the store has no room.
pub async fn create(
    State(state): State<AppState>,
    query: Result<Query<CreateQuery>, QueryRejection>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|e| AppError::BadQuery("query", e.body_text()))?;
    let name = import_name(query.name)?;
    let key = idempotency_key(&headers)?;
    let today = today_utc();
    // Parsing and validating up to the body limit (64 MiB by default) is CPU
    // work of tens of milliseconds: keep it off the async worker threads,
    // and hash the body beside it (the digest must not add its time).
    let hashed = body.clone();
    let digest =
        tokio::task::spawn_blocking(move || -> [u8; 32] { Sha256::digest(&hashed).into() });
    let citizens = parse_import(body, today).await?;
    let upload = Upload {
        name,
        digest: digest.await?,
        key,
    };
    let span = tracing::Span::current();
    span.record("citizens", citizens.len());
    let import_id = state.reads.create_import(citizens, upload).await?;
    span.record("import_id", import_id.get());
    data(StatusCode::CREATED, &Created { import_id })
}
