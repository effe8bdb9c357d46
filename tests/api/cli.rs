//! The client subcommands of the binary: `gifts import FILE` and `gifts healthcheck`.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::json;

use crate::helpers::{
    Backend, TestApp, citizen, citizen_with, expected_listing, free_port, generate_import,
    spec_example,
};

fn gifts(args: &[&str], stdin: Option<&[u8]>) -> Output {
    gifts_with_env(args, stdin, &[])
}

fn gifts_with_env(args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gifts"))
        .args(args)
        .env_remove("GIFTS_URL")
        .env_remove("GIFTS_LISTEN")
        .env_remove("GIFTS_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gifts");
    let input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        let mut input = input;
        input.write_all(bytes).unwrap();
    }
    child.wait_with_output().expect("gifts ran")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gifts_import_uploads_a_file_or_stdin_and_prints_one_line() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("import.json");
    let citizens = generate_import(10_000, 1_000, 7);
    std::fs::write(&file, json!({ "citizens": citizens }).to_string()).unwrap();
    let base = app.base.clone();

    let path = file.display().to_string();
    let output =
        tokio::task::spawn_blocking(move || gifts(&["import", &path, "--url", &base], None))
            .await
            .unwrap();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(
        stdout.starts_with("import 1: 10,000 citizens stored in "),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(app.citizens(1).await, expected_listing(&citizens));

    let base = app.base.clone();
    let body = json!({ "citizens": spec_example() }).to_string();
    let output = tokio::task::spawn_blocking(move || {
        gifts(&["import", "-", "--url", &base], Some(body.as_bytes()))
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).starts_with("import 2: 3 citizens stored in "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gifts_import_prints_the_services_error_readably_and_fails() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let bad = json!({"citizens": [citizen(1, &[]), citizen_with(2, &[], json!({"birth_date": "31.02.2019"}))]});
    let base = app.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        gifts(
            &["import", "-", "--url", &base],
            Some(bad.to_string().as_bytes()),
        )
    })
    .await
    .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("400 Bad Request (not_a_calendar_date)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("field:   citizens[1].birth_date"),
        "{stderr}"
    );
    assert!(stderr.contains("citizen: 2"), "{stderr}");
    assert!(text(&output.stdout).is_empty());

    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let output = tokio::task::spawn_blocking(move || {
        gifts(
            &["import", "-", "--url", &nowhere],
            Some(b"{\"citizens\": []}"),
        )
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("cannot reach the service"),
        "{}",
        text(&output.stderr)
    );

    let output = gifts(&["import", "/no/such/file.json"], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("cannot read /no/such/file.json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gifts_healthcheck_takes_listen_after_the_subcommand() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let listen = app.base.trim_start_matches("http://").to_owned();
    let output =
        tokio::task::spawn_blocking(move || gifts(&["healthcheck", "--listen", &listen], None))
            .await
            .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    // Nothing listening: one line, what, where and what to check; no cause
    // chain and no backtrace, even when asked for one.
    let dead = format!("127.0.0.1:{}", free_port());
    let output = gifts_with_env(
        &["healthcheck", "--listen", &dead, "--timeout-secs", "2"],
        None,
        &[("RUST_BACKTRACE", "1")],
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert_eq!(
        stderr,
        format!(
            "error: cannot reach the service at {dead}: Connection refused (os error 111); is it running, and is --listen (GIFTS_LISTEN) its address?\n"
        )
    );
}

/// A service with `--tokens-file` answers 401 to an import without a
/// token: the client says how to give one; `--token` and `GIFTS_TOKEN`
/// send it; a token without the `write` scope is told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gifts_import_sends_a_token_from_the_flag_or_the_environment() {
    use gifts::access::{Scope, new_token};
    let dir = tempfile::tempdir().unwrap();
    let (writer, write_line) = new_token("uploader", &[Scope::Write]).unwrap();
    let (reader, read_line) = new_token("analyst", &[Scope::Read]).unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{write_line}\n{read_line}\n")).unwrap();
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.tokens_file = Some(tokens.clone())).await;
    let file = dir.path().join("import.json");
    std::fs::write(&file, json!({ "citizens": spec_example() }).to_string()).unwrap();
    let path = file.display().to_string();
    let base = app.base.clone();
    let run = move |extra: Vec<String>, env: Vec<(String, String)>| {
        let (path, base) = (path.clone(), base.clone());
        tokio::task::spawn_blocking(move || {
            let mut args = vec!["import".to_owned(), path, "--url".to_owned(), base];
            args.extend(extra);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            gifts_with_env(&args, None, &env)
        })
    };

    let output = run(vec![], vec![]).await.unwrap();
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("401"), "{stderr}");
    assert!(
        stderr.contains("--token TOKEN or set GIFTS_TOKEN"),
        "{stderr}"
    );

    let output = run(vec!["--token".into(), reader.clone()], vec![])
        .await
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("403"), "{stderr}");
    assert!(stderr.contains("lacks the `write` scope"), "{stderr}");

    let output = run(vec!["--token".into(), writer.clone()], vec![])
        .await
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).starts_with("import 1: 3 citizens stored in "));

    let output = run(vec![], vec![("GIFTS_TOKEN".into(), writer.clone())])
        .await
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).starts_with("import 2: 3 citizens stored in "));
    let listed = app
        .client
        .get(app.url("/imports/2/citizens"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed).unwrap();
    assert_eq!(listed["data"], json!(spec_example()));
}

/// The client commands' help calls --listen the service's address, not one
/// they listen on.
#[test]
fn client_commands_describe_listen_as_the_services_address() {
    for command in [
        &["import", "--help"][..],
        &["token", "new", "--help"],
        &["healthcheck", "--help"],
    ] {
        let output = gifts(command, None);
        let help = text(&output.stdout);
        assert!(output.status.success(), "{command:?}: {help}");
        assert!(
            !help.contains("Address to listen on"),
            "{command:?}: {help}"
        );
        assert!(
            help.contains("The service's address"),
            "{command:?}: {help}"
        );
    }
}
