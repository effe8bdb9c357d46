//! The deployment files (Dockerfiles, docker-compose.yml, the systemd unit)
//! set only settings the real programs read, in forms they accept: each
//! file's environment is handed to the real `gifts` binary (and app.lua's to a
//! real Tarantool), and `/health` must answer through the image's own
//! health-check commands.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gifts::config::{Config, StorageUrl};

use crate::helpers::{Backend, KillOnDrop, TestStore, free_port, tarantool_available};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn is_setting(key: &str) -> bool {
    key.starts_with("GIFTS_") || key == "RUST_LOG"
}

/// `KEY=VALUE` words of a Dockerfile's ENV instructions (not its build ARGs).
fn dockerfile_env(text: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut in_env = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("ENV ") {
            in_env = true;
            collect_settings(rest, &mut env);
        } else if in_env {
            collect_settings(line, &mut env);
        }
        in_env = in_env && line.ends_with('\\');
    }
    env
}

fn collect_settings(words: &str, env: &mut BTreeMap<String, String>) {
    for (key, value) in words
        .split(|c: char| c.is_whitespace() || c == '\\')
        .filter_map(|word| word.split_once('='))
        .filter(|(key, _)| is_setting(key))
    {
        env.insert(key.to_owned(), value.to_owned());
    }
}

/// `Environment=KEY=VALUE` lines of a systemd unit.
fn unit_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The `environment:` map of one service of docker-compose.yml, with
/// `${VAR:-default}` and `${VAR:?message}` resolved from `vars`.
fn compose_env(text: &str, service: &str, vars: &BTreeMap<&str, &str>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let (mut in_service, mut in_env) = (false, false);
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if indent == 2 {
            in_service = trimmed == format!("{service}:");
            in_env = false;
        } else if in_service && indent == 4 {
            in_env = trimmed == "environment:";
        } else if in_service && in_env && indent == 6 {
            let (key, value) = trimmed.split_once(": ").expect("KEY: value");
            env.insert(key.to_owned(), substitute(value.trim_matches('"'), vars));
        }
    }
    env
}

