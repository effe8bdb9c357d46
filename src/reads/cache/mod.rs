//! The read cache: rendered answers of the read endpoints and the imports'
//! citizens they are rendered from, in one memory budget (`--cache-bytes`).
//!
//! Reads far outnumber writes, and a 10,000-citizen answer costs
//! milliseconds to rebuild but microseconds to copy. The rules, all here:
//!
//! - **Bodies** are keyed by import, view and the import's *version*. Every
//!   write bumps the version by exactly one, and every request first asks
//!   the store for the current version, so a body is served only while no
//!   write — from this or any other app instance — has touched the import
//!   since. A body under version v may have been rendered from newer data
//!   (a write landed between the version check and the load): newer is never
//!   stale. Percentile bodies are also keyed by the UTC day (ages change at
//!   midnight). When version v+1's body is rendered, v's is dropped; older
//!   ones age out.
//! - **Snapshots**: each import's citizens as last loaded, with their
//!   version (one `Arc` per citizen, so versions share the citizens they did
//!   not change). A snapshot is used only on an exact version match, so a
//!   lost race costs a reload, never staleness. A PATCH through this instance
//!   moves the snapshot forward in memory ([`ResponseCache::after_patch`])
//!   only when the write produced exactly the snapshot's version plus one —
//!   then no other write came in between; any other gap drops it. The move
//!   mirrors relatives exactly as the stores do (`domain::patch::after_patch`,
//!   tested against both).
//! - **Aggregates** (`domain::analytics`): the first birthdays or
//!   percentiles read of a held snapshot builds them; a PATCH that moves the
//!   snapshot moves them by its change alone, so the next analytics answer
//!   costs its rendering, not a pass over every citizen. They hold birth
//!   dates, not ages, so midnight changes nothing in them. The birthdays
//!   answer is kept month by month, and a read renders only the months
//!   PATCHes changed since.
//! - **Listing**: the last GET citizens body is kept with where each citizen
//!   starts in it (`reads::listing`); PATCHes record which citizens they
//!   changed, and the next read splices only those in.
//! - **Sorted orders** (`domain::order`, for `?sort=`): keyed and dropped
//!   like bodies, by import, sort key and version.
//! - **One budget**: bodies, orders and snapshots share `--cache-bytes`, each
//!   weighed by the heap it really holds (allocation sizes, not JSON sizes),
//!   with LRU-like eviction (`quick_cache`). Concurrent misses on one body
//!   render once (single flight).

mod budget;
mod derived;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use quick_cache::OptionsBuilder;
use quick_cache::sync::{Cache, EntryAction, EntryResult};

use crate::domain::order::SortKey;
use crate::domain::patch::{after_patch, patch_in_place};
use crate::domain::{Citizen, ImportId};
use crate::metrics::Metrics;
use crate::reads::body::compact;
use crate::reads::listing;
use crate::storage::{HeldCopy, Patched, Version};

pub use budget::allocation;
use budget::{Entries, Evictions, HeapBytes, body_weight, snapshot_weight};
pub use derived::Held;
use derived::{ListingIndex, SharedDerived, lock, move_derived, move_derived_from};

/// An import's citizens in memory, ordered by citizen_id; untouched citizens
/// are shared between versions.
pub type CitizenList = Arc<Vec<Arc<Citizen>>>;

/// Snapshots up to this many citizens are moved forward on the async thread
/// (tens of microseconds); bigger ones on a blocking thread.
const INLINE_SNAPSHOT_UPDATE: usize = 20_000;

/// Answers up to this long are rendered whole even with the cache off.
pub const STREAM_FROM: u64 = 1024 * 1024;

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

/// How a body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// As rendered.
    Identity,
    /// gzip-compressed.
    Gzip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Body(ImportId, View, Version, Encoding),
    Snapshot(ImportId),
    Order(ImportId, SortKey, Version),
}

/// A cached value and the bytes of heap it holds.
#[derive(Clone)]
enum Entry {
    Body(Bytes, u64),
    Snapshot(Snapshot),
}

/// An import's citizens at one version.
#[derive(Clone)]
struct Snapshot {
    version: Version,
    citizens: CitizenList,
    derived: SharedDerived,
    /// The citizens' weight (`snapshot_weight`), and it plus a kept listing's.
    citizens_weight: u64,
    weight: u64,
}

/// Rendered bodies and the citizens they come from, within one byte budget.
pub struct ResponseCache {
    entries: Option<Entries>,
    metrics: Arc<Metrics>,
}

