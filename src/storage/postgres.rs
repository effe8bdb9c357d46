//! The PostgreSQL backend: the store most teams already run.
//!
//! A pool of connections ([`deadpool_postgres`] over [`tokio_postgres`], no
//! TLS: put the database on a private network or a local socket proxy) to
//! the server the `postgres://` URL names; several hosts with
//! `target_session_attrs=read-write` make a new connection find the
//! primary after a failover.
//!
//! - **Schema** created and migrated at start, under an advisory lock so
//!   several instances starting at once migrate once; `gifts_meta` records
//!   the version and a newer schema than this build knows is refused.
//! - **Imports** are one transaction: the import row (its id from an
//!   identity sequence: increasing, never reused), the citizens by binary
//!   `COPY`, the idempotency key. Two requests with one key are serialised
//!   by a transaction-scoped advisory lock on the key.
//! - **PATCH** is one transaction that first locks the import's row (`FOR
//!   UPDATE`): PATCHes of one import run one after another — no deadlock
//!   and no serialization failure whatever they touch — and PATCHes of
//!   different imports do not wait for each other. The mirroring follows
//!   the contract of [`Storage::patch_citizen`], in two statements whatever
//!   the number of relatives changed.
//! - **Reads** see one consistent state: one statement, or a `REPEATABLE
//!   READ` read-only transaction for an import's version and citizens.
//! - **Failures**: no connection, a lost one, a server shutting down or a
//!   standby → 503 `Unavailable` (the transaction was rolled back: nothing
//!   applied); a write whose `COMMIT` got no answer → 504 `OutcomeUnknown`.
//!   Every request's waits together are bounded by `--postgres-timeout-secs`
//!   (also the server-side `statement_timeout`, which cannot cut a `COMMIT`
//!   short: the service's own bound on the request ends first). The pool
//!   reconnects by itself; a lost or stalled primary is found again through
//!   the URL's hosts, and with several hosts every read is fenced against a
//!   superseded primary ([`super::primary`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool::managed::{Object, Pool as DeadPool, PoolError as DeadPoolError};
use futures_util::TryStreamExt;
use tokio_postgres::Row;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use super::deadline;
use super::pg_text;
use super::primary::{self, ConnectError, HostManager, Hosts};
use super::row::{StoredCitizen, StoredDate};
use super::{
    Idempotency, ImportInfo, Patched, Snapshot, Storage, StorageError, Version, refused, summary_of,
};
use crate::domain::patch::{self, Move, Plan};
use crate::domain::relatives::Edit;
use crate::domain::stats::Birthdays;
use crate::domain::summary::{self, Summary, TownDates};
use crate::domain::{Citizen, CitizenId, CitizenPatch, ImportId};

/// How to reach PostgreSQL: the libpq URL, parsed, and a form of it safe
/// to log (the password replaced by `***`).
#[derive(Clone)]
pub struct PostgresAddress {
    config: tokio_postgres::Config,
    shown: String,
}

impl PostgresAddress {
    /// The connection settings.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

impl PartialEq for PostgresAddress {
    fn eq(&self, other: &Self) -> bool {
        self.shown == other.shown && self.config.get_password() == other.config.get_password()
    }
}

impl Eq for PostgresAddress {}

impl std::fmt::Debug for PostgresAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::str::FromStr for PostgresAddress {
    type Err = String;

    /// `postgres://USER[:PASSWORD]@HOST[:PORT][,HOST2[:PORT]...]/DBNAME[?OPTIONS]`
    /// (`postgresql://` too), as libpq reads it.
    fn from_str(s: &str) -> Result<Self, String> {
        let form =
            "expected postgres://USER:PASSWORD@HOST[:PORT][,HOST[:PORT]...]/DBNAME[?OPTIONS]";
        let Some(rest) = s
            .strip_prefix("postgres://")
            .or_else(|| s.strip_prefix("postgresql://"))
        else {
            return Err(form.into());
        };
        let config: tokio_postgres::Config = s.parse().map_err(|e| format!("{form}: {e}"))?;
        if config.get_hosts().is_empty() {
            return Err(format!("{form}: no host"));
        }
        if config.get_user().is_none_or(str::is_empty) {
            return Err(format!("{form}: no user"));
        }
        if config.get_dbname().is_none_or(str::is_empty) {
            return Err(format!("{form}: no database name"));
        }
        Ok(Self {
            config,
            shown: redact(rest),
        })
    }
}

/// `postgres://` + `rest` with any password replaced by `***`.
fn redact(rest: &str) -> String {
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => format!("{userinfo}@{hosts}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some(("password", _)) => "password=***".to_owned(),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("postgres://{authority}{tail}")
}

/// Schema migrations, in order; `gifts_meta.schema_version` records how
/// many have run.
const MIGRATIONS: &[&str] = &[
    // 1: imports, citizens, idempotency keys.
    "CREATE TABLE imports (
         import_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         created_at timestamptz NOT NULL DEFAULT now(),
         version bigint NOT NULL DEFAULT 1,
         citizens bigint NOT NULL
     );
     CREATE TABLE citizens (
         import_id bigint NOT NULL REFERENCES imports ON DELETE CASCADE,
         citizen_id bigint NOT NULL,
         town text NOT NULL,
         street text NOT NULL,
         building text NOT NULL,
         apartment bigint NOT NULL,
         name text NOT NULL,
         birth_date date NOT NULL,
         gender text NOT NULL,
         relatives bigint[] NOT NULL,
         PRIMARY KEY (import_id, citizen_id)
     );
     CREATE TABLE idempotency_keys (
         key text PRIMARY KEY,
         body_hash bytea NOT NULL,
         import_id bigint NOT NULL REFERENCES imports ON DELETE CASCADE
     );
     CREATE INDEX idempotency_keys_import ON idempotency_keys (import_id);",
    // 2: the analytics summary (`domain::summary`), kept by every write, so
    // a read with nothing in memory costs its answer, not the import.
    // `migrate_once` fills it for the imports already stored.
    // No foreign keys: a check per row would cost an import ~20 ms at 10,000
    // citizens; the delete removes them in its one statement.
    "CREATE TABLE presents (
         import_id bigint NOT NULL,
         month smallint NOT NULL,
         citizen_id bigint NOT NULL,
         presents integer NOT NULL,
         PRIMARY KEY (import_id, month, citizen_id)
     );
     CREATE TABLE town_dates (
         import_id bigint NOT NULL,
         town text NOT NULL,
         dates bytea NOT NULL,
         PRIMARY KEY (import_id, town)
     );",
    // 3: strings are stored escaped (storage/pg_text.rs: NUL, which `text`
    // cannot hold, and the escape U+10FFFF itself); escape any U+10FFFF
    // stored before, so that it reads back as it was sent.
    r"UPDATE citizens SET
         town = replace(town, U&'\+10FFFF', U&'\+10FFFFe'),
         street = replace(street, U&'\+10FFFF', U&'\+10FFFFe'),
         building = replace(building, U&'\+10FFFF', U&'\+10FFFFe'),
         name = replace(name, U&'\+10FFFF', U&'\+10FFFFe')
     WHERE strpos(town || street || building || name, U&'\+10FFFF') > 0;
     UPDATE town_dates SET town = replace(town, U&'\+10FFFF', U&'\+10FFFFe')
     WHERE strpos(town, U&'\+10FFFF') > 0;",
];

