//! The embedded backend: one SQLite file in WAL mode.
//!
//! Threads, not the async executor, run every SQLite call:
//! - one writer thread owns the only write connection. It takes whatever
//!   writes are queued, runs each in its own savepoint inside one transaction,
//!   commits with one fsync (`synchronous=FULL`) and only then answers every
//!   request in the batch (group commit). A single writer also serialises
//!   PATCHes, so concurrent mirrored relative changes cannot interleave.
//! - a few reader threads own read-only connections; WAL lets them read the
//!   last committed state while the writer works.
//! - a checkpointer thread folds the WAL back into the database when the
//!   writer asks (every 16,384 pages, 64 MiB, of new WAL), on its own
//!   connection: no commit pays for a checkpoint, as with SQLite's
//!   auto-checkpoint, and no write waits for one.
//!
//! Both queues are bounded: when one is full a request is refused at once
//! (`Overloaded`, 503 with `Retry-After`) instead of waiting behind work it
//! cannot finish in time. A job whose caller has gone (timeout, disconnect)
//! before it starts is dropped unapplied; one already applied stays applied.
//!
//! An import is one write of a blob (`staged_citizens`, see `codec`), quick
//! to store; the writer writes its citizens as rows afterwards, when no
//! other write waits, and readers read the blob until then (see
//! `workers::expand_when_idle`).
//!
//! A big import (over [`CHUNKED_FROM`] citizens) does not hold the writer for
//! its whole length: it is written a chunk per write while invisible
//! (`imports.pending`), then published in one small write, so other writes
//! wait at most for one chunk. Its rows are deleted if it fails or its caller
//! goes away, and a crash's leftovers at the next start.
//!
//! A full disk is a state, not a fault: a write that fails for lack of space
//! answers `Full` (507) and marks the store unwritable; reads go on. While
//! unwritable, `health` probes with a real one-page write; the first write
//! that succeeds again truncates the WAL (which a failed big write may have
//! grown) and restores the reserve file. The reserve — `PATH.reserve`,
//! [`RESERVE_BYTES`] of real blocks — is deleted when opening fails, so a
//! start on a full disk still finds room for SQLite's shared-memory file and
//! serves reads.
//!
//! Files: this one holds the store and its [`Storage`] methods; `schema`
//! the migrations; `workers` the writer and reader threads and their jobs;
//! `queries` the SQL of each operation; `codec` the relatives blob and the
//! staged import's; `disk`
//! the reserve and the free-space check.

mod codec;
mod disk;
mod queries;
mod schema;
mod workers;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::sync::oneshot;

use crate::domain::stats::Birthdays;
use crate::domain::summary::{Summary, TownDates};
use crate::domain::{Citizen, CitizenId, CitizenPatch, ImportId};
use crate::metrics::{KindLabels, Metrics};
use crate::storage::{
    ImportInfo, Patched, Snapshot, Storage, StorageError, Upload, Version, by_size, summary_of,
};
use codec::encode_staged;
use disk::{ensure_reserve, free_bytes, reserve_path};
use queries::{
    Begun, begin_import, delete_import, discard_all_pending, discard_pending, import_version,
    insert_citizens, insert_import, insert_presents, insert_towns, list_imports, patch_citizen,
    presents, publish_import, read_page, read_snapshot, town_dates,
};
use schema::{MIGRATIONS, migrate};
use workers::{
    ReadJob, StagedCitizens, WAL_SIZE_LIMIT, WriteJob, WriterState, checkpointer_loop,
    count_wal_pages, reader_loop, writer_loop,
};

/// Most writes committed together in one transaction.
const MAX_BATCH: usize = 256;
/// Writes that may wait for the writer thread; more are refused (503).
pub const WRITE_QUEUE: usize = 1024;
/// Reads that may wait for a reader thread; more are refused (503).
pub const READ_QUEUE: usize = 4096;
/// Citizens per write of a big import (see `create_import_in_chunks`): about
/// 25 ms of the writer's time, which is how long it makes other writes wait.
pub const IMPORT_CHUNK: usize = 8_192;
/// Imports of more citizens than this are written in chunks; smaller ones
/// in one write of a blob (about 40 ms of the writer at most), which is
/// faster for them, their rows afterwards.
pub const CHUNKED_FROM: usize = 16 * IMPORT_CHUNK;
/// Space kept in `PATH.reserve` for a start on a full disk.
pub const RESERVE_BYTES: usize = 1 << 20;

/// The SQLite store; cheap to share behind an `Arc`.
pub struct SqliteStorage {
    writer: Mutex<Option<mpsc::SyncSender<WriteJob>>>,
    readers: Mutex<Option<mpsc::SyncSender<ReadJob>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// False from a write that failed for lack of space until one succeeds.
    writable: Arc<AtomicBool>,
    /// Bounds of the write and read queues.
    queues: (usize, usize),
    /// The database file.
    path: PathBuf,
    /// Jobs waiting in the (write, read) queues.
    depths: (Gauge, Gauge),
}

/// A SQLite error as a storage error: a full disk is `Full`, the rest internal.
fn internal(error: rusqlite::Error) -> StorageError {
    if error.sqlite_error_code() == Some(ErrorCode::DiskFull) {
        StorageError::Full(error.to_string())
    } else {
        StorageError::internal(error)
    }
}

impl rusqlite::ToSql for ImportId {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.get().into())
    }
}

impl rusqlite::types::FromSql for ImportId {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let id = i64::column_result(value)?;
        ImportId::new(id).ok_or(rusqlite::types::FromSqlError::OutOfRange(id))
    }
}

/// SQLite's page caches, per connection, in bytes: the part of the memory
/// budget (`--cache-bytes`) this store takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCaches {
    /// The writer's: imports and PATCHes.
    pub writer: u64,
    /// Each reader's.
    pub reader: u64,
}

impl PageCaches {
    /// The page caches' share of a memory budget of `budget` bytes: an
    /// eighth for the writer, an eighth shared by the `readers`; never under
    /// 2 MiB for the writer and 1 MiB for a reader (SQLite's default is
    /// 2 MB), so even a budget of 0 leaves SQLite room to work.
    pub fn of(budget: u64, readers: usize) -> Self {
        let readers = readers.max(1) as u64;
        Self {
            writer: (budget / 8).max(2 << 20),
            reader: (budget / 8 / readers).max(1 << 20),
        }
    }

