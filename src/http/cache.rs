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

use std::future::Future;

use axum::body::Bytes;
use quick_cache::sync::Cache;
use quick_cache::{OptionsBuilder, Weighter};

use crate::domain::ImportId;
use crate::storage::Version;

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

/// Response bodies by import, view and version, bounded in bytes.
pub struct ResponseCache {
    entries: Option<Cache<Key, Bytes, BodyBytes>>,
}

impl ResponseCache {
    /// A cache holding at most `max_bytes` of bodies; 0 disables caching.
    pub fn new(max_bytes: u64) -> Self {
        let entries = (max_bytes > 0).then(|| {
            // One shard, so a single answer may use the whole budget (a
            // 1,000,000-citizen listing is 235 MiB); a hit holds the shard's
            // read lock only to clone a `Bytes`.
            let options = OptionsBuilder::new()
                .estimated_items_capacity(1024)
                .weight_capacity(max_bytes)
                .shards(1)
                .build()
                .expect("valid cache options");
            Cache::with_options(options, BodyBytes, Default::default(), Default::default())
        });
        Self { entries }
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
        let body = entries
            .get_or_insert_async(&(import, view, version), render)
            .await?;
        // Versions grow by one per write, so the answer just replaced is
        // usually the previous version's: drop it now rather than let it
        // wait for eviction (older ones age out).
        if let Some(previous) = version.checked_sub(1) {
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
