//! The answers kept up to date by each PATCH's change (the analytics, and
//! the citizens listing spliced from the previous one) equal a
//! recomputation, after every PATCH of a random sequence, on every backend. The recomputation here shares no code with the
//! service's but numpy's percentile formula (checked against numpy itself
//! in the unit tests).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::backend_tests;
use gifts::domain::stats::{percentile, round2};
use gifts::sample::Rng;

use crate::helpers::{Backend, TestApp, generate_import, spec_example, today, wire_date};

/// `DD.MM.YYYY` as (year, month, day).
fn ymd(date: &Value) -> (i64, i64, i64) {
    let text = date.as_str().expect("a date");
    let part = |range: std::ops::Range<usize>| text[range].parse::<i64>().expect("digits");
    (part(6..10), part(3..5), part(0..2))
}

/// GET birthdays, from the GET citizens listing.
fn birthdays_of(listing: &[Value]) -> Value {
    let month: BTreeMap<u64, i64> = listing
        .iter()
        .map(|c| (c["citizen_id"].as_u64().unwrap(), ymd(&c["birth_date"]).1))
        .collect();
    let mut months: BTreeMap<i64, Vec<Value>> = (1..=12).map(|m| (m, vec![])).collect();
    for c in listing {
        let mut counts = BTreeMap::new();
        for relative in c["relatives"].as_array().unwrap() {
            *counts
                .entry(month[&relative.as_u64().unwrap()])
                .or_insert(0) += 1;
        }
        for (m, presents) in counts {
            months.get_mut(&m).unwrap().push(json!({
                "citizen_id": c["citizen_id"], "presents": presents
            }));
        }
    }
    Value::Object(
        months
            .into_iter()
            .map(|(m, list)| (m.to_string(), Value::Array(list)))
            .collect(),
    )
}

/// GET percentiles on `today`, from the GET citizens listing.
fn percentiles_of(listing: &[Value], today: (i64, i64, i64)) -> Value {
    let mut towns: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for c in listing {
        let (y, m, d) = ymd(&c["birth_date"]);
        let age = today.0 - y - i64::from((today.1, today.2) < (m, d));
        towns
            .entry(c["town"].as_str().unwrap().to_owned())
            .or_default()
            .push(age);
    }
    Value::Array(
        towns
            .into_iter()
            .map(|(town, mut ages)| {
                ages.sort_unstable();
                let p = |q| round2(percentile(&ages, q));
                json!({"town": town, "p50": p(50.0), "p75": p(75.0), "p99": p(99.0)})
            })
            .collect(),
    )
}

/// `model` after the PATCH that answered `now`: `now` replaces its old
/// self, the relatives it dropped lose it, the ones it added gain it.
fn mirror(model: &mut BTreeMap<u64, Value>, now: &Value) {
    let ids = |c: &Value| -> Vec<u64> {
        c["relatives"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_u64().unwrap())
            .collect()
    };
    let me = now["citizen_id"].as_u64().unwrap();
    let (old, new) = (ids(&model[&me]), ids(now));
    model.insert(me, now.clone());
    for other in old.iter().chain(&new).copied().filter(|o| *o != me) {
        let mut list = ids(&model[&other]);
        list.retain(|r| *r != me);
        if new.contains(&other) {
            list.push(me);
            list.sort_unstable();
        }
        model.get_mut(&other).unwrap()["relatives"] = json!(list);
    }
}

/// A random index below `len`.
fn index(rng: &mut Rng, len: usize) -> usize {
    usize::try_from(rng.below(len as u64)).expect("below len")
}

async fn analytics_after_each_patch_equal_a_recomputation(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    random_patches_keep_every_answer_exact(&app).await;
}

/// The same with nothing cached: every analytics answer comes from the
/// summary the store keeps beside the citizens, changed by each PATCH in
/// its transaction — the citizens are read by GET citizens only.
async fn analytics_with_nothing_cached_come_from_the_stored_summary(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.cache_bytes = gifts::config::ByteSize(0)).await;
    random_patches_keep_every_answer_exact(&app).await;
    // One GET citizens per step plus the first: no analytics read loaded them.
    assert_eq!(store_calls(&app, backend, "citizens").await, Some(41.0));
    assert_eq!(store_calls(&app, backend, "presents").await, Some(40.0));
    assert_eq!(store_calls(&app, backend, "town_dates").await, Some(40.0));
}

