//! The Tarantool backend: a thin client over the stored procedures of
//! `tarantool/app.lua`, which make each write one transaction (`box.atomic`).
//!
//! One multiplexed connection (rusty_tarantool) is shared by all handlers;
//! it reconnects by itself after an outage. Every call has a timeout, and a
//! call that fails while the connection is down is `Unavailable` (503).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusty_tarantool::tarantool::{Client, ClientConfig, ClientStatus, TarantoolResponse};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Patched, Snapshot, Storage, StorageError, Version, stored_citizen};
use crate::domain::{Citizen, CitizenId, CitizenPatch, ImportId, Reason, ValidationError};

/// How to reach Tarantool.
#[derive(Clone, PartialEq, Eq)]
pub struct TarantoolAddress {
    /// `HOST:PORT`.
    pub host_port: String,
    /// User name.
    pub user: String,
    /// Password (never logged).
    pub password: String,
}

impl std::fmt::Debug for TarantoolAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tarantool://{}:***@{}", self.user, self.host_port)
    }
}

/// The Tarantool store.
pub struct TarantoolStorage {
    connection: Arc<Connection>,
    versions: VersionChecks,
}

/// The client and its settings, shared with spawned version checks.
struct Connection {
    client: Client,
    timeout: Duration,
    closed: AtomicBool,
}

/// A citizen as `gifts_create_import` takes it: the stored tuple, with a
/// placeholder for the import id that the procedure fills in.
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

/// A stored citizen tuple: `{import_id, citizen_id, town, street, building,
/// apartment, name, birth_date, gender, relatives}`.
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
        let Row(_, id, town, street, building, apartment, name, birth_date, gender, relatives) =
            self;
        stored_citizen(
            id,
            town,
            street,
            building,
            apartment,
            name,
            &birth_date,
            &gender,
            relatives,
        )
    }
}

/// A new field value in a patch: text or number.
#[derive(Serialize)]
#[serde(untagged)]
enum Value {
    Text(String),
    Number(u64),
}

impl TarantoolStorage {
    /// Creates the client; the connection is opened on first use and, after a
    /// failure, re-opened every 200 ms until Tarantool answers again.
    pub fn connect(address: &TarantoolAddress, timeout: Duration) -> Self {
        let client = ClientConfig::new(
            address.host_port.clone(),
            address.user.clone(),
            address.password.clone(),
        )
        .set_reconnect_time_ms(200)
        .build();
        let connection = Arc::new(Connection {
            client,
            timeout,
            closed: AtomicBool::new(false),
        });
        tokio::spawn(watch(Arc::clone(&connection), format!("{address:?}")));
        Self {
            connection,
            versions: VersionChecks::default(),
        }
    }

    async fn call<P: Serialize + Sync>(
        &self,
        function: &str,
        params: &P,
    ) -> Result<TarantoolResponse, StorageError> {
        self.connection.call(function, params).await
    }
}

impl Connection {
    async fn call<P: Serialize + Sync>(
        &self,
        function: &str,
        params: &P,
    ) -> Result<TarantoolResponse, StorageError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Unavailable("the store is closed".into()));
        }
        // rusty_tarantool's own timeout setting is never enforced: bound every call here.
        match tokio::time::timeout(self.timeout, self.client.call_fn(function, params)).await {
            Err(_) => Err(StorageError::Unavailable(format!(
                "tarantool did not answer {function} within {:?}",
                self.timeout
            ))),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(self.classify(function, e)),
        }
    }

    /// The client reports every failure as an `io::Error` carrying Tarantool's
    /// message; the message and whether the connection is up tell an outage
    /// or a start-up window (503, retry) from a refusal an operator must fix
    /// (503, misconfigured) and from a fault inside Tarantool (500).
    fn classify(&self, function: &str, error: io::Error) -> StorageError {
        let text = error.to_string();
        match refusal(&text) {
            Some(why) => StorageError::Misconfigured(why.to_owned()),
            None => match self.client.get_status() {
                ClientStatus::Connected if !starting(&text) => {
                    StorageError::internal(format!("tarantool {function} failed: {text}"))
                }
                status => StorageError::Unavailable(format!("tarantool {status:?}: {text}")),
            },
        }
    }
}

