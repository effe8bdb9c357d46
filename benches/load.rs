//! The load benchmark of the whole service over loopback.
//!
//! Starts the real `gifts` binary (built by cargo for this bench) as a child
//! process, so the server's peak RSS is its own, on the embedded store and,
//! when `tarantool` is installed, on a Tarantool of its own, and when
//! PostgreSQL is installed, on a PostgreSQL server of its own (durable
//! settings: fsync and synchronous commits on); generates a
//! seeded import; measures every endpoint's latency with one client and
//! throughput with several; prints a table and writes a JSON report.
//!
//! ```sh
//! cargo bench --bench load -- --citizens 10000 --links 1000
//! cargo bench --bench load -- --mixed    # the open-model mixed load, rate by rate
//! cargo bench --bench load -- --shapes   # the big valid shapes, store by store
//! cargo bench --bench load -- --memory   # peak RSS reading 30 imports and a 1M GET
//! # side by side with another implementation of the contract, already running:
//! cargo bench --bench load -- --backend sqlite --server-url other=http://127.0.0.1:8080 --rounds 5
//! ```
//!
//! Every loop is bounded in count and time; all traffic stays on 127.0.0.1.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "load/memory.rs"]
mod memory;
#[path = "load/mixed.rs"]
mod mixed;

#[path = "load/shapes.rs"]
mod shapes;

#[path = "load/floor.rs"]
mod floor;
#[path = "load/measure.rs"]
mod measure;
#[path = "load/report.rs"]
mod report;
#[path = "load/server.rs"]
mod server;
#[path = "load/stall.rs"]
mod stall;

use measure::{
    HttpClient, expect, load, patch_relatives, send, send_with, stats, store_import, timed,
    timed_with_setup,
};
use report::{
    BackendReport, load_average, machine, medians, print_rounds, print_tables, write_report,
};
use server::{peak_rss_mib, start_server};
use stall::run_stall;
use support::{postgres_bin, tarantool_installed};

