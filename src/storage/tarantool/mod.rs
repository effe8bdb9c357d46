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

mod address;
mod connection;
mod import;
mod patches;
mod tuples;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::coalesce::Coalescer;
use super::iproto::{self, Client};
use super::row::iso_date;
use super::{ImportInfo, Patched, Snapshot, Storage, StorageError, Upload, Version};
use crate::domain::patch::Refusal;
use crate::domain::stats::Birthdays;
use crate::domain::summary::{self, TownDates};
use crate::domain::{Citizen, CitizenId, CitizenPatch, ImportId};
use crate::metrics::Metrics;

pub use address::{Secret, TarantoolAddress};
use connection::{Connection, Kind, NO_ARGS, count_connections, watch};
use import::{Begun, ONE_CALL_WORK, SummaryRows, import_answer};
use patches::{PATCH_QUEUE, PatchJob, send_patches};
use tuples::{
    BirthsTuple, Dates, FieldValue, IdOrReason, NewCitizen, PicksTuple, PresentsTuple, Row,
};

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

impl TarantoolStorage {
    /// Each town's dates, joined from its years' rows.
    async fn town_years(
        &self,
        import: ImportId,
    ) -> Result<(Version, Vec<TownDates>), StorageError> {
        let (version, rows) = self
            .connection
            .read_rows::<BirthsTuple, _>("town_years", import, "gifts_town_dates", Ok)
            .await?;
        // Rows come ordered by town, then year: each town's run, joined, is
        // its dates (the answer's render checks them: summary::decode_dates).
        let mut towns: Vec<TownDates> = Vec::new();
        for (_, town, _, Dates(dates)) in rows {
            if dates.is_empty() || !dates.len().is_multiple_of(summary::ENTRY) {
                return Err(StorageError::internal(
                    "tarantool: a corrupt town years row",
                ));
            }
            match towns.last_mut() {
                Some(last) if last.town == town => last.dates.extend_from_slice(&dates),
                _ => towns.push(TownDates { town, dates }),
            }
        }
        Ok((version, towns))
    }