/// The migration that adds the summary tables: imports stored before it get
/// theirs computed when it runs.
const SUMMARY_MIGRATION: usize = 2;

/// Types of the presents rows' `COPY` columns.
const PRESENTS_TYPES: [Type; 4] = [Type::INT8, Type::INT2, Type::INT8, Type::INT4];

/// The advisory lock held while migrating (any number, the same for all).
const MIGRATION_LOCK: i64 = 0x6769_6674_7331; // "gifts1"

/// Rows of an import read before they are checked into citizens together.
const ROWS_PER_CHECK: usize = 10_000;

/// The columns of a citizen, in [`read_citizen`]'s order.
const CITIZEN_COLUMNS: &str =
    "citizen_id, town, street, building, apartment, name, birth_date, gender, relatives";

/// How many columns [`CITIZEN_COLUMNS`] names.
const CITIZEN_FIELDS: usize = 9;

/// [`CITIZEN_COLUMNS`] with each name prefixed (a table alias and a dot).
fn prefixed(alias: &str) -> String {
    CITIZEN_COLUMNS
        .split(", ")
        .map(|column| format!("{alias}{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Types of the `COPY` columns: `import_id` and then [`CITIZEN_COLUMNS`].
const COPY_TYPES: [Type; 10] = [
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::DATE,
    Type::TEXT,
    Type::INT8_ARRAY,
];

type Pool = DeadPool<HostManager>;
type PoolError = DeadPoolError<ConnectError>;

/// The PostgreSQL store.
pub struct PostgresStorage {
    pool: Pool,
    hosts: Arc<Hosts>,
    timeout: Duration,
    shown: String,
    /// True once the schema is known to be up to date.
    migrated: AtomicBool,
    closed: AtomicBool,
    /// Set when the database's schema is newer than this build knows.
    newer_schema: AtomicBool,
    /// Set from a refusal (user, password, database, rights) until a success.
    refused: AtomicBool,
    /// False from a write that failed for lack of disk until one succeeds.
    writable: AtomicBool,
}

/// Whether an operation changes data: a write whose commit got no answer
/// may have been applied.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

/// One request's dealings with PostgreSQL.
struct Call {
    /// Set by a write just before it sends `COMMIT`: from then on a failure
    /// leaves the outcome unknown.
    committing: AtomicBool,
    /// Set when the request gave up waiting: its connections may still
    /// have answers on the way, so they are closed rather than reused.
    abandoned: AtomicBool,
    /// Set when its answer is a read (no commit of its own): with several
    /// hosts, it is released only after a fence ([`Hosts::confirm`]).
    fenced: AtomicBool,
    /// The host of its last connection (`usize::MAX`: none yet).
    host: AtomicUsize,
}

impl Default for Call {
    fn default() -> Self {
        Self {
            committing: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            host: AtomicUsize::new(usize::MAX),
        }
    }
}

impl Call {
    /// A call whose answer is a read.
    fn read() -> Self {
        let call = Self::default();
        call.fenced.store(true, Ordering::Release);
        call
    }

    fn host(&self) -> Option<usize> {
        Some(self.host.load(Ordering::Acquire)).filter(|&h| h != usize::MAX)
    }
}

/// A pooled connection of a [`Call`]: back to the pool when dropped,
/// unless the call was abandoned.
struct Conn<'a> {
    object: Option<Object<HostManager>>,
    call: &'a Call,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Object<HostManager>;

    fn deref(&self) -> &Self::Target {
        self.object.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.object.as_mut().expect("held until dropped")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if self.call.abandoned.load(Ordering::Acquire)
            && let Some(object) = self.object.take()
        {
            drop(Object::take(object));
        }
    }
}

/// Why an operation failed, before it is told apart for the client.
enum Fail {
    Pg(tokio_postgres::Error),
    Pool(PoolError),
    Store(StorageError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<PoolError> for Fail {
    fn from(e: PoolError) -> Self {
        Fail::Pool(e)
    }
}

impl From<StorageError> for Fail {
    fn from(e: StorageError) -> Self {
        Fail::Store(e)
    }
}

impl PostgresStorage {
    /// Builds the pool (connections are made when needed) and, if the
    /// server answers, brings the schema up to date. An unreachable server
    /// or one that refuses the user is not an error here — it is logged and
    /// requests get 503 naming it until it answers — but a schema newer
    /// than this build knows is.
    pub async fn connect(
        address: &PostgresAddress,
        timeout: Duration,
        pool_size: usize,
    ) -> Result<Self, StorageError> {
        let mut config = address.config.clone();
        let millis = timeout.as_millis();
        // A statement the service has given up on does not run on: the server
        // cancels it too; a transaction left idle (a client gone) is ended.
        config.options(format!(
            "-c statement_timeout={millis} -c idle_in_transaction_session_timeout={}",
            millis * 2
        ));
        config.connect_timeout(primary::ATTEMPT);
        // A host that vanished (its machine lost, the network cut) is noticed
        // by the kernel: probes after 5 s idle, unacknowledged data given up
        // after 8 s. A stalled server's kernel still answers both; the bounds
        // of `primary` cover that.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(5));
        config.keepalives_interval(Duration::from_secs(1));
        config.keepalives_retries(3);
        config.tcp_user_timeout(Duration::from_secs(8));
        config.application_name("gifts");
        let hosts = Hosts::new(&config);
        // Each host's attempt is bounded by `primary::ATTEMPT`; making one
        // connection may try every host.
        let create = primary::ATTEMPT * u32::try_from(config.get_hosts().len()).unwrap_or(1);
        let pool = Pool::builder(HostManager(Arc::clone(&hosts)))
            .max_size(pool_size.max(1))
            .wait_timeout(Some(timeout))
            .create_timeout(Some(create.min(timeout)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(StorageError::internal)?;
        let storage = Self {
            pool,
            hosts,
            timeout,
            shown: address.shown.clone(),
            migrated: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            newer_schema: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            writable: AtomicBool::new(true),
        };
        match storage.migrate().await {
            Ok(()) => {}
            Err(e) if storage.newer_schema.load(Ordering::Acquire) => return Err(e),
            // Logged by `run`, once until it is fixed.
            Err(StorageError::Misconfigured(_)) => {}
            Err(e) => tracing::warn!(
                store = %storage.shown,
                error = %e,
                "postgresql is not reachable yet: requests get 503 until it is"
            ),
        }
        Ok(storage)
    }

    /// A connection from the pool for `call`.
    async fn conn<'a>(&self, call: &'a Call) -> Result<Conn<'a>, Fail> {
        let object = self.pool.get().await?;
        call.host.store(object.host, Ordering::Release);
        Ok(Conn {
            object: Some(object),
            call,
        })
    }

    /// Brings the schema up to date, once; later calls return at once.
    async fn migrate(&self) -> Result<(), StorageError> {
        if self.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        let call = Call::default();
        let (from, to) = self
            .run(Kind::Write, &call, self.migrate_once(&call))
            .await?;
        self.migrated.store(true, Ordering::Release);
        if from < to {
            tracing::info!(store = %self.shown, from, to, "postgresql schema migrated");
        } else {
            tracing::info!(store = %self.shown, schema_version = to, "postgresql schema up to date");
        }
        Ok(())
    }

    async fn migrate_once(&self, call: &Call) -> Result<(usize, usize), Fail> {
        let mut client = self.conn(call).await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS gifts_meta (
                 only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
                 schema_version integer NOT NULL,
                 probed_at timestamptz
             );
             INSERT INTO gifts_meta (schema_version) VALUES (0) ON CONFLICT DO NOTHING;",
        )
        .await?;
        let row = tx
            .query_one("SELECT schema_version FROM gifts_meta", &[])
            .await?;
        let from = usize::try_from(row.get::<_, i32>(0)).unwrap_or(0);
        let to = MIGRATIONS.len();
        if from > to {
            self.newer_schema.store(true, Ordering::Release);
            return Err(Fail::Store(StorageError::Misconfigured(format!(
                "the database's schema is version {from}, newer than this build of gifts knows ({to}): run a newer gifts"
            ))));
        }
        for (at, sql) in MIGRATIONS.iter().enumerate().skip(from) {
            tx.batch_execute(sql).await?;
            if at + 1 == SUMMARY_MIGRATION {
                let imports = tx.query("SELECT import_id FROM imports", &[]).await?;
                let read = format!(
                    "SELECT {CITIZEN_COLUMNS} FROM citizens WHERE import_id = $1 ORDER BY citizen_id"
                );
                for row in imports {
                    let import = import_id(row.get(0))?;
                    let citizens = tx
                        .query(&read, &[&import.get()])
                        .await?
                        .iter()
                        .map(read_citizen)
                        .collect::<Result<Vec<_>, _>>()?;
                    insert_summary(&tx, import, &Summary::of(&citizens)).await?;
                }
            }
        }
        let version = i32::try_from(to).map_err(StorageError::internal)?;
        tx.execute("UPDATE gifts_meta SET schema_version = $1", &[&version])
            .await?;
        call.committing.store(true, Ordering::Release);
        tx.commit().await?;
        Ok((from, to))
    }

    /// Runs `op` within the request's remaining budget and tells its
    /// failure apart (see [`Call`]).
    async fn run<T>(
        &self,
        kind: Kind,
        call: &Call,
        op: impl Future<Output = Result<T, Fail>>,
    ) -> Result<T, StorageError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Unavailable("the store is closed".into()));
        }
        let budget = deadline::remaining(self.timeout);
        let mut op = Box::pin(op);
        let Ok(result) = tokio::time::timeout(budget, &mut op).await else {
            // Its connections may still get answers: closed, not reused.
            call.abandoned.store(true, Ordering::Release);
            drop(op);
            if let Some(host) = call.host()
                && self.hosts.fencing()
            {
                // Slow, or stalled? A fence tells, and forsakes a stalled host.
                let hosts = Arc::clone(&self.hosts);
                tokio::spawn(async move { hosts.confirm(host).await });
            }
            let why = format!("postgresql: no answer within {budget:?}");
            return Err(
                if kind == Kind::Write && call.committing.load(Ordering::Acquire) {
                    StorageError::OutcomeUnknown(why)
                } else {
                    StorageError::Unavailable(why)
                },
            );
        };
        let error = match result {
            Ok(value) => {
                self.fence(call).await?;
                if self.refused.swap(false, Ordering::AcqRel) {
                    tracing::info!(store = %self.shown, "postgresql accepts the service again");
                }
                if kind == Kind::Write && !self.writable.swap(true, Ordering::AcqRel) {
                    tracing::info!(store = %self.shown, "postgresql takes writes again");
                }
                return Ok(value);
            }
            Err(Fail::Store(e)) => e,
            Err(Fail::Pool(e)) => pool_error(e, kind, call.committing.load(Ordering::Acquire)),
            Err(Fail::Pg(e)) => {
                if e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION)
                    && let Some(host) = call.host()
                {
                    // A standby now: its connections are of no use.
                    self.hosts.forsake(host);
                }
                pg_error(&e, kind, call.committing.load(Ordering::Acquire))
            }
        };
        if matches!(error, StorageError::Misconfigured(_))
            && !self.newer_schema.load(Ordering::Acquire)
            && !self.refused.swap(true, Ordering::AcqRel)
        {
            tracing::error!(store = %self.shown, error = %error, "postgresql refuses the service: requests get 503 until that is fixed");
        }
        if matches!(error, StorageError::Full(_)) && self.writable.swap(false, Ordering::AcqRel) {
            tracing::error!(store = %self.shown, error = %error, "postgresql has no room: writes get 507 until it does");
        }
        Err(error)
    }

    /// With several hosts, waits until the host that served `call`'s read
    /// is proven to be the primary still (see [`super::primary`]).
    async fn fence(&self, call: &Call) -> Result<(), StorageError> {
        if !self.hosts.fencing() || !call.fenced.load(Ordering::Acquire) {
            return Ok(());
        }
        let Some(host) = call.host() else {
            return Ok(());
        };
        let left = deadline::remaining(self.timeout);
        match tokio::time::timeout(left, self.hosts.confirm(host)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(StorageError::Unavailable(format!("postgresql: {why}"))),
            Err(_) => Err(StorageError::Unavailable(format!(
                "postgresql: {} did not confirm it is still the primary within {left:?}",
                self.hosts.name(host)
            ))),
        }
    }

    /// The schema, then `op`.
    async fn call<T>(
        &self,
        kind: Kind,
        call: &Call,
        op: impl Future<Output = Result<T, Fail>>,
    ) -> Result<T, StorageError> {
        self.migrate().await?;
        self.run(kind, call, op).await
    }

    async fn create_import_tx(
        &self,
        citizens: &[Citizen],
        summary: &Summary,
        idempotency: Option<&Idempotency>,
        call: &Call,
    ) -> Result<ImportId, Fail> {
        let mut client = self.conn(call).await?;
        let tx = client.transaction().await?;
        if let Some(Idempotency { key, body_hash }) = idempotency {
            // Requests with one key, one after another.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[key],
            )
            .await?;
            let held = tx
                .query_opt(
                    "SELECT body_hash, import_id FROM idempotency_keys WHERE key = $1",
                    &[key],
                )
                .await?;
            if let Some(held) = held {
                // Nothing written: the answer is a read, fenced like one.
                call.fenced.store(true, Ordering::Release);
                let import = import_id(held.get(1))?;
                let hash: Vec<u8> = held.get(0);
                return if hash == body_hash[..] {
                    Ok(import)
                } else {
                    Err(Fail::Store(StorageError::KeyReused {
                        key: key.clone(),
                        import,
                    }))
                };
            }
        }
        let count = i64::try_from(citizens.len()).map_err(StorageError::internal)?;
        let insert = tx
            .prepare_cached("INSERT INTO imports (citizens) VALUES ($1) RETURNING import_id")
            .await?;
        let row = tx.query_one(&insert, &[&count]).await?;
        let import = import_id(row.get(0))?;
        let sink = tx
            .copy_in(&format!(
                "COPY citizens (import_id, {CITIZEN_COLUMNS}) FROM STDIN BINARY"
            ))
            .await?;
        let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
        let mut writer = std::pin::pin!(writer);
        for c in citizens {
            writer
                .as_mut()
                .write(&CitizenRow::new(import, c).params())
                .await?;
        }
        writer.finish().await?;
        insert_summary(&tx, import, summary).await?;
        if let Some(Idempotency { key, body_hash }) = idempotency {
            tx.execute(
                "INSERT INTO idempotency_keys (key, body_hash, import_id) VALUES ($1, $2, $3)",
                &[key, &&body_hash[..], &import.get()],
            )
            .await?;
        }
        call.committing.store(true, Ordering::Release);
        tx.commit().await?;
        Ok(import)
    }

    async fn patch_tx(
        &self,
        import: ImportId,
        id: CitizenId,
        patch: &CitizenPatch,
        call: &Call,
    ) -> Result<Patched, Fail> {
        let mut client = self.conn(call).await?;
        let tx = client.transaction().await?;
        // The import's lock first: PATCHes of one import run one after
        // another. The citizen is read after it is held, by a statement of
        // its own (one statement with the lock would see the citizen as of
        // before the wait).
        let lock = tx
            .prepare_cached("SELECT 1 FROM imports WHERE import_id = $1 FOR UPDATE")
            .await?;
        if tx.query_opt(&lock, &[&import.get()]).await?.is_none() {
            return Err(Fail::Store(StorageError::ImportNotFound(import)));
        }
        let read = tx
            .prepare_cached(&format!(
                "SELECT {CITIZEN_COLUMNS} FROM citizens WHERE import_id = $1 AND citizen_id = $2"
            ))
            .await?;
        let Some(row) = tx.query_opt(&read, &[&import.get(), &id.as_i64()]).await? else {
            return Err(Fail::Store(StorageError::CitizenNotFound {
                import,
                citizen: id,
            }));
        };
        let before = read_citizen(&row)?;
        let touched = patch::touched(&before, patch);
        // The birth months of the citizens the plan touches, as found.
        let mut months = HashMap::new();
        if !touched.is_empty() {
            let mut added = Vec::new();
            let mut removed = Vec::new();
            for (other, edit) in &touched {
                match edit {
                    Edit::Add(_) => added.push(other.as_i64()),
                    Edit::Remove(_) => removed.push(other.as_i64()),
                }
            }
            // Every edit the plan will hold (it mirrors exactly `touched`)
            // in one statement, which also tells who was found; if the plan
            // refuses, the transaction (with this statement) is rolled back.
            // DISTINCT: an Add to a list that already holds the id keeps
            // it once, as `Edit::apply` does.
            let mirror = tx
                .prepare_cached(
                    "UPDATE citizens SET relatives = CASE
                         WHEN citizen_id = ANY($3) THEN array_remove(relatives, $4)
                         ELSE ARRAY(SELECT DISTINCT r FROM unnest(array_append(relatives, $4)) AS r ORDER BY r)
                     END
                     WHERE import_id = $1 AND citizen_id = ANY($2::bigint[] || $3::bigint[])
                     RETURNING citizen_id, extract(month FROM birth_date)::smallint",
                )
                .await?;
            for row in tx
                .query(&mirror, &[&import.get(), &added, &removed, &id.as_i64()])
                .await?
            {
                let other = u64::try_from(row.get::<_, i64>(0))
                    .ok()
                    .and_then(|o| CitizenId::parse(o).ok());
                let month = u8::try_from(row.get::<_, i16>(1)).ok();
                let (Some(other), Some(month)) = (other, month) else {
                    return Err(Fail::Store(StorageError::internal(format!(
                        "import {import}: a corrupt relative of citizen {id}"
                    ))));
                };
                months.insert(other, month);
            }
        }
        let plan = patch::plan(&before, patch, |other| months.get(&other).copied())
            .map_err(|refusal| Fail::Store(refused(import, id, refusal)))?;
        patch_summary(&tx, import, &plan).await?;
        let citizen = plan.citizen;
        let update = tx
            .prepare_cached(
                "WITH citizen AS (
                     UPDATE citizens SET town = $3, street = $4, building = $5, apartment = $6,
                                         name = $7, birth_date = $8, gender = $9, relatives = $10
                     WHERE import_id = $1 AND citizen_id = $2
                 )
                 UPDATE imports SET version = version + 1 WHERE import_id = $1 RETURNING version",
            )
            .await?;
        let version = tx
            .query_one(&update, &CitizenRow::new(import, &citizen).params())
            .await?;
        let version = version_of(version.get(0))?;
        call.committing.store(true, Ordering::Release);
        tx.commit().await?;
        Ok(Patched { citizen, version })
    }

    /// The rows of `sql`, which selects the import's version first and
    /// LEFT JOINs one of its tables on `import_id = $1`: one statement, one
    /// snapshot of both (an import with no rows there is one row of NULLs).
    async fn versioned_rows(
        &self,
        call: &Call,
        import: ImportId,
        sql: &str,
    ) -> Result<(Version, Vec<Row>), Fail> {
        let client = self.conn(call).await?;
        let read = client.prepare_cached(sql).await?;
        let rows = client.query(&read, &[&import.get()]).await?;
        drop(client);
        let Some(first) = rows.first() else {
            return Err(Fail::Store(StorageError::ImportNotFound(import)));
        };
        Ok((version_of(first.try_get(0)?)?, rows))
    }

    async fn presents_tx(
        &self,
        call: &Call,
        import: ImportId,
    ) -> Result<(Version, Birthdays), Fail> {
        let (version, rows) = self
            .versioned_rows(
                call,
                import,
                "SELECT i.version, p.month, p.citizen_id, p.presents
                 FROM imports i LEFT JOIN presents p USING (import_id)
                 WHERE i.import_id = $1 ORDER BY p.month, p.citizen_id",
            )
            .await?;
        let mut read = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(month) = row.try_get::<_, Option<i16>>(1)? else {
                continue;
            };
            let corrupt = || StorageError::internal("postgresql: a corrupt presents row");
            let month = u8::try_from(month).map_err(|_| corrupt())?;
            let citizen = u64::try_from(row.try_get::<_, i64>(2)?)
                .ok()
                .and_then(|id| CitizenId::parse(id).ok())
                .ok_or_else(corrupt)?;
            let presents = u32::try_from(row.try_get::<_, i32>(3)?).map_err(|_| corrupt())?;
            read.push((month, citizen, presents));
        }
        Ok((version, summary::birthdays(read)))
    }

    async fn town_dates_tx(
        &self,
        call: &Call,
        import: ImportId,
    ) -> Result<(Version, Vec<TownDates>), Fail> {
        let (version, rows) = self
            .versioned_rows(
                call,
                import,
                "SELECT i.version, t.town, t.dates
                 FROM imports i LEFT JOIN town_dates t USING (import_id)
                 WHERE i.import_id = $1",
            )
            .await?;
        let mut towns = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some(town) = row.try_get::<_, Option<String>>(1)? {
                towns.push(TownDates {
                    town: pg_text::decode(town).ok_or_else(|| {
                        StorageError::internal("postgresql: a corrupt escaped town")
                    })?,
                    dates: row.try_get(2)?,
                });
            }
        }
        // Code point order, whatever the database's collation.
        towns.sort_unstable_by(|a, b| a.town.cmp(&b.town));
        Ok((version, towns))
    }

    async fn citizens_tx(&self, call: &Call, import: ImportId) -> Result<Snapshot, Fail> {
        let client = self.conn(call).await?;
        // One statement: one snapshot of the version and the citizens. An
        // empty import is one row of NULL citizen columns.
        let read = client
            .prepare_cached(&format!(
                "SELECT {}, i.version FROM imports i LEFT JOIN citizens c USING (import_id)
                 WHERE i.import_id = $1 ORDER BY c.citizen_id",
                prefixed("c.")
            ))
            .await?;
        // Rows are checked into citizens a batch at a time as they arrive,
        // so a big import is never held as rows and citizens at once.
        let rows = client
            .query_raw(&read, std::iter::once(import.get()))
            .await?;
        let mut rows = std::pin::pin!(rows);
        let Some(first) = rows.try_next().await? else {
            return Err(Fail::Store(StorageError::ImportNotFound(import)));
        };
        let version = version_of(first.try_get(CITIZEN_FIELDS)?)?;
        let mut citizens = Vec::new();
        if first.try_get::<_, Option<i64>>(0)?.is_none() {
            return Ok(Snapshot { version, citizens });
        }
        let mut batch = vec![first];
        loop {
            let row = rows.try_next().await?;
            let end = row.is_none();
            batch.extend(row);
            if end || batch.len() == ROWS_PER_CHECK {
                let rows = std::mem::take(&mut batch);
                citizens.extend(super::checked_citizens(rows, |row| read_citizen(&row)).await?);
            }
            if end {
                break;
            }
        }
        drop(client);
        Ok(Snapshot { version, citizens })
    }

    async fn query_one<T>(
        &self,
        call: &Call,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        read: impl FnOnce(Option<Row>) -> Result<T, StorageError>,
    ) -> Result<T, Fail> {
        let client = self.conn(call).await?;
        let statement = client.prepare_cached(sql).await?;
        let row = client.query_opt(&statement, params).await?;
        Ok(read(row)?)
    }
}

