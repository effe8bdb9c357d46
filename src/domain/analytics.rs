//! The two analytics kept up to date by each PATCH's change, instead of
//! recomputed from every citizen.
//!
//! - **Presents**: per citizen (by its position in the import, which is
//!   ordered by citizen_id and never gains or loses a citizen), how many
//!   relatives are born in each month. A PATCH changes the rows of the
//!   citizen and of its relatives before and after, and no other: a row
//!   depends only on the citizen's own list and the birth months of those
//!   it lists, and the relation is symmetric.
//! - **Ages**: per town, the birth dates in ascending order. Ages are never
//!   stored: age is non-increasing in the birth date, so the dates read
//!   backwards are the ages in ascending order on *any* day, and a
//!   percentile needs only the two ages at its index. The day changing at
//!   midnight therefore changes nothing here.
//!
//! Every answer is the one `stats::birthdays` and `stats::town_percentiles`
//! compute from scratch, bit for bit (property-tested below).

use std::borrow::Borrow;
use std::collections::BTreeMap;

use time::Date;

use super::citizen::{BirthDate, Citizen, CitizenId};
use super::stats::{Birthdays, Presents, TownAges, percentile_by, round2};

/// The aggregates of one import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analytics {
    /// Per citizen position: relatives born in each month (index 0: January).
    presents: Vec<[u32; 12]>,
    /// Per month: (position, presents) of each citizen with presents that
    /// month, by position — what the answer lists, without a pass over
    /// every citizen.
    months: [Vec<(usize, u32)>; 12],
    /// Per town (code point order): its citizens' birth dates, ascending.
    towns: BTreeMap<String, Vec<BirthDate>>,
}

/// Sets `at`'s count in one month's entries (ordered by position); 0 removes it.
fn set(entries: &mut Vec<(usize, u32)>, at: usize, count: u32) {
    match (entries.binary_search_by_key(&at, |e| e.0), count) {
        (Ok(i), 0) => {
            entries.remove(i);
        }
        (Ok(i), _) => entries[i].1 = count,
        (Err(_), 0) => {}
        (Err(i), _) => entries.insert(i, (at, count)),
    }
}

/// The position of `id` in an import ordered by citizen_id.
fn position<C: Borrow<Citizen>>(citizens: &[C], id: CitizenId) -> Option<usize> {
    citizens
        .binary_search_by_key(&id, |c| c.borrow().citizen_id)
        .ok()
}

/// One citizen's presents per month. A relative missing from the import is
/// skipped, as `stats::birthdays` does.
fn presents_of<C: Borrow<Citizen>>(citizens: &[C], citizen: &Citizen) -> [u32; 12] {
    let mut row = [0u32; 12];
    for &relative in &citizen.relatives {
        if let Some(at) = position(citizens, relative) {
            let month = citizens[at].borrow().birth_date.month();
            row[usize::from(month - 1)] += 1;
        }
    }
    row
}

impl Analytics {
    /// The aggregates of `citizens`, which must be ordered by citizen_id.
    /// O(citizens · log citizens + links · log citizens).
    pub fn new<C: Borrow<Citizen>>(citizens: &[C]) -> Self {
        let presents: Vec<[u32; 12]> = citizens
            .iter()
            .map(|c| presents_of(citizens, c.borrow()))
            .collect();
        let mut months: [Vec<(usize, u32)>; 12] = Default::default();
        for (at, row) in presents.iter().enumerate() {
            for (month, &count) in row.iter().enumerate() {
                if count > 0 {
                    months[month].push((at, count));
                }
            }
        }
        let mut towns: BTreeMap<String, Vec<BirthDate>> = BTreeMap::new();
        for citizen in citizens {
            let citizen = citizen.borrow();
            match towns.get_mut(citizen.town.as_str()) {
                Some(dates) => dates.push(citizen.birth_date),
                None => {
                    towns.insert(citizen.town.as_str().to_owned(), vec![citizen.birth_date]);
                }
            }
        }
        for dates in towns.values_mut() {
            dates.sort_unstable();
            dates.shrink_to_fit();
        }
        Self {
            presents,
            months,
            towns,
        }
    }

