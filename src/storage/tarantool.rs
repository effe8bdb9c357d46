//! The Tarantool backend: a thin client over the stored procedures of
//! `tarantool/app.lua`, which make each write one transaction (`box.atomic`)
//! and check the relation's invariants themselves.
//!
//! One multiplexed connection ([`super::iproto`]) is shared by all handlers;
//! it reconnects by itself after an outage. Failures are told apart so a
//! client knows what to do: a call that never left (connection down,
//! Tarantool starting, login refused) was not applied — 503; a write that
//! left and got no answer in time may have been — 504. Every request's waits
//! for Tarantool together are bounded by `--tarantool-timeout-secs` (see
//! [`super::deadline`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::coalesce::Coalescer;
use super::iproto::{self, CallError, Client, codes};
use super::row::{StoredCitizen, StoredDate, iso_date};
use super::{Idempotency, ImportInfo, Patched, Snapshot, Storage, StorageError, Version};
use crate::domain::patch::Refusal;
use crate::domain::stats::Birthdays;
use crate::domain::summary::{self, PresentsRow, Summary, TownDates};
use crate::domain::{Citizen, CitizenId, CitizenPatch, ImportId};
use crate::metrics::Metrics;

/// How to reach Tarantool.
#[derive(Clone, PartialEq, Eq)]
pub struct TarantoolAddress {
    /// `HOST:PORT`.
    pub host_port: String,
    /// User name.
    pub user: String,
    /// Password (never logged).
    pub password: Secret,
}

impl std::fmt::Debug for TarantoolAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tarantool://{}:{}@{}",
            self.user, self.password, self.host_port
        )
    }
}

impl std::str::FromStr for TarantoolAddress {
    type Err = String;

    /// `tarantool://USER:PASSWORD@HOST:PORT`; the password may hold `@` and `:`.
    fn from_str(s: &str) -> Result<Self, String> {
        let form = "expected tarantool://USER:PASSWORD@HOST:PORT";
        let rest = s.strip_prefix("tarantool://").ok_or(form)?;
        // The host part has no '@', so the last one ends the credentials.
        let (credentials, host_port) = rest.rsplit_once('@').ok_or(form)?;
        let (user, password) = credentials.split_once(':').ok_or(form)?;
        let (host, port) = host_port.rsplit_once(':').ok_or(form)?;
        if user.is_empty() || host.is_empty() || port.parse::<u16>().is_err() {
            return Err(form.into());
        }
        Ok(TarantoolAddress {
            host_port: host_port.to_owned(),
            user: user.to_owned(),
            password: Secret::new(password),
        })
    }
}

/// A password: shown as `***` by `Debug` and `Display`, so it cannot end
/// up in a log or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The password itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The Tarantool store.
pub struct TarantoolStorage {
    connection: Arc<Connection>,
    /// PATCHes on their way to [`send_patches`].
    patches: mpsc::Sender<PatchJob>,
    versions: Coalescer<ImportId, Result<Version, StorageError>>,
    /// Imports up to this many citizens (and [`ONE_CALL_WORK`]) are stored by
    /// one call (one transaction); bigger ones in chunks of at most this
    /// many, invisible until the last, so no single WAL write holds other
    /// clients up for long.
    import_chunk: usize,
}

/// Rows per `gifts_page` call: about 10 ms of Tarantool for citizens.
const PAGE: usize = 10_000;

/// Page-by-page reads of one import that writes may spoil before one call
/// reads it whole.
const PAGED_ATTEMPTS: usize = 3;

/// The schema version of `tarantool/app.lua` this build speaks to.
const SCHEMA_VERSION: u64 = 5;

/// Work per Tarantool call that stores a chunk of a big import: a stored
/// row (a citizen, a presents row, a town births row) counts [`ROW`], each
/// relative in a citizen's list one. Tarantool runs one transaction at a
/// time, so this bounds how long an import holds other clients up: 5,000
/// rows are about 10-20 ms of it (docs/storage.md has the measurements).
const CALL_WORK: usize = 50_000;

/// The most work an import stored by one call may take: the size the
/// service is tuned for (10,000 citizens, 1,000 links, about 22,000 rows)
/// holds Tarantool about 50 ms that way, and is stored twice as fast as in
/// chunks.
const ONE_CALL_WORK: usize = 250_000;

/// A stored row's share of [`CALL_WORK`].
const ROW: usize = 10;

/// Runs of citizens, each of at most `most` citizens and [`CALL_WORK`]
/// (a citizen heavier than that on its own).
fn runs<'a>(citizens: &'a [Citizen], summary: &SummaryRows, most: usize) -> Vec<&'a [Citizen]> {
    let mut out = Vec::new();
    let (mut start, mut load) = (0, 0);
    for (i, citizen) in citizens.iter().enumerate() {
        let w = summary.work(citizen);
        if i > start && (i - start == most || load + w > CALL_WORK) {
            out.push(&citizens[start..i]);
            start = i;
            load = 0;
        }
        load += w;
    }
    if start < citizens.len() {
        out.push(&citizens[start..]);
    }
    out
}

