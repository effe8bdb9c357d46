//! The analytics as a store keeps them beside the citizens, so that a read
//! with nothing of the import in memory costs the size of its answer, not a
//! pass over every citizen.
//!
//! - **Presents rows**: `(month, citizen_id, presents)` for each citizen
//!   with presents that month — exactly what GET birthdays lists.
//! - **Town dates**: per town, its distinct birth dates ascending, each with
//!   how many of the town's citizens were born that day, kept as one blob
//!   per town ([`encode_dates`]: 8 bytes per date). Its size is bounded by
//!   the calendar (one entry per day), not by the import. Dates, not ages:
//!   the same entries answer on any day (see `domain::analytics`).
//!
//! An import stores [`Summary::of`] its citizens; a PATCH changes them in
//! its own transaction by the rows of its plan (`domain::patch`), with
//! [`adjust_dates`] for a town's blob, and no other row. Every answer equals `stats::birthdays` and
//! `stats::town_percentiles` from scratch, bit for bit (property-tested
//! below, over random PATCH sequences and days either side of midnight).

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use time::Date;

use super::citizen::{BirthDate, Citizen, CitizenId};
use super::stats::{Birthdays, Presents, QUANTILES, TownAges, percentile_by, round2};

/// One month's presents of one citizen: month (1–12), who, how many (≥ 1).
pub type PresentsRow = (u8, CitizenId, u32);

/// One town's birth dates, ascending, each with how many citizens have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TownDates {
    /// The town.
    pub town: String,
    /// Its encoded dates ([`encode_dates`]).
    pub dates: Vec<u8>,
}

/// What a store keeps of one import for the analytics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Ordered by month, then citizen_id.
    pub presents: Vec<PresentsRow>,
    /// Ordered by town (code point order, which is byte order of UTF-8).
    pub towns: Vec<TownDates>,
}

/// Bytes per entry of an encoded town: the date as `yyyymmdd` and its
/// count, both little-endian `u32`.
pub const ENTRY: usize = 8;

/// `yyyymmdd`: ordered as the dates are.
#[allow(clippy::cast_sign_loss)] // validated dates are years 1–9999
fn key(date: BirthDate) -> u32 {
    let d = date.date();
    d.year() as u32 * 10_000 + u32::from(d.month() as u8) * 100 + u32::from(d.day())
}

#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)] // parts of a yyyymmdd key
fn from_key(key: u32) -> Option<BirthDate> {
    BirthDate::from_ymd(
        (key / 10_000) as i32,
        (key / 100 % 100) as u8,
        (key % 100) as u8,
    )
}

/// A date as stores key a town's dates: `yyyymmdd`, ordered as the dates are.
pub fn date_key(date: BirthDate) -> u32 {
    key(date)
}

/// The date of a [`date_key`]; `None` for a number that is no date.
pub fn date_of_key(key: u32) -> Option<BirthDate> {
    from_key(key)
}

fn entry_at(blob: &[u8], i: usize) -> (u32, u32) {
    let at = i * ENTRY;
    let word = |from: usize| u32::from_le_bytes(blob[from..from + 4].try_into().expect("4 bytes"));
    (word(at), word(at + 4))
}

/// Encodes dates with their counts, which must be ascending by date.
pub fn encode_dates(dates: &[(BirthDate, u32)]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(dates.len() * ENTRY);
    for &(date, count) in dates {
        blob.extend_from_slice(&key(date).to_le_bytes());
        blob.extend_from_slice(&count.to_le_bytes());
    }
    blob
}

/// Decodes [`encode_dates`]; `None` when the blob is not one (cut short,
/// not a date, out of order or a zero count).
pub fn decode_dates(blob: &[u8]) -> Option<Vec<(BirthDate, u32)>> {
    if !blob.len().is_multiple_of(ENTRY) {
        return None;
    }
    let mut dates: Vec<(BirthDate, u32)> = Vec::with_capacity(blob.len() / ENTRY);
    for i in 0..blob.len() / ENTRY {
        let (key, count) = entry_at(blob, i);
        let date = from_key(key)?;
        if count == 0 || dates.last().is_some_and(|&(last, _)| last >= date) {
            return None;
        }
        dates.push((date, count));
    }
    Some(dates)
}

