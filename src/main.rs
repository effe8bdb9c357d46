//! The `gifts` binary: configuration, logging, then the library's startup —
//! or one of the client subcommands (`healthcheck`, `import`).

use std::time::Duration;

use anyhow::Context;
use gifts::config::{Cli, Command, TokenAction};
use gifts::{client, healthcheck, startup, telemetry};

/// mimalloc: imports allocate and free millions of small strings; glibc's
/// malloc spent a quarter of a 100,000-citizen import in free/consolidate.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command, config } = Cli::parse_or_exit();
    match command {
        Some(Command::Healthcheck { timeout_secs }) => {
            let addr = healthcheck::target(&config.listen)?;
            // One line on failure, as `import` prints (no cause chain, no backtrace).
            if let Err(e) = healthcheck::check(addr, Duration::from_secs(timeout_secs)).await {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
            Ok(())
        }
        Some(Command::Import {
            file,
            url,
            timeout_secs,
            token,
        }) => {
            let base = match url {
                Some(url) => url,
                None => format!("http://{}", healthcheck::target(&config.listen)?),
            };
            let timeout = Duration::from_secs(timeout_secs);
            let code = client::import(&file, &base, timeout, token.as_deref()).await;
            std::process::exit(code)
        }
        Some(Command::Token {
            action: TokenAction::New { name, scopes },
        }) => {
            let (token, line) = gifts::access::new_token(&name, &scopes)?;
            println!("token for {name} (shown only now; give it to its user):\n{token}\n");
            println!("line for the tokens file (--tokens-file; then SIGHUP or restart):\n{line}");
            Ok(())
        }
        None => {
            telemetry::init(config.log_format);
            let listener = tokio::net::TcpListener::bind(&config.listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {} (--listen / GIFTS_LISTEN)",
                        config.listen
                    )
                })?;
            if let Err(e) = startup::run(config, listener, startup::shutdown_signal()).await {
                // One line, each cause once (a storage error often repeats its own).
                eprintln!("error: {}", one_line(&e));
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// An error and its causes as one line, `what: why: why`, skipping a cause
/// whose text the line already holds.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
