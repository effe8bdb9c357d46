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
//! - the writer checkpoints the WAL itself, after answering, instead of
//!   letting a commit that crosses SQLite's auto-checkpoint threshold pay for it.
//!
//! Both queues are bounded: when one is full a request is refused at once
//! (`Overloaded`, 503 with `Retry-After`) instead of waiting behind work it
//! cannot finish in time. A job whose caller has gone (timeout, disconnect)
//! before it starts is dropped unapplied; one already applied stays applied.
//!
//! A full disk is a state, not a fault: a write that fails for lack of space
//! answers `Full` (507) and marks the store unwritable; reads go on. While
//! unwritable, `health` probes with a real one-page write; the first write
//! that succeeds again truncates the WAL (which a failed big write may have
//! grown) and restores the reserve file. The reserve — `PATH.reserve`,
//! [`RESERVE_BYTES`] of real blocks — is deleted when opening fails, so a
//! start on a full disk still finds room for SQLite's shared-memory file and
//! serves reads.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Row, TransactionBehavior, params,
};
use tokio::sync::oneshot;

use super::row::{StoredCitizen, iso_date};
use super::{Idempotency, ImportInfo, Patched, Snapshot, Storage, StorageError, Version};
use crate::domain::relatives::{Edit, mirror_edits};
use crate::domain::{Citizen, CitizenId, CitizenPatch, ImportId, Reason, ValidationError};
use crate::metrics::{KindLabels, Metrics};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

/// Schema migrations; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: imports and citizens. AUTOINCREMENT keeps import ids from ever being
    // reused; relatives are an ascending list of little-endian i64 in a BLOB,
    // read and written whole (lists are short, and a PATCH touches few rows).
    "CREATE TABLE imports (
        import_id  INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE citizens (
        import_id  INTEGER NOT NULL REFERENCES imports (import_id),
        citizen_id INTEGER NOT NULL,
        town       TEXT    NOT NULL,
        street     TEXT    NOT NULL,
        building   TEXT    NOT NULL,
        apartment  INTEGER NOT NULL,
        name       TEXT    NOT NULL,
        birth_date TEXT    NOT NULL,
        gender     TEXT    NOT NULL,
        relatives  BLOB    NOT NULL,
        PRIMARY KEY (import_id, citizen_id)
    ) WITHOUT ROWID;",
    // 2: a per-import version, bumped by every PATCH, to validate cached answers.
    "ALTER TABLE imports ADD COLUMN version INTEGER NOT NULL DEFAULT 1;",
    // 3: idempotency keys of POST /imports, with the hash of the body they came with.
    "CREATE TABLE idempotency_keys (
        key        TEXT    PRIMARY KEY,
        body_hash  BLOB    NOT NULL,
        import_id  INTEGER NOT NULL REFERENCES imports (import_id)
    ) WITHOUT ROWID;",
    // 4: each import's number of citizens, for the import list without counting rows;
    // keys found by import, for deleting an import.
    "ALTER TABLE imports ADD COLUMN citizens INTEGER NOT NULL DEFAULT 0;
     UPDATE imports SET citizens =
         (SELECT count(*) FROM citizens c WHERE c.import_id = imports.import_id);
     CREATE INDEX idempotency_keys_by_import ON idempotency_keys (import_id);",
];

/// Most writes committed together in one transaction.
const MAX_BATCH: usize = 256;
/// Writes that may wait for the writer thread; more are refused (503).
pub const WRITE_QUEUE: usize = 1024;
/// Reads that may wait for a reader thread; more are refused (503).
pub const READ_QUEUE: usize = 4096;
/// Space kept in `PATH.reserve` for a start on a full disk.
pub const RESERVE_BYTES: usize = 1 << 20;

type ReadJob = Box<dyn FnOnce(&mut Connection) + Send>;

/// One write, type-erased: every kind of write is a closure over the open
/// transaction plus a way to tell that its caller has gone.
struct WriteJob {
    /// True when nobody waits for the answer any more.
    abandoned: Box<dyn Fn() -> bool + Send>,
    /// Runs inside the batch's transaction; returns how to answer once the
    /// commit's outcome is known.
    run: Box<dyn FnOnce(&Connection) -> Ran + Send>,
}

/// Sends a write's answer once the commit's outcome is known.
type Answer = Box<dyn FnOnce(Option<&CommitFailure>) + Send>;

