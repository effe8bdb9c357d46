//! Slow clients cannot hold the service: header and request timeouts.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend_tests;
use crate::helpers::{Backend, TestApp};

/// Reads until the server closes the connection (or 10 s pass, which fails the test).
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .expect("the server closed the connection in time")
        .ok();
    String::from_utf8_lossy(&received).into_owned()
}

async fn a_client_that_never_finishes_its_headers_is_disconnected(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.header_read_timeout_secs = 1).await;
    let mut stream = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

async fn a_body_that_never_arrives_gets_408(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.request_timeout_secs = 1).await;
    let mut stream = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /imports HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"citizens\"",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    assert_eq!(app.import(vec![]).await, 1, "nothing was stored");
}

/// Sends `head` (and nothing more) and reads what comes back within 5 s.
async fn exchange(app: &TestApp, head: &str) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut received = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut received))
        .await
        .expect("an answer at once, not after a timeout")
        .unwrap();
    (String::from_utf8_lossy(&received[..n]).into_owned(), stream)
}

async fn a_body_announced_over_the_limit_is_refused_before_it_is_sent(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (path, method) in [
        ("/imports", "POST"),
        ("/imports/1/citizens/1", "PATCH"),
        ("/health", "GET"),
    ] {
        let (answer, mut stream) = exchange(
            &app,
            &format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 70000000\r\n\r\n"),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "{method} {path}: {answer}"
        );
        assert!(
            answer.contains("\"code\":\"payload_too_large\""),
            "{answer}"
        );
        assert!(
            read_until_closed(&mut stream).await.is_empty(),
            "the connection is closed, not drained"
        );
    }
    // Expect: 100-continue over the limit: 413 instead of 100 Continue.
    let (answer, _) = exchange(
        &app,
        "POST /imports HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 70000000\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Within the limit the client is asked to go on.
    let body = "{\"citizens\": []}";
    let (answer, mut stream) = exchange(
        &app,
        &format!(
            "POST /imports HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 100 Continue"), "{answer}");
    stream.write_all(body.as_bytes()).await.unwrap();
    let rest = read_until_closed(&mut stream).await;
    assert!(rest.contains("HTTP/1.1 201"), "{answer}{rest}");
}

async fn content_length_with_transfer_encoding_ends_the_connection_after_one_answer(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    // A front proxy that reads Content-Length would see a second request
    // (GET /health) smuggled after 5 bytes; the server reads the chunked body,
    // answers once and closes, so no second request runs.
    let mut stream = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /imports HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
              f\r\n{\"citizens\": []\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
}

backend_tests!(
    a_client_that_never_finishes_its_headers_is_disconnected,
    a_body_that_never_arrives_gets_408,
    a_body_announced_over_the_limit_is_refused_before_it_is_sent,
    content_length_with_transfer_encoding_ends_the_connection_after_one_answer,
);

/// Answers made by the framework rather than a handler (a path that is not
/// UTF-8, Swagger UI's unknown files) are the service's JSON error too.
#[tokio::test]
async fn framework_errors_are_json_errors_too() {
    let app = crate::helpers::TestApp::spawn(crate::helpers::Backend::Sqlite).await;
    for (path, status, code) in [
        ("/ui/%ff", 400, "bad_request"),
        ("/docs/no-such-file.js", 404, "not_found"),
        ("/no/such/route", 404, "not_found"),
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{path}"
        );
        let body: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
    }
    // The page files and Swagger UI itself are untouched.
    let page = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
}

/// A client that sends a body a little over the limit whatever the answer
/// (as most do: no `Expect: 100-continue`) gets its 413 at once and can send
/// the rest: the service reads and drops it, then closes cleanly. Closing
/// with the body unread would reset the connection, and a reset can destroy
/// the 413 before the client reads it.
#[tokio::test]
async fn a_body_a_little_over_the_limit_is_drained_so_its_413_is_read() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.max_body_bytes = gifts::config::ByteSize(1 << 20);
    })
    .await;
    let body = vec![b' '; (1 << 20) + 1];
    let (answer, mut stream) = exchange(
        &app,
        &format!(
            "POST /imports HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    stream.write_all(&body).await.expect("the body is taken");
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("closed once the body is in");
    assert!(end.is_ok(), "a clean close, not a reset: {end:?}");
    assert!(
        rest.is_empty(),
        "one answer: {}",
        String::from_utf8_lossy(&rest)
    );
}
