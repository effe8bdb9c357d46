//! A batch of PATCHes planned in Rust at once and applied in one pipelined
//! write: two round trips for the whole batch (`BEGIN`, the locks and every
//! read; then every write and `COMMIT`) rather than three to five per PATCH.
//!
//! After `BEGIN` and the import locks, one pipeline reads every PATCHed citizen, the
//! birth months of every citizen a relatives PATCH may reach (the stored
//! lists and the new ones), and the town dates of every town a birth may
//! leave or join. The PATCHes are then planned one after another over a
//! copy of those rows in memory, each seeing the ones before it (a mirror
//! edit or a move of an earlier PATCH), exactly as `domain::patch::plan`
//! would see them one transaction at a time. A refusal writes nothing, so
//! it needs no savepoint. The writes are one statement
//! (`writes::APPLY_PLANS`), whatever the batch, sent with `COMMIT`: the
//! batch's mirror edits, net (a pair's last edit wins; edits of different
//! pairs commute), its presents changes summed per row, the final dates of
//! each town, the final row of every PATCHed citizen, and each import's
//! version counted up by its PATCHes.
//! A statement that fails aborts the transaction, so the `COMMIT` behind it
//! rolls back; once the two are sent, a lost answer leaves the outcome
//! unknown (504), as a lost answer to `COMMIT` always did.
//!
//! When every PATCH of the batch comes with its import's copy held in
//! memory (the read cache's), the batch is planned from the copies instead,
//! with no read, and written in one round trip: `BEGIN`, the locks, the
//! statement and `COMMIT`, the statement writing only if every import is
//! still at its copy's version ([`Store::patch_from_copies`]).
//!
//! Anything this path cannot answer PATCH by PATCH (a statement of the
//! server's failing, say a trigger; a town's dates found corrupt; a row the
//! reads did not foresee) takes the whole transaction back and hands the
//! batch to the savepoint path (`patches.rs`), which answers each PATCH
//! alone; nothing was committed, so nothing is applied twice.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::patches::{LOCK_IMPORTS, PatchJob, big, fails_the_patch_alone};
use super::pg_text;
use super::reads::{CITIZEN_COLUMNS, read_citizen, version_of};
use super::writes::{self, CitizenColumns, CitizenRow};
use super::{Call, Conn, Fail, Store};
use crate::domain::patch::{self, Plan};
use crate::domain::relatives::Edit;
use crate::domain::summary;
use crate::domain::{Citizen, CitizenId, ImportId};
use crate::storage::{HeldCopy, Patched, StorageError, refused};

/// What the batch came to.
pub(super) enum Outcome {
    /// Committed: each PATCH's answer, in the jobs' order.
    Answered(Vec<Result<Patched, StorageError>>),
    /// Taken back, nothing applied: to be answered PATCH by PATCH.
    OneByOne,
    /// Taken back, nothing applied: these jobs (indices) may write many
    /// rows and commit alone (`patches::big`); the others go on as a batch.
    Split(Vec<usize>),
}

/// A citizen of an import.
pub(super) type Key = (i64, CitizenId);

/// Net presents changes: `(imports, months, citizens, deltas)`.
type PresentsRows = (Vec<i64>, Vec<i16>, Vec<i64>, Vec<i32>);

/// Towns' dates written whole: `(imports, towns, dates, picks)`.
type DatedRows<'a> = (Vec<i64>, Vec<&'a str>, Vec<&'a [u8]>, Vec<Vec<u8>>);