impl ResponseCache {
    /// A cache holding at most `max_bytes` of bodies and snapshots together
    /// (0 disables it), counting its hits, misses and evictions in `metrics`.
    pub fn new(max_bytes: u64, metrics: Arc<Metrics>) -> Self {
        // One shard, so a single value may use the whole budget; a hit holds
        // the shard's read lock only to clone an `Arc` or a `Bytes`.
        let options = OptionsBuilder::new()
            .estimated_items_capacity(1024)
            .weight_capacity(max_bytes)
            .shards(1)
            .build()
            .expect("valid cache options");
        let evictions = Evictions(metrics.cache_evictions.clone());
        Self {
            entries: (max_bytes > 0).then(|| {
                Cache::with_options(
                    options,
                    HeapBytes,
                    quick_cache::DefaultHashBuilder::default(),
                    evictions,
                )
            }),
            metrics,
        }
    }

    /// Whether an answer of about `len` bytes is streamed rather than
    /// rendered whole and kept: when it would take over a quarter of the
    /// budget (it would push out much of the rest for one import), or, with
    /// the cache off, when it is over [`STREAM_FROM`]. A streamed answer
    /// costs a chunk of memory, not its size.
    pub fn streams(&self, len: usize) -> bool {
        let capacity = self.entries.as_ref().map_or(0, Entries::capacity);
        len as u64 > (capacity / 4).max(STREAM_FROM)
    }

    /// Bytes held, by the weights.
    pub fn bytes(&self) -> u64 {
        self.entries.as_ref().map_or(0, Entries::weight)
    }

    /// The import's citizens at exactly `version`, if held.
    pub fn snapshot(&self, import: ImportId, version: Version) -> Option<Held> {
        let found = match self.entries.as_ref()?.get(&Key::Snapshot(import)) {
            Some(Entry::Snapshot(s)) if s.version == version => Some(Held {
                version,
                citizens: s.citizens,
                derived: Some(s.derived),
            }),
            _ => None,
        };
        self.metrics.cache_lookup("snapshot", found.is_some());
        found
    }

    /// The import's citizens as held, at whatever version: what a PATCH
    /// may be planned from (the store checks the version under its lock).
    pub fn held_copy(&self, import: ImportId) -> Option<HeldCopy> {
        match self.entries.as_ref()?.get(&Key::Snapshot(import))? {
            Entry::Snapshot(s) => Some(HeldCopy {
                version: s.version,
                citizens: s.citizens,
            }),
            Entry::Body(..) => None,
        }
    }

    /// Holds the import's citizens as of `version`, unless a newer snapshot
    /// is already held (two loads racing: the older must not win); what to
    /// render from, either way.
    pub fn keep_snapshot(&self, import: ImportId, version: Version, citizens: CitizenList) -> Held {
        let Some(entries) = &self.entries else {
            return Held::loaded(version, citizens);
        };
        if let Some(Entry::Snapshot(held)) = entries.get(&Key::Snapshot(import))
            && held.version > version
        {
            return Held::loaded(version, citizens);
        }
        let weight = snapshot_weight(&citizens);
        let derived = SharedDerived::default();
        entries.insert(
            Key::Snapshot(import),
            Entry::Snapshot(Snapshot {
                version,
                citizens: Arc::clone(&citizens),
                derived: Arc::clone(&derived),
                citizens_weight: weight,
                weight,
            }),
        );
        Held {
            version,
            citizens,
            derived: Some(derived),
        }
    }

    /// After a PATCH through this instance produced `patched`: moves the
    /// import's snapshot to the new version when it is exactly one behind,
    /// else drops it. Big snapshots are moved on a blocking thread (a list
    /// a reader holds is copied: one pointer per citizen).
    pub async fn after_patch(self: &Arc<Self>, import: ImportId, patched: &Patched) {
        let Some(len) = self.snapshot_len(import) else {
            return;
        };
        if len <= INLINE_SNAPSHOT_UPDATE {
            self.apply_patch(import, patched.version, &patched.citizen);
            return;
        }
        let (cache, version, citizen) =
            (Arc::clone(self), patched.version, patched.citizen.clone());
        let moved =
            tokio::task::spawn_blocking(move || cache.apply_patch(import, version, &citizen)).await;
        // The write is stored; a snapshot that did not move only costs a reload.
        if let Err(e) = moved {
            tracing::error!(error = %e, "moving the import snapshot failed");
        }
    }

    fn snapshot_len(&self, import: ImportId) -> Option<usize> {
        match self.entries.as_ref()?.get(&Key::Snapshot(import))? {
            Entry::Snapshot(s) => Some(s.citizens.len()),
            Entry::Body(..) => None,
        }
    }

