//! Wiring: open the store, build the router, serve until the shutdown signal,
//! let in-flight requests finish, close the store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::access::Tokens;
use crate::config::Config;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::reads::Reads;
use crate::reads::cache::ResponseCache;

/// The read cache's part of the memory budget (`--cache-bytes`): all of it,
/// less SQLite's page caches when the store is SQLite (`PageCaches::of`).
pub fn response_cache_bytes(config: &Config) -> u64 {
    let budget = config.cache_bytes.get();
    budget.saturating_sub(config.store().own_cache_bytes(budget))
}

/// The tokens file, if access is restricted; a file that does not parse stops the start.
fn open_tokens(config: &Config) -> anyhow::Result<Option<Arc<Tokens>>> {
    let Some(path) = &config.tokens_file else {
        return Ok(None);
    };
    let tokens = Tokens::load(path)
        .map_err(|e| anyhow::anyhow!("{e:#} (--tokens-file / GIFTS_TOKENS_FILE)"))?;
    if tokens.is_empty() {
        tracing::warn!(path = %path.display(), "the tokens file lists no token: every protected request gets 401");
    }
    Ok(Some(Arc::new(tokens)))
}

/// Reloads the tokens file on SIGHUP; a file that does not parse keeps the
/// old tokens. Without a tokens file, SIGHUP is logged and ignored.
async fn reload_tokens_on_sighup(tokens: Option<Arc<Tokens>>) {
    #[cfg(unix)]
    {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::error!("cannot listen for SIGHUP: the tokens file is read only at start");
            return;
        };
        while hangups.recv().await.is_some() {
            let Some(tokens) = &tokens else {
                tracing::info!("SIGHUP: no --tokens-file to reload");
                continue;
            };
            match tokens.reload() {
                Ok(n) => tracing::info!(tokens = n, "tokens file reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "tokens file not reloaded; the old tokens stay");
                }
            }
        }
    }
}

/// Tells systemd (a `Type=notify` unit) how the service is doing: `READY=1`
/// once it listens, `STOPPING=1` when it shuts down. Does nothing outside
/// systemd (no `NOTIFY_SOCKET`).
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        let path = path.to_string_lossy();
        match path.strip_prefix('@') {
            // An abstract socket (the usual case).
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &address)?;
            }
            None => {
                socket.send_to(state.as_bytes(), path.as_ref())?;
            }
        }
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// How to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Stop accepting at once (Ctrl-C, tests).
    Now,
    /// Keep serving for `--shutdown-drain-secs` with `/readyz` answering 503
    /// (SIGTERM: a load balancer takes the instance out first).
    Drain,
}

/// Serves on `listener` until `shutdown` completes, drains if it says so,
/// then stops accepting, waits for in-flight requests (bounded by the
/// request timeout) and closes the store. The caller binds the listener, so
/// tests can use port 0.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = Shutdown> + Send,
) -> anyhow::Result<()> {
    tracing::info!(
        version = crate::config::VERSION,
        storage = %config.storage,
        "starting gifts"
    );
    // Files first: a start that will fail does not touch the store.
    let tokens = open_tokens(&config)?;
    let metrics = Arc::new(Metrics::default());
    let storage = crate::storage::open(&config.store(), &metrics).await?;
    let state = AppState {
        reads: Arc::new(Reads::new(
            Arc::clone(&storage),
            Arc::new(ResponseCache::new(
                response_cache_bytes(&config),
                Arc::clone(&metrics),
            )),
            // As many cold renders as cores: they are CPU-bound, and each may
            // hold a whole import in memory.
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
        )),
        max_body_bytes: config.max_body_bytes,
        metrics,
        draining: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        tokens,
        trusted_proxies: Arc::new(config.trusted_proxies.0.clone()),
    };
    // SIGHUP reloads the tokens; without tokens it must still not stop the service.
    tokio::spawn(reload_tokens_on_sighup(state.tokens.clone()));
    if let Some(tokens) = &state.tokens {
        tracing::info!(tokens = tokens.len(), "access needs a bearer token");
    } else if !listener.local_addr()?.ip().is_loopback() {
        tracing::warn!(
            address = %listener.local_addr()?,
            "no --tokens-file: anyone who can reach this port can read and change personal data (names, addresses, birth dates); see --tokens-file"
        );
    }
    let draining = Arc::clone(&state.draining);
    let app = http::router(state, config.request_timeout());
    tracing::info!(
        address = %listener.local_addr()?,
        max_body = %config.max_body_bytes,
        cache = %config.cache_bytes,
        "listening"
    );
    notify_systemd("READY=1");

    // hyper directly rather than `axum::serve`, for the header-read timeout.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout());
    let graceful = GracefulShutdown::new();
    let drain = Duration::from_secs(config.shutdown_drain_secs);
    // Ends the accept loop: at once, or after the drain period.
    let stop = async {
        if shutdown.await == Shutdown::Drain && !drain.is_zero() {
            draining.store(true, std::sync::atomic::Ordering::Release);
            tracing::info!(
                seconds = drain.as_secs(),
                "draining: /readyz answers 503, requests are still served"
            );
            tokio::time::sleep(drain).await;
        }
    };
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let service = app.clone().layer(axum::Extension(http::Peer(peer)));
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    notify_systemd("STOPPING=1");
    tracing::info!("shutting down: finishing in-flight requests");
    let grace = config.request_timeout() + Duration::from_secs(1);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish in time");
    }
    storage.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGINT (Ctrl-C: stop now) or SIGTERM (drain first).
pub async fn shutdown_signal() -> Shutdown {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => Shutdown::Now,
        () = terminate => Shutdown::Drain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::ByteSize;

    #[test]
    fn sqlites_page_caches_come_out_of_the_one_budget() {
        let mut config = Config::with_storage("sqlite:x.db".parse().unwrap());
        config.cache_bytes = ByteSize(256 << 20);
        config.sqlite_readers = 4;
        assert_eq!(response_cache_bytes(&config), 192 << 20);
        config.cache_bytes = ByteSize(0);
        assert_eq!(response_cache_bytes(&config), 0, "the read cache off");
        let mut config =
            Config::with_storage("tarantool://gifts:secret@127.0.0.1:3301".parse().unwrap());
        config.cache_bytes = ByteSize(32 << 20);
        assert_eq!(response_cache_bytes(&config), 32 << 20, "all of it");
    }
}