    /// All of them together.
    pub fn total(&self, readers: usize) -> u64 {
        self.writer + self.reader * readers.max(1) as u64
    }

    /// The pragma that sets a connection's page cache to `bytes`.
    fn pragma(bytes: u64) -> String {
        // A negative cache_size is in KiB.
        format!("PRAGMA cache_size = -{};", bytes / 1024)
    }
}

/// A length as SQLite's integer (lengths of memory never reach 2^63).
fn count(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

fn closed() -> StorageError {
    StorageError::Unavailable("the store is closed".into())
}

impl SqliteStorage {
    /// Opens (creating if needed) the database at `path`, migrates the schema
    /// and starts the writer and `readers` reader threads.
    pub fn open(path: &Path, readers: usize) -> Result<Self, StorageError> {
        Self::open_with(
            path,
            readers,
            (WRITE_QUEUE, READ_QUEUE),
            PageCaches::of(256 << 20, readers),
            &Arc::default(),
        )
    }

    /// [`SqliteStorage::open`] with other (write, read) queue bounds and page
    /// caches, and the metrics to record batch sizes and queue depths in.
    pub fn open_with(
        path: &Path,
        readers: usize,
        queues: (usize, usize),
        caches: PageCaches,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, StorageError> {
        match Self::open_once(path, readers, queues, caches, metrics) {
            Err(e) if reserve_path(path).exists() => {
                // Perhaps the disk is full: give SQLite the reserved room and try again.
                tracing::warn!(error = %e, "opening the database failed; retrying with the disk-space reserve freed");
                std::fs::remove_file(reserve_path(path)).map_err(StorageError::internal)?;
                let storage = Self::open_once(path, readers, queues, caches, metrics)?;
                storage.writable.store(false, Ordering::Release);
                Ok(storage)
            }
            result => result,
        }
    }

    fn open_once(
        path: &Path,
        readers: usize,
        (write_queue, read_queue): (usize, usize),
        caches: PageCaches,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, StorageError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StorageError::internal(format!(
                    "cannot create the data directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let created = !path.exists();
        // SQLite says only "unable to open database file": say which is not
        // writable (the database's directory holds its -wal and -shm files).
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        for (what, target) in [("the data directory", dir), ("the database file", path)] {
            if target.exists() && rustix::fs::access(target, rustix::fs::Access::WRITE_OK).is_err()
            {
                return Err(StorageError::internal(format!(
                    "{what} {} is not writable by this user",
                    target.display()
                )));
            }
        }
        let mut writer = Connection::open(path)
            .map_err(|e| StorageError::internal(format!("cannot open {}: {e}", path.display())))?;
        writer
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA foreign_keys = ON;
                 PRAGMA busy_timeout = 5000;
                 PRAGMA journal_size_limit = {WAL_SIZE_LIMIT};
                 {}",
                PageCaches::pragma(caches.writer)
            ))
            .map_err(|e| {
                StorageError::internal(format!("cannot write to {}: {e}", path.display()))
            })?;
        let from = migrate(&mut writer)?;
        let to = MIGRATIONS.len();
        if created {
            tracing::info!(path = %path.display(), schema_version = to, "sqlite database created");
        } else if from < to {
            tracing::info!(path = %path.display(), from, to, "sqlite database migrated");
        } else {
            tracing::info!(path = %path.display(), schema_version = to, "sqlite database opened");
        }
        match discard_all_pending(&writer) {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                imports = n,
                "deleted imports a crash cut short (never acknowledged)"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "deleting imports a crash cut short failed; they stay invisible");
            }
        }
        // Checkpoints run on the checkpointer thread when the writer asks
        // (see `writer_loop`), not inside a commit as SQLite's auto-checkpoint would.
        let wal_pages = Arc::new(AtomicI32::new(0));
        count_wal_pages(&mut writer, Arc::clone(&wal_pages)).map_err(internal)?;

        ensure_reserve(path);
        let writable = Arc::new(AtomicBool::new(true));
        let (write_tx, write_rx) = mpsc::sync_channel(write_queue);
        let queue_depth = Family::<KindLabels, Gauge>::default();
        metrics.register(
            "sqlite_queue_depth",
            "Jobs waiting for the SQLite writer or readers",
            queue_depth.clone(),
        );
        let batch_size = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]);
        metrics.register(
            "sqlite_write_batch_size",
            "Writes committed together by one SQLite transaction (group commit)",
            batch_size.clone(),
        );
        let staged = Gauge::default();
        metrics.register(
            "sqlite_staged_imports",
            "Imports stored as one blob whose citizens the SQLite writer has still to write as rows",
            staged.clone(),
        );
        let depth = |kind| queue_depth.get_or_create(&KindLabels { kind }).clone();
        let (write_depth, read_depth) = (depth("write"), depth("read"));
        let checkpointer = Connection::open(path).map_err(internal)?;
        checkpointer
            .execute_batch("PRAGMA busy_timeout = 5000;")
            .map_err(internal)?;
        let (checkpoint, requests) = mpsc::sync_channel(1);
        let backfilled = Arc::new(AtomicI32::new(0));
        let checkpoints = Arc::new(Mutex::new(()));
        let state = WriterState {
            wal_pages,
            backfilled: Arc::clone(&backfilled),
            checkpoint,
            checkpoints: Arc::clone(&checkpoints),
            writable: Arc::clone(&writable),
            path: path.to_owned(),
            depth: write_depth.clone(),
            batch_size,
            staged,
        };
        let mut threads = vec![
            std::thread::Builder::new()
                .name("sqlite-writer".into())
                .spawn(move || writer_loop(writer, &write_rx, &state))
                .map_err(StorageError::internal)?,
            std::thread::Builder::new()
                .name("sqlite-checkpointer".into())
                .spawn(move || {
                    checkpointer_loop(&checkpointer, &requests, &backfilled, &checkpoints);
                })
                .map_err(StorageError::internal)?,
        ];

        let (read_tx, read_rx) = mpsc::sync_channel::<ReadJob>(read_queue);
        // The std receiver has one consumer; the readers take turns holding it.
        let read_rx = Arc::new(Mutex::new(read_rx));
        for n in 0..readers.max(1) {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(internal)?;
            conn.execute_batch(&format!(
                "PRAGMA busy_timeout = 5000; {}",
                PageCaches::pragma(caches.reader)
            ))
            .map_err(internal)?;
            let jobs = Arc::clone(&read_rx);
            let depth = read_depth.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("sqlite-reader-{n}"))
                    .spawn(move || reader_loop(conn, &jobs, &depth))
                    .map_err(StorageError::internal)?,
            );
        }

        Ok(Self {
            writer: Mutex::new(Some(write_tx)),
            readers: Mutex::new(Some(read_tx)),
            threads: Mutex::new(threads),
            writable,
            queues: (write_queue, read_queue),
            path: path.to_owned(),
            depths: (write_depth, read_depth),
        })
    }

    /// A handle to queue writes with, cloned out of the store.
    fn writer(&self) -> Writer {
        Writer {
            // The lock is held only to clone the sender, never across an await.
            sender: self.writer.lock().expect("writer lock").clone(),
            capacity: self.queues.0,
            depth: self.depths.0.clone(),
        }
    }

    /// Queues `work` over `payload` for the writer and waits for its answer.
    async fn write<P, T>(
        &self,
        payload: P,
        work: impl FnOnce(&Connection, &P) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError>
    where
        P: Send + 'static,
        T: Send + 'static,
    {
        self.writer().write(payload, work).await
    }

    /// An import of more than [`CHUNKED_FROM`] citizens: written chunk by
    /// chunk, each its own write, while the import is invisible (pending), then
    /// published in one small write. Other writes take turns with the chunks
    /// instead of waiting for the whole import. If anything fails, or the
    /// caller goes away, the pending rows are deleted (chunk by chunk); a crash
    /// leaves them to the next start.
    async fn create_import_in_chunks(
        &self,
        citizens: Vec<Citizen>,
        upload: Upload,
    ) -> Result<ImportId, StorageError> {
        let writer = self.writer();
        let n = citizens.len();
        let upload = Arc::new(upload);
        let key = Arc::clone(&upload);
        // The guard exists before the pending row does: the writer notes the
        // new id in it, so a caller gone at any point after leaves nothing.
        let pending = PendingImport {
            writer: Some(writer.clone()),
            import: Arc::default(),
        };
        let noted = Arc::clone(&pending.import);
        let import = match writer
            .write(key, move |conn, key| {
                let begun = begin_import(conn, n, key)?;
                if let Begun::Pending(import) = begun {
                    *noted.lock().expect("pending import") = Some(import);
                }
                Ok(begun)
            })
            .await?
        {
            Begun::Stored(import) => return Ok(import),
            Begun::Pending(import) => import,
        };
        let (citizens, summary) = summary_of(citizens).await?;
        let citizens = Arc::new(citizens);
        for start in (0..n).step_by(IMPORT_CHUNK) {
            let chunk = (Arc::clone(&citizens), start..(start + IMPORT_CHUNK).min(n));
            writer
                .write(chunk, move |conn, (all, range)| {
                    insert_citizens(conn, import, &all[range.clone()])
                })
                .await?;
        }
        let Summary { presents, towns } = summary;
        let presents = Arc::new(presents);
        for start in (0..presents.len()).step_by(IMPORT_CHUNK) {
            let end = (start + IMPORT_CHUNK).min(presents.len());
            let chunk = (Arc::clone(&presents), start..end);
            writer
                .write(chunk, move |conn, (all, range)| {
                    insert_presents(conn, import, &all[range.clone()])
                })
                .await?;
        }
        writer
            .write(towns, move |conn, towns| insert_towns(conn, import, towns))
            .await?;
        let published = writer
            .write(upload, move |conn, upload| {
                publish_import(conn, import, upload)
            })
            .await?;
        if published == import {
            pending.published();
        } // else the key was stored meanwhile by another request: ours goes
        Ok(published)
    }
    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let (reply, answer) = oneshot::channel::<Result<T, StorageError>>();
        let job: ReadJob = Box::new(move |conn| {
            // A caller that has gone does not need its query run.
            if !reply.is_closed() {
                drop(reply.send(query(conn)));
            }
        });
        let sender = self.readers.lock().expect("readers lock").clone();
        queue(sender, job, "read", self.queues.1)?;
        self.depths.1.inc();
        answer.await.map_err(|_| closed())?
    }
}

