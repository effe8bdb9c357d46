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

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{Patched, Snapshot, Storage, StorageError, Version, stored_citizen};
use crate::domain::relatives::{Edit, mirror_edits};
use crate::domain::{Citizen, CitizenId, CitizenPatch, ImportId, Reason, ValidationError};

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
];

/// Most writes committed together in one transaction.
const MAX_BATCH: usize = 256;

type ReadJob = Box<dyn FnOnce(&mut Connection) + Send>;

enum WriteJob {
    Import {
        citizens: Vec<Citizen>,
        reply: oneshot::Sender<Result<ImportId, StorageError>>,
    },
    Patch {
        import: ImportId,
        citizen: CitizenId,
        patch: CitizenPatch,
        reply: oneshot::Sender<Result<Patched, StorageError>>,
    },
}

/// A write that ran in the open transaction and waits for the commit to answer.
enum Finished {
    Import(
        oneshot::Sender<Result<ImportId, StorageError>>,
        Result<ImportId, StorageError>,
    ),
    Patch(
        oneshot::Sender<Result<Patched, StorageError>>,
        Result<Patched, StorageError>,
    ),
}

impl Finished {
    /// Answers the caller; a failed commit turns every success into an error.
    fn answer(self, commit: &Result<(), String>) {
        fn settle<T>(
            result: Result<T, StorageError>,
            commit: &Result<(), String>,
        ) -> Result<T, StorageError> {
            match (result, commit) {
                (Ok(_), Err(e)) => Err(StorageError::internal(format!("commit failed: {e}"))),
                (result, _) => result,
            }
        }
        // A caller that gave up (timeout, disconnect) has dropped its receiver; nothing to do.
        match self {
            Finished::Import(reply, result) => drop(reply.send(settle(result, commit))),
            Finished::Patch(reply, result) => drop(reply.send(settle(result, commit))),
        }
    }
}

/// The SQLite store; cheap to share behind an `Arc`.
pub struct SqliteStorage {
    path: PathBuf,
    writer: Mutex<Option<mpsc::Sender<WriteJob>>>,
    readers: Mutex<Option<mpsc::Sender<ReadJob>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn internal(error: rusqlite::Error) -> StorageError {
    StorageError::internal(error)
}

fn closed() -> StorageError {
    StorageError::Unavailable("the store is closed".into())
}

impl SqliteStorage {
    /// Opens (creating if needed) the database at `path`, migrates the schema
    /// and starts the writer and `readers` reader threads.
    pub fn open(path: &Path, readers: usize) -> Result<Self, StorageError> {
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

        let (write_tx, write_rx) = mpsc::channel();
        let mut threads = vec![
            std::thread::Builder::new()
                .name("sqlite-writer".into())
                .spawn(move || writer_loop(writer, write_rx, &wal_pages))
                .map_err(StorageError::internal)?,
        ];

        let (read_tx, read_rx) = mpsc::channel::<ReadJob>();
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
            threads.push(
                std::thread::Builder::new()
                    .name(format!("sqlite-reader-{n}"))
                    .spawn(move || reader_loop(conn, &jobs))
                    .map_err(StorageError::internal)?,
            );
        }

