//! The write transactions: an import (citizens and summary by binary `COPY`)
//! and a PATCH (the plan of `domain::patch` applied).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::pg_text;
use super::reads::{CITIZEN_COLUMNS, import_id, read_citizen, version_of};
use super::{Call, Fail, Store};
use crate::domain::patch::{self, Move, Plan};
use crate::domain::relatives::Edit;
use crate::domain::summary::{self, Summary};
use crate::domain::{Citizen, CitizenId, CitizenPatch, ImportId};
use crate::storage::{Idempotency, Patched, StorageError, refused};

/// Types of the presents rows' `COPY` columns.
pub(super) const PRESENTS_TYPES: [Type; 4] = [Type::INT8, Type::INT2, Type::INT8, Type::INT4];

/// Types of the `COPY` columns: `import_id` and then [`CITIZEN_COLUMNS`].
pub(super) const COPY_TYPES: [Type; 10] = [
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

/// A plan's mirror edits, `(import, added, removed, citizen)`: the citizen
/// goes into the lists of `added` and out of those of `removed`, in one
/// statement that also tells who was found (`RETURNING` their birth month).
/// DISTINCT: an Add to a list that already holds the id keeps it once, as
/// `Edit::apply` does.
pub(super) const MIRROR: &str = "UPDATE citizens SET relatives = CASE
         WHEN citizen_id = ANY($3) THEN array_remove(relatives, $4)
         ELSE ARRAY(SELECT DISTINCT r FROM unnest(array_append(relatives, $4)) AS r ORDER BY r)
     END
     WHERE import_id = $1 AND citizen_id = ANY($2::bigint[] || $3::bigint[])
     RETURNING citizen_id, extract(month FROM birth_date)::smallint";

/// A batch's mirror edits, net, as four parallel arrays `(import, citizen,
/// other, adds)`: `other` goes into (`adds`) or out of the list of
/// `citizen`, every citizen's edits in one assignment. Each pair appears
/// once (its last edit: edits of different pairs commute). DISTINCT: an Add
/// to a list that already holds the id keeps it once, as `Edit::apply` does.
pub(super) const MIRRORS: &str = "UPDATE citizens c SET relatives = ARRAY(
         SELECT DISTINCT r FROM unnest(c.relatives || e.added) AS r
         WHERE r <> ALL (e.removed) ORDER BY r)
     FROM (SELECT u.import_id, u.citizen_id,
                  coalesce(array_agg(u.other) FILTER (WHERE u.adds), '{}') AS added,
                  coalesce(array_agg(u.other) FILTER (WHERE NOT u.adds), '{}') AS removed
           FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::boolean[])
                AS u (import_id, citizen_id, other, adds)
           GROUP BY u.import_id, u.citizen_id) e
     WHERE c.import_id = e.import_id AND c.citizen_id = e.citizen_id";

/// Citizens' rows written whole, one array per column ([`CitizenColumns`]),
/// in one statement. A list travels as its `bigint[]` text form.
pub(super) const UPDATE_CITIZENS: &str = "UPDATE citizens c SET
         town = u.town, street = u.street, building = u.building,
         apartment = u.apartment, name = u.name, birth_date = u.birth_date,
         gender = u.gender, relatives = u.relatives::bigint[]
     FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                 $6::bigint[], $7::text[], $8::date[], $9::text[], $10::text[])
          AS u (import_id, citizen_id, town, street, building, apartment, name,
                birth_date, gender, relatives)
     WHERE c.import_id = u.import_id AND c.citizen_id = u.citizen_id";

/// A plan's presents rows, `(import, months, citizens, deltas)`, added to
/// the stored counts; [`PRESENTS_EMPTIED`] then deletes those that fell to
/// zero. Two plain statements rather than one that decides per row: each
/// has one plan, an index probe per row, whatever the statistics say
/// ([`WRITE_PLANS`]). A negative delta always meets a stored row in a
/// consistent store; if it did not, the row it makes is deleted next.
pub(super) const PRESENTS_ADD: &str =
    "INSERT INTO presents AS p (import_id, month, citizen_id, presents)
     SELECT $1, * FROM unnest($2::smallint[], $3::bigint[], $4::integer[])
     ON CONFLICT (import_id, month, citizen_id)
     DO UPDATE SET presents = p.presents + excluded.presents";

/// The rows of [`PRESENTS_ADD`] (`import, months, citizens`: the keys
/// whose change was negative, [`falling`]) that no longer count a
/// present. Each is found by its whole key and deleted by its
/// address (`ctid`, read in this transaction, which holds the import's
/// lock). `LIMIT 1` (a key finds one row) keeps the lookup a subquery
/// run per key: a join of the keys with the table is planned, without
/// statistics (a fresh import), as a scan of the whole import.
pub(super) const PRESENTS_EMPTIED: &str = "DELETE FROM presents WHERE ctid = ANY (ARRAY(
         SELECT q.ctid FROM unnest($2::smallint[], $3::bigint[]) AS d (month, citizen_id)
         CROSS JOIN LATERAL (
             SELECT ctid FROM presents p
             WHERE p.import_id = $1 AND p.month = d.month AND p.citizen_id = d.citizen_id
               AND p.presents <= 0
             LIMIT 1) q))";

/// The keys of a presents change (`months, citizens, deltas`) that may
/// have fallen to zero: those whose change is negative (a stored row
/// counts at least one present). [`PRESENTS_EMPTIED`] looks at these
/// alone, and is not sent when there are none.
pub(super) fn falling(months: &[i16], citizens: &[i64], deltas: &[i32]) -> (Vec<i16>, Vec<i64>) {
    months
        .iter()
        .zip(citizens)
        .zip(deltas)
        .filter(|(_, delta)| **delta < 0)
        .map(|((month, citizen), _)| (*month, *citizen))
        .unzip()
}

