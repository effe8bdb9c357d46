//! Storage behind one async, backend-neutral trait.
//!
//! Handlers and domain code only see [`Storage`] and [`StorageError`]; each
//! backend maps its own driver errors in its own file.

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::patch::Refusal;
use crate::domain::stats::Birthdays;
use crate::domain::summary::{Summary, TownDates};
use crate::domain::{Citizen, CitizenId, CitizenPatch, ImportId, Reason, ValidationError};

pub(crate) mod coalesce;
pub(crate) mod deadline;
pub use gifts_iproto as iproto;
pub(crate) mod metered;
mod open;
pub mod postgres;
mod row;
pub mod sqlite;
pub mod tarantool;

pub use crate::domain::Version;
pub use open::{Settings, open};

/// Imports of at least this many citizens read back from a server store
/// are checked again on a blocking thread, not an async worker.
const BLOCKING_CHECK: usize = 2_000;

/// The citizens of `rows` read back from a server store, every field
/// checked again by `read`: for a big import, off the async worker threads.
async fn checked_citizens<R: Send + 'static>(
    rows: Vec<R>,
    read: fn(R) -> Result<Citizen, StorageError>,
) -> Result<Vec<std::sync::Arc<Citizen>>, StorageError> {
    checked(rows, move |row| read(row).map(std::sync::Arc::new)).await
}

/// `rows` each turned into a value by `read`: for many, off the async
/// worker threads.
async fn checked<R: Send + 'static, U: Send + 'static>(
    rows: Vec<R>,
    read: impl Fn(R) -> Result<U, StorageError> + Send + 'static,
) -> Result<Vec<U>, StorageError> {
    let len = rows.len();
    by_size(len, move || {
        rows.into_iter().map(read).collect::<Result<Vec<_>, _>>()
    })
    .await?
}

/// The citizens and their summary (`domain::summary`), computed off the
/// async worker threads for a big import.
async fn summary_of(citizens: Vec<Citizen>) -> Result<(Vec<Citizen>, Summary), StorageError> {
    by_size(citizens.len(), move || {
        let summary = Summary::of(&citizens);
        (citizens, summary)
    })
    .await
}

/// `work` on `len` rows or citizens: here when they are few, on a blocking
/// thread when they are [`BLOCKING_CHECK`] or more.
async fn by_size<T: Send + 'static>(
    len: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StorageError> {
    if len < BLOCKING_CHECK {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(StorageError::internal)
}

/// An import's citizens as a reader holds them in memory at `version`,
/// ordered by citizen_id: what a PATCH may be planned from instead of
/// reading them ([`Storage::patch_citizen_held`]).
#[derive(Debug, Clone)]
pub struct HeldCopy {
    /// The version the citizens belong to.
    pub version: Version,
    /// Ordered by citizen_id, relatives ascending.
    pub citizens: Arc<Vec<Arc<Citizen>>>,
}

/// An import's citizens as of one version.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The version the citizens belong to.
    pub version: Version,
    /// Ordered by citizen_id, relatives ascending; each in the `Arc` the read
    /// cache holds it in, allocated once (a million-citizen import moved into
    /// `Arc`s after loading would hold both lists at once).
    pub citizens: Vec<std::sync::Arc<Citizen>>,
}

/// An `Idempotency-Key` and the body it was sent with: a retry of a stored
/// import with the same key and body gets the same import back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// The client's key (1–255 printable ASCII characters).
    pub key: String,
    /// SHA-256 of the request body (after gzip decompression).
    pub body_hash: [u8; 32],
}

/// What an import is stored with besides its citizens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upload {
    /// The name the client gave it (`POST /imports?name=`), checked: 1–256
    /// characters, none a control character.
    pub name: Option<String>,
    /// SHA-256 of the request body (after gzip decompression): the same file
    /// sent twice has the same digest.
    pub digest: [u8; 32],
    /// The `Idempotency-Key`, if one was sent.
    pub key: Option<String>,
}

impl Upload {
    /// The idempotency key with the body it came with, if a key was sent.
    pub fn idempotency(&self) -> Option<Idempotency> {
        self.key.clone().map(|key| Idempotency {
            key,
            body_hash: self.digest,
        })
    }
}

