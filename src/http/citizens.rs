//! `/imports/{import_id}/citizens`: list, patch one, birthdays.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::error::{AppError, json_response};
use super::extract::{CitizenPath, ImportPath, RequestBody};
use super::wire::{self, Object, PatchBody};
use super::{AppState, cached_view, data, paging};
use crate::domain::order::{Order, SortKey};
use crate::domain::search::Search;
use crate::domain::{Citizen, CitizenId, ImportId, today_utc};
use crate::reads::cache::View;

#[utoipa::path(
    get,
    path = "/imports/{import_id}/citizens",
    operation_id = "listCitizens",
    security(("bearer" = ["read"]), ()),
    tag = "citizens",
    params(
        ("import_id" = u64, Path, minimum = 1, description = "The import"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "A page of this many citizens (default 1000 with a cursor); without limit and cursor, all of them"),
        ("cursor" = Option<String>, Query, min_length = 1, pattern = "^[A-Za-z0-9_-]+$", description = "next_cursor of the previous page (opaque; one the service did not give is 400)"),
        ("q" = Option<String>, Query, max_length = 256, description = "A search: a whole number finds the citizen with that id; other text, the citizens whose name, town or street contains it, letter case aside. Paged as limit and cursor say; a page may hold fewer than limit, even none, with a next_cursor (each request reads at most 50,000 citizens)"),
        ("ids" = Option<String>, Query, pattern = "^[0-9]+(,[0-9]+)*$", description = "1 to 100 citizen ids, comma-separated: those citizens, by id (not with limit, cursor, q or sort)"),
        ("month" = Option<u8>, Query, minimum = 1, maximum = 12, description = "Only the citizens buying presents in this month (those with a relative born then, as the birthdays answer counts them), by citizen_id or as sort says. Paged as limit and cursor say; a page may hold fewer than limit, even none, with a next_cursor (each request looks at up to 200,000 citizens)"),
        ("sort" = Option<String>, Query, pattern = "^-?(citizen_id|name|town|street|building|apartment|birth_date|gender|relatives)$", description = "Pages (and a text search's) sorted by this field, - before it for descending: text as the Unicode collation for Russian orders it, birth_date by date, relatives by how many; equal ones by citizen_id. Paged as limit and cursor say"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag of an earlier answer"),
        ("Accept-Encoding" = Option<String>, Header, description = "gzip for a compressed answer"),
    ),
    responses(
        crate::http::openapi::Refusals,
        (status = 200, description = "All citizens, by citizen_id, relatives ascending", body = crate::http::openapi::CitizensAnswer,
            headers(
                ("ETag" = String, description = "Weak tag of the import, its version and the view"),
                ("Cache-Control" = String, description = "no-cache"),
                ("Vary" = String, description = "accept-encoding"),
                ("Content-Encoding" = String, description = "gzip, when the request's Accept-Encoding allows it and the answer is big enough to gain"),
            ),
            example = json!({"data": [
                {"citizen_id": 1, "town": "Москва", "street": "Льва Толстого", "building": "16к7стр5", "apartment": 7, "name": "Иванов Иван Иванович", "birth_date": "26.12.1986", "gender": "male", "relatives": [2]},
                {"citizen_id": 2, "town": "Москва", "street": "Льва Толстого", "building": "16к7стр5", "apartment": 7, "name": "Иванов Сергей Иванович", "birth_date": "01.04.1997", "gender": "male", "relatives": [1]},
                {"citizen_id": 3, "town": "Керчь", "street": "Иосифа Бродского", "building": "2", "apartment": 11, "name": "Романова Мария Леонидовна", "birth_date": "23.11.1986", "gender": "female", "relatives": []}
            ]})),
        (status = 304, description = "Not modified: If-None-Match named the current answer"),
        (status = 400, description = "A bad limit, cursor, q, ids, sort or month", body = crate::http::openapi::ErrorAnswer),
        (status = 404, description = "No such import", body = crate::http::openapi::ErrorAnswer),
        (status = 503, description = "The store is unavailable: retry", body = crate::http::openapi::ErrorAnswer),
    )
)]
/// All citizens of an import, or a page of them
///
/// Every citizen as stored and corrected since, ordered by `citizen_id`, each with its
/// relatives in ascending order. The answer carries an `ETag` (the import, its version and
/// the view): send it back in `If-None-Match` and an unchanged import answers 304 with no
/// body. Big answers are gzip-compressed for clients that accept it.
///
/// With `limit` (1–10,000) or `cursor`, a page: `limit` citizens (1000 if only a cursor is
/// sent) after the previous page's last, and `next_cursor` beside `data` (null on the last
/// page). Pages are read by `citizen_id` from the store, so a page costs the same in an
/// import of any size; a page is one state of the import, and a PATCH between two pages
/// shows in the later one only (a citizen is never repeated or skipped: ids do not change).
/// Pages have no `ETag`.
///
/// With `q`, a search (pages as above): a whole number finds the citizen with that id,
/// other text the citizens whose name, town or street contains it, letter case aside. Each
/// request reads at most 50,000 citizens, so a page may hold fewer than `limit`, even none,
/// with a `next_cursor` to go on from. With `ids` (1–100, comma-separated, alone), those
/// citizens, by id.
///
/// With `sort` (a field; `-name` for descending), pages and text searches come in that order:
/// text fields as the Unicode collation for Russian orders them (Cyrillic before Latin,
/// letter case and `ё` after the letter), `birth_date` by date, `apartment` as a number,
/// `relatives` by how many, and citizens equal in the field by `citizen_id` (descending is
/// the same order backwards). The order is built once per version of the import (a read of
/// every citizen: seconds for a million) and kept in the read cache. A page after a PATCH
/// goes on after where the previous page's last citizen now is; each citizen shows as it is
/// when read. A sorted text search looks at up to 200,000 citizens per request.
///
/// With `month` (1–12), only the citizens who buy presents that month (a relative of theirs
/// is born then, as the birthdays answer counts them): walked along the same kept order (by
/// `citizen_id` without `sort`), up to 200,000 citizens per request, with `q` too if sent.
///
/// Failures: 400 for a `limit` out of range, a `cursor` the service did not give (or gave for
/// another order), a `q` over 256 characters, a bad `ids`, an unknown `sort` or a `month`
/// not 1–12; 404 when there is no such import; 503 when the store does
/// not answer (retry).
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    ImportPath(import): ImportPath,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|e| AppError::BadQuery("query", e.body_text()))?;
    let paged = [
        &query.limit,
        &query.cursor,
        &query.q,
        &query.sort,
        &query.month,
    ];
    if query.ids.is_none() && paged.iter().all(|p| p.is_none()) {
        return cached_view(&state, &headers, import, View::Citizens).await;
    }
    if let Some(ids) = query.ids.as_deref() {
        if paged.iter().any(|p| p.is_some()) {
            return Err(AppError::BadQuery(
                "ids",
                "comes alone: not with limit, cursor, q, sort or month".into(),
            ));
        }
        let ids = parse_ids(ids)?;
        // Still 404 for an import that is not there.
        let version = state.reads.import_version(import).await?;
        let found = state
            .reads
            .citizens_by_id(import, Some(version), &ids)
            .await?;
        return page_answer(&found, None);
    }
    let limit = paging::limit(query.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?;
    let sort = parse_sort(query.sort.as_deref())?;
    let month = query
        .month
        .as_deref()
        .map(|m| {
            paging::number::<u8>(m)
                .filter(|m| (1..=12).contains(m))
                .ok_or_else(|| {
                    AppError::BadQuery("month", format!("must be a month, 1 to 12, got {m:?}"))
                })
        })
        .transpose()?;
    // A month's buyers walk an order too: by id when no other is asked.
    let sort = sort.or(month.map(|_| (SortKey::CitizenId, false)));
    let search = match query.q.as_deref() {
        Some(q) if q.chars().count() > MAX_SEARCH => {
            return Err(AppError::BadQuery(
                "q",
                format!("must be at most {MAX_SEARCH} characters"),
            ));
        }
        Some(q) => Search::new(q),
        None => None,
    };
    // An id search is one read by id, unless a month must be checked too.
    let by_id = matches!(search, Some(Search::Id(_))) && month.is_none();
    if let (Some((key, descending)), false) = (sort, by_id) {
        let walk = Walk {
            key,
            descending,
            limit,
            search: search.as_ref(),
            month,
        };
        return sorted_page(&state, import, walk, query.cursor.as_deref()).await;
    }
    // A cursor names the last citizen of a page, or the last one a search read.
    let after = paging::cursor(query.cursor.as_deref(), "after", |id| {
        CitizenId::parse(id.parse().ok()?).ok()
    })?;
    match search {
        None => {
            // One more than asked tells whether there is a next page.
            let mut citizens = state.reads.citizens_page(import, after, limit + 1).await?;
            let more = citizens.len() > limit;
            citizens.truncate(limit);
            let next = more
                .then(|| citizens.last().map(|c| c.citizen_id))
                .flatten();
            page_answer(&citizens, next)
        }
        Some(Search::Id(id)) => {
            let found = citizen_by_id(&state, import, id, after).await?;
            page_answer(found.as_slice(), None)
        }
        Some(search) => {
            let read = |after, n| state.reads.citizens_page(import, after, n);
            let (found, next) = scan(read, after, limit, &search, (SCAN, SCAN_READ)).await?;
            page_answer(&found, next)
        }
    }
}

