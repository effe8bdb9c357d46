//! A batch of PATCHes that each change only their citizen's own row
//! (`domain::patch::own_row_only`: no town, birth date or relatives), in one
//! round trip: `BEGIN`, the import locks, one statement that replaces the
//! fields and counts each import's version up by the citizens it found, and
//! `COMMIT`, in one pipeline.
//!
//! Nothing needs reading first: such a PATCH's plan is its fields replaced,
//! whatever is stored, and it cannot be refused, so the statement replaces
//! exactly the fields the PATCH carries (`coalesce` keeps the others). A
//! PATCH whose citizen (or import) is not found changes nothing and is
//! answered 404. Two PATCHes of one citizen in a batch go the planned way
//! (each answer must show the citizen after its own PATCH).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_postgres::types::ToSql;

use super::patches::{LOCK_IMPORTS, PatchJob, fails_the_patch_alone};
use super::pg_text;
use super::planned::{Open, Outcome};
use super::reads::{prefixed, read_citizen, version_of};
use super::{Call, Fail, Store, writes};
use crate::domain::patch::own_row_only;
use crate::domain::{Apartment, Citizen, CitizenId, Gender};
use crate::storage::{Patched, StorageError};

/// Replaces the fields each PATCH carries (`$1`..`$7`: import, citizen,
/// street, building, apartment, name, gender; NULL where the PATCH has
/// none) and counts each import's version up by the citizens found; their
/// rows, with `import_id` and the import's version after the batch. The
/// imports are found by `= ANY`: with the join alone, a plan made while
/// there are few imports reads every import's row, and a connection keeps
/// its plan as they grow.
fn replace_fields() -> String {
    format!(
        "WITH p AS (
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[],
                                  $5::bigint[], $6::text[], $7::text[])
                 AS p (import_id, citizen_id, street, building, apartment, name, gender)
         ),
         u AS (
             UPDATE citizens c SET street = coalesce(p.street, c.street),
                                   building = coalesce(p.building, c.building),
                                   apartment = coalesce(p.apartment, c.apartment),
                                   name = coalesce(p.name, c.name),
                                   gender = coalesce(p.gender, c.gender)
             FROM p WHERE c.import_id = p.import_id AND c.citizen_id = p.citizen_id
             RETURNING {}, c.import_id
         ),
         v AS (
             UPDATE imports i SET version = i.version + n.found
             FROM (SELECT import_id, count(*) AS found FROM u GROUP BY import_id) n
             WHERE i.import_id = ANY ($1) AND i.import_id = n.import_id
             RETURNING i.import_id, i.version
         )
         SELECT u.*, v.version FROM u JOIN v USING (import_id)",
        prefixed("c.")
    )
}

/// Whether [`Store::patch_own_rows_tx`] answers these jobs: each changes
/// only its own row, and no citizen twice.
pub(super) fn own_rows(jobs: &[PatchJob]) -> bool {
    let mut seen = HashSet::with_capacity(jobs.len());
    jobs.iter()
        .all(|job| own_row_only(&job.patch) && seen.insert((job.import, job.citizen)))
}

impl Store {
    /// The jobs (see [`own_rows`]) in one pipeline; each answer in the
    /// jobs' order. A statement the server fails (say a trigger's) took
    /// the batch back: it is to be answered PATCH by PATCH.
    pub(super) async fn patch_own_rows_tx(
        &self,
        jobs: &[PatchJob],
        call: &Call,
    ) -> Result<Outcome, Fail> {
        let open = Open {
            conn: self.conn(call).await?,
            open: AtomicBool::new(true),
        };
        let tx: &deadpool_postgres::ClientWrapper = &open.conn;
        let mut imports: Vec<i64> = jobs.iter().map(|job| job.import.get()).collect();
        imports.sort_unstable();
        imports.dedup();
        let mut columns = (
            Vec::with_capacity(jobs.len()),
            Vec::with_capacity(jobs.len()),
            Vec::<Option<Cow<'_, str>>>::with_capacity(jobs.len()),
            Vec::<Option<Cow<'_, str>>>::with_capacity(jobs.len()),
            Vec::with_capacity(jobs.len()),
            Vec::<Option<Cow<'_, str>>>::with_capacity(jobs.len()),
            Vec::with_capacity(jobs.len()),
        );
        for job in jobs {
            let patch = &job.patch;
            columns.0.push(job.import.get());
            columns.1.push(job.citizen.as_i64());
            columns
                .2
                .push(patch.street.as_ref().map(|v| pg_text::encode(v.as_str())));
            columns
                .3
                .push(patch.building.as_ref().map(|v| pg_text::encode(v.as_str())));
            columns.4.push(patch.apartment.map(Apartment::as_i64));
            columns
                .5
                .push(patch.name.as_ref().map(|v| pg_text::encode(v.as_str())));
            columns.6.push(patch.gender.map(Gender::as_str));
        }
        let lock = tx.prepare_cached(LOCK_IMPORTS).await?;
        let replace = tx.prepare_cached(&replace_fields()).await?;
        let params: [&(dyn ToSql + Sync); 7] = [
            &columns.0, &columns.1, &columns.2, &columns.3, &columns.4, &columns.5, &columns.6,
        ];
        let lock_params: [&(dyn ToSql + Sync); 1] = [&imports];
        // From here a lost answer leaves the outcome unknown; a statement
        // that fails aborts the transaction, and the COMMIT rolls it back.
        call.committing.store(true, Ordering::Release);
        let (begun, locked, rows, committed) = tokio::join!(
            biased;
            tx.batch_execute(writes::WRITE_PLANS),
            tx.query(&lock, &lock_params),
            tx.query(&replace, &params),
            tx.batch_execute("COMMIT"),
        );
        open.open.store(false, Ordering::Release);
        let (locked, rows) = match (begun, locked, rows, committed) {
            (Ok(()), Ok(locked), Ok(rows), Ok(())) => (locked, rows),
            (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => {
                if e.as_db_error().is_some() && fails_the_patch_alone(&e) {
                    // Rolled back by the COMMIT behind it: nothing applied.
                    call.committing.store(false, Ordering::Release);
                    return Ok(Outcome::OneByOne);
                }
                return Err(Fail::Pg(e));
            }
        };
        let locked: HashSet<i64> = locked.iter().map(|row| row.get(0)).collect();

        // Each import's version after the batch, and how many PATCHes it took.
        let mut found: HashMap<(i64, CitizenId), Citizen> = HashMap::with_capacity(rows.len());
        let mut last: HashMap<i64, (i64, i64)> = HashMap::new();
        for row in &rows {
            let citizen = read_citizen(row)?;
            let import: i64 = row.try_get(9)?;
            let version: i64 = row.try_get(10)?;
            last.entry(import).or_insert((version, 0)).1 += 1;
            found.insert((import, citizen.citizen_id), citizen);
        }
        let mut next: HashMap<i64, i64> = last
            .into_iter()
            .map(|(import, (version, n))| (import, version - n))
            .collect();
        let mut answers = Vec::with_capacity(jobs.len());
        for job in jobs {
            let import = job.import.get();
            let Some(citizen) = found.remove(&(import, job.citizen)) else {
                answers.push(Err(if locked.contains(&import) {
                    StorageError::CitizenNotFound {
                        import: job.import,
                        citizen: job.citizen,
                    }
                } else {
                    StorageError::ImportNotFound(job.import)
                }));
                continue;
            };
            let version = next.entry(import).or_default();
            *version += 1;
            answers.push(Ok(Patched {
                citizen,
                version: version_of(*version)?,
            }));
        }
        Ok(Outcome::Answered(answers))
    }
}