/// A write that ran in the open transaction and waits for the commit.
struct Ran {
    /// Whether its own changes stand (else its savepoint is rolled back).
    ok: bool,
    /// Whether it failed for lack of disk space.
    full: bool,
    /// Sends the answer: the job's result, or the commit's failure.
    answer: Answer,
    /// What the job consumed, freed after the answers are out (a big
    /// import's citizens take a while to free).
    spent: Box<dyn Send>,
}

/// Why a batch's commit failed, for every job in it.
#[derive(Debug, Clone)]
struct CommitFailure {
    full: bool,
    text: String,
}

impl CommitFailure {
    fn error(&self) -> StorageError {
        if self.full {
            StorageError::Full(format!("commit failed: {}", self.text))
        } else {
            StorageError::internal(format!("commit failed: {}", self.text))
        }
    }
}

impl WriteJob {
    /// A write of `work` over `payload`, answered on `reply`.
    fn new<P, T>(
        payload: P,
        reply: oneshot::Sender<Result<T, StorageError>>,
        work: impl FnOnce(&Connection, &P) -> Result<T, StorageError> + Send + 'static,
    ) -> Self
    where
        P: Send + 'static,
        T: Send + 'static,
    {
        let reply = Arc::new(Mutex::new(Some(reply)));
        let watched = Arc::clone(&reply);
        WriteJob {
            abandoned: Box::new(move || {
                watched
                    .lock()
                    .expect("reply lock")
                    .as_ref()
                    .is_none_or(tokio::sync::oneshot::Sender::is_closed)
            }),
            run: Box::new(move |conn| {
                let result = work(conn, &payload);
                Ran {
                    ok: result.is_ok(),
                    full: matches!(result, Err(StorageError::Full(_))),
                    answer: Box::new(move |commit| {
                        let result = match (result, commit) {
                            (Ok(_), Some(failure)) => Err(failure.error()),
                            (result, _) => result,
                        };
                        if let Some(reply) = reply.lock().expect("reply lock").take() {
                            // A caller that gave up has dropped its receiver; nothing to do.
                            drop(reply.send(result));
                        }
                    }),
                    spent: Box::new(payload),
                }
            }),
        }
    }
}

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

fn reserve_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".reserve");
    PathBuf::from(name)
}

/// Bytes free for unprivileged writes on the volume holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Writes the reserve file if it is missing and there is room (best effort).
fn ensure_reserve(path: &Path) {
    let reserve = reserve_path(path);
    if reserve.exists() {
        return;
    }
    let written = std::fs::write(&reserve, vec![0u8; RESERVE_BYTES])
        .and_then(|()| std::fs::File::open(&reserve)?.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&reserve);
        tracing::warn!(path = %reserve.display(), error = %e, "cannot write the disk-space reserve");
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
        Self::open_with(path, readers, (WRITE_QUEUE, READ_QUEUE), &Arc::default())
    }

    /// [`SqliteStorage::open`] with other (write, read) queue bounds, and the
    /// metrics to record batch sizes and queue depths in.
    pub fn open_with(
        path: &Path,
        readers: usize,
        queues: (usize, usize),
        metrics: &Arc<Metrics>,
    ) -> Result<Self, StorageError> {
        match Self::open_once(path, readers, queues, metrics) {
            Err(e) if reserve_path(path).exists() => {
                // Perhaps the disk is full: give SQLite the reserved room and try again.
                tracing::warn!(error = %e, "opening the database failed; retrying with the disk-space reserve freed");
                std::fs::remove_file(reserve_path(path)).map_err(StorageError::internal)?;
                let storage = Self::open_once(path, readers, queues, metrics)?;
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
        let mut writer = Connection::open(path)
            .map_err(|e| StorageError::internal(format!("cannot open {}: {e}", path.display())))?;
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA foreign_keys = ON;
                 PRAGMA busy_timeout = 5000;
                 PRAGMA cache_size = -65536;",
            )
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
        // Checkpoints run in the writer loop once a batch is answered (see
        // `writer_loop`), not inside a commit as SQLite's auto-checkpoint would.
        let wal_pages = Arc::new(AtomicI32::new(0));
        let pages = Arc::clone(&wal_pages);
        writer
            .wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, n: i32| {
                pages.store(n, Ordering::Relaxed);
                Ok(())
            }))
            .map_err(internal)?;

        ensure_reserve(path);
        let writable = Arc::new(AtomicBool::new(true));
        let (write_tx, write_rx) = mpsc::sync_channel(write_queue);
        let depth = |kind| {
            metrics
                .sqlite_queue_depth
                .get_or_create(&KindLabels { kind })
                .clone()
        };
        let (write_depth, read_depth) = (depth("write"), depth("read"));
        let state = WriterState {
            wal_pages,
            writable: Arc::clone(&writable),
            path: path.to_owned(),
            depth: write_depth.clone(),
            batch_size: metrics.sqlite_batch_size.clone(),
        };
        let mut threads = vec![
            std::thread::Builder::new()
                .name("sqlite-writer".into())
                .spawn(move || writer_loop(writer, &write_rx, &state))
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
            conn.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA cache_size = -16384;")
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
        let (reply, answer) = oneshot::channel();
        // The lock is held only to clone the sender, never across an await.
        let sender = self.writer.lock().expect("writer lock").clone();
        queue(
            sender,
            WriteJob::new(payload, reply, work),
            "write",
            self.queues.0,
        )?;
        answer.await.map_err(|_| closed())?
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

/// Brings the schema up to date; returns the version it had before.
fn migrate(conn: &mut Connection) -> Result<usize, StorageError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(internal)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(internal)?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(StorageError::internal(format!(
            "database schema version {version} is newer than this build knows ({})",
            MIGRATIONS.len()
        )));
    }
    if version == MIGRATIONS.len() {
        // Up to date: write nothing (a start on a full disk must get through).
        return Ok(version);
    }
    for sql in &MIGRATIONS[version..] {
        tx.execute_batch(sql).map_err(internal)?;
    }
    tx.pragma_update(None, "user_version", count(MIGRATIONS.len()))
        .map_err(internal)?;
    tx.commit().map_err(internal)?;
    Ok(version)
}

