//! The writer and reader threads, and the jobs they run.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};

use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use tokio::sync::oneshot;

use super::disk::ensure_reserve;
use super::queries::{expand_staged_from, next_staged, staged_citizens};
use super::{MAX_BATCH, count};
use crate::domain::{Citizen, ImportId};
use crate::storage::StorageError;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

/// WAL size (pages) from which the writer first asks the checkpointer
/// thread to fold the WAL back into the database, so that the WAL can start
/// over ([`writer_loop`]).
pub(super) const RESTART_PAGES: i32 = 1_024;

/// New WAL pages after which the writer asks the checkpointer again, while
/// the WAL has not started over (a big import: fewer, bigger checkpoints
/// beside it).
pub(super) const CHECKPOINT_PAGES: i32 = 16_384;

/// Pages of a WAL of [`RESTART_PAGES`] or more that the checkpointer
/// thread has not yet folded back, at most, for the writer to fold them
/// itself between two batches ([`writer_loop`]).
pub(super) const CATCH_UP_PAGES: i32 = 256;

/// The size (bytes) the WAL file is cut back to when it starts over after
/// growing past it (`PRAGMA journal_size_limit`): twice [`RESTART_PAGES`] of
/// 4 KiB pages, so a WAL that starts over in the steady state is never cut (its
/// commits overwrite), while the tens or hundreds of megabytes a burst of
/// imports beside PATCHes grows it to go back to the file system.
pub(super) const WAL_SIZE_LIMIT: i64 = 8 << 20;

pub(super) type ReadJob = Box<dyn FnOnce(&mut Connection) + Send>;

/// One write, type-erased: every kind of write is a closure over the open
/// transaction plus a way to tell that its caller has gone.
pub(super) struct WriteJob {
    /// True when nobody waits for the answer any more.
    abandoned: Box<dyn Fn() -> bool + Send>,
    /// Runs inside the batch's transaction, beside the staged citizens the
    /// writer holds; returns how to answer once the commit's outcome is
    /// known.
    run: RunJob,
}

/// A write's work, type-erased.
type RunJob = Box<dyn FnOnce(&Connection, &mut Option<StagedCitizens>) -> Ran + Send>;

/// Sends a write's answer once the commit's outcome is known.
pub(super) type Answer = Box<dyn FnOnce(Option<&CommitFailure>) + Send>;

/// A write that ran in the open transaction and waits for the commit.
pub(super) struct Ran {
    /// Whether its own changes stand (else its savepoint is rolled back).
    ok: bool,
    /// Whether it failed for lack of disk space.
    full: bool,
    /// Sends the answer: the job's result, or the commit's failure.
    answer: Answer,
    /// What the job consumed, freed after the answers are out (a big
    /// import's citizens take a while to free).
    consumed: Box<dyn Send>,
    /// The citizens of an import the job stored staged, for the writer to
    /// write its rows from ([`Expansion::offer`]).
    staged: Option<StagedCitizens>,
}

/// A staged import's citizens in memory, in `citizen_id` order: what its
/// blob decodes to.
pub(super) type StagedCitizens = (ImportId, Arc<Vec<Citizen>>);

/// Why a batch's commit failed, for every job in it.
#[derive(Debug, Clone)]
pub(super) struct CommitFailure {
    full: bool,
    text: String,
}

impl CommitFailure {
    /// A failed commit: a full disk is told apart (507, and the store
    /// unwritable) from other failures (500).
    fn of(error: &rusqlite::Error) -> Self {
        CommitFailure {
            full: error.sqlite_error_code() == Some(ErrorCode::DiskFull),
            text: error.to_string(),
        }
    }

    pub(super) fn error(&self) -> StorageError {
        if self.full {
            StorageError::Full(format!("commit failed: {}", self.text))
        } else {
            StorageError::internal(format!("commit failed: {}", self.text))
        }
    }
}

impl WriteJob {
    /// A write of `work` over `payload`, answered on `reply`.
    pub(super) fn new<P, T>(
        payload: P,
        reply: oneshot::Sender<Result<T, StorageError>>,
        work: impl FnOnce(&Connection, &P) -> Result<T, StorageError> + Send + 'static,
    ) -> Self
    where
        P: Send + 'static,
        T: Send + 'static,
    {
        Self::build(payload, reply, move |conn, p, _| work(conn, p), |_, _| None)
    }

