//! The two analytics: presents per month and age percentiles per town.
//!
//! Plain functions over citizens; "today" is always a parameter.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use time::Date;

use super::citizen::{Citizen, CitizenId};

/// One citizen's presents in one month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Presents {
    /// Who buys.
    pub citizen_id: CitizenId,
    /// How many presents (≥ 1).
    pub presents: u32,
}

/// Presents per month: index 0 is January. Each month is ordered by citizen_id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Birthdays(pub [Vec<Presents>; 12]);

impl Serialize for Birthdays {
    /// An object with exactly the keys "1" to "12", in that order.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        const KEYS: [&str; 12] = [
            "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
        ];
        let mut map = serializer.serialize_map(Some(12))?;
        for (key, entries) in KEYS.iter().zip(&self.0) {
            map.serialize_entry(key, entries)?;
        }
        map.end()
    }
}

/// For every citizen and month, how many of its relatives are born that month.
///
/// `citizens` must be ordered by citizen_id (as storage returns them); the
/// answer then comes out ordered without sorting. O(citizens + links).
pub fn birthdays<C: Borrow<Citizen>>(citizens: &[C]) -> Birthdays {
    let month_of: HashMap<CitizenId, u8> = citizens
        .iter()
        .map(|c| (c.borrow().citizen_id, c.borrow().birth_date.month()))
        .collect();
    let mut result = Birthdays::default();
    let mut counts = [0u32; 12];
    for citizen in citizens {
        let citizen = citizen.borrow();
        for relative in &citizen.relatives {
            // Storage keeps relatives inside the import; a missing one would be a bug
            // upstream, and skipping it is the safe answer here.
            if let Some(&month) = month_of.get(relative) {
                counts[usize::from(month - 1)] += 1;
            }
        }
        for (month, count) in counts.iter_mut().enumerate() {
            if *count > 0 {
                result.0[month].push(Presents {
                    citizen_id: citizen.citizen_id,
                    presents: *count,
                });
                *count = 0;
            }
        }
    }
    result
}

/// Age percentiles of one town.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TownAges {
    /// Town name.
    pub town: String,
    /// Median age.
    pub p50: f64,
    /// 75th percentile.
    pub p75: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// The percentiles GET percentile/age answers: p50, p75 and p99.
pub const QUANTILES: [f64; 3] = [50.0, 75.0, 99.0];

/// p50, p75 and p99 of ages per town on `today`, towns ordered by name
/// (Unicode code point order), values rounded to 2 decimals.
pub fn town_percentiles<C: Borrow<Citizen>>(citizens: &[C], today: Date) -> Vec<TownAges> {
    let mut ages: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for citizen in citizens {
        let citizen = citizen.borrow();
        ages.entry(citizen.town.as_str())
            .or_default()
            .push(citizen.birth_date.age_on(today));
    }
    ages.into_iter()
        .map(|(town, mut ages)| {
            ages.sort_unstable();
            TownAges {
                town: town.to_owned(),
                p50: round2(percentile(&ages, QUANTILES[0])),
                p75: round2(percentile(&ages, QUANTILES[1])),
                p99: round2(percentile(&ages, QUANTILES[2])),
            }
        })
        .collect()
}

/// `numpy.percentile(sorted, q)` with the default linear method, step for step:
/// virtual index `(n−1)·(q/100)`, then numpy's `_lerp`, which switches to
/// `b − (b−a)·(1−t)` for t ≥ 0.5 to be exact at the upper neighbour.
///
/// `sorted` must be ascending and non-empty.
pub fn percentile(sorted: &[i64], q: f64) -> f64 {
    percentile_by(sorted.len(), |i| sorted[i], q)
}

/// [`percentile`] of an ascending list of `len` values given by `at`, which
/// is asked for at most two of them.
///
/// `len` must be positive.
// The formula's own letters; `below` is a non-negative whole number < len.
#[allow(
    clippy::many_single_char_names,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
