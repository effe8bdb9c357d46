//! The write transactions: an import (citizens and summary by binary `COPY`)
//! and a PATCH (the plan of `domain::patch` applied).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::pg_text;
use super::planned::Applied;
use super::reads::{CITIZEN_COLUMNS, import_id, read_citizen, version_of};
use super::{Call, Fail, Store};
use crate::domain::patch::{self, Move};
use crate::domain::relatives::Edit;
use crate::domain::summary::{self, Summary};
use crate::domain::{Citizen, CitizenId, CitizenPatch, ImportId};
use crate::storage::{Patched, StorageError, Upload, refused};

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

/// A batch of plans' writes, net, in one statement (`planned.rs`; also a
/// PATCH of the savepoint path, [`Store::patch_locked`], whose mirror edits
/// are written before it plans): one parse, bind and execution for the
/// whole batch rather than one per kind of row. Each part takes parallel arrays and touches rows no other part
/// touches (a statement must not change one row twice: PostgreSQL would keep
/// one of the changes, not both):
///
/// - `$1..$4` mirror edits `(import, citizen, other, adds)`: `other` goes
///   into (`adds`) or out of the list of `citizen`, every citizen's edits in
///   one assignment; no citizen whose final row is written below (that row
///   already has the edits). DISTINCT: an Add to a list that already holds
///   the id keeps it once, as `Edit::apply` does;
/// - `$5..$8` presents rows `(import, month, citizen, delta)` whose net
///   change is positive: added to the stored count, or inserted where none
///   is stored (a plain insert: the import's lock keeps any other writer of
///   its rows out, and an upsert's speculative insertion wrote a fifth more
///   WAL records per PATCH);
/// - `$9..$12` those whose net change is negative: subtracted where the
///   count stays positive, deleted where it falls to zero (a stored row
///   counts at least one present; a row a consistent store lacks stays
///   absent);
/// - `$13..$15` towns' dates `(import, town, dates)` written whole, with
///   `$31` their picks (`summary::picked`; `picks_stamp` counted up, see
///   schema 5), and
///   `$16..$17` towns `(import, town)` gone with their last citizen;
/// - `$18..$27` citizens' final rows, one array per column
///   ([`CitizenColumns`]);
/// - `$28..$29` each import's version counted up by its PATCHes `(import,
///   n)`; the statement returns `(import, version)` after them;
/// - `$30` each of those imports' version the batch was planned at, or
///   none: a batch planned from copies held in memory (`planned.rs`) is
///   written only if every import is still at its version, checked with
///   the imports locked; else the statement writes nothing and returns no
///   row. A batch planned from rows read under the locks passes none.
///
/// Every join is a probe of a primary key per row (under [`WRITE_PLANS`]);
/// the imports are found by `= ANY` (see `own_rows::replace_fields`).
pub(super) const APPLY_PLANS: &str = "WITH expected AS (
         SELECT cardinality($30::bigint[]) = 0 OR count(*) = cardinality($30::bigint[]) AS ok
         FROM unnest($28::bigint[], $30::bigint[]) AS e (import_id, version)
         JOIN imports i ON i.import_id = e.import_id AND i.version = e.version),
     mirrored AS (
         UPDATE citizens c SET relatives = ARRAY(
             SELECT DISTINCT r FROM unnest(c.relatives || e.added) AS r
             WHERE r <> ALL (e.removed) ORDER BY r)
         FROM (SELECT u.import_id, u.citizen_id,
                      coalesce(array_agg(u.other) FILTER (WHERE u.adds), '{}') AS added,
                      coalesce(array_agg(u.other) FILTER (WHERE NOT u.adds), '{}') AS removed
               FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::boolean[])
                    AS u (import_id, citizen_id, other, adds)
               GROUP BY u.import_id, u.citizen_id) e
         WHERE c.import_id = e.import_id AND c.citizen_id = e.citizen_id
           AND (SELECT ok FROM expected)),
     raised AS (
         UPDATE presents p SET presents = p.presents + d.delta
         FROM unnest($5::bigint[], $6::smallint[], $7::bigint[], $8::integer[])
              AS d (import_id, month, citizen_id, delta)
         WHERE p.import_id = d.import_id AND p.month = d.month AND p.citizen_id = d.citizen_id
           AND (SELECT ok FROM expected)
         RETURNING p.import_id, p.month, p.citizen_id),
     added AS (
         INSERT INTO presents (import_id, month, citizen_id, presents)
         SELECT * FROM unnest($5::bigint[], $6::smallint[], $7::bigint[], $8::integer[])
              AS d (import_id, month, citizen_id, delta)
         WHERE NOT EXISTS (SELECT FROM raised r WHERE r.import_id = d.import_id
                               AND r.month = d.month AND r.citizen_id = d.citizen_id)
           AND (SELECT ok FROM expected)),
     lowered AS (
         UPDATE presents p SET presents = p.presents + d.delta
         FROM unnest($9::bigint[], $10::smallint[], $11::bigint[], $12::integer[])
              AS d (import_id, month, citizen_id, delta)
         WHERE p.import_id = d.import_id AND p.month = d.month
           AND p.citizen_id = d.citizen_id AND p.presents + d.delta > 0
           AND (SELECT ok FROM expected)),
     emptied AS (
         DELETE FROM presents p
         USING unnest($9::bigint[], $10::smallint[], $11::bigint[], $12::integer[])
               AS d (import_id, month, citizen_id, delta)
         WHERE p.import_id = d.import_id AND p.month = d.month
           AND p.citizen_id = d.citizen_id AND p.presents + d.delta <= 0
           AND (SELECT ok FROM expected)),
     dated AS (
         INSERT INTO town_dates (import_id, town, dates, picks)
         SELECT * FROM unnest($13::bigint[], $14::text[], $15::bytea[], $31::bytea[])
         WHERE (SELECT ok FROM expected)
         ON CONFLICT (import_id, town)
         DO UPDATE SET dates = excluded.dates, picks = excluded.picks,
                       picks_stamp = town_dates.picks_stamp + 1),
     undated AS (
         DELETE FROM town_dates t USING unnest($16::bigint[], $17::text[]) AS d (import_id, town)
         WHERE t.import_id = d.import_id AND t.town = d.town AND (SELECT ok FROM expected)),
     rewritten AS (
         UPDATE citizens c SET
             town = u.town, street = u.street, building = u.building,
             apartment = u.apartment, name = u.name, birth_date = u.birth_date,
             gender = u.gender, relatives = u.relatives::bigint[]
         FROM unnest($18::bigint[], $19::bigint[], $20::text[], $21::text[], $22::text[],
                     $23::bigint[], $24::text[], $25::date[], $26::text[], $27::text[])
              AS u (import_id, citizen_id, town, street, building, apartment, name,
                    birth_date, gender, relatives)
         WHERE c.import_id = u.import_id AND c.citizen_id = u.citizen_id
           AND (SELECT ok FROM expected))
     UPDATE imports i SET version = i.version + n.n
     FROM unnest($28::bigint[], $29::bigint[]) AS n (import_id, n)
     WHERE i.import_id = ANY ($28) AND i.import_id = n.import_id AND (SELECT ok FROM expected)
     RETURNING i.import_id, i.version";

