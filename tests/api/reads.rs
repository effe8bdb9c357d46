//! The GET endpoints: ordering, known answers for birthdays and percentiles,
//! and the status codes for unknown paths, wrong methods and big bodies.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{
    Backend, TestApp, citizen, citizen_with, expected_listing, spec_example, today,
};

async fn citizens_come_ordered_by_id_with_relatives_ascending(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let sent = vec![
        citizen(30, &[2, 100, 4]),
        citizen(4, &[30]),
        citizen(100, &[30, 2]),
        citizen(2, &[100, 30]),
    ];
    let import = app.import(sent.clone()).await;
    let listing = app.citizens(import).await;
    let ids: Vec<u64> = listing
        .iter()
        .map(|c| c["citizen_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [2, 4, 30, 100]);
    assert_eq!(listing[2]["relatives"], json!([2, 4, 100]));
    assert_eq!(listing, expected_listing(&sent));
}

async fn birthdays_count_one_present_per_relative_per_month(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let born = |id, relatives: &[u64], date: &str| {
        citizen_with(id, relatives, json!({"birth_date": date}))
    };
    // 1 is related to 2, 3 and 4; 2 and 3 share April; 5 is its own relative.
    let import = app
        .import(vec![
            born(4, &[1], "31.12.1990"),
            born(1, &[2, 3, 4], "15.06.1980"),
            born(2, &[1], "01.04.2001"),
            born(3, &[1], "30.04.2002"),
            born(5, &[5], "10.04.1970"),
            born(6, &[], "10.04.1970"),
        ])
        .await;
    let expected = json!({
        "1": [], "2": [], "3": [],
        "4": [{"citizen_id": 1, "presents": 2}, {"citizen_id": 5, "presents": 1}],
        "5": [],
        "6": [{"citizen_id": 2, "presents": 1}, {"citizen_id": 3, "presents": 1}, {"citizen_id": 4, "presents": 1}],
        "7": [], "8": [], "9": [], "10": [], "11": [],
        "12": [{"citizen_id": 1, "presents": 1}],
    });
    let data = app.birthdays(import).await;
    assert_eq!(data, expected);
    let keys: Vec<&String> = data.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 12);
}

async fn birthdays_of_the_spec_example_follow_patches(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let import = app.import(spec_example()).await;
    app.patch(import, 3, &json!({"relatives": [1]})).await;
    let data = app.birthdays(import).await;
    assert_eq!(data["4"], json!([{"citizen_id": 1, "presents": 1}]));
    assert_eq!(data["11"], json!([{"citizen_id": 1, "presents": 1}]));
    assert_eq!(
        data["12"],
        json!([{"citizen_id": 2, "presents": 1}, {"citizen_id": 3, "presents": 1}])
    );
}

async fn cached_answers_follow_every_write(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let import = app.import(spec_example()).await;
    // Warm every view twice, so the second answer comes from the cache.
    for _ in 0..2 {
        assert_eq!(app.citizens(import).await, spec_example());
        assert_eq!(app.birthdays(import).await["11"], json!([]));
        assert_eq!(app.percentiles(import).await[0]["town"], "Керчь");
    }
    let (status, _) = app
        .patch(import, 3, &json!({"relatives": [1], "town": "Москва"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..2 {
        assert_eq!(app.citizens(import).await[2]["town"], "Москва");
        assert_eq!(
            app.birthdays(import).await["11"],
            json!([{"citizen_id": 1, "presents": 1}])
        );
        let towns = app.percentiles(import).await;
        assert_eq!(towns.as_array().unwrap().len(), 1, "{towns}");
    }
}

async fn with_the_cache_disabled_every_answer_comes_from_storage(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.cache_bytes = gifts::config::ByteSize(0)).await;
    let import = app.import(spec_example()).await;
    assert_eq!(app.citizens(import).await, spec_example());
    app.patch(import, 3, &json!({"relatives": [1]})).await;
    assert_eq!(app.citizens(import).await[0]["relatives"], json!([2, 3]));
    assert_eq!(
        app.birthdays(import).await["11"],
        json!([{"citizen_id": 1, "presents": 1}])
    );
    assert_eq!(app.percentiles(import).await.as_array().unwrap().len(), 2);
}

/// A citizen of `town` who is exactly `age` years old today (born 1 January).
fn aged(id: u64, town: &str, age: i32) -> Value {
    let year = today().year() - age;
    citizen_with(
        id,
        &[],
        json!({"town": town, "birth_date": format!("01.01.{year:04}")}),
    )
}

async fn percentiles_match_numpy_and_towns_come_ordered(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let import = app
        .import(vec![
            aged(1, "Москва", 40),
            aged(2, "Москва", 10),
            aged(3, "Москва", 30),
            aged(4, "Москва", 20),
            aged(5, "Abc", 5),
            aged(6, "Zed", 33),
            aged(7, "Zed", 34),
            aged(8, "Керчь", 0),
        ])
        .await;
    // numpy.percentile([10, 20, 30, 40], [50, 75, 99]) = [25, 32.5, 39.7];
    // ([33, 34], ...) = [33.5, 33.75, 33.99].
    assert_eq!(
        app.percentiles(import).await,
        json!([
            {"town": "Abc", "p50": 5.0, "p75": 5.0, "p99": 5.0},
            {"town": "Zed", "p50": 33.5, "p75": 33.75, "p99": 33.99},
            {"town": "Керчь", "p50": 0.0, "p75": 0.0, "p99": 0.0},
            {"town": "Москва", "p50": 25.0, "p75": 32.5, "p99": 39.7},
        ])
    );
}

async fn percentiles_round_to_two_decimals(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ages = [1, 2, 3, 5, 8, 13, 21];
    let import = app
        .import(
            ages.iter()
                .enumerate()
                .map(|(i, &a)| aged(i as u64, "T", a))
                .collect(),
        )
        .await;
    // numpy.percentile([1, 2, 3, 5, 8, 13, 21], 99) = 20.52 (index 5.94).
    let data = app.percentiles(import).await;
    assert_eq!(
        data,
        json!([{"town": "T", "p50": 5.0, "p75": 10.5, "p99": 20.52}])
    );
}

async fn unknown_imports_and_paths_are_404_with_a_json_error(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let import = app.import(spec_example()).await;
    let missing = import + 1;
    for path in [
        format!("/imports/{missing}/citizens"),
        format!("/imports/{missing}/citizens/birthdays"),
        format!("/imports/{missing}/towns/stat/percentile/age"),
        "/imports/abc/citizens".into(),
        "/imports/0/citizens".into(),
        "/imports/-1/citizens".into(),
        "/imports/1.0/citizens".into(),
        format!("/imports/{import}/citizens/"),
        "/imports/".into(),
        format!("/imports/{import}/towns/stat/percentile"),
        "/nothing".into(),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
}

async fn wrong_methods_are_405_with_a_json_error(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let import = app.import(spec_example()).await;
    for (method, path) in [
        (Method::PUT, "/imports".to_string()),
        (Method::DELETE, "/imports".into()),
        (Method::POST, format!("/imports/{import}/citizens")),
        (Method::PUT, format!("/imports/{import}/citizens/1")),
        (Method::GET, format!("/imports/{import}/citizens/1")),
        (
            Method::POST,
            format!("/imports/{import}/citizens/birthdays"),
        ),
        (
            Method::DELETE,
            format!("/imports/{import}/towns/stat/percentile/age"),
        ),
        (Method::POST, "/health".into()),
    ] {
        let (status, body) = app.send(method.clone(), &path, None).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(
            body["error"]["code"], "method_not_allowed",
            "{method} {path}"
        );
    }
}

async fn bodies_over_the_limit_are_413_and_store_nothing(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.max_body_bytes = gifts::config::ByteSize(4096);
    })
    .await;
    let big: Vec<Value> = (0..40).map(|id| citizen(id, &[])).collect();
    let (status, body) = app.post_import(&json!({ "citizens": big })).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    let import = app.import(spec_example()).await;
    assert_eq!(import, 1, "the rejected import was not stored");
    let (status, _) = app
        .patch(import, 1, &json!({ "name": "x".repeat(5000) }))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.citizens(import).await, spec_example());
}

/// A PATCH body has the body limit an import has (a citizen may have as
/// many relatives as an import can carry, and a PATCH lists them all):
/// announced, streamed without a length, or gzip-compressed, a bigger one
/// is a 413 that says so.
async fn patch_bodies_over_the_body_limit_are_413_and_change_nothing(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.max_body_bytes = gifts::config::ByteSize(1 << 20);
    })
    .await;
    let import = app.import(spec_example()).await;
    let path = app.url(&format!("/imports/{import}/citizens/1"));
    let big = json!({ "name": "x".repeat((1 << 20) + 1) }).to_string();
    let gzipped = {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(big.as_bytes()).unwrap();
        encoder.finish().unwrap()
    };
    assert!(gzipped.len() < 64 * 1024);
    for (how, request) in [
        ("announced", app.client.patch(&path).body(big.clone())),
        (
            "gzip",
            app.client
                .patch(&path)
                .header("content-encoding", "gzip")
                .body(gzipped),
        ),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "{how}");
        let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "payload_too_large", "{how}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("the request body is larger than the limit of 1MiB"),
            "{how}: {body}"
        );
    }
    // Streamed in chunks, with no length announced: cut off after 1 MiB.
    let chunked = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
            .await
            .unwrap();
        let head = format!(
            "PATCH /imports/{import}/citizens/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        for chunk in big.as_bytes().chunks(64 * 1024) {
            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
            framed.extend_from_slice(chunk);
            framed.extend_from_slice(b"\r\n");
            // The server may answer and close before taking everything.
            if stream.write_all(&framed).await.is_err() {
                break;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n").await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut answer),
        )
        .await
        .expect("an answer");
        String::from_utf8_lossy(&answer).into_owned()
    };
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    assert!(
        chunked.contains("the request body is larger than the limit of 1MiB"),
        "{chunked}"
    );
    // Just under the limit is parsed (and refused for its content).
    let (status, body) = app
        .patch(import, 1, &json!({ "name": "x".repeat((1 << 20) - 100) }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(app.citizens(import).await, spec_example());
}

async fn health_answers_when_the_store_does(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, body) = app.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"data": {"status": "ok"}}));
}

