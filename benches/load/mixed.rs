//! The open-model mixed load: requests arrive on a fixed schedule whatever
//! the service's answers do (not one client waiting for the last answer),
//! in the mix a shop's traffic has — per 1,000 requests one import, 50
//! PATCHes and 949 reads spread over the three GETs and 20 imports. Each
//! latency counts from the request's *scheduled* time, so a service that
//! falls behind is charged for the queue it builds (no coordinated
//! omission, as wrk2 measures). The rate steps up until p99 exceeds 50 ms.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use hyper::body::Bytes;
use serde::Serialize;
use serde_json::json;

use super::{Args, HttpClient, expect, patch_relatives, send, start_server, store_import};

/// What a request of the mix is.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Import,
    Patch,
    Citizens,
    Birthdays,
    Percentiles,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Import,
        Kind::Patch,
        Kind::Citizens,
        Kind::Birthdays,
        Kind::Percentiles,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::Import => "POST /imports",
            Kind::Patch => "PATCH citizen",
            Kind::Citizens => "GET citizens",
            Kind::Birthdays => "GET birthdays",
            Kind::Percentiles => "GET percentiles",
        }
    }

    /// The `i`-th request of the schedule: per 1,000, one import, 50
    /// PATCHes, and the 949 reads in turn over the three GETs.
    fn of(i: u64) -> Kind {
        match i % 1_000 {
            0 => Kind::Import,
            r if r % 20 == 10 => Kind::Patch,
            r if r % 3 == 0 => Kind::Citizens,
            r if r % 3 == 1 => Kind::Birthdays,
            _ => Kind::Percentiles,
        }
    }
}

