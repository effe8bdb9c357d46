//! The SQL of each operation, run on a connection by the threads.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{Connection, MAIN_DB, OptionalExtension, Row, params};

use super::codec::{decode_relatives, decode_staged, encode_relatives};
use super::workers::{EXPAND_CHUNK, StagedCitizens};
use super::{count, internal};
use crate::domain::patch::{self, Move, Plan};
use crate::domain::stats::Birthdays;
use crate::domain::summary::{self, PresentsRow, Summary, TownDates};
use crate::domain::{BirthDate, Citizen, CitizenId, CitizenPatch, ImportId};
use crate::storage::row::{IsoDate, StoredCitizen, StoredDate, iso_date};
use crate::storage::{ImportInfo, Patched, Snapshot, StorageError, Upload, Version, refused};

/// The columns a citizen is read from, in [`Column`]'s order.
pub(super) const CITIZEN_COLUMNS: &str =
    "citizen_id, town, street, building, apartment, name, birth_date, gender, relatives";

/// The import an idempotency key already stored, if any: `KeyReused` when it
/// came with another body.
fn stored_key(conn: &Connection, upload: &Upload) -> Result<Option<ImportId>, StorageError> {
    let Some(key) = &upload.key else {
        return Ok(None);
    };
    let stored: Option<(Vec<u8>, ImportId)> = conn
        .prepare_cached("SELECT body_hash, import_id FROM idempotency_keys WHERE key = ?1")
        .and_then(|mut stmt| {
            stmt.query_row([key], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
        })
        .map_err(internal)?;
    match stored {
        Some((hash, import)) if hash == upload.digest => Ok(Some(import)),
        Some((_, import)) => Err(StorageError::KeyReused {
            key: key.clone(),
            import,
        }),
        None => Ok(None),
    }
}

fn store_key(conn: &Connection, import: ImportId, upload: &Upload) -> Result<(), StorageError> {
    if let Some(key) = &upload.key {
        conn.prepare_cached(
            "INSERT INTO idempotency_keys (key, body_hash, import_id) VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut stmt| stmt.execute(params![key, &upload.digest[..], import]))
        .map_err(internal)?;
    }
    Ok(())
}

/// A new import row of `citizens` citizens; `pending` ones are invisible.
fn new_import(
    conn: &Connection,
    citizens: usize,
    pending: bool,
    upload: &Upload,
) -> Result<ImportId, StorageError> {
    conn.prepare_cached(
        "INSERT INTO imports (created_at, citizens, pending, name, digest)
         VALUES (unixepoch(), ?1, ?2, ?3, ?4)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            count(citizens),
            pending,
            upload.name,
            &upload.digest[..]
        ])
    })
    .map_err(internal)?;
    ImportId::new(conn.last_insert_rowid())
        .ok_or_else(|| StorageError::internal("sqlite handed out a non-positive import id"))
}

/// Stores an import of `citizens` citizens, `staged` as one blob
/// (`codec::encode_staged`): rows come later ([`expand_staged_from`]).
pub(super) fn insert_import(
    conn: &Connection,
    citizens: usize,
    staged: &[u8],
    summary: &Summary,
    upload: &Upload,
) -> Result<ImportId, StorageError> {
    if let Some(import) = stored_key(conn, upload)? {
        return Ok(import);
    }
    let import = new_import(conn, citizens, false, upload)?;
    // The blob is written into its pages in place: bound as a parameter,
    // SQLite would copy its megabytes twice first (the parameter, then the
    // record), each copy a fresh allocation.
    let len = i64::try_from(staged.len()).map_err(StorageError::internal)?;
    conn.prepare_cached(
        "INSERT INTO staged_citizens (import_id, done, body) VALUES (?1, 0, zeroblob(?2))",
    )
    .and_then(|mut stmt| stmt.execute(params![import, len]))
    .map_err(internal)?;
    conn.blob_open(MAIN_DB, "staged_citizens", "body", import.get(), false)
        .and_then(|mut body| body.write_all_at(staged, 0))
        .map_err(internal)?;
    insert_presents(conn, import, &summary.presents)?;
    insert_towns(conn, import, &summary.towns)?;
    store_key(conn, import, upload)?;
    Ok(import)
}

