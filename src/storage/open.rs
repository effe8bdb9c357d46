//! Which store to open, with its settings as one value, and opening it:
//! the one place that names every backend.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::Storage;
use super::metered::Metered;
use super::postgres::{PostgresAddress, PostgresStorage};
use super::sqlite::{self, SqliteStorage};
use super::tarantool::{TarantoolAddress, TarantoolStorage};
use crate::metrics::Metrics;

/// A backend and its settings (from `--storage` and the flags of that
/// backend; `Config::store` builds it).
#[derive(Debug, Clone)]
pub enum Settings {
    /// The embedded store.
    Sqlite {
        /// The database file (resolved against the working directory at open).
        path: PathBuf,
        /// Reader threads, one read-only connection each.
        readers: usize,
        /// The whole memory budget (`--cache-bytes`): the page caches take their part.
        budget: u64,
    },
    /// A Tarantool server running `tarantool/app.lua`.
    Tarantool {
        /// Where, and as whom.
        address: TarantoolAddress,
        /// How long one call may take.
        timeout: Duration,
        /// Most citizens per transaction when storing an import.
        import_chunk: usize,
        /// Most rows per `SELECT` when reading an import's rows.
        read_page: u32,
        /// The largest request body, which its largest tuple must take.
        largest_body: u64,
    },
    /// A PostgreSQL database (or several hosts of one cluster).
    Postgres {
        /// The libpq URL, parsed.
        address: Box<PostgresAddress>,
        /// How long one request's work may take.
        timeout: Duration,
        /// Connections kept open at most.
        pool_size: usize,
    },
}

impl Settings {
    /// The backend's name in metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Settings::Sqlite { .. } => "sqlite",
            Settings::Tarantool { .. } => "tarantool",
            Settings::Postgres { .. } => "postgres",
        }
    }

    /// What the store's own caches take of the memory budget `budget`
    /// (SQLite's page caches; nothing for a server, whose memory is its own).
    pub fn own_cache_bytes(&self, budget: u64) -> u64 {
        match self {
            Settings::Sqlite { readers, .. } => {
                sqlite::PageCaches::of(budget, *readers).total(*readers)
            }
            Settings::Tarantool { .. } | Settings::Postgres { .. } => 0,
        }
    }
}

/// Opens the store, wrapped in its metrics. A relative SQLite path is
/// resolved against the working directory once, here.
pub async fn open(settings: &Settings, metrics: &Arc<Metrics>) -> anyhow::Result<Arc<dyn Storage>> {
    fn metered<S: Storage>(
        storage: S,
        name: &'static str,
        metrics: &Arc<Metrics>,
    ) -> Arc<dyn Storage> {
        Arc::new(Metered::new(storage, name, Arc::clone(metrics)))
    }
    let name = settings.name();
    Ok(match settings {
        Settings::Sqlite {
            path,
            readers,
            budget,
        } => {
            let path = std::path::absolute(path)
                .with_context(|| format!("resolving {}", path.display()))?;
            let (opened, readers, budget) = (path.clone(), *readers, *budget);
            let sqlite_metrics = Arc::clone(metrics);
            let storage = tokio::task::spawn_blocking(move || {
                SqliteStorage::open_with(
                    &opened,
                    readers,
                    (sqlite::WRITE_QUEUE, sqlite::READ_QUEUE),
                    sqlite::PageCaches::of(budget, readers),
                    &sqlite_metrics,
                )
            })
            .await?
            .with_context(|| {
                format!(
                    "cannot open the SQLite store {} (--storage / GIFTS_STORAGE) as {}",
                    path.display(),
                    process_user()
                )
            })?;
            metered(storage, name, metrics)
        }
        Settings::Tarantool {
            address,
            timeout,
            import_chunk,
            read_page,
            largest_body,
        } => metered(
            TarantoolStorage::connect(
                address,
                *timeout,
                *import_chunk,
                *read_page,
                *largest_body,
                Arc::clone(metrics),
            ),
            name,
            metrics,
        ),
        Settings::Postgres {
            address,
            timeout,
            pool_size,
        } => {
            let storage = PostgresStorage::connect(address, *timeout, *pool_size, metrics)
                .await
                .with_context(|| format!("cannot use the PostgreSQL store {address:?}"))?;
            metered(storage, name, metrics)
        }
    })
}

/// Who this process runs as, for a message about a file it cannot open.
fn process_user() -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return "the current user".into();
    };
    let name = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                (fields.nth(1)? == uid.to_string()).then(|| name.to_owned())
            })
        });
    match name {
        Some(name) => format!("user {name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}
