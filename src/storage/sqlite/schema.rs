//! The schema and its migrations.

use rusqlite::{Connection, TransactionBehavior};

use super::{count, internal};
use crate::storage::StorageError;

/// Schema migrations; `PRAGMA user_version` records how many have run.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 5: an import written in chunks is pending (invisible) until published.
    "ALTER TABLE imports ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;",
    // 6: the analytics summary (`domain::summary`), kept by every write, so
    // a read with nothing in memory costs its answer, not the import.
    // `migrate` fills it for the imports already stored.
    "CREATE TABLE presents (
        import_id  INTEGER NOT NULL,
        month      INTEGER NOT NULL,
        citizen_id INTEGER NOT NULL,
        presents   INTEGER NOT NULL,
        PRIMARY KEY (import_id, month, citizen_id)
    ) WITHOUT ROWID;
    CREATE TABLE town_dates (
        import_id  INTEGER NOT NULL,
        town       TEXT    NOT NULL,
        dates      BLOB    NOT NULL,
        PRIMARY KEY (import_id, town)
    ) WITHOUT ROWID;",
    // 7: the name an import was uploaded with and the SHA-256 of its body
    // (both NULL for the imports stored before), the digest indexed for
    // GET /imports?digest=.
    "ALTER TABLE imports ADD COLUMN name TEXT;
     ALTER TABLE imports ADD COLUMN digest BLOB;
     CREATE INDEX imports_by_digest ON imports (digest) WHERE digest IS NOT NULL;",
    // 8: an import's citizens stored as one blob (`codec::encode_staged`) when
    // it is stored, and written as rows by the writer afterwards, `done` of
    // them so far (`queries::expand_staged_from`); until then readers read the blob.
    "CREATE TABLE staged_citizens (
        import_id  INTEGER PRIMARY KEY REFERENCES imports (import_id),
        done       INTEGER NOT NULL,
        body       BLOB    NOT NULL
    );",
];

/// The migration that adds the summary tables: imports stored before it get
/// theirs computed when it runs.
const SUMMARY_MIGRATION: usize = 6;

/// Brings the schema up to date; returns the version it had before.
pub(super) fn migrate(conn: &mut Connection) -> Result<usize, StorageError> {
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
    for (at, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql).map_err(internal)?;
        if at + 1 == SUMMARY_MIGRATION {
            super::queries::backfill_summaries(&tx)?;
        }
    }
    tx.pragma_update(None, "user_version", count(MIGRATIONS.len()))
        .map_err(internal)?;
    tx.commit().map_err(internal)?;
    Ok(version)
}