/// Tarantool's answers that mean it refuses this service: a safe summary.
/// Each can also show for a moment while `app.lua` starts (before it has
/// created the user and its grants), so all are answered 503.
fn refusal(text: &str) -> Option<&'static str> {
    if text.contains("Incorrect password") {
        Some(
            "the database rejected the service's password (check USER:PASSWORD in --storage / GIFTS_STORAGE)",
        )
    } else if text.starts_with("User '") && text.contains("is not found") {
        Some(
            "the database does not know the service's user (check USER in --storage, or the database is still starting)",
        )
    } else if text.contains("access to") && text.contains("is denied") {
        Some(
            "the database denies the service's user the gifts functions (grants of tarantool/app.lua missing, or the database is still starting)",
        )
    } else if text.contains("Procedure '") && text.contains("is not defined") {
        Some("the database has no gifts functions (is it running tarantool/app.lua?)")
    } else {
        None
    }
}

/// Tarantool's answers while it loads or bootstraps.
fn starting(text: &str) -> bool {
    text.contains("bootstrap hasn't finished") || text.contains("Loading")
}

impl Connection {
    /// One `gifts_health` call: the schema version.
    async fn health(&self) -> Result<u64, StorageError> {
        let response = self.call("gifts_health", &Vec::<()>::new()).await?;
        let version: u64 = response
            .decode_single()
            .map_err(|e| decode_error("gifts_health", e))?;
        if version == 0 {
            return Err(StorageError::Unavailable(
                "tarantool schema is missing".into(),
            ));
        }
        Ok(version)
    }

    /// One `gifts_import_version` call.
    async fn import_version(&self, import: ImportId) -> Result<Version, StorageError> {
        let response = self.call("gifts_import_version", &(import,)).await?;
        let version: Option<Version> = response
            .decode_single()
            .map_err(|e| decode_error("gifts_import_version", e))?;
        version.ok_or(StorageError::ImportNotFound(import))
    }
}

/// Coalesces concurrent version checks of one import. Every cached read asks
/// for the version, and under load most of those calls are redundant: a
/// request may take the answer of any check that was *sent after the request
/// arrived*, because such a check sees every write acknowledged before the
/// request. So checks of one import run one at a time, and a request waits
/// for the first check numbered after its arrival — starting it if none is
/// running. Checks run in their own task, so a cancelled request cannot
/// strand the others.
#[derive(Default)]
struct VersionChecks {
    imports: Mutex<HashMap<ImportId, Arc<watch::Sender<CheckState>>>>,
}

/// The checks of one import: how many were started, the number and answer of
/// the last finished one.
#[derive(Default)]
struct CheckState {
    started: u64,
    running: bool,
    done: u64,
    answer: Option<Result<Version, CheckError>>,
}

/// A `StorageError` that can be handed to every waiter.
#[derive(Clone)]
enum CheckError {
    NotFound(ImportId),
    Unavailable(String),
    Internal(String),
}

impl From<StorageError> for CheckError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::ImportNotFound(import) => CheckError::NotFound(import),
            StorageError::Unavailable(why) => CheckError::Unavailable(why),
            other => {
                CheckError::Internal(format!("{other}: {:?}", std::error::Error::source(&other)))
            }
        }
    }
}

impl From<CheckError> for StorageError {
    fn from(error: CheckError) -> Self {
        match error {
            CheckError::NotFound(import) => StorageError::ImportNotFound(import),
            CheckError::Unavailable(why) => StorageError::Unavailable(why),
            CheckError::Internal(why) => StorageError::internal(why),
        }
    }
}

/// Imports whose idle check state is dropped once this many are tracked.
const TRACKED_IMPORTS: usize = 4096;