fn reader_loop(mut conn: Connection, jobs: &Mutex<mpsc::Receiver<ReadJob>>, depth: &Gauge) {
    loop {
        // Holding the lock while waiting is the point: one idle reader waits on
        // the channel, the others wait on the lock; a job goes to exactly one.
        let job = match jobs.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => {
                depth.dec();
                job(&mut conn);
            }
            Err(_) => return, // every sender dropped: the store is closing
        }
    }
}

/// WAL size (pages) from which the writer checkpoints when it is idle.
const CHECKPOINT_PAGES: i32 = 4096;
/// WAL size (pages) from which it checkpoints even when writes are queued.
const FORCE_CHECKPOINT_PAGES: i32 = 65536;

/// What the writer thread keeps besides its connection.
struct WriterState {
    wal_pages: Arc<AtomicI32>,
    writable: Arc<AtomicBool>,
    path: PathBuf,
    depth: Gauge,
    batch_size: Histogram,
}

fn writer_loop(mut conn: Connection, jobs: &mpsc::Receiver<WriteJob>, state: &WriterState) {
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => break, // every sender dropped: the store is closing
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        state.depth.dec_by(count(batch.len()));
        // A job whose caller is gone is dropped here, unapplied.
        batch.retain(|job| !(job.abandoned)());
        state.batch_size.observe(batch.len() as f64);
        if batch.is_empty() {
            continue;
        }
        let mut ran = Vec::with_capacity(batch.len());
        let commit = run_batch(&mut conn, batch, &mut ran)
            .err()
            .map(|e| CommitFailure {
                full: e.sqlite_error_code() == Some(ErrorCode::DiskFull),
                text: e.to_string(),
            });
        let mut spent = Vec::with_capacity(ran.len());
        let mut full = commit.as_ref().is_some_and(|c| c.full);
        for job in ran {
            full |= job.full;
            (job.answer)(commit.as_ref());
            spent.push(job.spent);
        }
        // Freeing a big import's citizens takes a while: after the answers.
        drop(spent);
        match &commit {
            Some(failure) => tracing::error!(error = %failure.text, "sqlite commit failed"),
            None if !full && !state.writable.load(Ordering::Acquire) => recovered(&conn, state),
            None => {}
        }
        if full && state.writable.swap(false, Ordering::AcqRel) {
            tracing::error!(
                path = %state.path.display(),
                "the disk is full: writes get 507 until there is room again; reads go on"
            );
        }
        // Fold the WAL back into the database between batches, after the
        // callers have their answers: when idle, or when the WAL grows large.
        let pages = state.wal_pages.load(Ordering::Relaxed);
        if pages >= CHECKPOINT_PAGES {
            next = jobs.try_recv().ok();
            if next.is_none() || pages >= FORCE_CHECKPOINT_PAGES {
                match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    Ok(()) => state.wal_pages.store(0, Ordering::Relaxed),
                    Err(e) => tracing::warn!(error = %e, "sqlite checkpoint failed"),
                }
            }
        }
    }
    // Leave a clean file behind: fold the whole WAL back into the database.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(error = %e, "sqlite checkpoint on close failed");
    }
}

