//! What the service says when a request is wrong: the exact messages of the
//! common mistakes, compressed bodies, and request ids.

use std::io::Write;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, spec_example};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

async fn post(app: &TestApp, body: Vec<u8>, encoding: Option<&str>) -> (StatusCode, Value) {
    let mut request = app.client.post(app.url("/imports")).body(body);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (
        status,
        serde_json::from_slice(&response.bytes().await.unwrap()).expect("a JSON body"),
    )
}

async fn common_mistakes_get_messages_that_say_what_is_wrong(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let import = app.import(spec_example()).await;
    let cases: Vec<(&str, (StatusCode, Value), &str)> = vec![
        (
            "empty body",
            app.post_import_raw(Vec::new()).await,
            "the request body is empty; expected a JSON object",
        ),
        (
            "not JSON",
            app.post_import_raw(b"citizens=[]".to_vec()).await,
            "the request body is not valid JSON: expected value at line 1 column 1",
        ),
        (
            "cut off",
            app.post_import_raw(b"{\"citizens\": [".to_vec()).await,
            "citizens: the request body is not valid JSON: EOF while parsing a list at line 1 column 14",
        ),
        (
            "cut off inside a key: the path says only what is known",
            app.post_import_raw(b"{\"citizens\": [{\"citizen_id\": 1, \"na".to_vec())
                .await,
            "citizens[0]: the request body is not valid JSON: EOF while parsing a string at line 1 column 35",
        ),
        (
            "PATCH {}",
            app.patch(import, 3, &json!({})).await,
            "citizen 3: the body must change at least one field: name, gender, birth_date, relatives, town, street, building or apartment",
        ),
        (
            "PATCH with an empty body",
            app.patch_raw(import, 3, Vec::new()).await,
            "citizen 3: the request body is empty; expected a JSON object",
        ),
    ];
    for (why, (status, body), message) in cases {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{why}: {body}");
        assert_eq!(body["error"]["message"], message, "{why}: {body}");
    }
    assert_eq!(
        app.citizens(import).await,
        spec_example(),
        "nothing changed"
    );
}

async fn a_body_over_the_limit_names_the_setting(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.max_body_bytes = gifts::config::ByteSize(1 << 20);
    })
    .await;
    let (status, body) = app.post_import_raw(vec![b' '; (1 << 20) + 1]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(
        body["error"]["message"],
        "the request body is larger than the limit of 1MiB (1048576 bytes), set by --max-body-bytes / GIFTS_MAX_BODY_BYTES"
    );
}

async fn gzip_bodies_are_decompressed_within_the_limit(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.max_body_bytes = gifts::config::ByteSize(1 << 20);
    })
    .await;
    let plain = serde_json::to_vec(&json!({ "citizens": spec_example() })).unwrap();
    let (status, body) = post(&app, gzip(&plain), Some("gzip")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(app.citizens(1).await, spec_example());

    // 16 MiB of spaces compress to 16 KiB: a small upload, a big body.
    let bomb = gzip(&vec![b' '; 16 << 20]);
    assert!(bomb.len() < 1 << 20);
    let (status, body) = post(&app, bomb, Some("gzip")).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    let (status, body) = post(&app, b"not gzip".to_vec(), Some("gzip")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "unreadable_body");

    let (status, body) = post(&app, plain.clone(), Some("br")).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_content_encoding");
    let (status, body) = post(&app, plain, Some("identity")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        app.import(vec![]).await,
        3,
        "only the two good imports were stored"
    );
}

async fn request_ids_are_uuid_v7_or_the_clients_printable_id(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let id_of = |header: Option<&str>| {
        let mut request = app.client.get(app.url("/health"));
        if let Some(value) = header {
            request = request.header("x-request-id", value);
        }
        async move {
            let response = request.send().await.unwrap();
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    let made = id_of(None).await;
    let uuid = uuid::Uuid::parse_str(&made).expect("a UUID");
    assert_eq!(uuid.get_version_num(), 7, "{made}");
    assert_ne!(id_of(None).await, made, "a new id per request");
    assert_eq!(id_of(Some("client-42")).await, "client-42");
    let long = "x".repeat(300);
    assert_eq!(id_of(Some(&long)).await, "x".repeat(128));
    let spaced = id_of(Some("has spaces")).await;
    assert!(uuid::Uuid::parse_str(&spaced).is_ok(), "replaced: {spaced}");
}

/// The OpenAPI document's examples are real answers: its import example
/// stored, its reads, its PATCH example and its errors answered, on a
/// fresh store, equal the document's examples exactly (the percentiles'
/// example is of one day; it is compared on that day only).
async fn the_documents_examples_are_what_the_service_answers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let doc = serde_json::to_value(gifts::http::openapi::document()).unwrap();
    let operation = |path: &str, method: &str| doc["paths"][path][method].clone();
    let answer = |op: &Value, status: &str| {
        op["responses"][status]["content"]["application/json"]["example"].clone()
    };
    let create = operation("/imports", "post");
    let body = create["requestBody"]["content"]["application/json"]["example"].clone();
    assert_eq!(body, json!({"citizens": spec_example()}));
    let (status, got) = app.post_import(&body).await;
    assert_eq!((status.as_u16(), got), (201, answer(&create, "201")));

    let citizens = operation("/imports/{import_id}/citizens", "get");
    assert_eq!(
        app.get("/imports/1/citizens").await.1,
        answer(&citizens, "200")
    );
    let birthdays = operation("/imports/{import_id}/citizens/birthdays", "get");
    assert_eq!(
        app.get("/imports/1/citizens/birthdays").await.1,
        answer(&birthdays, "200")
    );
    if gifts::domain::today_utc() == time::macros::date!(2026 - 12 - 05) {
        let ages = operation("/imports/{import_id}/towns/stat/percentile/age", "get");
        assert_eq!(
            app.get("/imports/1/towns/stat/percentile/age").await.1,
            answer(&ages, "200")
        );
    }
    let (status, got) = app
        .send(reqwest::Method::POST, "/imports", Some(br#"{"citizens": [
            {"citizen_id": 1, "town": "a", "street": "b", "building": "c", "apartment": 1, "name": "d", "birth_date": "26.12.1986", "gender": "male", "relatives": []},
            {"citizen_id": 2, "town": "a", "street": "b", "building": "c", "apartment": 1, "name": "d", "birth_date": "31.02.2019", "gender": "male", "relatives": []}]}"#.to_vec()))
        .await;
    assert_eq!((status.as_u16(), got), (400, answer(&create, "400")));
    let list = operation("/imports", "get");
    assert_eq!(
        app.get("/imports?limit=0").await,
        (StatusCode::BAD_REQUEST, answer(&list, "400"))
    );

    let patch = operation("/imports/{import_id}/citizens/{citizen_id}", "patch");
    let (status, got) = app.patch(1, 3, &json!({"relatives": [9]})).await;
    assert_eq!((status.as_u16(), got), (400, answer(&patch, "400")));
    let body = patch["requestBody"]["content"]["application/json"]["example"].clone();
    let (status, got) = app.patch(1, 3, &body).await;
    assert_eq!((status.as_u16(), got), (200, answer(&patch, "200")));
    let health = operation("/health", "get");
    assert_eq!(app.get("/health").await.1, answer(&health, "200"));
}

backend_tests!(
    the_documents_examples_are_what_the_service_answers,
    common_mistakes_get_messages_that_say_what_is_wrong,
    a_body_over_the_limit_names_the_setting,
    gzip_bodies_are_decompressed_within_the_limit,
    request_ids_are_uuid_v7_or_the_clients_printable_id,
);