/// What the import list tells about one import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportInfo {
    /// The import's id.
    pub import_id: ImportId,
    /// The name it was uploaded with, if any.
    pub name: Option<String>,
    /// SHA-256 of the body it was uploaded with; `None` for an import stored
    /// before the service kept digests.
    pub digest: Option<[u8; 32]>,
    /// How many citizens it holds.
    pub citizens: u64,
    /// When it was stored, in seconds since the Unix epoch (UTC).
    pub created_at: i64,
    /// Its version (1 when stored, +1 per PATCH).
    pub version: Version,
}

/// The result of a PATCH.
#[derive(Debug, Clone)]
pub struct Patched {
    /// The citizen as stored now.
    pub citizen: Citizen,
    /// The import's version after the write.
    pub version: Version,
}

/// What can go wrong in storage, in terms the HTTP layer can answer with.
/// Cheap to clone, so one answer can go to many waiting requests.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// No import with this id.
    #[error("import {0} not found")]
    ImportNotFound(ImportId),
    /// The import exists, the citizen does not.
    #[error("citizen {citizen} not found in import {import}")]
    CitizenNotFound {
        /// The import that was searched.
        import: ImportId,
        /// The missing citizen.
        citizen: CitizenId,
    },
    /// The write breaks a rule only the stored data can tell (e.g. an unknown relative).
    #[error(transparent)]
    Invalid(ValidationError),
    /// The store cannot be reached, is starting or is shut down: the operation
    /// was not applied, and retrying later is safe.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The store answers but refuses this service (wrong password, missing
    /// grants): not applied, and an operator must act. The text is safe to
    /// show to clients (no secrets, no addresses).
    #[error("storage misconfigured: {0}")]
    Misconfigured(String),
    /// The store's disk is full: the write was not applied; reads still work.
    #[error("storage full: {0}")]
    Full(String),
    /// Too many operations are waiting: not applied; retry in a moment.
    #[error("storage overloaded: {0}")]
    Overloaded(String),
    /// The write was sent but its outcome is unknown (timed out or the
    /// connection broke before the answer): it may have been applied.
    #[error("storage timeout: {0}")]
    OutcomeUnknown(String),
    /// The idempotency key was used before with a different body.
    #[error("idempotency key {key:?} was used for import {import} with a different body")]
    KeyReused {
        /// The key.
        key: String,
        /// The import stored under it.
        import: ImportId,
    },
    /// Anything else: a bug or a broken store.
    #[error("storage failure: {0}")]
    Internal(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

impl StorageError {
    /// Wraps a backend-specific failure.
    pub fn internal(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StorageError::Internal(Arc::from(error.into()))
    }
}

/// The operations the service needs from a store. Every write is atomic and
/// durable once it returns `Ok`.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Stores a validated, symmetric import in one transaction, with the
    /// upload's name and digest, and returns its new id. With an idempotency
    /// key already stored: the same body gets the import stored then (nothing
    /// new is stored, whatever the name), another body `KeyReused`.
    async fn create_import(
        &self,
        citizens: Vec<Citizen>,
        upload: Upload,
    ) -> Result<ImportId, StorageError>;

    /// Applies a patch in one transaction, mirroring a new relatives list onto
    /// the other citizens, and returns the updated citizen with the import's
    /// version after this write (the version before it plus one).
    ///
    /// What it writes, or why it writes nothing, is decided by
    /// `domain::patch::plan`, which states the rules and the order of
    /// refusals: no such import → `ImportNotFound`; no such citizen →
    /// `CitizenNotFound`; then the plan's refusals, answered by `refused`
    /// (an unknown added relative → `Invalid`, a missing dropped one →
    /// `Internal`). On any of them nothing is written. SQLite and PostgreSQL
    /// read what the plan needs and apply its rows; Tarantool's Lua makes
    /// the same decisions in its transaction (`tarantool/app.lua`), held to
    /// the plan by the storage contract suite (`tests/api/contract.rs`).
    async fn patch_citizen(
        &self,
        import: ImportId,
        citizen: CitizenId,
        patch: CitizenPatch,
    ) -> Result<Patched, StorageError>;

    /// [`Storage::patch_citizen`], given the import's citizens as held in
    /// memory: a store may plan the PATCH from them rather than read them,
    /// if it finds, under the import's lock, that it is still at
    /// `held.version` (else it reads, as without them). The same answer
    /// either way. By default they are not used.
    async fn patch_citizen_held(
        &self,
        import: ImportId,
        citizen: CitizenId,
        patch: CitizenPatch,
        held: HeldCopy,
    ) -> Result<Patched, StorageError> {
        drop(held);
        self.patch_citizen(import, citizen, patch).await
    }

    /// All citizens of an import ordered by citizen_id, relatives ascending,
    /// with the import's version at that moment.
    async fn citizens(&self, import: ImportId) -> Result<Snapshot, StorageError>;

    /// Up to `limit` citizens of an import with ids above `after` (from the
    /// first if `None`), ordered by citizen_id, relatives ascending: one page
    /// of `citizens`, read by the primary key, so its cost is the page's, not
    /// the import's. `ImportNotFound` for an unknown import.
    async fn citizens_page(
        &self,
        import: ImportId,
        after: Option<CitizenId>,
        limit: usize,
    ) -> Result<Vec<std::sync::Arc<Citizen>>, StorageError>;

    /// GET birthdays of an import from the presents rows the store keeps
    /// (`domain::summary`), with the import's version in the same read:
    /// its cost is the answer's, not the import's.
    async fn presents(&self, import: ImportId) -> Result<(Version, Birthdays), StorageError>;

    /// Each town's birth dates as the store keeps them (`domain::summary`),
    /// ordered by town (code point order), with the import's version in the
    /// same read: a cost bounded by towns × calendar days, not by the import.
    /// Only the percentiles are asked of them, so a store may answer each
    /// town's `summary::picked` instead (PostgreSQL and Tarantool do: a few
    /// bytes a town).
    async fn town_dates(&self, import: ImportId)
    -> Result<(Version, Vec<TownDates>), StorageError>;

    /// The import's current version: it grows with every write to the import,
    /// so a cached answer computed at the same version is still exact.
    async fn import_version(&self, import: ImportId) -> Result<Version, StorageError>;

    /// Up to `limit` imports, newest first, all older than `before` if given,
    /// only those uploaded with `digest` if given (found by an index).
    async fn list_imports(
        &self,
        limit: usize,
        before: Option<ImportId>,
        digest: Option<[u8; 32]>,
    ) -> Result<Vec<ImportInfo>, StorageError>;

    /// Deletes an import and all its citizens (and its idempotency key):
    /// from the moment it returns `Ok`, nothing of it is readable, and a
    /// PATCH of it either completed before or gets `ImportNotFound`.
    async fn delete_import(&self, import: ImportId) -> Result<(), StorageError>;

    /// How many imports and citizens the store holds (cheap: no citizen is read).
    async fn totals(&self) -> Result<(u64, u64), StorageError>;

    /// Answers `Ok` when the store answers and takes writes; `Full` when it
    /// answers but its disk is full (checked by a real write after a write
    /// failed for lack of space).
    async fn health(&self) -> Result<(), StorageError>;

    /// Finishes queued work and closes the store; later calls answer `Unavailable`.
    async fn close(&self);
}

/// What a PATCH its plan refused answers (`domain::patch`): an unknown
/// added relative is the client's mistake, a missing dropped one a broken
/// store.
pub(crate) fn refused(import: ImportId, citizen: CitizenId, refusal: Refusal) -> StorageError {
    match refusal {
        Refusal::UnknownRelative(other) => StorageError::Invalid(ValidationError::new(
            "relatives",
            Some(citizen),
            Reason::UnknownRelative(other),
        )),
        Refusal::MissingRelative(other) => missing_relative(import, citizen, other),
    }
}

/// A PATCH found the stored relation broken: `citizen` lists `relative`,
/// which is not in the import.
fn missing_relative(
    import: ImportId,
    citizen: CitizenId,
    relative: impl std::fmt::Display,
) -> StorageError {
    StorageError::internal(format!(
        "import {import}: citizen {citizen} lists relative {relative}, which is not stored (the relation is broken; nothing was changed)"
    ))
}