/// What it takes to queue a write, apart from the store: a task that
/// outlives a call (see [`PendingImport`]) can still write.
#[derive(Clone)]
struct Writer {
    sender: Option<mpsc::SyncSender<WriteJob>>,
    capacity: usize,
    depth: Gauge,
}

impl Writer {
    async fn write<P, T>(
        &self,
        payload: P,
        work: impl FnOnce(&Connection, &P) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError>
    where
        P: Send + 'static,
        T: Send + 'static,
    {
        self.ask(|reply| WriteJob::new(payload, reply, work)).await
    }

    /// [`Writer::write`] for work that may write a staged import's rows
    /// ([`WriteJob::holding`]).
    async fn write_holding<P, T>(
        &self,
        payload: P,
        work: impl FnOnce(&Connection, &P, &mut Option<StagedCitizens>) -> Result<T, StorageError>
        + Send
        + 'static,
    ) -> Result<T, StorageError>
    where
        P: Send + 'static,
        T: Send + 'static,
    {
        self.ask(|reply| WriteJob::holding(payload, reply, work))
            .await
    }

    /// Queues the write `job` makes of its reply channel, and waits for
    /// its answer.
    async fn ask<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, StorageError>>) -> WriteJob,
    ) -> Result<T, StorageError> {
        let (reply, answer) = oneshot::channel();
        queue(self.sender.clone(), job(reply), "write", self.capacity)?;
        self.depth.inc();
        answer.await.map_err(|_| closed())?
    }
}

/// An import being written in chunks; unless [`PendingImport::published`],
/// dropping it (an error, or the caller gone) deletes its rows in the
/// background, a chunk per write.
struct PendingImport {
    writer: Option<Writer>,
    /// Set by the writer when it has made the pending row.
    import: Arc<Mutex<Option<ImportId>>>,
}

