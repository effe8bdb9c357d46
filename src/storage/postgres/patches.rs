//! Group commit: the PATCHes that queued while the previous commit was out
//! go in one transaction, with one `COMMIT` and one WAL flush.
//!
//! A PATCH holds its import's row lock until its commit, so PATCHes of one
//! import used to commit one flush at a time; here they share it, as
//! SQLite's writer commits its queue and Tarantool's `gifts_patch_batch`
//! does. The transaction first locks every import of the batch in
//! ascending order (another instance's batch locks in the same order: no
//! deadlock), then applies each PATCH after a savepoint:
//!
//! - a refused PATCH (unknown relative, no such import or citizen, a broken
//!   relation) and one the server fails on its own (a statement of its that
//!   runs out of time) is rolled back to its savepoint and answered alone;
//!   the others stand;
//! - a failure of the transaction itself (the connection lost, a standby,
//!   no disk, the batch's time run out) answers every PATCH in it alike:
//!   not applied (503) before `COMMIT` was sent, unknown (504) after.
//!
//! Each answer carries its own version: the import's version counts every
//! PATCH in the batch. A PATCH whose request has no time left is not sent
//! (503: not applied); a batch gets the time of its most hurried request.
//! This is the fallback of `planned.rs`, which plans a batch in Rust and
//! writes it in one pipeline; a PATCH alone falls back to a transaction of
//! its own, with no savepoint.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::own_rows::own_rows;
use super::planned::Outcome;
use super::{Call, Fail, Kind, Store};
use crate::domain::{Citizen, CitizenId, CitizenPatch, ImportId};
use crate::storage::{HeldCopy, Patched, StorageError, Version};

/// PATCHes waiting for the commit in flight at most; more get 503.
pub(super) const PATCH_QUEUE: usize = 4096;

/// Locks the imports of a batch (`$1`), in ascending order so that two
/// instances' batches cannot deadlock; the ids found.
pub(super) const LOCK_IMPORTS: &str =
    "SELECT import_id FROM imports WHERE import_id = ANY($1) ORDER BY import_id FOR UPDATE";

/// Imports whose last committed version an instance keeps at most (then
/// it forgets them all: a copy is then checked under the lock only).
const COMMITTED_KEPT: usize = 10_000;

/// The most PATCHes in one transaction.
pub(super) const PATCH_BATCH: usize = 64;

/// A PATCH that may touch more relatives than this commits alone ([`big`]).
pub(super) const ALONE_RELATIVES: usize = 1_000;

/// Whether a PATCH commits in a transaction of its own, beside the queue,
/// rather than with the PATCHes queued beside it: one that may write many
/// rows would otherwise hold the whole queue — every import's PATCHes —
/// while PostgreSQL writes them (120,000 mirrored relatives take it 2–3
/// s). It still holds its own import's PATCHes, which wait for its row
/// lock. A long list in the body is known at once ([`alone`]); the stored
/// list (a PATCH that drops them all, a birth date that moves the presents
/// of every relative) once the batch has read the citizen: the committer
/// then takes the batch back, unwritten, and sends the big ones alone.
pub(super) fn alone(patch: &CitizenPatch) -> bool {
    patch
        .relatives
        .as_ref()
        .is_some_and(|relatives| relatives.len() > ALONE_RELATIVES)
}

/// [`alone`], knowing the citizen as stored: the relatives its PATCH
/// touches, at most.
pub(super) fn big(stored: &Citizen, patch: &CitizenPatch) -> bool {
    let touched = if let Some(relatives) = &patch.relatives {
        stored.relatives.len() + relatives.len()
    } else if patch.birth_date.is_some() {
        stored.relatives.len()
    } else {
        0
    };
    touched > ALONE_RELATIVES
}

/// One PATCH queued for [`commit_patches`].
pub(super) struct PatchJob {
    pub(super) import: ImportId,
    pub(super) citizen: CitizenId,
    pub(super) patch: CitizenPatch,
    /// When the request's budget for its store runs out.
    pub(super) deadline: Instant,
    /// The import's citizens as held in memory, to plan from if current
    /// (`planned::patch_from_copies`).
    pub(super) held: Option<HeldCopy>,
    pub(super) reply: oneshot::Sender<Result<Patched, StorageError>>,
}