pub fn percentile_by(len: usize, at: impl Fn(usize) -> i64, q: f64) -> f64 {
    assert!(len > 0, "percentile of an empty list");
    let last = len - 1;
    let index = last as f64 * (q / 100.0);
    let below = index.floor();
    if below >= last as f64 {
        return at(last) as f64;
    }
    let i = below as usize;
    let (a, b) = (at(i) as f64, at(i + 1) as f64);
    let t = index - below;
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

/// Rounds to 2 decimals the way Python's `round(x, 2)` does: to the nearest
/// double of the correctly rounded decimal (Rust's formatter rounds the exact
/// binary value, ties to even, like CPython's dtoa).
pub fn round2(value: f64) -> f64 {
    format!("{value:.2}")
        .parse()
        .expect("a formatted finite float parses back")
}

#[cfg(test)]
#[allow(clippy::float_cmp)] // the expected values are exact: numpy's own, or whole numbers
mod tests {
    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    struct Vector {
        ages: Vec<i64>,
        results: Vec<Expected>,
    }

    #[derive(Deserialize)]
    struct Expected {
        q: f64,
        numpy: f64,
        rounded: f64,
    }

    /// Vectors made by `scripts/percentile_vectors.py` with numpy itself.
    #[test]
    fn percentiles_match_numpy_on_recorded_vectors() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/domain/testdata/percentiles.json"
        );
        let text = std::fs::read_to_string(path).expect("vectors file");
        let vectors: Vec<Vector> = serde_json::from_str(&text).expect("vectors parse");
        assert!(vectors.len() >= 200, "expected at least 200 lists");
        for (n, v) in vectors.iter().enumerate() {
            let mut sorted = v.ages.clone();
            sorted.sort_unstable();
            for e in &v.results {
                let got = percentile(&sorted, e.q);
                assert_eq!(
                    got.to_bits(),
                    e.numpy.to_bits(),
                    "list {n} (len {}), q={}: {got} != numpy {}",
                    sorted.len(),
                    e.q,
                    e.numpy
                );
                assert_eq!(
                    round2(got),
                    e.rounded,
                    "list {n}, q={}: rounding of {got}",
                    e.q
                );
            }
        }
    }

    #[test]
    fn percentiles_of_small_lists() {
        assert_eq!(percentile(&[7], 99.0), 7.0);
        assert_eq!(percentile(&[10, 20], 50.0), 15.0);
        assert_eq!(percentile(&[10, 20], 75.0), 17.5);
        assert_eq!(percentile(&[10, 20], 99.0), 19.9);
        assert_eq!(percentile(&[5, 5, 5, 5], 75.0), 5.0);
    }

    proptest! {
        #[test]
        fn percentiles_lie_between_min_and_max_and_grow_with_q(
            mut ages in prop::collection::vec(0i64..130, 1..300),
            q1 in 0.0f64..=100.0,
            q2 in 0.0f64..=100.0,
        ) {
            ages.sort_unstable();
            let (lo, hi) = (q1.min(q2), q1.max(q2));
            let (p_lo, p_hi) = (percentile(&ages, lo), percentile(&ages, hi));
            prop_assert!(p_lo <= p_hi + 1e-9, "p{lo}={p_lo} > p{hi}={p_hi}");
            prop_assert!(ages[0] as f64 <= p_lo && p_hi <= *ages.last().unwrap() as f64);
            prop_assert_eq!(percentile(&ages, 0.0), ages[0] as f64);
            prop_assert_eq!(percentile(&ages, 100.0), *ages.last().unwrap() as f64);
        }

        #[test]
        fn percentiles_of_equal_ages_are_that_age(age in 0i64..150, n in 1usize..100, q in 0.0f64..=100.0) {
            prop_assert_eq!(percentile(&vec![age; n], q), age as f64);
        }

        #[test]
        fn rounding_keeps_two_decimals(x in 0.0f64..200.0) {
            let r = round2(x);
            prop_assert!((r - x).abs() <= 0.005 + 1e-9);
            prop_assert_eq!(round2(r), r);
        }
    }
}