    /// [`WriteJob::new`] for a write that may write a staged import's rows:
    /// `work` gets the citizens the writer holds (`expand_staged_from`), so
    /// that it need not decode the import's blob at every chunk.
    pub(super) fn holding<P, T>(
        payload: P,
        reply: oneshot::Sender<Result<T, StorageError>>,
        work: impl FnOnce(&Connection, &P, &mut Option<StagedCitizens>) -> Result<T, StorageError>
        + Send
        + 'static,
    ) -> Self
    where
        P: Send + 'static,
        T: Send + 'static,
    {
        Self::build(payload, reply, work, |_, _| None)
    }

    /// [`WriteJob::new`] for a write that may store an import staged:
    /// `staged` names its citizens, from the payload and the result, if it
    /// did (the blob's content: the writer then need not decode it).
    pub(super) fn staging<P, T>(
        payload: P,
        reply: oneshot::Sender<Result<T, StorageError>>,
        work: impl FnOnce(&Connection, &P) -> Result<T, StorageError> + Send + 'static,
        staged: impl FnOnce(&P, &T) -> Option<StagedCitizens> + Send + 'static,
    ) -> Self
    where
        P: Send + 'static,
        T: Send + 'static,
    {
        Self::build(payload, reply, move |conn, p, _| work(conn, p), staged)
    }

    fn build<P, T>(
        payload: P,
        reply: oneshot::Sender<Result<T, StorageError>>,
        work: impl FnOnce(&Connection, &P, &mut Option<StagedCitizens>) -> Result<T, StorageError>
        + Send
        + 'static,
        staged: impl FnOnce(&P, &T) -> Option<StagedCitizens> + Send + 'static,
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
            run: Box::new(move |conn, held| {
                let result = work(conn, &payload, held);
                let staged = result.as_ref().ok().and_then(|done| staged(&payload, done));
                Ran {
                    staged,
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
                    consumed: Box::new(payload),
                }
            }),
        }
    }
}

pub(super) fn reader_loop(
    mut conn: Connection,
    jobs: &Mutex<mpsc::Receiver<ReadJob>>,
    depth: &Gauge,
) {
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

/// What the writer thread keeps besides its connection.
pub(super) struct WriterState {
    pub(super) wal_pages: Arc<AtomicI32>,
    /// The WAL pages folded back into the database by the checkpointer's
    /// last checkpoint (0 once the WAL started over).
    pub(super) backfilled: Arc<AtomicI32>,
    /// Asks the checkpointer thread for a checkpoint (one request waits at
    /// most; more are the same request).
    pub(super) checkpoint: mpsc::SyncSender<()>,
    /// Held by whichever thread runs a checkpoint of the store. SQLite runs
    /// one at a time and answers a second "busy" at once, calling no busy
    /// handler, so a truncation that must happen (after a full disk, at
    /// close) waits here for the checkpointer's instead.
    pub(super) checkpoints: Arc<Mutex<()>>,
    pub(super) writable: Arc<AtomicBool>,
    pub(super) path: PathBuf,
    pub(super) depth: Gauge,
    pub(super) batch_size: Histogram,
    /// Imports stored as a blob whose rows are still to be written.
    pub(super) staged: Gauge,
}

pub(super) fn writer_loop(
    mut conn: Connection,
    jobs: &mpsc::Receiver<WriteJob>,
    state: &WriterState,
) {
    // The WAL size at the last checkpoint request (0: none since the WAL
    // started over): the first at RESTART_PAGES, then one per
    // CHECKPOINT_PAGES of new WAL, not one per batch while the WAL is big.
    let mut asked_at = 0;
    // Whether the writer folded the rest of the WAL since the last request.
    let mut caught_up = false;
    // Whether an import may still be staged (see `expand_when_idle`): looked
    // at on start and after every batch.
    let mut staged = true;
    let mut expansion = Expansion::default();
    // Whether staged rows were written since the last checkpoint request.
    let mut expanded = false;
    loop {
        let first = if staged {
            match jobs.try_recv() {
                Ok(job) => job,
                Err(mpsc::TryRecvError::Empty) => {
                    staged = expand_when_idle(&mut conn, &mut expansion);
                    if (staged || expanded)
                        && let Ok(left) = count_staged(&conn)
                    {
                        state.staged.set(left);
                    }
                    expanded |= staged;
                    if !staged && expanded {
                        // Every staged row is written: the WAL they grew (a
                        // burst of imports writes megabytes) is folded back
                        // now, so that the next write can start it over
                        // rather than append to it until the next request.
                        expanded = false;
                        let _ = state.checkpoint.try_send(());
                        asked_at = state.wal_pages.load(Ordering::Relaxed);
                        caught_up = false;
                    }
                    fold_wal(&conn, state, &mut asked_at, &mut caught_up);
                    continue;
                }
                Err(mpsc::TryRecvError::Disconnected) => break,
            }
        } else {
            let Ok(first) = jobs.recv() else {
                break; // every sender dropped: the store is closing
            };
            first
        };
        staged = true;
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
        let commit = run_batch(&mut conn, batch, &mut ran, &mut expansion.citizens)
            .err()
            .map(|e| CommitFailure::of(&e));
        let mut consumed = Vec::with_capacity(ran.len());
        let mut full = commit.as_ref().is_some_and(|c| c.full);
        for job in ran {
            full |= job.full;
            (job.answer)(commit.as_ref());
            consumed.push(job.consumed);
            if commit.is_none()
                && job.ok
                && let Some(staged) = job.staged
            {
                expansion.offer(staged);
            }
        }
        // Freeing a big import's citizens takes a while: after the answers.
        drop(consumed);
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
        fold_wal(&conn, state, &mut asked_at, &mut caught_up);
    }
    // Leave every import written as rows: the next start need not.
    while expand_when_idle(&mut conn, &mut expansion) {}
    // Leave a clean file behind: fold the whole WAL back into the database.
    match truncate_wal(&conn, &state.checkpoints) {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "sqlite checkpoint on close left the WAL: readers, or another process's checkpoint (a backup), held it"
        ),
        Err(e) => tracing::warn!(error = %e, "sqlite checkpoint on close failed"),
    }
}