/// Today as (year, month, day).
fn today_ymd() -> (i64, i64, i64) {
    let now = today();
    (
        i64::from(now.year()),
        i64::from(now.month() as u8),
        i64::from(now.day()),
    )
}

/// GET birthdays and percentiles equal a recomputation from GET citizens.
pub(crate) async fn assert_answers_exact(app: &TestApp, import: i64) {
    let listing = app.citizens(import).await;
    assert_eq!(app.birthdays(import).await, birthdays_of(&listing));
    assert_eq!(
        app.percentiles(import).await,
        percentiles_of(&listing, today_ymd())
    );
}

/// How many `operation` calls to the store succeeded, from /metrics.
async fn store_calls(app: &TestApp, backend: Backend, operation: &str) -> Option<f64> {
    let text = app.metrics().await;
    let series = format!(
        "gifts_storage_operation_duration_seconds_count{{backend=\"{}\",operation=\"{operation}\",outcome=\"ok\"}}",
        backend.name()
    );
    text.lines()
        .find(|l| l.starts_with(&series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
}

/// Imports stored by a build before the summary: the next build's schema
/// migration computes theirs (here the summary, the names and digests are
/// dropped and the schema version set back behind the service's back), and
/// answers with nothing cached come from it; they are listed with no name
/// and no digest.
async fn an_import_stored_before_the_summary_gets_one_at_the_upgrade(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let first = app.import(generate_import(60, 90, 3)).await;
    let second = app.import(generate_import(5, 4, 4)).await;
    let store = app.stop().await;
    let sql = match backend {
        Backend::Postgres => {
            "DROP TABLE presents, town_dates;
             DROP FUNCTION gifts_picks_follow_dates();
             ALTER TABLE imports DROP COLUMN name, DROP COLUMN digest;
             UPDATE gifts_meta SET schema_version = 1;"
        }
        _ => {
            "DROP TABLE presents; DROP TABLE town_dates; DROP INDEX imports_by_digest;
             DROP TABLE staged_citizens;
             ALTER TABLE imports DROP COLUMN name; ALTER TABLE imports DROP COLUMN digest;
             PRAGMA user_version = 5;"
        }
    };
    store.edit_offline(
        sql,
        "box.space.presents:drop() box.space.town_years:drop() box.space.town_picks:drop()
         box.space.imports.index.digest:drop()
         for _, t in ipairs(box.space.imports:select()) do
             box.space.imports:replace({ t[1], t[2], t[3], t[4], t[5] })
         end
         box.space.meta:replace({ 'schema_version', 3 })",
    );
    let mut config = gifts::config::Config::with_storage(store.url().clone());
    config.cache_bytes = gifts::config::ByteSize(0);
    let app = TestApp::start(store, config).await;
    for import in [first, second] {
        assert_answers_exact(&app, import).await;
    }
    assert_eq!(store_calls(&app, backend, "town_dates").await, Some(2.0));
    assert_eq!(store_calls(&app, backend, "citizens").await, Some(2.0));
    let (status, listed) = app.get("/imports").await;
    assert_eq!(status, reqwest::StatusCode::OK, "{listed}");
    for import in listed["data"]["imports"].as_array().unwrap() {
        assert_eq!(import["name"], Value::Null, "{import}");
        assert_eq!(import["digest"], Value::Null, "{import}");
    }
}

/// Checks behind the service's back that the store holds summary rows
/// (`some`) or none at all; a failed check fails the offline edit.
fn check_summary_rows(store: &crate::helpers::TestStore, some: bool) {
    let (check, lua) = if some {
        (
            "n > 0",
            "assert(box.space.presents:len() > 0 and box.space.town_years:len() > 0
                 and box.space.town_picks:len() > 0, 'no summary')",
        )
    } else {
        (
            "n = 0",
            "assert(box.space.presents:len() + box.space.town_years:len()
                 + box.space.town_picks:len() == 0, 'summary left')",
        )
    };
    store.edit_offline(
        &format!(
            "CREATE TEMP TABLE summary_rows (n bigint CHECK ({check}));
             INSERT INTO summary_rows SELECT (SELECT count(*) FROM presents) + (SELECT count(*) FROM town_dates);"
        ),
        lua,
    );
}

