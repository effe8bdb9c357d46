//! One memory budget: what each entry weighs (the heap it holds) and what
//! eviction counts.

use std::sync::Arc;

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use super::{Entry, Key};
use crate::domain::Citizen;
use crate::domain::analytics::Analytics;

#[derive(Clone)]
pub(super) struct HeapBytes;

impl Weighter<Key, Entry> for HeapBytes {
    fn weight(&self, _key: &Key, entry: &Entry) -> u64 {
        // Never zero: an empty value still takes a slot.
        match entry {
            Entry::Body(_, weight) => *weight,
            Entry::Snapshot(s) => s.weight,
        }
        .max(1)
    }
}

/// The memory an allocation of `n` bytes takes: the allocator (mimalloc)
/// rounds sizes up to 128 KiB to size classes an eighth of a power of two
/// apart (at least 8 bytes); bigger blocks take whole 4 KiB pages as they
/// are touched.
pub fn allocation(n: usize) -> u64 {
    if n == 0 {
        return 0;
    }
    let step = if n > 128 * 1024 {
        4096
    } else {
        (n.next_power_of_two() / 8).max(8)
    };
    n.div_ceil(step) as u64 * step as u64
}

/// Heap held by a body of `len` bytes, plus the cache's own bookkeeping.
pub(super) fn body_weight(len: usize) -> u64 {
    allocation(len) + 96
}

/// Resident memory per byte of a snapshot's allocations, in eighths. A
/// snapshot is tens of thousands of small allocations made while other
/// requests allocate and free around them; cached, they pin allocator pages
/// whose other blocks are free. Measured with the peak-RSS test
/// (`tests/api/memory.rs`): holding snapshots costs about 1.5× the sum of
/// their allocations.
pub(super) const SNAPSHOT_RESIDENT_EIGHTHS: u64 = 12;

/// Memory held by a snapshot: per citizen its `Arc` allocation, its strings
/// and relatives list, and its pointer in the list; plus the list itself;
/// times the allocator's overhead for small blocks kept long.
pub(super) fn snapshot_weight(citizens: &[Arc<Citizen>]) -> u64 {
    // An Arc allocation: the two reference counts, then the value.
    let arc = allocation(2 * std::mem::size_of::<usize>() + std::mem::size_of::<Citizen>());
    let buffers: u64 = citizens
        .iter()
        .map(|c| c.heap_buffers().into_iter().map(allocation).sum::<u64>())
        .sum();
    let allocated =
        arc * citizens.len() as u64 + buffers + allocation(std::mem::size_of_val(citizens));
    // The aggregates, once an analytics answer builds them.
    let allocated = allocated + Analytics::weight(citizens.len());
    allocated * SNAPSHOT_RESIDENT_EIGHTHS / 8 + 96
}

/// Counts evictions for the metrics.
#[derive(Clone)]
pub(super) struct Evictions(pub(super) prometheus_client::metrics::counter::Counter);

impl quick_cache::Lifecycle<Key, Entry> for Evictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: Key, _entry: Entry) {
        self.0.inc();
    }
}

pub(super) type Entries = Cache<Key, Entry, HeapBytes, quick_cache::DefaultHashBuilder, Evictions>;
