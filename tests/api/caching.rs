//! HTTP caching and compression of the read answers: `ETag` from the import
//! and its version, `If-None-Match` → 304, gzip when asked.

use std::io::Read;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, generate_import, spec_example, today};

async fn get(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app.client.get(app.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn every_read_carries_an_etag_and_a_current_one_gets_304(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let import = app.import(spec_example()).await;
    let day = today().to_julian_day();
    for (path, tag) in [
        ("citizens", format!("W/\"{import}-1-citizens\"")),
        ("citizens/birthdays", format!("W/\"{import}-1-birthdays\"")),
        (
            "towns/stat/percentile/age",
            format!("W/\"{import}-1-percentiles-{day}\""),
        ),
    ] {
        let path = format!("/imports/{import}/{path}");
        let response = get(&app, &path, &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "etag"), tag, "{path}");
        assert_eq!(header(&response, "cache-control"), "no-cache");
        assert_eq!(header(&response, "vary"), "accept-encoding");
        let response = get(&app, &path, &[("if-none-match", &tag)]).await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(header(&response, "etag"), tag);
        assert!(
            response.bytes().await.unwrap().is_empty(),
            "304 has no body"
        );
    }

    // A write makes a new tag: the old one no longer matches.
    let old = format!("W/\"{import}-1-citizens\"");
    app.patch(import, 3, &json!({"name": "Другое имя"})).await;
    let response = get(
        &app,
        &format!("/imports/{import}/citizens"),
        &[("if-none-match", &old)],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "etag"),
        format!("W/\"{import}-2-citizens\"")
    );
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(body["data"][2]["name"], "Другое имя");
}

async fn answers_are_gzipped_when_asked_and_equal_the_plain_ones(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let import = app.import(generate_import(500, 50, 2)).await;
    for path in [
        "citizens",
        "citizens/birthdays",
        "towns/stat/percentile/age",
    ] {
        let path = format!("/imports/{import}/{path}");
        let plain = get(&app, &path, &[]).await;
        assert_eq!(header(&plain, "content-encoding"), "");
        let plain = plain.bytes().await.unwrap();
        for _ in 0..2 {
            // The second answer comes from the cache of compressed bodies.
            let zipped = get(&app, &path, &[("accept-encoding", "br, gzip")]).await;
            let big = plain.len() >= 1024;
            assert_eq!(
                header(&zipped, "content-encoding"),
                if big { "gzip" } else { "" },
                "{path}: {} bytes",
                plain.len()
            );
            let bytes = zipped.bytes().await.unwrap();
            let mut unzipped = Vec::new();
            if big {
                assert!(bytes.len() < plain.len(), "{path}: compressed");
                flate2::read::GzDecoder::new(&bytes[..])
                    .read_to_end(&mut unzipped)
                    .unwrap();
            } else {
                unzipped = bytes.to_vec();
            }
            assert_eq!(unzipped, plain, "{path}");
        }
        let refused = get(&app, &path, &[("accept-encoding", "gzip;q=0")]).await;
        assert_eq!(header(&refused, "content-encoding"), "");
    }
}

/// A GET citizens answer too big to be worth caching (over a quarter of
/// `--cache-bytes`, or over 1 MiB with the cache off) is streamed as it is
/// rendered (chunked, no `Content-Length`): byte for byte the answer
/// rendered whole, plain or gzipped; ETag and 304 as for any other.
async fn big_answers_are_streamed_byte_for_byte_as_rendered_whole(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // About 1.9 MB of citizens: under a quarter of the default budget.
    let import = app.import(generate_import(8_000, 2_000, 11)).await;
    let path = format!("/imports/{import}/citizens");
    let whole = get(&app, &path, &[]).await;
    assert!(whole.content_length().is_some(), "rendered whole");
    let whole = whole.bytes().await.unwrap();
    assert!(whole.len() > 1024 * 1024, "{} bytes", whole.len());

    let store = app.stop().await;
    let mut config = gifts::config::Config::with_storage(store.url().clone());
    config.cache_bytes = gifts::config::ByteSize(0);
    let app = TestApp::start(store, config).await;
    for _ in 0..2 {
        let streamed = get(&app, &path, &[]).await;
        assert_eq!(streamed.status(), StatusCode::OK);
        assert_eq!(streamed.content_length(), None, "streamed");
        assert_eq!(header(&streamed, "content-type"), "application/json");
        let tag = header(&streamed, "etag");
        assert_eq!(tag, format!("W/\"{import}-1-citizens\""));
        assert_eq!(streamed.bytes().await.unwrap(), whole);

        let zipped = get(&app, &path, &[("accept-encoding", "gzip")]).await;
        assert_eq!(zipped.content_length(), None, "streamed");
        assert_eq!(header(&zipped, "content-encoding"), "gzip");
        let bytes = zipped.bytes().await.unwrap();
        assert!(bytes.len() < whole.len() / 2, "{} bytes", bytes.len());
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, whole);

        let revalidated = get(&app, &path, &[("if-none-match", &tag)]).await;
        assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);
    }
}

backend_tests!(
    every_read_carries_an_etag_and_a_current_one_gets_304,
    answers_are_gzipped_when_asked_and_equal_the_plain_ones,
    big_answers_are_streamed_byte_for_byte_as_rendered_whole,
);
