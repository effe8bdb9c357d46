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

backend_tests!(
    every_read_carries_an_etag_and_a_current_one_gets_304,
    answers_are_gzipped_when_asked_and_equal_the_plain_ones,
);
