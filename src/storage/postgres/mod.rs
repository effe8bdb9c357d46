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
//! - **PATCH** locks the import's row (`FOR UPDATE`) first: PATCHes of one
//!   import run one after another — no deadlock and no serialization
//!   failure whatever they touch. The PATCHes that queue while a commit is
//!   out share the next transaction, a savepoint each ([`patches`]: group
//!   commit). The mirroring follows the contract of
//!   [`Storage::patch_citizen`], in two statements whatever the number of
//!   relatives changed.
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
//!   superseded primary ([`primary`]).

mod address;
mod errors;
mod own_rows;
mod patches;
pub mod pg_text;
mod planned;
pub mod primary;
mod reads;
mod schema;
mod writes;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool::managed::{Object, Pool as DeadPool, PoolError as DeadPoolError};
use prometheus_client::metrics::counter::Counter;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::deadline;
use super::{
    HeldCopy, ImportInfo, Patched, Snapshot, Storage, StorageError, Upload, Version, summary_of,
};
use crate::domain::stats::Birthdays;
use crate::domain::summary::TownDates;
use crate::domain::{Citizen, CitizenId, CitizenPatch, ImportId};
use crate::metrics::Metrics;
use primary::{ConnectError, HostManager, Hosts};

pub use address::PostgresAddress;
use errors::{pg_error, pool_error};
use reads::{import_id, version_of};

type Pool = DeadPool<HostManager>;
type PoolError = DeadPoolError<ConnectError>;

/// The PostgreSQL store: the [`Store`], shared with its PATCH committer
/// ([`patches`]), and the committer's queue.
pub struct PostgresStorage {
    store: Arc<Store>,
    patches: tokio::sync::mpsc::Sender<patches::PatchJob>,
}

impl std::ops::Deref for PostgresStorage {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

/// The pool and what the service knows of the server.
pub struct Store {
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
    /// Each import's last version this instance committed
    /// (`patches::Store::committed_after`).
    committed: std::sync::Mutex<std::collections::HashMap<i64, Version>>,
    /// PATCH batches planned from copies held in memory.
    copies: Copies,
}

/// PATCH batches planned from the copies of their imports held in memory
/// (`planned::patch_from_copies`): written so, or found stale under the
/// lock and read again.
#[derive(Default)]
struct Copies {
    written: Counter,
    stale: Counter,
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

impl Conn<'_> {
    /// Closes the connection rather than putting it back in the pool (it is
    /// in a state no other request may find it in).
    fn discard(&mut self) {
        if let Some(object) = self.object.take() {
            drop(Object::take(object));
        }
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
    /// Queued for the committer ([`patches`]), which commits it with the
    /// PATCHes queued beside it; or, if it may write many rows, committed
    /// alone ([`patches::alone`]).
    async fn queue_patch(
        &self,
        import: ImportId,
        citizen: CitizenId,
        patch: CitizenPatch,
        held: Option<HeldCopy>,
    ) -> Result<Patched, StorageError> {
        self.migrate().await?;
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Unavailable("the store is closed".into()));
        }
        let deadline = tokio::time::Instant::now() + deadline::remaining(self.timeout);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = patches::PatchJob {
            import,
            citizen,
            patch,
            deadline,
            held,
            reply,
        };
        if patches::alone(&job.patch) {
            return self.patch_alone(&job).await;
        }
        if self.patches.try_send(job).is_err() {
            return Err(StorageError::Overloaded(format!(
                "postgresql: {} PATCHes already wait for a commit",
                patches::PATCH_QUEUE
            )));
        }
        answer.await.unwrap_or_else(|_| {
            Err(StorageError::internal(
                "postgresql: the PATCH committer stopped",
            ))
        })
    }

    /// Builds the pool (connections are made when needed) and, if the
    /// server answers, brings the schema up to date. An unreachable server
    /// or one that refuses the user is not an error here — it is logged and
    /// requests get 503 naming it until it answers — but a schema newer
    /// than this build knows is.
    pub async fn connect(
        address: &PostgresAddress,
        timeout: Duration,
        pool_size: usize,
        metrics: &Metrics,
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
            // The connection used last goes out next: a steady stream of
            // PATCHes keeps to the few connections whose statements are
            // planned, and whose server processes are warm, instead of going
            // round every connection a burst of reads opened (first in, first
            // out: a relatives PATCH 1.1 -> 4.1 ms p50 after a sorted page
            // had opened 16 more).
            .queue_mode(deadpool::managed::QueueMode::Lifo)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(StorageError::internal)?;
        let storage = Store {
            pool,
            hosts,
            timeout,
            shown: address.shown.clone(),
            migrated: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            newer_schema: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            writable: AtomicBool::new(true),
            committed: std::sync::Mutex::default(),
            copies: Copies::default(),
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
        metrics.register_collector(Box::new(PoolMetrics(storage.pool.clone())));
        metrics.register(
            "postgres_patch_batches_from_copies",
            "PATCH batches planned from their imports' copies held in memory, written in one round trip",
            storage.copies.written.clone(),
        );
        metrics.register(
            "postgres_patch_batches_stale_copies",
            "PATCH batches planned from copies held in memory that another write had overtaken: nothing written, read again",
            storage.copies.stale.clone(),
        );
        let store = Arc::new(storage);
        let (patches, queue) = tokio::sync::mpsc::channel(patches::PATCH_QUEUE);
        let batch_size = patches::batch_size_histogram();
        metrics.register(
            "postgres_patch_batch_size",
            "PATCHes committed in one PostgreSQL transaction: one COMMIT, one WAL flush",
            batch_size.clone(),
        );
        tokio::spawn(patches::commit_patches(
            Arc::clone(&store),
            queue,
            batch_size,
        ));
        Ok(Self { store, patches })
    }
}

impl Store {
    /// A connection from the pool for `call`.
    async fn conn<'a>(&self, call: &'a Call) -> Result<Conn<'a>, Fail> {
        let object = self.pool.get().await?;
        call.host.store(object.host, Ordering::Release);
        Ok(Conn {
            object: Some(object),
            call,
        })
    }

    /// Runs `op` within the request's remaining budget and tells its
    /// failure apart (see [`Call`]).
    async fn run<T>(
        &self,
        kind: Kind,
        call: &Call,
        op: impl Future<Output = Result<T, Fail>>,
    ) -> Result<T, StorageError> {
        self.run_within(kind, call, deadline::remaining(self.timeout), op)
            .await
    }

    /// [`Store::run`] within `budget`, for work done for several requests
    /// (a batch of PATCHes, which gets its most hurried request's time).
    async fn run_within<T>(
        &self,
        kind: Kind,
        call: &Call,
        budget: std::time::Duration,
        op: impl Future<Output = Result<T, Fail>>,
    ) -> Result<T, StorageError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Unavailable("the store is closed".into()));
        }
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