/// Latencies of one endpoint at one rate.
#[derive(Debug, Serialize)]
pub struct EndpointLatency {
    endpoint: &'static str,
    requests: usize,
    errors: usize,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

/// One step of the rate.
#[derive(Debug, Serialize)]
pub struct Step {
    rate: u64,
    seconds: f64,
    /// All requests together.
    all: EndpointLatency,
    endpoints: Vec<EndpointLatency>,
}

/// One backend's run of the mixed load.
#[derive(Debug, Serialize)]
pub struct MixedReport {
    backend: String,
    /// The highest rate whose p99 over all requests stayed within 50 ms.
    best_rate: Option<u64>,
    steps: Vec<Step>,
}

/// The p99 that counts as keeping up.
const P99_BOUND_MS: f64 = 50.0;
/// Requests in flight beyond which the service is taken as overwhelmed.
const MAX_IN_FLIGHT: usize = 4_000;

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank, between 1 and the sample count: the cast cannot wrap.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

fn latency(endpoint: &'static str, samples: &[(Kind, Duration, bool)]) -> EndpointLatency {
    let mut ok: Vec<Duration> = samples.iter().filter(|s| s.2).map(|s| s.1).collect();
    ok.sort_unstable();
    EndpointLatency {
        endpoint,
        requests: samples.len(),
        errors: samples.iter().filter(|s| !s.2).count(),
        p50_ms: percentile(&ok, 0.5),
        p99_ms: percentile(&ok, 0.99),
        p999_ms: percentile(&ok, 0.999),
    }
}

/// Runs the mixed load on `backend` at each rate of `args.rates` in turn,
/// stopping after the first rate that does not keep p99 within 50 ms.
pub async fn run(args: &Args, backend: &str, body: Bytes) -> anyhow::Result<MixedReport> {
    let client: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(usize::MAX)
            .build_http();
    let running = start_server(args, backend, body.len(), &client).await?;
    let base = running.base.clone();
    // The imports that the reads and PATCHes go to.
    let mut imports = Vec::new();
    for _ in 0..args.mixed_imports {
        imports.push(store_import(&client, &base, body.clone()).await?);
    }
    // Every answer rendered once: the run starts from a warm service, and
    // what is cold afterwards is what the PATCHes made so.
    for import in &imports {
        for path in [
            "citizens",
            "citizens/birthdays",
            "towns/stat/percentile/age",
        ] {
            let url = format!("{base}/imports/{import}/{path}");
            let (status, answer) = send(&client, Method::GET, &url, Bytes::new()).await?;
            expect(status, hyper::StatusCode::OK, &answer)?;
        }
    }
    let imports = Arc::new(imports);
    let mut steps = Vec::new();
    let mut best_rate = None;
    let mut next = 0u64; // the schedule continues across steps
    for &rate in &args.rates {
        let window = Duration::from_secs(args.mixed_secs);
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let samples = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        let mut overwhelmed = false;
        for n in 0u32.. {
            let scheduled = started + interval * n;
            if scheduled >= started + window {
                break;
            }
            tokio::time::sleep_until(scheduled.into()).await;
            if in_flight.load(std::sync::atomic::Ordering::Relaxed) >= MAX_IN_FLIGHT {
                overwhelmed = true;
                break;
            }
            let i = next;
            next += 1;
            let kind = Kind::of(i);
            let import =
                imports[usize::try_from(i.wrapping_mul(0x9e37_79b9) % imports.len() as u64)
                    .expect("below the number of imports")];
            let (method, url, request) = match kind {
                Kind::Import => (Method::POST, format!("{base}/imports"), body.clone()),
                Kind::Patch if i.is_multiple_of(2) => {
                    let (url, request) = patch_relatives(&base, import, args.citizens, i);
                    (Method::PATCH, url, request)
                }
                Kind::Patch => (
                    Method::PATCH,
                    format!("{base}/imports/{import}/citizens/{}", i % args.citizens),
                    Bytes::from(json!({ "name": format!("Покупатель {i}") }).to_string()),
                ),
                Kind::Citizens => (
                    Method::GET,
                    format!("{base}/imports/{import}/citizens"),
                    Bytes::new(),
                ),
                Kind::Birthdays => (
                    Method::GET,
                    format!("{base}/imports/{import}/citizens/birthdays"),
                    Bytes::new(),
                ),
                Kind::Percentiles => (
                    Method::GET,
                    format!("{base}/imports/{import}/towns/stat/percentile/age"),
                    Bytes::new(),
                ),
            };
            let (client, samples, in_flight) =
                (client.clone(), Arc::clone(&samples), Arc::clone(&in_flight));
            in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tasks.push(tokio::spawn(async move {
                let ok = matches!(
                    send(&client, method, &url, request).await,
                    Ok((status, _)) if status.is_success()
                );
                // From the scheduled time: waiting to be sent counts.
                let latency = scheduled.elapsed();
                in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                samples.lock().expect("samples").push((kind, latency, ok));
            }));
        }
        for task in tasks {
            task.await.ok();
        }
        let seconds = started.elapsed().as_secs_f64();
        let samples = std::mem::take(&mut *samples.lock().expect("samples"));
        let step = Step {
            rate,
            seconds,
            all: latency("all", &samples),
            endpoints: Kind::ALL
                .iter()
                .map(|k| {
                    let mine: Vec<_> = samples.iter().filter(|s| s.0 == *k).copied().collect();
                    latency(k.label(), &mine)
                })
                .collect(),
        };
        let kept_up = !overwhelmed && step.all.errors == 0 && step.all.p99_ms <= P99_BOUND_MS;
        eprintln!(
            "[{backend}] {rate}/s for {seconds:.1} s: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, {} errors{}",
            step.all.p50_ms,
            step.all.p99_ms,
            step.all.p999_ms,
            step.all.errors,
            if overwhelmed { ", overwhelmed" } else { "" }
        );
        steps.push(step);
        if !kept_up {
            break;
        }
        best_rate = Some(rate);
    }
    drop(running);
    Ok(MixedReport {
        backend: backend.to_owned(),
        best_rate,
        steps,
    })
}

/// The result tables, as Markdown.
pub fn print(args: &Args, reports: &[MixedReport]) {
    println!(
        "\nmixed open-model load: per 1,000 requests 1 import of {} citizens, 50 PATCHes, 949 reads over 3 GETs and {} imports; {} s per rate; latency from the scheduled time",
        args.citizens, args.mixed_imports, args.mixed_secs
    );
    println!("\n| backend | highest rate with p99 ≤ 50 ms |\n|---|---:|");
    for r in reports {
        println!(
            "| {} | {} |",
            r.backend,
            r.best_rate
                .map_or("below the first rate".to_owned(), |b| format!("{b}/s"))
        );
    }
    println!("\n| backend | rate/s | endpoint | requests | errors | p50 ms | p99 ms | p99.9 ms |");
    println!("|---|---:|---|---:|---:|---:|---:|---:|");
    for r in reports {
        for step in &r.steps {
            for e in std::iter::once(&step.all).chain(&step.endpoints) {
                println!(
                    "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
                    r.backend,
                    step.rate,
                    e.endpoint,
                    e.requests,
                    e.errors,
                    e.p50_ms,
                    e.p99_ms,
                    e.p999_ms
                );
            }
        }
    }
}