/// An import's summary as `tarantool/app.lua` takes it: presents rows
/// ordered by citizen (so a run of citizens finds its own), and town
/// births rows `(town, yyyymmdd, citizens)`.
struct SummaryRows {
    presents: Vec<PresentsRow>,
    births: Vec<BirthsRow>,
}

/// A town births row: town, `yyyymmdd`, how many of its citizens were born then.
type BirthsRow = (String, u32, u32);

/// What one `gifts_import_chunk` call stores: citizens, their presents
/// rows, town births rows.
type Chunk<'a> = (Vec<NewCitizen<'a>>, Vec<PresentsRow>, &'a [BirthsRow]);

impl SummaryRows {
    /// The rows of `citizens`' summary ([`Summary::parts`]).
    fn of(citizens: &[Citizen]) -> Self {
        let (mut presents, towns) = Summary::parts(citizens);
        presents.sort_unstable_by_key(|&(month, citizen, _)| (citizen, month));
        let mut births = Vec::new();
        for (town, dates) in towns {
            births.extend(
                dates
                    .into_iter()
                    .map(|(date, n)| (town.clone(), summary::date_key(date), n)),
            );
        }
        Self { presents, births }
    }

    /// [`SummaryRows::of`], off the async worker threads for a big import.
    async fn of_import(citizens: Vec<Citizen>) -> Result<(Vec<Citizen>, Self), StorageError> {
        super::by_size(citizens.len(), move || {
            let rows = Self::of(&citizens);
            (citizens, rows)
        })
        .await
    }

    /// A citizen's presents rows.
    fn presents_of_one(&self, citizen: &Citizen) -> &[PresentsRow] {
        let id = citizen.citizen_id;
        let from = self.presents.partition_point(|row| row.1 < id);
        let to = from + self.presents[from..].partition_point(|row| row.1 == id);
        &self.presents[from..to]
    }

    /// The presents rows of `run`'s citizens.
    fn presents_of(&self, run: &[Citizen]) -> Vec<PresentsRow> {
        run.iter()
            .flat_map(|c| self.presents_of_one(c).iter().copied())
            .collect()
    }

    /// A citizen's share of [`CALL_WORK`]: its row, its presents rows and
    /// its relatives.
    fn work(&self, citizen: &Citizen) -> usize {
        ROW * (1 + self.presents_of_one(citizen).len()) + citizen.relatives.len()
    }
}

/// The client and its settings, shared with spawned version checks.
struct Connection {
    client: Client,
    timeout: Duration,
    closed: AtomicBool,
    /// False from a write that failed for lack of disk or memory until one succeeds.
    writable: AtomicBool,
    /// The largest request body the service takes: a citizen tuple is never
    /// bigger, so Tarantool's largest tuple must not be smaller.
    largest_body: u64,
    /// True while this instance fills the summary of imports stored before
    /// it ([`Connection::backfill`]).
    backfilling: AtomicBool,
}

/// What `health` says while imports stored before the summary get theirs.
const FILLING: &str = "filling the analytics summary";

/// PATCHes waiting for the one in flight at most; more get 503.
const PATCH_QUEUE: usize = 4096;

/// The most PATCHes sent in one call (one transaction: one WAL write).
const PATCH_BATCH: usize = 64;

/// The arguments of `gifts_patch_citizen`: import, citizen, changed fields,
/// new relatives.
type PatchArgs = (
    ImportId,
    CitizenId,
    BTreeMap<&'static str, FieldValue>,
    Option<Vec<CitizenId>>,
);

/// The answer of `gifts_patch_citizen`: status, citizen, unknown relative,
/// version, reason.
type PatchAnswer = (
    String,
    Option<Row>,
    Option<u64>,
    Option<Version>,
    Option<String>,
);