impl VersionChecks {
    async fn check(
        &self,
        connection: &Arc<Connection>,
        import: ImportId,
    ) -> Result<Version, StorageError> {
        let checks = {
            let mut imports = self.imports.lock().expect("version checks lock");
            if imports.len() >= TRACKED_IMPORTS {
                imports.retain(|_, checks| checks.borrow().running);
            }
            Arc::clone(
                imports
                    .entry(import)
                    .or_insert_with(|| Arc::new(watch::channel(CheckState::default()).0)),
            )
        };
        let mut changes = checks.subscribe();
        // Checks numbered above this one start after this request arrived.
        let needed = checks.borrow().started + 1;
        loop {
            let mut start = false;
            checks.send_if_modified(|state| {
                if state.done < needed && !state.running {
                    state.running = true;
                    state.started += 1;
                    start = true;
                }
                start
            });
            if start {
                let (connection, checks) = (Arc::clone(connection), Arc::clone(&checks));
                tokio::spawn(async move {
                    let answer = connection
                        .import_version(import)
                        .await
                        .map_err(CheckError::from);
                    checks.send_modify(|state| {
                        state.done = state.started;
                        state.running = false;
                        state.answer = Some(answer);
                    });
                });
            }
            {
                let state = changes.borrow_and_update();
                if state.done >= needed {
                    let answer = state
                        .answer
                        .clone()
                        .expect("a finished check has an answer");
                    return answer.map_err(StorageError::from);
                }
            }
            changes
                .changed()
                .await
                .map_err(|_| StorageError::Unavailable("version check abandoned".into()))?;
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

fn decode_error(function: &str, error: io::Error) -> StorageError {
    StorageError::internal(format!(
        "unexpected answer from tarantool {function}: {error}"
    ))
}

#[async_trait]
impl Storage for TarantoolStorage {
    async fn create_import(&self, citizens: Vec<Citizen>) -> Result<ImportId, StorageError> {
        let rows: Vec<NewCitizen<'_>> = citizens
            .iter()
            .map(|c| {
                NewCitizen(
                    0,
                    c.citizen_id,
                    c.town.as_str(),
                    c.street.as_str(),
                    c.building.as_str(),
                    c.apartment.as_i64() as u64,
                    c.name.as_str(),
                    c.birth_date.to_iso(),
                    c.gender.as_str(),
                    &c.relatives,
                )
            })
            .collect();
        let response = self.call("gifts_create_import", &(rows,)).await?;
        let id: u64 = response
            .decode_single()
            .map_err(|e| decode_error("gifts_create_import", e))?;
        ImportId::try_from(id).map_err(StorageError::internal)
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
                changes.insert(name, Value::Text(v.to_owned()));
            }
        };
        text("town", patch.town.as_ref().map(|v| v.as_str()));
        text("street", patch.street.as_ref().map(|v| v.as_str()));
        text("building", patch.building.as_ref().map(|v| v.as_str()));
        text("name", patch.name.as_ref().map(|v| v.as_str()));
        text("gender", patch.gender.map(|v| v.as_str()));
        if let Some(date) = patch.birth_date {
            changes.insert("birth_date", Value::Text(date.to_iso()));
        }
        if let Some(apartment) = patch.apartment {
            changes.insert("apartment", Value::Number(apartment.as_i64() as u64));
        }
        let response = self
            .call(
                "gifts_patch_citizen",
                &(import, citizen, changes, patch.relatives.as_deref()),
            )
            .await?;
        let (status, row, relative, version): (String, Option<Row>, Option<u64>, Option<Version>) =
            response
                .decode()
                .map_err(|e| decode_error("gifts_patch_citizen", e))?;
        match (status.as_str(), row, relative, version) {
            ("ok", Some(row), _, Some(version)) => Ok(Patched {
                citizen: row.into_citizen()?,
                version,
            }),
            ("import_not_found", ..) => Err(StorageError::ImportNotFound(import)),
            ("citizen_not_found", ..) => Err(StorageError::CitizenNotFound { import, citizen }),
            ("unknown_relative", _, Some(other), _) => {
                Err(StorageError::Invalid(ValidationError::new(
                    "relatives",
                    Some(citizen),
                    Reason::UnknownRelative(
                        CitizenId::parse(other)
                            .map_err(|e| StorageError::internal(e.to_string()))?,
                    ),
                )))
            }
            (other, ..) => Err(StorageError::internal(format!(
                "gifts_patch_citizen answered {other:?}"
            ))),
        }
    }

    async fn citizens(&self, import: ImportId) -> Result<Snapshot, StorageError> {
        let response = self.call("gifts_citizens", &(import,)).await?;
        let (version, rows): (Option<Version>, Option<Vec<Row>>) = response
            .decode_pair()
            .map_err(|e| decode_error("gifts_citizens", e))?;
        let (Some(version), Some(rows)) = (version, rows) else {
            return Err(StorageError::ImportNotFound(import));
        };
        let citizens = rows
            .into_iter()
            .map(Row::into_citizen)
            .collect::<Result<_, _>>()?;
        Ok(Snapshot { version, citizens })
    }

    async fn import_version(&self, import: ImportId) -> Result<Version, StorageError> {
        self.versions.check(&self.connection, import).await
    }

    async fn health(&self) -> Result<(), StorageError> {
        self.connection.health().await.map(drop)
    }

    async fn close(&self) {
        self.connection.closed.store(true, Ordering::Release);
    }
}