    /// The snapshot rule: a write that produced `version` moves a snapshot at
    /// `version - 1`; any other snapshot is dropped (it is either behind by
    /// more than the write, or this write raced with another). The list is
    /// moved in place, under the cache shard's lock, when no reader holds
    /// it: the PATCHed citizen and its mirrored relatives replaced, nothing
    /// else touched. Copying a pointer per citizen (and later dropping the
    /// old list, one per citizen again) cost a PATCH of a 10,000-citizen
    /// import about 0.1 ms of CPU and more in cache misses. A list a reader
    /// holds is copied, outside the lock, as before.
    fn apply_patch(&self, import: ImportId, version: Version, updated: &Citizen) {
        let Some(entries) = &self.entries else {
            return;
        };
        let key = Key::Snapshot(import);
        let moved = entries.entry(&key, Some(std::time::Duration::ZERO), |_, entry| {
            let Entry::Snapshot(held) = entry else {
                return EntryAction::Retain(true);
            };
            if held.version >= version {
                return EntryAction::Retain(true); // a reload got there first
            }
            if held.version + 1 != version {
                return EntryAction::Remove;
            }
            let Some(list) = Arc::get_mut(&mut held.citizens) else {
                return EntryAction::Retain(false); // a reader holds it: copied below
            };
            let Ok(me) = list.binary_search_by_key(&updated.citizen_id, |c| c.citizen_id) else {
                return EntryAction::Remove;
            };
            let before = Arc::clone(&list[me]);
            if !patch_in_place(list, updated) {
                return EntryAction::Remove;
            }
            move_derived_from(&held.derived, held.version, &before, list, version, updated);
            held.version = version;
            EntryAction::Retain(true)
        });
        if matches!(moved, EntryResult::Retained(false)) {
            self.copy_patch(import, version, updated);
        }
    }

    /// [`Self::apply_patch`] on a copy of the list.
    fn copy_patch(&self, import: ImportId, version: Version, updated: &Citizen) {
        let Some(entries) = &self.entries else {
            return;
        };
        let Some(Entry::Snapshot(held)) = entries.get(&Key::Snapshot(import)) else {
            return;
        };
        if held.version >= version {
            return; // already at (or past) this write: a reload got there first
        }
        let next = (held.version + 1 == version)
            .then(|| after_patch(&held.citizens, updated))
            .flatten();
        match next {
            // Sizes barely change with one citizen; keep the weight.
            Some(next) => {
                move_derived(&held, &next, version, updated);
                entries.insert(
                    Key::Snapshot(import),
                    Entry::Snapshot(Snapshot {
                        version,
                        citizens: Arc::new(next),
                        derived: held.derived,
                        citizens_weight: held.citizens_weight,
                        weight: held.weight,
                    }),
                );
            }
            None => {
                entries.remove(&Key::Snapshot(import));
            }
        }
    }

    /// The GET citizens body of `held`: the last one rendered with only the
    /// citizens changed since rendered again; else rendered whole, and kept
    /// for the next PATCH to splice into.
    pub fn listing(&self, import: ImportId, held: &Held) -> serde_json::Result<Bytes> {
        let Some(slot) = &held.derived else {
            return listing::render(&held.citizens).map(|r| compact(r.body));
        };
        // Read under the lock, rendered outside it: a PATCH that moves the
        // slot meanwhile is not kept waiting.
        let previous = lock(slot)
            .listing
            .as_ref()
            .filter(|l| l.changed_to == held.version && l.version < held.version)
            .map(|l| {
                let changed: Vec<usize> = l.changed.iter().copied().collect();
                (l.body.clone(), Arc::clone(&l.starts), changed)
            });
        let rendered = match &previous {
            Some((body, starts, changed)) => {
                listing::splice(body, starts, &held.citizens, changed)?
            }
            None => listing::render(&held.citizens)?,
        };
        let (body, starts) = (compact(rendered.body), Arc::new(rendered.starts));
        let mut derived = lock(slot);
        // Unless a PATCH moved the slot on meanwhile: what it holds is
        // still right for the versions after.
        if derived
            .listing
            .as_ref()
            .is_none_or(|l| l.changed_to == held.version)
        {
            derived.listing = Some(ListingIndex {
                version: held.version,
                body: body.clone(),
                starts: Arc::clone(&starts),
                changed: BTreeSet::new(),
                changed_to: held.version,
            });
            drop(derived);
            self.reweigh_snapshot(import, held.version, body.len(), starts.len());
        }
        Ok(body)
    }

    /// Counts a listing kept by the slot in the weight of the snapshot at
    /// `version`, if it is still the one held. (A PATCH that moves the
    /// snapshot between the check and the insert is undone by it: the next
    /// read reloads the snapshot. A cost, never a stale answer: a snapshot
    /// is used only at its exact version.)
    fn reweigh_snapshot(&self, import: ImportId, version: Version, body: usize, starts: usize) {
        let Some(entries) = &self.entries else {
            return;
        };
        if let Some(Entry::Snapshot(held)) = entries.get(&Key::Snapshot(import))
            && held.version == version
        {
            let listing = body_weight(body) + allocation(starts * std::mem::size_of::<usize>());
            let weight = held.citizens_weight + listing;
            if weight != held.weight {
                entries.insert(
                    Key::Snapshot(import),
                    Entry::Snapshot(Snapshot { weight, ..held }),
                );
            }
        }
    }

