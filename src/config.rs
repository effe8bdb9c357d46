//! Configuration: defaults < `GIFTS_*` environment < command-line flags.
//!
//! Every value is checked while parsing, so a mistake stops the service at
//! start with a message that names the setting (the flag, or the environment
//! variable when the value came from there) and the form it expects.

use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches, Parser};

use crate::storage::postgres::PostgresAddress;
use crate::storage::tarantool::{Secret as TarantoolSecret, TarantoolAddress};
pub use crate::units::ByteSize;

/// Shown at the end of `gifts --help`.
const AFTER_HELP: &str = "\
Every option can also be set by the environment variable shown beside it; a flag wins.
Sizes take a plain number of bytes or a unit: 64MiB, 512KiB, 1GiB (also kB, MB, GB).

Logging: RUST_LOG sets the log filter (tracing EnvFilter syntax, default `info`),
e.g. RUST_LOG=debug or RUST_LOG=info,gifts::storage=debug.

Without arguments the service listens on 0.0.0.0:8080 and keeps its data in
./data/gifts.db (relative to the working directory).";

/// `0.1.0 (commit 1a2b3c4d5e6f)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("GIFTS_COMMIT"),
    ")"
);

/// The command line: the service (no subcommand), `healthcheck` or `import`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "gifts",
    version = VERSION,
    about = "Gift shop citizen imports and analytics over HTTP",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The service's settings (`--listen` is also read by the subcommands).
    #[command(flatten)]
    pub config: Config,
}

/// Subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Exit 0 when the service at --listen is ready: /readyz answers 200 (container health checks).
    Healthcheck {
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_secs: u64,
    },
    /// Make an access token: prints it once, and the line to add to the tokens file.
    Token {
        /// What to do: only `new` for now.
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Upload an import from a JSON file (or `-` for standard input) to a running service.
    Import {
        /// The file holding `{"citizens": [...]}`, or `-` to read standard input.
        file: PathBuf,
        /// Base URL of the service [default: http://<--listen>, a wildcard host asked on loopback].
        #[arg(long, env = "GIFTS_URL")]
        url: Option<String>,
        /// Seconds to wait for the whole upload and the answer.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_secs: u64,
        /// Access token, sent as `Authorization: Bearer TOKEN`: a service run with
        /// --tokens-file needs one with the `write` scope (`gifts token new`).
        #[arg(long, env = "GIFTS_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

/// `gifts token ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenAction {
    /// A new random token with the given scopes.
    New {
        /// Who or what uses it (one word; logged with every request it makes).
        #[arg(long)]
        name: String,
        /// Comma-separated: read (the GETs), write (POST, PATCH), delete, admin (/metrics).
        #[arg(long, value_parser = crate::access::parse_scopes)]
        scopes: std::vec::Vec<crate::access::Scope>,
    },
}

/// Everything the service can be told at start; checked before anything runs.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// The service's address: where it listens (HOST:PORT, or a bare PORT for all
    /// interfaces), and where healthcheck and import reach it (a wildcard host on loopback).
    #[arg(
        long,
        env = "GIFTS_LISTEN",
        default_value = "0.0.0.0:8080",
        value_parser = parse_listen,
        global = true
    )]
    pub listen: String,

    /// Where data lives: sqlite:PATH (embedded; file and folder created on first start,
    /// a relative PATH is relative to the working directory),
    /// tarantool://USER:PASSWORD@HOST:PORT (a server running tarantool/app.lua) or
    /// postgres://USER:PASSWORD@HOST[:PORT][,HOST2[:PORT]...]/DBNAME[?OPTIONS] (libpq's
    /// URL form; tables created at start; e.g. ?target_session_attrs=read-write).
    #[arg(
        long,
        env = "GIFTS_STORAGE",
        default_value = "sqlite:data/gifts.db",
        hide_env_values = true
    )]
    pub storage: StorageUrl,

    /// Read the store's password from this file instead of the URL (a Docker or systemd
    /// secret), so it is in neither the environment nor the process list: the URL then
    /// names no password (tarantool://USER@HOST:PORT, postgres://USER@HOST/DBNAME). The
    /// whole file is the password, but for one trailing newline.
    #[arg(long, env = "GIFTS_STORAGE_PASSWORD_FILE")]
    pub storage_password_file: Option<PathBuf>,

    /// Largest accepted request body (after gzip decompression); larger bodies get 413.
    #[arg(long, env = "GIFTS_MAX_BODY_BYTES", default_value = "64MiB")]
    pub max_body_bytes: ByteSize,

    /// Seconds a whole request may take, body upload included, before a 408.
    #[arg(long, env = "GIFTS_REQUEST_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_secs: u64,

    /// Seconds a client may take to send the request headers before the connection is closed.
    #[arg(long, env = "GIFTS_HEADER_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_secs: u64,

    /// Reader threads (one read-only connection each) for the SQLite backend.
    #[arg(long, env = "GIFTS_SQLITE_READERS", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub sqlite_readers: u64,

    /// Memory for everything cached, in one budget: SQLite's page caches (a quarter, when the
    /// store is SQLite), then rendered answers and the imports' citizens (with their
    /// aggregates) they are rendered from; 0 disables the read cache (SQLite keeps 2 MiB
    /// plus 1 MiB per reader).
    #[arg(long, env = "GIFTS_CACHE_BYTES", default_value = "256MiB")]
    pub cache_bytes: ByteSize,

    /// Most citizens per Tarantool transaction when storing an import: bigger imports (and
    /// heavy ones: many relatives or summary rows) are stored in chunks, invisible until
    /// the last, so no single write holds other clients up for long.
    #[arg(long, env = "GIFTS_TARANTOOL_IMPORT_CHUNK", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=100_000_000))]
    pub tarantool_import_chunk: u64,

    /// Most rows per Tarantool `SELECT` when reading an import's citizens, presents or town
    /// years (about a millisecond of Tarantool at the default); a bigger import is read in
    /// several, all of one version.
    #[arg(long, env = "GIFTS_TARANTOOL_READ_PAGE", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub tarantool_read_page: u32,

    /// Seconds to keep serving after SIGTERM with /readyz answering 503, so a load balancer
    /// stops sending requests before the service stops accepting them (Ctrl-C: no wait).
    #[arg(long, env = "GIFTS_SHUTDOWN_DRAIN_SECS", default_value_t = 5)]
    pub shutdown_drain_secs: u64,

    /// Log lines as `text` (for people) or `json` (one object per line, for log collectors).
    #[arg(long, env = "GIFTS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Require bearer tokens: the file lists them (NAME SCOPES SHA256 per line; see
    /// `gifts token new`). Without it, anyone who reaches the port may read and change
    /// everything. SIGHUP reloads the file.
    #[arg(long, env = "GIFTS_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// Proxies whose X-Forwarded-For is believed for the client address in the log
    /// (comma-separated IPs, e.g. 127.0.0.1,10.0.0.5); others' is ignored.
    #[arg(long, env = "GIFTS_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: AddressList,

    /// Seconds a Tarantool call may take; then 503 (not applied) or, for a write sent
    /// and unanswered, 504 (it may have been applied).
    #[arg(long, env = "GIFTS_TARANTOOL_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub tarantool_timeout_secs: u64,

    /// Seconds all of one request's PostgreSQL work may take (also the server-side
    /// statement_timeout); then 503 (not applied) or 504 (a commit unanswered).
    #[arg(long, env = "GIFTS_POSTGRES_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub postgres_timeout_secs: u64,

    /// PostgreSQL connections the service keeps open at most.
    #[arg(long, env = "GIFTS_POSTGRES_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub postgres_pool_size: u64,
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

    /// The per-request PostgreSQL budget.
    pub fn postgres_timeout(&self) -> Duration {
        Duration::from_secs(self.postgres_timeout_secs)
    }

    /// The store to open, with the settings of its backend (the flags of
    /// the other backends do not apply).
    pub fn store(&self) -> crate::storage::Settings {
        use crate::storage::Settings;
        match &self.storage {
            StorageUrl::Sqlite(path) => Settings::Sqlite {
                path: path.clone(),
                readers: usize::try_from(self.sqlite_readers).unwrap_or(64),
                budget: self.cache_bytes.get(),
            },
            StorageUrl::Tarantool(address) => Settings::Tarantool {
                address: address.clone(),
                timeout: self.tarantool_timeout(),
                import_chunk: usize::try_from(self.tarantool_import_chunk).unwrap_or(usize::MAX),
                read_page: self.tarantool_read_page,
                largest_body: self.max_body_bytes.get(),
            },
            StorageUrl::Postgres(address) => Settings::Postgres {
                address: address.clone(),
                timeout: self.postgres_timeout(),
                pool_size: usize::try_from(self.postgres_pool_size).unwrap_or(16),
            },
        }
    }

    /// The defaults declared on the flags, with `storage`, for tests and
    /// embedding. The environment is not read (unlike a real start), and
    /// nothing here can exit the process.
    pub fn with_storage(storage: StorageUrl) -> Self {
        let command = Cli::command().mut_args(|arg| arg.env(None));
        let matches = command
            .try_get_matches_from(["gifts"])
            .expect("the declared defaults parse");
        let mut config = Cli::from_arg_matches(&matches)
            .expect("the declared defaults parse")
            .config;
        config.storage = storage;
        config
    }

    /// The `GIFTS_*` environment variables the service reads.
    pub fn env_names() -> Vec<String> {
        fn collect(command: &clap::Command, out: &mut Vec<String>) {
            for arg in command.get_arguments() {
                if let Some(env) = arg.get_env() {
                    let name = env.to_string_lossy().into_owned();
                    if !out.contains(&name) {
                        out.push(name);
                    }
                }
            }
            for sub in command.get_subcommands() {
                collect(sub, out);
            }
        }
        let mut names = Vec::new();
        collect(&Cli::command(), &mut names);
        names
    }
}