impl Store {
    /// The jobs planned at once and written in one pipeline (see the module).
    /// With `split`, jobs that may write many rows are handed back
    /// ([`Outcome::Split`]) once their citizens are read.
    pub(super) async fn patch_planned_tx(
        &self,
        jobs: &[PatchJob],
        call: &Call,
        split: bool,
    ) -> Result<Outcome, Fail> {
        if let Some(outcome) = self.patch_from_copies(jobs, call).await? {
            return Ok(outcome);
        }
        let open = Open {
            conn: self.conn(call).await?,
            open: AtomicBool::new(true),
        };
        let tx: &deadpool_postgres::ClientWrapper = &open.conn;

        let imports = imports_of(jobs);
        let (mut citizen_imports, mut citizen_ids) = (Vec::new(), Vec::new());
        let (mut reach_imports, mut reach_ids) = (Vec::new(), Vec::new());
        let (mut new_imports, mut new_ids) = (Vec::new(), Vec::new());
        let (mut town_imports, mut towns): (Vec<i64>, Vec<Cow<'_, str>>) = (Vec::new(), Vec::new());
        let (mut moving_imports, mut moving_ids) = (Vec::new(), Vec::new());
        for job in jobs {
            let (import, id) = (job.import.get(), job.citizen.as_i64());
            citizen_imports.push(import);
            citizen_ids.push(id);
            if let Some(relatives) = &job.patch.relatives {
                reach_imports.push(import);
                reach_ids.push(id);
                for other in relatives {
                    new_imports.push(import);
                    new_ids.push(other.as_i64());
                }
            }
            if job.patch.town.is_some() || job.patch.birth_date.is_some() {
                moving_imports.push(import);
                moving_ids.push(id);
            }
            if let Some(town) = &job.patch.town {
                town_imports.push(import);
                towns.push(pg_text::encode(town.as_str()));
            }
        }

        // Prepared once per connection, outside the transaction.
        let lock = tx.prepare_cached(LOCK_IMPORTS).await?;
        let read = tx
            .prepare_cached(&format!(
                "SELECT {CITIZEN_COLUMNS}, import_id FROM citizens
                 WHERE (import_id, citizen_id) IN
                       (SELECT * FROM unnest($1::bigint[], $2::bigint[]))"
            ))
            .await?;
        let months = tx
            .prepare_cached(
                "SELECT import_id, citizen_id, extract(month FROM birth_date)::smallint
                 FROM citizens WHERE (import_id, citizen_id) IN (
                     SELECT p.import_id, unnest(p.relatives) FROM citizens p
                     WHERE (p.import_id, p.citizen_id) IN
                           (SELECT * FROM unnest($1::bigint[], $2::bigint[]))
                     UNION SELECT * FROM unnest($3::bigint[], $4::bigint[]))",
            )
            .await?;
        let dates = tx
            .prepare_cached(
                "SELECT import_id, town, dates FROM town_dates WHERE (import_id, town) IN (
                     SELECT c.import_id, c.town FROM citizens c
                     WHERE (c.import_id, c.citizen_id) IN
                           (SELECT * FROM unnest($1::bigint[], $2::bigint[]))
                     UNION SELECT * FROM unnest($3::bigint[], $4::text[]))",
            )
            .await?;
        // One pipeline, with the transaction's start: the server runs them
        // in this order, each reading after the locks are held.
        let no_months = reach_ids.is_empty();
        let no_dates = moving_ids.is_empty();
        let lock_params: [&(dyn ToSql + Sync); 1] = [&imports];
        let read_params: [&(dyn ToSql + Sync); 2] = [&citizen_imports, &citizen_ids];
        let ((), locked, rows, month_rows, date_rows) = tokio::try_join!(
            biased;
            tx.batch_execute(writes::WRITE_PLANS),
            tx.query(&lock, &lock_params),
            tx.query(&read, &read_params),
            async {
                if no_months {
                    return Ok(Vec::new());
                }
                tx.query(
                    &months,
                    &[&reach_imports, &reach_ids, &new_imports, &new_ids],
                )
                .await
            },
            async {
                if no_dates {
                    return Ok(Vec::new());
                }
                tx.query(&dates, &[&moving_imports, &moving_ids, &town_imports, &towns])
                    .await
            },
        )?;

        let mut inputs = Inputs {
            locked: locked.iter().map(|row| row.get(0)).collect(),
            ..Inputs::default()
        };
        // The rows as the batch moves them, and what the reads were asked.
        inputs.held.reserve(rows.len());
        for row in &rows {
            let citizen = read_citizen(row)?;
            inputs
                .held
                .insert((row.try_get(9)?, citizen.citizen_id), citizen);
        }
        if split {
            let heavy: Vec<usize> = jobs
                .iter()
                .enumerate()
                .filter(|(_, job)| {
                    inputs
                        .held
                        .get(&(job.import.get(), job.citizen))
                        .is_some_and(|citizen| big(citizen, &job.patch))
                })
                .map(|(at, _)| at)
                .collect();
            if !heavy.is_empty() {
                open.roll_back().await?;
                return Ok(Outcome::Split(heavy));
            }
        }
        let mut asked_months: HashSet<Key> = HashSet::new();
        for job in jobs {
            let import = job.import.get();
            if let Some(citizen) = inputs.held.get(&(import, job.citizen)) {
                if job.patch.relatives.is_some() {
                    asked_months.extend(citizen.relatives.iter().map(|&r| (import, r)));
                }
                if job.patch.town.is_some() || job.patch.birth_date.is_some() {
                    inputs
                        .asked_towns
                        .insert((import, pg_text::encode(citizen.town.as_str()).into_owned()));
                }
            }
            for &other in job.patch.relatives.iter().flatten() {
                asked_months.insert((import, other));
            }
        }
        inputs.asked_towns.extend(
            town_imports
                .iter()
                .copied()
                .zip(towns.iter().map(|t| t.clone().into_owned())),
        );
        let mut found_months: HashMap<Key, u8> = HashMap::with_capacity(month_rows.len());
        for row in &month_rows {
            let id = u64::try_from(row.try_get::<_, i64>(1)?)
                .ok()
                .and_then(|id| CitizenId::parse(id).ok());
            let month = u8::try_from(row.try_get::<_, i16>(2)?).ok();
            let (Some(id), Some(month)) = (id, month) else {
                return open.roll_back().await;
            };
            found_months.insert((row.try_get(0)?, id), month);
        }
        for row in &date_rows {
            let town: String = row.try_get(1)?;
            inputs
                .blobs
                .insert((row.try_get(0)?, town), row.try_get(2)?);
        }

        // A month the reads were not asked for is unforeseen.
        let Some(mut planned) = plan_batch(jobs, &mut inputs, |key| {
            asked_months
                .contains(&key)
                .then(|| found_months.get(&key).copied())
        }) else {
            return open.roll_back().await;
        };
        if planned.plans.is_empty() {
            // Refusals only: nothing to write or commit.
            open.roll_back().await?;
            return Ok(Outcome::Answered(planned.answers));
        }
        let batch = Applied::of(
            &planned.plans,
            &inputs.held,
            &inputs.changed_towns,
            &inputs.blobs,
        )?;
        match write(&open, call, &batch, None).await? {
            Written::Versions(versions) => {
                planned.number(&batch.counts, &versions)?;
                Ok(Outcome::Answered(planned.answers))
            }
            Written::OneByOne => Ok(Outcome::OneByOne),
            Written::Stale => Err(Fail::Store(StorageError::internal(
                "postgresql: no version for a written import",
            ))),
        }
    }