/// Folds the whole WAL back into the database and truncates it to nothing,
/// after any checkpoint under way (`checkpoints`) and waiting for readers as
/// long as the busy timeout; whether it did (readers past the timeout keep it).
pub(super) fn truncate_wal(conn: &Connection, checkpoints: &Mutex<()>) -> rusqlite::Result<bool> {
    let _alone = alone(checkpoints);
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
    Ok(busy == 0)
}

/// Citizens of a staged import the writer writes as rows per transaction
/// when it has nothing else to do: a few milliseconds, which is the longest
/// it makes a write that comes meanwhile wait.
pub(super) const EXPAND_CHUNK: usize = 2_048;

/// What the writer holds of the staged imports it writes as rows.
#[derive(Default)]
pub(super) struct Expansion {
    /// The import being written, its blob decoded once for all its chunks
    /// (or handed over by the write that stored it: [`Expansion::offer`]).
    citizens: Option<StagedCitizens>,
    /// Imports whose blob does not decode: left staged (reads of them fail
    /// as reads of a corrupt row do), and passed over until the next start.
    broken: HashSet<ImportId>,
    /// Whether the last try failed (logged once, not per try).
    failing: bool,
}

impl Expansion {
    /// The citizens of an import just stored staged, as the write had them:
    /// held to write its rows from, unless another import's are held (then
    /// its blob is decoded when its turn comes). Decoding the blob of
    /// 10,000 citizens costs the writer about 5 ms.
    fn offer(&mut self, staged: StagedCitizens) {
        if self.citizens.is_none() {
            self.citizens = Some(staged);
        }
    }
}

/// An import is stored as one blob (`staged_citizens`), which is quick, and
/// the writer writes its citizens as rows afterwards, [`EXPAND_CHUNK`] per
/// transaction, when no write waits; readers read the blob until then, and a
/// PATCH writes the rest of its import's rows first. Writes the next chunk
/// of the oldest staged import; whether there may be more to write.
pub(super) fn expand_when_idle(conn: &mut Connection, expansion: &mut Expansion) -> bool {
    match expand_next(conn, expansion) {
        Ok(more) => {
            expansion.failing = false;
            more
        }
        Err(e) => {
            expansion.citizens = None;
            if !expansion.failing {
                expansion.failing = true;
                tracing::warn!(error = %e, "writing a staged import as rows failed; it is read from its blob meanwhile, and tried again after the next write");
            }
            false
        }
    }
}