/// The first successful write after a full disk: shrink the WAL, which a
/// failed write may have grown, and put the reserve back.
fn recovered(conn: &Connection, state: &WriterState) {
    state.writable.store(true, Ordering::Release);
    match conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        Ok(()) => state.wal_pages.store(0, Ordering::Relaxed),
        Err(e) => tracing::warn!(error = %e, "truncating the WAL failed"),
    }
    ensure_reserve(&state.path);
    tracing::info!(path = %state.path.display(), "the disk has room again: writes are accepted");
}

/// Runs every job in its own savepoint of one transaction, so a rejected write
/// rolls back alone, then commits once. Jobs not reached after an error are
/// dropped, which answers their callers `Unavailable`.
fn run_batch(
    conn: &mut Connection,
    batch: Vec<WriteJob>,
    ran: &mut Vec<Ran>,
) -> rusqlite::Result<()> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for job in batch {
        let savepoint = tx.savepoint()?;
        let done = (job.run)(&savepoint);
        if done.ok {
            savepoint.commit()?;
        } // else dropping the savepoint rolls it back
        ran.push(done);
    }
    tx.commit()
}

fn insert_import(
    conn: &Connection,
    citizens: &[Citizen],
    idempotency: Option<&Idempotency>,
) -> Result<ImportId, StorageError> {
    if let Some(Idempotency { key, body_hash }) = idempotency {
        let stored: Option<(Vec<u8>, ImportId)> = conn
            .prepare_cached("SELECT body_hash, import_id FROM idempotency_keys WHERE key = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([key], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()
            })
            .map_err(internal)?;
        if let Some((hash, import)) = stored {
            return if hash == body_hash {
                Ok(import)
            } else {
                Err(StorageError::KeyReused {
                    key: key.clone(),
                    import,
                })
            };
        }
    }
    conn.execute(
        "INSERT INTO imports (created_at, citizens) VALUES (unixepoch(), ?1)",
        [count(citizens.len())],
    )
    .map_err(internal)?;
    let import = ImportId::new(conn.last_insert_rowid())
        .ok_or_else(|| StorageError::internal("sqlite handed out a non-positive import id"))?;
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO citizens (import_id, citizen_id, town, street, building, apartment,
                                   name, birth_date, gender, relatives)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(internal)?;
    let mut blob = Vec::new();
    for c in citizens {
        encode_relatives(&c.relatives, &mut blob);
        insert
            .execute(params![
                import,
                c.citizen_id.as_i64(),
                c.town.as_str(),
                c.street.as_str(),
                c.building.as_str(),
                c.apartment.as_i64(),
                c.name.as_str(),
                iso_date(c.birth_date),
                c.gender.as_str(),
                &blob,
            ])
            .map_err(internal)?;
    }
    if let Some(Idempotency { key, body_hash }) = idempotency {
        conn.prepare_cached(
            "INSERT INTO idempotency_keys (key, body_hash, import_id) VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut stmt| stmt.execute(params![key, &body_hash[..], import]))
        .map_err(internal)?;
    }
    Ok(import)
}