    /// The jobs planned from the copies of their imports held in memory
    /// (`Storage::patch_citizen_held`), with no read: `BEGIN`, the locks,
    /// the writes and `COMMIT` in one pipeline, one round trip. The writes
    /// apply only if every import is still at its copy's version, checked
    /// under the locks (`writes::APPLY_PLANS`' `$30`); else nothing is
    /// written and `None` sends the batch the way that reads. `None` too,
    /// before anything is sent, for a batch this cannot plan alone: a job
    /// with no copy, copies of one import at two versions or older than a
    /// version this instance committed, a citizen not in its copy, a move
    /// of a birth (the towns' dates are not held), a PATCH that may write
    /// many rows, a refusal.
    async fn patch_from_copies(
        &self,
        jobs: &[PatchJob],
        call: &Call,
    ) -> Result<Option<Outcome>, Fail> {
        let mut copies: HashMap<i64, &HeldCopy> = HashMap::new();
        for job in jobs {
            let Some(copy) = &job.held else {
                return Ok(None);
            };
            if job.patch.town.is_some() || job.patch.birth_date.is_some() {
                return Ok(None);
            }
            let import = job.import.get();
            if copies
                .insert(import, copy)
                .is_some_and(|other| other.version != copy.version)
                || self.committed_after(import, copy.version)
            {
                return Ok(None);
            }
        }
        let mut inputs = Inputs::default();
        for job in jobs {
            let import = job.import.get();
            let Some(citizen) = find(copies[&import], job.citizen) else {
                return Ok(None);
            };
            if big(citizen, &job.patch) {
                return Ok(None);
            }
            inputs.locked.insert(import);
            inputs
                .held
                .entry((import, job.citizen))
                .or_insert_with(|| citizen.clone());
        }
        // Births are not moved here (no towns asked): every month is known.
        let Some(mut planned) = plan_batch(jobs, &mut inputs, |(import, id)| {
            Some(find(copies[&import], id).map(|c| c.birth_date.month()))
        }) else {
            return Ok(None);
        };
        if planned.answers.iter().any(Result::is_err) {
            return Ok(None);
        }
        let mut batch = Applied::of(
            &planned.plans,
            &inputs.held,
            &inputs.changed_towns,
            &inputs.blobs,
        )?;
        for import in &batch.counts.0 {
            let version = i64::try_from(copies[import].version).map_err(StorageError::internal)?;
            batch.expected.push(version);
        }
        let open = Open {
            conn: self.conn(call).await?,
            open: AtomicBool::new(true),
        };
        let imports = imports_of(jobs);
        match write(&open, call, &batch, Some(&imports)).await? {
            Written::Versions(versions) => {
                planned.number(&batch.counts, &versions)?;
                self.copies.written.inc();
                Ok(Some(Outcome::Answered(planned.answers)))
            }
            Written::Stale => {
                self.copies.stale.inc();
                call.committing.store(false, Ordering::Release);
                Ok(None)
            }
            Written::OneByOne => Ok(Some(Outcome::OneByOne)),
        }
    }
}

