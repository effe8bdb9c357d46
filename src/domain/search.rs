//! What a search for citizens finds: the rule the service's search
//! (`GET /imports/{id}/citizens?q=`) applies, and the analysts' page applies
//! to an import it holds whole (`ui/app.js`, `sortedFiltered`; a browser test
//! compares the two).

use super::{Citizen, CitizenId};

/// A search as typed: a whole number finds the citizen with that id; any other
/// text finds the citizens whose name, town or street contains it, letter case
/// aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Search {
    /// The citizen with this id (`None`: a number no citizen id can be).
    Id(Option<CitizenId>),
    /// This text, lowercased, inside the lowercased name, town or street.
    Text(String),
}

impl Search {
    /// The search for `query` with the white space around it trimmed; `None`
    /// when nothing is left (everyone matches).
    pub fn new(query: &str) -> Option<Self> {
        let wanted = query.trim();
        if wanted.is_empty() {
            return None;
        }
        if wanted.bytes().all(|b| b.is_ascii_digit()) {
            let id = wanted
                .parse::<u64>()
                .ok()
                .and_then(|n| CitizenId::parse(n).ok());
            return Some(Self::Id(id));
        }
        Some(Self::Text(wanted.to_lowercase()))
    }

    /// Whether `citizen` is found.
    pub fn matches(&self, citizen: &Citizen) -> bool {
        match self {
            Self::Id(id) => *id == Some(citizen.citizen_id),
            Self::Text(wanted) => haystack(citizen).contains(wanted.as_str()),
        }
    }
}

/// What a text search looks in: the name, town and street, lowercased, one
/// line each (the sorted orders keep it: `domain::order`).
pub fn haystack(citizen: &Citizen) -> String {
    [
        citizen.name.as_str(),
        citizen.town.as_str(),
        citizen.street.as_str(),
    ]
    .join("\n")
    .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Apartment, BirthDate, Gender, Name, Place};

    fn citizen(id: u64, name: &str, town: &str, street: &str) -> Citizen {
        Citizen {
            citizen_id: CitizenId::parse(id).unwrap(),
            town: Place::parse(town.into()).unwrap(),
            street: Place::parse(street.into()).unwrap(),
            building: Place::parse("1".into()).unwrap(),
            apartment: Apartment::parse(1).unwrap(),
            name: Name::parse(name.into()).unwrap(),
            birth_date: BirthDate::parse("01.02.1990", time::macros::date!(2020 - 01 - 01))
                .unwrap(),
            gender: Gender::Female,
            relatives: vec![],
        }
    }

    #[test]
    fn a_number_is_an_id_and_text_is_found_in_name_town_or_street_in_any_case() {
        let c = citizen(42, "Романова Мария", "Нижний Новгород", "Льва Толстого");
        assert_eq!(Search::new("   "), None);
        for found in ["42", " 42 ", "мария", "НИЖНИЙ", "толст", "Мария"] {
            assert!(Search::new(found).unwrap().matches(&c), "{found}");
        }
        for missed in ["4", "420", "042x", "Иван", "Москва"] {
            assert!(!Search::new(missed).unwrap().matches(&c), "{missed}");
        }
        // A number beyond any id finds no one; digits with letters are text.
        assert_eq!(
            Search::new("99999999999999999999999"),
            Some(Search::Id(None))
        );
        assert!(
            Search::new("Новгород Л").is_some_and(|s| !s.matches(&c)),
            "across fields"
        );
    }
}
