//! The import lifecycle: list imports a page at a time, delete one for real.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, citizen, generate_import, spec_example};

async fn page(app: &TestApp, query: &str) -> Value {
    let (status, body) = app.get(&format!("/imports{query}")).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body["data"].clone()
}

async fn imports_are_listed_newest_first_a_page_at_a_time(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    assert_eq!(
        page(&app, "").await,
        json!({"imports": [], "next_cursor": null})
    );
    for n in 0..5u64 {
        app.import((0..n).map(|id| citizen(id, &[])).collect())
            .await;
    }
    app.patch(5, 0, &json!({"name": "Новое"})).await;

    let first = page(&app, "?limit=2").await;
    let items = first["imports"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["import_id"], 5);
    assert_eq!(items[0]["citizens"], 4);
    assert_eq!(items[0]["version"], 2, "one PATCH");
    assert_eq!(items[1]["import_id"], 4);
    assert_eq!(items[1]["version"], 1);
    let created = items[0]["created_at"].as_str().unwrap();
    let year = crate::helpers::today().year().to_string();
    assert!(
        created.starts_with(&year) && created.ends_with('Z'),
        "{created}"
    );
    let cursor = first["next_cursor"].as_str().expect("a next page");

    let second = page(&app, &format!("?limit=2&cursor={cursor}")).await;
    let ids: Vec<&Value> = second["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["import_id"])
        .collect();
    assert_eq!(ids, [&json!(3), &json!(2)]);
    let cursor = second["next_cursor"].as_str().unwrap();
    let last = page(&app, &format!("?limit=2&cursor={cursor}")).await;
    assert_eq!(last["imports"].as_array().unwrap().len(), 1);
    assert_eq!(last["next_cursor"], Value::Null, "the last page");
    assert_eq!(
        page(&app, "").await["imports"].as_array().unwrap().len(),
        5,
        "default limit 100"
    );
}

async fn bad_list_parameters_are_400s_naming_the_parameter(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (query, field) in [
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?limit=x", "limit"),
        ("?limit=-1", "limit"),
        ("?cursor=nonsense", "cursor"),
        ("?cursor=YmVmb3JlOjA", "cursor"),
    ] {
        let (status, body) = app.get(&format!("/imports{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "{query}");
        assert_eq!(body["error"]["field"], field, "{query}");
    }
}

/// POST /imports with `query` pairs (URL-encoded here), gzip-compressed when
/// `gzip`, with an `Idempotency-Key` when given.
async fn upload(
    app: &TestApp,
    query: &[(&str, &str)],
    body: &[u8],
    gzip: bool,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let url = reqwest::Url::parse_with_params(&app.url("/imports"), query).unwrap();
    let mut request = app.client.post(url);
    if gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, body).unwrap();
        request = request
            .header("content-encoding", "gzip")
            .body(encoder.finish().unwrap());
    } else {
        request = request.body(body.to_vec());
    }
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    (status, body)
}

/// `(import_id, name, digest)` of each import listed at `query`, in order.
async fn names_and_digests(app: &TestApp, query: &str) -> Vec<(i64, Value, Value)> {
    page(app, query).await["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["import_id"].as_i64().unwrap(),
                i["name"].clone(),
                i["digest"].clone(),
            )
        })
        .collect()
}