/// The imports of a batch, ascending, once each: the order they are locked in.
fn imports_of(jobs: &[PatchJob]) -> Vec<i64> {
    let mut imports: Vec<i64> = jobs.iter().map(|job| job.import.get()).collect();
    imports.sort_unstable();
    imports.dedup();
    imports
}

/// The citizen `id` in a copy.
fn find(copy: &HeldCopy, id: CitizenId) -> Option<&Citizen> {
    let at = copy
        .citizens
        .binary_search_by_key(&id, |c| c.citizen_id)
        .ok()?;
    Some(&copy.citizens[at])
}

/// What a batch is planned over, and what it moves.
#[derive(Default)]
struct Inputs {
    /// The imports found (and locked).
    locked: HashSet<i64>,
    /// The PATCHed citizens, as the batch moves them.
    held: HashMap<Key, Citizen>,
    /// The towns whose dates were asked for, and those found.
    asked_towns: HashSet<(i64, String)>,
    blobs: HashMap<(i64, String), Vec<u8>>,
    /// The towns whose dates the plans change.
    changed_towns: Vec<(i64, String)>,
}

/// A batch planned: each job's answer (its version still 0), the plans
/// to write.
struct Planned {
    answers: Vec<Result<Patched, StorageError>>,
    plans: Vec<(usize, ImportId, Plan)>,
}

