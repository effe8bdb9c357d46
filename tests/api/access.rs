//! Access control with `--tokens-file`: every route × (no token, an unknown
//! token, a token without the scope, a token with it); SIGHUP reloads; the
//! audit trail; the warning when no tokens guard a reachable port.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use gifts::access::{Scope, new_token};

use crate::backend_tests;
use crate::helpers::{Backend, Binary, TestApp, spec_example};

/// A tokens file with one token per scope; returns it and the tokens by scope.
fn tokens_file(dir: &std::path::Path) -> (std::path::PathBuf, Vec<(Scope, String)>) {
    let mut lines = vec!["# a token per scope".to_owned()];
    let mut tokens = Vec::new();
    for scope in Scope::ALL {
        let (token, line) = new_token(&format!("{scope}-client"), &[scope]).unwrap();
        lines.push(line);
        tokens.push((scope, token));
    }
    let path = dir.join("tokens");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    (path, tokens)
}

async fn call(
    app: &TestApp,
    method: &Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = app.client.request(method.clone(), app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn every_route_needs_its_scope_and_only_it(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (path, tokens) = tokens_file(dir.path());
    let token = |scope: Scope| tokens.iter().find(|(s, _)| *s == scope).unwrap().1.clone();
    let app = TestApp::spawn_with(backend, |c| c.tokens_file = Some(path.clone())).await;
    // Set up with the right scopes.
    let (status, _, _) = call(
        &app,
        &Method::POST,
        "/imports",
        Some(&token(Scope::Write)),
        Some(json!({"citizens": spec_example()})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    // route, method, scope needed, body, success
    let routes: Vec<(Method, String, Scope, Option<Value>, StatusCode)> = vec![
        (
            Method::POST,
            "/imports".into(),
            Scope::Write,
            Some(json!({"citizens": spec_example()})),
            StatusCode::CREATED,
        ),
        (
            Method::GET,
            "/imports".into(),
            Scope::Read,
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/imports/1/citizens".into(),
            Scope::Read,
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/imports/1/citizens/birthdays".into(),
            Scope::Read,
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/imports/1/towns/stat/percentile/age".into(),
            Scope::Read,
            None,
            StatusCode::OK,
        ),
        (
            Method::PATCH,
            "/imports/1/citizens/3".into(),
            Scope::Write,
            Some(json!({"name": "Новое"})),
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/metrics".into(),
            Scope::Admin,
            None,
            StatusCode::OK,
        ),
        (
            Method::DELETE,
            "/imports/2".into(),
            Scope::Delete,
            None,
            StatusCode::NO_CONTENT,
        ),
    ];
    for (method, path, scope, body, success) in routes {
        let what = format!("{method} {path}");
        let (status, headers, error) = call(&app, &method, &path, None, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{what}, no token: {error}"
        );
        assert_eq!(error["error"]["code"], "unauthorized", "{what}");
        assert_eq!(
            headers["www-authenticate"], "Bearer realm=\"gifts\"",
            "{what}"
        );

        let (status, headers, _) = call(
            &app,
            &method,
            &path,
            Some("gifts_not-a-real-token"),
            body.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}, unknown token");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );

        for (other, other_token) in tokens.iter().filter(|(s, _)| *s != scope) {
            let (status, _, error) =
                call(&app, &method, &path, Some(other_token), body.clone()).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{what} with a {other} token: {error}"
            );
            assert_eq!(error["error"]["code"], "forbidden");
        }

        let (status, _, answer) = call(&app, &method, &path, Some(&token(scope)), body).await;
        assert_eq!(status, success, "{what} with a {scope} token: {answer}");
    }

    for open in ["/health", "/livez", "/readyz", "/openapi.json", "/docs/"] {
        let (status, _, _) = call(&app, &Method::GET, open, None, None).await;
        assert_eq!(status, StatusCode::OK, "{open} is open");
    }
    let (status, _, _) = call(&app, &Method::GET, "/no/such/path", None, None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "unknown paths reveal nothing without a token"
    );
    let (status, _, _) = call(
        &app,
        &Method::GET,
        "/no/such/path",
        Some(&token(Scope::Read)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

backend_tests!(every_route_needs_its_scope_and_only_it);

#[tokio::test]
async fn sighup_reloads_the_tokens_file_and_a_broken_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    let (old, old_line) = new_token("old", &[Scope::Read]).unwrap();
    std::fs::write(&path, &old_line).unwrap();
    let mut app = Binary::start(&["--tokens-file", path.to_str().unwrap()], &[], None);
    app.wait_healthy().await;
    let client = reqwest::Client::new();
    let base = app.base.clone();
    let status = |token: String| {
        let request = client
            .get(format!("{base}/imports"))
            .bearer_auth(token)
            .send();
        async move { request.await.unwrap().status() }
    };
    assert_eq!(status(old.clone()).await, StatusCode::OK);

    let (new, new_line) = new_token("new", &[Scope::Read]).unwrap();
    std::fs::write(&path, &new_line).unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &app.pid().to_string()])
        .status()
        .unwrap();
    app.wait_for_log("tokens file reloaded").await;
    assert_eq!(
        status(old).await,
        StatusCode::UNAUTHORIZED,
        "the removed token is refused"
    );
    assert_eq!(status(new.clone()).await, StatusCode::OK);

    std::fs::write(&path, "broken line").unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &app.pid().to_string()])
        .status()
        .unwrap();
    app.wait_for_log("tokens file not reloaded").await;
    assert_eq!(status(new).await, StatusCode::OK, "the old tokens stay");
}

#[tokio::test]
async fn imports_and_deletions_are_logged_with_the_token_name_never_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (path, tokens) = tokens_file(dir.path());
    let token = |scope: Scope| tokens.iter().find(|(s, _)| *s == scope).unwrap().1.clone();
    for format in ["text", "json"] {
        let mut app = Binary::start(
            &[
                "--tokens-file",
                path.to_str().unwrap(),
                "--log-format",
                format,
            ],
            &[],
            None,
        );
        app.wait_healthy().await;
        let client = reqwest::Client::new();
        let response = client
            .post(format!("{}/imports", app.base))
            .bearer_auth(token(Scope::Write))
            .header("x-request-id", "audit-import")
            .body(json!({"citizens": spec_example()}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let response = client
            .delete(format!("{}/imports/1", app.base))
            .bearer_auth(token(Scope::Delete))
            .header("x-request-id", "audit-delete")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let log = app.wait_for_log("audit-delete").await;
        let line = |id: &str| log.lines().find(|l| l.contains(id)).unwrap().to_owned();
        let (import, delete) = (line("audit-import"), line("audit-delete"));
        if format == "text" {
            assert!(
                import.contains("token=\"write-client\"")
                    && import.contains("import_id=1")
                    && import.contains("citizens=3"),
                "{import}"
            );
            assert!(
                delete.contains("token=\"delete-client\"") && delete.contains("import_id=1"),
                "{delete}"
            );
            assert!(import.contains(" INFO "), "{import}");
        } else {
            let import: Value = serde_json::from_str(&import).unwrap();
            assert_eq!(import["span"]["token"], "write-client", "{import}");
            assert_eq!(import["span"]["import_id"], 1);
            assert_eq!(import["span"]["citizens"], 3);
            let delete: Value = serde_json::from_str(&delete).unwrap();
            assert_eq!(delete["span"]["token"], "delete-client", "{delete}");
        }
        for (_, secret) in &tokens {
            assert!(
                !log.contains(secret.as_str()),
                "a token leaked into the log"
            );
        }
    }
}

#[tokio::test]
async fn a_reachable_port_without_tokens_is_warned_about_at_start() {
    let port = crate::helpers::free_port().to_string();
    let mut open = Binary::start(&[], &[("GIFTS_LISTEN", &format!("0.0.0.0:{port}"))], None);
    open.wait_healthy().await;
    assert!(
        open.log()
            .contains("anyone who can reach this port can read and change personal data"),
        "{}",
        open.log()
    );
    let mut local = Binary::start(&[], &[], None);
    local.wait_healthy().await;
    assert!(
        !local.log().contains("anyone who can reach"),
        "{}",
        local.log()
    );
}

#[tokio::test]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    for (trusted, wanted) in [
        (true, "client=\"203.0.113.7\""),
        (false, "client=\"127.0.0.1\""),
    ] {
        let args: &[&str] = if trusted {
            &["--trusted-proxies", "127.0.0.1"]
        } else {
            &[]
        };
        let mut app = Binary::start(args, &[], None);
        app.wait_healthy().await;
        reqwest::Client::new()
            .get(format!("{}/imports", app.base))
            .header("x-forwarded-for", "198.51.100.1, 203.0.113.7")
            .header("x-request-id", "forwarded")
            .send()
            .await
            .unwrap();
        let log = app.wait_for_log("forwarded").await;
        let line = log.lines().find(|l| l.contains("forwarded")).unwrap();
        assert!(line.contains(wanted), "trusted {trusted}: {line}");
    }
}