#[async_trait]
impl Storage for PostgresStorage {
    async fn create_import(
        &self,
        citizens: Vec<Citizen>,
        upload: Upload,
    ) -> Result<ImportId, StorageError> {
        let (citizens, summary) = summary_of(citizens).await?;
        let call = Call::default();
        self.call(
            Kind::Write,
            &call,
            self.create_import_tx(&citizens, &summary, &upload, &call),
        )
        .await
    }

    async fn patch_citizen(
        &self,
        import: ImportId,
        citizen: CitizenId,
        patch: CitizenPatch,
    ) -> Result<Patched, StorageError> {
        self.queue_patch(import, citizen, patch, None).await
    }

    /// Planned from `held` if it is current (`planned::patch_from_copies`):
    /// `BEGIN`, the lock, the writes and `COMMIT` in one round trip.
    async fn patch_citizen_held(
        &self,
        import: ImportId,
        citizen: CitizenId,
        patch: CitizenPatch,
        held: HeldCopy,
    ) -> Result<Patched, StorageError> {
        self.queue_patch(import, citizen, patch, Some(held)).await
    }

    async fn citizens(&self, import: ImportId) -> Result<Snapshot, StorageError> {
        let call = Call::read();
        self.call(Kind::Read, &call, self.citizens_tx(&call, import))
            .await
    }

    async fn citizens_page(
        &self,
        import: ImportId,
        after: Option<CitizenId>,
        limit: usize,
    ) -> Result<Vec<Arc<Citizen>>, StorageError> {
        let call = Call::read();
        let after = after.map_or(-1, CitizenId::as_i64);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(
            Kind::Read,
            &call,
            self.citizens_page_tx(&call, import, after, limit),
        )
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
        digest: Option<[u8; 32]>,
    ) -> Result<Vec<ImportInfo>, StorageError> {
        const COLUMNS: &str = "import_id, citizens, extract(epoch FROM created_at)::bigint, \
                               version, name, digest";
        let call = Call::read();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let before = before.map_or(i64::MAX, ImportId::get);
        self.call(Kind::Read, &call, async {
            let client = self.conn(&call).await?;
            let rows = match &digest {
                None => {
                    client
                        .query(
                            &format!(
                                "SELECT {COLUMNS} FROM imports
                                 WHERE import_id < $1 ORDER BY import_id DESC LIMIT $2"
                            ),
                            &[&before, &limit],
                        )
                        .await?
                }
                Some(digest) => {
                    client
                        .query(
                            &format!(
                                "SELECT {COLUMNS} FROM imports
                                 WHERE digest = $3 AND import_id < $1
                                 ORDER BY import_id DESC LIMIT $2"
                            ),
                            &[&before, &limit, &&digest[..]],
                        )
                        .await?
                }
            };
            let imports = rows
                .iter()
                .map(|row| {
                    Ok(ImportInfo {
                        import_id: import_id(row.get(0))?,
                        citizens: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                        created_at: row.get(2),
                        version: version_of(row.get(3))?,
                        name: row.get(4),
                        digest: row
                            .get::<_, Option<&[u8]>>(5)
                            .map(<[u8; 32]>::try_from)
                            .transpose()
                            .map_err(StorageError::internal)?,
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

/// The connection pool as the scrape finds it: `gifts_postgres_pool_connections`
/// by `state` (`idle`, `in_use`), `gifts_postgres_pool_max_connections` and
/// `gifts_postgres_pool_waiting` (requests waiting for a connection: the pool
/// is too small, or PostgreSQL too slow).
struct PoolMetrics(Pool);

impl std::fmt::Debug for PoolMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolMetrics")
    }
}

impl prometheus_client::collector::Collector for PoolMetrics {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        let status = self.0.status();
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let mut family = encoder.encode_descriptor(
            "postgres_pool_connections",
            "Connections of the PostgreSQL pool, by state (idle, in_use)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (state, n) in [
            ("idle", status.available),
            ("in_use", status.size.saturating_sub(status.available)),
        ] {
            let labels = [("state", state)];
            ConstGauge::new(count(n)).encode(family.encode_family(&labels)?)?;
        }
        for (name, help, n) in [
            (
                "postgres_pool_max_connections",
                "The most connections the PostgreSQL pool opens (--postgres-pool-size)",
                status.max_size,
            ),
            (
                "postgres_pool_waiting",
                "Requests waiting for a PostgreSQL connection",
                status.waiting,
            ),
        ] {
            let gauge = ConstGauge::new(count(n));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}