/// Plans each PATCH over the rows as the ones before it left them (see the
/// module); `month` is a citizen's birth month, `None` when not asked for.
/// `None` when the batch is to be answered PATCH by PATCH instead: a month
/// or a town's dates not foreseen, a town's dates found corrupt.
fn plan_batch(
    jobs: &[PatchJob],
    inputs: &mut Inputs,
    month: impl Fn(Key) -> Option<Option<u8>>,
) -> Option<Planned> {
    let mut planned = Planned {
        answers: Vec::with_capacity(jobs.len()),
        plans: Vec::with_capacity(jobs.len()),
    };
    for (at, job) in jobs.iter().enumerate() {
        let (import, id) = (job.import.get(), job.citizen);
        if !inputs.locked.contains(&import) {
            planned
                .answers
                .push(Err(StorageError::ImportNotFound(job.import)));
            continue;
        }
        let Some(before) = inputs.held.get(&(import, id)) else {
            planned.answers.push(Err(StorageError::CitizenNotFound {
                import: job.import,
                citizen: id,
            }));
            continue;
        };
        let unforeseen = Cell::new(false);
        let held = &inputs.held;
        let planning = patch::plan(before, &job.patch, |other| {
            if let Some(c) = held.get(&(import, other)) {
                return Some(c.birth_date.month());
            }
            month((import, other)).unwrap_or_else(|| {
                unforeseen.set(true);
                None
            })
        });
        if unforeseen.get() {
            return None;
        }
        let plan = match planning {
            Ok(plan) => plan,
            Err(refusal) => {
                planned.answers.push(Err(refused(job.import, id, refusal)));
                continue;
            }
        };
        if let Some(births) = &plan.births {
            for ((town, date), delta) in [(&births.from, -1), (&births.to, 1)] {
                let key = (import, pg_text::encode(town.as_str()).into_owned());
                if !inputs.asked_towns.contains(&key) {
                    return None;
                }
                if !inputs.changed_towns.contains(&key) {
                    inputs.changed_towns.push(key.clone());
                }
                let blob = inputs.blobs.entry(key).or_default();
                if !summary::adjust_dates(blob, *date, delta) {
                    // Answered alone (500) by the savepoint path.
                    return None;
                }
            }
        }
        for &(other, edit) in &plan.mirror {
            if let Some(c) = inputs.held.get_mut(&(import, other)) {
                edit.apply(&mut c.relatives);
            }
        }
        inputs.held.insert((import, id), plan.citizen.clone());
        planned.answers.push(Ok(Patched {
            citizen: plan.citizen.clone(),
            version: 0, // counted by `number`, once written
        }));
        planned.plans.push((at, job.import, plan));
    }
    Some(planned)
}

impl Planned {
    /// Each planned PATCH's version: its import's before the batch (the
    /// written `versions` less the batch's `counts`), counted up to it.
    fn number(&mut self, counts: &(Vec<i64>, Vec<i64>), versions: &[Row]) -> Result<(), Fail> {
        let mut next: HashMap<i64, i64> = HashMap::with_capacity(counts.0.len());
        for row in versions {
            let import: i64 = row.try_get(0)?;
            let last: i64 = row.try_get(1)?;
            let Some(at) = counts.0.iter().position(|i| *i == import) else {
                continue;
            };
            next.insert(import, last - counts.1[at]);
        }
        if next.len() != counts.0.len() {
            return Err(Fail::Store(StorageError::internal(
                "postgresql: no version for a written import",
            )));
        }
        for (at, import, _) in &self.plans {
            let Some(version) = next.get_mut(&import.get()) else {
                continue;
            };
            *version += 1;
            if let Some(Ok(patched)) = self.answers.get_mut(*at) {
                patched.version = version_of(*version)?;
            }
        }
        Ok(())
    }
}

/// What a batch's write came to.
enum Written {
    /// Committed: each import's version after it (`writes::APPLY_PLANS`).
    Versions(Vec<Row>),
    /// Nothing written: an import was not at the version planned from.
    Stale,
    /// Taken back by a statement's failure: to be answered PATCH by PATCH.
    OneByOne,
}