/// Starts a PATCH transaction, with settings for it alone: its statements
/// are planned once per connection (a generic plan) and only as index
/// probes, rather than planned again at every call from an import's
/// statistics — which a fresh import does not have yet, and which then
/// chose a scan of the whole import for a PATCH of two rows. Planning was
/// half of a PATCH's time on the server. Every statement of a PATCH reads
/// or writes rows by key, so an index probe per key is the right plan at
/// any import size. (`plan_cache_mode` needs PostgreSQL 12 or newer.)
pub(super) const WRITE_PLANS: &str = "BEGIN;
     SET LOCAL plan_cache_mode = force_generic_plan;
     SET LOCAL enable_seqscan = off;
     SET LOCAL enable_bitmapscan = off;
     SET LOCAL enable_hashjoin = off;
     SET LOCAL enable_mergejoin = off;
     SET LOCAL enable_material = off;";

/// A town's dates, `(import, town, dates)`, written whole.
pub(super) const SET_TOWN: &str =
    "INSERT INTO town_dates (import_id, town, dates) VALUES ($1, $2, $3)
     ON CONFLICT (import_id, town) DO UPDATE SET dates = excluded.dates";

/// A town's dates, `(import, town)`, gone with its last citizen.
pub(super) const DROP_TOWN: &str = "DELETE FROM town_dates WHERE import_id = $1 AND town = $2";

impl Store {
    pub(super) async fn create_import_tx(
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

    pub(super) async fn patch_tx(
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
        let patched = Self::patch_locked(&tx, import, id, patch).await?;
        call.committing.store(true, Ordering::Release);
        tx.commit().await?;
        Ok(patched)
    }

    /// One PATCH of an import whose row `tx` holds locked, in `tx`, which
    /// it leaves open: what it wrote stands only if `tx` commits, and a
    /// refusal is answered before anything is kept.
    pub(super) async fn patch_locked(
        tx: &deadpool_postgres::Transaction<'_>,
        import: ImportId,
        id: CitizenId,
        patch: &CitizenPatch,
    ) -> Result<Patched, Fail> {
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
            let mirror = tx.prepare_cached(MIRROR).await?;
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
        patch_summary(tx, import, &plan).await?;
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
        Ok(Patched { citizen, version })
    }
}

/// A citizen's columns as the write statements take them: one row
/// ([`CitizenRow`]) or an array per column ([`CitizenColumns`]).
#[derive(Default)]
pub(super) struct Columns<N, S, D, G, R> {
    import: N,
    id: N,
    town: S,
    street: S,
    building: S,
    apartment: N,
    name: S,
    birth_date: D,
    gender: G,
    relatives: R,
}

/// A citizen's row as stored (strings escaped by `pg_text`).
pub(super) type CitizenRow<'a> = Columns<i64, Cow<'a, str>, time::Date, &'a str, Vec<i64>>;

/// Citizens' rows as the parameters of [`UPDATE_CITIZENS`]: an array per
/// column, a list as its `bigint[]` text form.
pub(super) type CitizenColumns<'a> =
    Columns<Vec<i64>, Vec<Cow<'a, str>>, Vec<time::Date>, Vec<&'a str>, Vec<String>>;

impl<N, S, D, G, R> Columns<N, S, D, G, R>
where
    N: ToSql + Sync,
    S: ToSql + Sync,
    D: ToSql + Sync,
    G: ToSql + Sync,
    R: ToSql + Sync,
{
    /// The statement parameters, in [`CITIZEN_COLUMNS`] order after the import.
    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 10] {
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

impl<'a> CitizenRow<'a> {
    pub(super) fn new(import: ImportId, c: &'a Citizen) -> Self {
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
}

impl<'a> CitizenColumns<'a> {
    /// Adds a row.
    pub(super) fn push(&mut self, row: CitizenRow<'a>) {
        use std::fmt::Write;
        let mut list = String::with_capacity(2 + row.relatives.len() * 8);
        list.push('{');
        for (at, r) in row.relatives.iter().enumerate() {
            if at > 0 {
                list.push(',');
            }
            let _ = write!(list, "{r}");
        }
        list.push('}');
        self.relatives.push(list);
        self.import.push(row.import);
        self.id.push(row.id);
        self.town.push(row.town);
        self.street.push(row.street);
        self.building.push(row.building);
        self.apartment.push(row.apartment);
        self.name.push(row.name);
        self.birth_date.push(row.birth_date);
        self.gender.push(row.gender);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.id.is_empty()
    }
}

/// Stores the summary of a new import (`domain::summary`) in its transaction.
pub(super) async fn insert_summary(
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
pub(super) async fn patch_summary(
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
        let add = tx.prepare_cached(PRESENTS_ADD).await?;
        tx.execute(&add, &[&import.get(), &month, &citizen, &delta])
            .await?;
        let (month, citizen) = falling(&month, &citizen, &delta);
        if !month.is_empty() {
            let emptied = tx.prepare_cached(PRESENTS_EMPTIED).await?;
            tx.execute(&emptied, &[&import.get(), &month, &citizen])
                .await?;
        }
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
                let delete = tx.prepare_cached(DROP_TOWN).await?;
                tx.execute(&delete, &[&import.get(), &town]).await?;
            } else {
                let write = tx.prepare_cached(SET_TOWN).await?;
                tx.execute(&write, &[&import.get(), &town, &dates]).await?;
            }
        }
    }
    Ok(())
}
