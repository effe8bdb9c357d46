//! PATCH /imports/{import_id}/citizens/{citizen_id}: field updates, mirrored
//! relatives, rejections that change nothing, and concurrency.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::backend_tests;
use gifts::sample::Rng;

use crate::helpers::{Backend, TestApp, citizen, citizen_with, spec_example, today, wire_date};

/// `citizen_id → relatives` of an import.
pub(crate) async fn relatives(app: &TestApp, import: i64) -> BTreeMap<u64, Vec<u64>> {
    app.citizens(import)
        .await
        .iter()
        .map(|c| {
            let list = c["relatives"].as_array().unwrap();
            (
                c["citizen_id"].as_u64().unwrap(),
                list.iter().map(|v| v.as_u64().unwrap()).collect(),
            )
        })
        .collect()
}

fn graph(pairs: &[(u64, &[u64])]) -> BTreeMap<u64, Vec<u64>> {
    pairs.iter().map(|(id, r)| (*id, r.to_vec())).collect()
}

async fn spec_example_marriage_and_divorce_are_mirrored(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let import = app.import(spec_example()).await;

    let (status, body) = app.patch(import, 3, &json!({"relatives": [1]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut expected = spec_example()[2].clone();
    expected["relatives"] = json!([1]);
    assert_eq!(body, json!({ "data": expected }));
    assert_eq!(
        relatives(&app, import).await,
        graph(&[(1, &[2, 3]), (2, &[1]), (3, &[1])])
    );

    let (status, body) = app.patch(import, 3, &json!({"relatives": []})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "data": spec_example()[2] }));
    assert_eq!(
        relatives(&app, import).await,
        graph(&[(1, &[2]), (2, &[1]), (3, &[])])
    );
    let mut listing = spec_example();
    listing[2] = body["data"].clone();
    assert_eq!(app.citizens(import).await, listing, "nothing else changed");
}

async fn every_field_can_be_changed_and_the_whole_citizen_comes_back(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let import = app.import(spec_example()).await;
    let change = json!({
        "name": "Иванова Мария Леонидовна",
        "town": "Москва",
        "street": "Льва Толстого",
        "building": "16к7стр5",
        "apartment": 7,
        "birth_date": "29.02.2000",
        "gender": "male",
        "relatives": [2, 3],
    });
    let (status, body) = app.patch(import, 3, &change).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut expected = change.clone();
    expected["citizen_id"] = json!(3);
    assert_eq!(body["data"], expected);
    assert_eq!(
        app.citizens(import).await[2],
        expected,
        "the change is stored"
    );
    assert_eq!(
        relatives(&app, import).await,
        graph(&[(1, &[2]), (2, &[1, 3]), (3, &[2, 3])])
    );

    // One field at a time leaves the others alone.
    let (status, body) = app.patch(import, 3, &json!({"apartment": 12})).await;
    assert_eq!(status, StatusCode::OK);
    expected["apartment"] = json!(12);
    assert_eq!(body["data"], expected);
}

async fn replacing_relatives_drops_and_adds_on_both_sides(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let import = app
        .import(vec![
            citizen(1, &[2, 3]),
            citizen(2, &[1]),
            citizen(3, &[1]),
            citizen(4, &[]),
            citizen(5, &[]),
        ])
        .await;
    let (status, body) = app.patch(import, 1, &json!({"relatives": [5, 3, 4]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["relatives"], json!([3, 4, 5]), "ascending");
    assert_eq!(
        relatives(&app, import).await,
        graph(&[(1, &[3, 4, 5]), (2, &[]), (3, &[1]), (4, &[1]), (5, &[1])])
    );
}

async fn a_citizen_can_become_and_stop_being_its_own_relative(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let import = app.import(spec_example()).await;
    app.patch(import, 1, &json!({"relatives": [1, 2]})).await;
    assert_eq!(
        relatives(&app, import).await,
        graph(&[(1, &[1, 2]), (2, &[1]), (3, &[])])
    );
    app.patch(import, 1, &json!({"relatives": [2]})).await;
    assert_eq!(
        relatives(&app, import).await,
        graph(&[(1, &[2]), (2, &[1]), (3, &[])])
    );
}

async fn the_largest_ids_are_mirrored_like_small_ones(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (max, next) = (i64::MAX as u64, i64::MAX as u64 - 1);
    let import = app
        .import(vec![
            citizen(max, &[next]),
            citizen(next, &[max]),
            citizen(1, &[]),
        ])
        .await;
    let (status, body) = app.patch(import, 1, &json!({"relatives": [max, 1]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.patch(import, max, &json!({"relatives": [1, max]}))
        .await;
    assert_eq!(
        relatives(&app, import).await,
        graph(&[(1, &[1, max]), (next, &[]), (max, &[1, max])])
    );
}

async fn unknown_import_or_citizen_is_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let import = app.import(spec_example()).await;
    let body = json!({"name": "X"});
    let missing_import = format!("import {} not found", import + 1);
    let missing_citizen = format!("citizen 4 not found in import {import}");
    for (path_import, path_citizen, message) in [
        (import + 1, 1, missing_import),
        (import, 4, missing_citizen),
    ] {
        let (status, response) = app.patch(path_import, path_citizen, &body).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{path_import}/{path_citizen}"
        );
        assert_eq!(response["error"]["code"], "not_found");
        assert_eq!(response["error"]["message"], message.as_str());
    }
    for path in [
        "/imports/abc/citizens/1",
        "/imports/1/citizens/abc",
        "/imports/0/citizens/1",
        "/imports/-1/citizens/1",
        "/imports/1/citizens/-1",
        "/imports/1/citizens/9223372036854775808",
        "/imports/99999999999999999999/citizens/1",
    ] {
        let (status, _) = app
            .send(
                reqwest::Method::PATCH,
                path,
                Some(body.to_string().into_bytes()),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
}

/// The mirroring contract's errors (see `Storage::patch_citizen`), on a
/// store whose relation was broken behind the service's back: citizen 1
/// lists 2, which is gone. Dropping 2 is refused as a broken relation (500,
/// nothing changed, never skipped silently); an unknown new relative is
/// reported first; edits that do not touch 2 go through.
async fn a_relative_missing_from_the_store_is_refused_not_skipped(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let import = app.import(spec_example()).await;
    let store = app.stop().await;
    store.edit_offline(
        &format!("DELETE FROM citizens WHERE import_id = {import} AND citizen_id = 2;"),
        &format!("box.space.citizens:delete({{ {import}, 2 }})"),
    );
    let config = gifts::config::Config::with_storage(store.url().clone());
    let app = TestApp::start(store, config).await;

    let (status, body) = app.patch(import, 1, &json!({"relatives": []})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"]["code"], "internal");
    let (status, body) = app.patch(import, 1, &json!({"relatives": [3, 7]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "unknown_relative");
    assert!(
        body["error"]["message"].as_str().unwrap().contains('7'),
        "{body}"
    );
    let listed = app.citizens(import).await;
    assert_eq!(listed[0]["relatives"], json!([2]), "nothing changed");
    assert_eq!(listed[1]["relatives"], json!([]), "citizen 3 untouched");

    let (status, body) = app.patch(import, 1, &json!({"relatives": [2, 3]})).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "keeping 2 touches nothing of it: {body}"
    );
    let listed = app.citizens(import).await;
    assert_eq!(listed[1]["relatives"], json!([1]), "3 gained 1");
}

/// With the town summary broken behind the service's back, the refusals
/// still come first, in the one order of `domain::patch::plan`: an unknown
/// relative is a 400 on every backend (Tarantool's Lua checked the town
/// summary first and answered 500), and only a PATCH that gets past them
/// finds the broken store (500). Nothing is changed either way.
async fn refusals_come_before_a_broken_town_summary(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let import = app.import(spec_example()).await;
    let before = app.citizens(import).await;
    let store = app.stop().await;
    store.edit_offline(
        &format!("DELETE FROM town_dates WHERE import_id = {import};"),
        &format!(
            "local keys = {{}}
             for _, t in box.space.town_years:pairs({{ {import} }}) do
                 keys[#keys + 1] = {{ t[1], t[2], t[3] }}
             end
             for _, k in ipairs(keys) do box.space.town_years:delete(k) end"
        ),
    );
    let mut config = gifts::config::Config::with_storage(store.url().clone());
    config.cache_bytes = gifts::config::ByteSize(0);
    let app = TestApp::start(store, config).await;

    let moved = json!({"town": "Керчь", "relatives": [2, 7]});
    let (status, body) = app.patch(import, 1, &moved).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "unknown_relative", "{body}");
    let (status, body) = app.patch(import, 1, &json!({"town": "Керчь"})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(app.citizens(import).await, before, "nothing changed");
}

/// Rounds of 64 concurrent PATCHes of one import of `app` until one commit
/// carried several (`metric`: the backend's batch-size histogram). Each
/// gets its own answer: every fourth names a relative not in the import
/// (400, nothing written); with `failing`, every fourth other gives a name
/// the server fails on (500, its savepoint undone, nothing written); the
/// rest are applied. After each round the relation is symmetric and no
/// refused or failed PATCH left a trace.
pub(crate) async fn patches_share_a_commit(
    app: std::sync::Arc<TestApp>,
    metric: &str,
    failing: Option<&'static str>,
) {
    let n = 40u64;
    let import = app
        .import((1..=n).map(|id| citizen(id, &[])).collect())
        .await;
    // The first PATCH of a round goes alone; the rest queue behind it.
    for round in 0..5u64 {
        let tasks: Vec<_> = (0..64u64)
            .map(|i| {
                let app = std::sync::Arc::clone(&app);
                tokio::spawn(async move {
                    let me = i % n + 1;
                    let fails = failing.filter(|_| i % 4 == 1);
                    let name =
                        fails.map_or_else(|| format!("Раунд {round} номер {i}"), str::to_owned);
                    let relative = if i % 4 == 3 { 999 } else { (i + 7) % n + 1 };
                    let body = json!({"name": name, "relatives": [relative]});
                    let (status, answer) = app.patch(import, me, &body).await;
                    if i % 4 == 3 {
                        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
                        assert_eq!(answer["error"]["code"], "unknown_relative");
                    } else if fails.is_some() {
                        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
                    } else {
                        assert_eq!(status, StatusCode::OK, "{answer}");
                        assert_eq!(answer["data"]["name"], name.as_str());
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let listing = app.citizens(import).await;
        crate::helpers::assert_relatives_symmetric(&listing, "after a round");
        assert!(
            listing.iter().all(|c| {
                let relatives = c["relatives"].as_array().unwrap();
                relatives.len() <= 2
                    && !relatives.contains(&json!(999))
                    && failing.is_none_or(|name| c["name"] != name)
            }),
            "refused and failed PATCHes wrote nothing: {listing:?}"
        );
        let metrics = app.metrics().await;
        let value = |name: String| -> f64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&name)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in {metrics}"))
        };
        let (sum, count) = (
            value(format!("{metric}_sum")),
            value(format!("{metric}_count")),
        );
        assert!(count >= 1.0);
        if sum > count {
            return; // some commit carried more than one PATCH
        }
    }
    panic!("five rounds of 64 concurrent PATCHes never shared a commit");
}

/// One case per rule: description, body, field named, error code.
fn invalid_patch_cases() -> Vec<(&'static str, Vec<u8>, &'static str, &'static str)> {
    let j = |v: Value| serde_json::to_vec(&v).unwrap();
    let future = wire_date(today() + time::Duration::days(2));
    vec![
        ("empty object", j(json!({})), "", "empty_patch"),
        ("not JSON", b"{\"name\": ".to_vec(), "name", "invalid_json"),
        ("empty body", Vec::new(), "", "empty_body"),
        ("array body", j(json!([{"name": "X"}])), "", "malformed"),
        (
            "array of field values",
            j(json!(["Москва"])),
            "",
            "malformed",
        ),
        (
            "citizen_id",
            j(json!({"citizen_id": 9})),
            "citizen_id",
            "immutable_field",
        ),
        (
            "unknown field",
            j(json!({"name": "X", "age": 3})),
            "age",
            "malformed",
        ),
        (
            "duplicate key",
            br#"{"name": "X", "name": "Y"}"#.to_vec(),
            "name",
            "malformed",
        ),
        ("null name", j(json!({"name": null})), "name", "malformed"),
        (
            "null relatives",
            j(json!({"relatives": null})),
            "relatives",
            "malformed",
        ),
        (
            "empty name",
            j(json!({"name": ""})),
            "name",
            "invalid_length",
        ),
        (
            "name too long",
            j(json!({"name": "x".repeat(257)})),
            "name",
            "invalid_length",
        ),
        (
            "town without letter or digit",
            j(json!({"town": "--"})),
            "town",
            "no_letter_or_digit",
        ),
        (
            "street empty",
            j(json!({"street": ""})),
            "street",
            "invalid_length",
        ),
        (
            "building of spaces",
            j(json!({"building": "  "})),
            "building",
            "no_letter_or_digit",
        ),
        (
            "apartment negative",
            j(json!({"apartment": -1})),
            "apartment",
            "malformed",
        ),
        (
            "apartment as string",
            j(json!({"apartment": "1"})),
            "apartment",
            "malformed",
        ),
        (
            "apartment 2^63",
            j(json!({"apartment": 1u64 << 63})),
            "apartment",
            "out_of_range",
        ),
        (
            "bad calendar date",
            j(json!({"birth_date": "30.02.2000"})),
            "birth_date",
            "not_a_calendar_date",
        ),
        (
            "bad date format",
            j(json!({"birth_date": "1.1.2000"})),
            "birth_date",
            "invalid_date_format",
        ),
        (
            "future date",
            j(json!({"birth_date": future})),
            "birth_date",
            "date_in_future",
        ),
        (
            "gender",
            j(json!({"gender": "f"})),
            "gender",
            "invalid_gender",
        ),
        (
            "relatives duplicate",
            j(json!({"relatives": [1, 1]})),
            "relatives",
            "duplicate_relative",
        ),
        (
            "relative as string",
            j(json!({"relatives": ["1"]})),
            "relatives[0]",
            "malformed",
        ),
        (
            "unknown relative",
            j(json!({"relatives": [1, 99]})),
            "relatives",
            "unknown_relative",
        ),
        (
            "valid name with unknown relative",
            j(json!({"name": "Y", "relatives": [2, 99]})),
            "relatives",
            "unknown_relative",
        ),
    ]
}

async fn invalid_patches_are_rejected_naming_field_and_citizen_and_change_nothing(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let import = app.import(spec_example()).await;
    for (why, body, field, code) in invalid_patch_cases() {
        let (status, response) = app.patch_raw(import, 3, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{why}: {response}");
        let error = &response["error"];
        assert_eq!(error["code"], code, "{why}: {response}");
        assert_eq!(error["field"], field, "{why}: {response}");
        assert_eq!(error["citizen_id"], 3, "{why}: {response}");
        assert!(
            error["message"].as_str().unwrap().contains("citizen 3"),
            "{why}: {response}"
        );
    }
    assert_eq!(
        app.citizens(import).await,
        spec_example(),
        "nothing changed"
    );
}

/// A model of the relation: unordered pairs (a citizen related to itself is (a, a)).
pub(crate) fn model_lists(n: u64, pairs: &BTreeSet<(u64, u64)>) -> BTreeMap<u64, Vec<u64>> {
    let mut lists: BTreeMap<u64, Vec<u64>> = (0..n).map(|id| (id, Vec::new())).collect();
    for &(a, b) in pairs {
        lists.get_mut(&a).unwrap().push(b);
        if a != b {
            lists.get_mut(&b).unwrap().push(a);
        }
    }
    for list in lists.values_mut() {
        list.sort_unstable();
    }
    lists
}

async fn random_patch_sequences_match_a_model_of_the_relation(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let n = 8u64;
    for seed in 1..=3 {
        let mut rng = Rng::new(seed);
        let import = app
            .import((0..n).map(|id| citizen(id, &[])).collect())
            .await;
        let mut pairs = BTreeSet::new();
        for step in 0..60 {
            let me = rng.below(n);
            let new: BTreeSet<u64> = (0..rng.below(4)).map(|_| rng.below(n)).collect();
            let (status, body) = app.patch(import, me, &json!({ "relatives": new })).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            pairs.retain(|&(a, b)| a != me && b != me);
            pairs.extend(new.iter().map(|&r| (me.min(r), me.max(r))));
            let expected = model_lists(n, &pairs);
            assert_eq!(
                body["data"]["relatives"],
                json!(expected[&me]),
                "seed {seed}, step {step}: the answer"
            );
            assert_eq!(
                relatives(&app, import).await,
                expected,
                "seed {seed}, step {step}: citizen {me} takes {new:?}"
            );
        }
    }
}

async fn concurrent_patches_on_overlapping_citizens_keep_relatives_symmetric(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::spawn(backend).await);
    let n = 12u64;
    let import = app
        .import((0..n).map(|id| citizen(id, &[])).collect())
        .await;
    let mut rng = Rng::new(7);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let me = rng.below(n);
        let new: BTreeSet<u64> = (0..rng.below(5)).map(|_| rng.below(n)).collect();
        let app = std::sync::Arc::clone(&app);
        tasks.push(tokio::spawn(async move {
            let (status, body) = app
                .patch_applied(import, me, &json!({ "relatives": new }))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let graph = relatives(&app, import).await;
    for (a, list) in &graph {
        for b in list {
            assert!(
                graph[b].contains(a),
                "{a} lists {b} but {b} does not list {a}: {graph:?}"
            );
        }
    }
}

/// Rounds of concurrent PATCHes of one import that move citizens between
/// towns, change their birth dates and relatives, several on the same
/// citizens: a store that commits them together must apply each over the
/// ones before it. After each round, read with the cache off (answers from
/// the store's summary), the import answers exactly as a fresh import of
/// the citizens it lists now.
async fn concurrent_moves_leave_the_summary_of_a_fresh_import(backend: Backend) {
    const TOWNS: [&str; 3] = ["Керчь", "Москва", "Тверь"];
    let app = std::sync::Arc::new(
        TestApp::spawn_with(backend, |c| c.cache_bytes = gifts::config::ByteSize(0)).await,
    );
    let n = 16u64;
    let born = |rng: &mut Rng| {
        format!(
            "{:02}.{:02}.{}",
            rng.below(28) + 1,
            rng.below(12) + 1,
            1950 + rng.below(50)
        )
    };
    let mut rng = Rng::new(31);
    let people: Vec<Value> = (1..=n)
        .map(|id| {
            let fields = json!({"town": TOWNS[(id % 3) as usize], "birth_date": born(&mut rng)});
            citizen_with(id, &[], fields)
        })
        .collect();
    let import = app.import(people).await;
    for round in 0..4 {
        let mut tasks = Vec::new();
        for _ in 0..48 {
            let me = rng.below(n) + 1;
            let town = TOWNS[usize::try_from(rng.below(3)).unwrap()];
            let relatives: BTreeSet<u64> = (0..rng.below(4)).map(|_| rng.below(n) + 1).collect();
            let body = match rng.below(4) {
                0 => json!({ "town": town }),
                1 => json!({ "birth_date": born(&mut rng) }),
                2 => json!({ "relatives": relatives }),
                _ => json!({ "town": town, "birth_date": born(&mut rng), "relatives": relatives }),
            };
            let app = std::sync::Arc::clone(&app);
            tasks.push(tokio::spawn(async move {
                let (status, answer) = app.patch(import, me, &body).await;
                assert_eq!(status, StatusCode::OK, "{body} → {answer}");
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let listing = app.citizens(import).await;
        crate::helpers::assert_relatives_symmetric(&listing, "after a round");
        let fresh = app.import(listing).await;
        assert_eq!(
            app.birthdays(import).await,
            app.birthdays(fresh).await,
            "round {round}: birthdays from the PATCHed summary"
        );
        assert_eq!(
            app.percentiles(import).await,
            app.percentiles(fresh).await,
            "round {round}: percentiles from the PATCHed summary"
        );
    }
}

backend_tests!(
    concurrent_moves_leave_the_summary_of_a_fresh_import,
    spec_example_marriage_and_divorce_are_mirrored,
    every_field_can_be_changed_and_the_whole_citizen_comes_back,
    replacing_relatives_drops_and_adds_on_both_sides,
    a_citizen_can_become_and_stop_being_its_own_relative,
    the_largest_ids_are_mirrored_like_small_ones,
    unknown_import_or_citizen_is_404,
    invalid_patches_are_rejected_naming_field_and_citizen_and_change_nothing,
    random_patch_sequences_match_a_model_of_the_relation,
    concurrent_patches_on_overlapping_citizens_keep_relatives_symmetric,
    a_relative_missing_from_the_store_is_refused_not_skipped,
    refusals_come_before_a_broken_town_summary,
);