/// One PATCH queued for [`send_patches`].
struct PatchJob {
    args: PatchArgs,
    /// When the request's budget for its store runs out.
    deadline: Instant,
    reply: oneshot::Sender<Result<PatchAnswer, StorageError>>,
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
async fn send_patches(
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
                    let _ = job.reply.send(Ok(answer));
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

/// The argument list of a function that takes none.
const NO_ARGS: [u8; 0] = [];

/// Whether a call changes data: a write with no answer may have been applied.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

/// A citizen as `gifts_create_import` takes it: the stored tuple (in
/// [`Row`]'s order), with a placeholder for the import id that the
/// procedure fills in.
#[derive(Serialize)]
struct NewCitizen<'a>(
    u8,
    CitizenId,
    &'a str,
    &'a str,
    &'a str,
    u64,
    &'a str,
    String,
    &'a str,
    &'a [CitizenId],
);

impl<'a> NewCitizen<'a> {
    fn of(c: &'a Citizen) -> Self {
        NewCitizen(
            0,
            c.citizen_id,
            c.town.as_str(),
            c.street.as_str(),
            c.building.as_str(),
            c.apartment.get(),
            c.name.as_str(),
            iso_date(c.birth_date),
            c.gender.as_str(),
            &c.relatives,
        )
    }
}

/// A stored citizen tuple: `{import_id, citizen_id, town, street, building,
/// apartment, name, birth_date, gender, relatives}`, as `tarantool/app.lua`'s
/// `F` table numbers them (a test holds the two together).
#[derive(Deserialize)]
struct Row(
    IgnoredAny,
    u64,
    String,
    String,
    String,
    u64,
    String,
    String,
    String,
    Vec<u64>,
);

impl Row {
    fn into_citizen(self) -> Result<Citizen, StorageError> {
        let Row(
            _,
            citizen_id,
            town,
            street,
            building,
            apartment,
            name,
            birth_date,
            gender,
            relatives,
        ) = self;
        Citizen::try_from(StoredCitizen {
            citizen_id,
            town,
            street,
            building,
            apartment,
            name,
            birth_date: StoredDate::Iso(birth_date),
            gender,
            relatives,
        })
    }
}

/// A new field value in a patch: text or number.
#[derive(Serialize)]
#[serde(untagged)]
enum FieldValue {
    Text(String),
    Number(u64),
}

/// The second value of an import procedure's answer: an id or a reason.
#[derive(Deserialize)]
#[serde(untagged)]
enum IdOrReason {
    Id(u64),
    Reason(String),
    None(()),
}

impl TarantoolStorage {
    /// Starts the client; it connects at once and, after a failure, again
    /// and again (50 ms, doubling to 1 s) until Tarantool answers.
    pub fn connect(
        address: &TarantoolAddress,
        timeout: Duration,
        import_chunk: usize,
        largest_body: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        let client = Client::new(iproto::Config {
            address: address.host_port.clone(),
            user: address.user.clone(),
            password: address.password.expose().to_owned(),
            connect_timeout: timeout.min(Duration::from_secs(5)),
        });
        let connection = Arc::new(Connection {
            client,
            timeout,
            closed: AtomicBool::new(false),
            writable: AtomicBool::new(true),
            largest_body,
            backfilling: AtomicBool::new(false),
        });
        tokio::spawn(watch(Arc::clone(&connection), format!("{address:?}")));
        let (patches, queue) = mpsc::channel(PATCH_QUEUE);
        let batch_size = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]);
        metrics.register(
            "tarantool_patch_batch_size",
            "PATCHes sent to Tarantool in one call: one transaction, one WAL write",
            batch_size.clone(),
        );
        tokio::spawn(send_patches(Arc::clone(&connection), queue, batch_size));
        tokio::spawn(count_connections(
            connection.client.status_changes(),
            metrics,
        ));
        Self {
            connection,
            patches,
            versions: Coalescer::default(),
            import_chunk: import_chunk.max(1),
        }
    }

    /// Stores a big import in chunks: begin, runs of citizens with their
    /// presents rows, the town births rows, commit.
    async fn create_in_chunks<'a>(
        &self,
        citizens: &'a [Citizen],
        summary: &'a SummaryRows,
        key: Option<&str>,
        hash: Option<&[u8]>,
    ) -> Result<ImportId, StorageError> {
        let c = &self.connection;
        let (status, value): (String, IdOrReason) = c
            .call(
                "gifts_import_begin",
                &(key, hash.map(hex::encode)),
                Kind::Write,
            )
            .await?;
        let import = match import_answer("gifts_import_begin", &status, value, key)? {
            Begun::New(import) => import,
            Begun::Existing(import) => return Ok(import),
        };
        let mut chunks: Vec<Chunk<'a>> = Vec::new();
        let mut room = 0;
        for run in runs(citizens, summary, self.import_chunk) {
            let rows = run.iter().map(NewCitizen::of).collect();
            let load: usize = run.iter().map(|c| summary.work(c)).sum();
            room = CALL_WORK.saturating_sub(load) / ROW;
            chunks.push((rows, summary.presents_of(run), &[]));
        }
        // The town births rows: what room the last run leaves, then calls of their own.
        let (with_last, rest) = summary.births.split_at(room.min(summary.births.len()));
        if let Some(last) = chunks.last_mut() {
            last.2 = with_last;
        }
        chunks.extend(
            rest.chunks(CALL_WORK / ROW)
                .map(|births| (Vec::new(), Vec::new(), births)),
        );
        // Two chunks in flight: Tarantool runs the second's transaction
        // while the first's is written to its WAL (and other clients'
        // requests between them), and one fsync may cover both.
        let send = |(rows, presents, births): Chunk<'a>| async move {
            let (status, reason): (String, Option<String>) = c
                .call(
                    "gifts_import_chunk",
                    &(import, rows, presents, births),
                    Kind::Write,
                )
                .await?;
            if status == "ok" {
                Ok(())
            } else {
                Err(StorageError::internal(format!(
                    "gifts_import_chunk refused import {import}: {status} {reason:?}"
                )))
            }
        };
        let mut chunks = chunks.into_iter();
        while let Some(first) = chunks.next() {
            match chunks.next() {
                Some(second) => {
                    let (a, b) = tokio::join!(send(first), send(second));
                    a?;
                    b?;
                }
                None => send(first).await?,
            }
        }
        let (status, value): (String, IdOrReason) = c
            .call(
                "gifts_import_commit",
                &(import, key, hash.map(hex::encode)),
                Kind::Write,
            )
            .await?;
        match import_answer("gifts_import_commit", &status, value, key)? {
            Begun::New(import) | Begun::Existing(import) => Ok(import),
        }
    }
}

