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
//! ```
//!
//! Every loop is bounded in count and time; all traffic stays on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::json;

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "load/memory.rs"]
mod memory;
#[path = "load/mixed.rs"]
mod mixed;

#[path = "load/shapes.rs"]
mod shapes;

use support::{
    KillOnDrop, PostgresServer, app_lua, free_port, peak_rss_kib, poll, postgres_bin,
    tarantool_command, tarantool_installed,
};

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
    /// fenced, as over a cluster; not in the default), default: each that is installed.
    #[arg(long, value_delimiter = ',')]
    backend: Vec<String>,
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

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Debug, Serialize)]
struct Latency {
    endpoint: String,
    runs: usize,
    min_ms: f64,
    median_ms: f64,
    p99_ms: f64,
}

#[derive(Debug, Serialize)]
struct Throughput {
    endpoint: String,
    clients: usize,
    seconds: f64,
    requests: u64,
    errors: u64,
    per_second: f64,
}

#[derive(Debug, Serialize)]
struct BackendReport {
    backend: String,
    latency: Vec<Latency>,
    throughput: Vec<Throughput>,
    server_peak_rss_mib: f64,
    tarantool_peak_rss_mib: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(args))
}

/// Peak resident set (VmHWM) of a process, in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    peak_rss_kib(pid).map(|kib| kib as f64 / 1024.0)
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    Ok(std::fs::File::create(dir.join(name))?)
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let backends = if args.backend.is_empty() {
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
    let mut reports = Vec::new();
    for backend in &backends {
        reports.push(run_backend(&args, backend, body.clone()).await?);
    }
    print_tables(&args, &reports);
    let report = json!({
        "machine": machine(),
        "citizens": args.citizens,
        "links": args.links,
        "seed": args.seed,
        "import_body_bytes": body.len(),
        "backends": reports,
    });
    write_report(&args.out, &report)?;
    Ok(())
}

/// Writes the JSON report and says where.
fn write_report(out: &Path, report: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(out, serde_json::to_vec_pretty(report)?)?;
    eprintln!("report written to {}", out.display());
    Ok(())
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown", str::trim);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        "cpu_model": model,
        "kernel": kernel.trim(),
    })
}

/// A running server (and its database server), stopped when dropped.
struct Running {
    base: String,
    server: KillOnDrop,
    tarantool: Option<KillOnDrop>,
    _postgres: Option<PostgresServer>,
    _dir: tempfile::TempDir,
}

/// Starts Tarantool (for that backend) and the real `gifts` binary, and
/// waits until it is healthy. `body_len` sizes the limits for the import.
async fn start_server(
    args: &Args,
    backend: &str,
    body_len: usize,
    client: &HttpClient,
) -> anyhow::Result<Running> {
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
        other => bail!("unknown backend {other:?} (sqlite, tarantool, postgres, postgres-fenced)"),
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
        .args(&args.server_arg)
        .envs(args.server_env.iter().filter_map(|kv| kv.split_once('=')))
        .env("RUST_LOG", "info")
        .stdout(log_file(dir.path(), "server.log")?)
        .stderr(log_file(dir.path(), "server.err")?)
        .spawn()
        .context("starting the server")?,
    );
    wait_healthy(client, &base).await?;
    eprintln!("[{backend}] server up at {base}");
    Ok(Running {
        base,
        server,
        tarantool,
        _postgres: postgres,
        _dir: dir,
    })
}