/// A citizen as statement parameters: `import_id`, then [`CITIZEN_COLUMNS`]
/// (the `COPY` row, and `$1`..`$10` of the PATCH's update).
struct CitizenRow<'a> {
    import: i64,
    id: i64,
    town: Cow<'a, str>,
    street: Cow<'a, str>,
    building: Cow<'a, str>,
    apartment: i64,
    name: Cow<'a, str>,
    birth_date: time::Date,
    gender: &'a str,
    relatives: Vec<i64>,
}

impl<'a> CitizenRow<'a> {
    fn new(import: ImportId, c: &'a Citizen) -> Self {
        Self {
            import: import.get(),
            id: c.citizen_id.as_i64(),
            town: pg_text::encode(c.town.as_str()),
            street: pg_text::encode(c.street.as_str()),
            building: pg_text::encode(c.building.as_str()),
            apartment: c.apartment.as_i64(),
            name: pg_text::encode(c.name.as_str()),
            birth_date: c.birth_date.date(),
            gender: c.gender.as_str(),
            relatives: c.relatives.iter().map(|r| r.as_i64()).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.import,
            &self.id,
            &self.town,
            &self.street,
            &self.building,
            &self.apartment,
            &self.name,
            &self.birth_date,
            &self.gender,
            &self.relatives,
        ]
    }
}

