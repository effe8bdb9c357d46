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

backend_tests!(
    a_client_that_never_finishes_its_headers_is_disconnected,
    a_body_that_never_arrives_gets_408,
);
