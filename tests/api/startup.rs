//! Starting the real binary: every configuration mistake stops it (or, for a
//! database that is down or refuses, is reported at once and retried) with a
//! message that names the setting and the fix; what it starts with is logged.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Backend, Binary, TestStore, free_port, get_json, tarantool_available};

#[tokio::test]
async fn a_relative_data_path_is_created_and_logged_absolute_with_the_version() {
    let cwd = tempfile::tempdir().unwrap();
    let env = [("GIFTS_STORAGE", "sqlite:data/gifts.db")];
    let mut first = Binary::start(&[], &env, Some(cwd.path()));
    first.wait_healthy().await;
    let absolute = cwd.path().join("data/gifts.db");
    let log = first.log();
    assert!(absolute.exists(), "{log}");
    assert!(log.contains("sqlite database created"), "{log}");
    assert!(log.contains(&absolute.display().to_string()), "{log}");
    assert!(log.contains(env!("CARGO_PKG_VERSION")), "{log}");
    assert_eq!(first.terminate(), Some(0), "{}", first.log());

    let mut second = Binary::start(&[], &env, Some(cwd.path()));
    second.wait_healthy().await;
    assert!(
        second.log().contains("sqlite database opened"),
        "{}",
        second.log()
    );
}

#[tokio::test]
async fn a_bare_port_and_sizes_with_units_are_accepted_from_the_environment() {
    let port = free_port().to_string();
    let env = [
        ("GIFTS_LISTEN", port.as_str()),
        ("GIFTS_CACHE_BYTES", "256MiB"),
        ("GIFTS_MAX_BODY_BYTES", "1 MiB"),
    ];
    let mut app = Binary::start(&[], &env, None);
    app.wait_healthy().await;
    let log = app.log();
    assert!(log.contains(&format!("0.0.0.0:{port}")), "{log}");
    assert!(
        log.contains("max_body=1MiB") && log.contains("cache=256MiB"),
        "{log}"
    );
}

/// Starts the binary expecting it to refuse; returns its standard error.
fn refused(args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> String {
    let (code, log) = Binary::start(args, env, cwd).wait_exit();
    assert_ne!(code, Some(0), "gifts started with {args:?} {env:?}:\n{log}");
    log
}

/// Why, flags, environment, texts the message must contain.
type Mistake<'a> = (
    &'a str,
    &'a [&'a str],
    &'a [(&'a str, &'a str)],
    &'a [&'a str],
);

#[test]
fn each_configuration_mistake_names_the_setting_and_the_form_it_expects() {
    let cases: &[Mistake] = &[
        (
            "a size without a known unit, from the environment",
            &[],
            &[("GIFTS_CACHE_BYTES", "lots")],
            &["GIFTS_CACHE_BYTES", "'lots'", "64MiB"],
        ),
        (
            "a size from a flag",
            &["--max-body-bytes", "1.5GiB"],
            &[],
            &["--max-body-bytes", "64MiB"],
        ),
        (
            "a listen address without a port",
            &[],
            &[("GIFTS_LISTEN", "localhost")],
            &["GIFTS_LISTEN", "HOST:PORT"],
        ),
        (
            "a sqlite:// URL",
            &["--storage", "sqlite://data/x.db"],
            &[],
            &["sqlite:PATH", "sqlite:data/gifts.db"],
        ),
        (
            "a storage URL from the environment, its value hidden",
            &[],
            &[("GIFTS_STORAGE", "tarantool://gifts:secret@nowhere")],
            &["GIFTS_STORAGE", "tarantool://USER:PASSWORD@HOST:PORT"],
        ),
    ];
    for (why, args, env, wanted) in cases {
        let log = refused(args, env, None);
        for text in *wanted {
            assert!(log.contains(text), "{why}: no {text:?} in:\n{log}");
        }
        assert!(
            !log.contains("secret"),
            "{why}: the password leaked:\n{log}"
        );
    }
}

