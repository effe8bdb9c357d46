//! The OpenAPI 3.1 document of the API, generated from the code: the
//! handlers carry `#[utoipa::path]` attributes, and the shapes of bodies are
//! described by the types below (each mirrors what the handlers read or
//! write; schemathesis checks real answers against them in CI). Served at
//! `GET /openapi.json`; `docs/openapi.json` is a checked-in copy a test
//! compares, so a change to the API shows up in review.

#![allow(dead_code)] // the types here only describe JSON for the document

use std::collections::BTreeSet;
use utoipa::openapi::{Info, OpenApi as Document};

use serde::Deserialize;
use utoipa::{OpenApi, ToSchema};

/// A citizen, as sent in an import and as answered.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(as = Citizen)]
pub struct CitizenSchema {
    /// Unique within its import.
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    citizen_id: i64,
    /// 1–256 characters (code points), at least one letter or digit (any script).
    #[schema(min_length = 1, max_length = 256)]
    town: String,
    /// 1–256 characters, at least one letter or digit.
    #[schema(min_length = 1, max_length = 256)]
    street: String,
    /// 1–256 characters, at least one letter or digit.
    #[schema(min_length = 1, max_length = 256)]
    building: String,
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    apartment: i64,
    /// 1–256 characters of any kind.
    #[schema(min_length = 1, max_length = 256)]
    name: String,
    /// `DD.MM.YYYY`: a real calendar date, not later than today (UTC). The
    /// pattern holds the day to 01–31 and the month to 01–12; a day the
    /// month lacks (31.04) or a date after today is 400 all the same.
    #[schema(
        pattern = r"^(0[1-9]|[12][0-9]|3[01])\.(0[1-9]|1[0-2])\.[0-9]{4}$",
        example = "26.12.1986"
    )]
    birth_date: String,
    gender: Gender,
    /// citizen_ids of the same import, each once; a citizen may list itself.
    /// Symmetric: if 1 lists 2, 2 lists 1. Answers list them ascending.
    #[schema(inline)]
    relatives: BTreeSet<CitizenIdSchema>,
}

/// A citizen id.
#[derive(ToSchema, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[schema(as = CitizenId, minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
pub struct CitizenIdSchema(i64);

/// `male` or `female`.
#[derive(ToSchema, Deserialize)]
#[schema(rename_all = "lowercase")]
pub enum Gender {
    /// male
    Male,
    /// female
    Female,
}

/// Body of `POST /imports`.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(as = ImportRequest)]
pub struct ImportRequestSchema {
    /// The import's citizens; may be empty.
    citizens: Vec<CitizenSchema>,
}

/// Body of `PATCH .../citizens/{citizen_id}`: at least one field, none null.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(as = CitizenPatch, min_properties = 1)]
pub struct CitizenPatchSchema {
    #[schema(min_length = 1, max_length = 256, required = false)]
    town: String,
    #[schema(min_length = 1, max_length = 256, required = false)]
    street: String,
    #[schema(min_length = 1, max_length = 256, required = false)]
    building: String,
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64, required = false)]
    apartment: i64,
    #[schema(min_length = 1, max_length = 256, required = false)]
    name: String,
    #[schema(
        pattern = r"^(0[1-9]|[12][0-9]|3[01])\.(0[1-9]|1[0-2])\.[0-9]{4}$",
        required = false
    )]
    birth_date: String,
    #[schema(required = false)]
    gender: Gender,
    /// Replaces the list; the change is mirrored on the relatives dropped and added.
    #[schema(required = false, inline)]
    relatives: BTreeSet<CitizenIdSchema>,
}

/// `201` answer of `POST /imports`.
#[derive(ToSchema)]
pub struct ImportCreated {
    data: ImportId,
}

/// The new import's id.
#[derive(ToSchema)]
pub struct ImportId {
    /// Positive, increasing, never reused.
    #[schema(minimum = 1)]
    import_id: i64,
}

/// One citizen.
#[derive(ToSchema)]
pub struct CitizenAnswer {
    data: CitizenSchema,
}

/// All citizens of an import, by citizen_id.
#[derive(ToSchema)]
pub struct CitizensAnswer {
    data: Vec<CitizenSchema>,
    /// Only in a page (`limit` or `cursor` sent): pass as `cursor` for the next page; null on
    /// the last page.
    next_cursor: Option<String>,
}

/// Presents per month.
#[derive(ToSchema)]
pub struct BirthdaysAnswer {
    data: Months,
}

/// Exactly the keys `"1"`…`"12"`; each month's entries ordered by citizen_id.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Months {
    #[serde(rename = "1")]
    m1: Vec<Presents>,
    #[serde(rename = "2")]
    m2: Vec<Presents>,
    #[serde(rename = "3")]
    m3: Vec<Presents>,
    #[serde(rename = "4")]
    m4: Vec<Presents>,
    #[serde(rename = "5")]
    m5: Vec<Presents>,
    #[serde(rename = "6")]
    m6: Vec<Presents>,
    #[serde(rename = "7")]
    m7: Vec<Presents>,
    #[serde(rename = "8")]
    m8: Vec<Presents>,
    #[serde(rename = "9")]
    m9: Vec<Presents>,
    #[serde(rename = "10")]
    m10: Vec<Presents>,
    #[serde(rename = "11")]
    m11: Vec<Presents>,
    #[serde(rename = "12")]
    m12: Vec<Presents>,
}

