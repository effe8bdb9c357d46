//! Cached response bodies of the read endpoints, per import and version.
//!
//! Reads far outnumber writes, and a 10,000-citizen answer costs tens of
//! milliseconds to rebuild but microseconds to copy. Entries are keyed by the
//! import's version, and every request first asks storage for the current
//! version (one indexed lookup), so an entry is served only while no write —
//! from this or any other app instance — has touched the import since; entries
//! of older versions are never asked for again: the previous version's is
//! dropped when the new one is rendered, others age out. Percentile entries
//! are also keyed by the UTC day, since ages change at midnight.
//!
//! Concurrent misses on the same key render once: the others wait for that
//! body (single flight), so a burst of reads of a just-changed big import
//! costs one load, not one per request. The cache is bounded by total body
//! bytes (`quick_cache`, which also provides the single flight).
//!
//! Beside the bodies it keeps each import's citizens as last loaded (a
//! snapshot, with its version). A PATCH made through this instance moves the
//! snapshot forward in memory (`domain::relatives::after_patch`) when the
//! snapshot is exactly one version behind the write — then no other write
//! came in between — so the next read re-renders without going to storage.
//! Any other version gap means the snapshot is simply not used.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use quick_cache::sync::Cache;
use quick_cache::{OptionsBuilder, Weighter};

use crate::domain::relatives::after_patch;
use crate::domain::{Citizen, ImportId};
use crate::storage::Version;

/// An import's citizens in memory, ordered by citizen_id; untouched citizens
/// are shared between versions.
pub type Citizens = Arc<Vec<Arc<Citizen>>>;

/// A snapshot, its version and its estimated size in bytes.
type SnapshotEntry = (Version, Citizens, u64);

/// Which answer of an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    /// GET citizens.
    Citizens,
    /// GET birthdays.
    Birthdays,
    /// GET percentiles on the given UTC day (Julian day number).
    Percentiles(i32),
}

type Key = (ImportId, View, Version);

#[derive(Clone)]
struct BodyBytes;

impl Weighter<Key, Bytes> for BodyBytes {
    fn weight(&self, _key: &Key, body: &Bytes) -> u64 {
        // Never zero: an empty body still takes a slot.
        body.len() as u64 + 64
    }
}

#[derive(Clone)]
struct SnapshotBytes;

impl Weighter<ImportId, SnapshotEntry> for SnapshotBytes {
    fn weight(&self, _key: &ImportId, entry: &SnapshotEntry) -> u64 {
        entry.2
    }
}

/// Estimated heap size of a snapshot: per citizen its struct, its strings and
/// its relatives.
fn snapshot_bytes(citizens: &[Arc<Citizen>]) -> u64 {
    citizens
        .iter()
        .map(|c| {
            let strings = c.town.as_str().len()
                + c.street.as_str().len()
                + c.building.as_str().len()
                + c.name.as_str().len();
            (std::mem::size_of::<Citizen>() + 32 + strings + 8 * c.relatives.len()) as u64
        })
        .sum::<u64>()
        + 64
}

/// Response bodies by import, view and version, and the citizens they were
/// rendered from; each part bounded in bytes.
pub struct ResponseCache {
    entries: Option<Cache<Key, Bytes, BodyBytes>>,
    snapshots: Option<Cache<ImportId, SnapshotEntry, SnapshotBytes>>,
}

/// One shard, so a single value may use the whole budget; a hit holds the
/// shard's read lock only to clone an `Arc` or a `Bytes`.
fn one_shard(max_bytes: u64) -> quick_cache::Options {
    OptionsBuilder::new()
        .estimated_items_capacity(1024)
        .weight_capacity(max_bytes)
        .shards(1)
        .build()
        .expect("valid cache options")
}

impl ResponseCache {
    /// A cache holding at most `max_bytes` of bodies and, separately, at
    /// most `max_bytes` of snapshots; 0 disables both.
    pub fn new(max_bytes: u64) -> Self {
        let enabled = max_bytes > 0;
        Self {
            entries: enabled.then(|| {
                Cache::with_options(
                    one_shard(max_bytes),
                    BodyBytes,
                    Default::default(),
                    Default::default(),
                )
            }),
            snapshots: enabled.then(|| {
                Cache::with_options(
                    one_shard(max_bytes),
                    SnapshotBytes,
                    Default::default(),
                    Default::default(),
                )
            }),
        }
    }

    /// The import's citizens at exactly `version`, if held.
    pub fn snapshot(&self, import: ImportId, version: Version) -> Option<Citizens> {
        let (held, citizens, _) = self.snapshots.as_ref()?.get(&import)?;
        (held == version).then_some(citizens)
    }

    /// Holds the import's citizens as of `version`.
    pub fn keep_snapshot(&self, import: ImportId, version: Version, citizens: Citizens) {
        if let Some(snapshots) = &self.snapshots {
            let bytes = snapshot_bytes(&citizens);
            snapshots.insert(import, (version, citizens, bytes));
        }
    }

    /// How many citizens the import's snapshot holds, if there is one.
    pub fn snapshot_len(&self, import: ImportId) -> Option<usize> {
        let (_, citizens, _) = self.snapshots.as_ref()?.get(&import)?;
        Some(citizens.len())
    }

