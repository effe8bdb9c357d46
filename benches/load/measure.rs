//! Requests and their timing: one client after another, or several at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Serialize;
use serde_json::json;

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Latency {
    pub(crate) endpoint: String,
    pub(crate) runs: usize,
    pub(crate) min_ms: f64,
    pub(crate) median_ms: f64,
    pub(crate) p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Throughput {
    pub(crate) endpoint: String,
    pub(crate) clients: usize,
    pub(crate) seconds: f64,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) per_second: f64,
    /// Latency of the answered requests under this load.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// A PATCH that replaces a citizen's relatives with two others: it changes up
/// to five citizens' lists (the citizen, the two dropped, the two added).
pub(crate) fn patch_relatives(base: &str, import: i64, n: u64, k: u64) -> (String, Bytes) {
    let mut rng = gifts::sample::Rng::new(k.wrapping_mul(0x9e37_79b9) + 1);
    let id = rng.below(n);
    let relatives: std::collections::BTreeSet<u64> = (0..2).map(|_| rng.below(n)).collect();
    (
        format!("{base}/imports/{import}/citizens/{id}"),
        Bytes::from(json!({ "relatives": relatives }).to_string()),
    )
}

/// POSTs an import (201 expected); its id.
pub(crate) async fn store_import(
    client: &HttpClient,
    base: &str,
    body: Bytes,
) -> anyhow::Result<i64> {
    let (status, answer) = send(client, Method::POST, &format!("{base}/imports"), body).await?;
    expect(status, StatusCode::CREATED, &answer)?;
    let value: serde_json::Value = serde_json::from_slice(&answer)?;
    value["data"]["import_id"].as_i64().context("import_id")
}

pub(crate) async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    body: Bytes,
) -> anyhow::Result<(StatusCode, Bytes)> {
    send_with(client, method, url, body, false).await
}

/// `send`, asking for a gzip-compressed answer when `gzip`.
pub(crate) async fn send_with(
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

pub(crate) fn expect(status: StatusCode, want: StatusCode, body: &[u8]) -> anyhow::Result<()> {
    if status != want {
        bail!(
            "expected {want}, got {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    Ok(())
}

/// Runs `request` up to `runs` times (stopping early after `budget`), timing each.
pub(crate) async fn timed<F, Fut>(
    runs: usize,
    budget: Duration,
    request: F,
) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    timed_with_setup(runs, budget, || async { Ok(()) }, request).await
}

/// Like `timed`, with an untimed `setup` before each timed request.
pub(crate) async fn timed_with_setup<S, SF, F, Fut>(
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
pub(crate) async fn load<M>(
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
                let mut samples = Vec::new();
                while Instant::now() < deadline {
                    let (method, url, body) = make(c, k);
                    k += 1;
                    let t = Instant::now();
                    let ok = matches!(
                        send_with(&client, method, &url, body, gzip).await,
                        Ok((StatusCode::OK, _))
                    );
                    if ok {
                        samples.push(t.elapsed());
                    }
                    if ok { &done } else { &errors }.fetch_add(1, Ordering::Relaxed);
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.unwrap_or_default());
    }
    let seconds = started.elapsed().as_secs_f64();
    let requests = done.load(Ordering::Relaxed);
    let latency = stats(label, samples);
    Throughput {
        endpoint: label.to_owned(),
        clients,
        seconds,
        requests,
        errors: errors.load(Ordering::Relaxed),
        per_second: requests as f64 / seconds,
        p50_ms: latency.median_ms,
        p99_ms: latency.p99_ms,
    }
}

pub(crate) fn stats(endpoint: &str, mut samples: Vec<Duration>) -> Latency {
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