/// Stores the summary of a new import (`domain::summary`) in its transaction.
async fn insert_summary(
    tx: &deadpool_postgres::Transaction<'_>,
    import: ImportId,
    summary: &Summary,
) -> Result<(), Fail> {
    let sink = tx
        .copy_in("COPY presents (import_id, month, citizen_id, presents) FROM STDIN BINARY")
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &PRESENTS_TYPES);
    let mut writer = std::pin::pin!(writer);
    for &(month, citizen, presents) in &summary.presents {
        let presents = i32::try_from(presents).map_err(StorageError::internal)?;
        writer
            .as_mut()
            .write(&[
                &import.get(),
                &i16::from(month),
                &citizen.as_i64(),
                &presents,
            ])
            .await?;
    }
    writer.finish().await?;
    let (towns, dates): (Vec<Cow<'_, str>>, Vec<&[u8]>) = summary
        .towns
        .iter()
        .map(|t| (pg_text::encode(&t.town), t.dates.as_slice()))
        .unzip();
    tx.execute(
        "INSERT INTO town_dates (import_id, town, dates)
         SELECT $1, * FROM unnest($2::text[], $3::bytea[])",
        &[&import.get(), &towns, &dates],
    )
    .await?;
    Ok(())
}

/// Applies a plan's presents rows and town dates, in its transaction.
async fn patch_summary(
    tx: &deadpool_postgres::Transaction<'_>,
    import: ImportId,
    plan: &Plan,
) -> Result<(), Fail> {
    let change = &plan.presents;
    if !change.is_empty() {
        let mut month = Vec::with_capacity(change.len());
        let mut citizen = Vec::with_capacity(change.len());
        let mut delta = Vec::with_capacity(change.len());
        for &(m, c, d) in change {
            month.push(i16::from(m));
            citizen.push(c.as_i64());
            delta.push(i32::try_from(d).map_err(StorageError::internal)?);
        }
        // One statement: the rows that go are deleted, the others grow or
        // shrink (a row deleted here cannot be updated by the same statement,
        // so those keys are left out of the insert).
        let change_rows = tx
            .prepare_cached(
                "WITH d (month, citizen_id, delta) AS (
                     SELECT * FROM unnest($2::smallint[], $3::bigint[], $4::integer[])
                 ),
                 gone AS (
                     DELETE FROM presents p USING d
                     WHERE p.import_id = $1 AND p.month = d.month AND p.citizen_id = d.citizen_id
                       AND p.presents + d.delta <= 0
                     RETURNING p.month, p.citizen_id
                 )
                 INSERT INTO presents AS p (import_id, month, citizen_id, presents)
                 SELECT $1, d.month, d.citizen_id, d.delta FROM d
                 WHERE d.delta > 0
                    OR (NOT EXISTS (SELECT 1 FROM gone g
                                    WHERE g.month = d.month AND g.citizen_id = d.citizen_id)
                        AND EXISTS (SELECT 1 FROM presents q WHERE q.import_id = $1
                                    AND q.month = d.month AND q.citizen_id = d.citizen_id))
                 ON CONFLICT (import_id, month, citizen_id)
                 DO UPDATE SET presents = p.presents + excluded.presents",
            )
            .await?;
        tx.execute(&change_rows, &[&import.get(), &month, &citizen, &delta])
            .await?;
    }
    if let Some(Move { from, to }) = &plan.births {
        for (town, date, delta) in [(from.0.as_str(), from.1, -1), (to.0.as_str(), to.1, 1)] {
            let read = tx
                .prepare_cached("SELECT dates FROM town_dates WHERE import_id = $1 AND town = $2")
                .await?;
            let town = pg_text::encode(town);
            let mut dates: Vec<u8> = match tx.query_opt(&read, &[&import.get(), &town]).await? {
                Some(row) => row.try_get(0)?,
                None => Vec::new(),
            };
            if !summary::adjust_dates(&mut dates, date, delta) {
                return Err(Fail::Store(StorageError::internal(format!(
                    "import {import}: the stored dates of town {town:?} are corrupt"
                ))));
            }
            if dates.is_empty() {
                let delete = tx
                    .prepare_cached("DELETE FROM town_dates WHERE import_id = $1 AND town = $2")
                    .await?;
                tx.execute(&delete, &[&import.get(), &town]).await?;
            } else {
                let write = tx
                    .prepare_cached(
                        "INSERT INTO town_dates (import_id, town, dates) VALUES ($1, $2, $3)
                         ON CONFLICT (import_id, town) DO UPDATE SET dates = excluded.dates",
                    )
                    .await?;
                tx.execute(&write, &[&import.get(), &town, &dates]).await?;
            }
        }
    }
    Ok(())
}

