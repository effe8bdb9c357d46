//! Cached response bodies of the read endpoints, per import.
//!
//! Reads far outnumber writes, and a 10,000-citizen answer costs tens of
//! milliseconds to rebuild but microseconds to copy. Every entry carries the
//! import version it was computed from, and every request first asks storage
//! for the current version (one indexed lookup), so an entry is served only
//! while no write — from this or any other app instance — has touched the
//! import since. Percentile entries are also keyed by the UTC day, since ages
//! change at midnight. The cache is bounded by total body bytes (LRU-like
//! eviction, `quick_cache`).

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

type Key = (ImportId, View);
type Entry = (Version, Bytes);

#[derive(Clone)]
struct BodyBytes;

impl Weighter<Key, Entry> for BodyBytes {
    fn weight(&self, _key: &Key, value: &Entry) -> u64 {
        // Never zero: an empty body still takes a slot.
        value.1.len() as u64 + 64
    }
}

/// Response bodies by import and view, bounded in bytes.
pub struct ResponseCache {
    entries: Option<Cache<Key, Entry, BodyBytes>>,
}

impl ResponseCache {
    /// A cache holding at most `max_bytes` of bodies; 0 disables caching.
    pub fn new(max_bytes: u64) -> Self {
        let entries = (max_bytes > 0).then(|| {
            // Each shard holds a quarter of the budget, so one big import's
            // answer (23 MiB for 100,000 citizens) still fits; reads take a
            // shard's lock only briefly, so few shards do not contend.
            let options = OptionsBuilder::new()
                .estimated_items_capacity(1024)
                .weight_capacity(max_bytes)
                .shards(4)
                .build()
                .expect("valid cache options");
            Cache::with_options(options, BodyBytes, Default::default(), Default::default())
        });
        Self { entries }
    }

    /// The body for `view` of `import` if it was computed at `version`.
    pub fn get(&self, import: ImportId, view: View, version: Version) -> Option<Bytes> {
        let (cached, body) = self.entries.as_ref()?.get(&(import, view))?;
        (cached == version).then_some(body)
    }

    /// Remembers a body computed at `version`.
    pub fn insert(&self, import: ImportId, view: View, version: Version, body: Bytes) {
        if let Some(entries) = &self.entries {
            entries.insert((import, view), (version, body));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_served_only_at_its_version() {
        let cache = ResponseCache::new(1 << 20);
        cache.insert(1, View::Citizens, 3, Bytes::from_static(b"v3"));
        assert_eq!(cache.get(1, View::Citizens, 3).as_deref(), Some(&b"v3"[..]));
        assert_eq!(cache.get(1, View::Citizens, 4), None, "newer version");
        assert_eq!(cache.get(1, View::Birthdays, 3), None, "other view");
        assert_eq!(cache.get(2, View::Citizens, 3), None, "other import");
    }

    #[test]
    fn percentiles_of_another_day_are_not_served() {
        let cache = ResponseCache::new(1 << 20);
        cache.insert(1, View::Percentiles(100), 1, Bytes::from_static(b"[]"));
        assert!(cache.get(1, View::Percentiles(100), 1).is_some());
        assert!(cache.get(1, View::Percentiles(101), 1).is_none());
    }

    #[test]
    fn the_cache_stays_within_its_byte_budget() {
        let cache = ResponseCache::new(64 * 1024);
        for import in 0..100 {
            cache.insert(import, View::Citizens, 1, Bytes::from(vec![b'x'; 4096]));
        }
        let kept = (0..100)
            .filter(|&i| cache.get(i, View::Citizens, 1).is_some())
            .count();
        assert!(kept > 0 && kept * 4096 <= 64 * 1024, "kept {kept}");
    }

    #[test]
    fn a_zero_budget_disables_caching() {
        let cache = ResponseCache::new(0);
        cache.insert(1, View::Citizens, 1, Bytes::from_static(b"x"));
        assert!(cache.get(1, View::Citizens, 1).is_none());
    }
}
