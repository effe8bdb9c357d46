//! Honest answers when a write's fate is unknown, and retries that do not
//! duplicate: `Idempotency-Key` on POST /imports; 503 (not applied) versus
//! 504 (sent, outcome unknown); one budget for a request's storage waits.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, citizen, spec_example, tarantool_available};
use crate::support::poll;

async fn post_with_key(app: &TestApp, key: &str, body: &Value) -> (StatusCode, Value) {
    let response = app
        .client
        .post(app.url("/imports"))
        .header("idempotency-key", key)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).expect("a JSON body"))
}

async fn a_retried_import_with_its_key_is_stored_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = json!({ "citizens": spec_example() });
    let (status, first) = post_with_key(&app, "order-42", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = post_with_key(&app, "order-42", &body).await;
    assert_eq!(
        (status, &again),
        (StatusCode::CREATED, &first),
        "the same answer"
    );

    // The same key with another body is a client error, and stores nothing.
    let other = json!({ "citizens": [citizen(1, &[])] });
    let (status, error) = post_with_key(&app, "order-42", &other).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error["error"]["code"], "idempotency_key_reused");

    // Keys are per import: another key stores another import; the key survives a restart.
    let (_, second) = post_with_key(&app, "order-43", &body).await;
    assert_eq!(second["data"]["import_id"], 2);
    let app = app.restart().await;
    let (status, after) = post_with_key(&app, "order-42", &body).await;
    assert_eq!((status, &after), (StatusCode::CREATED, &first));
    assert_eq!(app.import(vec![]).await, 3, "no import was stored twice");
}

async fn a_malformed_idempotency_key_is_a_400_naming_the_header(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = json!({ "citizens": [] });
    for key in ["", &"k".repeat(256), "tab\there"] {
        let (status, error) = post_with_key(&app, key, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key:?}: {error}");
        assert_eq!(error["error"]["code"], "invalid_header");
        assert_eq!(error["error"]["field"], "Idempotency-Key");
    }
    assert_eq!(app.import(vec![]).await, 1, "nothing was stored");
}

backend_tests!(
    a_retried_import_with_its_key_is_stored_once,
    a_malformed_idempotency_key_is_a_400_naming_the_header,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_and_unanswered_is_504_and_its_retry_with_the_key_is_not_a_duplicate() {
    if !tarantool_available("outcome_unknown") {
        return;
    }
    let app = TestApp::spawn_with(Backend::Tarantool, |c| c.tarantool_timeout_secs = 1).await;
    let import = app.import(spec_example()).await;
    let body = json!({ "citizens": spec_example() });

    app.store.freeze_server(true);
    let (status, error) = post_with_key(&app, "retry-me", &body).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{error}");
    assert_eq!(error["error"]["code"], "storage_timeout");
    // The silent connection is then taken for dead: the next write is
    // never sent (no greeting comes on a new connection), so it is a 503.
    let (status, error) = app.patch(import, 1, &json!({"name": "Никогда"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert_eq!(error["error"]["code"], "storage_unavailable");
    // A read that gets no answer changed nothing: 503, retry.
    let (status, error) = app.get(&format!("/imports/{import}/citizens")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    app.store.freeze_server(false);

    // The import did arrive; the retry gets it rather than a second copy.
    let (status, stored) = post_with_key(&app, "retry-me", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{stored}");
    let id = stored["data"]["import_id"].as_i64().unwrap();
    assert_eq!(id, import + 1);
    assert_eq!(app.import(vec![]).await, import + 2, "stored once");
    assert_eq!(app.citizens(import).await, spec_example(), "never sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_cannot_be_sent_is_503_and_was_not_applied() {
    if !tarantool_available("not_sent") {
        return;
    }
    let app = TestApp::spawn_with(Backend::Tarantool, |c| c.tarantool_timeout_secs = 1).await;
    let import = app.import(spec_example()).await;
    app.store.kill_server();
    let (status, error) = app.post_import(&json!({ "citizens": [] })).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not applied"),
        "{error}"
    );
    app.store.start_server();
    poll(Duration::from_secs(30), || async {
        match app.get("/health").await.0 {
            StatusCode::OK => Ok(()),
            status => Err(status),
        }
    })
    .await
    .unwrap_or_else(|status| panic!("tarantool did not come back: {status}"));
    assert_eq!(
        app.import(vec![]).await,
        import + 1,
        "the refused import took no id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_joining_a_running_version_check_waits_one_timeout_not_two() {
    if !tarantool_available("one_timeout") {
        return;
    }
    let app = std::sync::Arc::new(
        TestApp::spawn_with(Backend::Tarantool, |c| c.tarantool_timeout_secs = 2).await,
    );
    let import = app.import(spec_example()).await;
    app.citizens(import).await; // cached: the reads below only check the version
    app.store.freeze_server(true);
    let path = format!("/imports/{import}/citizens");
    let first = {
        let (app, path) = (std::sync::Arc::clone(&app), path.clone());
        tokio::spawn(async move { app.get(&path).await.0 })
    };
    // Once the first read's version check is in flight (the metrics say so),
    // this read arrives while it runs: it waits for that check and would
    // need a second one; its own budget still ends it.
    let in_flight =
        "gifts_storage_operations_in_flight{backend=\"tarantool\",operation=\"import_version\"} 1";
    poll(Duration::from_secs(10), || async {
        let text = app.metrics().await;
        if text.contains(in_flight) {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await
    .unwrap_or_else(|text| panic!("the first check never started:\n{text}"));
    let started = Instant::now();
    let (status, _) = app.get(&path).await;
    let waited = started.elapsed();
    app.store.freeze_server(false);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        waited < Duration::from_millis(2600),
        "waited {waited:?} with a 2 s timeout"
    );
}
