//! The orders a sorted listing walks (`GET /imports/{id}/citizens?sort=`):
//! an import's citizen ids sorted by one field, with each citizen's search
//! text and the months it buys presents in beside its id, so a sorted search
//! or a month's buyers need no read of the store.
//!
//! The rule, the one the analysts' page applies to an import it holds whole
//! (`ui/app.js`, `sortedFiltered`; a browser test compares the two): text
//! fields compare as the Unicode collation for Russian does (CLDR: Cyrillic
//! before Latin, letter case and `ё` after the base letter, what
//! `Intl.Collator('ru')` does in a browser); the birth date by date, the
//! apartment as a number, `relatives` by how many; citizens that compare
//! equal by their id. Descending is the same order walked backwards.

use std::collections::HashMap;

use icu_collator::CollatorBorrowed;
use icu_collator::options::CollatorOptions;
use icu_locale_core::locale;

use super::Citizen;
use super::search::haystack;

/// The field a listing is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SortKey {
    /// The id (descending: ascending is the store's own order).
    CitizenId,
    /// The name, collated.
    Name,
    /// The town, collated.
    Town,
    /// The street, collated.
    Street,
    /// The building, collated (as text: "10" before "2").
    Building,
    /// The apartment number.
    Apartment,
    /// The birth date.
    BirthDate,
    /// The gender, collated ("female" before "male").
    Gender,
    /// How many relatives.
    Relatives,
}

impl SortKey {
    /// Every key, by the name the query uses (the citizen's field).
    pub const ALL: [(Self, &'static str); 9] = [
        (Self::CitizenId, "citizen_id"),
        (Self::Name, "name"),
        (Self::Town, "town"),
        (Self::Street, "street"),
        (Self::Building, "building"),
        (Self::Apartment, "apartment"),
        (Self::BirthDate, "birth_date"),
        (Self::Gender, "gender"),
        (Self::Relatives, "relatives"),
    ];

    /// The key named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(k, _)| *k)
    }

    /// The field's name.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .map_or("citizen_id", |(_, n)| n)
    }

    fn is_text(self) -> bool {
        matches!(
            self,
            Self::Name | Self::Town | Self::Street | Self::Building | Self::Gender
        )
    }
}

/// The citizens of an import gathered for an order by `key`, in any order.
pub struct OrderBuilder {
    key: SortKey,
    /// Per citizen: the value compared (a number, or for a text field the
    /// index of its text in `texts`) and the id.
    rows: Vec<(u64, u64)>,
    texts: HashMap<Box<str>, u64>,
    /// Per citizen, where its search text ends in `haystacks`.
    ends: Vec<usize>,
    haystacks: Vec<u8>,
    /// Per citizen, its birth month, and where its relatives end in `relatives`.
    born: Vec<u8>,
    relatives_end: Vec<usize>,
    relatives: Vec<u64>,
}

impl OrderBuilder {
    /// An empty builder of the order by `key`.
    pub fn new(key: SortKey) -> Self {
        Self {
            key,
            rows: Vec::new(),
            texts: HashMap::new(),
            ends: Vec::new(),
            haystacks: Vec::new(),
            born: Vec::new(),
            relatives_end: Vec::new(),
            relatives: Vec::new(),
        }
    }

    /// Adds a citizen (each once).
    pub fn push(&mut self, c: &Citizen) {
        let text = match self.key {
            SortKey::Name => Some(c.name.as_str()),
            SortKey::Town => Some(c.town.as_str()),
            SortKey::Street => Some(c.street.as_str()),
            SortKey::Building => Some(c.building.as_str()),
            SortKey::Gender => Some(c.gender.as_str()),
            _ => None,
        };
        let value = match (self.key, text) {
            (_, Some(text)) => {
                if let Some(&index) = self.texts.get(text) {
                    index
                } else {
                    let index = self.texts.len() as u64;
                    self.texts.insert(text.into(), index);
                    index
                }
            }
            (SortKey::Apartment, _) => c.apartment.get(),
            // Julian day numbers of years 1 to 9999 are positive.
            (SortKey::BirthDate, _) => {
                u64::try_from(c.birth_date.date().to_julian_day()).unwrap_or(0)
            }
            (SortKey::Relatives, _) => c.relatives.len() as u64,
            _ => 0,
        };
        self.rows.push((value, c.citizen_id.get()));
        self.haystacks.extend_from_slice(haystack(c).as_bytes());
        self.ends.push(self.haystacks.len());
        self.born.push(c.birth_date.month());
        self.relatives.extend(c.relatives.iter().map(|r| r.get()));
        self.relatives_end.push(self.relatives.len());
    }