impl Cli {
    /// Parses the process's arguments and environment, or exits with a message
    /// that names the setting at fault.
    pub fn parse_or_exit() -> Self {
        Self::parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Like clap's `try_parse_from`, but an invalid value that came from a
    /// `GIFTS_*` environment variable is reported under that variable's name
    /// (clap would name the flag, which the user never typed).
    pub fn parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let mut cli =
            <Self as Parser>::try_parse_from(&args).map_err(|e| name_the_environment(e, &args))?;
        // Only serving opens the store; the subcommands need no password.
        if cli.command.is_none() {
            cli.config
                .read_password_file()
                .map_err(|why| Cli::command().error(ErrorKind::ValueValidation, why))?;
        }
        Ok(cli)
    }
}

impl Config {
    /// Puts the password of `--storage-password-file` into the storage
    /// address; refuses a password given twice or not at all.
    fn read_password_file(&mut self) -> Result<(), String> {
        let setting = "--storage-password-file (GIFTS_STORAGE_PASSWORD_FILE)";
        let Some(path) = &self.storage_password_file else {
            return match &self.storage {
                StorageUrl::Tarantool(address) if address.password.is_none() => Err(format!(
                    "the Tarantool URL names no password: write tarantool://USER:PASSWORD@HOST:PORT or give {setting}"
                )),
                _ => Ok(()),
            };
        };
        let password = std::fs::read_to_string(path)
            .map_err(|e| format!("{setting}: cannot read {}: {e}", path.display()))?;
        let password = password
            .strip_suffix('\n')
            .map_or(password.as_str(), |p| p.strip_suffix('\r').unwrap_or(p));
        if password.is_empty() {
            return Err(format!("{setting}: {} is empty", path.display()));
        }
        match &mut self.storage {
            StorageUrl::Sqlite(_) => Err(format!("{setting}: SQLite has no password")),
            StorageUrl::Tarantool(address) if address.password.is_some() => Err(format!(
                "{setting}: the Tarantool URL has a password too; leave it out of the URL"
            )),
            StorageUrl::Postgres(address) if address.has_password() => Err(format!(
                "{setting}: the PostgreSQL URL has a password too; leave it out of the URL"
            )),
            StorageUrl::Tarantool(address) => {
                address.password = Some(TarantoolSecret::new(password));
                Ok(())
            }
            StorageUrl::Postgres(address) => {
                address.set_password(password);
                Ok(())
            }
        }
    }
}