/// What an import procedure answered: a new import, or the idempotency key's.
enum Begun {
    New(ImportId),
    Existing(ImportId),
}

fn import_answer(
    function: &str,
    status: &str,
    value: IdOrReason,
    key: Option<&str>,
) -> Result<Begun, StorageError> {
    let id = |v: IdOrReason| match v {
        IdOrReason::Id(id) => ImportId::try_from(id).map_err(StorageError::internal),
        _ => Err(StorageError::internal(format!(
            "{function} answered {status} without an id"
        ))),
    };
    match status {
        "ok" => id(value).map(Begun::New),
        "same" => id(value).map(Begun::Existing),
        "key_reused" => Err(StorageError::KeyReused {
            key: key.unwrap_or_default().to_owned(),
            import: id(value)?,
        }),
        other => {
            let reason = match value {
                IdOrReason::Reason(r) => r,
                _ => String::new(),
            };
            Err(StorageError::internal(format!(
                "{function} refused the import: {other} {reason}"
            )))
        }
    }
}

impl Connection {
    /// One call, within the request's remaining budget, its failure as a `StorageError`.
    async fn call<A, R>(&self, function: &str, args: &A, kind: Kind) -> Result<R, StorageError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'static,
    {
        let budget = super::deadline::remaining(self.timeout);
        self.call_within(function, args, kind, budget).await
    }

