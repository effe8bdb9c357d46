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
//! it needs no savepoint. The writes go in one pipeline, a statement per
//! kind rather than per PATCH: the batch's mirror edits, net (a pair's last
//! edit wins; edits of different pairs commute), its presents changes summed
//! per row, the final dates of each town, the final row of every PATCHed
//! citizen, each import's version counted up by its PATCHes, and `COMMIT`.
//! A statement that fails aborts the transaction, so the `COMMIT` behind it
//! rolls back; once that pipeline is sent, a lost answer leaves the outcome
//! unknown (504), as a lost answer to `COMMIT` always did.
//!
//! Anything this path cannot answer PATCH by PATCH (a statement of the
//! server's failing, say a trigger; a town's dates found corrupt; a row the
//! reads did not foresee) takes the whole transaction back and hands the
//! batch to the savepoint path (`patches.rs`), which answers each PATCH
//! alone; nothing was committed, so nothing is applied twice.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

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
use crate::storage::{Patched, StorageError, refused};

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
type Key = (i64, CitizenId);

/// An import's net presents changes: `(import, months, citizens, deltas)`.
type PresentsRows = (i64, Vec<i16>, Vec<i64>, Vec<i32>);

/// A write statement's future, whatever it returns.
type Write<'a> = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send + 'a>>;

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
        let open = Open {
            conn: self.conn(call).await?,
            open: AtomicBool::new(true),
        };
        let tx: &deadpool_postgres::ClientWrapper = &open.conn;

        let mut imports: Vec<i64> = jobs.iter().map(|job| job.import.get()).collect();
        imports.sort_unstable();
        imports.dedup();
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

        let locked: HashSet<i64> = locked.iter().map(|row| row.get(0)).collect();
        // The rows as the batch moves them, and what the reads were asked.
        let mut held: HashMap<Key, Citizen> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let citizen = read_citizen(row)?;
            held.insert((row.try_get(9)?, citizen.citizen_id), citizen);
        }
        if split {
            let heavy: Vec<usize> = jobs
                .iter()
                .enumerate()
                .filter(|(_, job)| {
                    held.get(&(job.import.get(), job.citizen))
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
        let mut asked_towns: HashSet<(i64, String)> = HashSet::new();
        for job in jobs {
            let import = job.import.get();
            if let Some(citizen) = held.get(&(import, job.citizen)) {
                if job.patch.relatives.is_some() {
                    asked_months.extend(citizen.relatives.iter().map(|&r| (import, r)));
                }
                if job.patch.town.is_some() || job.patch.birth_date.is_some() {
                    asked_towns
                        .insert((import, pg_text::encode(citizen.town.as_str()).into_owned()));
                }
            }
            for &other in job.patch.relatives.iter().flatten() {
                asked_months.insert((import, other));
            }
        }
        asked_towns.extend(
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
        let mut blobs: HashMap<(i64, String), Vec<u8>> = HashMap::new();
        for row in &date_rows {
            let town: String = row.try_get(1)?;
            blobs.insert((row.try_get(0)?, town), row.try_get(2)?);
        }

        // Plan each PATCH over the rows as the ones before it left them.
        let mut answers: Vec<Result<Patched, StorageError>> = Vec::with_capacity(jobs.len());
        let mut plans: Vec<(usize, ImportId, Plan)> = Vec::with_capacity(jobs.len());
        let mut changed_towns: Vec<(i64, String)> = Vec::new();
        for (at, job) in jobs.iter().enumerate() {
            let (import, id) = (job.import.get(), job.citizen);
            if !locked.contains(&import) {
                answers.push(Err(StorageError::ImportNotFound(job.import)));
                continue;
            }
            let Some(before) = held.get(&(import, id)) else {
                answers.push(Err(StorageError::CitizenNotFound {
                    import: job.import,
                    citizen: id,
                }));
                continue;
            };
            let unforeseen = Cell::new(false);
            let planned = patch::plan(before, &job.patch, |other| {
                if let Some(c) = held.get(&(import, other)) {
                    return Some(c.birth_date.month());
                }
                if !asked_months.contains(&(import, other)) {
                    unforeseen.set(true);
                }
                found_months.get(&(import, other)).copied()
            });
            if unforeseen.get() {
                return open.roll_back().await;
            }
            let plan = match planned {
                Ok(plan) => plan,
                Err(refusal) => {
                    answers.push(Err(refused(job.import, id, refusal)));
                    continue;
                }
            };
            if let Some(births) = &plan.births {
                for ((town, date), delta) in [(&births.from, -1), (&births.to, 1)] {
                    let key = (import, pg_text::encode(town.as_str()).into_owned());
                    if !asked_towns.contains(&key) {
                        return open.roll_back().await;
                    }
                    if !changed_towns.contains(&key) {
                        changed_towns.push(key.clone());
                    }
                    let blob = blobs.entry(key).or_default();
                    if !summary::adjust_dates(blob, *date, delta) {
                        // Answered alone (500) by the savepoint path.
                        return open.roll_back().await;
                    }
                }
            }
            for &(other, edit) in &plan.mirror {
                if let Some(c) = held.get_mut(&(import, other)) {
                    edit.apply(&mut c.relatives);
                }
            }
            held.insert((import, id), plan.citizen.clone());
            answers.push(Ok(Patched {
                citizen: plan.citizen.clone(),
                version: 0, // counted below, once written
            }));
            plans.push((at, job.import, plan));
        }
        if plans.is_empty() {
            // Refusals only: nothing to write or commit.
            open.roll_back().await?;
            return Ok(Outcome::Answered(answers));
        }

        let statements = Statements::prepare(tx).await?;
        // The parameters of every write, built before the pipeline borrows
        // them. Mirror edits net: a pair's last edit wins (edits of
        // different pairs commute), so one statement applies them all.
        let mut net: BTreeMap<(i64, CitizenId, CitizenId), bool> = BTreeMap::new();
        for (_, import, plan) in &plans {
            for &(other, edit) in &plan.mirror {
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
        // Presents rows net, per import: counts add up.
        let mut sums: BTreeMap<(i64, u8, CitizenId), i64> = BTreeMap::new();
        for (_, import, plan) in &plans {
            for &(month, citizen, delta) in &plan.presents {
                *sums.entry((import.get(), month, citizen)).or_default() += delta;
            }
        }
        let mut presents: Vec<PresentsRows> = Vec::new();
        for ((import, month, citizen), delta) in sums {
            if delta == 0 {
                continue;
            }
            if presents.last().is_none_or(|p| p.0 != import) {
                presents.push((import, Vec::new(), Vec::new(), Vec::new()));
            }
            let Some(rows) = presents.last_mut() else {
                continue;
            };
            rows.1.push(i16::from(month));
            rows.2.push(citizen.as_i64());
            rows.3
                .push(i32::try_from(delta).map_err(StorageError::internal)?);
        }
        // The keys each import's rows may have fallen to zero at.
        let falling: Vec<(Vec<i16>, Vec<i64>)> = presents
            .iter()
            .map(|(_, months, citizens, deltas)| writes::falling(months, citizens, deltas))
            .collect();
        let town_writes: Vec<(i64, &String, &Vec<u8>)> = changed_towns
            .iter()
            .map(|key| (key.0, &key.1, &blobs[key]))
            .collect();
        // Each PATCHed citizen once, as the last of its PATCHes left it
        // (mirror edits of the batch included).
        let mut finals: Vec<(ImportId, CitizenId)> = Vec::new();
        for (_, import, plan) in &plans {
            let key = (*import, plan.citizen.citizen_id);
            if !finals.contains(&key) {
                finals.push(key);
            }
        }
        let mut rows = CitizenColumns::default();
        for &(import, id) in &finals {
            rows.push(CitizenRow::new(import, &held[&(import.get(), id)]));
        }
        // Each import's count of PATCHes, and its version once they are written.
        let mut counts: Vec<(i64, i64, OnceLock<i64>)> = Vec::new();
        for (_, import, _) in &plans {
            match counts.iter_mut().find(|(i, _, _)| *i == import.get()) {
                Some((_, n, _)) => *n += 1,
                None => counts.push((import.get(), 1, OnceLock::new())),
            }
        }

        // One pipeline, with the commit: the mirrors before the final rows
        // (which overwrite any list they edited).
        let mut writes: Vec<Write<'_>> = Vec::new();
        if !mirrors.0.is_empty() {
            let params: [&(dyn ToSql + Sync); 4] = [&mirrors.0, &mirrors.1, &mirrors.2, &mirrors.3];
            writes.push(Box::pin(execute(tx, &statements.mirrors, params)));
        }
        for ((import, month, citizen, delta), (falling_months, falling_citizens)) in
            presents.iter().zip(&falling)
        {
            let params: [&(dyn ToSql + Sync); 4] = [import, month, citizen, delta];
            writes.push(Box::pin(execute(tx, &statements.presents_add, params)));
            if !falling_months.is_empty() {
                let params: [&(dyn ToSql + Sync); 3] = [import, falling_months, falling_citizens];
                writes.push(Box::pin(execute(tx, &statements.presents_emptied, params)));
            }
        }
        for (import, town, blob) in &town_writes {
            writes.push(if blob.is_empty() {
                let params: [&(dyn ToSql + Sync); 2] = [import, town];
                Box::pin(execute(tx, &statements.drop_town, params))
            } else {
                let params: [&(dyn ToSql + Sync); 3] = [import, town, blob];
                Box::pin(execute(tx, &statements.set_town, params))
            });
        }
        if !rows.is_empty() {
            writes.push(Box::pin(execute(tx, &statements.citizens, rows.params())));
        }
        for (import, n, version) in &counts {
            let statement = &statements.version;
            writes.push(Box::pin(async move {
                let row = tx.query_one(statement, &[import, n]).await?;
                let _ = version.set(row.try_get(0)?);
                Ok(())
            }));
        }
        // A statement that fails aborts the transaction, and the COMMIT
        // behind it then rolls it back; from here a lost answer leaves the
        // outcome unknown.
        writes.push(Box::pin(tx.batch_execute("COMMIT")));
        call.committing.store(true, Ordering::Release);
        let written = in_order(writes).await;
        // Every statement answered, the COMMIT too: the transaction is over.
        open.open.store(false, Ordering::Release);
        match written {
            Ok(()) => {}
            Err(e) if fails_the_patch_alone(&e) => {
                call.committing.store(false, Ordering::Release);
                return Ok(Outcome::OneByOne);
            }
            Err(e) => return Err(Fail::Pg(e)),
        }
        // Each PATCH's version: its import's before the batch, counted up to it.
        let mut next: HashMap<i64, i64> = HashMap::with_capacity(counts.len());
        for (import, n, version) in &counts {
            let last = version.get().copied().ok_or_else(|| {
                StorageError::internal("postgresql: no version for a written import")
            })?;
            next.insert(*import, last - n);
        }
        for (at, import, _) in &plans {
            let Some(version) = next.get_mut(&import.get()) else {
                continue;
            };
            *version += 1;
            if let Some(Ok(patched)) = answers.get_mut(*at) {
                patched.version = version_of(*version)?;
            }
        }
        Ok(Outcome::Answered(answers))
    }
}

/// Runs the writes as one pipeline: each is first polled (and so sent) in
/// the list's order, which is the order the server runs them in. Waits for
/// every answer (the last one ends the transaction); the first error in the
/// list's order, if any.
async fn in_order(mut writes: Vec<Write<'_>>) -> Result<(), tokio_postgres::Error> {
    let mut done: Vec<Option<Result<(), tokio_postgres::Error>>> =
        writes.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (write, done) in writes.iter_mut().zip(done.iter_mut()) {
            if done.is_some() {
                continue;
            }
            match write.as_mut().poll(cx) {
                Poll::Ready(result) => *done = Some(result),
                Poll::Pending => pending = true,
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    done.into_iter().flatten().collect()
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

async fn execute<const N: usize>(
    tx: &deadpool_postgres::ClientWrapper,
    statement: &tokio_postgres::Statement,
    params: [&(dyn ToSql + Sync); N],
) -> Result<(), tokio_postgres::Error> {
    tx.execute(statement, &params).await?;
    Ok(())
}

/// The write statements, prepared once per connection.
struct Statements {
    mirrors: tokio_postgres::Statement,
    presents_add: tokio_postgres::Statement,
    presents_emptied: tokio_postgres::Statement,
    set_town: tokio_postgres::Statement,
    drop_town: tokio_postgres::Statement,
    citizens: tokio_postgres::Statement,
    version: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(tx: &deadpool_postgres::ClientWrapper) -> Result<Self, Fail> {
        Ok(Self {
            mirrors: tx.prepare_cached(writes::MIRRORS).await?,
            presents_add: tx.prepare_cached(writes::PRESENTS_ADD).await?,
            presents_emptied: tx.prepare_cached(writes::PRESENTS_EMPTIED).await?,
            set_town: tx.prepare_cached(writes::SET_TOWN).await?,
            drop_town: tx.prepare_cached(writes::DROP_TOWN).await?,
            citizens: tx.prepare_cached(writes::UPDATE_CITIZENS).await?,
            version: tx
                .prepare_cached(
                    "UPDATE imports SET version = version + $2 WHERE import_id = $1
                     RETURNING version",
                )
                .await?,
        })
    }
}