/// The PATCH histogram's buckets: batch sizes up to [`PATCH_BATCH`].
pub(super) fn batch_size_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
}

/// Commits the queued PATCHes, one transaction at a time, each with every
/// PATCH that queued while the previous one was out (up to
/// [`PATCH_BATCH`]). Runs until the store's queue closes.
pub(super) async fn commit_patches(
    store: Arc<Store>,
    mut queue: mpsc::Receiver<PatchJob>,
    batch_size: Histogram,
) {
    let mut jobs = Vec::with_capacity(PATCH_BATCH);
    while queue.recv_many(&mut jobs, PATCH_BATCH).await > 0 {
        let now = Instant::now();
        let (live, gone): (Vec<PatchJob>, Vec<PatchJob>) = jobs
            .drain(..)
            .partition(|job| job.deadline > now && !job.reply.is_closed());
        for job in gone {
            let _ = job.reply.send(Err(StorageError::Unavailable(
                "the request ran out of time before its PATCH was sent".into(),
            )));
        }
        let Some(deadline) = live.iter().map(|job| job.deadline).min() else {
            continue;
        };
        #[allow(clippy::cast_precision_loss)] // at most PATCH_BATCH
        batch_size.observe(live.len() as f64);
        let mut live = live;
        let mut budget = deadline - now;
        loop {
            let call = Call::default();
            match store
                .run_within(
                    Kind::Write,
                    &call,
                    budget,
                    store.patch_jobs(&live, &call, true),
                )
                .await
            {
                Ok(Outcome::Answered(answers)) => {
                    for (job, answer) in live.into_iter().zip(answers) {
                        // The copy let go first: the request moves the
                        // cache's list in place only if no one else holds it.
                        let PatchJob { held, reply, .. } = job;
                        drop(held);
                        let _ = reply.send(answer);
                    }
                }
                Ok(Outcome::Split(heavy)) => {
                    // The big ones alone, each in a task of its own; the
                    // rest again, at once.
                    let mut rest = Vec::with_capacity(live.len());
                    for (at, job) in live.into_iter().enumerate() {
                        if heavy.contains(&at) {
                            let store = Arc::clone(&store);
                            tokio::spawn(async move {
                                let answer = store.patch_alone(&job).await;
                                let _ = job.reply.send(answer);
                            });
                        } else {
                            rest.push(job);
                        }
                    }
                    let Some(deadline) = rest.iter().map(|job| job.deadline).min() else {
                        break;
                    };
                    budget = deadline.saturating_duration_since(Instant::now());
                    live = rest;
                    continue;
                }
                Ok(Outcome::OneByOne) => {
                    for job in live {
                        let _ = job.reply.send(Err(StorageError::internal(
                            "postgresql: a batch left unanswered",
                        )));
                    }
                }
                Err(error) => {
                    for job in live {
                        let _ = job.reply.send(Err(error.clone()));
                    }
                }
            }
            break;
        }
    }
}

/// Whether a server's error in one PATCH of a batch is that PATCH's alone
/// (its savepoint undoes it and the others go on), rather than the
/// transaction's or the server's: a standby (25006), no room (53), a server
/// shutting down (57P), a lost connection (08), a refused user or database
/// (28, 3D, 42501), a system fault (58, XX) fail them all.
pub(super) fn fails_the_patch_alone(error: &tokio_postgres::Error) -> bool {
    let Some(db) = error.as_db_error() else {
        return false;
    };
    let code = db.code().code();
    let whole = ["08", "28", "3D", "53", "57P", "58", "XX", "25006", "42501"];
    !whole.iter().any(|prefix| code.starts_with(prefix))
}

impl Store {
    /// A PATCH that commits alone ([`alone`], [`big`]): in a transaction
    /// of its own.
    pub(super) async fn patch_alone(&self, job: &PatchJob) -> Result<Patched, StorageError> {
        let budget = job.deadline.saturating_duration_since(Instant::now());
        let call = Call::default();
        let outcome = self
            .run_within(
                Kind::Write,
                &call,
                budget,
                self.patch_jobs(std::slice::from_ref(job), &call, false),
            )
            .await?;
        match outcome {
            Outcome::Answered(answers) => answers
                .into_iter()
                .next()
                .unwrap_or_else(|| Err(StorageError::internal("postgresql: a PATCH unanswered"))),
            _ => Err(StorageError::internal("postgresql: a PATCH unanswered")),
        }
    }