/// `GET /imports/{import}/citizens{query}`'s `data` and `next_cursor`.
async fn citizens_page(app: &TestApp, import: i64, query: &str) -> (Vec<Value>, Value) {
    let (status, body) = app.get(&format!("/imports/{import}/citizens{query}")).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["data", "next_cursor"], "{query}");
    (
        body["data"].as_array().unwrap().clone(),
        body["next_cursor"].clone(),
    )
}

async fn citizens_come_a_page_at_a_time_as_the_whole_answer_has_them(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut sent = crate::helpers::generate_import(2_500, 300, 21);
    // The ids at both ends of the range, each its own relative.
    sent.push(citizen(
        9_223_372_036_854_775_807,
        &[9_223_372_036_854_775_807],
    ));
    let import = app.import(sent).await;
    let whole = app.citizens(import).await;
    assert_eq!(whole.len(), 2_501);
    let (status, plain) = app.get(&format!("/imports/{import}/citizens")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        plain.get("next_cursor").is_none(),
        "the whole answer is the contract's"
    );

    let mut walked = Vec::new();
    let (mut page, mut cursor) = citizens_page(&app, import, "?limit=700").await;
    loop {
        assert!(!page.is_empty() && page.len() <= 700, "{}", page.len());
        walked.extend(page);
        let Some(next) = cursor.as_str() else { break };
        (page, cursor) = citizens_page(&app, import, &format!("?limit=700&cursor={next}")).await;
    }
    assert_eq!(walked, whole, "the pages, joined, are the whole answer");

    // A cursor alone: pages of 1,000; one page of all when the limit allows.
    let (first, cursor) = citizens_page(&app, import, "?limit=1").await;
    assert_eq!(first, whole[..1]);
    let (rest, cursor) = citizens_page(
        &app,
        import,
        &format!("?cursor={}", cursor.as_str().unwrap()),
    )
    .await;
    assert_eq!(rest, whole[1..1_001]);
    assert!(cursor.is_string());
    let (all, cursor) = citizens_page(&app, import, "?limit=10000").await;
    assert_eq!((all.len(), cursor), (2_501, Value::Null));

    // A PATCH between two pages shows in the later one, and nobody repeats.
    let (first, cursor) = citizens_page(&app, import, "?limit=10").await;
    let later = whole[15]["citizen_id"].as_u64().unwrap();
    let earlier = whole[5]["citizen_id"].as_u64().unwrap();
    app.patch(import, later, &json!({"name": "Позже"})).await;
    app.patch(import, earlier, &json!({"name": "Раньше"})).await;
    let (second, _) = citizens_page(
        &app,
        import,
        &format!("?limit=10&cursor={}", cursor.as_str().unwrap()),
    )
    .await;
    assert_eq!(first[5]["name"], whole[5]["name"]);
    assert_eq!(second[5]["name"], "Позже");
    assert_eq!(second[0]["citizen_id"], whole[10]["citizen_id"]);
}