    /// Moves the aggregates over one PATCH: `after` is the import once
    /// `before` (the citizen as it was) became `now` and the change of its
    /// relatives was mirrored onto the others (`patch::after_patch`).
    /// O(relatives touched · their relatives · log citizens).
    ///
    /// The months whose answer changed, as bits (1 << 0: January); `None`
    /// (and `self` unchanged) when `now` is not in `after`: the aggregates
    /// do not belong to that import.
    pub fn apply<C: Borrow<Citizen>>(
        &mut self,
        after: &[C],
        before: &Citizen,
        now: &Citizen,
    ) -> Option<u16> {
        if after.len() != self.presents.len() {
            return None;
        }
        let me = position(after, now.citizen_id)?;
        // The rows that can change: this citizen's, and those of everyone
        // it listed before or lists now (whose lists gained or lost it, or
        // who count its birth month).
        let touched = std::iter::once(me).chain(
            before
                .relatives
                .iter()
                .chain(&now.relatives)
                .filter_map(|&id| position(after, id)),
        );
        let mut changed = 0u16;
        for at in touched {
            let row = presents_of(after, after[at].borrow());
            let was = std::mem::replace(&mut self.presents[at], row);
            for (month, entries) in self.months.iter_mut().enumerate() {
                if row[month] != was[month] {
                    set(entries, at, row[month]);
                    changed |= 1 << month;
                }
            }
        }
        if (before.town.as_str(), before.birth_date) != (now.town.as_str(), now.birth_date) {
            self.remove_date(before.town.as_str(), before.birth_date);
            self.insert_date(now.town.as_str(), now.birth_date);
        }
        Some(changed)
    }

    fn remove_date(&mut self, town: &str, date: BirthDate) {
        let Some(dates) = self.towns.get_mut(town) else {
            return;
        };
        if let Ok(at) = dates.binary_search(&date) {
            dates.remove(at);
        }
        if dates.is_empty() {
            self.towns.remove(town);
        }
    }

    fn insert_date(&mut self, town: &str, date: BirthDate) {
        match self.towns.get_mut(town) {
            Some(dates) => {
                let at = dates.partition_point(|d| *d <= date);
                dates.insert(at, date);
            }
            None => {
                self.towns.insert(town.to_owned(), vec![date]);
            }
        }
    }

    /// Presents per month of `citizens`, the import these aggregates belong
    /// to. O(the answer).
    pub fn birthdays<C: Borrow<Citizen>>(&self, citizens: &[C]) -> Birthdays {
        Birthdays(std::array::from_fn(|month| self.month(month, citizens)))
    }

    /// One month of [`Analytics::birthdays`] (0: January).
    pub fn month<C: Borrow<Citizen>>(&self, month: usize, citizens: &[C]) -> Vec<Presents> {
        self.months[month]
            .iter()
            .map(|&(at, presents)| Presents {
                citizen_id: citizens[at].borrow().citizen_id,
                presents,
            })
            .collect()
    }

    /// Age percentiles per town on `today`. O(towns).
    pub fn percentiles(&self, today: Date) -> Vec<TownAges> {
        self.towns
            .iter()
            .map(|(town, dates)| {
                // Ascending ages: the dates from the latest back.
                let last = dates.len() - 1;
                let age = |i: usize| dates[last - i].age_on(today);
                TownAges {
                    town: town.clone(),
                    p50: round2(percentile_by(dates.len(), age, 50.0)),
                    p75: round2(percentile_by(dates.len(), age, 75.0)),
                    p99: round2(percentile_by(dates.len(), age, 99.0)),
                }
            })
            .collect()
    }