/// Stores presents rows of an import (`domain::summary`).
pub(super) fn insert_presents(
    conn: &Connection,
    import: ImportId,
    rows: &[PresentsRow],
) -> Result<(), StorageError> {
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO presents (import_id, month, citizen_id, presents) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(internal)?;
    for &(month, citizen, presents) in rows {
        insert
            .execute(params![import, month, citizen.as_i64(), presents])
            .map_err(internal)?;
    }
    Ok(())
}

/// Stores the towns' dates of an import (`domain::summary`).
pub(super) fn insert_towns(
    conn: &Connection,
    import: ImportId,
    towns: &[TownDates],
) -> Result<(), StorageError> {
    let mut insert = conn
        .prepare_cached("INSERT INTO town_dates (import_id, town, dates) VALUES (?1, ?2, ?3)")
        .map_err(internal)?;
    for town in towns {
        insert
            .execute(params![import, town.town, town.dates])
            .map_err(internal)?;
    }
    Ok(())
}

/// Applies a plan's presents rows and town dates, in its transaction.
/// One statement per row that changes (a row that goes is deleted at once,
/// the common case).
fn patch_summary(conn: &Connection, import: ImportId, plan: &Plan) -> Result<(), StorageError> {
    for &(month, citizen, delta) in &plan.presents {
        let id = citizen.as_i64();
        let key = params![import, month, id, delta];
        let statement = |sql: &str| {
            conn.prepare_cached(sql)
                .and_then(|mut stmt| stmt.execute(key))
                .map_err(internal)
        };
        if delta > 0 {
            statement(
                "INSERT INTO presents (import_id, month, citizen_id, presents) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO UPDATE SET presents = presents + excluded.presents",
            )?;
        } else if statement(
            "DELETE FROM presents
             WHERE import_id = ?1 AND month = ?2 AND citizen_id = ?3 AND presents + ?4 <= 0",
        )? == 0
        {
            statement(
                "UPDATE presents SET presents = presents + ?4
                 WHERE import_id = ?1 AND month = ?2 AND citizen_id = ?3",
            )?;
        }
    }
    if let Some(Move { from, to }) = &plan.births {
        adjust_town(conn, import, from.0.as_str(), from.1, -1)?;
        adjust_town(conn, import, to.0.as_str(), to.1, 1)?;
    }
    Ok(())
}

/// Adds `delta` citizens born on `date` to `town`'s stored dates.
fn adjust_town(
    conn: &Connection,
    import: ImportId,
    town: &str,
    date: BirthDate,
    delta: i32,
) -> Result<(), StorageError> {
    let stored: Option<Vec<u8>> = conn
        .prepare_cached("SELECT dates FROM town_dates WHERE import_id = ?1 AND town = ?2")
        .and_then(|mut stmt| {
            stmt.query_row(params![import, town], |row| row.get(0))
                .optional()
        })
        .map_err(internal)?;
    let mut dates = stored.unwrap_or_default();
    if !summary::adjust_dates(&mut dates, date, delta) {
        return Err(StorageError::internal(format!(
            "import {import}: the stored dates of town {town:?} are corrupt"
        )));
    }
    if dates.is_empty() {
        conn.prepare_cached("DELETE FROM town_dates WHERE import_id = ?1 AND town = ?2")
            .and_then(|mut stmt| stmt.execute(params![import, town]))
    } else {
        conn.prepare_cached(
            "INSERT INTO town_dates (import_id, town, dates) VALUES (?1, ?2, ?3)
             ON CONFLICT DO UPDATE SET dates = excluded.dates",
        )
        .and_then(|mut stmt| stmt.execute(params![import, town, dates]))
    }
    .map_err(internal)?;
    Ok(())
}

/// GET birthdays from the stored presents rows, with the version, in one
/// read transaction.
pub(super) fn presents(
    conn: &mut Connection,
    import: ImportId,
) -> Result<(Version, Birthdays), StorageError> {
    let tx = conn.transaction().map_err(internal)?;
    let version = import_version(&tx, import)?.ok_or(StorageError::ImportNotFound(import))?;
    let mut stmt = tx
        .prepare_cached(
            "SELECT month, citizen_id, presents FROM presents WHERE import_id = ?1
             ORDER BY month, citizen_id",
        )
        .map_err(internal)?;
    let mut rows = stmt.query([import]).map_err(internal)?;
    let mut read = Vec::new();
    while let Some(row) = rows.next().map_err(internal)? {
        let (month, citizen, presents): (u8, i64, u32) = (
            row.get(0).map_err(internal)?,
            row.get(1).map_err(internal)?,
            row.get(2).map_err(internal)?,
        );
        let citizen = u64::try_from(citizen)
            .ok()
            .and_then(|id| CitizenId::parse(id).ok())
            .ok_or_else(|| StorageError::internal("corrupt citizen id in presents"))?;
        read.push((month, citizen, presents));
    }
    Ok((version, summary::birthdays(read)))
}

