//! Logging: one `tracing` subscriber, level from `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The filter used when `RUST_LOG` is unset or invalid.
const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber; call once, from `main`. An invalid
/// `RUST_LOG` is reported (and the default used) rather than ignored.
pub fn init() {
    let (filter, problem) = match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => match EnvFilter::builder().parse(value.trim()) {
            Ok(filter) => (filter, None),
            Err(e) => (
                EnvFilter::new(DEFAULT_FILTER),
                Some(format!("{value:?}: {e}")),
            ),
        },
        _ => (EnvFilter::new(DEFAULT_FILTER), None),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Colour codes only for a person at a terminal, never into log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    if let Some(problem) = problem {
        tracing::warn!(
            "ignoring RUST_LOG {problem}; logging at {DEFAULT_FILTER} (syntax: e.g. RUST_LOG=debug or RUST_LOG=info,gifts=debug)"
        );
    }
}
