//! What is derived from a held snapshot and moved by each PATCH: the
//! aggregates, the birthdays answer month by month, the listing's index.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;

use super::{CitizenList, Snapshot};
use crate::domain::Citizen;
use crate::domain::analytics::Analytics;
use crate::domain::stats::{self, TownAges};
use crate::reads::body::compact;
use crate::storage::Version;

/// What is derived from an import's citizens beside the rendered bodies:
/// one slot shared by the snapshots of consecutive versions, moved forward
/// in place by each PATCH.
pub(super) type SharedDerived = Arc<Mutex<Derived>>;

#[derive(Default)]
pub(super) struct Derived {
    /// The aggregates and the version they are of.
    pub(super) analytics: Option<(Version, Analytics)>,
    /// Where each citizen is in the GET citizens body of one version.
    pub(super) listing: Option<ListingIndex>,
    /// The birthdays answer rendered month by month.
    pub(super) months: Option<RenderedMonths>,
}

/// The JSON of each month's list in the birthdays answer as last rendered,
/// and the months PATCHes changed since, up to version `changed_to` (bits,
/// 1 << 0: January).
pub(super) struct RenderedMonths {
    pub(super) months: [Vec<u8>; 12],
    pub(super) changed: u16,
    pub(super) changed_to: Version,
}

/// All twelve months.
pub(super) const EVERY_MONTH: u16 = (1 << 12) - 1;

/// `{"data":{"1":[…],…,"12":[…]}}` from the months' lists.
pub(super) fn birthdays_body(months: &[Vec<u8>; 12]) -> Bytes {
    let len: usize = months.iter().map(|m| m.len() + 6).sum();
    let mut body = Vec::with_capacity(len + 12);
    body.extend_from_slice(b"{\"data\":{");
    for (month, list) in months.iter().enumerate() {
        if month > 0 {
            body.push(b',');
        }
        body.extend_from_slice(format!("\"{}\":", month + 1).as_bytes());
        body.extend_from_slice(list);
    }
    body.extend_from_slice(b"}}");
    Bytes::from(body)
}

/// A GET citizens body rendered from the citizens at `version` (the same
/// bytes as the body cached for that version: counted in the snapshot's
/// weight too), where each citizen starts in it, and the positions of the
/// citizens PATCHes changed since, up to `changed_to`.
pub(super) struct ListingIndex {
    pub(super) version: Version,
    pub(super) body: Bytes,
    pub(super) starts: Arc<Vec<usize>>,
    pub(super) changed: BTreeSet<usize>,
    pub(super) changed_to: Version,
}

/// Splicing more changed citizens than 64 and a quarter of the import is
/// not worth tracking: the listing is rendered whole.
pub(super) fn worth_splicing(changed: usize, citizens: usize) -> bool {
    changed <= 64 + citizens / 4
}

pub(super) fn lock(slot: &SharedDerived) -> std::sync::MutexGuard<'_, Derived> {
    // A panic under the lock leaves at worst aggregates that answer wrong:
    // start over from the citizens.
    slot.lock().unwrap_or_else(|poisoned| {
        let mut derived = poisoned.into_inner();
        *derived = Derived::default();
        derived
    })
}

/// An import's citizens at one version, to render answers from: held by the
/// cache (with the slot for its aggregates) or loaded for one answer.
#[derive(Clone)]
pub struct Held {
    pub(super) version: Version,
    pub(super) citizens: CitizenList,
    pub(super) derived: Option<SharedDerived>,
}

impl Held {
    /// Citizens loaded for one answer only: analytics are computed from scratch.
    pub fn loaded(version: Version, citizens: CitizenList) -> Self {
        Self {
            version,
            citizens,
            derived: None,
        }
    }

    /// The citizens, ordered by citizen_id.
    pub fn citizens(&self) -> &[Arc<Citizen>] {
        &self.citizens
    }

    /// The list of citizens itself, to render from after `self` is gone.
    pub fn list(&self) -> CitizenList {
        Arc::clone(&self.citizens)
    }

    /// The birthdays answer, `{"data": …}`: from the aggregates, with only
    /// the months PATCHes changed since the last one rendered again.
    pub fn birthdays_body(&self) -> serde_json::Result<Bytes> {
        let scratch =
            || crate::reads::body::to_data(&stats::birthdays(&self.citizens)).map(compact);
        let Some(slot) = &self.derived else {
            return scratch();
        };
        let mut slot = lock(slot);
        let derived = &mut *slot;
        let (true, Some((_, analytics))) = (self.analytics_ready(derived), &derived.analytics)
        else {
            return scratch();
        };
        let (mut months, changed) = match derived.months.take() {
            Some(held) if held.changed_to == self.version => (held.months, held.changed),
            _ => (Default::default(), EVERY_MONTH),
        };
        for (month, list) in months.iter_mut().enumerate() {
            if changed & (1 << month) != 0 {
                *list = serde_json::to_vec(&analytics.month(month, &self.citizens))?;
            }
        }
        let body = birthdays_body(&months);
        derived.months = Some(RenderedMonths {
            months,
            changed: 0,
            changed_to: self.version,
        });
        Ok(body)
    }