/// The stored towns' dates, ordered by town, with the version, in one read
/// transaction.
pub(super) fn town_dates(
    conn: &mut Connection,
    import: ImportId,
) -> Result<(Version, Vec<TownDates>), StorageError> {
    let tx = conn.transaction().map_err(internal)?;
    let version = import_version(&tx, import)?.ok_or(StorageError::ImportNotFound(import))?;
    let mut stmt = tx
        .prepare_cached("SELECT town, dates FROM town_dates WHERE import_id = ?1 ORDER BY town")
        .map_err(internal)?;
    let towns = stmt
        .query_map([import], |row| {
            Ok(TownDates {
                town: row.get(0)?,
                dates: row.get(1)?,
            })
        })
        .map_err(internal)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(internal)?;
    Ok((version, towns))
}

/// Stores the summary of every stored import that has none (an upgrade
/// from a schema before it). Pending imports are left: they are discarded.
pub(super) fn backfill_summaries(conn: &Connection) -> Result<usize, StorageError> {
    let imports: Vec<ImportId> = conn
        .prepare(
            "SELECT import_id FROM imports WHERE NOT pending AND import_id NOT IN
                 (SELECT import_id FROM town_dates)",
        )
        .and_then(|mut stmt| {
            stmt.query_map([], |row| row.get(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(internal)?;
    let sql =
        format!("SELECT {CITIZEN_COLUMNS} FROM citizens WHERE import_id = ?1 ORDER BY citizen_id");
    for &import in &imports {
        let mut stmt = conn.prepare_cached(&sql).map_err(internal)?;
        let mut rows = stmt.query([import]).map_err(internal)?;
        let mut citizens = Vec::new();
        while let Some(row) = rows.next().map_err(internal)? {
            citizens.push(read_row(row)?);
        }
        let summary = Summary::of(&citizens);
        insert_presents(conn, import, &summary.presents)?;
        insert_towns(conn, import, &summary.towns)?;
    }
    Ok(imports.len())
}

/// Up to `limit` visible imports older than `before`, newest first; only
/// those uploaded with `digest` if given (by its index).
pub(super) fn list_imports(
    conn: &Connection,
    limit: usize,
    before: Option<ImportId>,
    digest: Option<[u8; 32]>,
) -> Result<Vec<ImportInfo>, StorageError> {
    const COLUMNS: &str = "import_id, citizens, created_at, version, name, digest";
    let before = before.map_or(i64::MAX, ImportId::get);
    let mut stmt = match digest {
        None => conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM imports
             WHERE import_id < ?1 AND NOT pending ORDER BY import_id DESC LIMIT ?2"
        )),
        Some(_) => conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM imports
             WHERE digest = ?3 AND import_id < ?1 AND NOT pending
             ORDER BY import_id DESC LIMIT ?2"
        )),
    }
    .map_err(internal)?;
    let mut rows = match &digest {
        None => stmt.query(params![before, count(limit)]),
        Some(digest) => stmt.query(params![before, count(limit), &digest[..]]),
    }
    .map_err(internal)?;
    let mut imports = Vec::new();
    while let Some(row) = rows.next().map_err(internal)? {
        let digest: Option<Vec<u8>> = row.get(5).map_err(internal)?;
        imports.push(ImportInfo {
            import_id: row.get(0).map_err(internal)?,
            citizens: u64::try_from(row.get::<_, i64>(1).map_err(internal)?)
                .map_err(StorageError::internal)?,
            created_at: row.get(2).map_err(internal)?,
            version: Version::try_from(row.get::<_, i64>(3).map_err(internal)?)
                .map_err(StorageError::internal)?,
            name: row.get(4).map_err(internal)?,
            digest: digest
                .map(|d| <[u8; 32]>::try_from(d.as_slice()))
                .transpose()
                .map_err(StorageError::internal)?,
        });
    }
    Ok(imports)
}