/// [`WRITE_PLANS`]' settings (a literal, for `concat!`).
macro_rules! plan_settings {
    () => {
        "SET LOCAL plan_cache_mode = force_generic_plan;
         SET LOCAL enable_seqscan = off;
         SET LOCAL enable_bitmapscan = off;
         SET LOCAL enable_hashjoin = off;
         SET LOCAL enable_mergejoin = off;
         SET LOCAL enable_material = off;"
    };
}

/// Starts a PATCH transaction, with settings for it alone: its statements
/// are planned once per connection (a generic plan) and only as index
/// probes, rather than planned again at every call from an import's
/// statistics — which a fresh import does not have yet, and which then
/// chose a scan of the whole import for a PATCH of two rows. Planning was
/// half of a PATCH's time on the server. Every statement of a PATCH reads
/// or writes rows by key, so an index probe per key is the right plan at
/// any import size. (`plan_cache_mode` needs PostgreSQL 12 or newer.)
pub(super) const WRITE_PLANS: &str = concat!("BEGIN; ", plan_settings!());

/// [`WRITE_PLANS`]' settings, for a transaction begun otherwise (the
/// savepoint path's).
pub(super) const PLAN_SETTINGS: &str = plan_settings!();

impl Store {
    pub(super) async fn create_import_tx(
        &self,
        citizens: &[Citizen],
        summary: &Summary,
        upload: &Upload,
        call: &Call,
    ) -> Result<ImportId, Fail> {
        let mut client = self.conn(call).await?;
        let tx = client.transaction().await?;
        if let Some(key) = &upload.key {
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
                return if hash == upload.digest[..] {
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
            .prepare_cached(
                "INSERT INTO imports (citizens, name, digest) VALUES ($1, $2, $3)
                 RETURNING import_id",
            )
            .await?;
        let row = tx
            .query_one(&insert, &[&count, &upload.name, &&upload.digest[..]])
            .await?;
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
        if let Some(key) = &upload.key {
            tx.execute(
                "INSERT INTO idempotency_keys (key, body_hash, import_id) VALUES ($1, $2, $3)",
                &[key, &&upload.digest[..], &import.get()],
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
        tx.batch_execute(PLAN_SETTINGS).await?;
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
        // The dates of the towns a birth leaves and joins, moved.
        let mut towns: Vec<(i64, String)> = Vec::new();
        let mut blobs: HashMap<(i64, String), Vec<u8>> = HashMap::new();
        if let Some(Move { from, to }) = &plan.births {
            let read = tx
                .prepare_cached("SELECT dates FROM town_dates WHERE import_id = $1 AND town = $2")
                .await?;
            for (town, date, delta) in [(&from.0, from.1, -1), (&to.0, to.1, 1)] {
                let key = (import.get(), pg_text::encode(town.as_str()).into_owned());
                if !blobs.contains_key(&key) {
                    let dates = match tx.query_opt(&read, &[&key.0, &key.1]).await? {
                        Some(row) => row.try_get(0)?,
                        None => Vec::new(),
                    };
                    blobs.insert(key.clone(), dates);
                    towns.push(key.clone());
                }
                let dates = blobs.entry(key).or_default();
                if !summary::adjust_dates(dates, date, delta) {
                    return Err(Fail::Store(StorageError::internal(format!(
                        "import {import}: the stored dates of town {:?} are corrupt",
                        town.as_str()
                    ))));
                }
            }
        }
        // The rest of the plan in the batch's statement; its mirror edits
        // are written already.
        let mut plan = plan;
        plan.mirror.clear();
        let held = HashMap::from([((import.get(), id), plan.citizen.clone())]);
        let plans = [(0, import, plan)];
        let apply = tx.prepare_cached(APPLY_PLANS).await?;
        let version = tx
            .query_one(
                &apply,
                &Applied::of(&plans, &held, &towns, &blobs)?.params(),
            )
            .await?;
        let version = version_of(version.try_get(1)?)?;
        let [(_, _, plan)] = plans;
        Ok(Patched {
            citizen: plan.citizen,
            version,
        })
    }
}

/// A citizen's columns as the write statements take them: one row
/// ([`CitizenRow`]) or an array per column ([`CitizenColumns`]).
#[derive(Default)]
pub(super) struct Columns<N, S, D, G, R> {
    import: N,
    pub(super) id: N,
    town: S,
    street: S,
    building: S,
    apartment: N,
    name: S,
    birth_date: D,
    gender: G,
    pub(super) relatives: R,
}

/// A citizen's row as stored (strings escaped by `pg_text`).
pub(super) type CitizenRow<'a> = Columns<i64, Cow<'a, str>, time::Date, &'a str, Vec<i64>>;

/// Citizens' rows as parameters of [`APPLY_PLANS`]: an array per
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
    let picks = dates
        .iter()
        .map(|dates| summary::picked(dates))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| StorageError::internal("postgresql: a summary's town not encoded"))?;
    tx.execute(
        "INSERT INTO town_dates (import_id, town, dates, picks)
         SELECT $1, * FROM unnest($2::text[], $3::bytea[], $4::bytea[])",
        &[&import.get(), &towns, &dates, &picks],
    )
    .await?;
    Ok(())
}