    /// Per citizen, the months it buys presents in: bit `m - 1` for month
    /// `m` when a relative of its is born then (one present per relative, in
    /// the month of the relative's birthday: the birthdays answer's rule, and
    /// a test compares the two).
    fn months_bought(&self) -> Vec<u16> {
        let mut born: Vec<(u64, u8)> = self
            .rows
            .iter()
            .map(|r| r.1)
            .zip(self.born.iter().copied())
            .collect();
        born.sort_unstable();
        let month_of = |id: u64| {
            born.binary_search_by_key(&id, |b| b.0)
                .ok()
                .map(|at| born[at].1)
        };
        (0..self.rows.len())
            .map(|i| {
                let start = if i == 0 { 0 } else { self.relatives_end[i - 1] };
                self.relatives[start..self.relatives_end[i]]
                    .iter()
                    .filter_map(|&r| month_of(r))
                    .fold(0u16, |mask, month| mask | 1 << (month - 1))
            })
            .collect()
    }

    /// The order, encoded for [`Order::parse`].
    pub fn finish(mut self) -> Result<Vec<u8>, String> {
        if self.key.is_text() {
            let ranks = collation_ranks(std::mem::take(&mut self.texts))?;
            for row in &mut self.rows {
                row.0 = ranks[usize::try_from(row.0).map_err(|e| e.to_string())?];
            }
        }
        let mut sorted: Vec<usize> = (0..self.rows.len()).collect();
        sorted.sort_unstable_by_key(|&i| self.rows[i]);
        let months = self.months_bought();
        let n = sorted.len();
        let mut out = Vec::with_capacity(8 + 18 * n + self.haystacks.len());
        out.extend_from_slice(&(n as u64).to_le_bytes());
        for &i in &sorted {
            out.extend_from_slice(&self.rows[i].1.to_le_bytes());
        }
        for &i in &sorted {
            out.extend_from_slice(&months[i].to_le_bytes());
        }
        let mut end = 0;
        for &i in &sorted {
            end += self.ends[i] - self.start(i);
            out.extend_from_slice(&(end as u64).to_le_bytes());
        }
        for &i in &sorted {
            out.extend_from_slice(&self.haystacks[self.start(i)..self.ends[i]]);
        }
        Ok(out)
    }

    fn start(&self, i: usize) -> usize {
        if i == 0 { 0 } else { self.ends[i - 1] }
    }
}

/// Each text's rank in the Russian collation (texts that collate equal
/// share one), indexed as `texts` numbers them.
fn collation_ranks(texts: HashMap<Box<str>, u64>) -> Result<Vec<u64>, String> {
    let collator = CollatorBorrowed::try_new(locale!("ru").into(), CollatorOptions::default())
        .map_err(|e| format!("the collator: {e}"))?;
    // Sort keys compare as the collator does, and cost one pass per text
    // rather than one per comparison.
    let mut keyed: Vec<(Vec<u8>, u64)> = texts
        .into_iter()
        .map(|(text, index)| {
            let mut key = Vec::new();
            let Ok(()) = collator.write_sort_key_to(&text, &mut key);
            (key, index)
        })
        .collect();
    keyed.sort_unstable();
    let mut ranks = vec![0; keyed.len()];
    let mut rank = 0;
    for (i, (key, index)) in keyed.iter().enumerate() {
        if i > 0 && *key != keyed[i - 1].0 {
            rank += 1;
        }
        ranks[usize::try_from(*index).map_err(|e| e.to_string())?] = rank;
    }
    Ok(ranks)
}