/// Rewrites a clap value error whose value came from the environment.
fn name_the_environment(error: clap::Error, args: &[OsString]) -> clap::Error {
    if !matches!(
        error.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return error;
    }
    let Some(ContextValue::String(invalid_arg)) = error.get(ContextKind::InvalidArg) else {
        return error;
    };
    let Some(ContextValue::String(value)) = error.get(ContextKind::InvalidValue) else {
        return error;
    };
    // "--cache-bytes <CACHE_BYTES>" → "cache-bytes"
    let Some(long) = invalid_arg
        .split_whitespace()
        .next()
        .and_then(|flag| flag.strip_prefix("--"))
    else {
        return error;
    };
    let command = Cli::command();
    let mut commands = vec![&command];
    commands.extend(command.get_subcommands());
    let Some(env) = commands
        .iter()
        .flat_map(|c| c.get_arguments())
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
    else {
        return error;
    };
    let typed = args.iter().any(|a| {
        let a = a.to_string_lossy();
        a == format!("--{long}") || a.starts_with(&format!("--{long}="))
    });
    if typed || std::env::var_os(env).is_none_or(|v| v.to_string_lossy() != *value) {
        return error;
    }
    let why = std::error::Error::source(&error).map_or_else(
        || "not a valid value".into(),
        std::string::ToString::to_string,
    );
    let shown = if env == "GIFTS_STORAGE" {
        "(hidden)".to_owned()
    } else {
        format!("'{value}'")
    };
    Cli::command().error(
        ErrorKind::ValueValidation,
        format!(
            "invalid value {shown} in the environment variable {} (the setting --{long}): {why}",
            env.to_string_lossy()
        ),
    )
}

/// Comma-separated IP addresses; empty is none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressList(pub Vec<std::net::IpAddr>);

impl FromStr for AddressList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.parse()
                    .map_err(|_| format!("{a:?} is not an IP address (e.g. 127.0.0.1,10.0.0.5)"))
            })
            .collect::<Result<_, _>>()
            .map(AddressList)
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// `HOST:PORT`, or a bare port meaning every interface (`8080` → `0.0.0.0:8080`).
fn parse_listen(value: &str) -> Result<String, String> {
    let expected = "expected HOST:PORT (e.g. 0.0.0.0:8080 or 127.0.0.1:8080) or a port number";
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = value
            .parse()
            .map_err(|_| format!("port {value} is above 65535; {expected}"))?;
        return Ok(format!("0.0.0.0:{port}"));
    }
    match value.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(value.to_owned())
        }
        _ => Err(expected.to_owned()),
    }
}

/// Which backend to use and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// Embedded SQLite database file.
    Sqlite(PathBuf),
    /// A Tarantool server running `tarantool/app.lua`.
    Tarantool(TarantoolAddress),
    /// A PostgreSQL database (the service creates its tables).
    Postgres(Box<PostgresAddress>),
}

impl std::fmt::Display for StorageUrl {
    /// The URL with the password hidden, for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageUrl::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StorageUrl::Tarantool(address) => write!(f, "{address:?}"),
            StorageUrl::Postgres(address) => write!(f, "{address:?}"),
        }
    }
}