/// The first write of an import written in chunks.
pub(super) enum Begun {
    /// The idempotency key is already stored: its import is the answer.
    Stored(ImportId),
    /// A new, invisible import to write the citizens of.
    Pending(ImportId),
}

pub(super) fn begin_import(
    conn: &Connection,
    citizens: usize,
    upload: &Upload,
) -> Result<Begun, StorageError> {
    Ok(match stored_key(conn, upload)? {
        Some(import) => Begun::Stored(import),
        None => Begun::Pending(new_import(conn, citizens, true, upload)?),
    })
}

/// Makes a pending import visible, with its key; if another request stored
/// the key meanwhile, that request's import is the answer (and this one is
/// left pending, to be deleted).
pub(super) fn publish_import(
    conn: &Connection,
    import: ImportId,
    upload: &Upload,
) -> Result<ImportId, StorageError> {
    if let Some(stored) = stored_key(conn, upload)? {
        return Ok(stored);
    }
    conn.prepare_cached(
        "UPDATE imports SET pending = 0, created_at = unixepoch() WHERE import_id = ?1 AND pending",
    )
    .and_then(|mut stmt| stmt.execute([import]))
    .map_err(internal)?;
    store_key(conn, import, upload)?;
    Ok(import)
}

/// Deletes up to `limit` citizens of pending import `import`, and the import
/// once none is left; true when it is gone.
pub(super) fn discard_pending(
    conn: &Connection,
    import: ImportId,
    limit: usize,
) -> Result<bool, StorageError> {
    let deleted = conn
        .prepare_cached(
            "DELETE FROM citizens WHERE import_id = ?1 AND citizen_id IN
                 (SELECT citizen_id FROM citizens WHERE import_id = ?1 LIMIT ?2)
             AND (SELECT pending FROM imports WHERE import_id = ?1)",
        )
        .and_then(|mut stmt| stmt.execute(params![import, count(limit)]))
        .map_err(internal)?;
    if deleted > 0 {
        return Ok(false);
    }
    let deleted = conn
        .prepare_cached(
            "DELETE FROM presents WHERE import_id = ?1 AND (month, citizen_id) IN
                 (SELECT month, citizen_id FROM presents WHERE import_id = ?1 LIMIT ?2)
             AND (SELECT pending FROM imports WHERE import_id = ?1)",
        )
        .and_then(|mut stmt| stmt.execute(params![import, count(limit)]))
        .map_err(internal)?;
    if deleted > 0 {
        return Ok(false);
    }
    for sql in [
        "DELETE FROM town_dates WHERE import_id = ?1
             AND (SELECT pending FROM imports WHERE import_id = ?1)",
        "DELETE FROM imports WHERE import_id = ?1 AND pending",
    ] {
        conn.prepare_cached(sql)
            .and_then(|mut stmt| stmt.execute([import]))
            .map_err(internal)?;
    }
    Ok(true)
}

/// Deletes what imports cut short by a crash left; the number of them.
pub(super) fn discard_all_pending(conn: &Connection) -> Result<usize, StorageError> {
    let pending: i64 = conn
        .query_row("SELECT count(*) FROM imports WHERE pending", [], |row| {
            row.get(0)
        })
        .map_err(internal)?;
    if pending > 0 {
        // Nothing is written on a start without leftovers (a full disk must
        // not stop a start).
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             DELETE FROM citizens WHERE import_id IN (SELECT import_id FROM imports WHERE pending);
             DELETE FROM presents WHERE import_id IN (SELECT import_id FROM imports WHERE pending);
             DELETE FROM town_dates WHERE import_id IN (SELECT import_id FROM imports WHERE pending);
             DELETE FROM imports WHERE pending;
             COMMIT;",
        )
        .map_err(internal)?;
    }
    Ok(usize::try_from(pending).unwrap_or(0))
}