/// An encoded order: the ids in order, the months each buys in (u16s), where
/// each search text ends, then the texts (little-endian u64s but the months).
pub struct Order<'a> {
    len: usize,
    ids: &'a [u8],
    months: &'a [u8],
    ends: &'a [u8],
    texts: &'a [u8],
}

impl<'a> Order<'a> {
    /// Reads an order [`OrderBuilder::finish`] wrote (`None` if it is not one).
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let (len, rest) = bytes.split_first_chunk::<8>()?;
        let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
        let (ids, rest) = rest.split_at_checked(len.checked_mul(8)?)?;
        let (months, rest) = rest.split_at_checked(len.checked_mul(2)?)?;
        let (ends, texts) = rest.split_at_checked(len.checked_mul(8)?)?;
        let order = Self {
            len,
            ids,
            months,
            ends,
            texts,
        };
        let last = if len == 0 { 0 } else { order.end(len - 1) };
        (last == texts.len()).then_some(order)
    }

    /// How many citizens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the import has none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The id of the `i`-th citizen of the walk, ascending or descending.
    pub fn id(&self, i: usize, descending: bool) -> u64 {
        word(self.ids, self.at(i, descending))
    }

    /// Whether the `i`-th citizen of the walk has `wanted` in its search text.
    pub fn finds(&self, i: usize, descending: bool, wanted: &str) -> bool {
        let at = self.at(i, descending);
        let start = if at == 0 { 0 } else { self.end(at - 1) };
        self.texts
            .get(start..self.end(at))
            .and_then(|text| std::str::from_utf8(text).ok())
            .is_some_and(|text| text.contains(wanted))
    }

    /// Whether the `i`-th citizen of the walk buys presents in `month` (1–12).
    pub fn buys_in(&self, i: usize, descending: bool, month: u8) -> bool {
        let at = self.at(i, descending);
        let mask = self
            .months
            .get(at * 2..at * 2 + 2)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
        (1..=12).contains(&month) && mask & 1 << (month - 1) != 0
    }

    /// Where a walk goes on after its `position`-th citizen, `id`: there if
    /// it is still that citizen, else after wherever that citizen is now
    /// (`None`: not a citizen of this order).
    pub fn resume(&self, position: usize, id: u64, descending: bool) -> Option<usize> {
        if (1..=self.len).contains(&position) && self.id(position - 1, descending) == id {
            return Some(position);
        }
        (0..self.len)
            .find(|&i| self.id(i, descending) == id)
            .map(|i| i + 1)
    }

    fn at(&self, i: usize, descending: bool) -> usize {
        if descending { self.len - 1 - i } else { i }
    }

    fn end(&self, i: usize) -> usize {
        usize::try_from(word(self.ends, i)).unwrap_or(usize::MAX)
    }
}