fn substitute(mut value: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = String::new();
    while let Some(start) = value.find("${") {
        out.push_str(&value[..start]);
        let end = value[start..].find('}').expect("closing brace") + start;
        let expr = &value[start + 2..end];
        let name = expr.split([':', '-', '?']).next().unwrap();
        let default = expr.split_once(":-").map(|(_, d)| d);
        match (vars.get(name), default) {
            (Some(v), _) => out.push_str(v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => panic!("{name} is required by docker-compose.yml; give it a value"),
        }
        value = &value[end + 1..];
    }
    out.push_str(value);
    out
}

/// Runs the real binary with `env` until `gifts healthcheck` (the image's
/// HEALTHCHECK) succeeds with the same environment.
fn serve_and_healthcheck(what: &str, env: &BTreeMap<String, String>) {
    let names = Config::env_names();
    for key in env.keys().filter(|k| k.as_str() != "RUST_LOG") {
        assert!(
            names.contains(key),
            "{what} sets {key}, which gifts does not read ({names:?})"
        );
    }
    let binary = env!("CARGO_BIN_EXE_gifts");
    let log = tempfile::NamedTempFile::new().expect("log file");
    // Killed when dropped, also when an assertion below fails.
    let mut server = KillOnDrop(
        Command::new(binary)
            .env_clear()
            .envs(env)
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log file"))
            .spawn()
            .expect("start gifts"),
    );
    let log = || std::fs::read_to_string(log.path()).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let healthy = Command::new(binary)
            .arg("healthcheck")
            .env_clear()
            .envs(env)
            .stderr(Stdio::null())
            .status()
            .expect("run gifts healthcheck")
            .success();
        if healthy {
            break;
        }
        assert!(
            server.0.try_wait().unwrap().is_none(),
            "{what}: gifts exited with this environment:\n{}",
            log()
        );
        assert!(
            Instant::now() < deadline,
            "{what}: /health never answered:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Settings that only make sense in a container, replaced for a local run.
fn localise(mut env: BTreeMap<String, String>, dir: &Path) -> BTreeMap<String, String> {
    let port = free_port();
    let listen = env.get("GIFTS_LISTEN").expect("GIFTS_LISTEN is set");
    assert!(
        listen.ends_with(":8080"),
        "the files listen on 8080: {listen}"
    );
    env.insert("GIFTS_LISTEN".into(), format!("127.0.0.1:{port}"));
    let storage = env
        .get("GIFTS_STORAGE")
        .expect("GIFTS_STORAGE is set")
        .clone();
    if env.contains_key("GIFTS_TOKENS_FILE") {
        // The secret or credential the deployment hands over: here an empty
        // file, so only the open probes answer.
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, "").unwrap();
        env.insert("GIFTS_TOKENS_FILE".into(), tokens.display().to_string());
    }
    if let Some(path) = storage.strip_prefix("sqlite:") {
        assert!(
            path.starts_with("/var/lib/gifts/"),
            "data lives in /var/lib/gifts: {path}"
        );
        env.insert(
            "GIFTS_STORAGE".into(),
            format!("sqlite:{}", dir.join("gifts.db").display()),
        );
    }
    env
}

#[test]
fn the_app_image_and_the_systemd_unit_environments_run_the_real_binary() {
    for (what, env) in [
        ("Dockerfile", dockerfile_env(&read("Dockerfile"))),
        (
            "deploy/gifts.service",
            unit_env(&read("deploy/gifts.service")),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        serve_and_healthcheck(what, &localise(env, dir.path()));
    }
}

#[test]
fn the_compose_file_runs_the_real_binary_against_tarantool_by_service_name() {
    if !tarantool_available("compose_environment") {
        return;
    }
    let store = TestStore::new(Backend::Tarantool);
    let StorageUrl::Tarantool(address) = store.url() else {
        unreachable!()
    };
    let compose = read("docker-compose.yml");
    let vars = BTreeMap::from([("GIFTS_TARANTOOL_USER", address.user.as_str())]);
    // The password secret, as the containers see it: a file.
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("tarantool_password");
    std::fs::write(
        &password_file,
        format!("{}\n", address.password.as_ref().unwrap().expose()),
    )
    .unwrap();
    let with_secret = |mut env: BTreeMap<String, String>| {
        for value in env.values_mut() {
            if value == "/run/secrets/tarantool_password" {
                *value = password_file.display().to_string();
            }
        }
        env
    };

    // The database service's settings are all read by app.lua (or the
    // settings module it reads them with); no password in the environment.
    let app_lua = read("tarantool/app.lua") + &read("tarantool/gifts/settings.lua");
    let db_env = with_secret(compose_env(&compose, "tarantool", &vars));
    assert!(!db_env.is_empty());
    assert!(db_env.contains_key("GIFTS_TARANTOOL_PASSWORD_FILE"));
    for (key, _) in db_env
        .iter()
        .chain(&dockerfile_env(&read("tarantool/Dockerfile")))
    {
        assert!(
            app_lua.contains(&format!("env('{key}'"))
                || app_lua.contains(&format!("bytes('{key}'")),
            "app.lua does not read {key}"
        );
        assert!(
            !key.ends_with("PASSWORD"),
            "a password in the environment: {key}"
        );
    }

    // The app reaches the database as `tarantool:3301`; here that name is the test's Tarantool.
    let mut env = with_secret(compose_env(&compose, "app", &vars));
    let storage = env["GIFTS_STORAGE"].clone();
    assert!(
        !storage.contains(':') || !storage[12..].contains(":@"),
        "{storage}"
    );
    assert!(env.contains_key("GIFTS_STORAGE_PASSWORD_FILE"), "{env:?}");
    assert!(
        storage.contains("@tarantool:3301"),
        "by service name: {storage}"
    );
    env.insert(
        "GIFTS_STORAGE".into(),
        storage.replace("@tarantool:3301", &format!("@{}", address.host_port)),
    );
    let dir = tempfile::tempdir().unwrap();
    serve_and_healthcheck("docker-compose.yml (app)", &localise(env, dir.path()));

    // The Tarantool image's HEALTHCHECK script, with the compose environment.
    let port = address.host_port.rsplit(':').next().unwrap();
    let status = Command::new("tarantool")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tarantool/healthcheck.lua"))
        .envs(&db_env)
        .env("GIFTS_TARANTOOL_LISTEN", port)
        .status()
        .expect("run healthcheck.lua");
    assert!(status.success(), "tarantool/healthcheck.lua failed");
}