/// How many presents a citizen buys in a month (one per relative born then).
#[derive(ToSchema, Deserialize)]
pub struct Presents {
    #[schema(minimum = 0)]
    citizen_id: i64,
    #[schema(minimum = 1)]
    presents: i64,
}

/// Age percentiles per town, ordered by town.
#[derive(ToSchema)]
pub struct PercentilesAnswer {
    data: Vec<TownPercentiles>,
}

/// numpy's linear percentiles of the ages (whole years, UTC), 2 decimals.
#[derive(ToSchema)]
pub struct TownPercentiles {
    town: String,
    #[schema(minimum = 0)]
    p50: f64,
    #[schema(minimum = 0)]
    p75: f64,
    #[schema(minimum = 0)]
    p99: f64,
}

/// One import.
#[derive(ToSchema)]
pub struct ImportAnswer {
    data: ImportSummary,
}

/// A page of imports.
#[derive(ToSchema)]
pub struct ImportsAnswer {
    data: ImportPage,
}

/// Imports, newest first.
#[derive(ToSchema)]
pub struct ImportPage {
    imports: Vec<ImportSummary>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// One import in the list.
#[derive(ToSchema)]
pub struct ImportSummary {
    #[schema(minimum = 1)]
    import_id: i64,
    #[schema(minimum = 0)]
    citizens: i64,
    /// When it was stored, RFC 3339 UTC.
    #[schema(format = DateTime)]
    created_at: String,
    /// 1 when stored, +1 per PATCH.
    #[schema(minimum = 1)]
    version: i64,
    /// The name it was uploaded with (`POST /imports?name=`); null when none was given.
    #[schema(min_length = 1, max_length = 256)]
    name: Option<String>,
    /// SHA-256 of the body it was uploaded with (after gzip decompression), 64 lowercase hex
    /// digits; the same file sent again has the same digest. Null for an import stored before
    /// the service kept digests.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    digest: Option<String>,
}

/// A probe's answer.
#[derive(ToSchema)]
pub struct StatusAnswer {
    data: Status,
}

/// `ok`, `live` or `ready`.
#[derive(ToSchema)]
pub struct Status {
    status: String,
}

/// The failures every route behind the tokens can answer, whatever it
/// does: one list, not a block repeated per operation. Each operation adds
/// its own (400, 404, 503, …), which say what they mean there.
#[derive(utoipa::IntoResponses)]
pub enum Refusals {
    /// 401.
    #[response(
        status = 401,
        description = "With --tokens-file: no token, or an unknown one",
        headers(("WWW-Authenticate" = String, description = "Bearer (RFC 6750)"))
    )]
    Unauthorized(ErrorAnswer),
    /// 403.
    #[response(
        status = 403,
        description = "With --tokens-file: the token lacks the scope this operation needs (see its security)"
    )]
    Forbidden(ErrorAnswer),
    /// 408.
    #[response(status = 408, description = "The request took too long")]
    Timeout(ErrorAnswer),
    /// 500.
    #[response(status = 500, description = "A fault of the service")]
    Fault(ErrorAnswer),
}

/// Every failure: `{"error": {...}}`.
#[derive(ToSchema)]
pub struct ErrorAnswer {
    error: ErrorDetail,
}

/// What went wrong. `field` and `citizen_id` come with 400s.
#[derive(ToSchema)]
pub struct ErrorDetail {
    code: ErrorCode,
    /// For people; may be reworded.
    message: String,
    /// The JSON path of the offending value (empty: the body as a whole),
    /// or the header or query parameter.
    #[schema(required = false)]
    field: String,
    /// The citizen the value belongs to, when known.
    #[schema(required = false)]
    citizen_id: Option<i64>,
}

/// Stable, for programs.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No body.
    EmptyBody,
    /// Not JSON.
    InvalidJson,
    /// JSON of the wrong shape.
    Malformed,
    /// A string of the wrong length.
    InvalidLength,
    /// A place without a letter or digit.
    NoLetterOrDigit,
    /// An integer above 2^63−1.
    OutOfRange,
    /// Not `DD.MM.YYYY`.
    InvalidDateFormat,
    /// No such date.
    NotACalendarDate,
    /// After today.
    DateInFuture,
    /// Not male or female.
    InvalidGender,
    /// Two citizens with one id.
    DuplicateCitizenId,
    /// A relative listed twice.
    DuplicateRelative,
    /// A relative not in the import.
    UnknownRelative,
    /// A link listed on one side only.
    RelativesNotSymmetric,
    /// A PATCH that changes nothing.
    EmptyPatch,
    /// A PATCH of citizen_id.
    ImmutableField,
    /// The body could not be read.
    UnreadableBody,
    /// A bad header.
    InvalidHeader,
    /// A bad query parameter.
    InvalidQuery,
    /// No such import, citizen or path.
    NotFound,
    /// Wrong method.
    MethodNotAllowed,
    /// Too slow.
    RequestTimeout,
    /// Too big.
    PayloadTooLarge,
    /// A Content-Encoding other than gzip.
    UnsupportedContentEncoding,
    /// An Idempotency-Key reused with another body.
    IdempotencyKeyReused,
    /// A fault of the service.
    Internal,
    /// Not applied; retry later.
    StorageUnavailable,
    /// Sent, not confirmed: may have been applied.
    StorageTimeout,
    /// No room: nothing changed.
    InsufficientStorage,
    /// Shutting down (readiness).
    Draining,
    /// No bearer token, or an unknown one.
    Unauthorized,
    /// The token lacks the scope.
    Forbidden,
}