/// An import id from the database.
fn import_id(id: i64) -> Result<ImportId, StorageError> {
    ImportId::new(id)
        .ok_or_else(|| StorageError::internal(format!("import id {id} from postgresql")))
}

/// A version from the database.
fn version_of(version: i64) -> Result<Version, StorageError> {
    Version::try_from(version).map_err(StorageError::internal)
}

/// A citizen from a row of [`CITIZEN_COLUMNS`], checked again.
fn read_citizen(row: &Row) -> Result<Citizen, StorageError> {
    let unsigned = |i: usize| -> Result<u64, StorageError> {
        u64::try_from(row.try_get::<_, i64>(i).map_err(StorageError::internal)?)
            .map_err(StorageError::internal)
    };
    let text = |i: usize| {
        let stored = row
            .try_get::<_, String>(i)
            .map_err(StorageError::internal)?;
        pg_text::decode(stored)
            .ok_or_else(|| StorageError::internal("postgresql: a corrupt escaped string"))
    };
    let relatives: Vec<i64> = row.try_get(8).map_err(StorageError::internal)?;
    Citizen::try_from(StoredCitizen {
        citizen_id: unsigned(0)?,
        town: text(1)?,
        street: text(2)?,
        building: text(3)?,
        apartment: unsigned(4)?,
        name: text(5)?,
        birth_date: StoredDate::Date(row.try_get(6).map_err(StorageError::internal)?),
        gender: text(7)?,
        relatives: relatives
            .into_iter()
            .map(|r| u64::try_from(r).unwrap_or(u64::MAX))
            .collect(),
    })
}