pub(super) fn insert_citizens(
    conn: &Connection,
    import: ImportId,
    citizens: &[Citizen],
) -> Result<(), StorageError> {
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO citizens (import_id, citizen_id, town, street, building, apartment,
                                   name, birth_date, gender, relatives)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(internal)?;
    // Bound one by one, the date on the stack: the rows of an import are
    // most of the writer's work.
    let mut blob = Vec::new();
    insert.raw_bind_parameter(1, import).map_err(internal)?;
    for c in citizens {
        encode_relatives(&c.relatives, &mut blob);
        let date = IsoDate::of(c.birth_date);
        insert
            .raw_bind_parameter(2, c.citizen_id.as_i64())
            .and_then(|()| insert.raw_bind_parameter(3, c.town.as_str()))
            .and_then(|()| insert.raw_bind_parameter(4, c.street.as_str()))
            .and_then(|()| insert.raw_bind_parameter(5, c.building.as_str()))
            .and_then(|()| insert.raw_bind_parameter(6, c.apartment.as_i64()))
            .and_then(|()| insert.raw_bind_parameter(7, c.name.as_str()))
            .and_then(|()| insert.raw_bind_parameter(8, date.as_str()))
            .and_then(|()| insert.raw_bind_parameter(9, c.gender.as_str()))
            .and_then(|()| insert.raw_bind_parameter(10, &blob))
            .and_then(|()| insert.raw_execute())
            .map_err(internal)?;
    }
    Ok(())
}

/// Applies a PATCH; `None` when its import is staged and more than
/// [`EXPAND_CHUNK`] of its citizens are still to be written as rows: a
/// chunk of them was, and the PATCH is to be asked again (so a PATCH that
/// comes right after a big import holds the writer no longer than a chunk
/// at a time).
pub(super) fn patch_citizen(
    conn: &Connection,
    import: ImportId,
    id: CitizenId,
    patch: &CitizenPatch,
    held: &mut Option<StagedCitizens>,
) -> Result<Option<Patched>, StorageError> {
    // The import first: a pending one (being written in chunks) is not there yet.
    if import_version(conn, import)?.is_none() {
        return Err(StorageError::ImportNotFound(import));
    }
    // A PATCH reads and writes rows: the import's are all written first.
    if expand_staged_from(conn, import, EXPAND_CHUNK, held)?.is_some_and(|left| left > 0) {
        return Ok(None);
    }
    let Some(before) = load_citizen(conn, import, id)? else {
        return Err(StorageError::CitizenNotFound {
            import,
            citizen: id,
        });
    };
    // Every list the plan touches is read before anything is written.
    let mut lists = HashMap::new();
    for (other, _) in patch::touched(&before, patch) {
        if let Some(found) = load_relatives(conn, import, other)? {
            lists.insert(other, found);
        }
    }
    let plan = patch::plan(&before, patch, |other| {
        lists.get(&other).map(|&(_, month)| month)
    })
    .map_err(|refusal| refused(import, id, refusal))?;
    for &(other, edit) in &plan.mirror {
        let (mut list, _) = lists
            .remove(&other)
            .expect("the plan touches what was read");
        edit.apply(&mut list);
        store_relatives(conn, import, other, &list)?;
    }
    patch_summary(conn, import, &plan)?;
    let version: i64 = conn
        .prepare_cached(
            "UPDATE imports SET version = version + 1 WHERE import_id = ?1 RETURNING version",
        )
        .and_then(|mut stmt| stmt.query_row([import], |row| row.get(0)))
        .map_err(internal)?;
    let citizen = plan.citizen;
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
    Ok(Some(Patched {
        citizen,
        version: Version::try_from(version).map_err(StorageError::internal)?,
    }))
}

pub(super) fn delete_import(conn: &Connection, import: ImportId) -> Result<(), StorageError> {
    if import_version(conn, import)?.is_none() {
        return Err(StorageError::ImportNotFound(import));
    }
    for sql in [
        "DELETE FROM staged_citizens WHERE import_id = ?1",
        "DELETE FROM citizens WHERE import_id = ?1",
        "DELETE FROM presents WHERE import_id = ?1",
        "DELETE FROM town_dates WHERE import_id = ?1",
        "DELETE FROM idempotency_keys WHERE import_id = ?1",
        "DELETE FROM imports WHERE import_id = ?1",
    ] {
        conn.prepare_cached(sql)
            .and_then(|mut stmt| stmt.execute([import]))
            .map_err(internal)?;
    }
    Ok(())
}