/// The answer of a page: `data`, and a cursor after `next` if there is more.
fn page_answer(citizens: &[Arc<Citizen>], next: Option<CitizenId>) -> Result<Response, AppError> {
    page_with_cursor(citizens, next.map(|id| paging::encode("after", id)))
}

fn page_with_cursor(
    citizens: &[Arc<Citizen>],
    next_cursor: Option<String>,
) -> Result<Response, AppError> {
    let page = CitizensPage {
        data: citizens.iter().map(AsRef::as_ref).collect(),
        next_cursor,
    };
    let body = serde_json::to_vec(&page).map_err(AppError::internal)?;
    Ok(json_response(StatusCode::OK, body))
}

/// Citizen `id` of the import, if there is one after `after` (one read by id,
/// as `Reads::citizens_by_id`; `None`: a number no citizen has).
async fn citizen_by_id(
    state: &AppState,
    import: ImportId,
    id: Option<CitizenId>,
    after: Option<CitizenId>,
) -> Result<Option<Arc<Citizen>>, AppError> {
    let Some(id) = id.filter(|&id| after.is_none_or(|after| after < id)) else {
        // Still 404 for an import that is not there.
        state.reads.citizens_page(import, after, 1).await?;
        return Ok(None);
    };
    Ok(state.reads.citizens_by_id(import, None, &[id]).await?.pop())
}

