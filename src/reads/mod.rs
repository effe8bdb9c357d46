//! The reads layer: the one way from the edge to the store.
//!
//! It owns the read cache's protocol. Every write goes through it, and a
//! write moves or forgets what the cache holds of its import before it
//! answers: no handler can forget to. And it owns the read policy: a
//! cached body; else rendered from the import's citizens held in memory at
//! this version; else, for the analytics, from the summary the store keeps
//! (`domain::summary`); else from the citizens loaded from the store — at
//! most `render_permits` at once, which bounds the memory of cold reads of
//! big imports. The HTTP edge keeps the status, the headers (ETag, 304,
//! the encoding's name) and the mapping of errors to answers.
//!
//! - [`cache`]: the cache itself: bodies and import copies in one byte
//!   budget (`budget.rs`), the snapshot version rule (`mod.rs`), the
//!   aggregates and listing index kept with a copy (`derived.rs`).
//! - [`listing`]: GET citizens rendered whole, spliced after a PATCH, or
//!   streamed.
//! - [`body`]: `{"data": …}`, compacted and gzipped bodies.
//!
//! The bodies are rendered here, not at the edge, because the cache keeps
//! them and splices them after a PATCH (the listing, the birthdays' months).

use std::error::Error;
use std::sync::Arc;

use axum::body::Bytes;
use tokio::sync::Semaphore;

use crate::domain::order::{OrderBuilder, SortKey};
use crate::domain::{Citizen, CitizenId, CitizenPatch, ImportId, summary};
use crate::storage::{ImportInfo, Patched, Storage, StorageError, Upload, Version};
use body::{compact, to_data};
use cache::{CitizenList, Encoding, Held, ResponseCache, View};

pub mod body;
pub mod cache;
pub mod listing;

/// Reads by id sent to the store at once (`citizens_by_id`).
const BY_ID_AT_ONCE: usize = 16;

/// Citizens per read of the store when an order is built.
const ORDER_READ: usize = 5_000;

/// Bodies at least this long are sent gzip-compressed to clients that accept it.
const COMPRESS_FROM: usize = 1024;

/// The store behind the read cache.
pub struct Reads {
    storage: Arc<dyn Storage>,
    cache: Arc<ResponseCache>,
    render_permits: Semaphore,
}