/// The citizens of `import` if it is still staged (not all written as
/// rows yet): the blob is the import then, and the rows are not read.
pub(super) fn staged_citizens(
    conn: &Connection,
    import: ImportId,
) -> Result<Option<Vec<Citizen>>, StorageError> {
    let body: Option<Vec<u8>> = conn
        .prepare_cached("SELECT body FROM staged_citizens WHERE import_id = ?1")
        .and_then(|mut stmt| stmt.query_row([import], |row| row.get(0)).optional())
        .map_err(internal)?;
    body.map(|body| decode_staged(&body)).transpose()
}

/// All of `import`'s citizens, ordered by citizen_id, and its version, in
/// one read transaction `conn`: from its blob while it is staged.
pub(super) fn read_snapshot(conn: &Connection, import: ImportId) -> Result<Snapshot, StorageError> {
    let version = import_version(conn, import)?.ok_or(StorageError::ImportNotFound(import))?;
    if let Some(staged) = staged_citizens(conn, import)? {
        let citizens = staged.into_iter().map(Arc::new).collect();
        return Ok(Snapshot { version, citizens });
    }
    let sql =
        format!("SELECT {CITIZEN_COLUMNS} FROM citizens WHERE import_id = ?1 ORDER BY citizen_id");
    let mut stmt = conn.prepare_cached(&sql).map_err(internal)?;
    let mut rows = stmt.query([import]).map_err(internal)?;
    let mut citizens = Vec::new();
    while let Some(row) = rows.next().map_err(internal)? {
        citizens.push(Arc::new(read_row(row)?));
    }
    Ok(Snapshot { version, citizens })
}