/// The document: every route of the router.
#[derive(OpenApi)]
#[openapi(
    paths(
        super::imports::create,
        super::imports::list,
        super::imports::show,
        super::imports::delete,
        super::citizens::update,
        super::citizens::list,
        super::citizens::birthdays,
        super::towns::percentiles,
        super::health::check,
        super::health::live,
        super::health::ready,
        super::health::metrics,
        openapi_json,
    ),
    components(schemas(ErrorAnswer, CitizenIdSchema)),
    modifiers(&BearerTokens, &CommonHeaders),
    tags(
        (name = "imports", description = "Store, list and delete imports"),
        (name = "citizens", description = "Read and correct citizens"),
        (name = "analytics", description = "Presents per month, ages per town"),
        (name = "operations", description = "Probes, metrics, this document"),
    )
)]
struct ApiDoc;

/// Declares the bearer scheme the operations' `security` names.
struct BearerTokens;

impl utoipa::Modify for BearerTokens {
    fn modify(&self, doc: &mut Document) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Needed only when the service runs with --tokens-file; each operation names the scope its token must have (read, write, delete, admin). Make a token with `gifts token new`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Headers of every operation, declared once: `X-Request-Id` and
/// `traceparent` on every request and `X-Request-Id` on every answer (the
/// middleware in `http/mod.rs` handles them for every route), and
/// `Retry-After` on every 503.
struct CommonHeaders;

impl utoipa::Modify for CommonHeaders {
    fn modify(&self, doc: &mut Document) {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{ObjectBuilder, RefOr, Required, Type};
        // Any value is taken (and replaced or ignored when unusable), so the
        // schema holds nothing back: a stricter one would promise 400s.
        let optional_header = |name: &str, description: &str| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(description))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String).build()))
                .build()
        };
        let request_id = optional_header(
            "X-Request-Id",
            "The caller's id for this request, logged with it and echoed in the answer. Printable ASCII is kept (cut to 128 characters); without it, or with anything else, the service makes one (a UUIDv7).",
        );
        let traceparent = optional_header(
            "traceparent",
            "W3C trace context: its trace id and parent id are logged with the request; a malformed one is ignored.",
        );
        let echoed = HeaderBuilder::new()
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .description(Some(
                "The request's id: the caller's X-Request-Id when it is printable ASCII, else a new UUIDv7. Also in the request's log line.",
            ))
            .build();
        let retry_after = HeaderBuilder::new()
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0)),
            ))
            .description(Some(
                "Seconds to wait before a retry; sent when the store's queue is full",
            ))
            .build();
        for item in doc.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let parameters = operation.parameters.get_or_insert_with(Vec::new);
                parameters.push(request_id.clone().into());
                parameters.push(traceparent.clone().into());
                for (status, response) in &mut operation.responses.responses {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    response
                        .headers
                        .insert("X-Request-Id".into(), echoed.clone().into());
                    if status == "503" {
                        response
                            .headers
                            .insert("Retry-After".into(), retry_after.clone().into());
                    }
                }
            }
        }
    }
}

/// This OpenAPI document
///
/// The OpenAPI 3.1 description of every operation of this version, generated from the
/// code: what Swagger UI at `/docs` shows. Needs no token.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"))
)]
pub fn openapi_json() {}

/// The OpenAPI document of the running version.
pub fn document() -> Document {
    let mut doc = ApiDoc::openapi();
    doc.info = Info::builder()
        .title("gifts")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Citizen imports of a gift shop: store and correct them, and ask how many presents each citizen buys per month and how old people are per town. Every success is {\"data\": ...}; every failure {\"error\": {\"code\", \"message\", ...}}.",
        ))
        .build();
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `UPDATE_OPENAPI=1 cargo test --lib openapi` rewrites the copy after
    /// an intended change to the API.
    #[test]
    fn the_document_matches_its_checked_in_copy() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
        let generated = document().to_pretty_json().unwrap() + "\n";
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            generated == checked_in,
            "the API changed: review it, then run UPDATE_OPENAPI=1 cargo test --lib openapi to update docs/openapi.json"
        );
    }

    #[test]
    fn every_operation_documents_its_errors_with_the_error_body() {
        let doc = serde_json::to_value(document()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if status.starts_with('4') || status.starts_with('5') {
                        let schema = &response["content"]["application/json"]["schema"]["$ref"];
                        assert_eq!(
                            schema, "#/components/schemas/ErrorAnswer",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
    }
}
