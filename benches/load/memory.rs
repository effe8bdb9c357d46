//! Peak memory of the server under `--cache-bytes` (32 MiB unless
//! `--server-arg` says otherwise): reading 30 imports of 10,000 citizens
//! (every view of each), and GET citizens of one import of 1,000,000, plain
//! and gzipped. The server's peak resident set (VmHWM) is reset before each
//! phase, so each figure is that phase's own; the allocator returns freed
//! memory at once (`MIMALLOC_PURGE_DELAY=0`), so a phase starts from what
//! the server holds.

use std::time::Instant;

use hyper::Method;
use hyper::body::Bytes;
use serde::Serialize;

use super::support::peak_rss_kib;
use super::{Args, HttpClient, expect, send, send_with, start_server, store_import};

/// One phase on one backend.
#[derive(Debug, Serialize)]
pub struct Phase {
    backend: String,
    what: &'static str,
    /// The server's resident set when the phase began.
    rss_before_mib: f64,
    /// Its peak during the phase.
    peak_mib: f64,
    /// Bytes of the answers read in the phase.
    answers_mib: f64,
    seconds: f64,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Resets the peak resident set of `pid` to its current one.
fn reset_peak(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
    Ok(())
}

/// Runs `reads` with the peak reset before, and reports it.
async fn phase<F, Fut>(
    backend: &str,
    name: &'static str,
    pid: u32,
    reads: F,
) -> anyhow::Result<Phase>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<u64>>,
{
    reset_peak(pid)?;
    let before = rss_kib(pid);
    let started = Instant::now();
    let bytes = reads().await?;
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss_kib(pid).unwrap_or(0);
    let phase = Phase {
        backend: backend.to_owned(),
        what: name,
        rss_before_mib: before as f64 / 1024.0,
        peak_mib: peak as f64 / 1024.0,
        answers_mib: mib(bytes),
        seconds,
    };
    eprintln!("[{backend}] {phase:?}");
    Ok(phase)
}

pub async fn run(args: &Args, backend: &str) -> anyhow::Result<Vec<Phase>> {
    let client: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let big = Bytes::from(gifts::sample::import_body(1_000_000, 100_000, 5));
    let mut args = args.clone();
    if !args
        .server_arg
        .iter()
        .any(|a| a.starts_with("--cache-bytes"))
    {
        args.server_arg.push("--cache-bytes=32MiB".into());
    }
    // A limit of just the big body (`start_server` allows twice what it is
    // given): Tarantool's largest tuple (256 MiB) must not be under it.
    let running = start_server(&args, backend, big.len().div_ceil(2), &client).await?;
    let base = &running.base;
    let pid = running.server.0.id();
    let mut imports = Vec::new();
    for seed in 0..30 {
        let body = Bytes::from(gifts::sample::import_body(10_000, 1_000, seed));
        imports.push(store_import(&client, base, body).await?);
    }
    let mut phases = Vec::new();
    phases.push(
        phase(backend, "30 imports of 10k, every view", pid, || async {
            let mut bytes = 0u64;
            for import in &imports {
                for view in [
                    "citizens",
                    "citizens/birthdays",
                    "towns/stat/percentile/age",
                ] {
                    let url = format!("{base}/imports/{import}/{view}");
                    let (status, answer) = send(&client, Method::GET, &url, Bytes::new()).await?;
                    expect(status, hyper::StatusCode::OK, &answer)?;
                    bytes += answer.len() as u64;
                }
            }
            Ok(bytes)
        })
        .await?,
    );
    let started = Instant::now();
    let import = store_import(&client, base, big).await?;
    eprintln!(
        "[{backend}] 1M citizens stored in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let url = format!("{base}/imports/{import}/citizens");
    for (name, gzip) in [
        ("GET citizens of 1M", false),
        ("GET citizens of 1M, gzip", true),
    ] {
        phases.push(
            phase(backend, name, pid, || async {
                let (status, answer) =
                    send_with(&client, Method::GET, &url, Bytes::new(), gzip).await?;
                expect(status, hyper::StatusCode::OK, &answer)?;
                Ok(answer.len() as u64)
            })
            .await?,
        );
    }
    Ok(phases)
}

pub fn print(phases: &[Phase]) {
    println!("\n| backend | phase | RSS before MiB | peak MiB | answers MiB | s |");
    println!("|---|---|---:|---:|---:|---:|");
    for p in phases {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} |",
            p.backend, p.what, p.rss_before_mib, p.peak_mib, p.answers_mib, p.seconds
        );
    }
}