/// Why a read has no answer: the store's (a refusal, or a failure the edge
/// maps to its status), or a fault of this service (a render that failed, a
/// task that panicked).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// What the store answered.
    #[error(transparent)]
    Store(#[from] StorageError),
    /// A fault of the service; the cause is for the log only.
    #[error("internal error")]
    Internal(#[source] Box<dyn Error + Send + Sync>),
}

impl ReadError {
    fn internal(error: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self::Internal(error.into())
    }
}

impl From<tokio::task::JoinError> for ReadError {
    fn from(error: tokio::task::JoinError) -> Self {
        Self::internal(error)
    }
}

impl From<tokio::sync::AcquireError> for ReadError {
    fn from(error: tokio::sync::AcquireError) -> Self {
        Self::internal(error)
    }
}

/// A read endpoint's answer.
pub enum Answer {
    /// The whole body, gzipped or not.
    Body(Bytes, bool),
    /// An answer too big to be worth caching, rendered as it is sent (with
    /// whether it is gzipped).
    Stream(Box<listing::Chunks>, bool),
}

impl Reads {
    /// The layer over `storage`, with `cache`; `render_permits` cold renders
    /// at once.
    pub fn new(
        storage: Arc<dyn Storage>,
        cache: Arc<ResponseCache>,
        render_permits: usize,
    ) -> Self {
        Self {
            storage,
            cache,
            render_permits: Semaphore::new(render_permits),
        }
    }

    /// Stores an import (nothing cached can be of it yet).
    pub async fn create_import(
        &self,
        citizens: Vec<Citizen>,
        upload: Upload,
    ) -> Result<ImportId, StorageError> {
        self.storage.create_import(citizens, upload).await
    }

    /// Applies a PATCH (handing the store the import's copy held in memory,
    /// to plan from if it is current), then moves that copy to the new
    /// version (before answering: a read right after finds it moved).
    pub async fn patch_citizen(
        &self,
        import: ImportId,
        citizen: CitizenId,
        patch: CitizenPatch,
    ) -> Result<Patched, StorageError> {
        let patched = match self.cache.held_copy(import) {
            Some(held) => {
                self.storage
                    .patch_citizen_held(import, citizen, patch, held)
                    .await?
            }
            None => self.storage.patch_citizen(import, citizen, patch).await?,
        };
        self.cache.after_patch(import, &patched).await;
        Ok(patched)
    }

    /// Deletes an import, then forgets everything cached of it.
    pub async fn delete_import(&self, import: ImportId) -> Result<(), StorageError> {
        self.storage.delete_import(import).await?;
        self.cache.forget(import);
        Ok(())
    }

    /// A page of an import's citizens, from the store (by its primary key:
    /// the page's cost, whatever the import's size; never cached).
    pub async fn citizens_page(
        &self,
        import: ImportId,
        after: Option<CitizenId>,
        limit: usize,
    ) -> Result<Vec<Arc<Citizen>>, StorageError> {
        self.storage.citizens_page(import, after, limit).await
    }

    /// The citizens of the import with these ids, in their order, leaving out
    /// ids it does not have: from the copy held in memory at `version` if
    /// there is one (no read of the store), else read by id,
    /// `BY_ID_AT_ONCE` reads at a time.
    pub async fn citizens_by_id(
        &self,
        import: ImportId,
        version: Option<Version>,
        ids: &[CitizenId],
    ) -> Result<Vec<Arc<Citizen>>, StorageError> {
        if let Some(held) = version.and_then(|v| self.cache.snapshot(import, v)) {
            let citizens = held.citizens();
            return Ok(ids
                .iter()
                .filter_map(|&id| {
                    let at = citizens.binary_search_by_key(&id, |c| c.citizen_id).ok()?;
                    Some(Arc::clone(&citizens[at]))
                })
                .collect());
        }
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BY_ID_AT_ONCE) {
            let reads = chunk.iter().map(|&id| async move {
                // The page after the id before it: one read by the primary key.
                let before = id
                    .get()
                    .checked_sub(1)
                    .and_then(|b| CitizenId::parse(b).ok());
                let page = self.storage.citizens_page(import, before, 1).await?;
                Ok::<_, StorageError>(page.into_iter().find(|c| c.citizen_id == id))
            });
            found.extend(
                futures_util::future::try_join_all(reads)
                    .await?
                    .into_iter()
                    .flatten(),
            );
        }
        Ok(found)
    }

    /// The import list (never cached).
    pub async fn list_imports(
        &self,
        limit: usize,
        before: Option<ImportId>,
        digest: Option<[u8; 32]>,
    ) -> Result<Vec<ImportInfo>, StorageError> {
        self.storage.list_imports(limit, before, digest).await
    }

    /// The store's health.
    pub async fn health(&self) -> Result<(), StorageError> {
        self.storage.health().await
    }

    /// How many imports and citizens are stored.
    pub async fn totals(&self) -> Result<(u64, u64), StorageError> {
        self.storage.totals().await
    }

    /// Bytes the read cache holds.
    pub fn cache_bytes(&self) -> u64 {
        self.cache.bytes()
    }

    /// The import's current version: what a cached answer is checked against.
    pub async fn import_version(&self, import: ImportId) -> Result<Version, StorageError> {
        self.storage.import_version(import).await
    }

    /// The answer of `view` at `version` (or newer, if a write just landed: a
    /// newer answer is never stale), by the read policy above; gzipped when
    /// the client accepts it and it is long enough.
    pub async fn answer(
        &self,
        import: ImportId,
        view: View,
        version: Version,
        accepts_gzip: bool,
    ) -> Result<Answer, ReadError> {
        let rendered = self
            .cache
            .get_or_render(import, view, version, Encoding::Identity, async {
                let _permit = self
                    .render_permits
                    .acquire()
                    .await
                    .map_err(ReadError::from)?;
                enum Source {
                    Held(Held),
                    Loaded(crate::storage::Snapshot),
                }
                let source = match self.cache.snapshot(import, version) {
                    Some(held) => Source::Held(held),
                    None => match self.summary_answer(import, view).await? {
                        Some(body) => return Ok(body),
                        None => Source::Loaded(
                            self.storage
                                .citizens(import)
                                .await
                                .map_err(ReadError::from)?,
                        ),
                    },
                };
                let cache = Arc::clone(&self.cache);
                // Wrapping a loaded import and weighing it for the cache walk every
                // citizen: done with the render, off the async worker threads.
                let body = tokio::task::spawn_blocking(move || {
                    let held = match source {
                        Source::Held(held) => held,
                        Source::Loaded(loaded) => {
                            let citizens: CitizenList = Arc::new(loaded.citizens);
                            cache.keep_snapshot(import, loaded.version, citizens)
                        }
                    };
                    if view == View::Citizens
                        && cache.streams(listing::estimated_len(held.citizens()))
                    {
                        return Err(Miss::Stream(
                            Box::new(listing::Chunks::new(held.list(), accepts_gzip)),
                            accepts_gzip,
                        ));
                    }
                    render(&cache, import, view, &held).map_err(Miss::Failed)
                })
                .await
                .map_err(ReadError::from)??;
                Ok::<_, Miss>(body)
            })
            .await;
        let body = match rendered {
            Ok(body) => body,
            Err(Miss::Failed(e)) => return Err(e),
            Err(Miss::Stream(chunks, gzip)) => return Ok(Answer::Stream(chunks, gzip)),
        };
        let gzip = body.len() >= COMPRESS_FROM && accepts_gzip;
        if !gzip {
            return Ok(Answer::Body(body, false));
        }
        let body = self
            .cache
            .get_or_render(import, view, version, Encoding::Gzip, async {
                tokio::task::spawn_blocking(move || body::gzip(&body))
                    .await
                    .map_err(ReadError::from)
            })
            .await?;
        Ok(Answer::Body(body, true))
    }

    /// The import's citizens at `version` sorted by `sort`, with their search
    /// texts (`domain::order`, encoded): cached, else built from the copy
    /// held in memory or from the store read page by page (each read short,
    /// so no read holds the store long), then sorted off the async worker
    /// threads. A PATCH landing during the reads shows in the rows read
    /// after it: each citizen is placed as of `version` or newer.
    pub async fn order(
        &self,
        import: ImportId,
        sort: SortKey,
        version: Version,
    ) -> Result<Bytes, ReadError> {
        self.cache
            .get_or_build_order(import, sort, version, async {
                let _permit = self.render_permits.acquire().await?;
                let mut builder = OrderBuilder::new(sort);
                if let Some(held) = self.cache.snapshot(import, version) {
                    let built = tokio::task::spawn_blocking(move || {
                        for c in held.citizens() {
                            builder.push(c);
                        }
                        builder.finish()
                    });
                    return built.await?.map(Bytes::from).map_err(ReadError::internal);
                }
                let mut after = None;
                loop {
                    let page = self
                        .storage
                        .citizens_page(import, after, ORDER_READ)
                        .await?;
                    for c in &page {
                        builder.push(c);
                    }
                    if page.len() < ORDER_READ {
                        break;
                    }
                    after = page.last().map(|c| c.citizen_id);
                }
                let built = tokio::task::spawn_blocking(move || builder.finish());
                built.await?.map(Bytes::from).map_err(ReadError::internal)
            })
            .await
    }

    /// An analytics answer from the summary the store keeps (`domain::summary`):
    /// the read costs the answer, not the import. `None` for GET citizens.
    async fn summary_answer(
        &self,
        import: ImportId,
        view: View,
    ) -> Result<Option<Bytes>, ReadError> {
        let render: Box<dyn FnOnce() -> Result<Bytes, ReadError> + Send> = match view {
            View::Citizens => return Ok(None),
            View::Birthdays => {
                let (_, birthdays) = self.storage.presents(import).await?;
                Box::new(move || {
                    to_data(&birthdays)
                        .map(compact)
                        .map_err(ReadError::internal)
                })
            }
            View::Percentiles(day) => {
                let (_, towns) = self.storage.town_dates(import).await?;
                let today = time::Date::from_julian_day(day).map_err(ReadError::internal)?;
                Box::new(move || {
                    let answer = summary::percentiles(&towns, today).ok_or_else(|| {
                        ReadError::internal(format!(
                            "import {import}: a stored town's dates are corrupt"
                        ))
                    })?;
                    to_data(&answer).map(compact).map_err(ReadError::internal)
                })
            }
        };
        tokio::task::spawn_blocking(render).await?.map(Some)
    }
}

/// Why a render has no body to cache: a failure, or an answer too big to
/// be worth caching, streamed instead (with whether it is gzipped).
enum Miss {
    Failed(ReadError),
    Stream(Box<listing::Chunks>, bool),
}

impl From<ReadError> for Miss {
    fn from(e: ReadError) -> Self {
        Self::Failed(e)
    }
}

/// The body of `view` from the import's copy held in memory: the listing
/// (spliced from the last one after PATCHes), the birthdays (from the
/// months kept), or the percentiles of the view's day.
fn render(
    cache: &ResponseCache,
    import: ImportId,
    view: View,
    held: &Held,
) -> Result<Bytes, ReadError> {
    match view {
        View::Citizens => cache.listing(import, held),
        View::Birthdays => held.birthdays_body(),
        View::Percentiles(day) => {
            let today = time::Date::from_julian_day(day).map_err(ReadError::internal)?;
            to_data(&held.percentiles(today)).map(compact)
        }
    }
    .map_err(ReadError::internal)
}