/// Deleting an import deletes its summary with it.
async fn deleting_an_import_leaves_none_of_its_summary(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let import = app.import(generate_import(30, 40, 2)).await;
    let store = app.stop().await;
    check_summary_rows(&store, true);
    let config = gifts::config::Config::with_storage(store.url().clone());
    let app = TestApp::start(store, config).await;
    let (status, _) = app
        .send(reqwest::Method::DELETE, &format!("/imports/{import}"), None)
        .await;
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT);
    check_summary_rows(&*app.stop().await, false);
}

/// A Tarantool import sent in chunks gets its summary when it is committed,
/// and read back in pages (of 7 rows) its answers are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarantool_import_stored_in_chunks_has_its_summary() {
    if !crate::helpers::tarantool_available("chunks_summary") {
        return;
    }
    let app = TestApp::spawn_with(Backend::Tarantool, |c| {
        c.tarantool_import_chunk = 7;
        c.tarantool_read_page = 7;
        c.cache_bytes = gifts::config::ByteSize(0);
    })
    .await;
    let import = app.import(generate_import(80, 120, 5)).await;
    assert_answers_exact(&app, import).await;
    assert_eq!(
        store_calls(&app, Backend::Tarantool, "presents").await,
        Some(1.0)
    );
    // Deleting it leaves nothing of it.
    let (status, _) = app
        .send(reqwest::Method::DELETE, &format!("/imports/{import}"), None)
        .await;
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT);
    check_summary_rows(&*app.stop().await, false);
}

/// Citizens who share a birth date and a town are each counted as they
/// come and go, with nothing cached: a date that gains a second citizen,
/// dates before, between and after the others of a year, a date that loses
/// citizens one by one, and a year that loses its last date.
async fn citizens_sharing_a_birth_date_are_each_counted_as_they_come_and_go(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.cache_bytes = gifts::config::ByteSize(0)).await;
    let import = app.import(generate_import(12, 6, 9)).await;
    let ids = app.citizen_ids(import).await;
    let moves = [
        (0, "15.06.1990", "Керчь"),
        (1, "15.06.1990", "Керчь"),
        (2, "15.06.1990", "Керчь"),
        (3, "01.01.1990", "Керчь"),
        (4, "31.12.1990", "Керчь"),
        (5, "16.06.1990", "Керчь"),
        (6, "14.06.1990", "Керчь"),
        (1, "15.06.1990", "Уфа"),
        (0, "16.06.1990", "Керчь"),
        (2, "01.01.1991", "Керчь"),
        (3, "31.12.1990", "Керчь"),
        (4, "15.06.1990", "Уфа"),
        (6, "15.06.1990", "Уфа"),
        (5, "15.06.1990", "Уфа"),
        (0, "15.06.1990", "Уфа"),
        (3, "15.06.1990", "Уфа"),
    ];
    assert_answers_exact(&app, import).await;
    for (step, (who, born, town)) in moves.into_iter().enumerate() {
        let patch = json!({"birth_date": born, "town": town});
        let (status, body) = app.patch(import, ids[who], &patch).await;
        assert_eq!(status, reqwest::StatusCode::OK, "step {step}: {body}");
        assert_answers_exact(&app, import).await;
    }
    let percentiles = app.percentiles(import).await;
    assert!(
        percentiles.to_string().contains("Уфа"),
        "six citizens born on one day in Уфа: {percentiles}"
    );
}