#[test]
fn an_unusable_data_path_names_the_absolute_path_and_the_user() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(cwd.path().join("file"), "not a directory").unwrap();
    let log = refused(
        &["--storage", "sqlite:file/gifts.db"],
        &[],
        Some(cwd.path()),
    );
    let absolute = cwd.path().join("file/gifts.db").display().to_string();
    assert!(log.contains(&absolute), "{log}");
    assert!(log.contains("(uid "), "names the user: {log}");
    assert!(log.contains("cannot create the data directory"), "{log}");
    assert!(
        !log.contains("Caused by"),
        "one line, each cause once: {log}"
    );
    assert_eq!(
        log.matches("cannot create the data directory").count(),
        1,
        "each cause once: {log}"
    );
}

#[tokio::test]
async fn an_invalid_rust_log_is_reported_and_the_default_used() {
    let mut app = Binary::start(&[], &[("RUST_LOG", "info,gifts=loud")], None);
    app.wait_healthy().await;
    let log = app.log();
    assert!(log.contains("ignoring RUST_LOG"), "{log}");
    assert!(log.contains("listening"), "logs at info: {log}");
}

#[tokio::test]
async fn a_wrong_tarantool_password_is_one_clear_error_and_health_says_which() {
    if !tarantool_available("wrong_password") {
        return;
    }
    let store = TestStore::new(Backend::Tarantool);
    let wrong = store.flag().replace(":test-password@", ":wrong@");
    let mut app = Binary::start(&["--storage", &wrong], &[], None);
    app.wait_for_log("tarantool refuses the service").await;
    // Every answer is 503; it names the password unless the check itself
    // outlasted the probe's one-second bound (a busy machine: then it says
    // the store did not answer, and a later probe names the cause).
    let mut named = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while named < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "/health never named the password"
        );
        let (status, body) = get_json(&app.base, "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "storage_unavailable");
        let message = body["error"]["message"].as_str().unwrap();
        if message.contains("misconfigured") {
            assert!(message.contains("password"), "{message}");
            named += 1;
        } else {
            assert!(message.contains("did not answer"), "{message}");
        }
    }
    let log = app.log();
    assert_eq!(
        log.matches("tarantool refuses the service").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("wrong@"), "no password in the log: {log}");
}

#[tokio::test]
async fn an_unreachable_tarantool_at_start_is_reported_then_followed_when_it_comes() {
    if !tarantool_available("unreachable_at_start") {
        return;
    }
    let store = TestStore::new(Backend::Tarantool);
    store.kill_server();
    let mut app = Binary::start(&["--storage", &store.flag()], &[], None);
    app.wait_for_log("cannot reach tarantool at start").await;
    let (status, body) = get_json(&app.base, "/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retry later"),
        "{body}"
    );
    assert!(
        !body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/health"),
        "/health's own answer does not point at /health: {body}"
    );
    store.start_server();
    app.wait_healthy().await;
    app.wait_for_log("connected to tarantool").await;
}

#[tokio::test]
async fn each_request_is_logged_once_with_its_cause_and_imports_with_id_and_size() {
    let mut app = Binary::start(&[], &[], None);
    app.wait_healthy().await;
    let client = reqwest::Client::new();
    let body = serde_json::json!({"citizens": crate::helpers::spec_example()}).to_string();
    let response = client
        .post(format!("{}/imports", app.base))
        .header("x-request-id", "import-request")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = client
        .get(format!("{}/imports/9/citizens", app.base))
        .header("x-request-id", "missing-import")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    app.wait_for_log("missing-import").await;
    let log = app.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("import-request"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("import_id=1"), "{}", lines[0]);
    assert!(lines[0].contains("citizens=3"), "{}", lines[0]);
    assert!(lines[0].contains("status=201"), "{}", lines[0]);
    assert_eq!(log.matches("missing-import").count(), 1, "{log}");
    assert!(
        !log.contains("route=/health"),
        "health checks log at debug: {log}"
    );
    assert!(
        !log.contains("\u{1b}["),
        "no colour codes into a file: {log}"
    );
}

