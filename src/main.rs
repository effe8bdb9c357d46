//! The `gifts` binary: configuration, logging, then the library's startup
//! (or, with `healthcheck`, one request to a running service's `/health`).

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use gifts::config::{Cli, Command};
use gifts::{healthcheck, startup, telemetry};

/// mimalloc: imports allocate and free millions of small strings; glibc's
/// malloc spent a quarter of a 100,000-citizen import in free/consolidate.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command, config } = Cli::parse();
    if let Some(Command::Healthcheck { timeout_secs }) = command {
        let addr = healthcheck::target(&config.listen)?;
        return healthcheck::check(addr, Duration::from_secs(timeout_secs)).await;
    }
    telemetry::init();
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    startup::run(config, listener, startup::shutdown_signal()).await
}