    /// Forgets everything of a deleted import.
    pub fn forget(&self, import: ImportId) {
        if let Some(entries) = &self.entries {
            entries.retain(|key, _| match key {
                Key::Body(i, ..) | Key::Snapshot(i) | Key::Order(i, ..) => *i != import,
            });
        }
    }

    /// The body for `view` of `import` at `version`: cached, or rendered by
    /// `render` — once, however many requests ask at the same time.
    pub async fn get_or_render<E>(
        &self,
        import: ImportId,
        view: View,
        version: Version,
        encoding: Encoding,
        render: impl Future<Output = Result<Bytes, E>>,
    ) -> Result<Bytes, E> {
        let key = |version| Key::Body(import, view, version, encoding);
        self.get_or_build("body", version, key, render).await
    }

    /// The sorted order of `import` at `version` by `sort` (`domain::order`,
    /// encoded): cached, or built by `build` — once, as bodies are.
    pub async fn get_or_build_order<E>(
        &self,
        import: ImportId,
        sort: SortKey,
        version: Version,
        build: impl Future<Output = Result<Bytes, E>>,
    ) -> Result<Bytes, E> {
        let key = |version| Key::Order(import, sort, version);
        self.get_or_build("order", version, key, build).await
    }

    /// The bytes under `key(version)`, or built by `build` (single flight).
    async fn get_or_build<E>(
        &self,
        kind: &'static str,
        version: Version,
        key: impl Fn(Version) -> Key,
        build: impl Future<Output = Result<Bytes, E>>,
    ) -> Result<Bytes, E> {
        let Some(entries) = &self.entries else {
            return build.await;
        };
        let mut built = false;
        let entry = entries
            .get_or_insert_async(&key(version), async {
                built = true;
                let body = build.await?;
                let weight = body_weight(body.len());
                Ok(Entry::Body(body, weight))
            })
            .await?;
        self.metrics.cache_lookup(kind, !built);
        // Versions grow by one per write, so the bytes just built usually
        // replace the previous version's: drop those now rather than let them
        // wait for eviction (older ones age out). Hits skip this, so they take
        // no write lock.
        if built && let Some(previous) = version.checked_sub(1) {
            entries.remove(&key(previous));
        }
        match entry {
            Entry::Body(body, _) => Ok(body),
            Entry::Snapshot(_) => unreachable!("body and order keys hold bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::domain::analytics::Analytics;
    use crate::domain::stats;
    use crate::domain::{Apartment, BirthDate, CitizenId, Gender, Name, Place};

    fn id(n: i64) -> ImportId {
        ImportId::new(n).expect("a positive id")
    }

    async fn body(
        cache: &ResponseCache,
        import: ImportId,
        view: View,
        version: Version,
        text: &'static str,
        renders: &AtomicUsize,
    ) -> Bytes {
        cache
            .get_or_render(import, view, version, Encoding::Identity, async {
                renders.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(Bytes::from_static(text.as_bytes()))
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_answer_is_rendered_once_per_version_view_and_import() {
        let cache = ResponseCache::new(1 << 20, Arc::default());
        let renders = AtomicUsize::new(0);
        assert_eq!(
            body(&cache, id(1), View::Citizens, 3, "v3", &renders).await,
            "v3"
        );
        assert_eq!(
            body(&cache, id(1), View::Citizens, 3, "other", &renders).await,
            "v3"
        );
        assert_eq!(renders.load(Ordering::SeqCst), 1);
        assert_eq!(
            body(&cache, id(1), View::Citizens, 4, "v4", &renders).await,
            "v4",
            "newer version"
        );
        assert_eq!(
            body(&cache, id(1), View::Birthdays, 4, "b", &renders).await,
            "b",
            "other view"
        );
        assert_eq!(
            body(&cache, id(2), View::Citizens, 4, "i2", &renders).await,
            "i2",
            "other import"
        );
        assert_eq!(renders.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn rendering_a_version_drops_the_previous_versions_body() {
        let cache = ResponseCache::new(1 << 20, Arc::default());
        let renders = AtomicUsize::new(0);
        body(&cache, id(1), View::Citizens, 3, "v3", &renders).await;
        body(&cache, id(1), View::Citizens, 4, "v4", &renders).await;
        assert_eq!(
            body(&cache, id(1), View::Citizens, 3, "again", &renders).await,
            "again"
        );
        assert_eq!(renders.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn percentiles_of_another_day_are_rendered_anew() {
        let cache = ResponseCache::new(1 << 20, Arc::default());
        let renders = AtomicUsize::new(0);
        body(
            &cache,
            id(1),
            View::Percentiles(100),
            1,
            "day 100",
            &renders,
        )
        .await;
        assert_eq!(
            body(
                &cache,
                id(1),
                View::Percentiles(101),
                1,
                "day 101",
                &renders
            )
            .await,
            "day 101"
        );
    }

    #[tokio::test]
    async fn concurrent_misses_render_once() {
        let cache = ResponseCache::new(1 << 20, Arc::default());
        let renders = AtomicUsize::new(0);
        let (gate, opened) = tokio::sync::oneshot::channel::<()>();
        let first = cache.get_or_render(id(1), View::Citizens, 1, Encoding::Identity, async {
            renders.fetch_add(1, Ordering::SeqCst);
            opened.await.ok();
            Ok::<_, Infallible>(Bytes::from_static(b"once"))
        });
        let second = async {
            tokio::task::yield_now().await;
            body(&cache, id(1), View::Citizens, 1, "twice", &renders).await
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
        let cache = ResponseCache::new(64 * 1024, Arc::default());
        let renders = AtomicUsize::new(0);
        for import in (1..=100).map(id) {
            cache
                .get_or_render(import, View::Citizens, 1, Encoding::Identity, async {
                    Ok::<_, Infallible>(Bytes::from(vec![b'x'; 4096]))
                })
                .await
                .unwrap();
        }
        for import in (1..=100).map(id) {
            body(&cache, import, View::Citizens, 1, "again", &renders).await;
        }
        let kept = 100 - renders.load(Ordering::SeqCst);
        assert!(
            kept > 0 && kept as u64 * body_weight(4096) <= 64 * 1024,
            "kept {kept}"
        );
    }

    #[tokio::test]
    async fn a_zero_budget_keeps_nothing() {
        let cache = ResponseCache::new(0, Arc::default());
        let renders = AtomicUsize::new(0);
        body(&cache, id(1), View::Citizens, 1, "a", &renders).await;
        body(&cache, id(1), View::Citizens, 1, "b", &renders).await;
        assert_eq!(renders.load(Ordering::SeqCst), 2);
        cache.keep_snapshot(id(1), 1, Arc::new(vec![]));
        assert!(cache.snapshot(id(1), 1).is_none());
    }

    fn citizen(id: u64, name: &str, relatives: &[u64]) -> Citizen {
        let today = time::OffsetDateTime::now_utc().date();
        Citizen {
            citizen_id: CitizenId::parse(id).unwrap(),
            town: Place::parse("Москва".into()).unwrap(),
            street: Place::parse("Улица".into()).unwrap(),
            building: Place::parse("1".into()).unwrap(),
            apartment: Apartment::parse(1).unwrap(),
            name: Name::parse(name.into()).unwrap(),
            birth_date: BirthDate::parse("01.01.2000", today).unwrap(),
            gender: Gender::parse("male").unwrap(),
            relatives: relatives
                .iter()
                .map(|r| CitizenId::parse(*r).unwrap())
                .collect(),
        }
    }

    fn names(held: &Held) -> Vec<String> {
        held.citizens()
            .iter()
            .map(|c| c.name.as_str().to_owned())
            .collect()
    }

    fn two_citizens() -> CitizenList {
        Arc::new(vec![
            Arc::new(citizen(1, "A", &[])),
            Arc::new(citizen(2, "B", &[])),
        ])
    }

    #[test]
    fn a_snapshot_moves_forward_only_on_the_next_version() {
        let cache = ResponseCache::new(1 << 20, Arc::default());
        cache.keep_snapshot(id(7), 5, two_citizens());
        // Version + 1: moved in memory.
        cache.apply_patch(id(7), 6, &citizen(1, "A2", &[]));
        assert_eq!(
            names(&cache.snapshot(id(7), 6).expect("moved")),
            ["A2", "B"]
        );
        assert!(
            cache.snapshot(id(7), 5).is_none(),
            "the old version is gone"
        );
        // Version + 2: another write came in between, the snapshot is unusable.
        cache.apply_patch(id(7), 8, &citizen(2, "B2", &[]));
        assert!(cache.snapshot(id(7), 8).is_none());
        assert!(
            cache.snapshot(id(7), 6).is_none(),
            "dropped, not kept stale"
        );
    }

    /// With no reader holding the list, a PATCH moves it in place (the same
    /// allocation, the untouched citizens not copied); a list a reader
    /// holds is copied, and the reader keeps its version unchanged.
    #[test]
    fn a_list_no_reader_holds_moves_in_place_and_a_held_one_is_copied() {
        let cache = ResponseCache::new(1 << 20, Arc::default());
        let list = two_citizens();
        let at = Arc::as_ptr(&list);
        drop(cache.keep_snapshot(id(7), 5, list));
        cache.apply_patch(id(7), 6, &citizen(1, "A2", &[2]));
        let moved = cache.snapshot(id(7), 6).expect("moved");
        assert_eq!(Arc::as_ptr(&moved.citizens), at, "moved in place");
        assert_eq!(names(&moved), ["A2", "B"]);
        assert_eq!(
            moved.citizens()[1].relatives,
            [CitizenId::parse(1).unwrap()]
        );

        // `moved` is a reader holding version 6.
        cache.apply_patch(id(7), 7, &citizen(2, "B2", &[]));
        let copied = cache.snapshot(id(7), 7).expect("moved");
        assert_ne!(Arc::as_ptr(&copied.citizens), at, "copied");
        assert_eq!(names(&copied), ["A2", "B2"]);
        assert!(copied.citizens()[0].relatives.is_empty(), "mirrored");
        assert_eq!(names(&moved), ["A2", "B"], "the reader's version stands");
        assert_eq!(
            moved.citizens()[0].relatives,
            [CitizenId::parse(2).unwrap()]
        );
    }

    #[test]
    fn aggregates_move_with_the_snapshot_and_an_older_reader_recomputes() {
        let cache = ResponseCache::new(1 << 20, Arc::default());
        let today = time::OffsetDateTime::now_utc().date();
        let v5 = cache.keep_snapshot(id(7), 5, two_citizens());
        assert_eq!(
            v5.birthdays(),
            stats::Birthdays::default(),
            "no relatives yet"
        );
        let slot = |held: &Held| {
            let slot = held.derived.as_ref().unwrap().lock().unwrap();
            slot.analytics
                .as_ref()
                .map(|(version, a)| (*version, a.clone()))
        };
        assert_eq!(slot(&v5).map(|s| s.0), Some(5), "built by the first read");
        // 1 and 2 become relatives: moved to version 6, not rebuilt.
        cache.apply_patch(id(7), 6, &citizen(1, "A", &[2]));
        let v6 = cache.snapshot(id(7), 6).expect("moved");
        let (version, moved) = slot(&v6).expect("moved with the snapshot");
        assert_eq!(version, 6);
        assert_eq!(moved, Analytics::new(v6.citizens()));
        assert_eq!(v6.birthdays(), stats::birthdays(v6.citizens()));
        assert_eq!(v6.birthdays().0[0].len(), 2, "both buy in January");
        assert_eq!(
            v6.percentiles(today),
            stats::town_percentiles(v6.citizens(), today)
        );
        // A reader still at version 5 gets version 5's answer.
        assert_eq!(v5.birthdays(), stats::Birthdays::default());
        assert_eq!(slot(&v6).map(|s| s.0), Some(6), "and leaves version 6's");
        // A snapshot that cannot move drops its aggregates with it.
        cache.apply_patch(id(7), 8, &citizen(1, "A", &[]));
        assert!(cache.snapshot(id(7), 8).is_none());
    }

    fn listing_version(held: &Held) -> Option<(Version, usize, Version)> {
        let slot = held.derived.as_ref().unwrap().lock().unwrap();
        slot.listing
            .as_ref()
            .map(|l| (l.version, l.changed.len(), l.changed_to))
    }

    #[test]
    fn a_listing_after_patches_is_the_last_one_with_the_changed_citizens_rendered_again() {
        let cache = ResponseCache::new(1 << 20, Arc::default());
        let three = Arc::new(vec![
            Arc::new(citizen(1, "A", &[])),
            Arc::new(citizen(2, "B", &[])),
            Arc::new(citizen(3, "C", &[])),
        ]);
        let v1 = cache.keep_snapshot(id(7), 1, three);
        let body = cache.listing(id(7), &v1).unwrap();
        assert_eq!(body, listing::render(v1.citizens()).unwrap().body);
        assert_eq!(listing_version(&v1), Some((1, 0, 1)));
        // Two PATCHes: 1 takes 3 as a relative, then 2 is renamed.
        cache.apply_patch(id(7), 2, &citizen(1, "A", &[3]));
        cache.apply_patch(id(7), 3, &citizen(2, "B2", &[]));
        let v3 = cache.snapshot(id(7), 3).unwrap();
        assert_eq!(listing_version(&v3), Some((1, 3, 3)), "1, 3 and 2 changed");
        let body = cache.listing(id(7), &v3).unwrap();
        assert_eq!(body, listing::render(v3.citizens()).unwrap().body);
        assert_eq!(listing_version(&v3), Some((3, 0, 3)));
        // A reader still at version 1 gets version 1's listing and keeps
        // the newer one.
        let old = cache.listing(id(7), &v1).unwrap();
        assert_eq!(old, listing::render(v1.citizens()).unwrap().body);
        assert_eq!(listing_version(&v3), Some((3, 0, 3)));
    }

    #[test]
    fn a_kept_listing_is_counted_in_the_snapshots_weight() {
        let cache = ResponseCache::new(1 << 20, Arc::default());
        let held = cache.keep_snapshot(id(7), 1, two_citizens());
        let before = cache.bytes();
        let body = cache.listing(id(7), &held).unwrap();
        let added = body_weight(body.len()) + allocation(3 * 8);
        assert_eq!(cache.bytes(), before + added);
    }

    #[test]
    fn a_patch_changing_too_much_of_the_import_drops_the_listing() {
        let cache = ResponseCache::new(1 << 22, Arc::default());
        let many: CitizenList = Arc::new(
            (1..=120)
                .map(|id| Arc::new(citizen(id, "Житель", &[])))
                .collect(),
        );
        let v1 = cache.keep_snapshot(id(7), 1, many);
        cache.listing(id(7), &v1).unwrap();
        // 1 and 93 others: 94 changed, the most that is still spliced.
        let relatives: Vec<u64> = (2..=94).collect();
        cache.apply_patch(id(7), 2, &citizen(1, "A", &relatives));
        let v2 = cache.snapshot(id(7), 2).unwrap();
        assert_eq!(listing_version(&v2), Some((1, 94, 2)));
        // One more: over 64 and a quarter of 120.
        cache.apply_patch(id(7), 3, &citizen(95, "B", &[]));
        let v3 = cache.snapshot(id(7), 3).unwrap();
        assert_eq!(listing_version(&v3), None);
        let body = cache.listing(id(7), &v3).unwrap();
        assert_eq!(body, listing::render(v3.citizens()).unwrap().body);
    }

    fn months_changed(held: &Held) -> Option<(u16, Version)> {
        let slot = held.derived.as_ref().unwrap().lock().unwrap();
        slot.months.as_ref().map(|m| (m.changed, m.changed_to))
    }

    #[test]
    fn the_birthdays_answer_after_patches_renders_only_the_months_they_changed() {
        let cache = ResponseCache::new(1 << 20, Arc::default());
        let born_in = |id: u64, month: u8| {
            let mut c = citizen(id, "Ж", &[]);
            c.birth_date = crate::domain::BirthDate::from_ymd(1990, month, 5).unwrap();
            Arc::new(c)
        };
        let three = Arc::new(vec![born_in(1, 1), born_in(2, 3), born_in(3, 5)]);
        let want = |held: &Held| {
            Bytes::from(crate::reads::body::to_data(&stats::birthdays(held.citizens())).unwrap())
        };
        let v1 = cache.keep_snapshot(id(7), 1, three);
        assert_eq!(v1.birthdays_body().unwrap(), want(&v1));
        assert_eq!(months_changed(&v1), Some((0, 1)));
        // 1 (January) takes 2 (March): 1 buys in March, 2 in January.
        let mut one = Citizen::clone(&v1.citizens()[0]);
        one.relatives = vec![CitizenId::parse(2).unwrap()];
        cache.apply_patch(id(7), 2, &one);
        let v2 = cache.snapshot(id(7), 2).unwrap();
        assert_eq!(months_changed(&v2), Some((0b101, 2)), "January and March");
        // A rename changes no month.
        let mut three = Citizen::clone(&v2.citizens()[2]);
        three.name = crate::domain::Name::parse("Переименован".into()).unwrap();
        cache.apply_patch(id(7), 3, &three);
        let v3 = cache.snapshot(id(7), 3).unwrap();
        assert_eq!(months_changed(&v3), Some((0b101, 3)));
        assert_eq!(v3.birthdays_body().unwrap(), want(&v3));
        assert_eq!(months_changed(&v3), Some((0, 3)));
        // An older reader gets its own version's answer, from scratch.
        assert_eq!(v1.birthdays_body().unwrap(), want(&v1));
        assert_eq!(
            months_changed(&v3),
            Some((0, 3)),
            "and leaves the newer one"
        );
    }

    #[test]
    fn aggregates_never_built_are_not_moved() {
        let cache = ResponseCache::new(1 << 20, Arc::default());
        cache.keep_snapshot(id(7), 1, two_citizens());
        cache.apply_patch(id(7), 2, &citizen(1, "A", &[2]));
        let v2 = cache.snapshot(id(7), 2).expect("moved");
        assert!(
            v2.derived
                .as_ref()
                .unwrap()
                .lock()
                .unwrap()
                .analytics
                .is_none()
        );
        assert_eq!(v2.birthdays(), stats::birthdays(v2.citizens()));
    }

    #[test]
    fn without_a_cache_analytics_are_computed_from_scratch() {
        let cache = ResponseCache::new(0, Arc::default());
        let held = cache.keep_snapshot(id(7), 1, two_citizens());
        assert!(held.derived.is_none());
        assert_eq!(held.birthdays(), stats::birthdays(held.citizens()));
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let cache = ResponseCache::new(1 << 20, Arc::default());
        cache.keep_snapshot(id(7), 9, two_citizens());
        cache.keep_snapshot(id(7), 8, two_citizens());
        assert!(cache.snapshot(id(7), 9).is_some());
        assert!(cache.snapshot(id(7), 8).is_none());
        // A write that a reload already includes leaves the snapshot as it is.
        cache.apply_patch(id(7), 9, &citizen(1, "stale", &[]));
        assert_eq!(names(&cache.snapshot(id(7), 9).unwrap()), ["A", "B"]);
    }

    #[test]
    fn a_patch_of_a_citizen_the_snapshot_lacks_drops_it() {
        let cache = ResponseCache::new(1 << 20, Arc::default());
        cache.keep_snapshot(id(7), 1, two_citizens());
        cache.apply_patch(id(7), 2, &citizen(3, "C", &[]));
        assert!(cache.snapshot(id(7), 2).is_none());
    }

    #[test]
    fn snapshots_are_weighed_by_their_allocations() {
        let one = Arc::new(vec![Arc::new(citizen(1, "Иванов Иван Иванович", &[2, 3]))]);
        let arc = allocation(16 + std::mem::size_of::<Citizen>());
        let strings = allocation("Москва".len())
            + allocation("Улица".len())
            + allocation(1)
            + allocation("Иванов Иван Иванович".len())
            + allocation(16);
        let aggregates = 48 + 2 * 4 + 64;
        let allocated = arc + strings + allocation(8) + aggregates;
        assert_eq!(snapshot_weight(&one), allocated * 12 / 8 + 96);
        assert_eq!(allocation(0), 0);
        assert_eq!(allocation(1), 8);
        assert_eq!(allocation(100), 112);
        assert_eq!(allocation(1000), 1024);
        assert_eq!(allocation(2000), 2048, "size classes up to 128 KiB");
        assert_eq!(allocation(131_073), 135_168, "whole pages above");
        assert_eq!(allocation(2_304_072), 2_306_048);
    }

    #[tokio::test]
    async fn a_body_weighs_its_allocation_and_the_bookkeeping() {
        let cache = ResponseCache::new(1 << 20, Arc::default());
        assert_eq!(cache.bytes(), 0);
        body(&cache, id(1), View::Citizens, 1, "v1", &AtomicUsize::new(0)).await;
        assert_eq!(cache.bytes(), 8 + 96, "2 bytes take an 8-byte block");
    }

    #[tokio::test]
    async fn hits_misses_and_evictions_are_counted() {
        let metrics = Arc::new(Metrics::default());
        let cache = ResponseCache::new(1 << 20, Arc::clone(&metrics));
        let renders = AtomicUsize::new(0);
        body(&cache, id(1), View::Citizens, 1, "v1", &renders).await;
        body(&cache, id(1), View::Citizens, 1, "v1", &renders).await;
        body(&cache, id(1), View::Citizens, 1, "v1", &renders).await;
        let kind = |kind| crate::metrics::KindLabels { kind };
        assert_eq!(metrics.cache_misses.get_or_create(&kind("body")).get(), 1);
        assert_eq!(metrics.cache_hits.get_or_create(&kind("body")).get(), 2);
        assert!(cache.snapshot(id(1), 1).is_none());
        cache.keep_snapshot(id(1), 1, two_citizens());
        assert!(cache.snapshot(id(1), 1).is_some());
        assert_eq!(
            metrics.cache_misses.get_or_create(&kind("snapshot")).get(),
            1
        );
        assert_eq!(metrics.cache_hits.get_or_create(&kind("snapshot")).get(), 1);

        let small = ResponseCache::new(1024, Arc::clone(&metrics));
        for import in 1..=20 {
            small.keep_snapshot(id(import), 1, two_citizens());
        }
        assert!(metrics.cache_evictions.get() > 0, "evictions counted");
    }

    #[tokio::test]
    async fn forgetting_an_import_drops_its_bodies_and_snapshot_only() {
        let cache = ResponseCache::new(1 << 20, Arc::default());
        let renders = AtomicUsize::new(0);
        for import in [id(1), id(2)] {
            body(&cache, import, View::Citizens, 1, "body", &renders).await;
            cache.keep_snapshot(import, 1, two_citizens());
        }
        cache.forget(id(1));
        assert!(cache.snapshot(id(1), 1).is_none());
        assert!(cache.snapshot(id(2), 1).is_some(), "the other import stays");
        body(&cache, id(1), View::Citizens, 1, "again", &renders).await;
        body(&cache, id(2), View::Citizens, 1, "again", &renders).await;
        assert_eq!(
            renders.load(Ordering::SeqCst),
            3,
            "only import 1 renders again"
        );
    }

    #[test]
    fn bodies_and_snapshots_share_one_budget() {
        let budget = 256 * 1024;
        let cache = ResponseCache::new(budget, Arc::default());
        let many: CitizenList = Arc::new(
            (0..400)
                .map(|id| Arc::new(citizen(id, "Житель", &[])))
                .collect(),
        );
        let weight = snapshot_weight(&many);
        assert!(weight > budget / 4, "{weight}");
        for import in (1..=8).map(id) {
            cache.keep_snapshot(import, 1, Arc::clone(&many));
        }
        let held = (1..=8)
            .filter(|i| cache.snapshot(id(*i), 1).is_some())
            .count() as u64;
        assert!(
            held * weight <= budget,
            "{held} snapshots of {weight} bytes"
        );
        assert!(held >= 1);
    }
}