async fn pages_of_an_empty_or_unknown_import_and_bad_page_parameters(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let empty = app.import(vec![]).await;
    assert_eq!(
        citizens_page(&app, empty, "?limit=5").await,
        (vec![], Value::Null)
    );
    let (status, body) = app.get("/imports/99/citizens?limit=5").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let import = app.import(spec_example()).await;
    for (query, field) in [
        ("?limit=0", "limit"),
        ("?limit=10001", "limit"),
        ("?limit=x", "limit"),
        ("?limit=%2B5", "limit"),
        ("?cursor=nonsense", "cursor"),
        // An import list's cursor is not a citizens cursor.
        ("?cursor=YmVmb3JlOjE", "cursor"),
        ("?limit=5&cursor=", "cursor"),
    ] {
        let (status, body) = app.get(&format!("/imports/{import}/citizens{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}");
    }
}

/// Every citizen a listing query (`q=…`, `sort=…&month=…`; URL-encoded by
/// the caller) answers, walked `limit` at a time: the citizens, and how many
/// requests it took.
async fn walk_all(app: &TestApp, import: i64, query: &str, limit: usize) -> (Vec<Value>, usize) {
    let mut found = Vec::new();
    let mut requests = 0;
    let mut cursor = Value::Null;
    loop {
        let query = match cursor.as_str() {
            Some(next) => format!("?{query}&limit={limit}&cursor={next}"),
            None => format!("?{query}&limit={limit}"),
        };
        let (page, next) = citizens_page(app, import, &query).await;
        assert!(page.len() <= limit, "{query}: {}", page.len());
        requests += 1;
        found.extend(page);
        if next.is_null() {
            return (found, requests);
        }
        cursor = next;
    }
}

/// Every match of `q` (URL-encoded by the caller), as [`walk_all`].
async fn search_all(app: &TestApp, import: i64, q: &str, limit: usize) -> (Vec<Value>, usize) {
    walk_all(app, import, &format!("q={q}"), limit).await
}

async fn a_search_finds_citizens_by_id_or_by_name_town_or_street_in_any_case(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut sent = crate::helpers::generate_import(2_000, 200, 5);
    sent.push(citizen_with(
        9_223_372_036_854_775_807,
        &[],
        json!({"name": "Ёлкина Σοφία", "town": "Ёлкино", "street": "Улица 100%"}),
    ));
    let import = app.import(sent).await;
    let whole = app.citizens(import).await;
    // The rule, written out again: a whole number is an id; other text is
    // looked for in the name, town and street, each lowercased.
    let found_by = |text: &str| -> Vec<Value> {
        let wanted = text.trim().to_lowercase();
        whole
            .iter()
            .filter(|c| {
                ["name", "town", "street"]
                    .iter()
                    .any(|field| c[field].as_str().unwrap().to_lowercase().contains(&wanted))
            })
            .cloned()
            .collect()
    };
    for (q, text) in [
        ("%D0%92%D0%9E%D0%A0%D0%9E%D0%9D%D0%95%D0%96", "ВОРОНЕЖ"),
        ("%20%D0%BC%D0%B0%D1%80%D0%B8%D1%8F%20", " мария "),
        ("%D1%81%D0%B0%D0%B4%D0%BE%D0%B2", "садов"),
        ("%D1%91%D0%BB%D0%BA%D0%B8%D0%BD", "ёлкин"),
        ("%CF%83%CE%BF%CF%86", "σοφ"),
        ("100%25", "100%"),
    ] {
        let want = found_by(text);
        assert!(!want.is_empty(), "{text}: the import has matches");
        let (found, requests) = search_all(&app, import, q, 7).await;
        assert_eq!(found, want, "{text}");
        assert!(requests >= want.len() / 7, "{text}: {requests}");
    }
    let (none, _) = search_all(&app, import, "zzz", 50).await;
    assert_eq!(none, Vec::<Value>::new());
    // An id: that citizen only (none for an id not in the import).
    let last = whole.last().unwrap().clone();
    assert_eq!(
        citizens_page(&app, import, "?q=9223372036854775807").await,
        (vec![last], Value::Null)
    );
    let some = whole[700].clone();
    let id = some["citizen_id"].as_u64().unwrap();
    assert_eq!(
        citizens_page(&app, import, &format!("?q=%20{id}%20")).await,
        (vec![some], Value::Null)
    );
    for q in ["999999", "99999999999999999999999"] {
        assert_eq!(
            citizens_page(&app, import, &format!("?q={q}")).await,
            (vec![], Value::Null),
            "{q}"
        );
    }
    // Nothing but spaces: every citizen, a page at a time.
    let (all, _) = citizens_page(&app, import, "?q=%20%20&limit=10000").await;
    assert_eq!(all, whole);
    // ids=: those citizens, by id, each once; an id not there is left out.
    let ids = [whole[3].clone(), whole[1_500].clone(), whole[9].clone()];
    let query = format!(
        "?ids={},{},{},{},999999",
        ids[1]["citizen_id"], ids[0]["citizen_id"], ids[2]["citizen_id"], ids[0]["citizen_id"]
    );
    assert_eq!(
        citizens_page(&app, import, &query).await,
        (
            vec![ids[0].clone(), ids[2].clone(), ids[1].clone()],
            Value::Null
        )
    );
    // A search follows a PATCH.
    app.patch(import, id, &json!({"street": "Неповторимая"}))
        .await;
    let (found, _) = search_all(
        &app,
        import,
        "%D0%BD%D0%B5%D0%BF%D0%BE%D0%B2%D1%82%D0%BE%D1%80",
        50,
    )
    .await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["citizen_id"], id);

    // Bad searches are 400s naming the parameter; an unknown import is 404.
    let many: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    let long = "я".repeat(257);
    for (query, field) in [
        (format!("?q={long}"), "q"),
        (format!("?ids={}", many.join(",")), "ids"),
        ("?ids=".into(), "ids"),
        ("?ids=1,,2".into(), "ids"),
        ("?ids=-1".into(), "ids"),
        ("?ids=%2B5".into(), "ids"),
        ("?ids=5,%2B6".into(), "ids"),
        ("?ids=9223372036854775808".into(), "ids"),
        ("?ids=1&q=x".into(), "ids"),
        ("?ids=1&limit=5".into(), "ids"),
    ] {
        let (status, body) = app.get(&format!("/imports/{import}/citizens{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}");
    }
    let (ok, _) = citizens_page(&app, import, &format!("?q={}", "я".repeat(256))).await;
    assert_eq!(ok, Vec::<Value>::new());
    for query in ["?q=x", "?q=1", "?ids=1"] {
        let (status, body) = app.get(&format!("/imports/99/citizens{query}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{query}: {body}");
    }
}

/// The whole import walked in pages sorted by `sort` (with `extra`, e.g. a
/// search).
async fn sorted_all(
    app: &TestApp,
    import: i64,
    sort: &str,
    extra: &str,
    limit: usize,
) -> Vec<Value> {
    walk_all(app, import, &format!("sort={sort}{extra}"), limit)
        .await
        .0
}

/// The order the service sorts in, written out again: text by the Unicode
/// collation for Russian, dates as dates, relatives by how many, ties by id.
fn sorted_by(whole: &[Value], field: &str, descending: bool) -> Vec<Value> {
    use icu_collator::{CollatorBorrowed, options::CollatorOptions};
    let collator = CollatorBorrowed::try_new(
        icu_locale_core::locale!("ru").into(),
        CollatorOptions::default(),
    )
    .unwrap();
    let id = |c: &Value| c["citizen_id"].as_u64().unwrap();
    let mut sorted = whole.to_vec();
    sorted.sort_by(|a, b| {
        let by_field = match field {
            "citizen_id" => std::cmp::Ordering::Equal,
            "apartment" => a[field].as_u64().cmp(&b[field].as_u64()),
            "relatives" => a[field]
                .as_array()
                .unwrap()
                .len()
                .cmp(&b[field].as_array().unwrap().len()),
            "birth_date" => {
                let ymd = |c: &Value| {
                    let d = c[field].as_str().unwrap();
                    format!("{}{}{}", &d[6..], &d[3..5], &d[..2])
                };
                ymd(a).cmp(&ymd(b))
            }
            _ => collator.compare(a[field].as_str().unwrap(), b[field].as_str().unwrap()),
        };
        by_field.then(id(a).cmp(&id(b)))
    });
    if descending {
        sorted.reverse();
    }
    sorted
}

async fn a_sorted_listing_pages_by_any_field_either_way_and_searches_in_that_order(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let mut sent = crate::helpers::generate_import(1_500, 150, 8);
    for (id, name, town) in [
        (9_223_372_036_854_775_807, "ёлкин Пётр", "Smithville"),
        (9_000_000_000_000_000_000, "Елкин Пётр", "ёлкино"),
        (8_000_000_000_000_000_000, "елкин Пётр", "Ёлкино"),
        (7_000_000_000_000_000_000, "Ёлкин Пётр", "Елкино"),
        (6_000_000_000_000_000_000, "Zeta", "елкино"),
    ] {
        sent.push(citizen_with(id, &[], json!({"name": name, "town": town})));
    }
    let import = app.import(sent).await;
    let whole = app.citizens(import).await;
    let fields = [
        "citizen_id",
        "name",
        "town",
        "street",
        "building",
        "apartment",
        "birth_date",
        "gender",
        "relatives",
    ];
    for field in fields {
        for descending in [false, true] {
            let sort = if descending {
                format!("-{field}")
            } else {
                field.to_owned()
            };
            let walked = sorted_all(&app, import, &sort, "", 600).await;
            assert!(
                walked == sorted_by(&whole, field, descending),
                "sort={sort}: {:?}",
                walked
                    .iter()
                    .take(8)
                    .map(|c| &c["citizen_id"])
                    .collect::<Vec<_>>()
            );
        }
    }
    // A search in a sorted order: what the search finds, in that order.
    let found: Vec<Value> = sorted_by(&whole, "town", true)
        .into_iter()
        .filter(|c| {
            ["name", "town", "street"]
                .iter()
                .any(|f| c[f].as_str().unwrap().to_lowercase().contains("ёлкин"))
        })
        .collect();
    assert_eq!(found.len(), 4);
    let walked = sorted_all(
        &app,
        import,
        "-town",
        "&q=%D1%91%D0%BB%D0%BA%D0%B8%D0%BD",
        3,
    )
    .await;
    assert_eq!(walked, found);
    // An id search is that citizen, sorted or not.
    let (one, next) = citizens_page(&app, import, "?sort=name&q=6000000000000000000").await;
    assert_eq!((one.len(), next), (1, Value::Null));

    // A month's buyers: those the birthdays answer lists under it, by id or
    // in a sorted order, with a search too.
    let birthdays = app.birthdays(import).await;
    let buyers = |month: usize| -> Vec<Value> {
        let ids: Vec<&Value> = birthdays[month.to_string()]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["citizen_id"])
            .collect();
        whole
            .iter()
            .filter(|c| ids.contains(&&c["citizen_id"]))
            .cloned()
            .collect()
    };
    for month in 1..=12 {
        let want = buyers(month);
        assert!(!want.is_empty(), "month {month}");
        let extra = format!("&month={month}");
        assert_eq!(
            sorted_all(&app, import, "citizen_id", &extra, 10).await,
            want,
            "month {month}"
        );
        let by_name: Vec<Value> = sorted_by(&whole, "name", true)
            .into_iter()
            .filter(|c| want.contains(c))
            .collect();
        assert_eq!(
            sorted_all(&app, import, "-name", &extra, 7).await,
            by_name,
            "month {month}"
        );
    }
    // An id search within a month: the citizen if it buys then, else no one.
    let buyer = buyers(5)[0]["citizen_id"].clone();
    let other = (1..=12)
        .find(|&m| !buyers(m).iter().any(|c| c["citizen_id"] == buyer))
        .unwrap();
    for (month, found) in [(5, 1), (other, 0)] {
        let query = format!("?month={month}&q={buyer}");
        assert_eq!(
            citizens_page(&app, import, &query).await.0.len(),
            found,
            "{query}"
        );
    }

    // A PATCH between two pages: the next page goes on after where the
    // previous page's last citizen now is.
    let (first, next) = citizens_page(&app, import, "?sort=name&limit=10").await;
    let last = first[9]["citizen_id"].as_u64().unwrap();
    app.patch(import, last, &json!({"name": "Яяя"})).await;
    let now = sorted_by(&app.citizens(import).await, "name", false);
    let at = now.iter().position(|c| c["citizen_id"] == last).unwrap();
    let query = format!("?sort=name&limit=10&cursor={}", next.as_str().unwrap());
    let (second, _) = citizens_page(&app, import, &query).await;
    assert_eq!(second, now[at + 1..(at + 11).min(now.len())].to_vec());
    // The new name sorts where it belongs from the first page on (Latin
    // after Cyrillic: "Zeta", then "Яяя").
    let walked = sorted_all(&app, import, "-name", "", 1_000).await;
    assert_eq!(walked, sorted_by(&now, "name", true));
    assert_eq!(walked[1]["citizen_id"], last);

    // A birthday moved by a PATCH moves its relatives' presents: the month's
    // buyers follow.
    let related = now.iter().find(|c| c["relatives"] != json!([])).unwrap();
    let id = related["citizen_id"].as_u64().unwrap();
    app.patch(import, id, &json!({"birth_date": "15.07.1977"}))
        .await;
    let july: Vec<Value> = app.birthdays(import).await["7"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["citizen_id"].clone())
        .collect();
    assert!(july.contains(&related["relatives"][0]));
    let walked = sorted_all(&app, import, "citizen_id", "&month=7", 50).await;
    let walked: Vec<Value> = walked.iter().map(|c| c["citizen_id"].clone()).collect();
    assert_eq!(walked, july);

    // Bad sorts are 400s naming the parameter; a cursor of another order too.
    let (_, by_town) = citizens_page(&app, import, "?sort=town&limit=5").await;
    let by_town = by_town.as_str().unwrap();
    for (query, field) in [
        ("?sort=nam".to_owned(), "sort"),
        ("?sort=".to_owned(), "sort"),
        ("?sort=--name".to_owned(), "sort"),
        ("?sort=name&ids=1".to_owned(), "ids"),
        ("?month=1&ids=1".to_owned(), "ids"),
        ("?month=0".to_owned(), "month"),
        ("?month=13".to_owned(), "month"),
        ("?month=%2B5".to_owned(), "month"),
        ("?month=x&sort=name".to_owned(), "month"),
        (format!("?sort=name&cursor={by_town}"), "cursor"),
        (format!("?sort=-town&cursor={by_town}"), "cursor"),
        (format!("?cursor={by_town}"), "cursor"),
    ] {
        let (status, body) = app.get(&format!("/imports/{import}/citizens{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}");
    }
    let (status, _) = app.get("/imports/99/citizens?sort=name").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

backend_tests!(
    a_sorted_listing_pages_by_any_field_either_way_and_searches_in_that_order,
    citizens_come_a_page_at_a_time_as_the_whole_answer_has_them,
    a_search_finds_citizens_by_id_or_by_name_town_or_street_in_any_case,
    pages_of_an_empty_or_unknown_import_and_bad_page_parameters,
    citizens_come_ordered_by_id_with_relatives_ascending,
    birthdays_count_one_present_per_relative_per_month,
    birthdays_of_the_spec_example_follow_patches,
    cached_answers_follow_every_write,
    with_the_cache_disabled_every_answer_comes_from_storage,
    percentiles_match_numpy_and_towns_come_ordered,
    percentiles_round_to_two_decimals,
    unknown_imports_and_paths_are_404_with_a_json_error,
    wrong_methods_are_405_with_a_json_error,
    bodies_over_the_limit_are_413_and_store_nothing,
    patch_bodies_over_the_body_limit_are_413_and_change_nothing,
    health_answers_when_the_store_does,
);