impl FromStr for StorageUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("sqlite://") {
            return Err(
                "sqlite:// URLs are not accepted (is the path after // relative \
                 or absolute?): write sqlite:PATH, e.g. sqlite:data/gifts.db (relative to \
                 the working directory) or sqlite:/var/lib/gifts/gifts.db"
                    .into(),
            );
        }
        if let Some(path) = s.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err("sqlite: needs a file path, e.g. sqlite:data/gifts.db".into());
            }
            return Ok(StorageUrl::Sqlite(PathBuf::from(path)));
        }
        if s.starts_with("tarantool://") {
            return s.parse().map(StorageUrl::Tarantool);
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return s.parse().map(|a| StorageUrl::Postgres(Box::new(a)));
        }
        Err(
            "unsupported storage: expected sqlite:PATH, tarantool://USER:PASSWORD@HOST:PORT or postgres://USER:PASSWORD@HOST[:PORT]/DBNAME"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::parse_args(std::iter::once("gifts").chain(args.iter().copied()))
    }

    #[test]
    fn flags_override_defaults() {
        let config = parse(&[
            "--listen",
            "127.0.0.1:9000",
            "--storage",
            "sqlite:/tmp/x.db",
            "--max-body-bytes",
            "1024",
        ])
        .unwrap()
        .config;
        assert_eq!(config.listen, "127.0.0.1:9000");
        assert_eq!(config.storage, StorageUrl::Sqlite("/tmp/x.db".into()));
        assert_eq!(config.max_body_bytes, ByteSize(1024));
    }

    #[test]
    fn every_setting_has_a_gifts_environment_variable() {
        let names = Config::env_names();
        for name in [
            "GIFTS_LISTEN",
            "GIFTS_STORAGE",
            "GIFTS_MAX_BODY_BYTES",
            "GIFTS_CACHE_BYTES",
            "GIFTS_URL",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        assert!(names.iter().all(|n| n.starts_with("GIFTS_")));
    }

    #[test]
    fn defaults_are_the_embedded_store_on_port_8080() {
        let config = parse(&[]).unwrap().config;
        assert_eq!(config.listen, "0.0.0.0:8080");
        assert_eq!(config.storage, StorageUrl::Sqlite("data/gifts.db".into()));
        assert_eq!(config.max_body_bytes, ByteSize(64 << 20));
        assert_eq!(config.cache_bytes, ByteSize(256 << 20));
    }

    #[test]
    fn a_bare_port_listens_on_every_interface() {
        assert_eq!(parse_listen("8080").unwrap(), "0.0.0.0:8080");
        assert_eq!(parse_listen("localhost:81").unwrap(), "localhost:81");
        assert_eq!(parse_listen("[::1]:81").unwrap(), "[::1]:81");
        for bad in ["", "70000", "host", "host:", ":80", "host:x"] {
            let e = parse_listen(bad).unwrap_err();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn healthcheck_and_import_take_listen_after_the_subcommand() {
        let cli = parse(&["healthcheck", "--listen", "127.0.0.1:9"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Healthcheck { .. })));
        assert_eq!(cli.config.listen, "127.0.0.1:9");
        let cli = parse(&["--listen", "9", "import", "x.json"]).unwrap();
        assert_eq!(cli.config.listen, "0.0.0.0:9");
    }

    #[test]
    fn tarantool_urls_carry_credentials_and_hide_the_password() {
        let url: StorageUrl = "tarantool://gifts:p@ss:w@tarantool:3301".parse().unwrap();
        let StorageUrl::Tarantool(address) = &url else {
            panic!("{url}")
        };
        assert_eq!(address.host_port, "tarantool:3301");
        assert_eq!(address.user, "gifts");
        assert_eq!(address.password.as_ref().unwrap().expose(), "p@ss:w");
        assert_eq!(url.to_string(), "tarantool://gifts:***@tarantool:3301");
        assert!(!format!("{url:?}").contains("p@ss"));
    }

    #[test]
    fn postgres_urls_are_shown_and_debugged_without_the_password() {
        let url: StorageUrl =
            "postgresql://gifts:p%40ss@db1,db2:5433/gifts?target_session_attrs=read-write"
                .parse()
                .unwrap();
        let StorageUrl::Postgres(address) = &url else {
            panic!("{url}")
        };
        assert_eq!(address.config().get_password(), Some(&b"p@ss"[..]));
        let shown = "postgres://gifts:***@db1,db2:5433/gifts?target_session_attrs=read-write";
        assert_eq!(url.to_string(), shown);
        assert!(!format!("{url:?}").contains("p%40ss"), "{url:?}");
        let e = "mysql://u:p@h/d".parse::<StorageUrl>().unwrap_err();
        assert!(e.contains("postgres://"), "{e}");
    }

    #[test]
    fn the_password_comes_from_a_file_once_and_never_twice() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        let file_arg = file.to_str().unwrap();
        std::fs::write(&file, "p@ss:w ord\n").unwrap();
        let with_file = |url: &str| parse(&["--storage", url, "--storage-password-file", file_arg]);
        let cli = with_file("tarantool://gifts@tarantool:3301").unwrap();
        let StorageUrl::Tarantool(address) = &cli.config.storage else {
            panic!("{:?}", cli.config.storage)
        };
        assert_eq!(address.password.as_ref().unwrap().expose(), "p@ss:w ord");
        assert!(!format!("{:?}", cli.config).contains("w ord"));
        let cli = with_file("postgres://gifts@db/gifts").unwrap();
        let StorageUrl::Postgres(address) = &cli.config.storage else {
            panic!("{:?}", cli.config.storage)
        };
        assert_eq!(address.config().get_password(), Some(&b"p@ss:w ord"[..]));
        assert_eq!(cli.config.storage.to_string(), "postgres://gifts@db/gifts");

        let refused = |got: Result<Cli, clap::Error>, says: &str| {
            let e = got.unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
            assert!(!e.contains("w ord"), "{e}");
        };
        refused(with_file("tarantool://u:p@h:1"), "password too");
        refused(with_file("postgres://u:p@h/d"), "password too");
        refused(with_file("sqlite:x.db"), "SQLite has no password");
        refused(
            parse(&["--storage", "tarantool://u@h:1"]),
            "names no password",
        );
        let missing = dir.path().join("absent");
        refused(
            parse(&[
                "--storage",
                "tarantool://u@h:1",
                "--storage-password-file",
                missing.to_str().unwrap(),
            ]),
            "cannot read",
        );
        std::fs::write(&file, "\n").unwrap();
        refused(with_file("tarantool://u@h:1"), "is empty");
        // The subcommands open no store, so need no password.
        assert!(parse(&["--storage", "tarantool://u@h:1", "healthcheck"]).is_ok());
    }

    #[test]
    fn bad_storage_urls_are_refused_at_start() {
        assert!("postgres://x".parse::<StorageUrl>().is_err());
        assert!("sqlite:".parse::<StorageUrl>().is_err());
        let e = "sqlite://data/x.db".parse::<StorageUrl>().unwrap_err();
        assert!(e.contains("sqlite:PATH"), "{e}");
        assert!("tarantool://host:3301".parse::<StorageUrl>().is_err());
        assert!("tarantool://u:p@host".parse::<StorageUrl>().is_err());
        assert!("tarantool://u:p@host:port".parse::<StorageUrl>().is_err());
        assert!(parse(&["--request-timeout-secs", "0"]).is_err());
    }

    #[test]
    fn the_help_names_rust_log_and_hides_the_storage_url_from_the_environment() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("RUST_LOG"), "{help}");
        assert!(help.contains("GIFTS_CACHE_BYTES"), "{help}");
    }
}
