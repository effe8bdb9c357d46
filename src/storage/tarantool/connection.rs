//! The one connection and its calls: timeouts, failures told apart
//! (not applied / unknown), health and the schema check, paged reads, and
//! the watchers that log and count the connection's state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::import::{BirthsRow, CALL_WORK, ROW, SummaryRows, births_calls};
use super::tuples::{Keyed, Row};
use crate::domain::ImportId;
use crate::domain::summary::PresentsRow;
use crate::metrics::Metrics;
use crate::storage::iproto::{self, CallError, Client, codes};
use crate::storage::{StorageError, Version};

/// Page-by-page reads of one import that writes may spoil before one call
/// reads it whole.
pub(super) const PAGED_ATTEMPTS: usize = 3;

/// The schema version of `tarantool/app.lua` this build speaks to.
pub(super) const SCHEMA_VERSION: u64 = 9;

/// The client and its settings, shared with spawned version checks.
pub(super) struct Connection {
    pub(super) client: Client,
    pub(super) timeout: Duration,
    pub(super) closed: AtomicBool,
    /// False from a write that failed for lack of disk or memory until one succeeds.
    pub(super) writable: AtomicBool,
    /// The largest request body the service takes: a citizen tuple is never
    /// bigger, so Tarantool's largest tuple must not be smaller.
    pub(super) largest_body: u64,
    /// Most rows per `SELECT` of an import's rows (`--tarantool-read-page`).
    pub(super) read_page: u32,
    /// True while this instance fills the summary of imports stored before
    /// it ([`Connection::backfill`]).
    pub(super) backfilling: AtomicBool,
}

/// What `health` says while imports stored before the summary get theirs.
pub(super) const FILLING: &str = "filling the analytics summary";

/// The argument list of a function that takes none.
pub(super) const NO_ARGS: [u8; 0] = [];

/// Whether a call changes data: a write with no answer may have been applied.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Read,
    Write,
}

impl Connection {
    /// One call, within the request's remaining budget, its failure as a `StorageError`.
    pub(super) async fn call<A, R>(
        &self,
        function: &str,
        args: &A,
        kind: Kind,
    ) -> Result<R, StorageError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'static,
    {
        let budget = crate::storage::deadline::remaining(self.timeout);
        self.call_within(function, args, kind, budget).await
    }