    /// The heap these aggregates take for an import of `citizens` citizens,
    /// with the rendered months a cache keeps beside them (an estimate fixed
    /// in advance: the towns' vectors get up to twice their length when a
    /// PATCH grows them; one month entry per citizen, 16 bytes, and its
    /// rendering, 48).
    pub fn weight(citizens: usize) -> u64 {
        let rows = citizens * std::mem::size_of::<[u32; 12]>();
        let dates = citizens * std::mem::size_of::<BirthDate>();
        (rows + 2 * dates + 64 * citizens) as u64
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp)] // whole-number ages, exact
pub(crate) mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::domain::patch::after_patch;
    use crate::domain::stats::{birthdays, town_percentiles};
    use crate::domain::{Apartment, Gender, Name, Place};

    pub(crate) const TOWNS: [&str; 4] = ["Москва", "Керчь", "Abakan", "Zürich"];

    pub(crate) fn date(days: i32) -> BirthDate {
        // Days since 1950-01-01: spans leap days and every month.
        let base = Date::from_calendar_date(1950, time::Month::January, 1).unwrap();
        let d = base + time::Duration::days(i64::from(days));
        BirthDate::from_ymd(d.year(), d.month() as u8, d.day()).unwrap()
    }

    fn citizen(id: u64, town: usize, born: i32, relatives: Vec<CitizenId>) -> Citizen {
        Citizen {
            citizen_id: CitizenId::parse(id).unwrap(),
            town: Place::parse(TOWNS[town].into()).unwrap(),
            street: Place::parse("Улица".into()).unwrap(),
            building: Place::parse("1".into()).unwrap(),
            apartment: Apartment::parse(1).unwrap(),
            name: Name::parse("Имя".into()).unwrap(),
            birth_date: date(born),
            gender: Gender::parse("female").unwrap(),
            relatives,
        }
    }

    /// A symmetric import of `n` citizens (ids 1..=n) from pairs of
    /// positions; a pair with both ends equal is a citizen listing itself.
    pub(crate) fn import(people: &[(usize, i32)], links: &[(usize, usize)]) -> Vec<Arc<Citizen>> {
        let n = people.len();
        let mut lists = vec![std::collections::BTreeSet::new(); n];
        for &(a, b) in links {
            let (a, b) = (a % n, b % n);
            lists[a].insert(b as u64 + 1);
            lists[b].insert(a as u64 + 1);
        }
        people
            .iter()
            .zip(lists)
            .enumerate()
            .map(|(i, (&(town, born), list))| {
                let relatives = list
                    .into_iter()
                    .map(|r| CitizenId::parse(r).unwrap())
                    .collect();
                Arc::new(citizen(i as u64 + 1, town, born, relatives))
            })
            .collect()
    }

    /// One PATCH: which citizen, and optionally a new town, birth date and
    /// relatives list (positions).
    #[derive(Debug, Clone)]
    pub(crate) struct Patch {
        pub(crate) who: usize,
        town: Option<usize>,
        born: Option<i32>,
        relatives: Option<Vec<usize>>,
    }

    pub(crate) fn patch_strategy() -> impl Strategy<Value = Patch> {
        (
            any::<usize>(),
            prop::option::of(0..TOWNS.len()),
            prop::option::of(0..27_000i32),
            prop::option::of(prop::collection::vec(any::<usize>(), 0..5)),
        )
            .prop_map(|(who, town, born, relatives)| Patch {
                who,
                town,
                born,
                relatives,
            })
    }

    pub(crate) fn patched(citizens: &[Arc<Citizen>], patch: &Patch) -> Citizen {
        let n = citizens.len();
        let mut c = Citizen::clone(&citizens[patch.who % n]);
        if let Some(town) = patch.town {
            c.town = Place::parse(TOWNS[town].into()).unwrap();
        }
        if let Some(born) = patch.born {
            c.birth_date = date(born);
        }
        if let Some(relatives) = &patch.relatives {
            let mut ids: Vec<CitizenId> = relatives
                .iter()
                .map(|r| CitizenId::parse((r % n) as u64 + 1).unwrap())
                .collect();
            ids.sort_unstable();
            ids.dedup();
            c.relatives = ids;
        }
        c
    }

    fn assert_same_answers(analytics: &Analytics, citizens: &[Arc<Citizen>], days: &[Date]) {
        assert_eq!(analytics.birthdays(citizens), birthdays(citizens));
        assert_same_percentiles(|today| analytics.percentiles(today), citizens, days);
    }

    /// `percentiles` on each of `days` equals a recomputation, bit for bit.
    pub(crate) fn assert_same_percentiles(
        percentiles: impl Fn(Date) -> Vec<TownAges>,
        citizens: &[Arc<Citizen>],
        days: &[Date],
    ) {
        for &today in days {
            let got = percentiles(today);
            let want = town_percentiles(citizens, today);
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.town, w.town);
                for (a, b) in [(g.p50, w.p50), (g.p75, w.p75), (g.p99, w.p99)] {
                    assert_eq!(a.to_bits(), b.to_bits(), "{} on {today}", g.town);
                }
            }
        }
    }

    proptest! {
        /// The incremental answers equal a full recomputation after every
        /// PATCH of a random sequence, on days either side of midnight and
        /// of birthdays (29 February included).
        #[test]
        fn incremental_answers_equal_a_full_recomputation(
            people in prop::collection::vec((0..TOWNS.len(), 0..27_000i32), 1..40),
            links in prop::collection::vec((any::<usize>(), any::<usize>()), 0..60),
            patches in prop::collection::vec(patch_strategy(), 1..25),
            day in 0..30_000i32,
        ) {
            let mut citizens = import(&people, &links);
            let mut analytics = Analytics::new(&citizens);
            let today = date(day).date();
            let days = [today, today.next_day().unwrap(), today.previous_day().unwrap()];
            assert_same_answers(&analytics, &citizens, &days);
            for patch in &patches {
                let now = patched(&citizens, patch);
                let before = Arc::clone(&citizens[patch.who % citizens.len()]);
                let after = after_patch(&citizens, &now).expect("the citizen is there");
                let changed = analytics.apply(&after, &before, &now).expect("applies");
                let (was, is) = (birthdays(&citizens), birthdays(&after));
                let months: u16 = (0..12)
                    .filter(|&m| was.0[m] != is.0[m])
                    .map(|m| 1 << m)
                    .sum();
                prop_assert_eq!(changed, months, "the months said to have changed");
                citizens = after;
                assert_same_answers(&analytics, &citizens, &days);
                prop_assert_eq!(&analytics, &Analytics::new(&citizens));
            }
        }
    }

    #[test]
    fn a_leap_day_birthday_ages_on_the_first_of_march_in_common_years() {
        let leap = BirthDate::from_ymd(2000, 2, 29).unwrap();
        let mut c = citizen(1, 0, 0, vec![]);
        c.birth_date = leap;
        let citizens = vec![Arc::new(c)];
        let analytics = Analytics::new(&citizens);
        let on = |y, m, d| {
            analytics.percentiles(
                Date::from_calendar_date(y, time::Month::try_from(m).unwrap(), d).unwrap(),
            )[0]
            .p50
        };
        assert_eq!(on(2021, 2, 28), 20.0);
        assert_eq!(on(2021, 3, 1), 21.0);
        assert_eq!(on(2024, 2, 29), 24.0);
    }

    #[test]
    fn a_patch_of_a_citizen_not_in_the_import_changes_nothing() {
        let citizens = import(&[(0, 1), (1, 2)], &[(0, 1)]);
        let mut analytics = Analytics::new(&citizens);
        let kept = analytics.clone();
        let stranger = citizen(9, 0, 3, vec![]);
        assert!(analytics.apply(&citizens, &stranger, &stranger).is_none());
        assert!(
            analytics
                .apply(&citizens[..1], &citizens[0], &citizens[0])
                .is_none(),
            "another import's size"
        );
        assert_eq!(analytics, kept);
    }

    #[test]
    fn the_weight_grows_with_the_import() {
        // 12 counts, a date with room to grow, a month entry and its rendering.
        assert_eq!(Analytics::weight(1000), 1000 * (48 + 2 * 4 + 64));
        assert_eq!(Analytics::weight(0), 0);
    }

    #[test]
    fn a_town_left_empty_disappears_and_a_new_one_appears() {
        let citizens = import(&[(0, 1), (1, 2)], &[]);
        let mut analytics = Analytics::new(&citizens);
        let mut moved = Citizen::clone(&citizens[1]);
        moved.town = Place::parse(TOWNS[2].into()).unwrap();
        let after = after_patch(&citizens, &moved).unwrap();
        analytics.apply(&after, &citizens[1], &moved).unwrap();
        let today = date(20_000).date();
        let towns: Vec<String> = analytics
            .percentiles(today)
            .into_iter()
            .map(|t| t.town)
            .collect();
        assert_eq!(towns, ["Abakan", "Москва"]);
    }
}