/// Reads citizens by id from after `after` with `read(after, n)` (a page of
/// the store) until `limit` of them match `search` or `budget` are read,
/// `per_read` per read (a few milliseconds each): the matches, and the last
/// citizen read when there may be more (the next search starts after it).
async fn scan<E, F, R>(
    mut read: R,
    mut after: Option<CitizenId>,
    limit: usize,
    search: &Search,
    (budget, per_read): (usize, usize),
) -> Result<(Vec<Arc<Citizen>>, Option<CitizenId>), E>
where
    R: FnMut(Option<CitizenId>, usize) -> F,
    F: Future<Output = Result<Vec<Arc<Citizen>>, E>>,
{
    let mut found = Vec::new();
    let mut done = 0;
    while done < budget {
        let want = per_read.min(budget - done);
        let rows = read(after, want).await?;
        let end = rows.len() < want;
        for citizen in rows {
            done += 1;
            after = Some(citizen.citizen_id);
            if search.matches(&citizen) {
                found.push(citizen);
                if found.len() == limit {
                    return Ok((found, after));
                }
            }
        }
        if end {
            return Ok((found, None));
        }
    }
    Ok((found, after))
}

/// A sorted listing's page as asked: by which field, which way, how many,
/// the text search and the month of presents if any.
struct Walk<'a> {
    key: SortKey,
    descending: bool,
    limit: usize,
    search: Option<&'a Search>,
    month: Option<u8>,
}