/// The stall phase: while one big import is stored, a single client PATCHes
/// another (small) import without pause; the longest PATCH is how long the
/// import held other writers up.
async fn run_stall(args: &Args, backend: &str, body: Bytes) -> anyhow::Result<Stall> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let running = start_server(args, backend, body.len(), &client).await?;
    let base = &running.base;
    let small = Bytes::from(gifts::sample::import_body(1_000, 100, 9));
    let (status, answer) = send(&client, Method::POST, &format!("{base}/imports"), small).await?;
    expect(status, StatusCode::CREATED, &answer)?;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let patches = {
        let (client, base, done) = (client.clone(), base.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let mut longest = Duration::ZERO;
            let mut count = 0u64;
            while !done.load(Ordering::Relaxed) {
                let url = format!("{base}/imports/1/citizens/{}", count % 1_000);
                let body = Bytes::from(json!({ "name": format!("Стойкий {count}") }).to_string());
                let started = Instant::now();
                let (status, answer) = send(&client, Method::PATCH, &url, body).await?;
                expect(status, StatusCode::OK, &answer)?;
                longest = longest.max(started.elapsed());
                count += 1;
            }
            Ok::<_, anyhow::Error>((longest, count))
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await; // let the PATCH stream settle
    let started = Instant::now();
    let (status, answer) = send(&client, Method::POST, &format!("{base}/imports"), body).await?;
    let import = started.elapsed();
    done.store(true, Ordering::Relaxed);
    expect(status, StatusCode::CREATED, &answer)?;
    let (longest, patches) = patches.await??;
    Ok(Stall {
        backend: backend.to_owned(),
        citizens: args.citizens,
        import_ms: import.as_secs_f64() * 1000.0,
        longest_patch_ms: longest.as_secs_f64() * 1000.0,
        patches,
        server_args: args.server_arg.join(" "),
    })
}

#[derive(Debug, Serialize)]
struct Stall {
    backend: String,
    citizens: u64,
    import_ms: f64,
    longest_patch_ms: f64,
    patches: u64,
    server_args: String,
}

async fn run_backend(args: &Args, backend: &str, body: Bytes) -> anyhow::Result<BackendReport> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let running = start_server(args, backend, body.len(), &client).await?;
    let base = running.base.clone();
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

    for (label, path) in [
        ("GET citizens", "citizens"),
        ("GET birthdays", "citizens/birthdays"),
        ("GET percentiles", "towns/stat/percentile/age"),
    ] {
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

    let server_peak_rss_mib = peak_rss_mib(running.server.0.id()).unwrap_or(f64::NAN);
    let tarantool_peak_rss_mib = running
        .tarantool
        .as_ref()
        .and_then(|t| peak_rss_mib(t.0.id()));
    drop(running);
    Ok(BackendReport {
        backend: backend.to_owned(),
        latency,
        throughput,
        server_peak_rss_mib,
        tarantool_peak_rss_mib,
    })
}

/// A PATCH that replaces a citizen's relatives with two others: it changes up
/// to five citizens' lists (the citizen, the two dropped, the two added).
fn patch_relatives(base: &str, import: i64, n: u64, k: u64) -> (String, Bytes) {
    let mut rng = gifts::sample::Rng::new(k.wrapping_mul(0x9e37_79b9) + 1);
    let id = rng.below(n);
    let relatives: std::collections::BTreeSet<u64> = (0..2).map(|_| rng.below(n)).collect();
    (
        format!("{base}/imports/{import}/citizens/{id}"),
        Bytes::from(json!({ "relatives": relatives }).to_string()),
    )
}

/// POSTs an import (201 expected); its id.
async fn store_import(client: &HttpClient, base: &str, body: Bytes) -> anyhow::Result<i64> {
    let (status, answer) = send(client, Method::POST, &format!("{base}/imports"), body).await?;
    expect(status, StatusCode::CREATED, &answer)?;
    let value: serde_json::Value = serde_json::from_slice(&answer)?;
    value["data"]["import_id"].as_i64().context("import_id")
}

async fn wait_healthy(client: &HttpClient, base: &str) -> anyhow::Result<()> {
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

async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    body: Bytes,
) -> anyhow::Result<(StatusCode, Bytes)> {
    send_with(client, method, url, body, false).await
}

/// `send`, asking for a gzip-compressed answer when `gzip`.
async fn send_with(
    client: &HttpClient,
    method: Method,
    url: &str,
    body: Bytes,
    gzip: bool,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let mut request = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    if gzip {
        request = request.header("accept-encoding", "gzip");
    }
    let request = request.body(Full::new(body))?;
    let response = client.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

fn expect(status: StatusCode, want: StatusCode, body: &[u8]) -> anyhow::Result<()> {
    if status != want {
        bail!(
            "expected {want}, got {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    Ok(())
}

/// Runs `request` up to `runs` times (stopping early after `budget`), timing each.
async fn timed<F, Fut>(runs: usize, budget: Duration, request: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    timed_with_setup(runs, budget, || async { Ok(()) }, request).await
}

/// Like `timed`, with an untimed `setup` before each timed request.
async fn timed_with_setup<S, SF, F, Fut>(
    runs: usize,
    budget: Duration,
    mut setup: S,
    mut request: F,
) -> anyhow::Result<Vec<Duration>>
where
    S: FnMut() -> SF,
    SF: std::future::Future<Output = anyhow::Result<()>>,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let mut samples = Vec::with_capacity(runs);
    while samples.len() < runs && started.elapsed() < budget {
        setup().await?;
        let t = Instant::now();
        request().await?;
        samples.push(t.elapsed());
    }
    Ok(samples)
}

/// `clients` concurrent loops sending `make(client, k)` for `window`.
async fn load<M>(
    label: &str,
    clients: usize,
    window: Duration,
    client: &HttpClient,
    gzip: bool,
    make: M,
) -> Throughput
where
    M: Fn(usize, u64) -> (Method, String, Bytes) + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + window;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (make, done, errors, client) = (
                Arc::clone(&make),
                Arc::clone(&done),
                Arc::clone(&errors),
                client.clone(),
            );
            tokio::spawn(async move {
                let mut k = 0;
                while Instant::now() < deadline {
                    let (method, url, body) = make(c, k);
                    k += 1;
                    let ok = matches!(
                        send_with(&client, method, &url, body, gzip).await,
                        Ok((StatusCode::OK, _))
                    );
                    if ok { &done } else { &errors }.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.ok();
    }
    let seconds = started.elapsed().as_secs_f64();
    let requests = done.load(Ordering::Relaxed);
    Throughput {
        endpoint: label.to_owned(),
        clients,
        seconds,
        requests,
        errors: errors.load(Ordering::Relaxed),
        per_second: requests as f64 / seconds,
    }
}

fn stats(endpoint: &str, mut samples: Vec<Duration>) -> Latency {
    samples.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| {
        // Nearest rank.
        // A rank between 1 and the sample count: the cast cannot wrap.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        ms(samples[rank - 1])
    };
    Latency {
        endpoint: endpoint.to_owned(),
        runs: samples.len(),
        min_ms: samples.first().copied().map_or(f64::NAN, ms),
        median_ms: if samples.is_empty() {
            f64::NAN
        } else {
            at(0.5)
        },
        p99_ms: if samples.is_empty() {
            f64::NAN
        } else {
            at(0.99)
        },
    }
}

fn print_tables(args: &Args, reports: &[BackendReport]) {
    println!(
        "\nimport: {} citizens, {} links, seed {}; latency with 1 client, throughput with {} clients for {} s",
        args.citizens, args.links, args.seed, args.clients, args.duration_secs
    );
    for report in reports {
        println!("\n## {}", report.backend);
        println!("| endpoint | runs | min ms | median ms | p99 ms |");
        println!("|---|---:|---:|---:|---:|");
        for l in &report.latency {
            println!(
                "| {} | {} | {:.2} | {:.2} | {:.2} |",
                l.endpoint, l.runs, l.min_ms, l.median_ms, l.p99_ms
            );
        }
        if !report.throughput.is_empty() {
            println!("\n| endpoint | clients | requests/s | errors |");
            println!("|---|---:|---:|---:|");
            for t in &report.throughput {
                println!(
                    "| {} | {} | {:.0} | {} |",
                    t.endpoint, t.clients, t.per_second, t.errors
                );
            }
        }
        print!("\nserver peak RSS: {:.0} MiB", report.server_peak_rss_mib);
        if let Some(rss) = report.tarantool_peak_rss_mib {
            print!("; tarantool peak RSS: {rss:.0} MiB");
        }
        println!();
    }
    print_ratios(reports);
}

/// Each other backend against the embedded store of the same run: median
/// latency and throughput as multiples (above 1: the other is slower).
fn print_ratios(reports: &[BackendReport]) {
    let Some(base) = reports.iter().find(|r| r.backend == "sqlite") else {
        return;
    };
    for other in reports.iter().filter(|r| r.backend != "sqlite") {
        println!(
            "\n## {} against sqlite (× slower: median latency ratio; sqlite/{} throughput)",
            other.backend, other.backend
        );
        println!("| endpoint | latency × | throughput × |");
        println!("|---|---:|---:|");
        for l in &other.latency {
            let latency = base
                .latency
                .iter()
                .find(|b| b.endpoint == l.endpoint)
                .map_or(f64::NAN, |b| l.median_ms / b.median_ms);
            let throughput = other
                .throughput
                .iter()
                .find(|t| t.endpoint == l.endpoint)
                .and_then(|t| {
                    base.throughput
                        .iter()
                        .find(|b| b.endpoint == t.endpoint)
                        .map(|b| b.per_second / t.per_second)
                });
            match throughput {
                Some(t) => println!("| {} | {latency:.2} | {t:.2} |", l.endpoint),
                None => println!("| {} | {latency:.2} | |", l.endpoint),
            }
        }
        for t in other
            .throughput
            .iter()
            .filter(|t| !other.latency.iter().any(|l| l.endpoint == t.endpoint))
        {
            if let Some(b) = base.throughput.iter().find(|b| b.endpoint == t.endpoint) {
                println!("| {} | | {:.2} |", t.endpoint, b.per_second / t.per_second);
            }
        }
    }
}
