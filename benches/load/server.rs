//! The server under test: the real binary, on a store of its own.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};

use super::support::{
    KillOnDrop, PostgresServer, app_lua, free_port, peak_rss_kib, poll, postgres_bin,
    tarantool_command,
};

use super::Args;
use super::measure::HttpClient;
use super::measure::send;

/// Peak resident set (VmHWM) of a process, in MiB.
pub(crate) fn peak_rss_mib(pid: u32) -> Option<f64> {
    peak_rss_kib(pid).map(|kib| kib as f64 / 1024.0)
}

pub(crate) fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    Ok(std::fs::File::create(dir.join(name))?)
}

/// A running server (and its database server), stopped when dropped.
pub(crate) struct Running {
    pub(crate) base: String,
    pub(crate) server: KillOnDrop,
    pub(crate) tarantool: Option<KillOnDrop>,
    pub(crate) _postgres: Option<PostgresServer>,
    pub(crate) _dir: tempfile::TempDir,
}

/// A backend's name with this suffix (`postgres-cold`) runs it with
/// `--cache-bytes 0`: every answer from the store.
pub(crate) const COLD: &str = "-cold";

/// Starts Tarantool (for that backend) and the real `gifts` binary, and
/// waits until it is healthy. `body_len` sizes the limits for the import.
pub(crate) async fn start_server(
    args: &Args,
    target: &str,
    body_len: usize,
    client: &HttpClient,
) -> anyhow::Result<Running> {
    let (backend, cold) = match target.strip_suffix(COLD) {
        Some(backend) => (backend, true),
        None => (target, false),
    };
    let dir = tempfile::tempdir()?;
    let mut tarantool = None;
    let mut postgres = None;
    let storage = match backend {
        "sqlite" => format!("sqlite:{}", dir.path().join("gifts.db").display()),
        "tarantool" => {
            let port = free_port();
            let memory = body_len as u64 * 8 * args.post_runs.max(1) as u64 + (1 << 30);
            let child = tarantool_command(
                &app_lua(),
                port,
                &dir.path().join("tarantool"),
                "bench",
                memory,
            )
            .current_dir(dir.path())
            .stdout(log_file(dir.path(), "tarantool.log")?)
            .stderr(log_file(dir.path(), "tarantool.err")?)
            .spawn()
            .context("starting tarantool")?;
            tarantool = Some(KillOnDrop(child));
            format!("tarantool://gifts:bench@127.0.0.1:{port}")
        }
        "postgres" | "postgres-fenced" => {
            let bin = postgres_bin().context("PostgreSQL is not installed")?;
            // Defaults but for room for the biggest imports' WAL.
            let server = PostgresServer::start_new(&bin, &["max_wal_size=4GB"]);
            let mut url = server.url();
            if backend == "postgres-fenced" {
                // The one server named twice: the service fences every read as
                // it does over a cluster's hosts (docs/high-availability.md).
                let (head, tail) = url.split_once('@').context("a URL with a host")?;
                let host = &tail[..tail.find('/').context("a URL with a database")?];
                url = format!("{head}@{host},{tail}");
            }
            postgres = Some(server);
            url
        }
        other => bail!(
            "unknown backend {other:?} (sqlite, tarantool, postgres, postgres-fenced, each also with {COLD})"
        ),
    };
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let max_body = (body_len * 2).max(64 << 20);
    let server = KillOnDrop(
        Command::new(
            args.server_bin
                .as_deref()
                .unwrap_or(Path::new(env!("CARGO_BIN_EXE_gifts"))),
        )
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--storage", &storage])
        .args(["--max-body-bytes", &max_body.to_string()])
        .args(["--request-timeout-secs", "600"])
        .args(["--tarantool-timeout-secs", "600"])
        .args(["--postgres-timeout-secs", "600"])
        .args(if cold {
            &["--cache-bytes", "0"][..]
        } else {
            &[]
        })
        .args(&args.server_arg)
        .envs(args.server_env.iter().filter_map(|kv| kv.split_once('=')))
        .env("RUST_LOG", "info")
        .stdout(log_file(dir.path(), "server.log")?)
        .stderr(log_file(dir.path(), "server.err")?)
        .spawn()
        .context("starting the server")?,
    );
    wait_healthy(client, &base).await?;
    eprintln!("[{target}] server up at {base}");
    Ok(Running {
        base,
        server,
        tarantool,
        _postgres: postgres,
        _dir: dir,
    })
}

pub(crate) async fn wait_healthy(client: &HttpClient, base: &str) -> anyhow::Result<()> {
    let url = format!("{base}/health");
    poll(Duration::from_secs(60), || async {
        match send(client, Method::GET, &url, Bytes::new()).await {
            Ok((StatusCode::OK, _)) => Ok(()),
            Ok((status, _)) => Err(status.to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .map_err(|last| anyhow::anyhow!("the server did not become healthy within 60 s: {last}"))
}