#[tokio::test]
async fn an_unavailable_store_gives_one_warning_line_per_request_with_the_cause() {
    if !tarantool_available("one_line_per_503") {
        return;
    }
    let store = TestStore::new(Backend::Tarantool);
    let mut app = Binary::start(&["--storage", &store.flag()], &[], None);
    app.wait_healthy().await;
    store.kill_server();
    let response = reqwest::Client::new()
        .get(format!("{}/imports/1/citizens", app.base))
        .header("x-request-id", "during-outage")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let log = app.wait_for_log("during-outage").await;
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("during-outage"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("WARN") && lines[0].contains("error="),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_request_fields() {
    let mut app = Binary::start(&["--log-format", "json"], &[], None);
    app.wait_healthy().await;
    let response = reqwest::Client::new()
        .post(format!("{}/imports", app.base))
        .header("x-request-id", "json-import")
        .body(serde_json::json!({"citizens": crate::helpers::spec_example()}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let log = app.wait_for_log("json-import").await;
    let mut answered = None;
    for line in log.lines() {
        let event: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if event["span"]["id"] == "json-import" {
            answered = Some(event);
        }
    }
    let event = answered.expect("the request's line");
    assert_eq!(event["fields"]["status"], 201, "{event}");
    assert_eq!(event["span"]["import_id"], 1, "{event}");
    assert_eq!(event["span"]["citizens"], 3, "{event}");
    assert_eq!(event["level"], "INFO", "{event}");
}

#[test]
fn help_never_shows_the_storage_password_from_the_environment() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gifts"))
        .arg("--help")
        .env("GIFTS_STORAGE", "tarantool://gifts:hunter2@db:3301")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("GIFTS_STORAGE"), "{help}");
    assert!(!help.contains("hunter2"), "{help}");
}

#[tokio::test]
async fn after_sigterm_readiness_fails_while_requests_are_still_served_then_it_stops() {
    let mut app = Binary::start(&[], &[("GIFTS_SHUTDOWN_DRAIN_SECS", "2")], None);
    app.wait_healthy().await;
    let (status, body) = get_json(&app.base, "/readyz").await;
    assert_eq!(
        (status, &body["data"]["status"]),
        (StatusCode::OK, &json_str("ready"))
    );
    let (status, _) = get_json(&app.base, "/livez").await;
    assert_eq!(status, StatusCode::OK);

    app.sigterm();
    let draining = crate::support::poll(std::time::Duration::from_secs(10), || async {
        match get_json(&app.base, "/readyz").await {
            (StatusCode::SERVICE_UNAVAILABLE, body) => Ok(body),
            (status, _) => Err(status),
        }
    })
    .await
    .unwrap_or_else(|status| panic!("never draining: /readyz {status}"));
    assert_eq!(draining["error"]["code"], "draining");
    let (status, _) = get_json(&app.base, "/health").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "requests are still served while draining"
    );
    let (code, log) = app.wait_exit();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("draining"), "{log}");
}

fn json_str(s: &str) -> Value {
    Value::String(s.into())
}

#[test]
fn version_names_the_commit() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gifts"))
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.starts_with(&format!("gifts {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    let commit = text
        .split("(commit ")
        .nth(1)
        .unwrap()
        .trim_end()
        .trim_end_matches(')');
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{text}"
    );
}

#[tokio::test]
async fn systemd_is_told_when_the_service_is_ready_and_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    // A socket read with a timeout is not restarted after a signal (other
    // tests' children exiting): read again on EINTR.
    let receive = || {
        let mut message = [0u8; 64];
        loop {
            match socket.recv(&mut message) {
                Ok(n) => return message[..n].to_vec(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("no notification: {e}"),
            }
        }
    };
    let mut app = Binary::start(&[], &[("NOTIFY_SOCKET", path.to_str().unwrap())], None);
    assert_eq!(receive(), b"READY=1");
    app.wait_healthy().await;
    app.sigterm();
    assert_eq!(receive(), b"STOPPING=1");
    assert_eq!(app.wait_exit().0, Some(0));
}

