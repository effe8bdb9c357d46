//! Configuration: defaults < `GIFTS_*` environment < command-line flags.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

use crate::storage::tarantool::TarantoolAddress;

/// The command line: the service (no subcommand) or `healthcheck`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "gifts",
    version,
    about = "Gift shop citizen imports and analytics over HTTP"
)]
pub struct Cli {
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The service's settings (also read by `healthcheck` for the address).
    #[command(flatten)]
    pub config: Config,
}

/// Subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Exit 0 when the service at `--listen` answers `/health` with 200 (for container health checks).
    Healthcheck {
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
}

/// Everything the service can be told at start; checked before anything runs.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on (HOST:PORT).
    #[arg(long, env = "GIFTS_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,

    /// Where data lives: `sqlite:PATH` (embedded, created on first start) or
    /// `tarantool://USER:PASSWORD@HOST:PORT` (a server running tarantool/app.lua).
    #[arg(long, env = "GIFTS_STORAGE", default_value = "sqlite:data/gifts.db")]
    pub storage: StorageUrl,

    /// Largest accepted request body in bytes; larger bodies get 413.
    #[arg(long, env = "GIFTS_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Seconds a whole request may take, body upload included, before a 408.
    #[arg(long, env = "GIFTS_REQUEST_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_secs: u64,

    /// Seconds a client may take to send the request headers before the connection is closed.
    #[arg(long, env = "GIFTS_HEADER_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_secs: u64,

    /// Reader threads (one read-only connection each) for the SQLite backend.
    #[arg(long, env = "GIFTS_SQLITE_READERS", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub sqlite_readers: u64,

    /// Bytes of rendered read answers to keep in memory (0 disables the cache).
    #[arg(long, env = "GIFTS_CACHE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub cache_bytes: u64,

    /// Seconds a Tarantool call may take before the request fails with 503.
    #[arg(long, env = "GIFTS_TARANTOOL_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub tarantool_timeout_secs: u64,
}

impl Config {
    /// The whole-request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// The header-read timeout.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }

    /// The per-call Tarantool timeout.
    pub fn tarantool_timeout(&self) -> Duration {
        Duration::from_secs(self.tarantool_timeout_secs)
    }

    /// Defaults for everything but the store, for tests and embedding.
    pub fn with_storage(storage: StorageUrl) -> Self {
        let mut config = Cli::parse_from(["gifts"]).config;
        config.storage = storage;
        config
    }

    /// The `GIFTS_*` environment variables the service reads.
    pub fn env_names() -> Vec<String> {
        use clap::CommandFactory;
        Cli::command()
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect()
    }
}

/// Which backend to use and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// Embedded SQLite database file.
    Sqlite(PathBuf),
    /// A Tarantool server running `tarantool/app.lua`.
    Tarantool(TarantoolAddress),
}

impl std::fmt::Display for StorageUrl {
    /// The URL with the password hidden, for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageUrl::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StorageUrl::Tarantool(address) => write!(f, "{address:?}"),
        }
    }
}

impl FromStr for StorageUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err("sqlite: needs a file path, e.g. sqlite:data/gifts.db".into());
            }
            return Ok(StorageUrl::Sqlite(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("tarantool://") {
            let form = "expected tarantool://USER:PASSWORD@HOST:PORT";
            // The host part has no '@', so the last one ends the credentials.
            let (credentials, host_port) = rest.rsplit_once('@').ok_or(form)?;
            let (user, password) = credentials.split_once(':').ok_or(form)?;
            let (host, port) = host_port.rsplit_once(':').ok_or(form)?;
            if user.is_empty() || host.is_empty() || port.parse::<u16>().is_err() {
                return Err(form.into());
            }
            return Ok(StorageUrl::Tarantool(TarantoolAddress {
                host_port: host_port.to_owned(),
                user: user.to_owned(),
                password: password.to_owned(),
            }));
        }
        Err(
            "unsupported storage: expected sqlite:PATH or tarantool://USER:PASSWORD@HOST:PORT"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_defaults() {
        let config = Cli::parse_from([
            "gifts",
            "--listen",
            "127.0.0.1:9000",
            "--storage",
            "sqlite:/tmp/x.db",
            "--max-body-bytes",
            "1024",
        ])
        .config;
        assert_eq!(config.listen, "127.0.0.1:9000");
        assert_eq!(config.storage, StorageUrl::Sqlite("/tmp/x.db".into()));
        assert_eq!(config.max_body_bytes, 1024);
    }

    #[test]
    fn every_setting_has_a_gifts_environment_variable() {
        let names = Config::env_names();
        for name in [
            "GIFTS_LISTEN",
            "GIFTS_STORAGE",
            "GIFTS_MAX_BODY_BYTES",
            "GIFTS_CACHE_BYTES",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        assert!(names.iter().all(|n| n.starts_with("GIFTS_")));
    }

    #[test]
    fn defaults_are_the_embedded_store_on_port_8080() {
        let config = Cli::parse_from(["gifts"]).config;
        assert_eq!(config.listen, "0.0.0.0:8080");
        assert_eq!(config.storage, StorageUrl::Sqlite("data/gifts.db".into()));
        assert_eq!(config.max_body_bytes, 64 << 20);
    }

    #[test]
    fn tarantool_urls_carry_credentials_and_hide_the_password() {
        let url: StorageUrl = "tarantool://gifts:p@ss:w@tarantool:3301".parse().unwrap();
        let StorageUrl::Tarantool(address) = &url else {
            panic!("{url}")
        };
        assert_eq!(address.host_port, "tarantool:3301");
        assert_eq!(address.user, "gifts");
        assert_eq!(address.password, "p@ss:w");
        assert_eq!(url.to_string(), "tarantool://gifts:***@tarantool:3301");
        assert!(!format!("{url:?}").contains("p@ss"));
    }

    #[test]
    fn bad_storage_urls_are_refused_at_start() {
        assert!("postgres://x".parse::<StorageUrl>().is_err());
        assert!("sqlite:".parse::<StorageUrl>().is_err());
        assert!("tarantool://host:3301".parse::<StorageUrl>().is_err());
        assert!("tarantool://u:p@host".parse::<StorageUrl>().is_err());
        assert!("tarantool://u:p@host:port".parse::<StorageUrl>().is_err());
        assert!(Cli::try_parse_from(["gifts", "--request-timeout-secs", "0"]).is_err());
    }
}
