//! Logging: one `tracing` subscriber, level from `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The filter used when `RUST_LOG` is unset or invalid.
const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber; call once, from `main`. An invalid
/// `RUST_LOG` is reported (and the default used) rather than ignored.
pub fn init(format: LogFormat) {
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    match format {
        // Colour codes only for a person at a terminal, never into log files.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    if let Some(problem) = problem {
        tracing::warn!(
            "ignoring RUST_LOG {problem}; logging at {DEFAULT_FILTER} (syntax: e.g. RUST_LOG=debug or RUST_LOG=info,gifts=debug)"
        );
    }
}