    /// One call that may take `budget`.
    async fn call_within<A, R>(
        &self,
        function: &str,
        args: &A,
        kind: Kind,
        budget: Duration,
    ) -> Result<R, StorageError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'static,
    {
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Unavailable("the store is closed".into()));
        }
        match self.client.call(function, args, budget).await {
            Ok(answer) => {
                if kind == Kind::Write {
                    self.writable.store(true, Ordering::Release);
                }
                Ok(answer)
            }
            Err(e) => {
                let error = classify(function, e, kind);
                if matches!(error, StorageError::Full(_)) {
                    self.writable.store(false, Ordering::Release);
                }
                Err(error)
            }
        }
    }

    /// One `gifts_health` call (the schema version and the largest tuple),
    /// and while the last write failed for lack of space, a real write.
    ///
    /// While imports stored before the summary wait for theirs (an upgrade
    /// from schema 3), it starts [`Connection::backfill`] once and answers
    /// `Unavailable`: their analytics and PATCHes would answer 503.
    async fn health(self: &Arc<Self>) -> Result<u64, StorageError> {
        let (version, largest_tuple, pending): (u64, Option<u64>, Option<u64>) =
            self.call("gifts_health", &NO_ARGS, Kind::Read).await?;
        if version == 0 {
            return Err(StorageError::Unavailable(
                "tarantool schema is missing".into(),
            ));
        }
        if version != SCHEMA_VERSION {
            return Err(StorageError::Misconfigured(format!(
                "tarantool has schema version {version} and this build speaks version \
                 {SCHEMA_VERSION}: run the tarantool/app.lua of this release"
            )));
        }
        let largest_tuple = largest_tuple.unwrap_or(0);
        if largest_tuple < self.largest_body {
            return Err(StorageError::Misconfigured(format!(
                "tarantool takes tuples up to {largest_tuple} bytes (GIFTS_TARANTOOL_MAX_TUPLE), \
                 less than the body limit of {} bytes (--max-body-bytes): a citizen that fits \
                 the body would not fit the database",
                self.largest_body
            )));
        }
        if !self.writable.load(Ordering::Acquire) {
            let _: (bool,) = self
                .call("gifts_probe_write", &NO_ARGS, Kind::Write)
                .await?;
        }
        if let Some(pending @ 1..) = pending {
            if !self.backfilling.swap(true, Ordering::AcqRel) {
                let connection = Arc::clone(self);
                tokio::spawn(async move {
                    match connection.backfill().await {
                        Ok(filled) => tracing::info!(
                            imports = filled,
                            "tarantool: filled the summary of the imports stored before it"
                        ),
                        Err(e) => tracing::error!(
                            error = %e,
                            "tarantool: filling the summary of the imports stored before it failed; trying again at the next health check"
                        ),
                    }
                    connection.backfilling.store(false, Ordering::Release);
                });
            }
            return Err(StorageError::Unavailable(format!(
                "tarantool: {FILLING} of {pending} imports stored before it"
            )));
        }
        Ok(version)
    }

    /// Computes the summary of every import Tarantool lists as stored
    /// before the summary (`gifts_backfill_list`), here, as for a new import,
    /// and sends its rows in calls of [`CALL_WORK`]; the last one takes the
    /// import off the list. The number of imports filled.
    async fn backfill(&self) -> Result<usize, StorageError> {
        let mut filled = 0;
        loop {
            let (pending,): (Vec<u64>,) = self
                .call("gifts_backfill_list", &NO_ARGS, Kind::Read)
                .await?;
            if pending.is_empty() {
                return Ok(filled);
            }
            for id in pending {
                let import = ImportId::try_from(id).map_err(StorageError::internal)?;
                let citizens = match self
                    .read_rows::<Row, _>("citizens", import, "gifts_citizens", Row::into_citizen)
                    .await
                {
                    Ok((_, citizens)) => citizens,
                    // Deleted or never finished: an empty last call takes it off.
                    Err(StorageError::ImportNotFound(_)) => Vec::new(),
                    Err(e) => return Err(e),
                };
                let (_, rows) = SummaryRows::of_import(citizens).await?;
                let per_call = CALL_WORK / ROW;
                let presents: Vec<&[PresentsRow]> = rows.presents.chunks(per_call).collect();
                let births: Vec<&[BirthsRow]> = rows.births.chunks(per_call).collect();
                let calls = presents.len().max(births.len()).max(1);
                for at in 0..calls {
                    let last = at + 1 == calls;
                    let (status, reason): (String, Option<String>) = self
                        .call(
                            "gifts_backfill_rows",
                            &(
                                import,
                                presents.get(at).copied().unwrap_or_default(),
                                births.get(at).copied().unwrap_or_default(),
                                last,
                            ),
                            Kind::Write,
                        )
                        .await?;
                    if status != "ok" {
                        return Err(StorageError::internal(format!(
                            "gifts_backfill_rows refused import {import}: {status} {reason:?}"
                        )));
                    }
                }
                filled += 1;
            }
        }
    }

    /// An import's rows of `space` (`gifts_page`'s spaces), all of one
    /// version, read [`PAGE`] rows per call so that no call holds Tarantool
    /// for long. When writes change the import between pages on every one
    /// of [`PAGED_ATTEMPTS`], one call to `whole` reads it all at once.
    ///
    /// Each page is turned into values by `convert` as it comes, so a big
    /// import is never held as raw rows and values at once.
    async fn read_rows<T, U>(
        &self,
        space: &str,
        import: ImportId,
        whole: &str,
        convert: fn(T) -> Result<U, StorageError>,
    ) -> Result<(Version, Vec<U>), StorageError>
    where
        T: DeserializeOwned + Send + 'static,
        U: Send + 'static,
    {
        'attempt: for _ in 0..PAGED_ATTEMPTS {
            let mut rows: Vec<U> = Vec::new();
            let mut cursor: Option<String> = None;
            let mut first: Option<Version> = None;
            loop {
                let (version, page, next): (Option<Version>, Option<Vec<T>>, Option<String>) = self
                    .call(
                        "gifts_page",
                        &(space, import, cursor.as_deref(), PAGE),
                        Kind::Read,
                    )
                    .await?;
                let (Some(version), Some(page)) = (version, page) else {
                    return Err(StorageError::ImportNotFound(import));
                };
                if *first.get_or_insert(version) != version {
                    continue 'attempt;
                }
                rows.extend(super::checked(page, convert).await?);
                match next {
                    Some(next) => cursor = Some(next),
                    None => return Ok((version, rows)),
                }
            }
        }
        let (version, rows): (Option<Version>, Option<Vec<T>>) =
            self.call(whole, &(import,), Kind::Read).await?;
        match (version, rows) {
            (Some(version), Some(rows)) => Ok((version, super::checked(rows, convert).await?)),
            _ => Err(StorageError::ImportNotFound(import)),
        }
    }

    /// One `gifts_import_version` call.
    async fn import_version(&self, import: ImportId) -> Result<Version, StorageError> {
        let (version,): (Option<Version>,) = self
            .call("gifts_import_version", &(import,), Kind::Read)
            .await?;
        version.ok_or(StorageError::ImportNotFound(import))
    }
}

/// What a failed call means for the client: refused by Tarantool (503,
/// misconfigured), not applied (503), maybe applied (504), no room (507),
/// or a fault (500).
fn classify(function: &str, error: CallError, kind: Kind) -> StorageError {
    match error {
        CallError::NotSent(why) => StorageError::Unavailable(format!("tarantool: {why}")),
        CallError::NoAnswer(why) if kind == Kind::Write => {
            StorageError::OutcomeUnknown(format!("tarantool {function}: {why}"))
        }
        CallError::NoAnswer(why) => StorageError::Unavailable(format!("tarantool: {why}")),
        CallError::Login { code, message } => StorageError::Misconfigured(
            match code {
                codes::PASSWORD_MISMATCH => {
                    "the database rejected the service's password (check USER:PASSWORD in --storage / GIFTS_STORAGE)"
                }
                codes::NO_SUCH_USER => {
                    "the database does not know the service's user (check USER in --storage, or the database is still starting)"
                }
                _ => "the database rejected the service's login",
            }
            .to_owned()
                + &format!(" [{message}]"),
        ),
        CallError::Server { code, message } => match code {
            codes::ACCESS_DENIED => StorageError::Misconfigured(
                "the database denies the service's user the gifts functions (grants of tarantool/app.lua missing, or the database is still starting)".into(),
            ),
            codes::NO_SUCH_PROC => StorageError::Misconfigured(
                "the database has no gifts functions (is it running tarantool/app.lua, and is it up to date?)".into(),
            ),
            codes::LOADING | codes::READONLY => {
                StorageError::Unavailable(format!("tarantool is starting: {message}"))
            }
            codes::WAL_IO => StorageError::Full(format!("tarantool cannot write its WAL: {message}")),
            codes::MEMORY_ISSUE => {
                StorageError::Full(format!("tarantool's memory quota is exhausted: {message}"))
            }
            // app.lua's refusal of a read it cannot answer yet (summary_pending).
            _ if message.contains("gifts_unavailable:") => {
                StorageError::Unavailable(format!("tarantool: {message}"))
            }
            _ => StorageError::internal(format!("tarantool {function} failed ({code}): {message}")),
        },
        CallError::Decode(why) => {
            StorageError::internal(format!("unexpected answer from tarantool {function}: {why}"))
        }
    }
}

