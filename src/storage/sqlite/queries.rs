//! The SQL of each operation, run on a connection by the threads.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::codec::{decode_relatives, encode_relatives};
use super::{count, internal};
use crate::domain::patch::{self, Move, Plan};
use crate::domain::stats::Birthdays;
use crate::domain::summary::{self, PresentsRow, Summary, TownDates};
use crate::domain::{BirthDate, Citizen, CitizenId, CitizenPatch, ImportId};
use crate::storage::row::{StoredCitizen, StoredDate, iso_date};
use crate::storage::{ImportInfo, Patched, StorageError, Upload, Version, refused};

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

pub(super) fn insert_import(
    conn: &Connection,
    citizens: &[Citizen],
    summary: &Summary,
    upload: &Upload,
) -> Result<ImportId, StorageError> {
    if let Some(import) = stored_key(conn, upload)? {
        return Ok(import);
    }
    let import = new_import(conn, citizens.len(), false, upload)?;
    insert_citizens(conn, import, citizens)?;
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
    Ok(())
}

pub(super) fn patch_citizen(
    conn: &Connection,
    import: ImportId,
    id: CitizenId,
    patch: &CitizenPatch,
) -> Result<Patched, StorageError> {
    // The import first: a pending one (being written in chunks) is not there yet.
    if import_version(conn, import)?.is_none() {
        return Err(StorageError::ImportNotFound(import));
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
    Ok(Patched {
        citizen,
        version: Version::try_from(version).map_err(StorageError::internal)?,
    })
}

pub(super) fn delete_import(conn: &Connection, import: ImportId) -> Result<(), StorageError> {
    if import_version(conn, import)?.is_none() {
        return Err(StorageError::ImportNotFound(import));
    }
    for sql in [
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
    use super::*;

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