/// A page of the import sorted as `walk` says, after `cursor`: the walk goes
/// along the import's order (`domain::order`, built once per version and
/// kept) from where the cursor says, picking the citizens the search finds
/// and buying presents in the month (both in what the order keeps, so
/// without reading the store), at most
/// `SORTED_SCAN` per request; the page's citizens are then read by id.
async fn sorted_page(
    state: &AppState,
    import: ImportId,
    walk: Walk<'_>,
    cursor: Option<&str>,
) -> Result<Response, AppError> {
    let kind = format!(
        "by-{}{}",
        walk.key.as_str(),
        if walk.descending { "-desc" } else { "" }
    );
    // Where the previous page's walk stopped, and the citizen just before.
    let at = paging::cursor(cursor, &kind, |at| {
        let (position, id) = at.split_once('.')?;
        Some((position.parse::<usize>().ok()?, id.parse::<u64>().ok()?))
    })?;
    let version = state.reads.import_version(import).await?;
    let bytes = state.reads.order(import, walk.key, version).await?;
    let order =
        Order::parse(&bytes).ok_or_else(|| AppError::internal("a kept order is corrupt"))?;
    let start = match at {
        None => 0,
        Some((position, id)) => order.resume(position, id, walk.descending).ok_or_else(|| {
            AppError::BadQuery(
                "cursor",
                "is not a cursor of this import's sorted listing".into(),
            )
        })?,
    };
    let found = |i| match walk.search {
        Some(Search::Text(wanted)) => order.finds(i, walk.descending, wanted),
        Some(Search::Id(id)) => id.is_some_and(|id| order.id(i, walk.descending) == id.get()),
        None => true,
    };
    let (mut i, mut picked) = (start, Vec::new());
    while i < order.len() && picked.len() < walk.limit && i - start < SORTED_SCAN {
        if found(i)
            && walk
                .month
                .is_none_or(|m| order.buys_in(i, walk.descending, m))
        {
            picked.push(order.id(i, walk.descending));
        }
        i += 1;
    }
    let next = (i < order.len()).then(|| {
        let last = order.id(i - 1, walk.descending);
        paging::encode(&kind, format!("{i}.{last}"))
    });
    drop(bytes);
    let picked = picked
        .into_iter()
        .map(CitizenId::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| AppError::internal("an order holds a bad id"))?;
    let found = state
        .reads
        .citizens_by_id(import, Some(version), &picked)
        .await?;
    page_with_cursor(&found, next)
}

/// The `sort` as sent: a field, `-` before it for descending; `None` for the
/// store's own order (ascending `citizen_id`).
fn parse_sort(sort: Option<&str>) -> Result<Option<(SortKey, bool)>, AppError> {
    let Some(sort) = sort else {
        return Ok(None);
    };
    let (name, descending) = match sort.strip_prefix('-') {
        Some(name) => (name, true),
        None => (sort, false),
    };
    match SortKey::parse(name) {
        Some(SortKey::CitizenId) if !descending => Ok(None),
        Some(key) => Ok(Some((key, descending))),
        None => Err(AppError::BadQuery(
            "sort",
            format!(
                "must be a citizen's field, - before it for descending ({}), got {sort:?}",
                SortKey::ALL.map(|(_, name)| name).join(", ")
            ),
        )),
    }
}

/// The ids of `ids=`: 1 to `MAX_IDS` citizen ids, comma-separated, answered in
/// ascending order, each once.
fn parse_ids(ids: &str) -> Result<Vec<CitizenId>, AppError> {
    let bad = || {
        AppError::BadQuery(
            "ids",
            format!("must be 1 to {MAX_IDS} citizen ids separated by commas, got {ids:?}"),
        )
    };
    let mut parsed = ids
        .split(',')
        .map(|id| {
            paging::number::<u64>(id)
                .and_then(|n| CitizenId::parse(n).ok())
                .ok_or_else(bad)
        })
        .collect::<Result<Vec<_>, _>>()?;
    parsed.sort_unstable();
    parsed.dedup();
    if parsed.len() > MAX_IDS {
        return Err(bad());
    }
    Ok(parsed)
}

/// Citizens per page when a cursor comes without a limit.
const DEFAULT_PAGE: usize = 1000;
/// Most citizens per page.
const MAX_PAGE: usize = 10_000;
/// Most citizens a search reads per request, and per read of the store.
const SCAN: usize = 50_000;
const SCAN_READ: usize = 5_000;
/// Most citizens a sorted listing's walk looks at per request (held in
/// memory: a few milliseconds).
const SORTED_SCAN: usize = 200_000;
/// Longest search, in characters.
const MAX_SEARCH: usize = 256;
/// Most ids in `ids=`.
const MAX_IDS: usize = 100;

/// The query of `GET /imports/{id}/citizens`, as sent (checked by `list`).
#[derive(Deserialize)]
pub struct PageQuery {
    limit: Option<String>,
    cursor: Option<String>,
    q: Option<String>,
    ids: Option<String>,
    sort: Option<String>,
    month: Option<String>,
}

/// A page of citizens: the contract's `data`, and where the next page starts.
#[derive(Serialize)]
struct CitizensPage<'a> {
    data: Vec<&'a Citizen>,
    next_cursor: Option<String>,
}

/// PATCH bodies of this many bytes or more are parsed off the async
/// worker threads (a few milliseconds of work and up).
const INLINE_PATCH: usize = 64 * 1024;