    /// Moves the import's snapshot to `version` after this instance stored
    /// `updated` by a PATCH that produced `version`; drops it if it cannot.
    pub fn apply_patch(&self, import: ImportId, version: Version, updated: &Citizen) {
        let Some(snapshots) = &self.snapshots else {
            return;
        };
        let Some((held, citizens, bytes)) = snapshots.get(&import) else {
            return;
        };
        if held.checked_add(1) != Some(version) {
            return; // another write came in between, or the snapshot is newer
        }
        match after_patch(&citizens, updated) {
            // Sizes barely change with one citizen; keep the estimate.
            Some(next) => snapshots.insert(import, (version, Arc::new(next), bytes)),
            None => {
                snapshots.remove(&import);
            }
        }
    }

    /// The body for `view` of `import` at `version`: cached, or rendered by
    /// `render` — once, however many requests ask at the same time.
    pub async fn get_or_render<E>(
        &self,
        import: ImportId,
        view: View,
        version: Version,
        render: impl Future<Output = Result<Bytes, E>>,
    ) -> Result<Bytes, E> {
        let Some(entries) = &self.entries else {
            return render.await;
        };
        let mut rendered = false;
        let body = entries
            .get_or_insert_async(&(import, view, version), async {
                rendered = true;
                render.await
            })
            .await?;
        // Versions grow by one per write, so the answer just rendered usually
        // replaces the previous version's: drop that now rather than let it
        // wait for eviction (older ones age out). Hits skip this, so they take
        // no write lock.
        if rendered && let Some(previous) = version.checked_sub(1) {
            entries.remove(&(import, view, previous));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    async fn body(
        cache: &ResponseCache,
        import: ImportId,
        view: View,
        version: Version,
        text: &'static str,
        renders: &AtomicUsize,
    ) -> Bytes {
        cache
            .get_or_render(import, view, version, async {
                renders.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(Bytes::from_static(text.as_bytes()))
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_answer_is_rendered_once_per_version_view_and_import() {
        let cache = ResponseCache::new(1 << 20);
        let renders = AtomicUsize::new(0);
        assert_eq!(
            body(&cache, 1, View::Citizens, 3, "v3", &renders).await,
            "v3"
        );
        assert_eq!(
            body(&cache, 1, View::Citizens, 3, "other", &renders).await,
            "v3"
        );
        assert_eq!(renders.load(Ordering::SeqCst), 1);
        assert_eq!(
            body(&cache, 1, View::Citizens, 4, "v4", &renders).await,
            "v4",
            "newer version"
        );
        assert_eq!(
            body(&cache, 1, View::Birthdays, 4, "b", &renders).await,
            "b",
            "other view"
        );
        assert_eq!(
            body(&cache, 2, View::Citizens, 4, "i2", &renders).await,
            "i2",
            "other import"
        );
        assert_eq!(renders.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn percentiles_of_another_day_are_rendered_anew() {
        let cache = ResponseCache::new(1 << 20);
        let renders = AtomicUsize::new(0);
        body(&cache, 1, View::Percentiles(100), 1, "day 100", &renders).await;
        assert_eq!(
            body(&cache, 1, View::Percentiles(101), 1, "day 101", &renders).await,
            "day 101"
        );
    }

    #[tokio::test]
    async fn concurrent_misses_render_once() {
        let cache = ResponseCache::new(1 << 20);
        let renders = AtomicUsize::new(0);
        let (gate, opened) = tokio::sync::oneshot::channel::<()>();
        let first = cache.get_or_render(1, View::Citizens, 1, async {
            renders.fetch_add(1, Ordering::SeqCst);
            opened.await.ok();
            Ok::<_, Infallible>(Bytes::from_static(b"once"))
        });
        let second = async {
            tokio::task::yield_now().await;
            body(&cache, 1, View::Citizens, 1, "twice", &renders).await
        };
        let open = async {
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            gate.send(()).ok();
        };
        let (a, b, ()) = tokio::join!(first, second, open);
        assert_eq!(
            (a.unwrap(), b),
            (Bytes::from_static(b"once"), Bytes::from_static(b"once"))
        );
        assert_eq!(renders.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_byte_budget() {
        let cache = ResponseCache::new(64 * 1024);
        let renders = AtomicUsize::new(0);
        for import in 0..100 {
            cache
                .get_or_render(import, View::Citizens, 1, async {
                    Ok::<_, Infallible>(Bytes::from(vec![b'x'; 4096]))
                })
                .await
                .unwrap();
        }
        for import in 0..100 {
            body(&cache, import, View::Citizens, 1, "again", &renders).await;
        }
        let kept = 100 - renders.load(Ordering::SeqCst);
        assert!(kept > 0 && kept * 4096 <= 64 * 1024, "kept {kept}");
    }

    #[tokio::test]
    async fn a_zero_budget_renders_every_time() {
        let cache = ResponseCache::new(0);
        let renders = AtomicUsize::new(0);
        body(&cache, 1, View::Citizens, 1, "a", &renders).await;
        body(&cache, 1, View::Citizens, 1, "b", &renders).await;
        assert_eq!(renders.load(Ordering::SeqCst), 2);
    }
}
