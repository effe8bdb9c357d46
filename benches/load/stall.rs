//! How long a big import stalls a concurrent PATCH stream.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::json;

use super::Args;
use super::measure::{HttpClient, expect, send};
use super::server::start_server;

/// The stall phase: while one big import is stored, a single client PATCHes
/// another (small) import without pause; the longest PATCH is how long the
/// import held other writers up.
pub(crate) async fn run_stall(args: &Args, backend: &str, body: Bytes) -> anyhow::Result<Stall> {
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
pub(crate) struct Stall {
    pub(crate) backend: String,
    pub(crate) citizens: u64,
    pub(crate) import_ms: f64,
    pub(crate) longest_patch_ms: f64,
    pub(crate) patches: u64,
    pub(crate) server_args: String,
}