/// Adds `delta` (±1) citizens born on `date` to an encoded town, in place:
/// an entry whose count reaches 0 goes. O(entries) at most (one move of the
/// bytes after it), O(log entries) to find it. False, and nothing changed,
/// when the blob is not an encoded town or the count would go below 0.
pub fn adjust_dates(blob: &mut Vec<u8>, date: BirthDate, delta: i32) -> bool {
    if !blob.len().is_multiple_of(ENTRY) {
        return false;
    }
    let wanted = key(date);
    let len = blob.len() / ENTRY;
    let (mut low, mut high) = (0, len);
    while low < high {
        let mid = usize::midpoint(low, high);
        if entry_at(blob, mid).0 < wanted {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    let at = low * ENTRY;
    let found = low < len && entry_at(blob, low).0 == wanted;
    let count = if found {
        i64::from(entry_at(blob, low).1)
    } else {
        0
    } + i64::from(delta);
    let Ok(count) = u32::try_from(count) else {
        return false;
    };
    match (found, count) {
        (true, 0) => {
            blob.drain(at..at + ENTRY);
        }
        (true, _) => blob[at + 4..at + ENTRY].copy_from_slice(&count.to_le_bytes()),
        (false, 0) => {}
        (false, _) => {
            let mut entry = [0u8; ENTRY];
            entry[..4].copy_from_slice(&wanted.to_le_bytes());
            entry[4..].copy_from_slice(&count.to_le_bytes());
            blob.splice(at..at, entry);
        }
    }
    true
}

/// A town's distinct birth dates, ascending, each with how many of its
/// citizens were born that day: what [`TownDates`] encodes.
pub type CountedDates = Vec<(BirthDate, u32)>;

impl Summary {
    /// The summary of `citizens`, which must be ordered by citizen_id.
    /// O(citizens · log citizens + links).
    pub fn of<C: Borrow<Citizen>>(citizens: &[C]) -> Self {
        let (presents, towns) = Self::parts(citizens);
        let towns = towns
            .into_iter()
            .map(|(town, counted)| TownDates {
                town,
                dates: encode_dates(&counted),
            })
            .collect();
        Self { presents, towns }
    }

    /// [`Summary::of`] before the dates are encoded: the presents rows, and
    /// the towns in order with their counted dates (for a store that keeps
    /// them as rows).
    pub fn parts<C: Borrow<Citizen>>(
        citizens: &[C],
    ) -> (Vec<PresentsRow>, Vec<(String, CountedDates)>) {
        let birthdays = super::stats::birthdays(citizens);
        let mut presents: Vec<PresentsRow> = birthdays
            .0
            .iter()
            .zip(1u8..)
            .flat_map(|(entries, month)| {
                entries
                    .iter()
                    .map(move |p| (month, p.citizen_id, p.presents))
            })
            .collect();
        // Already so when the citizens are ordered by id.
        presents.sort_unstable();
        let mut towns: BTreeMap<&str, Vec<BirthDate>> = BTreeMap::new();
        for citizen in citizens {
            let citizen = citizen.borrow();
            towns
                .entry(citizen.town.as_str())
                .or_default()
                .push(citizen.birth_date);
        }
        let towns = towns
            .into_iter()
            .map(|(town, mut dates)| {
                dates.sort_unstable();
                let mut counted: CountedDates = Vec::new();
                for date in dates {
                    match counted.last_mut() {
                        Some((last, count)) if *last == date => *count += 1,
                        _ => counted.push((date, 1)),
                    }
                }
                (town.to_owned(), counted)
            })
            .collect();
        (presents, towns)
    }
}

/// GET birthdays from presents rows ordered by month, then citizen_id.
pub fn birthdays(rows: impl IntoIterator<Item = PresentsRow>) -> Birthdays {
    let mut answer = Birthdays::default();
    for (month, citizen_id, presents) in rows {
        if let Some(entries) = answer.0.get_mut(usize::from(month).wrapping_sub(1)) {
            entries.push(Presents {
                citizen_id,
                presents,
            });
        }
    }
    answer
}

/// Age percentiles per town on `today` from the towns' dates (ordered by
/// town). O(dates): each town's counts are summed once. `None` when a
/// town's blob is not an encoded town.
pub fn percentiles(towns: &[TownDates], today: Date) -> Option<Vec<TownAges>> {
    towns
        .iter()
        .filter(|town| !town.dates.is_empty())
        .map(|town| {
            let dates = decode_dates(&town.dates)?;
            // ends[i]: how many citizens are born on dates[..=i].
            let ends: Vec<u64> = dates
                .iter()
                .scan(0u64, |sum, &(_, count)| {
                    *sum += u64::from(count);
                    Some(*sum)
                })
                .collect();
            let n = usize::try_from(*ends.last()?).ok()?;
            // The i-th age ascending is the i-th date from the latest back.
            let age = |i: usize| {
                let rank = (n - 1 - i) as u64;
                let at = ends.partition_point(|&end| end <= rank);
                dates[at].0.age_on(today)
            };
            Some(TownAges {
                town: town.town.clone(),
                p50: round2(percentile_by(n, age, QUANTILES[0])),
                p75: round2(percentile_by(n, age, QUANTILES[1])),
                p99: round2(percentile_by(n, age, QUANTILES[2])),
            })
        })
        .collect()
}

/// The smallest encoded town that [`percentiles`] answers as it answers
/// `blob`, on every day: the same number of citizens, and the same dates at
/// the ranks the percentiles read (at most two each), each entry counting
/// the citizens up to the next of those ranks. At most six entries, 48
/// bytes, whatever the town's size. A store that reads over a network keeps
/// it beside the town's dates, so that a cold percentiles read moves a few
/// bytes a town, not its calendar. `None` when `blob` is not an encoded
/// town (or a town too big for a count).
pub fn picked(blob: &[u8]) -> Option<Vec<u8>> {
    let dates = decode_dates(blob)?;
    let ends: Vec<u64> = dates
        .iter()
        .scan(0u64, |sum, &(_, count)| {
            *sum += u64::from(count);
            Some(*sum)
        })
        .collect();
    let Some(&total) = ends.last() else {
        return Some(Vec::new());
    };
    let n = usize::try_from(total).ok()?;
    // The ranks, ascending by date, that `percentiles` reads: the i-th age
    // ascending is the (n-1-i)-th date. Asked of the one rule itself.
    let asked = RefCell::new(BTreeSet::new());
    for q in QUANTILES {
        percentile_by(
            n,
            |i| {
                asked.borrow_mut().insert(n - 1 - i);
                0
            },
            q,
        );
    }
    let ranks: Vec<usize> = asked.into_inner().into_iter().collect();
    let mut kept: CountedDates = Vec::with_capacity(ranks.len());
    let mut below = 0u64;
    for (k, &rank) in ranks.iter().enumerate() {
        let date = dates[ends.partition_point(|&end| end <= rank as u64)].0;
        // The last entry counts the citizens born after it too.
        let end = if k + 1 == ranks.len() {
            total
        } else {
            rank as u64 + 1
        };
        let count = u32::try_from(end - below).ok()?;
        match kept.last_mut() {
            Some((last, counted)) if *last == date => *counted = counted.checked_add(count)?,
            _ => kept.push((date, count)),
        }
        below = end;
    }
    Some(encode_dates(&kept))
}

#[cfg(test)]
#[allow(clippy::float_cmp)] // whole-number ages, exact
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::domain::analytics::tests::{
        Patch, TOWNS, assert_same_percentiles, date, import, patch_strategy, patched,
    };
    use crate::domain::patch::after_patch;

    /// A store's rows of one import, changed as the stores change them.
    struct Kept {
        presents: BTreeMap<(u8, CitizenId), u32>,
        towns: BTreeMap<String, Vec<u8>>,
    }

    impl Kept {
        fn of(citizens: &[Arc<Citizen>]) -> Self {
            let summary = Summary::of(citizens);
            Self {
                presents: summary
                    .presents
                    .into_iter()
                    .map(|(m, c, p)| ((m, c), p))
                    .collect(),
                towns: summary
                    .towns
                    .into_iter()
                    .map(|t| (t.town, t.dates))
                    .collect(),
            }
        }

        /// Applies the plan's rows as the stores do (`domain::patch`).
        fn apply(&mut self, citizens: &[Arc<Citizen>], before: &Citizen, now: &Citizen) {
            let month_of = |id: CitizenId| {
                citizens
                    .iter()
                    .find(|c| c.citizen_id == id)
                    .map(|c| c.birth_date.month())
            };
            let plan = crate::domain::patch::plan(before, &crate::domain::patch::to(now), month_of)
                .expect("a symmetric import");
            for (month, citizen, delta) in plan.presents {
                let count = self.presents.entry((month, citizen)).or_default();
                *count = u32::try_from(i64::from(*count) + delta).expect("not below 0");
                if *count == 0 {
                    self.presents.remove(&(month, citizen));
                }
            }
            if let Some(moved) = plan.births {
                let (town, date) = moved.from;
                let old = self.towns.get_mut(town.as_str()).expect("old town");
                assert!(adjust_dates(old, date, -1));
                if old.is_empty() {
                    self.towns.remove(town.as_str());
                }
                let (town, date) = moved.to;
                let new = self.towns.entry(town.as_str().to_owned()).or_default();
                assert!(adjust_dates(new, date, 1));
            }
        }

        fn towns(&self) -> Vec<TownDates> {
            self.towns
                .iter()
                .map(|(town, dates)| TownDates {
                    town: town.clone(),
                    dates: dates.clone(),
                })
                .collect()
        }
    }

    fn assert_same_answers(kept: &Kept, citizens: &[Arc<Citizen>], days: &[Date]) {
        let rows = kept.presents.iter().map(|(&(m, c), &p)| (m, c, p));
        assert_eq!(birthdays(rows), crate::domain::stats::birthdays(citizens));
        let towns = kept.towns();
        assert_same_percentiles(
            |today| percentiles(&towns, today).expect("well-formed towns"),
            citizens,
            days,
        );
        let picked = picked_towns(&towns);
        assert_same_percentiles(
            |today| percentiles(&picked, today).expect("well-formed picks"),
            citizens,
            days,
        );
    }

    fn picked_towns(towns: &[TownDates]) -> Vec<TownDates> {
        towns
            .iter()
            .map(|t| TownDates {
                town: t.town.clone(),
                dates: picked(&t.dates).expect("an encoded town"),
            })
            .collect()
    }

    proptest! {
        /// Rows changed PATCH by PATCH answer what a full recomputation
        /// answers, on days either side of midnight and of birthdays (29
        /// February included), and equal the summary of the import as it is.
        #[test]
        fn kept_rows_answer_as_a_full_recomputation(
            people in prop::collection::vec((0..TOWNS.len(), 0..27_000i32), 1..40),
            links in prop::collection::vec((any::<usize>(), any::<usize>()), 0..60),
            patches in prop::collection::vec(patch_strategy(), 1..25),
            day in 0..30_000i32,
        ) {
            let mut citizens = import(&people, &links);
            let mut kept = Kept::of(&citizens);
            let today = date(day).date();
            let days = [today, today.next_day().unwrap(), today.previous_day().unwrap()];
            assert_same_answers(&kept, &citizens, &days);
            for patch in &patches {
                let patch: &Patch = patch;
                let now = patched(&citizens, patch);
                let before = Arc::clone(&citizens[patch.who % citizens.len()]);
                kept.apply(&citizens, &before, &now);
                citizens = after_patch(&citizens, &now).expect("the citizen is there");
                assert_same_answers(&kept, &citizens, &days);
                let fresh = Summary::of(&citizens);
                prop_assert_eq!(kept.towns(), fresh.towns);
                let rows: Vec<PresentsRow> =
                    kept.presents.iter().map(|(&(m, c), &p)| (m, c, p)).collect();
                prop_assert_eq!(rows, fresh.presents);
            }
        }

        /// A town's picks answer its percentiles on any day, in at most six
        /// entries, and picking them again changes nothing.
        #[test]
        fn picked_dates_answer_as_the_whole_town(
            days in prop::collection::btree_map(0..27_000i32, 1..4u32, 1..700),
            today in 0..30_000i32,
        ) {
            let list: Vec<(BirthDate, u32)> = days.iter().map(|(&d, &n)| (date(d), n)).collect();
            let towns = [TownDates { town: "Керчь".into(), dates: encode_dates(&list) }];
            let picks = picked_towns(&towns);
            prop_assert!(picks[0].dates.len() <= 6 * ENTRY);
            prop_assert_eq!(picked(&picks[0].dates), Some(picks[0].dates.clone()));
            let today = date(today).date();
            for day in [today, today.next_day().unwrap(), today.previous_day().unwrap()] {
                prop_assert_eq!(percentiles(&picks, day), percentiles(&towns, day));
            }
        }

        /// Encoding round-trips, and adjusting the blob is adjusting the list.
        #[test]
        fn adjusting_a_blob_adjusts_its_dates(
            days in prop::collection::btree_map(0..27_000i32, 1..5u32, 0..30),
            changes in prop::collection::vec((0..27_000i32, prop::bool::ANY), 0..30),
        ) {
            let mut list: BTreeMap<BirthDate, u32> =
                days.iter().map(|(&d, &n)| (date(d), n)).collect();
            let mut blob = encode_dates(&list.iter().map(|(&d, &n)| (d, n)).collect::<Vec<_>>());
            for (day, add) in changes {
                let d = date(day);
                let count = list.get(&d).copied().unwrap_or(0);
                let applied = adjust_dates(&mut blob, d, if add { 1 } else { -1 });
                prop_assert_eq!(applied, add || count > 0);
                match (add, count) {
                    (true, _) => *list.entry(d).or_default() += 1,
                    (false, 0) => {}
                    (false, 1) => { list.remove(&d); }
                    (false, _) => *list.get_mut(&d).unwrap() -= 1,
                }
                let want: Vec<(BirthDate, u32)> = list.iter().map(|(&d, &n)| (d, n)).collect();
                prop_assert_eq!(decode_dates(&blob), Some(want));
            }
        }
    }

    #[test]
    fn a_blob_that_is_not_an_encoded_town_is_refused() {
        let d = |y, m, dd| BirthDate::from_ymd(y, m, dd).unwrap();
        let good = encode_dates(&[(d(2000, 2, 29), 2), (d(2001, 1, 1), 1)]);
        assert_eq!(
            decode_dates(&good),
            Some(vec![(d(2000, 2, 29), 2), (d(2001, 1, 1), 1)])
        );
        assert_eq!(decode_dates(&good[..7]), None, "cut short");
        let swapped = [&good[8..], &good[..8]].concat();
        assert_eq!(decode_dates(&swapped), None, "out of order");
        let mut zero = good.clone();
        zero[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode_dates(&zero), None, "a zero count");
        let mut not_a_date = good.clone();
        not_a_date[..4].copy_from_slice(&20_010_229u32.to_le_bytes());
        assert_eq!(decode_dates(&not_a_date), None, "29.02.2001");
        let mut cut = good[..7].to_vec();
        assert!(!adjust_dates(&mut cut, d(2000, 2, 29), 1));
        assert_eq!(cut, good[..7]);
        let towns = [TownDates {
            town: "Керчь".into(),
            dates: good[..7].to_vec(),
        }];
        assert_eq!(percentiles(&towns, d(2020, 1, 1).date()), None);
        assert_eq!(picked(&good[..7]), None);
        assert_eq!(picked(&swapped), None);
        assert_eq!(picked(&[]), Some(Vec::new()));
    }

    #[test]
    fn a_town_with_one_date_shared_by_several_answers_their_age() {
        let born = BirthDate::from_ymd(2000, 2, 29).unwrap();
        let towns = [TownDates {
            town: "Керчь".into(),
            dates: encode_dates(&[(born, 3)]),
        }];
        let on = |y, m, d| {
            percentiles(
                &towns,
                Date::from_calendar_date(y, time::Month::try_from(m).unwrap(), d).unwrap(),
            )
            .unwrap()[0]
                .p99
        };
        assert_eq!(on(2021, 2, 28), 20.0);
        assert_eq!(on(2021, 3, 1), 21.0);
    }
}