/// A tokens file that cannot be read stops the start before the store is
/// touched (no data directory is made), in one line that leads with it.
#[test]
fn a_missing_tokens_file_is_named_first_and_the_store_is_not_touched() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = format!("sqlite:{}", data.join("gifts.db").display());
    let log = refused(
        &["--tokens-file", "/no/such/tokens", "--storage", &store],
        &[],
        None,
    );
    assert!(
        log.contains("error: cannot read the tokens file /no/such/tokens: No such file"),
        "{log}"
    );
    assert!(!log.contains("Caused by"), "one line: {log}");
    assert!(!data.exists(), "the store was touched:\n{log}");
}

/// A data directory that exists but is not writable is named as such, with
/// the user, in one line (SQLite alone says "unable to open database
/// file"). As root (CI), the binary runs as `nobody`, from a copy it can read.
#[test]
fn a_data_directory_that_is_not_writable_is_named_with_the_user() {
    use std::os::unix::fs::PermissionsExt;
    let root = rustix::process::geteuid().is_root();
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.path().join("gifts");
    std::fs::copy(env!("CARGO_BIN_EXE_gifts"), &bin).unwrap();
    let data = tempfile::tempdir().unwrap();
    // Readable by all, writable by its owner only: not by `nobody`, nor by
    // anyone once the owner's write bit goes.
    let mode = if root { 0o755 } else { 0o555 };
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    let store = format!("sqlite:{}", data.path().join("gifts.db").display());
    let mut command = if root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(&bin);
        c
    } else {
        std::process::Command::new(&bin)
    };
    let out = command
        .args(["--listen", "127.0.0.1:0", "--storage", &store])
        .current_dir(bin_dir.path())
        .output()
        .expect("run gifts");
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the data directory {} is not writable by this user",
            data.path().display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("(uid "), "names the user: {stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "one error line: {stderr}"
    );
    assert!(!stderr.contains("Caused by"), "one line: {stderr}");
}

/// One request on `stream` (HTTP/1.1, keep-alive); its status and whether
/// the service said `Connection: close`. `Err` when no whole answer came.
async fn exchange(
    stream: &mut tokio::net::TcpStream,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, bool)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "PATCH {path} HTTP/1.1\r\nHost: gifts\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        answer.extend_from_slice(&chunk[..n]);
        let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&answer[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if answer.len() < end + 4 + length {
            continue;
        }
        let status = head[9..12].parse().unwrap_or(0);
        return Ok((status, head.contains("\nconnection: close")));
    }
}