/// What a pool failure means for the client.
fn pool_error(error: PoolError, kind: Kind, committing: bool) -> StorageError {
    match error {
        PoolError::Backend(ConnectError::Pg(e)) => pg_error(&e, kind, committing),
        PoolError::Backend(ConnectError::NoAnswer(why)) => {
            StorageError::Unavailable(format!("postgresql: {why}"))
        }
        PoolError::Timeout(_) => {
            StorageError::Unavailable("postgresql: no connection free or made in time".into())
        }
        other => StorageError::Unavailable(format!("postgresql: {other}")),
    }
}

/// What a PostgreSQL failure means for the client: refused or misconfigured
/// (503 naming it), not applied (503), maybe applied (504), no room (507),
/// or a fault (500).
fn pg_error(error: &tokio_postgres::Error, kind: Kind, committing: bool) -> StorageError {
    let maybe_applied = kind == Kind::Write && committing;
    let Some(db) = error.as_db_error() else {
        // No answer from the server: the connection broke or never came.
        let why = format!("postgresql: {error}");
        return if maybe_applied {
            StorageError::OutcomeUnknown(why)
        } else {
            StorageError::Unavailable(why)
        };
    };
    let code = db.code();
    let why = format!("postgresql: {} ({})", db.message(), code.code());
    if *code == SqlState::DISK_FULL || *code == SqlState::OUT_OF_MEMORY {
        StorageError::Full(why)
    } else if *code == SqlState::INVALID_PASSWORD
        || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        || *code == SqlState::INVALID_CATALOG_NAME
        || *code == SqlState::INSUFFICIENT_PRIVILEGE
    {
        StorageError::Misconfigured(format!(
            "the database refused the service (check USER, PASSWORD and DBNAME in --storage / GIFTS_STORAGE, and the user's rights): {why}"
        ))
    } else if code.code().starts_with("08")
        || code.code().starts_with("57P")
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::QUERY_CANCELED
        || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
        || *code == SqlState::TOO_MANY_CONNECTIONS
    {
        // The transaction was rolled back: nothing of it was applied.
        if maybe_applied && code.code().starts_with("08") {
            StorageError::OutcomeUnknown(why)
        } else {
            StorageError::Unavailable(why)
        }
    } else {
        StorageError::internal(why)
    }
}