/// Keeps `gifts_tarantool_connected` and `gifts_tarantool_reconnects` up to date.
async fn count_connections(
    mut status: tokio::sync::watch::Receiver<iproto::Status>,
    metrics: Arc<Metrics>,
) {
    let up = Gauge::<i64>::default();
    metrics.register(
        "tarantool_connected",
        "1 while the connection to Tarantool is up",
        up.clone(),
    );
    let reconnects = Counter::<u64>::default();
    metrics.register(
        "tarantool_reconnects",
        "Connections to Tarantool made again after one was lost",
        reconnects.clone(),
    );
    drop(metrics);
    let mut connected_before = false;
    loop {
        let connected = *status.borrow_and_update() == iproto::Status::Connected;
        up.set(i64::from(connected));
        if connected {
            if connected_before {
                reconnects.inc();
            }
            connected_before = true;
        }
        if status.changed().await.is_err() {
            return; // the client is gone
        }
    }
}

/// Reports the connection's state in the log when it changes — at start,
/// so a wrong password or an unreachable database shows before the first
/// request — until the store is closed. The client reconnects by itself;
/// this only asks `gifts_health` (every second while unhealthy, every 10
/// seconds otherwise). A refusal is reported once it has lasted two checks,
/// since Tarantool refuses for a moment while `app.lua` starts.
async fn watch(connection: Arc<Connection>, address: String) {
    #[derive(PartialEq)]
    enum Seen {
        Nothing,
        Healthy,
        Outage,
        Refused(String),
        Full,
        Filling,
    }
    let mut seen = Seen::Nothing;
    let mut refusals = 0;
    while !connection.closed.load(Ordering::Acquire) {
        let result = connection.health().await;
        let healthy = result.is_ok();
        match result {
            Ok(version) => {
                refusals = 0;
                if seen != Seen::Healthy {
                    tracing::info!(storage = %address, schema_version = version, "connected to tarantool");
                    seen = Seen::Healthy;
                }
            }
            Err(StorageError::Misconfigured(why)) => {
                refusals += 1;
                if refusals >= 2 && seen != Seen::Refused(why.clone()) {
                    tracing::error!(storage = %address, "tarantool refuses the service: {why}; retrying every second");
                    seen = Seen::Refused(why);
                }
            }
            Err(StorageError::Full(why)) => {
                refusals = 0;
                if seen != Seen::Full {
                    tracing::error!(storage = %address, error = %why, "tarantool cannot store: writes get 507 until it can; reads go on");
                    seen = Seen::Full;
                }
            }
            Err(StorageError::Unavailable(why)) if why.contains(FILLING) => {
                refusals = 0;
                if seen != Seen::Filling {
                    tracing::warn!(storage = %address, "{why} (an upgrade): their analytics and PATCHes get 503 until it is done");
                    seen = Seen::Filling;
                }
            }
            Err(e) => {
                refusals = 0;
                if seen != Seen::Outage {
                    if seen == Seen::Nothing {
                        tracing::error!(storage = %address, error = %e, "cannot reach tarantool at start; retrying every second (requests get 503 meanwhile)");
                    } else {
                        tracing::warn!(storage = %address, error = %e, "tarantool unavailable; retrying");
                    }
                    seen = Seen::Outage;
                }
            }
        }
        let pause = if healthy { 10 } else { 1 };
        tokio::time::sleep(Duration::from_secs(pause)).await;
    }
}

#[async_trait]
impl Storage for TarantoolStorage {
    async fn create_import(
        &self,
        citizens: Vec<Citizen>,
        idempotency: Option<Idempotency>,
    ) -> Result<ImportId, StorageError> {
        let key = idempotency.as_ref().map(|i| i.key.as_str());
        let hash = idempotency.as_ref().map(|i| &i.body_hash[..]);
        let (citizens, summary) = SummaryRows::of_import(citizens).await?;
        let work =
            citizens.iter().map(|c| summary.work(c)).sum::<usize>() + ROW * summary.births.len();
        if citizens.len() > self.import_chunk || work > ONE_CALL_WORK {
            return self.create_in_chunks(&citizens, &summary, key, hash).await;
        }
        let rows: Vec<NewCitizen<'_>> = citizens.iter().map(NewCitizen::of).collect();
        let (status, value): (String, IdOrReason) = self
            .connection
            .call(
                "gifts_create_import",
                &(
                    rows,
                    &summary.presents,
                    &summary.births,
                    key,
                    hash.map(hex::encode),
                ),
                Kind::Write,
            )
            .await?;
        match import_answer("gifts_create_import", &status, value, key)? {
            Begun::New(import) | Begun::Existing(import) => Ok(import),
        }
    }