/// Writes `batch` and commits, in one pipeline: one statement and `COMMIT`,
/// after `BEGIN` and the locks of `lock` when the transaction is not begun
/// yet (a batch planned from copies). A statement that fails aborts the
/// transaction, and the `COMMIT` behind it then rolls it back; from here a
/// lost answer leaves the outcome unknown.
async fn write(
    open: &Open<'_>,
    call: &Call,
    batch: &Applied<'_>,
    lock: Option<&Vec<i64>>,
) -> Result<Written, Fail> {
    let tx: &deadpool_postgres::ClientWrapper = &open.conn;
    let apply = tx.prepare_cached(writes::APPLY_PLANS).await?;
    let params = batch.params();
    let locking = match lock {
        Some(imports) => Some((tx.prepare_cached(LOCK_IMPORTS).await?, imports)),
        None => None,
    };
    call.committing.store(true, Ordering::Release);
    // Each request is sent when first polled: `biased` keeps their order.
    let (begun, locked, written, committed) = tokio::join!(
        biased;
        async {
            match &locking {
                Some(_) => tx.batch_execute(writes::WRITE_PLANS).await,
                None => Ok(()),
            }
        },
        async {
            match &locking {
                Some((statement, imports)) => {
                    let params: [&(dyn ToSql + Sync); 1] = [*imports];
                    tx.query(statement, &params).await.map(drop)
                }
                None => Ok(()),
            }
        },
        tx.query(&apply, &params),
        tx.batch_execute("COMMIT"),
    );
    // All answered: the transaction is over.
    open.open.store(false, Ordering::Release);
    let versions = match (begun.and(locked), written, committed) {
        (Ok(()), Ok(versions), Ok(())) => versions,
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) if fails_the_patch_alone(&e) => {
            call.committing.store(false, Ordering::Release);
            return Ok(Written::OneByOne);
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Err(Fail::Pg(e)),
    };
    if versions.is_empty() {
        return Ok(Written::Stale);
    }
    Ok(Written::Versions(versions))
}

/// A batch's writes, as the parameters of `writes::APPLY_PLANS`: every
/// plan's rows, net.
pub(super) struct Applied<'a> {
    /// Mirror edits `(imports, citizens, others, adds)`, a pair's last edit
    /// only, of no citizen in `rows`.
    mirrors: (Vec<i64>, Vec<i64>, Vec<i64>, Vec<bool>),
    /// Presents rows whose count rises, and those whose count falls.
    raised: PresentsRows,
    lowered: PresentsRows,
    /// Towns' dates written whole `(imports, towns, dates, picks)`, and
    /// towns gone.
    dated: DatedRows<'a>,
    undated: (Vec<i64>, Vec<&'a str>),
    /// Each PATCHed citizen's final row, once.
    rows: CitizenColumns<'a>,
    /// Each import's count of PATCHes `(imports, counts)`.
    counts: (Vec<i64>, Vec<i64>),
    /// Each of those imports' version the batch was planned at (a batch
    /// planned from copies), or none.
    expected: Vec<i64>,
}

