//! The analysts' page is served from the binary: `GET /` and its files
//! under `/ui/`, byte for byte the files in `ui/`, with their types and a
//! content security policy; open without a token, as the docs page is. What
//! it does in a browser is tested in `tests/browser` (chromium).

use reqwest::StatusCode;

use crate::helpers::{Backend, TestApp};

fn repo_file(path: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

async fn fetch(app: &TestApp, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let response = app.client.get(app.url(path)).send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_files_are_served_from_the_binary() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    for (path, file, content_type) in [
        ("/", "ui/index.html", "text/html; charset=utf-8"),
        ("/ui/app.js", "ui/app.js", "text/javascript; charset=utf-8"),
        (
            "/ui/charts.js",
            "ui/charts.js",
            "text/javascript; charset=utf-8",
        ),
        (
            "/ui/i18n.js",
            "ui/i18n.js",
            "text/javascript; charset=utf-8",
        ),
        ("/ui/style.css", "ui/style.css", "text/css; charset=utf-8"),
    ] {
        let (status, headers, body) = fetch(&app, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert_eq!(headers["cache-control"], "no-cache", "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("default-src 'self'"), "{path}: {policy}");
        assert!(policy.contains("script-src 'self';"), "{path}: {policy}");
        assert_eq!(body, repo_file(file), "{path}");
    }
    let (status, headers, body) = fetch(&app, "/ui/missing.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "not_found", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_tokens_file_the_page_is_open_and_the_data_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, "").unwrap();
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.tokens_file = Some(path.clone())).await;
    for path in [
        "/",
        "/ui/app.js",
        "/ui/charts.js",
        "/ui/i18n.js",
        "/ui/style.css",
    ] {
        assert_eq!(fetch(&app, path).await.0, StatusCode::OK, "{path}");
    }
    assert_eq!(fetch(&app, "/imports").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        fetch(&app, "/ui/missing.js").await.0,
        StatusCode::NOT_FOUND,
        "the page's files are open, so a missing one is a plain 404"
    );
}