    /// The jobs' answers ([`Outcome::Answered`]): planned at once and
    /// written in one pipeline (`planned.rs`); if that path cannot answer
    /// them one by one, taken back and run again here, each PATCH after a
    /// savepoint (one alone, in a transaction of its own). With `split`,
    /// [`Outcome::Split`] when some may write many rows ([`big`]).
    async fn patch_jobs(
        &self,
        jobs: &[PatchJob],
        call: &Call,
        split: bool,
    ) -> Result<Outcome, Fail> {
        let outcome = if own_rows(jobs) {
            self.patch_own_rows_tx(jobs, call).await?
        } else {
            self.patch_planned_tx(jobs, call, split).await?
        };
        let outcome = match outcome {
            Outcome::OneByOne => Outcome::Answered(match jobs {
                [job] => vec![Ok(self
                    .patch_tx(job.import, job.citizen, &job.patch, call)
                    .await?)],
                _ => self.patch_batch_tx(jobs, call).await?,
            }),
            other => other,
        };
        if let Outcome::Answered(answers) = &outcome {
            self.note_committed(jobs, answers);
        }
        Ok(outcome)
    }

    /// Notes the versions these answers committed: a copy held from before
    /// them is stale, and is not planned from ([`Self::committed_after`]).
    fn note_committed(&self, jobs: &[PatchJob], answers: &[Result<Patched, StorageError>]) {
        let mut committed = self
            .committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if committed.len() > COMMITTED_KEPT {
            committed.clear();
        }
        for (job, answer) in jobs.iter().zip(answers) {
            if let Ok(patched) = answer {
                let last = committed.entry(job.import.get()).or_default();
                *last = (*last).max(patched.version);
            }
        }
    }

    /// Whether this instance committed a version of the import after
    /// `version`.
    pub(super) fn committed_after(&self, import: i64, version: Version) -> bool {
        self.committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&import)
            .is_some_and(|&last| last > version)
    }

    /// Several PATCHes in one transaction, each after a savepoint (see the
    /// module's documentation); the answers in `jobs`' order.
    async fn patch_batch_tx(
        &self,
        jobs: &[PatchJob],
        call: &Call,
    ) -> Result<Vec<Result<Patched, StorageError>>, Fail> {
        let mut client = self.conn(call).await?;
        let tx = client.transaction().await?;
        tx.batch_execute(super::writes::PLAN_SETTINGS).await?;
        let mut imports: Vec<i64> = jobs.iter().map(|job| job.import.get()).collect();
        imports.sort_unstable();
        imports.dedup();
        let lock = tx.prepare_cached(LOCK_IMPORTS).await?;
        let found: HashSet<i64> = tx
            .query(&lock, &[&imports])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut answers = Vec::with_capacity(jobs.len());
        // One savepoint, set again before each PATCH (one round trip with
        // the release of the previous one).
        let mut savepoint = "SAVEPOINT patch";
        for job in jobs {
            if !found.contains(&job.import.get()) {
                answers.push(Err(StorageError::ImportNotFound(job.import)));
                continue;
            }
            tx.batch_execute(savepoint).await?;
            savepoint = "RELEASE SAVEPOINT patch; SAVEPOINT patch";
            match Self::patch_locked(&tx, job.import, job.citizen, &job.patch).await {
                Ok(patched) => answers.push(Ok(patched)),
                Err(Fail::Store(refusal)) => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT patch").await?;
                    answers.push(Err(refusal));
                }
                Err(Fail::Pg(e)) if fails_the_patch_alone(&e) => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT patch").await?;
                    answers.push(Err(super::errors::pg_error(&e, Kind::Write, false)));
                }
                Err(other) => return Err(other),
            }
        }
        call.committing.store(true, Ordering::Release);
        tx.commit().await?;
        Ok(answers)
    }
}