fn expand_next(conn: &mut Connection, expansion: &mut Expansion) -> Result<bool, StorageError> {
    let mut next = None;
    let import = loop {
        next = next_staged(conn, next)?;
        match next {
            None => return Ok(false),
            Some(import) if expansion.broken.contains(&import) => {}
            Some(import) => break import,
        }
    };
    if expansion
        .citizens
        .as_ref()
        .is_none_or(|(held, _)| *held != import)
    {
        expansion.citizens = None;
        match staged_citizens(conn, import) {
            Ok(citizens) => expansion.citizens = citizens.map(|c| (import, Arc::new(c))),
            Err(e) => {
                tracing::error!(error = %e, import_id = import.get(), "a staged import does not decode: it stays staged");
                expansion.broken.insert(import);
                return Ok(true);
            }
        }
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(StorageError::internal)?;
    expand_staged_from(&tx, import, EXPAND_CHUNK, &mut expansion.citizens)?;
    tx.commit().map_err(StorageError::internal)?;
    Ok(true)
}

/// Imports still staged (for the gauge).
pub(super) fn count_staged(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT count(*) FROM staged_citizens")?
        .query_row([], |row| row.get(0))
}

/// Asks for a checkpoint, or folds the rest of the WAL, as the WAL's size
/// after a commit calls for.
fn fold_wal(conn: &Connection, state: &WriterState, asked_at: &mut i32, caught_up: &mut bool) {
    // The WAL is folded back into the database by the checkpointer
    // thread, beside the writer: a checkpoint of a big WAL (tens of
    // milliseconds and more) holds no write up. But the WAL starts over
    // from its first page only if it is wholly folded back when a write
    // begins, which a checkpoint beside a steady stream of writes never
    // leaves it: it would grow without end, every commit appending to
    // the file (an fsync that also writes the file's new size, about
    // twice as long on this project's disks as one that overwrites). So
    // once the checkpointer has left little behind, the writer folds
    // that rest itself, between two batches, and the next write starts
    // the WAL over.
    let pages = state.wal_pages.load(Ordering::Relaxed);
    if pages < *asked_at {
        *asked_at = 0; // checkpointed and started over
        *caught_up = false;
        state.backfilled.store(0, Ordering::Relaxed);
    }
    let next = if *asked_at == 0 {
        RESTART_PAGES
    } else {
        *asked_at + CHECKPOINT_PAGES
    };
    if pages >= next {
        // Full: a request is already waiting, which is the same.
        let _ = state.checkpoint.try_send(());
        *asked_at = pages;
        *caught_up = false;
    } else if !*caught_up
        && pages >= RESTART_PAGES
        && pages - state.backfilled.load(Ordering::Relaxed) <= CATCH_UP_PAGES
        // The checkpointer is not under way (else after the next batch).
        && let Ok(_alone) = state.checkpoints.try_lock()
    {
        *caught_up = true;
        if let Err(e) = checkpoint(conn, &state.backfilled) {
            tracing::warn!(error = %e, "sqlite checkpoint failed");
        }
    }
}

/// The checkpointer thread: a PASSIVE checkpoint on its own connection per
/// request, concurrent with the writer (WAL lets writers append while a
/// checkpoint copies committed pages) and the readers; what it folded back
/// goes to `backfilled`. Ends when the writer does (its sender dropped).
pub(super) fn checkpointer_loop(
    conn: &Connection,
    requests: &mpsc::Receiver<()>,
    backfilled: &AtomicI32,
    checkpoints: &Mutex<()>,
) {
    while requests.recv().is_ok() {
        let _alone = alone(checkpoints);
        if let Err(e) = checkpoint(conn, backfilled) {
            tracing::warn!(error = %e, "sqlite checkpoint failed");
        }
    }
}

/// Holds `checkpoints`, after the checkpoint under way if any. A panic of an
/// earlier holder poisons nothing worth knowing: the lock guards no data.
fn alone(checkpoints: &Mutex<()>) -> MutexGuard<'_, ()> {
    checkpoints.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps `pages` at the WAL's size (pages) after each commit on `conn`.
pub(super) fn count_wal_pages(
    conn: &mut Connection,
    pages: Arc<AtomicI32>,
) -> rusqlite::Result<()> {
    conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, n: i32| {
        pages.store(n, Ordering::Relaxed);
        Ok(())
    }))
}

/// A PASSIVE checkpoint on `conn` (it waits for no reader or writer); the
/// WAL pages it leaves folded back go to `backfilled`.
pub(super) fn checkpoint(conn: &Connection, backfilled: &AtomicI32) -> rusqlite::Result<()> {
    let done: i32 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(2))?;
    backfilled.store(done, Ordering::Relaxed);
    Ok(())
}

