//! PATCHes queued and sent in batches: one call, one transaction, one WAL
//! write for every PATCH that queued while the previous call was out; and
//! the few too big for one short transaction, sent by themselves.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::connection::{Connection, Kind};
use super::tuples::{FieldValue, Row};
use crate::domain::{CitizenId, ImportId};
use crate::storage::{StorageError, Version};

/// PATCHes waiting for the one in flight at most; more get 503.
pub(super) const PATCH_QUEUE: usize = 4096;

/// The most PATCHes sent in one call (one transaction: one WAL write).
pub(super) const PATCH_BATCH: usize = 64;

/// A PATCH listing more relatives than this goes straight to
/// `gifts_patch_long` ([`send_long`]) rather than through the queue, where
/// Tarantool would only read its list to answer `long`. A hint that saves
/// that round trip: `app.lua` decides which PATCHes are long (its
/// `GIFTS_TARANTOOL_PATCH_STEP`, 1,000 by default), and takes any PATCH
/// by either procedure.
pub(super) const LONG_RELATIVES: usize = 1_000;

/// The arguments of `gifts_patch_citizen`: import, citizen, changed fields,
/// new relatives.
pub(super) type PatchArgs = (
    ImportId,
    CitizenId,
    BTreeMap<&'static str, FieldValue>,
    Option<Vec<CitizenId>>,
);

/// The answer of `gifts_patch_citizen`: status, citizen, unknown relative,
/// version, reason.
pub(super) type PatchAnswer = (
    String,
    Option<Row>,
    Option<u64>,
    Option<Version>,
    Option<String>,
);

/// One PATCH queued for [`send_patches`].
pub(super) struct PatchJob {
    pub(super) args: PatchArgs,
    /// When the request's budget for its store runs out.
    pub(super) deadline: Instant,
    pub(super) reply: oneshot::Sender<Result<PatchAnswer, StorageError>>,
}

/// Sends the queued PATCHes: one call at a time, each carrying every PATCH
/// that queued while the previous one was out (up to [`PATCH_BATCH`]). With
/// `wal_mode = fsync` each call is one transaction and one fsync, so
/// concurrent PATCHes share the fsync, as SQLite's writer thread commits
/// its queue at once; a PATCH alone goes as it did, by itself.
///
/// A PATCH whose request has no time left, or was abandoned, is not sent
/// (not applied: the request already answered, or nobody waits). The
/// outcome of a call that gets no answer is unknown for every PATCH in it.
pub(super) async fn send_patches(
    connection: Arc<Connection>,
    mut queue: mpsc::Receiver<PatchJob>,
    batch_size: prometheus_client::metrics::histogram::Histogram,
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
        let budget = deadline - now;
        #[allow(clippy::cast_precision_loss)] // at most PATCH_BATCH
        batch_size.observe(live.len() as f64);
        let answers: Result<Vec<PatchAnswer>, StorageError> = if let [job] = live.as_slice() {
            connection
                .call_within("gifts_patch_citizen", &job.args, Kind::Write, budget)
                .await
                .map(|answer| vec![answer])
        } else {
            let args: Vec<&PatchArgs> = live.iter().map(|job| &job.args).collect();
            connection
                .call_within("gifts_patch_batch", &(args,), Kind::Write, budget)
                .await
                .and_then(|(answers,): (Vec<PatchAnswer>,)| {
                    if answers.len() == live.len() {
                        Ok(answers)
                    } else {
                        Err(StorageError::internal(format!(
                            "gifts_patch_batch answered {} of {} patches",
                            answers.len(),
                            live.len()
                        )))
                    }
                })
        };
        match answers {
            Ok(answers) => {
                for (job, answer) in live.into_iter().zip(answers) {
                    if matches!(answer.0.as_str(), "long" | "busy") {
                        tokio::spawn(send_long(Arc::clone(&connection), job));
                    } else {
                        let _ = job.reply.send(Ok(answer));
                    }
                }
            }
            Err(error) => {
                for job in live {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// A PATCH that Tarantool answered `long` (it would mirror more relatives
/// than one short transaction should) or `busy` (a long PATCH holds its
/// import), sent again by itself as `gifts_patch_long`, which writes it in
/// steps or waits for the import: beside the queue, so the PATCHes behind
/// it do not wait. Nothing of it was written, so with no time left it is
/// not sent (503).
pub(super) async fn send_long(connection: Arc<Connection>, job: PatchJob) {
    let budget = job.deadline.saturating_duration_since(Instant::now());
    let answer = if budget.is_zero() {
        Err(StorageError::Unavailable(
            "the request ran out of time before its PATCH was sent".into(),
        ))
    } else {
        connection
            .call_within("gifts_patch_long", &job.args, Kind::Write, budget)
            .await
    };
    let _ = job.reply.send(answer);
}