    /// One call that may take `budget`.
    pub(super) async fn call_within<A, R>(
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
    pub(super) async fn health(self: &Arc<Self>) -> Result<u64, StorageError> {
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
    pub(super) async fn backfill(&self) -> Result<usize, StorageError> {
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
                let births: Vec<&[BirthsRow]> = births_calls(&rows.births, CALL_WORK);
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

    /// An import's rows of `space` (one of `gifts_read_version`'s spaces),
    /// all of one version: `SELECT`s of `read_page` rows each (Tarantool's C
    /// code, no Lua, so no call holds Tarantool for long), between two
    /// `gifts_read_version` calls that must agree (every write of an import
    /// bumps its version); the second is sent with the first `SELECT` and
    /// counts when that page was the last. When writes change the import on
    /// every one of [`PAGED_ATTEMPTS`], one call to `whole` reads it all at
    /// once.
    ///
    /// Each page is turned into values by `convert` as it comes, so a big
    /// import is never held as raw rows and values at once.
    pub(super) async fn read_rows<T, U>(
        &self,
        space: &str,
        import: ImportId,
        whole: &str,
        convert: fn(T) -> Result<U, StorageError>,
    ) -> Result<(Version, Vec<U>), StorageError>
    where
        T: Keyed + DeserializeOwned + Send + 'static,
        U: Send + 'static,
    {
        let id = import.get().unsigned_abs();
        let first_key = (id,);
        for _ in 0..PAGED_ATTEMPTS {
            let (version, space_id) = self.read_version(space, import).await?;
            let mut rows: Vec<U> = Vec::new();
            // The version again, sent right behind the first page's SELECT on
            // the one connection: Tarantool starts a connection's requests in
            // the order they came, and a memtx SELECT does not yield, so the
            // page is read whole before the call starts. When that page is the
            // last, as it is for most imports, the read takes two round trips,
            // not three.
            let budget = crate::storage::deadline::remaining(self.timeout);
            let (mut selected, again) = tokio::join!(
                self.client.select::<_, Vec<T>>(
                    space_id,
                    &first_key,
                    false,
                    self.read_page,
                    budget
                ),
                self.read_version(space, import)
            );
            let mut again = Some(again);
            loop {
                let mut page = selected.map_err(|e| classify(space, e, Kind::Read))?;
                let full = u32::try_from(page.len()) == Ok(self.read_page);
                // A page after a key runs on into the next import's rows.
                let ours = page.iter().take_while(|row| row.import() == id).count();
                // An empty page is never full: it ends the read too.
                let ended = !full || ours < page.len();
                page.truncate(ours);
                let after = page.last().map(Keyed::key);
                rows.extend(crate::storage::checked(page, convert).await?);
                let Some(after) = after.filter(|_| !ended) else {
                    break;
                };
                again = None; // read before this page: too early
                let budget = crate::storage::deadline::remaining(self.timeout);
                selected = self
                    .client
                    .select(space_id, &after, true, self.read_page, budget)
                    .await;
            }
            let now = match again {
                Some(read) => read?,
                None => self.read_version(space, import).await?,
            };
            if now.0 == version {
                return Ok((version, rows));
            }
        }
        let (version, rows): (Option<Version>, Option<Vec<T>>) =
            self.call(whole, &(import,), Kind::Read).await?;
        match (version, rows) {
            (Some(version), Some(rows)) => {
                Ok((version, crate::storage::checked(rows, convert).await?))
            }
            _ => Err(StorageError::ImportNotFound(import)),
        }
    }

    /// Up to `limit` rows of `space` of an import after `after` (its rows'
    /// key within the import), from the first if `None`: one `SELECT` after
    /// a `gifts_read_version` that tells a missing import (one request, so
    /// the page is one state of the import).
    pub(super) async fn read_page<T, U>(
        &self,
        space: &str,
        import: ImportId,
        after: Option<u64>,
        limit: u32,
        convert: fn(T) -> Result<U, StorageError>,
    ) -> Result<Vec<U>, StorageError>
    where
        T: Keyed + DeserializeOwned + Send + 'static,
        U: Send + 'static,
    {
        let id = import.get().unsigned_abs();
        let (_, space_id) = self.read_version(space, import).await?;
        let budget = crate::storage::deadline::remaining(self.timeout);
        let selected: Result<Vec<T>, _> = match after {
            None => {
                self.client
                    .select(space_id, &(id,), false, limit, budget)
                    .await
            }
            Some(after) => {
                self.client
                    .select(space_id, &(id, after), true, limit, budget)
                    .await
            }
        };
        let mut page = selected.map_err(|e| classify(space, e, Kind::Read))?;
        // A page after a key runs on into the next import's rows.
        let ours = page.iter().take_while(|row| row.import() == id).count();
        page.truncate(ours);
        crate::storage::checked(page, convert).await
    }

    /// One `gifts_read_version` call: the import's version and the id of
    /// `space` for direct reads.
    async fn read_version(
        &self,
        space: &str,
        import: ImportId,
    ) -> Result<(Version, u32), StorageError> {
        let (version, space_id): (Option<Version>, Option<u32>) = self
            .call("gifts_read_version", &(space, import), Kind::Read)
            .await?;
        match (version, space_id) {
            (Some(version), Some(space_id)) => Ok((version, space_id)),
            _ => Err(StorageError::ImportNotFound(import)),
        }
    }

    /// One `gifts_import_version` call.
    pub(super) async fn import_version(&self, import: ImportId) -> Result<Version, StorageError> {
        let (version,): (Option<Version>,) = self
            .call("gifts_import_version", &(import,), Kind::Read)
            .await?;
        version.ok_or(StorageError::ImportNotFound(import))
    }
}

/// What a failed call means for the client: refused by Tarantool (503,
/// misconfigured), not applied (503), maybe applied (504), no room (507),
/// or a fault (500).
pub(super) fn classify(function: &str, error: CallError, kind: Kind) -> StorageError {
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
pub(super) async fn count_connections(
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
pub(super) async fn watch(connection: Arc<Connection>, address: String) {
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