/// Benchmark settings.
#[allow(clippy::struct_excessive_bools)] // command-line switches, one per mode
#[derive(Debug, Clone, Parser)]
#[command(
    name = "load",
    about = "Load benchmark of the gifts service over loopback"
)]
struct Args {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Citizens per import.
    #[arg(long, default_value_t = 10_000)]
    citizens: u64,
    /// Relative links per import (each listed on both sides).
    #[arg(long, default_value_t = 1_000)]
    links: usize,
    /// Seed of the generated import.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Timed requests per read or PATCH endpoint (one client, one after another).
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Timed imports (each stores a new import).
    #[arg(long, default_value_t = 15)]
    post_runs: usize,
    /// Upper bound in seconds for one endpoint's latency loop.
    #[arg(long, default_value_t = 60)]
    max_seconds: u64,
    /// Concurrent clients for the throughput runs.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds of each throughput run (0 skips throughput).
    #[arg(long, default_value_t = 3)]
    duration_secs: u64,
    /// Backends to run: sqlite, tarantool, postgres, postgres-fenced (postgres with reads
    /// fenced, as over a cluster; not in the default), each also as NAME-cold (with
    /// --cache-bytes 0: every answer from the store), default: each that is installed
    /// (none when --server-url is given).
    #[arg(long, value_delimiter = ',')]
    backend: Vec<String>,
    /// An implementation of the same contract that is already running, as NAME=URL
    /// (repeatable), e.g. other=http://127.0.0.1:8080: measured like a backend, between
    /// them. The benchmark stores its imports there; the server's RSS is not measured.
    #[arg(long)]
    server_url: Vec<String>,
    /// Rounds of the default run: every target once per round, in the same order, so
    /// the targets see the same machine; the tables give each figure's median over the
    /// rounds, and each round's load average.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Measure only how long a big import (of --citizens) stalls a concurrent PATCH stream.
    #[arg(long)]
    stall: bool,
    /// Run only the open-model mixed load (see `load/mixed.rs`) at each of --rates.
    #[arg(long)]
    mixed: bool,
    /// Run only the big valid shapes (see `load/shapes.rs`): a hub of 20,000, 140,000
    /// distinct dates in a town, 119,999 relatives near 2^63, NUL in every string.
    #[arg(long)]
    shapes: bool,
    /// Run only the memory phases (see `load/memory.rs`): the server's peak RSS reading 30
    /// imports of 10,000 and GET citizens of 1,000,000, at --cache-bytes 32MiB.
    #[arg(long)]
    memory: bool,
    /// Arrival rates (requests per second) the mixed load steps through.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "50,100,200,400,800,1600,3200"
    )]
    rates: Vec<u64>,
    /// Seconds of the mixed load at each rate.
    #[arg(long, default_value_t = 10)]
    mixed_secs: u64,
    /// Imports (of --citizens) that the mixed load reads and PATCHes.
    #[arg(long, default_value_t = 20)]
    mixed_imports: usize,
    /// An extra flag for the server (repeatable), e.g. --server-arg=--tarantool-import-chunk=2000000.
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// An environment variable for the server (repeatable), e.g. --server-env=MIMALLOC_PURGE_DELAY=0.
    #[arg(long)]
    server_env: Vec<String>,
    /// The gifts binary to run (default: the one cargo built for this bench),
    /// e.g. a copy of an earlier build, to compare two builds on one machine.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Where to write the JSON report (relative to the crate root, where cargo runs benches).
    #[arg(long, default_value = "target/bench-report.json")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(args))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let backends = if args.backend.is_empty() && !args.server_url.is_empty() {
        Vec::new()
    } else if args.backend.is_empty() {
        let mut all = vec!["sqlite".to_owned()];
        if tarantool_installed() {
            all.push("tarantool".to_owned());
        } else {
            eprintln!("tarantool is not installed: not benchmarked");
        }
        if postgres_bin().is_some() {
            all.push("postgres".to_owned());
        } else {
            eprintln!("PostgreSQL is not installed: not benchmarked");
        }
        all
    } else {
        args.backend.clone()
    };
    eprintln!(
        "generating {} citizens with {} links (seed {})",
        args.citizens, args.links, args.seed
    );
    let body = Bytes::from(gifts::sample::import_body(
        args.citizens,
        args.links,
        args.seed,
    ));
    eprintln!(
        "import body: {:.1} MiB",
        body.len() as f64 / f64::from(1 << 20)
    );

    if args.stall {
        println!(
            "\n| backend | citizens | import ms | longest PATCH ms | PATCHes | server flags |"
        );
        println!("|---|---:|---:|---:|---:|---|");
        let mut stalls = Vec::new();
        for backend in &backends {
            let s = run_stall(&args, backend, body.clone()).await?;
            println!(
                "| {} | {} | {:.0} | {:.1} | {} | {} |",
                s.backend, s.citizens, s.import_ms, s.longest_patch_ms, s.patches, s.server_args
            );
            stalls.push(s);
        }
        write_report(&args.out, &json!({"machine": machine(), "stall": stalls}))?;
        return Ok(());
    }
    if args.shapes {
        let mut reports = Vec::new();
        for backend in &backends {
            reports.extend(shapes::run(&args, backend).await?);
        }
        shapes::print(&reports);
        write_report(&args.out, &json!({"machine": machine(), "shapes": reports}))?;
        return Ok(());
    }
    if args.memory {
        let mut phases = Vec::new();
        for backend in &backends {
            phases.extend(memory::run(&args, backend).await?);
        }
        memory::print(&phases);
        write_report(&args.out, &json!({"machine": machine(), "memory": phases}))?;
        return Ok(());
    }
    if args.mixed {
        let mut reports = Vec::new();
        for backend in &backends {
            reports.push(mixed::run(&args, backend, body.clone()).await?);
        }
        mixed::print(&args, &reports);
        write_report(
            &args.out,
            &json!({"machine": machine(), "citizens": args.citizens,
                "links": args.links, "mixed": reports}),
        )?;
        return Ok(());
    }
    let mut targets: Vec<Target> = backends.into_iter().map(Target::Own).collect();
    for named in &args.server_url {
        let (name, url) = named.split_once('=').unwrap_or((named, named));
        targets.push(Target::Url {
            name: name.to_owned(),
            url: url.trim_end_matches('/').to_owned(),
        });
    }
    let floor = floor::measure()?;
    eprintln!(
        "floor: fdatasync {:.3} ms + loopback {:.3} ms = {:.3} ms",
        floor.fsync_ms, floor.loopback_ms, floor.floor_ms
    );
    let mut reports = Vec::new();
    for round in 1..=args.rounds.max(1) {
        for target in &targets {
            let load_before = load_average();
            let mut report = run_backend(&args, target, body.clone()).await?;
            report.round = round;
            report.load_average = [load_before, load_average()];
            reports.push(report);
        }
    }
    let summaries = medians(&reports);
    print_tables(&args, &summaries, &floor);
    if args.rounds > 1 {
        print_rounds(&reports);
    }
    let report = json!({
        "machine": machine(),
        "citizens": args.citizens,
        "links": args.links,
        "seed": args.seed,
        "import_body_bytes": body.len(),
        "floor": floor,
        "rounds": args.rounds.max(1),
        "medians": summaries,
        "backends": reports,
    });
    write_report(&args.out, &report)?;
    Ok(())
}