    /// Starts the client; it connects at once and, after a failure, again
    /// and again (50 ms, doubling to 1 s) until Tarantool answers.
    pub fn connect(
        address: &TarantoolAddress,
        timeout: Duration,
        import_chunk: usize,
        read_page: u32,
        largest_body: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        let client = Client::new(iproto::Config {
            address: address.host_port.clone(),
            user: address.user.clone(),
            password: address
                .password
                .as_ref()
                .map_or_else(String::new, |p| p.expose().to_owned()),
            connect_timeout: timeout.min(Duration::from_secs(5)),
        });
        let connection = Arc::new(Connection {
            client,
            timeout,
            closed: AtomicBool::new(false),
            writable: AtomicBool::new(true),
            largest_body,
            read_page: read_page.max(1),
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
}

#[async_trait]
impl Storage for TarantoolStorage {
    async fn create_import(
        &self,
        citizens: Vec<Citizen>,
        upload: Upload,
    ) -> Result<ImportId, StorageError> {
        let key = upload.key.as_deref();
        let (citizens, summary) = SummaryRows::of_import(citizens).await?;
        let work = citizens.iter().map(|c| summary.work(c)).sum::<usize>()
            + summary
                .births
                .iter()
                .map(import::births_work)
                .sum::<usize>();
        if citizens.len() > self.import_chunk || work > ONE_CALL_WORK {
            return self.create_in_chunks(&citizens, &summary, &upload).await;
        }
        let rows: Vec<NewCitizen<'_>> = citizens.iter().map(NewCitizen::of).collect();
        let digest = hex::encode(upload.digest);
        let (status, value): (String, IdOrReason) = self
            .connection
            .call(
                "gifts_create_import",
                &(
                    rows,
                    &summary.presents,
                    &summary.births,
                    key,
                    key.map(|_| &digest),
                    &upload.name,
                    &digest,
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
        let long = job
            .args
            .3
            .as_ref()
            .is_some_and(|relatives| relatives.len() > patches::LONG_RELATIVES);
        if long {
            tokio::spawn(patches::send_long(Arc::clone(&self.connection), job));
        } else {
            self.patches.try_send(job).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StorageError::Overloaded(format!(
                    "{PATCH_QUEUE} PATCHes are waiting for tarantool"
                )),
                mpsc::error::TrySendError::Closed(_) => {
                    StorageError::Unavailable("the store is closed".into())
                }
            })?;
        }
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

    async fn citizens_page(
        &self,
        import: ImportId,
        after: Option<CitizenId>,
        limit: usize,
    ) -> Result<Vec<Arc<Citizen>>, StorageError> {
        self.connection
            .read_page::<Row, _>(
                "citizens",
                import,
                after.map(|id| id.as_i64().unsigned_abs()),
                u32::try_from(limit).unwrap_or(u32::MAX),
                |row| row.into_citizen().map(Arc::new),
            )
            .await
    }

    async fn presents(&self, import: ImportId) -> Result<(Version, Birthdays), StorageError> {
        let (version, rows) = self
            .connection
            .read_rows::<PresentsTuple, _>("presents", import, "gifts_presents", Ok)
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

    /// Each town's picks (`summary::picked`): a short row a town. Where
    /// some are not known (a new import's towns, and those a PATCH moved a
    /// birth in or out of since), the towns' years instead, every town's
    /// picks computed from them, and those not known kept for the next read
    /// (`gifts_put_picks`, if the import is still at the version read).
    async fn town_dates(
        &self,
        import: ImportId,
    ) -> Result<(Version, Vec<TownDates>), StorageError> {
        let (version, rows) = self
            .connection
            .read_rows::<PicksTuple, _>("town_picks", import, "gifts_town_picks", Ok)
            .await?;
        let unknown: Vec<&str> = rows
            .iter()
            .filter(|(_, _, Dates(picks))| picks.is_empty())
            .map(|(_, town, _)| town.as_str())
            .collect();
        if unknown.is_empty() {
            let towns = rows
                .into_iter()
                .map(|(_, town, Dates(dates))| TownDates { town, dates })
                .collect();
            return Ok((version, towns));
        }
        let (version, mut towns) = self.town_years(import).await?;
        let mut kept: Vec<(&str, Dates)> = Vec::new();
        for town in &mut towns {
            let picks = summary::picked(&town.dates).ok_or_else(|| {
                StorageError::internal(format!(
                    "tarantool: the stored dates of town {:?} are corrupt",
                    town.town
                ))
            })?;
            if unknown.contains(&town.town.as_str()) {
                kept.push((town.town.as_str(), Dates(picks.clone())));
            }
            town.dates = picks;
        }
        // Only a faster next read depends on it: a failure is no failure
        // of this one.
        if let Err(e) = self
            .connection
            .call::<_, (bool,)>("gifts_put_picks", &(import, version, &kept), Kind::Write)
            .await
        {
            tracing::warn!(%import, error = %e, "tarantool: the towns' picks were not kept");
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
        digest: Option<[u8; 32]>,
    ) -> Result<Vec<ImportInfo>, StorageError> {
        type Item = (u64, u64, f64, Version, Option<String>, Option<String>);
        let (items,): (Vec<Item>,) = self
            .connection
            .call(
                "gifts_list_imports",
                &(limit, before, digest.map(hex::encode)),
                Kind::Read,
            )
            .await?;
        items
            .into_iter()
            .map(|(import_id, citizens, created_at, version, name, digest)| {
                Ok(ImportInfo {
                    import_id: ImportId::try_from(import_id).map_err(StorageError::internal)?,
                    citizens,
                    // Whole seconds since 1970, from Lua's number.
                    #[allow(clippy::cast_possible_truncation)]
                    created_at: created_at as i64,
                    version,
                    name,
                    digest: digest
                        .map(|hex| {
                            let mut bytes = [0; 32];
                            hex::decode_to_slice(&hex, &mut bytes).map(|()| bytes)
                        })
                        .transpose()
                        .map_err(StorageError::internal)?,
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