#[async_trait]
impl Storage for PostgresStorage {
    async fn create_import(
        &self,
        citizens: Vec<Citizen>,
        idempotency: Option<Idempotency>,
    ) -> Result<ImportId, StorageError> {
        let (citizens, summary) = summary_of(citizens).await?;
        let call = Call::default();
        self.call(
            Kind::Write,
            &call,
            self.create_import_tx(&citizens, &summary, idempotency.as_ref(), &call),
        )
        .await
    }

    async fn patch_citizen(
        &self,
        import: ImportId,
        citizen: CitizenId,
        patch: CitizenPatch,
    ) -> Result<Patched, StorageError> {
        let call = Call::default();
        self.call(
            Kind::Write,
            &call,
            self.patch_tx(import, citizen, &patch, &call),
        )
        .await
    }

    async fn citizens(&self, import: ImportId) -> Result<Snapshot, StorageError> {
        let call = Call::read();
        self.call(Kind::Read, &call, self.citizens_tx(&call, import))
            .await
    }

    async fn presents(&self, import: ImportId) -> Result<(Version, Birthdays), StorageError> {
        let call = Call::read();
        self.call(Kind::Read, &call, self.presents_tx(&call, import))
            .await
    }

    async fn town_dates(
        &self,
        import: ImportId,
    ) -> Result<(Version, Vec<TownDates>), StorageError> {
        let call = Call::read();
        self.call(Kind::Read, &call, self.town_dates_tx(&call, import))
            .await
    }