fn patch_citizen(
    conn: &Connection,
    import: ImportId,
    id: CitizenId,
    patch: &CitizenPatch,
) -> Result<Patched, StorageError> {
    let Some(mut citizen) = load_citizen(conn, import, id)? else {
        return Err(if import_exists(conn, import)? {
            StorageError::CitizenNotFound {
                import,
                citizen: id,
            }
        } else {
            StorageError::ImportNotFound(import)
        });
    };
    if let Some(new) = &patch.relatives {
        // The contract of `Storage::patch_citizen`: every list is read
        // before anything is written, an unknown new relative wins over a
        // missing old one.
        let mut edits = Vec::new();
        for (other, edit) in mirror_edits(id, &citizen.relatives, new) {
            edits.push((other, edit, load_relatives(conn, import, other)?));
        }
        if let Some((other, ..)) = edits
            .iter()
            .find(|(_, edit, list)| matches!(edit, Edit::Add(_)) && list.is_none())
        {
            return Err(StorageError::Invalid(ValidationError::new(
                "relatives",
                Some(id),
                Reason::UnknownRelative(*other),
            )));
        }
        if let Some((other, ..)) = edits.iter().find(|(.., list)| list.is_none()) {
            return Err(super::missing_relative(import, id, *other));
        }
        for (other, edit, list) in edits {
            let mut list = list.unwrap_or_default();
            edit.apply(&mut list);
            store_relatives(conn, import, other, &list)?;
        }
        citizen.relatives.clone_from(new);
    }
    patch.apply_fields(&mut citizen);
    let version: i64 = conn
        .prepare_cached(
            "UPDATE imports SET version = version + 1 WHERE import_id = ?1 RETURNING version",
        )
        .and_then(|mut stmt| stmt.query_row([import], |row| row.get(0)))
        .map_err(internal)?;
    let mut blob = Vec::new();
    encode_relatives(&citizen.relatives, &mut blob);
    conn.prepare_cached(
        "UPDATE citizens SET town = ?3, street = ?4, building = ?5, apartment = ?6, name = ?7,
                             birth_date = ?8, gender = ?9, relatives = ?10
         WHERE import_id = ?1 AND citizen_id = ?2",
    )
    .and_then(|mut update| {
        update.execute(params![
            import,
            id.as_i64(),
            citizen.town.as_str(),
            citizen.street.as_str(),
            citizen.building.as_str(),
            citizen.apartment.as_i64(),
            citizen.name.as_str(),
            iso_date(citizen.birth_date),
            citizen.gender.as_str(),
            &blob,
        ])
    })
    .map_err(internal)?;
    Ok(Patched {
        citizen,
        version: Version::try_from(version).map_err(StorageError::internal)?,
    })
}

fn delete_import(conn: &Connection, import: ImportId) -> Result<(), StorageError> {
    if import_version(conn, import)?.is_none() {
        return Err(StorageError::ImportNotFound(import));
    }
    for sql in [
        "DELETE FROM citizens WHERE import_id = ?1",
        "DELETE FROM idempotency_keys WHERE import_id = ?1",
        "DELETE FROM imports WHERE import_id = ?1",
    ] {
        conn.prepare_cached(sql)
            .and_then(|mut stmt| stmt.execute([import]))
            .map_err(internal)?;
    }
    Ok(())
}

fn import_exists(conn: &Connection, import: ImportId) -> Result<bool, StorageError> {
    Ok(import_version(conn, import)?.is_some())
}

fn import_version(conn: &Connection, import: ImportId) -> Result<Option<Version>, StorageError> {
    let version: Option<i64> = conn
        .prepare_cached("SELECT version FROM imports WHERE import_id = ?1")
        .and_then(|mut stmt| stmt.query_row([import], |row| row.get(0)).optional())
        .map_err(internal)?;
    version
        .map(|v| Version::try_from(v).map_err(StorageError::internal))
        .transpose()
}

/// The columns a citizen is read from, in [`Column`]'s order.
const CITIZEN_COLUMNS: &str =
    "citizen_id, town, street, building, apartment, name, birth_date, gender, relatives";

/// Positions in [`CITIZEN_COLUMNS`] (a test checks the two agree).
#[derive(Clone, Copy)]
enum Column {
    CitizenId,
    Town,
    Street,
    Building,
    Apartment,
    Name,
    BirthDate,
    Gender,
    Relatives,
}

fn load_citizen(
    conn: &Connection,
    import: ImportId,
    id: CitizenId,
) -> Result<Option<Citizen>, StorageError> {
    let sql =
        format!("SELECT {CITIZEN_COLUMNS} FROM citizens WHERE import_id = ?1 AND citizen_id = ?2");
    let row = conn
        .prepare_cached(&sql)
        .and_then(|mut stmt| {
            stmt.query_row(params![import, id.as_i64()], |row| Ok(read_row(row)))
                .optional()
        })
        .map_err(internal)?;
    row.transpose()
}