impl<'a> Applied<'a> {
    /// The writes of `plans` (in the batch's order), whose citizens stand in
    /// `held` as the last of them left them (mirror edits of the batch
    /// included); `changed_towns`' dates stand in `blobs`.
    pub(super) fn of(
        plans: &[(usize, ImportId, Plan)],
        held: &'a HashMap<Key, Citizen>,
        changed_towns: &'a [(i64, String)],
        blobs: &'a HashMap<(i64, String), Vec<u8>>,
    ) -> Result<Self, StorageError> {
        // Each PATCHed citizen once, in the batch's order.
        let mut finals: Vec<(ImportId, CitizenId)> = Vec::new();
        let mut rewritten: HashSet<(ImportId, CitizenId)> = HashSet::new();
        for (_, import, plan) in plans {
            let key = (*import, plan.citizen.citizen_id);
            if rewritten.insert(key) {
                finals.push(key);
            }
        }
        let mut rows = CitizenColumns::default();
        for &(import, id) in &finals {
            let citizen = held
                .get(&(import.get(), id))
                .ok_or_else(|| StorageError::internal("postgresql: a PATCHed citizen not held"))?;
            rows.push(CitizenRow::new(import, citizen));
        }
        // Mirror edits net: a pair's last edit wins (edits of different
        // pairs commute). A citizen whose final row is written has them in
        // it already, and the statement may change a row once.
        let mut net: BTreeMap<(i64, CitizenId, CitizenId), bool> = BTreeMap::new();
        for (_, import, plan) in plans {
            for &(other, edit) in &plan.mirror {
                if rewritten.contains(&(*import, other)) {
                    continue;
                }
                let (id, adds) = match edit {
                    Edit::Add(id) => (id, true),
                    Edit::Remove(id) => (id, false),
                };
                net.insert((import.get(), other, id), adds);
            }
        }
        let mut mirrors = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((import, other, id), adds) in net {
            mirrors.0.push(import);
            mirrors.1.push(other.as_i64());
            mirrors.2.push(id.as_i64());
            mirrors.3.push(adds);
        }
        // Presents rows net: counts add up.
        let mut sums: BTreeMap<(i64, u8, CitizenId), i64> = BTreeMap::new();
        for (_, import, plan) in plans {
            for &(month, citizen, delta) in &plan.presents {
                *sums.entry((import.get(), month, citizen)).or_default() += delta;
            }
        }
        let (mut raised, mut lowered) = (PresentsRows::default(), PresentsRows::default());
        for ((import, month, citizen), delta) in sums {
            let rows = match delta.cmp(&0) {
                std::cmp::Ordering::Greater => &mut raised,
                std::cmp::Ordering::Less => &mut lowered,
                std::cmp::Ordering::Equal => continue,
            };
            rows.0.push(import);
            rows.1.push(i16::from(month));
            rows.2.push(citizen.as_i64());
            rows.3
                .push(i32::try_from(delta).map_err(StorageError::internal)?);
        }
        let mut dated = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut undated = (Vec::new(), Vec::new());
        for key in changed_towns {
            let blob = blobs
                .get(key)
                .ok_or_else(|| StorageError::internal("postgresql: a changed town not held"))?;
            if blob.is_empty() {
                undated.0.push(key.0);
                undated.1.push(key.1.as_str());
            } else {
                dated.0.push(key.0);
                dated.1.push(key.1.as_str());
                dated.2.push(blob.as_slice());
                dated.3.push(summary::picked(blob).ok_or_else(|| {
                    StorageError::internal(format!(
                        "import {}: the dates of town {:?} are corrupt",
                        key.0, key.1
                    ))
                })?);
            }
        }
        let mut counts: (Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new());
        for (_, import, _) in plans {
            if let Some(at) = counts.0.iter().position(|i| *i == import.get()) {
                counts.1[at] += 1;
            } else {
                counts.0.push(import.get());
                counts.1.push(1);
            }
        }
        Ok(Self {
            mirrors,
            raised,
            lowered,
            dated,
            undated,
            rows,
            counts,
            expected: Vec::new(),
        })
    }

    /// `writes::APPLY_PLANS`' parameters, `$1..$31`.
    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 31] {
        let [c1, c2, c3, c4, c5, c6, c7, c8, c9, c10] = self.rows.params();
        let (m, r, l) = (&self.mirrors, &self.raised, &self.lowered);
        [
            &m.0,
            &m.1,
            &m.2,
            &m.3,
            &r.0,
            &r.1,
            &r.2,
            &r.3,
            &l.0,
            &l.1,
            &l.2,
            &l.3,
            &self.dated.0,
            &self.dated.1,
            &self.dated.2,
            &self.undated.0,
            &self.undated.1,
            c1,
            c2,
            c3,
            c4,
            c5,
            c6,
            c7,
            c8,
            c9,
            c10,
            &self.counts.0,
            &self.counts.1,
            &self.expected,
            &self.dated.3,
        ]
    }
}