    async fn import_version(&self, import: ImportId) -> Result<Version, StorageError> {
        let call = Call::read();
        self.call(
            Kind::Read,
            &call,
            self.query_one(
                &call,
                "SELECT version FROM imports WHERE import_id = $1",
                &[&import.get()],
                |row| match row {
                    Some(row) => version_of(row.get(0)),
                    None => Err(StorageError::ImportNotFound(import)),
                },
            ),
        )
        .await
    }

    async fn list_imports(
        &self,
        limit: usize,
        before: Option<ImportId>,
    ) -> Result<Vec<ImportInfo>, StorageError> {
        let call = Call::read();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let before = before.map_or(i64::MAX, ImportId::get);
        self.call(Kind::Read, &call, async {
            let client = self.conn(&call).await?;
            let rows = client
                .query(
                    "SELECT import_id, citizens, extract(epoch FROM created_at)::bigint, version
                     FROM imports WHERE import_id < $1 ORDER BY import_id DESC LIMIT $2",
                    &[&before, &limit],
                )
                .await?;
            let imports = rows
                .iter()
                .map(|row| {
                    Ok(ImportInfo {
                        import_id: import_id(row.get(0))?,
                        citizens: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                        created_at: row.get(2),
                        version: version_of(row.get(3))?,
                    })
                })
                .collect::<Result<_, StorageError>>()?;
            Ok(imports)
        })
        .await
    }

    async fn delete_import(&self, import: ImportId) -> Result<(), StorageError> {
        let call = Call::default();
        self.call(Kind::Write, &call, async {
            let client = self.conn(&call).await?;
            // One statement: it commits as it returns.
            call.committing.store(true, Ordering::Release);
            let deleted = client
                .execute(
                    "WITH presents AS (DELETE FROM presents WHERE import_id = $1),
                          towns AS (DELETE FROM town_dates WHERE import_id = $1)
                     DELETE FROM imports WHERE import_id = $1",
                    &[&import.get()],
                )
                .await?;
            if deleted == 0 {
                return Err(Fail::Store(StorageError::ImportNotFound(import)));
            }
            Ok(())
        })
        .await
    }

    async fn totals(&self) -> Result<(u64, u64), StorageError> {
        let call = Call::default();
        self.call(
            Kind::Read,
            &call,
            self.query_one(
                &call,
                "SELECT count(*), coalesce(sum(citizens), 0)::bigint FROM imports",
                &[],
                |row| {
                    let row = row.ok_or_else(|| StorageError::internal("no totals row"))?;
                    Ok((
                        u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
                        u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                    ))
                },
            ),
        )
        .await
    }

    async fn health(&self) -> Result<(), StorageError> {
        let call = Call::default();
        let writable = self.writable.load(Ordering::Acquire);
        let kind = if writable { Kind::Read } else { Kind::Write };
        self.call(kind, &call, async {
            let client = self.conn(&call).await?;
            let standby = client.prepare_cached("SELECT pg_is_in_recovery()").await?;
            let row = client.query_one(&standby, &[]).await?;
            if row.get::<_, bool>(0) {
                return Err(Fail::Store(StorageError::Unavailable(
                    "postgresql: the server is a standby (read-only); the primary is elsewhere"
                        .into(),
                )));
            }
            if !writable {
                // A real write: the disk has room again only if it succeeds.
                client
                    .execute("UPDATE gifts_meta SET probed_at = now()", &[])
                    .await?;
            }
            Ok(())
        })
        .await
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.pool.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_as_libpq_reads_them_and_shown_without_the_password() {
        let address: PostgresAddress =
            "postgres://gifts:s3cr%40t@db1:5433,db2/gifts?target_session_attrs=read-write"
                .parse()
                .unwrap();
        assert_eq!(address.config().get_hosts().len(), 2);
        assert_eq!(address.config().get_ports(), [5433, 5432]);
        assert_eq!(address.config().get_password(), Some(&b"s3cr@t"[..]));
        assert_eq!(address.config().get_dbname(), Some("gifts"));
        let shown = format!("{address:?}");
        assert_eq!(
            shown,
            "postgres://gifts:***@db1:5433,db2/gifts?target_session_attrs=read-write"
        );
        let with_query: PostgresAddress = "postgresql://u@h/d?password=p&application_name=x"
            .parse()
            .unwrap();
        assert_eq!(
            format!("{with_query:?}"),
            "postgres://u@h/d?password=***&application_name=x"
        );
        for wrong in [
            "postgres://",
            "postgres://u:p@/d",
            "postgres://u:p@h",
            "postgres://:p@h/d",
            "mysql://u:p@h/d",
        ] {
            assert!(wrong.parse::<PostgresAddress>().is_err(), "{wrong}");
        }
    }
}