/// The first successful write after a full disk: shrink the WAL, which a
/// failed write may have grown, and put the reserve back.
pub(super) fn recovered(conn: &Connection, state: &WriterState) {
    state.writable.store(true, Ordering::Release);
    match truncate_wal(conn, &state.checkpoints) {
        Ok(true) => state.wal_pages.store(0, Ordering::Relaxed),
        Ok(false) => tracing::warn!(
            "truncating the WAL after a full disk: readers, or another process's checkpoint (a backup), held it"
        ),
        Err(e) => tracing::warn!(error = %e, "truncating the WAL failed"),
    }
    ensure_reserve(&state.path);
    tracing::info!(path = %state.path.display(), "the disk has room again: writes are accepted");
}

/// Runs every job in its own savepoint of one transaction, so a rejected write
/// rolls back alone, then commits once. Jobs not reached after an error are
/// dropped, which answers their callers `Unavailable`.
pub(super) fn run_batch(
    conn: &mut Connection,
    batch: Vec<WriteJob>,
    ran: &mut Vec<Ran>,
    held: &mut Option<StagedCitizens>,
) -> rusqlite::Result<()> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for job in batch {
        let savepoint = tx.savepoint()?;
        // The held citizens are the blob's content, which no write changes:
        // a savepoint rolled back, or a commit failed, leaves them true.
        let done = (job.run)(&savepoint, held);
        if done.ok {
            savepoint.commit()?;
        } // else dropping the savepoint rolls it back
        ran.push(done);
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL-mode database in `dir`, a writer state with `pages` WAL pages
    /// counted, and where its checkpoint requests go.
    fn writer_at(
        dir: &tempfile::TempDir,
        pages: i32,
    ) -> (Connection, WriterState, mpsc::Receiver<()>) {
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (n INTEGER);")
            .unwrap();
        let (checkpoint, requests) = mpsc::sync_channel(1);
        let state = WriterState {
            wal_pages: Arc::new(AtomicI32::new(pages)),
            backfilled: Arc::default(),
            checkpoint,
            checkpoints: Arc::default(),
            writable: Arc::new(AtomicBool::new(true)),
            path,
            depth: Gauge::default(),
            batch_size: Histogram::new([1.0]),
            staged: Gauge::default(),
        };
        (conn, state, requests)
    }

    #[test]
    fn once_the_staged_rows_are_written_the_writer_asks_for_a_checkpoint() {
        use crate::domain::summary::Summary;
        use crate::storage::Upload;
        let dir = tempfile::tempdir().unwrap();
        // A WAL far below the size at which the writer would ask anyway.
        let (mut conn, state, requests) = writer_at(&dir, 0);
        super::super::schema::migrate(&mut conn).unwrap();
        let citizens = super::super::tests::sample(3 * EXPAND_CHUNK as u64);
        let blob = super::super::codec::encode_staged(&citizens).unwrap();
        let import = super::super::queries::insert_import(
            &conn,
            citizens.len(),
            &blob,
            &Summary::of(&citizens),
            &Upload::default(),
        )
        .unwrap();
        let (jobs, queued) = mpsc::sync_channel::<WriteJob>(1);
        let path = state.path.clone();
        std::thread::scope(|scope| {
            let state = &state;
            scope.spawn(move || writer_loop(conn, &queued, state));
            requests
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("a checkpoint request");
            // Asked once every row is written, not before.
            let beside = Connection::open(&path).unwrap();
            let (staged, rows): (i64, i64) = beside
                .query_row(
                    "SELECT (SELECT count(*) FROM staged_citizens),
                            (SELECT count(*) FROM citizens WHERE import_id = ?1)",
                    [import],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert_eq!((staged, rows), (0, count(citizens.len())));
            assert_eq!(state.staged.get(), 0, "the gauge");
            drop(jobs);
        });
    }

    /// A write of one row.
    fn insert() -> (WriteJob, oneshot::Receiver<Result<usize, StorageError>>) {
        let (reply, answer) = oneshot::channel();
        let job = WriteJob::new((), reply, |conn, ()| {
            conn.execute("INSERT INTO t VALUES (1)", [])
                .map_err(StorageError::internal)
        });
        (job, answer)
    }

    /// Runs the writer over one write with `pages` WAL pages counted; whether
    /// it asked for a checkpoint.
    fn asks_for_a_checkpoint(pages: i32) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let (conn, state, requests) = writer_at(&dir, pages);
        let (jobs, queued) = mpsc::sync_channel(1);
        let (job, mut answer) = insert();
        jobs.send(job).unwrap();
        drop(jobs);
        writer_loop(conn, &queued, &state);
        assert_eq!(answer.try_recv().unwrap().unwrap(), 1);
        requests.try_recv().is_ok()
    }

    #[test]
    fn the_writer_asks_for_a_checkpoint_from_restart_pages_on() {
        assert!(!asks_for_a_checkpoint(RESTART_PAGES - 1));
        assert!(asks_for_a_checkpoint(RESTART_PAGES));
    }

    #[test]
    fn a_steady_stream_of_writes_starts_the_wal_over_rather_than_growing_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut conn, state, requests) = writer_at(&dir, 0);
        conn.execute_batch("PRAGMA synchronous = OFF; PRAGMA wal_autocheckpoint = 0;")
            .unwrap();
        count_wal_pages(&mut conn, Arc::clone(&state.wal_pages)).unwrap();
        let checkpointer = Connection::open(&state.path).unwrap();
        let backfilled = Arc::clone(&state.backfilled);
        let (jobs, queued) = mpsc::sync_channel(1);
        let wal = state.path.with_extension("db-wal");
        let mut largest = 0;
        std::thread::scope(|scope| {
            let state = &state;
            let writer = scope.spawn(move || writer_loop(conn, &queued, state));
            let write = || {
                let (job, answer) = insert();
                jobs.send(job).unwrap();
                assert_eq!(answer.blocking_recv().unwrap().unwrap(), 1);
            };
            // Writes one after another, each a page of WAL: three times
            // RESTART_PAGES of them. The checkpointer runs here when the
            // writer asked for it, as beside a steady stream of writes: a
            // write lands while it runs, and a reader still on the snapshot
            // before that write keeps it from folding that write's page.
            let reader = Connection::open(&state.path).unwrap();
            for _ in 0..3 * RESTART_PAGES {
                write();
                if requests.try_recv().is_ok() {
                    reader.execute_batch("BEGIN").unwrap();
                    let _: i64 = reader
                        .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
                        .unwrap();
                    write();
                    checkpoint(&checkpointer, &backfilled).unwrap();
                    reader.execute_batch("COMMIT").unwrap();
                }
                largest = largest.max(std::fs::metadata(&wal).unwrap().len());
            }
            drop(jobs);
            writer.join().unwrap();
        });
        // A WAL frame is a page (4,096 bytes) and a 24-byte header.
        let frames = largest / (4_096 + 24);
        assert!(
            frames < u64::try_from(RESTART_PAGES + CATCH_UP_PAGES).unwrap(),
            "the WAL grew to {frames} pages over {} writes",
            3 * RESTART_PAGES
        );
    }

    #[test]
    fn a_wal_that_stays_big_is_checkpointed_once_per_checkpoint_pages() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, mut state, _) = writer_at(&dir, CHECKPOINT_PAGES);
        let (checkpoint, requests) = mpsc::sync_channel(8);
        state.checkpoint = checkpoint;
        // Two batches (one full, one of the write left over), each growing
        // the WAL by a page a write, not by CHECKPOINT_PAGES: one request.
        let (jobs, queued) = mpsc::sync_channel(MAX_BATCH + 1);
        let answers: Vec<_> = (0..=MAX_BATCH)
            .map(|_| {
                let (reply, answer) = oneshot::channel();
                let pages = Arc::clone(&state.wal_pages);
                jobs.send(WriteJob::new((), reply, move |_, ()| {
                    Ok(pages.fetch_add(1, Ordering::Relaxed))
                }))
                .unwrap();
                answer
            })
            .collect();
        drop(jobs);
        writer_loop(conn, &queued, &state);
        assert_eq!(answers.len(), MAX_BATCH + 1);
        assert_eq!(requests.try_iter().count(), 1);
    }

    #[test]
    fn the_checkpointer_folds_the_wal_into_the_database_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        // A writer that never checkpoints, kept open (the last connection to
        // close would checkpoint).
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
                 CREATE TABLE t (b BLOB);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
                 INSERT INTO t SELECT randomblob(1024) FROM n;",
            )
            .unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        assert!(size() < 64 << 10, "the rows are in the WAL only");
        let (ask, requests) = mpsc::sync_channel(1);
        ask.send(()).unwrap();
        drop(ask);
        let backfilled = AtomicI32::new(0);
        checkpointer_loop(
            &Connection::open(&path).unwrap(),
            &requests,
            &backfilled,
            &Mutex::new(()),
        );
        assert!(backfilled.load(Ordering::Relaxed) > 0, "its result kept");
        assert!(
            size() > 500 << 10,
            "folded into the database: {} bytes",
            size()
        );
        drop(writer);
    }

    #[test]
    fn a_truncation_of_the_wal_says_whether_it_happened() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, state, _requests) = writer_at(&dir, 0);
        conn.execute_batch("PRAGMA busy_timeout = 0; INSERT INTO t VALUES (1);")
            .unwrap();
        let wal = dir.path().join("w.db-wal");
        // A reader on a snapshot the WAL holds keeps it.
        let reader = Connection::open(&state.path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        conn.execute_batch("INSERT INTO t VALUES (2);").unwrap();
        assert!(!truncate_wal(&conn, &state.checkpoints).unwrap());
        assert!(std::fs::metadata(&wal).unwrap().len() > 0);
        reader.execute_batch("COMMIT").unwrap();
        assert!(truncate_wal(&conn, &state.checkpoints).unwrap());
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
    }

    #[test]
    fn a_commit_that_fails_for_lack_of_space_is_full_and_others_are_internal() {
        let failure = |code| {
            CommitFailure::of(&rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                Some("why".into()),
            ))
        };
        let full = failure(rusqlite::ffi::SQLITE_FULL);
        assert!(full.full);
        assert!(matches!(full.error(), StorageError::Full(_)));
        let other = failure(rusqlite::ffi::SQLITE_IOERR);
        assert!(!other.full);
        assert!(matches!(other.error(), StorageError::Internal(_)));
    }

    #[test]
    fn a_write_refused_for_lack_of_space_makes_the_store_unwritable() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, state, _requests) = writer_at(&dir, 0);
        let (jobs, queued) = mpsc::sync_channel(1);
        let (reply, answer) = oneshot::channel::<Result<(), StorageError>>();
        // Its own savepoint is rolled back; the batch commits.
        jobs.send(WriteJob::new((), reply, |_, ()| {
            Err(StorageError::Full("no room".into()))
        }))
        .unwrap();
        drop(jobs);
        writer_loop(conn, &queued, &state);
        assert!(matches!(
            answer.blocking_recv().unwrap(),
            Err(StorageError::Full(_))
        ));
        assert!(!state.writable.load(Ordering::Acquire));
    }

    #[test]
    fn a_batch_takes_the_queued_writes_up_to_the_cap_and_commits_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("batches.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (n INTEGER);")
            .unwrap();
        let commits = Arc::new(AtomicI32::new(0));
        let counted = Arc::clone(&commits);
        conn.commit_hook(Some(move || {
            counted.fetch_add(1, Ordering::Relaxed);
            false // let the commit go ahead
        }))
        .unwrap();

        // One more write than a batch holds, all queued before the writer starts.
        let (jobs, queued) = mpsc::sync_channel(MAX_BATCH + 1);
        let answers: Vec<_> = (0..=MAX_BATCH)
            .map(|n| {
                let (reply, answer) = oneshot::channel();
                let job = WriteJob::new(count(n), reply, |conn, n| {
                    conn.execute("INSERT INTO t VALUES (?1)", [n])
                        .map_err(StorageError::internal)
                });
                jobs.send(job).unwrap();
                answer
            })
            .collect();
        drop(jobs);
        let state = WriterState {
            wal_pages: Arc::default(),
            backfilled: Arc::default(),
            checkpoint: mpsc::sync_channel(1).0,
            checkpoints: Arc::default(),
            writable: Arc::new(AtomicBool::new(true)),
            path,
            depth: Gauge::default(),
            batch_size: Histogram::new([1.0]),
            staged: Gauge::default(),
        };
        writer_loop(conn, &queued, &state);

        assert_eq!(
            commits.load(Ordering::Relaxed),
            2,
            "{MAX_BATCH} writes in one commit, the one left over in a second"
        );
        for mut answer in answers {
            assert_eq!(answer.try_recv().unwrap().unwrap(), 1, "one row inserted");
        }
    }
}
