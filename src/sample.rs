//! Seeded generator of realistic imports, shared by the benchmark and the tests.
//!
//! Deterministic for a given seed, so runs and failures can be reproduced.

// Indices below the generated import's size, which fits memory: u64 → usize
// cannot truncate where this runs (64-bit hosts).
#![allow(clippy::cast_possible_truncation)]

use serde::Serialize;

/// A small deterministic pseudo-random generator (xorshift64*): reproducible
/// across platforms and versions, which a benchmark's data must be.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value; 0 is mapped to 1).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// Next number below `bound` (> 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// One citizen as the supplier sends it.
#[derive(Debug, Clone, Serialize)]
pub struct SampleCitizen {
    /// Id inside the import.
    pub citizen_id: u64,
    /// Town.
    pub town: String,
    /// Street.
    pub street: String,
    /// Building.
    pub building: String,
    /// Apartment.
    pub apartment: u64,
    /// Full name.
    pub name: String,
    /// `DD.MM.YYYY`.
    pub birth_date: String,
    /// `male` or `female`.
    pub gender: &'static str,
    /// Relatives, unsorted as a supplier might send them.
    pub relatives: Vec<u64>,
}

const TOWNS: &[&str] = &[
    "Москва",
    "Санкт-Петербург",
    "Новосибирск",
    "Екатеринбург",
    "Казань",
    "Нижний Новгород",
    "Челябинск",
    "Самара",
    "Омск",
    "Ростов-на-Дону",
    "Уфа",
    "Красноярск",
    "Воронеж",
    "Пермь",
    "Волгоград",
    "Керчь",
    "Тверь",
    "Калуга",
    "Псков",
    "Мурманск",
];
const STREETS: &[&str] = &[
    "Льва Толстого",
    "Ленина",
    "Иосифа Бродского",
    "Садовая",
    "Мира",
    "Советская",
    "Пушкина",
    "Гагарина",
    "Молодёжная",
    "Лесная",
    "Школьная",
    "Набережная",
];
const FIRST: &[&str] = &[
    "Иван",
    "Сергей",
    "Мария",
    "Анна",
    "Дмитрий",
    "Елена",
    "Алексей",
    "Ольга",
    "Пётр",
    "Наталья",
];
const LAST: &[&str] = &[
    "Иванов",
    "Смирнов",
    "Кузнецов",
    "Попов",
    "Васильев",
    "Петров",
    "Соколов",
    "Михайлов",
    "Новиков",
    "Фёдоров",
    "Романов",
    "Волков",
];
const PATRONYMIC: &[&str] = &[
    "Иванович",
    "Сергеевич",
    "Леонидович",
    "Петрович",
    "Алексеевич",
    "Дмитриевич",
];

/// `n` citizens with `links` symmetric links between distinct citizens (capped
/// at what `n` allows), in shuffled order; birth dates between 1940 and 2019.
pub fn import(n: u64, links: usize, seed: u64) -> Vec<SampleCitizen> {
    let mut rng = Rng::new(seed);
    let max_links = (n.saturating_mul(n.saturating_sub(1)) / 2).min(usize::MAX as u64) as usize;
    let links = links.min(max_links);
    let mut relatives: Vec<Vec<u64>> = vec![Vec::new(); n as usize];
    let mut made = std::collections::HashSet::with_capacity(links);
    while made.len() < links {
        let (a, b) = (rng.below(n), rng.below(n));
        if a != b && made.insert((a.min(b), a.max(b))) {
            relatives[a as usize].push(b);
            relatives[b as usize].push(a);
        }
    }
    let mut citizens: Vec<SampleCitizen> = relatives
        .into_iter()
        .enumerate()
        .map(|(id, relatives)| SampleCitizen {
            citizen_id: id as u64,
            town: rng.pick(TOWNS).to_owned(),
            street: rng.pick(STREETS).to_owned(),
            building: format!(
                "{}к{}стр{}",
                1 + rng.below(120),
                1 + rng.below(9),
                1 + rng.below(5)
            ),
            apartment: 1 + rng.below(500),
            name: format!(
                "{} {} {}",
                rng.pick(LAST),
                rng.pick(FIRST),
                rng.pick(PATRONYMIC)
            ),
            birth_date: format!(
                "{:02}.{:02}.{}",
                1 + rng.below(28),
                1 + rng.below(12),
                1940 + rng.below(80)
            ),
            gender: if rng.below(2) == 0 { "male" } else { "female" },
            relatives,
        })
        .collect();
    // Fisher–Yates, so storage order is not input order.
    for i in (1..citizens.len()).rev() {
        citizens.swap(i, rng.below(i as u64 + 1) as usize);
    }
    citizens
}

/// The `POST /imports` body for `import(n, links, seed)`.
pub fn import_body(n: u64, links: usize, seed: u64) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body {
        citizens: Vec<SampleCitizen>,
    }
    serde_json::to_vec(&Body {
        citizens: import(n, links, seed),
    })
    .expect("plain data serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_import_and_links_are_symmetric() {
        let a = import(500, 100, 9);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&import(500, 100, 9)).unwrap()
        );
        let by_id: std::collections::HashMap<u64, &SampleCitizen> =
            a.iter().map(|c| (c.citizen_id, c)).collect();
        let listed: usize = a.iter().map(|c| c.relatives.len()).sum();
        assert_eq!(listed, 200);
        for c in &a {
            for r in &c.relatives {
                assert!(by_id[r].relatives.contains(&c.citizen_id));
            }
        }
    }

    #[test]
    fn links_are_capped_by_what_the_size_allows() {
        let tiny = import(3, 1000, 1);
        assert_eq!(tiny.iter().map(|c| c.relatives.len()).sum::<usize>(), 6);
    }
}
