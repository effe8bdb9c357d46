//! The `gifts` binary: configuration, logging, then the library's startup.

use anyhow::Context;
use clap::Parser;
use gifts::config::Config;
use gifts::{startup, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init();
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    startup::run(config, listener, startup::shutdown_signal()).await
}