/// PATCHes on keep-alive connections through a SIGTERM: while draining
/// every answer says `Connection: close` and the service closes that
/// connection, so no request sent on a connection the service had already
/// answered on goes unanswered. (A fresh connection can still be reset when
/// the listener closes with it in the kernel's accept backlog: never
/// accepted, so never applied; TCP leaves no way around that, and a load
/// balancer stops sending once /readyz says draining.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_draining_answers_close_their_connection_and_none_goes_unanswered() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut app = Binary::start(&[], &[("GIFTS_SHUTDOWN_DRAIN_SECS", "2")], None);
    app.wait_healthy().await;
    let response = reqwest::Client::new()
        .post(format!("{}/imports", app.base))
        .body(serde_json::json!({ "citizens": crate::helpers::spec_example() }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let address = app.base.trim_start_matches("http://").to_owned();
    let sent = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..4)
        .map(|k| {
            let (address, sent) = (address.clone(), Arc::clone(&sent));
            tokio::spawn(async move {
                // (answers saying close, unanswered on a reused connection,
                // unanswered on a fresh one)
                let (mut closing, mut reused_lost, mut fresh_lost) = (0, 0, 0);
                let mut stream: Option<tokio::net::TcpStream> = None;
                let mut fresh = true;
                for n in 0..100_000 {
                    if stream.is_none() {
                        match tokio::net::TcpStream::connect(&address).await {
                            Ok(s) => {
                                stream = Some(s);
                                fresh = true;
                            }
                            // The listener closed: the service is gone.
                            Err(_) => break,
                        }
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    let path = format!("/imports/1/citizens/{}", 1 + k % 3);
                    let body = format!(r#"{{"name": "drain {k} {n}"}}"#);
                    if let Ok((status, close)) =
                        exchange(stream.as_mut().unwrap(), &path, &body).await
                    {
                        assert_eq!(status, 200);
                        fresh = false;
                        if close {
                            closing += 1;
                            stream = None;
                        }
                    } else {
                        if fresh {
                            fresh_lost += 1;
                        } else {
                            reused_lost += 1;
                        }
                        stream = None;
                    }
                }
                (closing, reused_lost, fresh_lost)
            })
        })
        .collect();
    crate::support::poll(std::time::Duration::from_secs(30), || async {
        if sent.load(Ordering::Relaxed) > 100 {
            Ok(())
        } else {
            Err(())
        }
    })
    .await
    .expect("the load runs");
    app.sigterm();
    let (mut closing, mut reused_lost, mut fresh_lost) = (0, 0, 0);
    for task in tasks {
        let (c, r, f) = tokio::time::timeout(std::time::Duration::from_secs(60), task)
            .await
            .expect("the load ends when the service is gone")
            .unwrap();
        closing += c;
        reused_lost += r;
        fresh_lost += f;
    }
    assert!(
        closing > 0,
        "no answer said Connection: close while draining"
    );
    assert_eq!(
        reused_lost, 0,
        "requests on an answered keep-alive connection went unanswered ({fresh_lost} fresh ones were reset at the end)"
    );
    let (code, log) = app.wait_exit();
    assert_eq!(code, Some(0), "{log}");
}

/// A request's log line (JSON format) carries its error code when it
/// failed, the import and the citizen it concerns, and the W3C trace
/// context it came with; and no personal data (names, streets, dates) of
/// the bodies reaches the log.
#[tokio::test]
async fn log_lines_name_the_error_code_the_import_the_citizen_and_the_trace() {
    let mut app = Binary::start(&[], &[("GIFTS_LOG_FORMAT", "json")], None);
    app.wait_healthy().await;
    let client = reqwest::Client::new();
    let base = app.base.clone();
    let citizen = serde_json::json!({
        "citizen_id": 7, "town": "Керчь", "street": "Тайная улица", "building": "1",
        "apartment": 2, "name": "Тайный Житель", "birth_date": "13.06.1971",
        "gender": "female", "relatives": []
    });
    let created = client
        .post(format!("{base}/imports"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "citizens": [citizen] }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let patched = client
        .patch(format!("{base}/imports/1/citizens/7"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "name": "Другое Тайное Имя" }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let refused = client
        .patch(format!("{base}/imports/1/citizens/7"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "birth_date": "31.02.2000" }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let refused: serde_json::Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    let code = refused["error"]["code"].as_str().unwrap().to_owned();
    let missing = client
        .get(format!("{base}/imports/999/citizens"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let log = app.wait_for_log("\"import_id\":999").await;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| l["fields"]["status"].is_u64())
        .collect();
    let line = |status: u64, what: &dyn Fn(&serde_json::Value) -> bool| {
        lines
            .iter()
            .find(|l| l["fields"]["status"] == status && what(&l["span"]))
            .unwrap_or_else(|| panic!("no {status} line as expected in:\n{log}"))
            .clone()
    };
    let ok = line(200, &|s| s["citizen_id"] == 7);
    assert_eq!(ok["span"]["import_id"], 1, "{ok}");
    assert_eq!(ok["span"]["trace_id"], trace, "{ok}");
    assert_eq!(ok["span"]["parent_id"], "00f067aa0ba902b7", "{ok}");
    assert!(ok["span"]["code"].is_null(), "{ok}");
    let bad = line(400, &|s| s["citizen_id"] == 7);
    assert_eq!(bad["span"]["code"], code.as_str(), "{bad}");
    assert_eq!(bad["span"]["import_id"], 1, "{bad}");
    assert!(bad["span"]["trace_id"].is_null(), "{bad}");
    let gone = line(404, &|s| s["import_id"] == 999);
    assert_eq!(gone["span"]["code"], "not_found", "{gone}");
    for private in ["Тайн", "Тайное", "13.06.1971", "31.02.2000", "Керчь"] {
        assert!(!log.contains(private), "{private} in the log:\n{log}");
    }
}