    async fn patch_citizen(
        &self,
        import: ImportId,
        citizen: CitizenId,
        patch: CitizenPatch,
    ) -> Result<Patched, StorageError> {
        let mut changes = BTreeMap::new();
        let mut text = |name: &'static str, value: Option<&str>| {
            if let Some(v) = value {
                changes.insert(name, FieldValue::Text(v.to_owned()));
            }
        };
        text(
            "town",
            patch
                .town
                .as_ref()
                .map(super::super::domain::citizen::Place::as_str),
        );
        text(
            "street",
            patch
                .street
                .as_ref()
                .map(super::super::domain::citizen::Place::as_str),
        );
        text(
            "building",
            patch
                .building
                .as_ref()
                .map(super::super::domain::citizen::Place::as_str),
        );
        text(
            "name",
            patch
                .name
                .as_ref()
                .map(super::super::domain::citizen::Name::as_str),
        );
        text(
            "gender",
            patch
                .gender
                .map(super::super::domain::citizen::Gender::as_str),
        );
        if let Some(date) = patch.birth_date {
            changes.insert("birth_date", FieldValue::Text(iso_date(date)));
        }
        if let Some(apartment) = patch.apartment {
            changes.insert("apartment", FieldValue::Number(apartment.get()));
        }
        let (reply, answer) = oneshot::channel();
        let job = PatchJob {
            args: (import, citizen, changes, patch.relatives),
            deadline: Instant::now() + super::deadline::remaining(self.connection.timeout),
            reply,
        };
        self.patches.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                StorageError::Overloaded(format!("{PATCH_QUEUE} PATCHes are waiting for tarantool"))
            }
            mpsc::error::TrySendError::Closed(_) => {
                StorageError::Unavailable("the store is closed".into())
            }
        })?;
        let (status, row, relative, version, reason) = answer
            .await
            .map_err(|_| StorageError::Unavailable("the store is closed".into()))??;
        match (status.as_str(), row, relative, version) {
            ("ok", Some(row), _, Some(version)) => Ok(Patched {
                citizen: row.into_citizen()?,
                version,
            }),
            ("import_not_found", ..) => Err(StorageError::ImportNotFound(import)),
            ("unavailable", ..) => Err(StorageError::Unavailable(format!(
                "tarantool: {}",
                reason.as_deref().unwrap_or("unavailable")
            ))),
            ("citizen_not_found", ..) => Err(StorageError::CitizenNotFound { import, citizen }),
            // Lua's refusals, answered as the plan's are (`domain::patch`).
            (refusal @ ("unknown_relative" | "missing_relative"), _, Some(other), _) => {
                let other =
                    CitizenId::parse(other).map_err(|e| StorageError::internal(e.to_string()))?;
                Err(super::refused(
                    import,
                    citizen,
                    if refusal == "unknown_relative" {
                        Refusal::UnknownRelative(other)
                    } else {
                        Refusal::MissingRelative(other)
                    },
                ))
            }
            (other, ..) => Err(StorageError::internal(format!(
                "gifts_patch_citizen answered {other:?} {reason:?}"
            ))),
        }
    }

    async fn citizens(&self, import: ImportId) -> Result<Snapshot, StorageError> {
        let (version, citizens) = self
            .connection
            .read_rows::<Row, _>("citizens", import, "gifts_citizens", |row| {
                row.into_citizen().map(Arc::new)
            })
            .await?;
        Ok(Snapshot { version, citizens })
    }

    async fn presents(&self, import: ImportId) -> Result<(Version, Birthdays), StorageError> {
        type Tuple = (u64, u8, u64, u32);
        let (version, rows) = self
            .connection
            .read_rows::<Tuple, _>("presents", import, "gifts_presents", Ok)
            .await?;
        let rows = rows
            .into_iter()
            .map(|(_, month, citizen, presents)| {
                CitizenId::parse(citizen)
                    .map(|citizen| (month, citizen, presents))
                    .map_err(|_| StorageError::internal("tarantool: a corrupt presents row"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((version, summary::birthdays(rows)))
    }

    async fn town_dates(
        &self,
        import: ImportId,
    ) -> Result<(Version, Vec<TownDates>), StorageError> {
        type Tuple = (u64, String, u32, u32);
        let (version, rows) = self
            .connection
            .read_rows::<Tuple, _>("town_births", import, "gifts_town_dates", Ok)
            .await?;
        // Rows come ordered by town, then date: each town's run is its dates.
        let corrupt = || StorageError::internal("tarantool: a corrupt town births row");
        let mut towns: Vec<TownDates> = Vec::new();
        let mut dates = Vec::new();
        let mut rows = rows.into_iter().peekable();
        while let Some((_, town, key, count)) = rows.next() {
            let date = summary::date_of_key(key).ok_or_else(corrupt)?;
            if count == 0 || dates.last().is_some_and(|&(last, _)| last >= date) {
                return Err(corrupt());
            }
            dates.push((date, count));
            if rows.peek().is_none_or(|next| next.1 != town) {
                towns.push(TownDates {
                    town,
                    dates: summary::encode_dates(&dates),
                });
                dates.clear();
            }
        }
        Ok((version, towns))
    }

    async fn import_version(&self, import: ImportId) -> Result<Version, StorageError> {
        let connection = Arc::clone(&self.connection);
        let check = self.versions.get(import, move || async move {
            connection.import_version(import).await
        });
        // Joining a check that is already running must not stretch the
        // request's wait past its budget.
        let budget = super::deadline::remaining(self.connection.timeout);
        match tokio::time::timeout(budget, check).await {
            Ok(Some(answer)) => answer,
            Ok(None) => Err(StorageError::internal("the version check failed")),
            Err(_) => Err(StorageError::Unavailable(format!(
                "tarantool did not answer gifts_import_version within {budget:?}"
            ))),
        }
    }

    async fn list_imports(
        &self,
        limit: usize,
        before: Option<ImportId>,
    ) -> Result<Vec<ImportInfo>, StorageError> {
        type Item = (u64, u64, f64, Version);
        let (items,): (Vec<Item>,) = self
            .connection
            .call("gifts_list_imports", &(limit, before), Kind::Read)
            .await?;
        items
            .into_iter()
            .map(|(import_id, citizens, created_at, version)| {
                Ok(ImportInfo {
                    import_id: ImportId::try_from(import_id).map_err(StorageError::internal)?,
                    citizens,
                    // Whole seconds since 1970, from Lua's number.
                    #[allow(clippy::cast_possible_truncation)]
                    created_at: created_at as i64,
                    version,
                })
            })
            .collect()
    }

    async fn delete_import(&self, import: ImportId) -> Result<(), StorageError> {
        let (status,): (String,) = self
            .connection
            .call("gifts_delete_import", &(import,), Kind::Write)
            .await?;
        match status.as_str() {
            "ok" => Ok(()),
            "not_found" => Err(StorageError::ImportNotFound(import)),
            other => Err(StorageError::internal(format!(
                "gifts_delete_import answered {other:?}"
            ))),
        }
    }

    async fn totals(&self) -> Result<(u64, u64), StorageError> {
        let (imports, citizens, _tuples): (u64, u64, u64) = self
            .connection
            .call("gifts_totals", &NO_ARGS, Kind::Read)
            .await?;
        Ok((imports, citizens))
    }

    async fn health(&self) -> Result<(), StorageError> {
        self.connection.health().await.map(drop)
    }

    async fn close(&self) {
        self.connection.closed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Apartment, BirthDate, Gender, Name, Place};

    /// The tuple's fields in [`Row`]'s and [`NewCitizen`]'s order.
    const TUPLE_FIELDS: [&str; 10] = [
        "import_id",
        "citizen_id",
        "town",
        "street",
        "building",
        "apartment",
        "name",
        "birth_date",
        "gender",
        "relatives",
    ];

    #[test]
    fn the_tuple_fields_are_numbered_as_app_lua_numbers_them() {
        let script = include_str!("../../tarantool/app.lua");
        let start = script
            .find("local F = {")
            .expect("app.lua defines the field numbers F");
        let table = &script[start + "local F = {".len()..];
        let table = &table[..table.find('}').expect("F ends")];
        let numbered: BTreeMap<&str, usize> = table
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(name, n)| (name.trim(), n.trim().parse().expect("a field number")))
            .collect();
        assert_eq!(numbered.len(), TUPLE_FIELDS.len(), "{numbered:?}");
        for (i, field) in TUPLE_FIELDS.iter().enumerate() {
            assert_eq!(numbered.get(field), Some(&(i + 1)), "{field}");
        }
    }

    #[test]
    fn a_tuple_written_for_an_import_reads_back_as_the_same_citizen() {
        let citizen = Citizen {
            citizen_id: CitizenId::parse(u64::MAX >> 1).unwrap(),
            town: Place::parse("Керчь".into()).unwrap(),
            street: Place::parse("Иосифа Бродского".into()).unwrap(),
            building: Place::parse("2".into()).unwrap(),
            apartment: Apartment::parse(11).unwrap(),
            name: Name::parse("Романова Мария Леонидовна".into()).unwrap(),
            birth_date: BirthDate::from_ymd(1986, 11, 23).unwrap(),
            gender: Gender::parse("female").unwrap(),
            relatives: vec![CitizenId::parse(1).unwrap()],
        };
        let tuple = rmp_serde::to_vec(&NewCitizen::of(&citizen)).unwrap();
        let row: Row = rmp_serde::from_slice(&tuple).unwrap();
        assert_eq!(row.into_citizen().unwrap(), citizen);
    }
}