/// The `i`-th little-endian u64 of `bytes` (0 past the end: `parse` checked
/// the lengths).
fn word(bytes: &[u8], i: usize) -> u64 {
    bytes
        .get(i * 8..i * 8 + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Apartment, BirthDate, CitizenId, Gender, Name, Place};

    fn citizen(id: u64, name: &str, town: &str, born: &str, relatives: usize) -> Citizen {
        Citizen {
            citizen_id: CitizenId::parse(id).unwrap(),
            town: Place::parse(town.into()).unwrap(),
            street: Place::parse("Ленина".into()).unwrap(),
            building: Place::parse("1".into()).unwrap(),
            apartment: Apartment::parse(100 - id).unwrap(),
            name: Name::parse(name.into()).unwrap(),
            birth_date: BirthDate::parse(born, time::macros::date!(2020 - 01 - 01)).unwrap(),
            gender: Gender::Female,
            relatives: (0..relatives as u64)
                .map(|r| CitizenId::parse(r).unwrap())
                .collect(),
        }
    }

    /// The order of `citizens` by `key`, encoded.
    fn encoded(citizens: &[Citizen], key: SortKey) -> Vec<u8> {
        let mut builder = OrderBuilder::new(key);
        for c in citizens {
            builder.push(c);
        }
        builder.finish().unwrap()
    }

    fn sorted(citizens: &[Citizen], key: SortKey, descending: bool) -> Vec<u64> {
        let bytes = encoded(citizens, key);
        let order = Order::parse(&bytes).unwrap();
        (0..order.len()).map(|i| order.id(i, descending)).collect()
    }

    #[test]
    fn text_sorts_as_russian_collation_and_ties_by_id() {
        let citizens = [
            citizen(5, "ёлкин", "Москва", "01.01.2000", 0),
            citizen(1, "Smith", "Керчь", "02.01.2000", 2),
            citizen(2, "Елкин", "москва", "01.02.1999", 1),
            citizen(3, "елкин", "Москва", "01.01.2000", 0),
            citizen(4, "Абрамов", "Москва", "31.12.1999", 3),
            citizen(6, "Ёлкин", "Керчь", "01.01.2000", 1),
        ];
        for (key, descending, want) in [
            // Cyrillic before Latin; е before ё, lower case before upper.
            (SortKey::Name, false, [4, 3, 2, 5, 6, 1]),
            (SortKey::Name, true, [1, 6, 5, 2, 3, 4]),
            // Equal texts by id.
            (SortKey::Town, false, [1, 6, 2, 3, 4, 5]),
            (SortKey::BirthDate, false, [2, 4, 3, 5, 6, 1]),
            (SortKey::Relatives, false, [3, 5, 2, 6, 1, 4]),
            (SortKey::Apartment, false, [6, 5, 4, 3, 2, 1]),
            (SortKey::CitizenId, true, [6, 5, 4, 3, 2, 1]),
        ] {
            assert_eq!(
                sorted(&citizens, key, descending),
                want,
                "{key:?} {descending}"
            );
        }
    }

    #[test]
    fn a_citizen_buys_in_the_months_its_relatives_are_born_in() {
        let mut citizens = [
            citizen(0, "А", "Тверь", "05.03.2000", 0),
            citizen(1, "Б", "Тверь", "01.01.2000", 0),
            citizen(2, "В", "Тверь", "01.12.1990", 0),
        ];
        // 0 is related to 1 and 2, and to itself.
        citizens[0].relatives = [0, 1, 2].map(|r| CitizenId::parse(r).unwrap()).to_vec();
        citizens[1].relatives = vec![CitizenId::parse(0).unwrap()];
        citizens[2].relatives = vec![CitizenId::parse(0).unwrap()];
        let bytes = encoded(&citizens, SortKey::Name);
        let order = Order::parse(&bytes).unwrap();
        let months = |i| {
            (1..=12)
                .filter(|&m| order.buys_in(i, false, m))
                .collect::<Vec<_>>()
        };
        assert_eq!(months(0), [1, 3, 12]);
        assert_eq!(months(1), [3]);
        assert_eq!(months(2), [3]);
        assert!(!order.buys_in(0, false, 0) && !order.buys_in(0, false, 13));
    }

    #[test]
    fn a_walk_finds_search_text_and_resumes_where_its_last_citizen_is() {
        let citizens = [
            citizen(7, "Вера", "Тверь", "01.01.2000", 0),
            citizen(8, "Анна", "Тула", "01.01.2000", 0),
            citizen(9, "Борис", "Омск", "01.01.2000", 0),
        ];
        let bytes = encoded(&citizens, SortKey::Name);
        let order = Order::parse(&bytes).unwrap();
        assert!(order.finds(0, false, "анна\nтула"));
        assert!(order.finds(0, true, "тверь"));
        assert!(!order.finds(1, false, "тула"));
        // No relatives, no presents.
        assert!((1..=12).all(|m| !order.buys_in(0, false, m)));
        assert_eq!(order.resume(2, 9, false), Some(2));
        // The citizen moved (or the walk turned): after where it is now.
        assert_eq!(order.resume(1, 9, false), Some(2));
        assert_eq!(order.resume(1, 7, true), Some(1));
        assert_eq!(order.resume(9, 7, false), Some(3));
        assert_eq!(order.resume(1, 10, false), None);
        assert!(Order::parse(&bytes[..bytes.len() - 1]).is_none());
        assert!(Order::parse(&[]).is_none());
        let empty = OrderBuilder::new(SortKey::Town).finish().unwrap();
        assert!(Order::parse(&empty).is_some_and(|o| o.is_empty()));
    }
}