fn load_relatives(
    conn: &Connection,
    import: ImportId,
    id: CitizenId,
) -> Result<Option<Vec<CitizenId>>, StorageError> {
    let blob: Option<Vec<u8>> = conn
        .prepare_cached("SELECT relatives FROM citizens WHERE import_id = ?1 AND citizen_id = ?2")
        .and_then(|mut stmt| {
            stmt.query_row(params![import, id.as_i64()], |row| row.get(0))
                .optional()
        })
        .map_err(internal)?;
    let Some(blob) = blob else { return Ok(None) };
    decode_relatives(&blob)?
        .into_iter()
        .map(|id| CitizenId::parse(id).map_err(|_| StorageError::internal("corrupt relative id")))
        .collect::<Result<_, _>>()
        .map(Some)
}

fn store_relatives(
    conn: &Connection,
    import: ImportId,
    id: CitizenId,
    list: &[CitizenId],
) -> Result<(), StorageError> {
    let mut blob = Vec::new();
    encode_relatives(list, &mut blob);
    conn.prepare_cached(
        "UPDATE citizens SET relatives = ?3 WHERE import_id = ?1 AND citizen_id = ?2",
    )
    .and_then(|mut stmt| stmt.execute(params![import, id.as_i64(), blob]))
    .map_err(internal)?;
    Ok(())
}

fn encode_relatives(list: &[CitizenId], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(list.len() * 8);
    for id in list {
        out.extend_from_slice(&id.as_i64().to_le_bytes());
    }
}

fn decode_relatives(blob: &[u8]) -> Result<Vec<u64>, StorageError> {
    if !blob.len().is_multiple_of(8) {
        return Err(StorageError::internal("corrupt relatives list"));
    }
    blob.chunks_exact(8)
        .map(|chunk| {
            let value = i64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
            u64::try_from(value).map_err(|_| StorageError::internal("corrupt relative id"))
        })
        .collect()
}

