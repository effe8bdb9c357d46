//! The big shapes (`tests/support/shapes.rs`) on each backend: how long each
//! is to store, PATCH and read, and the longest wait of 8 clients working on
//! another import meanwhile. The test `tests/api/shapes.rs` checks the
//! answers; this measures the release build.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyper::Method;
use hyper::body::Bytes;
use serde::Serialize;
use serde_json::json;

use super::support::shapes::big_shapes;
use super::{Args, HttpClient, expect, send, start_server, store_import};

/// One shape on one backend.
#[derive(Debug, Serialize)]
pub struct ShapeTimes {
    backend: String,
    shape: &'static str,
    body_mib: f64,
    import_ms: f64,
    /// The slowest of the shape's PATCHes.
    longest_patch_ms: f64,
    get_citizens_ms: f64,
    get_birthdays_ms: f64,
    get_percentiles_ms: f64,
    /// The longest request of the 8 other clients while this shape ran.
    others_longest_ms: f64,
    others_requests: u64,
    others_5xx: u64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// 8 clients PATCHing and reading import 1 (100 citizens) until `stop`:
/// their longest request, how many, how many 5xx.
async fn others(client: HttpClient, base: String, stop: Arc<AtomicBool>) -> (Duration, u64, u64) {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..8u64 {
        let (client, base, stop) = (client.clone(), base.clone(), Arc::clone(&stop));
        tasks.spawn(async move {
            let (mut longest, mut count, mut failed) = (Duration::ZERO, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                count += 1;
                let (method, url, body) = match count % 3 {
                    0 => (
                        Method::GET,
                        format!("{base}/imports/1/citizens/birthdays"),
                        Bytes::new(),
                    ),
                    1 => (
                        Method::GET,
                        format!("{base}/imports/1/towns/stat/percentile/age"),
                        Bytes::new(),
                    ),
                    _ => (
                        Method::PATCH,
                        format!("{base}/imports/1/citizens/{}", 1 + (c * 13 + count) % 100),
                        Bytes::from(json!({"name": format!("Клиент {c} {count}")}).to_string()),
                    ),
                };
                let started = Instant::now();
                let status = send(&client, method, &url, body).await.map(|(s, _)| s);
                longest = longest.max(started.elapsed());
                if !status.is_ok_and(|s| !s.is_server_error()) {
                    failed += 1;
                }
            }
            (longest, count, failed)
        });
    }
    let mut total = (Duration::ZERO, 0, 0);
    while let Some(Ok((longest, count, failed))) = tasks.join_next().await {
        total = (total.0.max(longest), total.1 + count, total.2 + failed);
    }
    total
}

/// Every shape on `backend`, one after another, each with fresh other clients.
pub async fn run(args: &Args, backend: &str) -> anyhow::Result<Vec<ShapeTimes>> {
    let client: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let shapes = big_shapes();
    let bodies: Vec<Bytes> = shapes
        .iter()
        .map(|s| Bytes::from(json!({ "citizens": s.citizens }).to_string()))
        .collect();
    let largest = bodies.iter().map(Bytes::len).max().unwrap_or(0);
    let running = start_server(args, backend, largest, &client).await?;
    let base = running.base.clone();
    store_import(
        &client,
        &base,
        Bytes::from(gifts::sample::import_body(100, 150, 3)),
    )
    .await?;
    let mut out = Vec::new();
    for (shape, body) in shapes.iter().zip(bodies) {
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(others(client.clone(), base.clone(), Arc::clone(&stop)));
        let body_mib = body.len() as f64 / f64::from(1 << 20);
        let started = Instant::now();
        let (status, answer) =
            send(&client, Method::POST, &format!("{base}/imports"), body).await?;
        let import_ms = ms(started.elapsed());
        expect(status, hyper::StatusCode::CREATED, &answer)?;
        let answer: serde_json::Value = serde_json::from_slice(&answer)?;
        let import = answer["data"]["import_id"].as_i64().unwrap_or_default();
        let mut longest_patch = Duration::ZERO;
        for (id, patch) in &shape.patches {
            let url = format!("{base}/imports/{import}/citizens/{id}");
            let started = Instant::now();
            let (status, answer) =
                send(&client, Method::PATCH, &url, Bytes::from(patch.to_string())).await?;
            longest_patch = longest_patch.max(started.elapsed());
            expect(status, hyper::StatusCode::OK, &answer)?;
        }
        let mut gets = Vec::new();
        for what in [
            "citizens",
            "citizens/birthdays",
            "towns/stat/percentile/age",
        ] {
            let started = Instant::now();
            let (status, answer) = send(
                &client,
                Method::GET,
                &format!("{base}/imports/{import}/{what}"),
                Bytes::new(),
            )
            .await?;
            gets.push(ms(started.elapsed()));
            expect(status, hyper::StatusCode::OK, &answer)?;
        }
        stop.store(true, Ordering::Relaxed);
        let (longest, requests, failed) = load.await?;
        let times = ShapeTimes {
            backend: backend.to_owned(),
            shape: shape.name,
            body_mib,
            import_ms,
            longest_patch_ms: ms(longest_patch),
            get_citizens_ms: gets[0],
            get_birthdays_ms: gets[1],
            get_percentiles_ms: gets[2],
            others_longest_ms: ms(longest),
            others_requests: requests,
            others_5xx: failed,
        };
        eprintln!("[{backend}] {times:?}");
        out.push(times);
    }
    Ok(out)
}

/// The table of every backend's shapes.
pub fn print(reports: &[ShapeTimes]) {
    println!(
        "\n| backend | shape | body MiB | POST ms | longest PATCH ms | GET citizens ms | GET birthdays ms | GET percentiles ms | 8 other clients: longest ms (requests, 5xx) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|");
    for r in reports {
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0} ({}, {}) |",
            r.backend,
            r.shape,
            r.body_mib,
            r.import_ms,
            r.longest_patch_ms,
            r.get_citizens_ms,
            r.get_birthdays_ms,
            r.get_percentiles_ms,
            r.others_longest_ms,
            r.others_requests,
            r.others_5xx
        );
    }
}