#[utoipa::path(
    patch,
    path = "/imports/{import_id}/citizens/{citizen_id}",
    operation_id = "patchCitizen",
    security(("bearer" = ["write"]), ()),
    tag = "citizens",
    params(
        ("import_id" = u64, Path, minimum = 1, description = "The import"),
        ("citizen_id" = u64, Path, description = "The citizen"),
    ),
    request_body(content = crate::http::openapi::CitizenPatchSchema, description = "The fields to change",
        example = json!({"name": "Иванова Мария Леонидовна", "town": "Москва", "street": "Льва Толстого", "building": "16к7стр5", "apartment": 7, "relatives": [1]})),
    responses(
        crate::http::openapi::Refusals,
        (status = 200, description = "The whole citizen as it is now", body = crate::http::openapi::CitizenAnswer,
            example = json!({"data": {"citizen_id": 3, "town": "Москва", "street": "Льва Толстого", "building": "16к7стр5", "apartment": 7, "name": "Иванова Мария Леонидовна", "birth_date": "23.11.1986", "gender": "female", "relatives": [1]}})),
        (status = 400, description = "The body breaks a rule: the error names the field", body = crate::http::openapi::ErrorAnswer,
            example = json!({"error": {"code": "unknown_relative", "message": "relatives (citizen 3): relative 9 is not a citizen of this import", "field": "relatives", "citizen_id": 3}})),
        (status = 404, description = "No such import or citizen", body = crate::http::openapi::ErrorAnswer),
        (status = 413, description = "The body is over the size limit", body = crate::http::openapi::ErrorAnswer),
        (status = 415, description = "A Content-Encoding other than gzip", body = crate::http::openapi::ErrorAnswer),
        (status = 503, description = "Not changed: retry later", body = crate::http::openapi::ErrorAnswer),
        (status = 504, description = "Sent to the store, not confirmed: it may have been changed", body = crate::http::openapi::ErrorAnswer),
        (status = 507, description = "The store has no room: nothing changed", body = crate::http::openapi::ErrorAnswer),
    )
)]
/// Correct one citizen
///
/// Replaces the fields the body names (at least one; any but `citizen_id`), with the same
/// rules as an import, and answers 200 with the whole citizen as it is now. A new `relatives`
/// list replaces the old one and is mirrored: the citizen is added to the lists of the
/// relatives gained and removed from those of the relatives dropped, in the same atomic
/// change, so the relation stays symmetric. Each PATCH raises the import's `version`; the
/// analytics answer for the new state at once.
///
/// Failures: 400 a field breaks a rule (`birth_date` not a real date or in the future, a
/// relative not in the import or listed twice, `null`, an unknown field, `citizen_id`, an
/// empty body), naming the field; 404 no such import or citizen; 503 not changed (retry);
/// 504 sent but not confirmed (it may have been applied: read the citizen to see); 507 the
/// store has no room.
pub async fn update(
    State(state): State<AppState>,
    CitizenPath(import, citizen): CitizenPath,
    RequestBody(body): RequestBody,
) -> Result<Response, AppError> {
    let body_len = body.len();
    let today = today_utc();
    let parse = move || {
        let Object(patch) = wire::parse::<Object<PatchBody>>(&body).map_err(|mut e| {
            e.citizen_id = Some(citizen);
            e
        })?;
        Ok::<_, AppError>(patch.into_patch(citizen, today)?)
    };
    // A PATCH may carry a relatives list as long as an import allows (a
    // citizen related to 100,000 others): a big one is parsed and checked
    // off the async worker threads.
    let patch = if body_len < INLINE_PATCH {
        parse()?
    } else {
        tokio::task::spawn_blocking(parse).await??
    };
    let patched = state.reads.patch_citizen(import, citizen, patch).await?;
    data(StatusCode::OK, &patched.citizen)
}