/// Rebuilds a citizen from a row of [`CITIZEN_COLUMNS`].
fn read_row(row: &Row<'_>) -> Result<Citizen, StorageError> {
    let unsigned = |column: Column| -> Result<u64, StorageError> {
        let value: i64 = row.get(column as usize).map_err(internal)?;
        u64::try_from(value).map_err(StorageError::internal)
    };
    let text = |column: Column| row.get::<_, String>(column as usize).map_err(internal);
    let relatives: Vec<u8> = row.get(Column::Relatives as usize).map_err(internal)?;
    Citizen::try_from(StoredCitizen {
        citizen_id: unsigned(Column::CitizenId)?,
        town: text(Column::Town)?,
        street: text(Column::Street)?,
        building: text(Column::Building)?,
        apartment: unsigned(Column::Apartment)?,
        name: text(Column::Name)?,
        birth_date: text(Column::BirthDate)?,
        gender: text(Column::Gender)?,
        relatives: decode_relatives(&relatives)?,
    })
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn create_import(
        &self,
        citizens: Vec<Citizen>,
        idempotency: Option<Idempotency>,
    ) -> Result<ImportId, StorageError> {
        self.write((citizens, idempotency), |conn, (citizens, key)| {
            insert_import(conn, citizens, key.as_ref())
        })
        .await
    }

    async fn patch_citizen(
        &self,
        import: ImportId,
        citizen: CitizenId,
        patch: CitizenPatch,
    ) -> Result<Patched, StorageError> {
        self.write(patch, move |conn, patch| {
            patch_citizen(conn, import, citizen, patch)
        })
        .await
    }

    async fn citizens(&self, import: ImportId) -> Result<Snapshot, StorageError> {
        self.read(move |conn| {
            // One read transaction: the version and the rows see one snapshot.
            let tx = conn.transaction().map_err(internal)?;
            let version =
                import_version(&tx, import)?.ok_or(StorageError::ImportNotFound(import))?;
            let sql = format!(
                "SELECT {CITIZEN_COLUMNS} FROM citizens WHERE import_id = ?1 ORDER BY citizen_id"
            );
            let mut stmt = tx.prepare_cached(&sql).map_err(internal)?;
            let mut rows = stmt.query([import]).map_err(internal)?;
            let mut citizens = Vec::new();
            while let Some(row) = rows.next().map_err(internal)? {
                citizens.push(read_row(row)?);
            }
            Ok(Snapshot { version, citizens })
        })
        .await
    }

    async fn list_imports(
        &self,
        limit: usize,
        before: Option<ImportId>,
    ) -> Result<Vec<ImportInfo>, StorageError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT import_id, citizens, created_at, version FROM imports
                     WHERE import_id < ?1 ORDER BY import_id DESC LIMIT ?2",
                )
                .map_err(internal)?;
            let rows = stmt
                .query_map(
                    params![before.map_or(i64::MAX, ImportId::get), count(limit)],
                    |row| {
                        Ok((
                            row.get::<_, ImportId>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, i64>(3)?,
                        ))
                    },
                )
                .map_err(internal)?;
            rows.map(|row| {
                let (import_id, citizens, created_at, version) = row.map_err(internal)?;
                Ok(ImportInfo {
                    import_id,
                    citizens: u64::try_from(citizens).map_err(StorageError::internal)?,
                    created_at,
                    version: Version::try_from(version).map_err(StorageError::internal)?,
                })
            })
            .collect()
        })
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
                    "SELECT count(*), coalesce(sum(citizens), 0) FROM imports",
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
    use super::*;

    #[tokio::test]
    async fn a_database_of_an_older_schema_is_migrated_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(
                "INSERT INTO imports (created_at) VALUES (0);
                 INSERT INTO citizens VALUES (1, 7, 'A', 'B', 'C', 1, 'N', '2000-01-31', 'male', x'');
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let storage = SqliteStorage::open(&path, 1).unwrap();
        let snapshot = storage.citizens(ImportId::new(1).unwrap()).await.unwrap();
        assert_eq!(snapshot.version, 1);
        assert_eq!(snapshot.citizens[0].citizen_id.get(), 7);
        assert_eq!(snapshot.citizens[0].birth_date.to_string(), "31.01.2000");
        storage.close().await;
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, count(MIGRATIONS.len()));
    }

    fn spec_citizens() -> Vec<Citizen> {
        use crate::domain::{Apartment, BirthDate, Gender, Name, Place};
        let today = time::OffsetDateTime::now_utc().date();
        (1..=2)
            .map(|id| Citizen {
                citizen_id: CitizenId::parse(id).unwrap(),
                town: Place::parse("Москва".into()).unwrap(),
                street: Place::parse("Льва Толстого".into()).unwrap(),
                building: Place::parse("16".into()).unwrap(),
                apartment: Apartment::parse(7).unwrap(),
                name: Name::parse(format!("Житель {id}")).unwrap(),
                birth_date: BirthDate::parse("26.12.1986", today).unwrap(),
                gender: Gender::parse("male").unwrap(),
                relatives: vec![],
            })
            .collect()
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
            SqliteStorage::open_with(&dir.path().join("q.db"), 1, (2, 8), &Arc::default()).unwrap(),
        );
        let import = storage.create_import(spec_citizens(), None).await.unwrap();
        let release = block_writer(&storage).await;

        // The writer is busy: two writes wait in the queue, a third is refused at once.
        let patch = || CitizenPatch {
            name: Some(crate::domain::Name::parse("Новое".into()).unwrap()),
            ..CitizenPatch::default()
        };
        let id = CitizenId::parse(1).unwrap();
        /// Polls a future once, so a storage call queues its job, and keeps it.
        async fn queued<F: std::future::Future + Unpin>(mut future: F) -> F {
            tokio::select! {
                biased;
                _ = &mut future => panic!("finished while the writer is busy"),
                () = std::future::ready(()) => future,
            }
        }
        let waiting = queued(storage.patch_citizen(import, id, patch())).await;
        let gone = queued(storage.patch_citizen(import, id, patch())).await;
        let refused = storage.create_import(spec_citizens(), None).await;
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
        let import = storage.create_import(spec_citizens(), None).await.unwrap();
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
            storage.create_import(spec_citizens(), None).await.map(drop),
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

    #[tokio::test]
    async fn a_missing_directory_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/gifts.db");
        let storage = SqliteStorage::open(&path, 1).unwrap();
        assert!(path.exists());
        storage.close().await;
    }

    #[test]
    fn the_column_positions_follow_the_column_list() {
        let names: Vec<&str> = CITIZEN_COLUMNS.split(", ").collect();
        let positions = [
            (Column::CitizenId, "citizen_id"),
            (Column::Town, "town"),
            (Column::Street, "street"),
            (Column::Building, "building"),
            (Column::Apartment, "apartment"),
            (Column::Name, "name"),
            (Column::BirthDate, "birth_date"),
            (Column::Gender, "gender"),
            (Column::Relatives, "relatives"),
        ];
        assert_eq!(names.len(), positions.len());
        for (column, name) in positions {
            assert_eq!(names[column as usize], name);
        }
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