impl PendingImport {
    fn published(mut self) {
        self.writer = None;
    }
}

impl Drop for PendingImport {
    fn drop(&mut self) {
        let import = *self.import.lock().expect("pending import");
        let (Some(writer), Some(import), Ok(runtime)) = (
            self.writer.take(),
            import,
            tokio::runtime::Handle::try_current(),
        ) else {
            return; // nothing made, or left to the next start
        };
        runtime.spawn(async move {
            loop {
                match writer
                    .write((), move |conn, ()| {
                        discard_pending(conn, import, IMPORT_CHUNK)
                    })
                    .await
                {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(import = import.get(), error = %e, "deleting an unfinished import failed; the next start deletes it");
                        break;
                    }
                }
            }
        });
    }
}

/// Hands a job to a bounded queue, refusing at once when it is full.
fn queue<J>(
    sender: Option<mpsc::SyncSender<J>>,
    job: J,
    what: &str,
    capacity: usize,
) -> Result<(), StorageError> {
    match sender.ok_or_else(closed)?.try_send(job) {
        Ok(()) => Ok(()),
        Err(mpsc::TrySendError::Full(_)) => Err(StorageError::Overloaded(format!(
            "the {what} queue holds {capacity} waiting operations"
        ))),
        Err(mpsc::TrySendError::Disconnected(_)) => Err(closed()),
    }
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn create_import(
        &self,
        citizens: Vec<Citizen>,
        upload: Upload,
    ) -> Result<ImportId, StorageError> {
        if citizens.len() > CHUNKED_FROM {
            return self.create_import_in_chunks(citizens, upload).await;
        }
        // The summary and the blob are computed beside each other, and
        // beside the writer.
        let len = citizens.len();
        let citizens = Arc::new(citizens);
        let (summary, staged) = {
            let (a, b) = (Arc::clone(&citizens), Arc::clone(&citizens));
            tokio::join!(
                by_size(len, move || Summary::of(&a)),
                by_size(len, move || encode_staged(&b)),
            )
        };
        let (summary, staged) = (summary?, staged??);
        // The citizens go with the write: the writer writes the rows from
        // them, without decoding the blob, and frees them, off the request's
        // path.
        self.writer()
            .ask(|reply| {
                WriteJob::staging(
                    (staged, summary, upload, citizens),
                    reply,
                    move |conn, (staged, summary, upload, _)| {
                        insert_import(conn, len, staged, summary, upload)
                    },
                    |(.., citizens), &import| Some((import, Arc::clone(citizens))),
                )
            })
            .await
    }

    async fn patch_citizen(
        &self,
        import: ImportId,
        citizen: CitizenId,
        patch: CitizenPatch,
    ) -> Result<Patched, StorageError> {
        // Asked again while its import is still being written as rows, a
        // chunk per write (see `queries::patch_citizen`).
        loop {
            let patched = self
                .writer()
                .write_holding(patch.clone(), move |conn, patch, held| {
                    patch_citizen(conn, import, citizen, patch, held)
                })
                .await?;
            if let Some(patched) = patched {
                return Ok(patched);
            }
        }
    }

    async fn citizens(&self, import: ImportId) -> Result<Snapshot, StorageError> {
        self.read(move |conn| {
            // One read transaction: the version and the rows see one snapshot.
            let tx = conn.transaction().map_err(internal)?;
            read_snapshot(&tx, import)
        })
        .await
    }

    async fn citizens_page(
        &self,
        import: ImportId,
        after: Option<CitizenId>,
        limit: usize,
    ) -> Result<Vec<Arc<Citizen>>, StorageError> {
        self.read(move |conn| {
            let tx = conn.transaction().map_err(internal)?;
            read_page(&tx, import, after, limit)
        })
        .await
    }

    async fn presents(&self, import: ImportId) -> Result<(Version, Birthdays), StorageError> {
        self.read(move |conn| presents(conn, import)).await
    }

    async fn town_dates(
        &self,
        import: ImportId,
    ) -> Result<(Version, Vec<TownDates>), StorageError> {
        self.read(move |conn| town_dates(conn, import)).await
    }

    async fn list_imports(
        &self,
        limit: usize,
        before: Option<ImportId>,
        digest: Option<[u8; 32]>,
    ) -> Result<Vec<ImportInfo>, StorageError> {
        self.read(move |conn| list_imports(conn, limit, before, digest))
            .await
    }

    async fn delete_import(&self, import: ImportId) -> Result<(), StorageError> {
        self.write((), move |conn, ()| delete_import(conn, import))
            .await
    }

    async fn totals(&self) -> Result<(u64, u64), StorageError> {
        self.read(|conn| {
            let (imports, citizens): (i64, i64) = conn
                .query_row(
                    "SELECT count(*), coalesce(sum(citizens), 0) FROM imports WHERE NOT pending",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .map_err(internal)?;
            Ok((
                u64::try_from(imports).unwrap_or(0),
                u64::try_from(citizens).unwrap_or(0),
            ))
        })
        .await
    }

    async fn import_version(&self, import: ImportId) -> Result<Version, StorageError> {
        self.read(move |conn| {
            import_version(conn, import)?.ok_or(StorageError::ImportNotFound(import))
        })
        .await
    }

    async fn health(&self) -> Result<(), StorageError> {
        self.read(|conn| {
            conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
                .map_err(|e| StorageError::Unavailable(e.to_string()))
        })
        .await?;
        // Writable means room for at least the reserve: a volume with less
        // is full for practical purposes, whatever the last write did.
        let free = free_bytes(&self.path);
        if let Some(free) = free.filter(|free| *free < RESERVE_BYTES as u64) {
            self.writable.store(false, Ordering::Release);
            return Err(StorageError::Full(format!(
                "{free} bytes free on the database's volume"
            )));
        }
        if self.writable.load(Ordering::Acquire) {
            return Ok(());
        }
        // Room again after a full disk: a real write, after which the writer
        // shrinks the WAL and restores the reserve (see `recovered`).
        self.write((), |conn, ()| {
            let version: i64 = conn
                .pragma_query_value(None, "user_version", |row| row.get(0))
                .map_err(internal)?;
            conn.pragma_update(None, "user_version", version)
                .map_err(internal)
        })
        .await
    }

    async fn close(&self) {
        // Dropping the senders lets the threads drain their queues and stop.
        self.writer.lock().expect("writer lock").take();
        self.readers.lock().expect("readers lock").take();
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads lock"));
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                if thread.join().is_err() {
                    tracing::error!("a sqlite thread panicked");
                }
            }
        })
        .await;
        if joined.is_err() {
            tracing::error!("joining sqlite threads failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::workers::EXPAND_CHUNK;
    use super::*;

    #[test]
    fn the_page_caches_take_a_quarter_of_the_budget_with_a_floor() {
        const MIB: u64 = 1 << 20;
        let default = PageCaches::of(256 * MIB, 4);
        assert_eq!((default.writer, default.reader), (32 * MIB, 8 * MIB));
        assert_eq!(default.total(4), 64 * MIB);
        let small = PageCaches::of(32 * MIB, 4);
        assert_eq!((small.writer, small.reader), (4 * MIB, MIB));
        let none = PageCaches::of(0, 4);
        assert_eq!((none.writer, none.reader), (2 * MIB, MIB));
        assert_eq!(PageCaches::pragma(8 * MIB), "PRAGMA cache_size = -8192;");
    }

    #[test]
    fn a_full_disk_is_told_apart_from_other_sqlite_failures() {
        let failure = |code| {
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some("why".into()))
        };
        assert!(matches!(
            internal(failure(rusqlite::ffi::SQLITE_FULL)),
            StorageError::Full(_)
        ));
        assert!(matches!(
            internal(failure(rusqlite::ffi::SQLITE_CORRUPT)),
            StorageError::Internal(_)
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn imports_stored_one_after_another_are_written_as_rows_equal_to_their_citizens() {
        // The writer writes an import's rows from the citizens its write
        // handed over, or from its blob when another import's are held:
        // either way, the rows are the citizens stored.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handed.db");
        let storage = Arc::new(SqliteStorage::open(&path, 2).unwrap());
        let sets = [sample(5_000), sample(3_000), sample(7), sample(4_500)];
        let stored = futures_util::future::try_join_all(sets.iter().map(|citizens| {
            let storage = Arc::clone(&storage);
            let citizens = citizens.clone();
            async move { storage.create_import(citizens, Upload::default()).await }
        }))
        .await
        .unwrap();
        until("every import written as rows", || {
            (staged_imports(&path) == 0).then_some(())
        })
        .await;
        let conn = Connection::open(&path).unwrap();
        for (import, citizens) in stored.iter().zip(&sets) {
            assert_written_as_rows(&conn, &storage, *import, citizens).await;
        }
        storage.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_patch_right_after_an_import_writes_its_rows_from_the_citizens_held_and_applies() {
        // The import's write hands its citizens to the writer, and the PATCH
        // that comes at once writes the import's rows from them, a chunk per
        // write, then applies.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held.db");
        let storage = SqliteStorage::open(&path, 2).unwrap();
        let mut citizens = sample(7_000);
        let import = storage
            .create_import(citizens.clone(), Upload::default())
            .await
            .unwrap();
        let patched = &mut citizens[6_999];
        let patch = CitizenPatch {
            name: Some(crate::domain::Name::parse("Held Copy".to_owned()).unwrap()),
            ..CitizenPatch::default()
        };
        patch.apply_fields(patched);
        let answer = storage
            .patch_citizen(import, patched.citizen_id, patch)
            .await
            .unwrap();
        assert_eq!(answer.citizen, *patched);
        assert_eq!(staged_imports(&path), 0);
        let conn = Connection::open(&path).unwrap();
        assert_written_as_rows(&conn, &storage, import, &citizens).await;
        storage.close().await;
    }

    #[tokio::test]
    async fn staged_imports_left_by_a_crash_are_written_as_rows_after_the_start_and_a_broken_one_is_passed_over()
     {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("staged.db");
        SqliteStorage::open(&path, 1).unwrap().close().await;
        // What a crash right after three imports leaves: their blobs, no rows;
        // the second's blob garbled.
        let (first, second, third) = (sample(5_000), sample(30), sample(100));
        let conn = Connection::open(&path).unwrap();
        let stage = |citizens: &[Citizen]| {
            let blob = encode_staged(citizens).unwrap();
            let summary = Summary::of(citizens);
            insert_import(&conn, citizens.len(), &blob, &summary, &Upload::default()).unwrap()
        };
        let imports = [stage(&first), stage(&second), stage(&third)];
        conn.execute(
            "UPDATE staged_citizens SET body = x'01dc' WHERE import_id = ?1",
            [imports[1]],
        )
        .unwrap();
        drop(conn);

        let metrics = Arc::new(Metrics::default());
        let storage = SqliteStorage::open_with(
            &path,
            1,
            (WRITE_QUEUE, READ_QUEUE),
            PageCaches::of(0, 1),
            &metrics,
        )
        .unwrap();
        until("the good imports written as rows", || {
            (staged_imports(&path) == 1).then_some(())
        })
        .await;
        let conn = Connection::open(&path).unwrap();
        let staged: i64 = conn
            .query_row("SELECT import_id FROM staged_citizens", [], |r| r.get(0))
            .unwrap();
        assert_eq!(staged, imports[1].get(), "the broken one stays staged");
        let gauge = until("the gauge at the one left", || {
            let text = metrics.render();
            text.lines()
                .any(|line| line == "gifts_sqlite_staged_imports 1")
                .then_some(())
        });
        gauge.await;
        for (import, citizens) in [(imports[0], &first), (imports[2], &third)] {
            assert_written_as_rows(&conn, &storage, import, citizens).await;
        }
        assert!(storage.citizens(imports[1]).await.is_err());
        let id = second[0].citizen_id;
        assert!(
            storage
                .patch_citizen(imports[1], id, CitizenPatch::default())
                .await
                .is_err()
        );
        // A close is not held up by the broken one.
        storage.close().await;
        assert_eq!(staged_imports(&path), 1);
    }

    #[tokio::test]
    async fn a_database_of_an_older_schema_is_migrated_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(
                "INSERT INTO imports (created_at) VALUES (0);
                 INSERT INTO citizens VALUES
                     (1, 7, 'A', 'B', 'C', 1, 'N', '2000-01-31', 'male', x'0800000000000000'),
                     (1, 8, 'A', 'B', 'C', 1, 'N', '1990-05-02', 'male', x'0700000000000000');
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let storage = SqliteStorage::open(&path, 1).unwrap();
        let import = ImportId::new(1).unwrap();
        let snapshot = storage.citizens(import).await.unwrap();
        assert_eq!(snapshot.version, 1);
        assert_eq!(snapshot.citizens[0].citizen_id.get(), 7);
        assert_eq!(snapshot.citizens[0].birth_date.to_string(), "31.01.2000");
        // The summary of the stored import was computed by the migration.
        let (version, birthdays) = storage.presents(import).await.unwrap();
        assert_eq!(
            (version, birthdays),
            (1, crate::domain::stats::birthdays(&snapshot.citizens))
        );
        let (_, towns) = storage.town_dates(import).await.unwrap();
        assert_eq!(towns, Summary::of(&snapshot.citizens).towns);
        storage.close().await;
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, count(MIGRATIONS.len()));
    }

    /// `n` citizens of the sample generator, with relatives, as parsed.
    pub(super) fn sample(n: u64) -> Vec<Citizen> {
        use crate::http::wire::{self, ImportBody, Object};
        let body = crate::sample::import_body(n, usize::try_from(n / 4).unwrap(), 7);
        wire::parse::<Object<ImportBody>>(&body)
            .unwrap()
            .0
            .into_citizens(crate::domain::today_utc())
            .unwrap()
    }

    fn spec_citizens() -> Vec<Citizen> {
        citizens(2)
    }

    /// `n` citizens without relatives, the first two as in the spec.
    fn citizens(n: u64) -> Vec<Citizen> {
        use crate::domain::{Apartment, BirthDate, Gender, Name, Place};
        let today = time::OffsetDateTime::now_utc().date();
        (1..=n)
            .map(|id| Citizen {
                citizen_id: CitizenId::parse(id).unwrap(),
                town: Place::parse("Москва".into()).unwrap(),
                street: Place::parse("Льва Толстого".into()).unwrap(),
                building: Place::parse("16".into()).unwrap(),
                apartment: Apartment::parse(7).unwrap(),
                name: Name::parse(format!("Житель {id}")).unwrap(),
                birth_date: BirthDate::parse("26.12.1986", today).unwrap(),
                gender: Gender::parse("male").unwrap(),
                // Pairs: 1 and 2, 3 and 4, …
                relatives: [id + 1 - 2 * ((id + 1) % 2)]
                    .into_iter()
                    .filter(|&r| r <= n)
                    .map(|r| CitizenId::parse(r).unwrap())
                    .collect(),
            })
            .collect()
    }

    /// Rows of the summary tables, of any import.
    fn summary_rows(path: &Path) -> (i64, i64) {
        let conn = Connection::open(path).unwrap();
        conn.query_row(
            "SELECT (SELECT count(*) FROM presents), (SELECT count(*) FROM town_dates)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    /// Holds the writer thread busy until the returned sender is dropped or used.
    async fn block_writer(storage: &Arc<SqliteStorage>) -> std::sync::mpsc::Sender<()> {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (started, running) = oneshot::channel::<()>();
        let blocker = Arc::clone(storage);
        tokio::spawn(async move {
            blocker
                .write(
                    (released, Mutex::new(Some(started))),
                    |_, (released, started)| {
                        if let Some(started) = started.lock().unwrap().take() {
                            let _ = started.send(());
                        }
                        let _ = released.recv();
                        Ok(())
                    },
                )
                .await
        });
        running.await.unwrap();
        release
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_write_queue_refuses_at_once_and_jobs_of_gone_callers_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(
            SqliteStorage::open_with(
                &dir.path().join("q.db"),
                1,
                (2, 8),
                PageCaches::of(0, 1),
                &Arc::default(),
            )
            .unwrap(),
        );
        let import = storage
            .create_import(spec_citizens(), Upload::default())
            .await
            .unwrap();
        let release = block_writer(&storage).await;

        // The writer is busy: two writes wait in the queue, a third is refused at once.
        let id = CitizenId::parse(1).unwrap();
        /// Polls a future once, so a storage call queues its job, and keeps it.
        async fn queued<F: std::future::Future + Unpin>(mut future: F) -> F {
            tokio::select! {
                biased;
                _ = &mut future => panic!("finished while the writer is busy"),
                () = std::future::ready(()) => future,
            }
        }
        let waiting = queued(storage.patch_citizen(import, id, rename_patch())).await;
        let gone = queued(storage.patch_citizen(import, id, rename_patch())).await;
        let refused = storage
            .create_import(spec_citizens(), Upload::default())
            .await;
        assert!(
            matches!(refused, Err(StorageError::Overloaded(_))),
            "{refused:?}"
        );

        // One caller gives up (a timeout, a disconnect) before its write starts.
        drop(gone);
        release.send(()).unwrap();
        let patched = waiting.await.unwrap();
        let version = storage.import_version(import).await.unwrap();
        assert_eq!(
            patched.version, version,
            "the abandoned patch was not applied"
        );
        assert_eq!(version, 2, "one patch on top of the import's first version");
        storage.close().await;
    }

    #[tokio::test]
    async fn after_close_every_call_is_unavailable_and_the_wal_is_folded_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("closed.db");
        let storage = SqliteStorage::open(&path, 2).unwrap();
        let import = storage
            .create_import(spec_citizens(), Upload::default())
            .await
            .unwrap();
        storage.health().await.expect("healthy while open");
        let wal = dir.path().join("closed.db-wal");
        assert!(
            wal.metadata().unwrap().len() > 0,
            "the write went to the WAL"
        );

        storage.close().await;
        let unavailable = |what: &str, result: Result<(), StorageError>| {
            assert!(
                matches!(result, Err(StorageError::Unavailable(_))),
                "{what} after close: {result:?}"
            );
        };
        unavailable("health", storage.health().await);
        unavailable("citizens", storage.citizens(import).await.map(drop));
        unavailable(
            "create_import",
            storage
                .create_import(spec_citizens(), Upload::default())
                .await
                .map(drop),
        );
        let id = CitizenId::parse(1).unwrap();
        unavailable(
            "patch_citizen",
            storage
                .patch_citizen(import, id, CitizenPatch::default())
                .await
                .map(drop),
        );
        // TRUNCATE on close: the WAL is empty, everything is in the database.
        assert_eq!(wal.metadata().map_or(0, |m| m.len()), 0);
        let conn = Connection::open(&path).unwrap();
        let count: i64 = conn
            .query_row("SELECT count(*) FROM citizens", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 2);
    }

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    /// Renames citizen 1 of `import` (a write of one row).
    async fn rename_first(storage: &SqliteStorage, import: ImportId) {
        let id = CitizenId::parse(1).unwrap();
        storage
            .patch_citizen(import, id, rename_patch())
            .await
            .unwrap();
    }

    fn rename_patch() -> CitizenPatch {
        CitizenPatch {
            name: Some(crate::domain::Name::parse("Новое".into()).unwrap()),
            ..CitizenPatch::default()
        }
    }

    // The writer answers a batch, then does its after-batch work (recovery,
    // checkpoints), then takes the next batch: once a later write is
    // answered, an earlier write's after-batch work is done.

    #[tokio::test]
    async fn ordinary_writes_keep_the_wal_and_leave_the_reserve_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ordinary.db");
        let storage = SqliteStorage::open(&path, 1).unwrap();
        let (wal, reserve) = (dir.path().join("ordinary.db-wal"), reserve_path(&path));
        std::fs::remove_file(&reserve).unwrap();

        let import = storage
            .create_import(citizens(2_000), Upload::default())
            .await
            .unwrap();
        let after_import = file_len(&wal);
        assert!(after_import > 0, "the import is in the WAL");
        storage.health().await.expect("healthy");
        rename_first(&storage, import).await;

        // Recovery (truncate the WAL, rewrite the reserve) is for the first
        // write after a full disk only; after every batch it would cost a
        // checkpoint and a 1 MiB fsync.
        assert!(
            file_len(&wal) >= after_import,
            "the WAL still holds the import: {} < {after_import} bytes",
            file_len(&wal)
        );
        assert!(!reserve.exists(), "an ordinary write rewrote the reserve");
        assert!(storage.writable.load(Ordering::Acquire));
        storage.close().await;
    }

    #[tokio::test]
    async fn a_wal_grown_past_its_limit_is_cut_back_once_it_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limit.db");
        let storage = SqliteStorage::open(&path, 1).unwrap();
        let wal = dir.path().join("limit.db-wal");
        let limit = u64::try_from(WAL_SIZE_LIMIT).unwrap();

        // A reader on an old snapshot keeps the WAL from starting over, so
        // imports grow it past the limit, as a burst beside PATCHes does.
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM imports", [], |r| r.get(0))
            .unwrap();
        let mut import = None;
        while file_len(&wal) <= 2 * limit {
            import = Some(
                storage
                    .create_import(citizens(20_000), Upload::default())
                    .await
                    .unwrap(),
            );
        }
        reader.execute_batch("COMMIT").unwrap();
        drop(reader);
        let import = import.unwrap();
        // The writer writes the staged imports as rows meanwhile: that is
        // WAL too, so it is waited for.
        until("every import written as rows", || {
            (staged_imports(&path) == 0).then_some(())
        })
        .await;

        // Once the WAL is wholly folded back (as the checkpointer does
        // beside the writes that follow), the next write starts it over: that
        // commit cuts the file back. A checkpoint of the store's own may be
        // under way (then this one does nothing and answers -1): again.
        let folder = Connection::open(&path).unwrap();
        let folded_back = || {
            let (log, folded): (i64, i64) = folder
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(1)?, r.get(2)?))
                })
                .unwrap();
            log >= 0 && folded == log
        };
        until("the WAL wholly folded back", || folded_back().then_some(())).await;
        rename_first(&storage, import).await;
        assert!(
            file_len(&wal) <= limit,
            "the WAL file is still {} bytes (limit {limit})",
            file_len(&wal)
        );
        storage.close().await;
    }

    #[tokio::test]
    async fn the_first_write_after_a_full_disk_truncates_the_wal_and_restores_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recovering.db");
        let storage = Arc::new(SqliteStorage::open(&path, 1).unwrap());
        let (wal, reserve) = (dir.path().join("recovering.db-wal"), reserve_path(&path));
        let import = storage
            .create_import(citizens(5_000), Upload::default())
            .await
            .unwrap();
        // Its rows too (a PATCH writes them first).
        rename_first(&storage, import).await;
        // The state a write that failed for lack of space leaves: not
        // writable, the reserve spent; set while the writer is held in a
        // write (so it is not between its answer and its last look at the
        // state), which is then the first write after the full disk.
        let release = block_writer(&storage).await;
        storage.writable.store(false, Ordering::Release);
        std::fs::remove_file(&reserve).unwrap();
        release.send(()).unwrap();

        rename_first(&storage, import).await;

        assert_eq!(
            file_len(&reserve),
            RESERVE_BYTES as u64,
            "the reserve is back"
        );
        assert!(storage.writable.load(Ordering::Acquire), "writable again");
        // 5,000 citizens take well over a megabyte of WAL; after the truncation
        // it holds only the PATCH.
        assert!(
            file_len(&wal) < 256 << 10,
            "the WAL was truncated: {} bytes",
            file_len(&wal)
        );
        storage.close().await;
    }

    /// Imports by their pending flag, read beside the store.
    fn imports_by_pending(path: &Path) -> Vec<(i64, bool, i64)> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT import_id, pending, (SELECT count(*) FROM citizens c
                                              WHERE c.import_id = i.import_id)
                 FROM imports i ORDER BY import_id",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// That `import` is stored as one row per citizen, and reads back as
    /// `citizens`.
    async fn assert_written_as_rows(
        conn: &Connection,
        storage: &SqliteStorage,
        import: ImportId,
        citizens: &[Citizen],
    ) {
        let rows: i64 = conn
            .query_row(
                "SELECT count(*) FROM citizens WHERE import_id = ?1",
                [import],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(rows, count(citizens.len()));
        let read = storage.citizens(import).await.unwrap();
        assert!(read.citizens.iter().map(|c| &**c).eq(citizens.iter()));
    }

    /// Imports still staged (not all written as rows), read beside the store.
    fn staged_imports(path: &Path) -> i64 {
        workers::count_staged(&Connection::open(path).unwrap()).unwrap()
    }

    /// Polls `check` (at most 60 s) until it gives a value.
    async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(std::time::Instant::now() < deadline, "never {what} (60 s)");
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    async fn until_pending(path: &Path) -> i64 {
        until("a pending import", || {
            imports_by_pending(path)
                .into_iter()
                .find(|i| i.1)
                .map(|i| i.0)
        })
        .await
    }

    const BIG: u64 = CHUNKED_FROM as u64 + 5;

    #[test]
    fn imports_are_chunked_from_131_073_citizens_in_chunks_of_8_192() {
        // As docs/storage.md says: up to 131,072 citizens one write of a
        // blob (faster for them), past that 8,192 rows per write (about 25 ms
        // each); a staged import's rows 2,048 per write.
        assert_eq!(
            (CHUNKED_FROM, IMPORT_CHUNK, EXPAND_CHUNK),
            (131_072, 8_192, 2_048)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_big_import_is_written_in_chunks_invisibly_while_other_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chunks.db");
        let storage = Arc::new(SqliteStorage::open(&path, 2).unwrap());
        let small = storage
            .create_import(spec_citizens(), Upload::default())
            .await
            .unwrap();
        let writing = {
            let storage = Arc::clone(&storage);
            tokio::spawn(async move {
                storage
                    .create_import(citizens(BIG), Upload::default())
                    .await
            })
        };
        let pending = ImportId::new(until_pending(&path).await).unwrap();

        // Mid-way: invisible to every operation, and other writes are answered.
        assert!(matches!(
            storage.citizens(pending).await,
            Err(StorageError::ImportNotFound(_))
        ));
        assert!(matches!(
            storage
                .patch_citizen(pending, CitizenId::parse(1).unwrap(), rename_patch())
                .await,
            Err(StorageError::ImportNotFound(_))
        ));
        assert_eq!(storage.list_imports(10, None, None).await.unwrap().len(), 1);
        assert_eq!(storage.totals().await.unwrap(), (1, 2));
        let id = CitizenId::parse(1).unwrap();
        storage
            .patch_citizen(small, id, rename_patch())
            .await
            .unwrap();
        assert!(
            !writing.is_finished(),
            "the PATCH waited for the whole import"
        );

        let import = writing.await.unwrap().unwrap();
        assert_eq!(import, pending);
        let snapshot = storage.citizens(import).await.unwrap();
        assert_eq!(snapshot.citizens.len() as u64, BIG);
        assert_eq!(snapshot.version, 1);
        // Its presents rows were written in chunks too.
        let (_, birthdays) = storage.presents(import).await.unwrap();
        assert_eq!(
            birthdays.0[11].len() as u64,
            BIG - 1,
            "all but the last, who has no pair"
        );
        assert_eq!(
            birthdays,
            crate::domain::stats::birthdays(&snapshot.citizens)
        );
        assert_eq!(storage.totals().await.unwrap(), (2, 2 + BIG));
        assert_eq!(
            imports_by_pending(&path),
            vec![
                (small.get(), false, 2),
                (import.get(), false, i64::try_from(BIG).unwrap())
            ]
        );
        storage.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_big_import_is_deleted_and_a_crashed_one_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abandoned.db");
        let storage = Arc::new(SqliteStorage::open(&path, 1).unwrap());
        let writing = {
            let storage = Arc::clone(&storage);
            tokio::spawn(async move {
                storage
                    .create_import(citizens(BIG), Upload::default())
                    .await
            })
        };
        until_pending(&path).await;
        writing.abort(); // the caller goes away mid-way
        assert!(writing.await.unwrap_err().is_cancelled());
        // Deleted in the background, a chunk per write.
        until("the abandoned import deleted", || {
            imports_by_pending(&path).is_empty().then_some(())
        })
        .await;
        assert_eq!(summary_rows(&path), (0, 0));
        storage.close().await;

        // A crash mid-way leaves a pending import: the next start deletes it.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO imports (created_at, citizens, pending) VALUES (0, 2, 1);
             INSERT INTO citizens VALUES (last_insert_rowid(), 1, 'A', 'B', 'C', 1, 'N', '2000-01-31', 'male', x'');
             INSERT INTO presents VALUES (last_insert_rowid(), 1, 1, 1);
             INSERT INTO town_dates VALUES (last_insert_rowid(), 'A', x'');",
        )
        .unwrap();
        drop(conn);
        assert_eq!(imports_by_pending(&path).len(), 1);
        assert_eq!(summary_rows(&path), (1, 1));
        let storage = SqliteStorage::open(&path, 1).unwrap();
        assert_eq!(imports_by_pending(&path), vec![]);
        assert_eq!(summary_rows(&path), (0, 0));
        storage.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_big_imports_with_one_key_store_one_import() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let storage = Arc::new(SqliteStorage::open(&path, 1).unwrap());
        let key = Upload {
            name: None,
            digest: [7; 32],
            key: Some("k-1".into()),
        };
        let both: Vec<_> = (0..2)
            .map(|_| {
                let (storage, key) = (Arc::clone(&storage), key.clone());
                tokio::spawn(async move { storage.create_import(citizens(BIG), key).await })
            })
            .collect();
        let mut ids = Vec::new();
        for one in both {
            ids.push(one.await.unwrap().unwrap());
        }
        assert_eq!(ids[0], ids[1], "both requests get the one import");
        // The other request's rows are deleted in the background.
        let imports = until("one import left", || {
            Some(imports_by_pending(&path)).filter(|i| i.len() == 1)
        })
        .await;
        assert_eq!(
            imports[0],
            (ids[0].get(), false, i64::try_from(BIG).unwrap())
        );
        storage.close().await;
    }

    #[tokio::test]
    async fn a_missing_directory_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/gifts.db");
        let storage = SqliteStorage::open(&path, 1).unwrap();
        assert!(path.exists());
        storage.close().await;
    }

    #[test]
    fn a_database_of_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99;")
            .unwrap();
        let error = SqliteStorage::open(&path, 1).err().expect("refused");
        assert!(format!("{error:?}").contains("newer"), "{error:?}");
    }
}