/// Up to `limit` of `import`'s citizens with ids above `after`, in one read
/// transaction `conn`: from its blob while it is staged, else by the key.
pub(super) fn read_page(
    conn: &Connection,
    import: ImportId,
    after: Option<CitizenId>,
    limit: usize,
) -> Result<Vec<Arc<Citizen>>, StorageError> {
    import_version(conn, import)?.ok_or(StorageError::ImportNotFound(import))?;
    let sql = format!(
        "SELECT {CITIZEN_COLUMNS} FROM citizens
         WHERE import_id = ?1 AND citizen_id > ?2 ORDER BY citizen_id LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(internal)?;
    let mut rows = stmt
        .query(params![
            import,
            after.map_or(-1, CitizenId::as_i64),
            count(limit)
        ])
        .map_err(internal)?;
    let mut citizens = Vec::new();
    while let Some(row) = rows.next().map_err(internal)? {
        citizens.push(Arc::new(read_row(row)?));
    }
    // A staged import's rows so far are its first citizens in citizen_id
    // order (`expand_staged_from`), and no PATCH has touched them: a whole
    // page of them is the page. A page that runs past them is read from
    // the blob.
    if citizens.len() < limit
        && let Some(staged) = staged_citizens(conn, import)?
    {
        let from = after.map_or(0, |after| staged.partition_point(|c| c.citizen_id <= after));
        return Ok(staged
            .into_iter()
            .skip(from)
            .take(limit)
            .map(Arc::new)
            .collect());
    }
    Ok(citizens)
}

/// The oldest staged import after `after` (from the first if `None`), if any.
pub(super) fn next_staged(
    conn: &Connection,
    after: Option<ImportId>,
) -> Result<Option<ImportId>, StorageError> {
    conn.prepare_cached(
        "SELECT import_id FROM staged_citizens WHERE import_id > ?1 ORDER BY import_id LIMIT 1",
    )
    .and_then(|mut stmt| {
        stmt.query_row([after.map_or(0, ImportId::get)], |row| row.get(0))
            .optional()
    })
    .map_err(internal)
}

/// Writes up to `limit` more of staged import `import`'s citizens as rows,
/// from `citizens` (its blob decoded, if the caller holds it; else it is
/// read here), and forgets the blob once all are; how many are left to
/// write (`None`: it was not staged).
pub(super) fn expand_staged_from(
    conn: &Connection,
    import: ImportId,
    limit: usize,
    citizens: &mut Option<StagedCitizens>,
) -> Result<Option<usize>, StorageError> {
    let done: Option<i64> = conn
        .prepare_cached("SELECT done FROM staged_citizens WHERE import_id = ?1")
        .and_then(|mut stmt| stmt.query_row([import], |row| row.get(0)).optional())
        .map_err(internal)?;
    let Some(done) = done else {
        return Ok(None);
    };
    if citizens.as_ref().is_none_or(|(held, _)| *held != import) {
        let decoded = staged_citizens(conn, import)?.unwrap_or_default();
        *citizens = Some((import, Arc::new(decoded)));
    }
    let (_, all) = citizens.as_ref().expect("set above");
    let from = usize::try_from(done)
        .ok()
        .filter(|&from| from <= all.len())
        .ok_or_else(|| StorageError::internal("corrupt staged import: done out of range"))?;
    let to = from.saturating_add(limit).min(all.len());
    let left = all.len() - to;
    insert_citizens(conn, import, &all[from..to])?;
    if left == 0 {
        conn.prepare_cached("DELETE FROM staged_citizens WHERE import_id = ?1")
            .and_then(|mut stmt| stmt.execute([import]))
            .map_err(internal)?;
        *citizens = None;
    } else {
        conn.prepare_cached("UPDATE staged_citizens SET done = ?2 WHERE import_id = ?1")
            .and_then(|mut stmt| stmt.execute(params![import, count(to)]))
            .map_err(internal)?;
    }
    Ok(Some(left))
}

/// [`expand_staged_from`] reading the blob.
#[cfg(test)]
pub(super) fn expand_staged(
    conn: &Connection,
    import: ImportId,
    limit: usize,
) -> Result<Option<usize>, StorageError> {
    expand_staged_from(conn, import, limit, &mut None)
}

pub(super) fn import_version(
    conn: &Connection,
    import: ImportId,
) -> Result<Option<Version>, StorageError> {
    let version: Option<i64> = conn
        .prepare_cached("SELECT version FROM imports WHERE import_id = ?1 AND NOT pending")
        .and_then(|mut stmt| stmt.query_row([import], |row| row.get(0)).optional())
        .map_err(internal)?;
    version
        .map(|v| Version::try_from(v).map_err(StorageError::internal))
        .transpose()
}

/// Positions in [`CITIZEN_COLUMNS`] (a test checks the two agree).
#[derive(Clone, Copy)]
pub(super) enum Column {
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

pub(super) fn load_citizen(
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

/// A citizen's relatives and birth month, if it is in the import.
pub(super) fn load_relatives(
    conn: &Connection,
    import: ImportId,
    id: CitizenId,
) -> Result<Option<(Vec<CitizenId>, u8)>, StorageError> {
    let found: Option<(Vec<u8>, u8)> = conn
        .prepare_cached(
            "SELECT relatives, CAST(substr(birth_date, 6, 2) AS INTEGER) FROM citizens
             WHERE import_id = ?1 AND citizen_id = ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![import, id.as_i64()], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()
        })
        .map_err(internal)?;
    let Some((blob, month)) = found else {
        return Ok(None);
    };
    decode_relatives(&blob)?
        .into_iter()
        .map(|id| CitizenId::parse(id).map_err(|_| StorageError::internal("corrupt relative id")))
        .collect::<Result<_, _>>()
        .map(|list| Some((list, month)))
}

pub(super) fn store_relatives(
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

/// Rebuilds a citizen from a row of [`CITIZEN_COLUMNS`].
pub(super) fn read_row(row: &Row<'_>) -> Result<Citizen, StorageError> {
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
        birth_date: StoredDate::Iso(text(Column::BirthDate)?),
        gender: text(Column::Gender)?,
        relatives: decode_relatives(&relatives)?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::codec::encode_staged;
    use super::super::schema::migrate;
    use super::super::tests::sample;
    use super::*;

    /// A database of this build's schema, in memory.
    fn database() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA foreign_keys = ON;").unwrap();
        migrate(&mut conn).unwrap();
        conn
    }

    /// Stores `citizens` as an import is stored: staged.
    fn stage(conn: &Connection, citizens: &[Citizen]) -> ImportId {
        let blob = encode_staged(citizens).unwrap();
        insert_import(
            conn,
            citizens.len(),
            &blob,
            &Summary::of(citizens),
            &Upload::default(),
        )
        .unwrap()
    }

    /// The import read whole, and read 97 at a time: both must agree.
    fn read_both_ways(conn: &Connection, import: ImportId) -> Vec<Citizen> {
        let whole: Vec<Citizen> = read_snapshot(conn, import)
            .unwrap()
            .citizens
            .iter()
            .map(|c| Citizen::clone(c))
            .collect();
        let mut paged = Vec::new();
        loop {
            let after = paged.last().map(|c: &Citizen| c.citizen_id);
            let page = read_page(conn, import, after, 97).unwrap();
            if page.is_empty() {
                break;
            }
            paged.extend(page.iter().map(|c| Citizen::clone(c)));
        }
        assert_eq!(whole, paged, "read whole and a page at a time");
        whole
    }

    fn rows(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_staged_import_reads_the_same_at_every_step_of_its_rows_being_written() {
        let conn = database();
        let citizens = sample(1_000);
        let import = stage(&conn, &citizens);
        assert_eq!(rows(&conn, "citizens"), 0, "no row yet");
        assert_eq!(read_both_ways(&conn, import), citizens);
        let mut held = None;
        let mut steps = 0;
        while expand_staged_from(&conn, import, 300, &mut held)
            .unwrap()
            .is_some()
        {
            steps += 1;
            // Rows of part of the import, and the blob: the blob is read.
            assert_eq!(read_both_ways(&conn, import), citizens, "step {steps}");
        }
        assert_eq!(steps, 4, "300 + 300 + 300 + 100");
        assert_eq!(expand_staged(&conn, import, 300).unwrap(), None);
        assert_eq!(rows(&conn, "citizens"), 1_000);
        assert_eq!(rows(&conn, "staged_citizens"), 0);
        assert!(held.is_none(), "the decoded blob is let go");
        assert_eq!(read_both_ways(&conn, import), citizens, "from the rows");
        assert_eq!(import_version(&conn, import).unwrap(), Some(1));
    }

    #[test]
    fn a_patch_of_a_staged_import_writes_its_rows_first() {
        let (mut staged, mut written) = (database(), database());
        let citizens = sample(3_500);
        let import = stage(&staged, &citizens);
        assert_eq!(stage(&written, &citizens), import);
        // Part of it written, then the PATCH; the other written whole first.
        assert_eq!(expand_staged(&staged, import, 120).unwrap(), Some(3_380));
        assert_eq!(
            expand_staged(&written, import, usize::MAX).unwrap(),
            Some(0)
        );
        let (id, other) = (citizens[7].citizen_id, citizens[3_000].citizen_id);
        let patch = CitizenPatch {
            relatives: Some(vec![other]),
            ..CitizenPatch::default()
        };
        // A chunk at a time: asked again until the rows are all written.
        let mut asked = 1;
        let patched = loop {
            match patch_citizen(&staged, import, id, &patch, &mut None).unwrap() {
                Some(patched) => break patched,
                None => asked += 1,
            }
        };
        assert_eq!(asked, 3_380usize.div_ceil(EXPAND_CHUNK));
        let expected = patch_citizen(&written, import, id, &patch, &mut None)
            .unwrap()
            .unwrap();
        assert_eq!(
            (patched.citizen, patched.version),
            (expected.citizen, expected.version)
        );
        assert_eq!(rows(&staged, "staged_citizens"), 0);
        assert_eq!(rows(&staged, "citizens"), 3_500);
        assert_eq!(
            read_both_ways(&staged, import),
            read_both_ways(&written, import)
        );
        assert_eq!(
            presents(&mut staged, import).unwrap(),
            presents(&mut written, import).unwrap()
        );
    }

    #[test]
    fn deleting_a_staged_import_deletes_its_blob_and_its_rows_so_far() {
        let conn = database();
        let import = stage(&conn, &sample(400));
        assert_eq!(expand_staged(&conn, import, 150).unwrap(), Some(250));
        delete_import(&conn, import).unwrap();
        for table in ["staged_citizens", "citizens", "imports", "presents"] {
            assert_eq!(rows(&conn, table), 0, "{table}");
        }
        assert_eq!(expand_staged(&conn, import, 150).unwrap(), None);
    }

    #[test]
    fn a_staged_blob_that_does_not_decode_is_an_error_when_read_never_a_panic() {
        let conn = database();
        let import = stage(&conn, &sample(40));
        conn.execute("UPDATE staged_citizens SET body = x'0102'", [])
            .unwrap();
        assert!(read_snapshot(&conn, import).is_err());
        assert!(read_page(&conn, import, None, 10).is_err());
        assert!(expand_staged(&conn, import, 10).is_err());
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
}