/// What the default run measures: a backend on a server of its own, or an
/// implementation someone else started.
enum Target {
    Own(String),
    Url { name: String, url: String },
}

async fn run_backend(args: &Args, target: &Target, body: Bytes) -> anyhow::Result<BackendReport> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let (backend, running, base) = match target {
        Target::Own(backend) => {
            let running = start_server(args, backend, body.len(), &client).await?;
            let base = running.base.clone();
            (backend.as_str(), Some(running), base)
        }
        Target::Url { name, url } => {
            // Any answer will do: the contract has no health endpoint. A
            // server started just before gets 30 s to listen.
            let probe = format!("{url}/imports/1/citizens");
            support::poll(Duration::from_secs(30), || async {
                send(&client, Method::GET, &probe, Bytes::new()).await
            })
            .await
            .with_context(|| format!("no answer from {name} at {url} within 30 s"))?;
            eprintln!("[{name}] measuring the server at {url}");
            (name.as_str(), None, url.clone())
        }
    };
    let mut latency = Vec::new();
    let budget = Duration::from_secs(args.max_seconds);

    // POST /imports: every run stores a new import; the last one is read below.
    let last_import = std::sync::atomic::AtomicI64::new(0);
    let samples = timed(args.post_runs, budget, || async {
        let id = store_import(&client, &base, body.clone()).await?;
        last_import.store(id, Ordering::Relaxed);
        Ok(())
    })
    .await?;
    latency.push(stats("POST /imports", samples));
    let import = last_import.load(Ordering::Relaxed);

    let n = args.citizens.max(1);
    let counter = AtomicU64::new(0);
    let patch_name = |id: u64| {
        let k = counter.fetch_add(1, Ordering::Relaxed);
        (
            format!("{base}/imports/{import}/citizens/{id}"),
            Bytes::from(json!({ "name": format!("Бенчмарк {k}") }).to_string()),
        )
    };

    let mut reads = vec![
        ("GET citizens", "citizens"),
        ("GET birthdays", "citizens/birthdays"),
        ("GET percentiles", "towns/stat/percentile/age"),
    ];
    // Beyond the contract: this service's own (another implementation
    // would ignore the query and answer every citizen).
    if running.is_some() {
        reads.push((
            "GET 50 citizens sorted by name",
            "citizens?sort=name&limit=50",
        ));
    }
    for (label, path) in reads {
        let url = format!("{base}/imports/{import}/{path}");
        // Right after a write: the answer is rebuilt from storage.
        let samples = timed_with_setup(
            args.runs,
            budget,
            || async {
                let (url, body) = patch_name(0);
                let (status, answer) = send(&client, Method::PATCH, &url, body).await?;
                expect(status, StatusCode::OK, &answer)
            },
            || async {
                let (status, answer) = send(&client, Method::GET, &url, Bytes::new()).await?;
                expect(status, StatusCode::OK, &answer)
            },
        )
        .await?;
        latency.push(stats(&format!("{label} (after a write)"), samples));
        let samples = timed(args.runs, budget, || async {
            let (status, answer) = send(&client, Method::GET, &url, Bytes::new()).await?;
            expect(status, StatusCode::OK, &answer)
        })
        .await?;
        latency.push(stats(&format!("{label} (unchanged import)"), samples));
    }

    let mut rng = gifts::sample::Rng::new(args.seed);
    let ids: Vec<u64> = (0..args.runs.max(1)).map(|_| rng.below(n)).collect();
    let next = AtomicU64::new(0);
    let samples = timed(args.runs, budget, || async {
        let turn = usize::try_from(next.fetch_add(1, Ordering::Relaxed)).unwrap_or(0);
        let id = ids[turn % ids.len()];
        let (url, body) = patch_name(id);
        let (status, answer) = send(&client, Method::PATCH, &url, body).await?;
        expect(status, StatusCode::OK, &answer)
    })
    .await?;
    latency.push(stats("PATCH name", samples));
    let samples = timed(args.runs, budget, || async {
        let k = next.fetch_add(1, Ordering::Relaxed);
        let (url, body) = patch_relatives(&base, import, n, k);
        let (status, answer) = send(&client, Method::PATCH, &url, body).await?;
        expect(status, StatusCode::OK, &answer)
    })
    .await?;
    latency.push(stats("PATCH relatives", samples));

    let mut throughput = Vec::new();
    if args.duration_secs > 0 {
        let window = Duration::from_secs(args.duration_secs);
        for (label, path, gzip) in [
            ("GET citizens", "citizens", false),
            ("GET citizens (gzip)", "citizens", true),
            ("GET birthdays", "citizens/birthdays", false),
            ("GET percentiles", "towns/stat/percentile/age", false),
        ] {
            let url = Arc::new(format!("{base}/imports/{import}/{path}"));
            throughput.push(
                load(label, args.clients, window, &client, gzip, move |_, _| {
                    (Method::GET, url.to_string(), Bytes::new())
                })
                .await,
            );
        }
        let base_name = Arc::new(base.clone());
        throughput.push(
            load(
                "PATCH name",
                args.clients,
                window,
                &client,
                false,
                move |client, k| {
                    let id = (client as u64 * 7919 + k * 104_729) % n;
                    (
                        Method::PATCH,
                        format!("{base_name}/imports/{import}/citizens/{id}"),
                        Bytes::from(
                            json!({ "name": format!("Нагрузка {client} {k}") }).to_string(),
                        ),
                    )
                },
            )
            .await,
        );
        let base_rel = Arc::new(base.clone());
        throughput.push(
            load(
                "PATCH relatives",
                args.clients,
                window,
                &client,
                false,
                move |client, k| {
                    let (url, body) =
                        patch_relatives(&base_rel, import, n, client as u64 * 1_000_003 + k);
                    (Method::PATCH, url, body)
                },
            )
            .await,
        );
    }

    let server_peak_rss_mib = running.as_ref().and_then(|r| peak_rss_mib(r.server.0.id()));
    let tarantool_peak_rss_mib = running
        .as_ref()
        .and_then(|r| r.tarantool.as_ref())
        .and_then(|t| peak_rss_mib(t.0.id()));
    drop(running);
    Ok(BackendReport {
        backend: backend.to_owned(),
        round: 1,
        load_average: [f64::NAN; 2],
        latency,
        throughput,
        server_peak_rss_mib,
        tarantool_peak_rss_mib,
    })
}