        Ok(Self {
            path: path.to_owned(),
            writer: Mutex::new(Some(write_tx)),
            readers: Mutex::new(Some(read_tx)),
            threads: Mutex::new(threads),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, StorageError>>) -> WriteJob,
    ) -> Result<T, StorageError> {
        let (reply, answer) = oneshot::channel();
        // The lock is held only to clone the sender, never across an await.
        let sender = self.writer.lock().expect("writer lock").clone();
        sender
            .ok_or_else(closed)?
            .send(job(reply))
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let (reply, answer) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn| drop(reply.send(query(conn))));
        let sender = self.readers.lock().expect("readers lock").clone();
        sender.ok_or_else(closed)?.send(job).map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
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
    for sql in &MIGRATIONS[version..] {
        tx.execute_batch(sql).map_err(internal)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
        .map_err(internal)?;
    tx.commit().map_err(internal)?;
    Ok(version)
}

fn reader_loop(mut conn: Connection, jobs: &Mutex<mpsc::Receiver<ReadJob>>) {
    loop {
        // Holding the lock while waiting is the point: one idle reader waits on
        // the channel, the others wait on the lock; a job goes to exactly one.
        let job = match jobs.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(&mut conn),
            Err(_) => return, // every sender dropped: the store is closing
        }
    }
}

/// WAL size (pages) from which the writer checkpoints when it is idle.
const CHECKPOINT_PAGES: i32 = 4096;
/// WAL size (pages) from which it checkpoints even when writes are queued.
const FORCE_CHECKPOINT_PAGES: i32 = 65536;

fn writer_loop(mut conn: Connection, jobs: mpsc::Receiver<WriteJob>, wal_pages: &AtomicI32) {
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
        let mut finished = Vec::with_capacity(batch.len());
        let mut spent = Vec::new();
        let commit = run_batch(&mut conn, batch, &mut finished, &mut spent).map_err(|e| {
            tracing::error!(error = %e, "sqlite commit failed");
            e.to_string()
        });
        for done in finished {
            done.answer(&commit);
        }
        // Freeing a big import's citizens takes a while: after the answers.
        drop(spent);
        // Fold the WAL back into the database between batches, after the
        // callers have their answers: when idle, or when the WAL grows large.
        let pages = wal_pages.load(Ordering::Relaxed);
        if pages >= CHECKPOINT_PAGES {
            next = jobs.try_recv().ok();
            if next.is_none() || pages >= FORCE_CHECKPOINT_PAGES {
                match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    Ok(()) => wal_pages.store(0, Ordering::Relaxed),
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

/// Runs every job in its own savepoint of one transaction, so a rejected write
/// rolls back alone, then commits once. Jobs not reached after an error are
/// dropped, which answers their callers `Unavailable`.
fn run_batch(
    conn: &mut Connection,
    batch: Vec<WriteJob>,
    finished: &mut Vec<Finished>,
    spent: &mut Vec<Vec<Citizen>>,
) -> rusqlite::Result<()> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for job in batch {
        let savepoint = tx.savepoint()?;
        let (ok, done) = match job {
            WriteJob::Import { citizens, reply } => {
                let result = insert_import(&savepoint, &citizens);
                spent.push(citizens);
                (result.is_ok(), Finished::Import(reply, result))
            }
            WriteJob::Patch {
                import,
                citizen,
                patch,
                reply,
            } => {
                let result = patch_citizen(&savepoint, import, citizen, &patch);
                (result.is_ok(), Finished::Patch(reply, result))
            }
        };
        if ok {
            savepoint.commit()?;
        } // else dropping the savepoint rolls it back
        finished.push(done);
    }
    tx.commit()
}

fn insert_import(conn: &Connection, citizens: &[Citizen]) -> Result<ImportId, StorageError> {
    conn.execute("INSERT INTO imports (created_at) VALUES (unixepoch())", [])
        .map_err(internal)?;
    let import = conn.last_insert_rowid();
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
                c.birth_date.to_iso(),
                c.gender.as_str(),
                &blob,
            ])
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
        for (other, edit) in mirror_edits(id, &citizen.relatives, new) {
            let Some(mut list) = load_relatives(conn, import, other)? else {
                return Err(match edit {
                    Edit::Add(_) => StorageError::Invalid(ValidationError::new(
                        "relatives",
                        Some(id),
                        Reason::UnknownRelative(other),
                    )),
                    Edit::Remove(_) => StorageError::internal(format!(
                        "import {import}: citizen {id} lists missing relative {other}"
                    )),
                });
            };
            edit.apply(&mut list);
            store_relatives(conn, import, other, &list)?;
        }
        citizen.relatives = new.clone();
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
            citizen.birth_date.to_iso(),
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

const CITIZEN_COLUMNS: &str =
    "citizen_id, town, street, building, apartment, name, birth_date, gender, relatives";

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

/// Rebuilds a citizen from a row of `CITIZEN_COLUMNS`.
fn read_row(row: &Row<'_>) -> Result<Citizen, StorageError> {
    let unsigned = |i: usize| -> Result<u64, StorageError> {
        let value: i64 = row.get(i).map_err(internal)?;
        u64::try_from(value).map_err(StorageError::internal)
    };
    let text = |i: usize| row.get::<_, String>(i).map_err(internal);
    let relatives: Vec<u8> = row.get(8).map_err(internal)?;
    stored_citizen(
        unsigned(0)?,
        text(1)?,
        text(2)?,
        text(3)?,
        unsigned(4)?,
        text(5)?,
        &text(6)?,
        &text(7)?,
        decode_relatives(&relatives)?,
    )
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn create_import(&self, citizens: Vec<Citizen>) -> Result<ImportId, StorageError> {
        self.write(|reply| WriteJob::Import { citizens, reply })
            .await
    }

    async fn patch_citizen(
        &self,
        import: ImportId,
        citizen: CitizenId,
        patch: CitizenPatch,
    ) -> Result<Patched, StorageError> {
        self.write(|reply| WriteJob::Patch {
            import,
            citizen,
            patch,
            reply,
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
        let snapshot = storage.citizens(1).await.unwrap();
        assert_eq!(snapshot.version, 1);
        assert_eq!(snapshot.citizens[0].citizen_id.get(), 7);
        assert_eq!(snapshot.citizens[0].birth_date.to_string(), "31.01.2000");
        storage.close().await;
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
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
        assert!(format!("{:?}", error).contains("newer"), "{error:?}");
    }
}