async fn imports_are_listed_with_their_name_and_the_digest_of_their_body(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let a = serde_json::to_vec(&json!({ "citizens": spec_example() })).unwrap();
    let b = serde_json::to_vec(&json!({ "citizens": [citizen(9, &[])] })).unwrap();
    let digest = |body: &[u8]| json!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body)));
    let (da, db) = (digest(&a), digest(&b));
    let named = "Выгрузка за декабрь & 100% «итог» ✓.json";
    let longest: String = "я".repeat(256);
    let id = |(status, body): (StatusCode, Value)| {
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["data"]["import_id"].as_i64().unwrap()
    };
    let first = id(upload(&app, &[("name", named)], &a, false, None).await);
    // The same file again, compressed and unnamed: the digest is of what it says.
    let again = id(upload(&app, &[], &a, true, None).await);
    let other = id(upload(&app, &[("name", &longest)], &b, false, None).await);
    assert!(first < again && again < other, "{first} {again} {other}");
    assert_eq!(
        names_and_digests(&app, "").await,
        [
            (other, json!(longest), db.clone()),
            (again, Value::Null, da.clone()),
            (first, json!(named), da.clone()),
        ]
    );

    // Found by digest (either case), newest first, a page at a time.
    let hex = da.as_str().unwrap();
    for query in [
        format!("?digest={hex}"),
        format!("?digest={}", hex.to_uppercase()),
    ] {
        assert_eq!(
            names_and_digests(&app, &query).await,
            [
                (again, Value::Null, da.clone()),
                (first, json!(named), da.clone())
            ],
            "{query}"
        );
    }
    let one = page(&app, &format!("?digest={hex}&limit=1")).await;
    assert_eq!(one["imports"][0]["import_id"], again);
    let cursor = one["next_cursor"].as_str().expect("a next page");
    let rest = page(&app, &format!("?digest={hex}&limit=1&cursor={cursor}")).await;
    assert_eq!(rest["imports"][0]["import_id"], first);
    assert_eq!(rest["imports"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next_cursor"], Value::Null);
    let unknown = "0".repeat(64);
    assert_eq!(
        page(&app, &format!("?digest={unknown}")).await,
        json!({"imports": [], "next_cursor": null})
    );

    // A deleted import is not found by its digest.
    let (status, _) = app
        .send(Method::DELETE, &format!("/imports/{again}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        names_and_digests(&app, &format!("?digest={hex}")).await,
        [(first, json!(named), da.clone())]
    );

    // A retry with the key gets the import stored with it, name and all.
    let keyed = id(upload(&app, &[("name", "first try")], &b, false, Some("k-1")).await);
    let retried = id(upload(&app, &[("name", "second try")], &b, false, Some("k-1")).await);
    assert_eq!(keyed, retried);
    assert_eq!(
        names_and_digests(&app, &format!("?digest={}", db.as_str().unwrap())).await,
        [
            (keyed, json!("first try"), db.clone()),
            (other, json!(longest), db.clone())
        ]
    );
}

async fn one_import_is_shown_as_the_list_shows_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = serde_json::to_vec(&json!({ "citizens": spec_example() })).unwrap();
    let mut ids = Vec::new();
    for name in ["первая", "вторая", "третья"] {
        let (status, answer) = upload(&app, &[("name", name)], &body, false, None).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        ids.push(answer["data"]["import_id"].as_i64().unwrap());
    }
    app.patch(ids[1], 3, &json!({"name": "Другая"})).await;
    let listed = page(&app, "").await;
    for (at, &id) in ids.iter().rev().enumerate() {
        let (status, shown) = app.get(&format!("/imports/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{shown}");
        assert_eq!(shown["data"], listed["imports"][at], "import {id}");
    }
    let (_, second) = app.get(&format!("/imports/{}", ids[1])).await;
    assert_eq!(
        (&second["data"]["version"], &second["data"]["citizens"]),
        (&json!(2), &json!(3))
    );
    app.send(Method::DELETE, &format!("/imports/{}", ids[1]), None)
        .await;
    for path in [
        format!("/imports/{}", ids[1]),
        "/imports/99".to_owned(),
        "/imports/9223372036854775807".to_owned(),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
}

async fn a_bad_import_name_or_digest_is_a_400_naming_it_and_stores_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = serde_json::to_vec(&json!({ "citizens": spec_example() })).unwrap();
    let too_long = "я".repeat(257);
    for name in [
        "",
        too_long.as_str(),
        "two\nlines",
        "nul\u{0}",
        "tab\tname",
        "del\u{7f}",
    ] {
        let (status, answer) = upload(&app, &[("name", name)], &body, false, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_query", "{name:?}");
        assert_eq!(answer["error"]["field"], "name", "{name:?}");
    }
    assert_eq!(
        page(&app, "").await,
        json!({"imports": [], "next_cursor": null}),
        "nothing stored"
    );
    let bad_hex = format!("{}g", "0".repeat(63));
    let short = "0".repeat(63);
    let long = "0".repeat(65);
    for digest in ["", "xyz", short.as_str(), long.as_str(), bad_hex.as_str()] {
        let (status, answer) = app.get(&format!("/imports?digest={digest}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{digest:?}: {answer}");
        assert_eq!(answer["error"]["field"], "digest", "{digest:?}");
    }
}

async fn a_deleted_import_is_gone_everywhere_and_its_id_is_not_reused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let kept = app.import(spec_example()).await;
    let body = json!({ "citizens": spec_example() });
    let keyed = |key: &'static str| {
        app.client
            .post(app.url("/imports"))
            .header("idempotency-key", key)
            .body(body.to_string())
            .send()
    };
    let response = keyed("k").await.unwrap();
    let gone: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    let gone = gone["data"]["import_id"].as_i64().unwrap();
    // Warm the cache, so deleting must also forget it.
    app.citizens(gone).await;
    app.birthdays(gone).await;

    let (status, body) = app
        .send(Method::DELETE, &format!("/imports/{gone}"), None)
        .await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    for path in [
        "citizens",
        "citizens/birthdays",
        "towns/stat/percentile/age",
    ] {
        let (status, body) = app.get(&format!("/imports/{gone}/{path}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let (status, _) = app.patch(gone, 1, &json!({"name": "x"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .send(Method::DELETE, &format!("/imports/{gone}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "deleting twice");
    let ids: Vec<i64> = page(&app, "").await["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["import_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [kept]);
    assert_eq!(
        app.citizens(kept).await,
        spec_example(),
        "the other import is untouched"
    );
    // The key went with the import: using it again stores a new import.
    let again: Value =
        serde_json::from_slice(&keyed("k").await.unwrap().bytes().await.unwrap()).unwrap();
    assert_eq!(again["data"]["import_id"], gone + 1, "ids are never reused");
}

async fn patches_racing_a_delete_complete_before_it_or_get_404(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::spawn(backend).await);
    let import = app.import(generate_import(200, 50, 3)).await;
    let patches: Vec<_> = (0..40u64)
        .map(|k| {
            let app = std::sync::Arc::clone(&app);
            tokio::spawn(async move {
                app.patch_applied(import, k % 200, &json!({"name": format!("P{k}")}))
                    .await
                    .0
            })
        })
        .collect();
    let (status, _) = app
        .send(Method::DELETE, &format!("/imports/{import}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for patch in patches {
        let status = patch.await.unwrap();
        assert!(
            status == StatusCode::OK || status == StatusCode::NOT_FOUND,
            "{status}"
        );
    }
    let (status, _) = app.get(&format!("/imports/{import}/citizens")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

backend_tests!(
    imports_are_listed_newest_first_a_page_at_a_time,
    bad_list_parameters_are_400s_naming_the_parameter,
    imports_are_listed_with_their_name_and_the_digest_of_their_body,
    one_import_is_shown_as_the_list_shows_it,
    a_bad_import_name_or_digest_is_a_400_naming_it_and_stores_nothing,
    a_deleted_import_is_gone_everywhere_and_its_id_is_not_reused,
    patches_racing_a_delete_complete_before_it_or_get_404,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reuses_the_space_of_deleted_imports() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let gifts::config::StorageUrl::Sqlite(path) = app.store.url().clone() else {
        unreachable!()
    };
    let body = generate_import(5_000, 500, 8);
    // Pages the database uses (its WAL included), as SQLite counts them.
    let pages = || {
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        conn.query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    // Each import is written as rows before it is deleted (a PATCH writes
    // a staged import's rows first), so every round uses the same pages
    // whatever the writer had done by itself when the DELETE came.
    let store_and_delete = || async {
        let import = app.import(body.clone()).await;
        let (status, _) = app
            .send(
                Method::PATCH,
                &format!("/imports/{import}/citizens/0"),
                Some(br#"{"name": "Rows"}"#.to_vec()),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = app
            .send(Method::DELETE, &format!("/imports/{import}"), None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    };
    store_and_delete().await;
    let after_one = pages();
    for _ in 0..5 {
        store_and_delete().await;
    }
    let after_six = pages();
    assert!(
        after_six <= after_one + after_one / 10,
        "six imports stored and deleted use {after_six} pages, one used {after_one}: freed pages are reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarantool_deletes_the_tuples_of_a_deleted_import() {
    if !crate::helpers::tarantool_available("delete_frees_tuples") {
        return;
    }
    let app = TestApp::spawn_with(Backend::Tarantool, |c| c.tarantool_import_chunk = 1_000).await;
    let import = app.import(generate_import(2_500, 100, 4)).await;
    let gifts = crate::tarantool::client_as(&app.store, "gifts", "test-password");
    let wait = std::time::Duration::from_secs(5);
    let none: [u8; 0] = [];
    let (_, _, tuples): (u64, u64, u64) = gifts.call("gifts_totals", &none, wait).await.unwrap();
    assert_eq!(tuples, 2_500);
    let (status, _) = app
        .send(Method::DELETE, &format!("/imports/{import}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (imports, citizens, tuples): (u64, u64, u64) =
        gifts.call("gifts_totals", &none, wait).await.unwrap();
    assert_eq!((imports, citizens, tuples), (0, 0, 0));
}