#[utoipa::path(
    get,
    path = "/imports/{import_id}/citizens/birthdays",
    operation_id = "birthdays",
    security(("bearer" = ["read"]), ()),
    tag = "analytics",
    params(
        ("import_id" = u64, Path, minimum = 1, description = "The import"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag of an earlier answer"),
        ("Accept-Encoding" = Option<String>, Header, description = "gzip for a compressed answer"),
    ),
    responses(
        crate::http::openapi::Refusals,
        (status = 200, description = "Presents per month", body = crate::http::openapi::BirthdaysAnswer,
            headers(
                ("ETag" = String, description = "Weak tag of the import, its version and the view"),
                ("Cache-Control" = String, description = "no-cache"),
                ("Vary" = String, description = "accept-encoding"),
                ("Content-Encoding" = String, description = "gzip, when the request's Accept-Encoding allows it and the answer is big enough to gain"),
            ),
            example = json!({"data": {"1": [], "2": [], "3": [], "4": [{"citizen_id": 1, "presents": 1}], "5": [], "6": [], "7": [], "8": [], "9": [], "10": [], "11": [], "12": [{"citizen_id": 2, "presents": 1}]}})),
        (status = 304, description = "Not modified: If-None-Match named the current answer"),
        (status = 404, description = "No such import", body = crate::http::openapi::ErrorAnswer),
        (status = 503, description = "The store is unavailable: retry", body = crate::http::openapi::ErrorAnswer),
    )
)]
/// How many presents each citizen buys per month
///
/// A citizen buys one present per relative, in the month of that relative's birthday.
/// The answer has exactly the keys `"1"` to `"12"`; under each month, one entry per citizen
/// who buys at least one present then, ordered by `citizen_id`. A citizen who lists itself
/// buys itself a present. In the example (the example import), citizen 1 buys one present in
/// April, for citizen 2, and citizen 2 one in December, for citizen 1.
///
/// `ETag`/`If-None-Match` as for the citizens. Failures: 404 no such import; 503 the store
/// does not answer (retry).
pub async fn birthdays(
    State(state): State<AppState>,
    headers: HeaderMap,
    ImportPath(import): ImportPath,
) -> Result<Response, AppError> {
    cached_view(&state, &headers, import, View::Birthdays).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample;

    /// `scan` over citizens held here, counting the reads.
    async fn scan_held(
        citizens: &[Arc<Citizen>],
        after: Option<u64>,
        limit: usize,
        q: &str,
        budget: (usize, usize),
    ) -> (Vec<u64>, Option<u64>, usize) {
        let mut reads = 0;
        let read = |after: Option<CitizenId>, n: usize| {
            reads += 1;
            let page: Vec<_> = citizens
                .iter()
                .filter(|c| after.is_none_or(|a| c.citizen_id > a))
                .take(n)
                .cloned()
                .collect();
            async move { Ok::<_, ()>(page) }
        };
        let after = after.map(|a| CitizenId::parse(a).unwrap());
        let (found, next) = scan(read, after, limit, &Search::new(q).unwrap(), budget)
            .await
            .unwrap();
        let ids = found.iter().map(|c| c.citizen_id.get()).collect();
        (ids, next.map(CitizenId::get), reads)
    }

    #[tokio::test]
    async fn a_search_stops_at_its_budget_or_its_limit_and_says_where() {
        let body = sample::import_body(100, 0, 3);
        let body: wire::ImportBody = wire::parse(&body).unwrap();
        let today = time::macros::date!(2026 - 01 - 01);
        let citizens: Vec<Arc<Citizen>> = body
            .into_citizens(today)
            .unwrap()
            .into_iter()
            .map(Arc::new)
            .collect();
        let matching = |q: &str| -> Vec<u64> {
            let search = Search::new(q).unwrap();
            citizens
                .iter()
                .filter(|c| search.matches(c))
                .map(|c| c.citizen_id.get())
                .collect()
        };
        let all = matching("АН");
        assert!(all.len() > 20 && all.len() < 100, "{}", all.len());
        // (The sample's ids are 0 to 99.) The budget ends the search with
        // fewer than the limit: go on from there.
        let (found, next, reads) = scan_held(&citizens, None, 1_000, "АН", (30, 7)).await;
        assert_eq!((next, reads), (Some(29), 5));
        assert_eq!(
            found,
            all.iter()
                .copied()
                .filter(|&id| id <= 29)
                .collect::<Vec<_>>()
        );
        // The limit ends it at the last match.
        let (found, next, _) = scan_held(&citizens, Some(29), 3, "АН", (30, 7)).await;
        assert_eq!(
            found,
            all.iter()
                .copied()
                .filter(|&id| id > 29)
                .take(3)
                .collect::<Vec<_>>()
        );
        assert_eq!(next, found.last().copied());
        // The end of the import: no cursor, even on a read that came back full.
        let (found, next, _) = scan_held(&citizens, Some(89), 1_000, "АН", (30, 5)).await;
        assert_eq!(
            found,
            all.iter()
                .copied()
                .filter(|&id| id > 89)
                .collect::<Vec<_>>()
        );
        assert_eq!(next, None);
        // Walked to the end in steps, the matches are all of them, in order.
        let mut walked = Vec::new();
        let mut after = None;
        loop {
            let (found, next, _) = scan_held(&citizens, after, 4, "АН", (13, 6)).await;
            walked.extend(found);
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(walked, all);
    }
}