/// A Tarantool store of schema 6 (town dates a row per date, in
/// `town_births`) moves them into a row per town and year at the upgrade;
/// answers with nothing cached come from the moved rows, before and after a
/// PATCH that moves a birth date, and the old space is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarantool_store_of_schema_6_moves_its_town_dates_into_years() {
    if !crate::helpers::tarantool_available("schema_6_town_years") {
        return;
    }
    let app = TestApp::spawn_with(Backend::Tarantool, |c| {
        c.cache_bytes = gifts::config::ByteSize(0);
    })
    .await;
    let first = app.import(generate_import(120, 90, 8)).await;
    let second = app.import(spec_example()).await;
    let store = app.stop().await;
    store.edit_offline(
        "",
        "local births = box.schema.space.create('town_births', { format = {
             { name = 'import_id', type = 'unsigned' }, { name = 'town', type = 'string' },
             { name = 'date', type = 'unsigned' }, { name = 'citizens', type = 'unsigned' } } })
         births:create_index('primary', { parts = { { field = 1, type = 'unsigned' },
             { field = 2, type = 'string' }, { field = 3, type = 'unsigned' } } })
         local function u32(s, at)
             local a, b, c, d = string.byte(s, at, at + 3)
             return a + b * 256 + c * 65536 + d * 16777216
         end
         local n = 0
         for _, t in box.space.town_years:pairs() do
             for at = 1, #t[4], 8 do
                 births:insert({ t[1], t[2], u32(t[4], at), u32(t[4], at + 4) })
                 n = n + u32(t[4], at + 4)
             end
         end
         assert(n == 123, 'the store counts ' .. n .. ' citizens')
         box.space.town_years:drop()
         box.space.town_picks:drop()
         box.space.meta:replace({ 'schema_version', 6 })",
    );
    let mut config = gifts::config::Config::with_storage(store.url().clone());
    config.cache_bytes = gifts::config::ByteSize(0);
    let app = TestApp::start(store, config).await;
    for import in [first, second] {
        assert_answers_exact(&app, import).await;
    }
    let (status, body) = app
        .patch(
            second,
            1,
            &json!({"birth_date": "29.02.2000", "town": "Керчь"}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_answers_exact(&app, second).await;
    app.stop().await.edit_offline(
        "",
        "assert(box.space.town_births == nil, 'town_births is still there')
         assert(box.space.meta:get('schema_version')[2] == 9, 'not at schema 9')",
    );
}

/// 40 random PATCHes; before each, every answer equals a recomputation
/// from GET citizens, and GET citizens equals the test's own model.
async fn random_patches_keep_every_answer_exact(app: &TestApp) {
    let import = app.import(generate_import(80, 120, 7)).await;
    let now = today();
    let day = today_ymd();
    let mut rng = Rng::new(11);
    let towns = ["Москва", "Керчь", "Abakan", "Ёлкино"];
    // The import as this test knows it, by citizen_id.
    let mut model: BTreeMap<u64, Value> = app
        .citizens(import)
        .await
        .into_iter()
        .map(|c| (c["citizen_id"].as_u64().unwrap(), c))
        .collect();
    for step in 0..40 {
        // Read every answer first, so the next PATCH moves what is kept.
        let listing = app.citizens(import).await;
        assert_eq!(
            listing,
            model.values().cloned().collect::<Vec<_>>(),
            "citizens, step {step}"
        );
        assert_eq!(
            app.birthdays(import).await,
            birthdays_of(&listing),
            "birthdays, step {step}"
        );
        assert_eq!(
            app.percentiles(import).await,
            percentiles_of(&listing, day),
            "percentiles, step {step}"
        );
        let ids: Vec<u64> = listing
            .iter()
            .map(|c| c["citizen_id"].as_u64().unwrap())
            .collect();
        let pick = |rng: &mut Rng| ids[index(rng, ids.len())];
        let who = pick(&mut rng);
        let mut patch = serde_json::Map::new();
        if rng.below(2) == 0 {
            patch.insert("town".into(), json!(towns[index(&mut rng, towns.len())]));
        }
        if rng.below(2) == 0 {
            // Up to ~80 years back, any day (29 February included).
            let born = now - time::Duration::days(rng.below(29_000).cast_signed());
            patch.insert("birth_date".into(), json!(wire_date(born)));
        }
        if rng.below(2) == 0 || patch.is_empty() {
            let relatives: std::collections::BTreeSet<u64> =
                (0..rng.below(5)).map(|_| pick(&mut rng)).collect();
            patch.insert("relatives".into(), json!(relatives));
        }
        let (status, body) = app.patch(import, who, &Value::Object(patch)).await;
        assert_eq!(status, reqwest::StatusCode::OK, "step {step}: {body}");
        mirror(&mut model, &body["data"]);
    }
}

backend_tests!(
    analytics_after_each_patch_equal_a_recomputation,
    analytics_with_nothing_cached_come_from_the_stored_summary,
    an_import_stored_before_the_summary_gets_one_at_the_upgrade,
    deleting_an_import_leaves_none_of_its_summary,
    citizens_sharing_a_birth_date_are_each_counted_as_they_come_and_go
);