    /// Presents per month (what `birthdays_body` serialises; the tests
    /// compare it with a recomputation).
    #[cfg(test)]
    pub fn birthdays(&self) -> stats::Birthdays {
        self.with_analytics(
            |a| a.birthdays(&self.citizens),
            || stats::birthdays(&self.citizens),
        )
    }

    /// Age percentiles per town on `today`.
    pub fn percentiles(&self, today: time::Date) -> Vec<TownAges> {
        self.with_analytics(
            |a| a.percentiles(today),
            || stats::town_percentiles(&self.citizens, today),
        )
    }

    /// `read` of the aggregates of this version, built first if the slot
    /// holds none (or an older version's that no PATCH moved); `scratch`
    /// when this snapshot is not held, or is older than the aggregates.
    fn with_analytics<R>(
        &self,
        read: impl FnOnce(&Analytics) -> R,
        scratch: impl FnOnce() -> R,
    ) -> R {
        let Some(slot) = &self.derived else {
            return scratch();
        };
        let mut slot = lock(slot);
        match (self.analytics_ready(&mut slot), &slot.analytics) {
            (true, Some((_, analytics))) => read(analytics),
            _ => scratch(),
        }
    }

    /// Whether `derived` holds the aggregates of this version, built there
    /// first if it holds none (or an older version's that no PATCH moved;
    /// the months rendered from those go with them); false when `derived`
    /// has moved past this snapshot.
    fn analytics_ready(&self, derived: &mut Derived) -> bool {
        match &derived.analytics {
            Some((version, _)) if *version > self.version => return false,
            Some((version, _)) if *version == self.version => {}
            _ => {
                derived.analytics = Some((self.version, Analytics::new(&self.citizens)));
                derived.months = None;
            }
        }
        true
    }
}

/// Moves what is derived from `held` to `version`, the import `after` once
/// `updated` was written: the aggregates by the change, and the positions
/// of the citizens it changed added to the listing's. Drops what is not of
/// `held`'s version (never built, or built from a snapshot this one replaced).
pub(super) fn move_derived(
    held: &Snapshot,
    after: &[Arc<Citizen>],
    version: Version,
    updated: &Citizen,
) {
    let position = |id| {
        held.citizens
            .binary_search_by_key(&id, |c: &Arc<Citizen>| c.citizen_id)
            .ok()
    };
    match position(updated.citizen_id) {
        Some(me) => move_derived_from(
            &held.derived,
            held.version,
            &held.citizens[me],
            after,
            version,
            updated,
        ),
        None => *lock(&held.derived) = Derived::default(),
    }
}

/// [`move_derived`], told the version it moves `derived` from and the
/// citizen `before` the PATCH (`after` may be the held list itself, moved
/// in place: the citizens keep their positions).
pub(super) fn move_derived_from(
    derived: &SharedDerived,
    from: Version,
    before: &Citizen,
    after: &[Arc<Citizen>],
    version: Version,
    updated: &Citizen,
) {
    let mut slot = lock(derived);
    let position = |id| {
        after
            .binary_search_by_key(&id, |c: &Arc<Citizen>| c.citizen_id)
            .ok()
    };
    let Some(me) = position(updated.citizen_id) else {
        *slot = Derived::default();
        return;
    };
    let moved = match slot.analytics.as_mut() {
        Some((at, analytics)) if *at == from => analytics
            .apply(after, before, updated)
            .inspect(|_| *at = version),
        _ => None,
    };
    let months = slot
        .months
        .as_mut()
        .filter(|m| m.changed_to == from)
        .zip(moved);
    match months {
        Some((months, changed)) => {
            months.changed |= changed;
            months.changed_to = version;
        }
        None => slot.months = None,
    }
    if moved.is_none() {
        slot.analytics = None;
    }
    let listing = slot.listing.as_mut().filter(|l| l.changed_to == from);
    let moved = listing.and_then(|listing| {
        // The citizen, and every relative it had or has: their lists changed.
        let touched = before.relatives.iter().chain(&updated.relatives);
        for at in std::iter::once(Some(me)).chain(touched.map(|&id| position(id))) {
            listing.changed.insert(at?);
        }
        listing.changed_to = version;
        worth_splicing(listing.changed.len(), after.len()).then_some(())
    });
    if moved.is_none() {
        slot.listing = None;
    }
}