/// A connection with a transaction begun by hand (so that `BEGIN` shares
/// the reads' pipeline): a transaction still open when this is dropped (an
/// error, or the call's time ran out) closes the connection rather than
/// putting it back in the pool mid-transaction.
pub(super) struct Open<'a> {
    pub(super) conn: Conn<'a>,
    pub(super) open: AtomicBool,
}

impl Open<'_> {
    /// Takes the transaction back (nothing was written): the batch is to be
    /// answered PATCH by PATCH.
    async fn roll_back(&self) -> Result<Outcome, Fail> {
        self.conn.batch_execute("ROLLBACK").await?;
        self.open.store(false, Ordering::Release);
        Ok(Outcome::OneByOne)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if self.open.load(Ordering::Acquire) {
            self.conn.discard();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::patch::tests::person;
    use crate::domain::relatives::tests::{id, ids};
    use crate::domain::{CitizenPatch, Name};

    /// A batch whose PATCHed citizen is also another PATCH's mirror target:
    /// its final row carries the edits and the mirror statement leaves it
    /// alone (one statement may change a row only once: PostgreSQL would
    /// drop one of two changes); a citizen not PATCHed gets its edit.
    #[test]
    fn a_batch_writes_each_row_once_with_every_edit_in_it() {
        let import = ImportId::new(1).unwrap();
        let mut held: HashMap<Key, Citizen> = [
            person(1, 1, &[]),
            person(2, 2, &[]),
            person(3, 3, &[2]),
            person(4, 4, &[]),
        ]
        .into_iter()
        .map(|c| ((1, c.citizen_id), c))
        .collect();
        let patches = [
            (
                1,
                CitizenPatch {
                    relatives: Some(ids(&[2, 4])),
                    ..Default::default()
                },
            ),
            (
                2,
                CitizenPatch {
                    name: Some(Name::parse("Новое".into()).unwrap()),
                    ..Default::default()
                },
            ),
            (
                3,
                CitizenPatch {
                    relatives: Some(Vec::new()),
                    ..Default::default()
                },
            ),
        ];
        let mut plans = Vec::new();
        for (at, (who, patch)) in patches.into_iter().enumerate() {
            let plan = patch::plan(&held[&(1, id(who))], &patch, |other| {
                held.get(&(1, other)).map(|c| c.birth_date.month())
            })
            .unwrap();
            for &(other, edit) in &plan.mirror {
                edit.apply(&mut held.get_mut(&(1, other)).unwrap().relatives);
            }
            held.insert((1, id(who)), plan.citizen.clone());
            plans.push((at, import, plan));
        }
        let blobs = HashMap::new();
        let batch = Applied::of(&plans, &held, &[], &blobs).unwrap();

        // 2's edits (1 added, 3 removed) are in its final row, not mirrored.
        assert_eq!(batch.mirrors, (vec![1], vec![4], vec![1], vec![true]));
        assert_eq!(batch.rows.id, vec![1, 2, 3]);
        assert_eq!(batch.rows.relatives, vec!["{2,4}", "{1}", "{}"]);
        assert_eq!(batch.counts, (vec![1], vec![3]));
        // Rises: 1 in months 2 and 4, 2 and 4 in month 1; falls: 3 in month
        // 2, 2 in month 3. Each row once, by its net change.
        assert_eq!(
            batch.raised,
            (vec![1; 4], vec![1, 1, 2, 4], vec![2, 4, 1, 1], vec![1; 4])
        );
        assert_eq!(
            batch.lowered,
            (vec![1; 2], vec![2, 3], vec![3, 2], vec![-1; 2])
        );
        assert!(batch.dated.0.is_empty() && batch.undated.0.is_empty());
    }
}
