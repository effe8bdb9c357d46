//! A citizen as the stores hold it, and the one way back to a [`Citizen`].
//!
//! Every store keeps the same fields. Dates: SQLite and Tarantool keep ISO
//! `YYYY-MM-DD` text (it sorts and reads well in SQL and in Lua), not the
//! wire's `DD.MM.YYYY`; PostgreSQL its own `date`. What comes back from a
//! store is checked again, field by field: a stored value that fails is
//! reported as corruption rather than served.

use crate::domain::{Apartment, BirthDate, Citizen, CitizenId, Gender, Name, Place};

use super::StorageError;

/// A citizen read from a store, not yet re-validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredCitizen {
    pub citizen_id: u64,
    pub town: String,
    pub street: String,
    pub building: String,
    pub apartment: u64,
    pub name: String,
    pub birth_date: StoredDate,
    pub gender: String,
    pub relatives: Vec<u64>,
}

/// A birth date as a store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoredDate {
    /// ISO `YYYY-MM-DD` text (SQLite, Tarantool).
    Iso(String),
    /// A date value (PostgreSQL's `date`).
    Date(time::Date),
}

impl TryFrom<StoredCitizen> for Citizen {
    type Error = StorageError;

    fn try_from(row: StoredCitizen) -> Result<Self, StorageError> {
        fn corrupt<E>(field: &'static str) -> impl FnOnce(E) -> StorageError {
            move |_| StorageError::internal(format!("corrupt stored citizen field {field}"))
        }
        Ok(Citizen {
            citizen_id: CitizenId::parse(row.citizen_id).map_err(corrupt("citizen_id"))?,
            town: Place::parse(row.town).map_err(corrupt("town"))?,
            street: Place::parse(row.street).map_err(corrupt("street"))?,
            building: Place::parse(row.building).map_err(corrupt("building"))?,
            apartment: Apartment::parse(row.apartment).map_err(corrupt("apartment"))?,
            name: Name::parse(row.name).map_err(corrupt("name"))?,
            birth_date: match &row.birth_date {
                StoredDate::Iso(text) => parse_iso_date(text),
                StoredDate::Date(date) => {
                    BirthDate::from_ymd(date.year(), date.month() as u8, date.day())
                }
            }
            .ok_or(())
            .map_err(corrupt("birth_date"))?,
            gender: Gender::parse(&row.gender).map_err(corrupt("gender"))?,
            relatives: row
                .relatives
                .into_iter()
                .map(CitizenId::parse)
                .collect::<Result<_, _>>()
                .map_err(corrupt("relatives"))?,
        })
    }
}

/// The stores' form of a date: ISO `YYYY-MM-DD`.
pub(crate) fn iso_date(date: BirthDate) -> String {
    let date = date.date();
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        date.month() as u8,
        date.day()
    )
}

/// Reads what [`iso_date`] wrote.
pub(crate) fn parse_iso_date(value: &str) -> Option<BirthDate> {
    let (year, rest) = value.split_once('-')?;
    let (month, day) = rest.split_once('-')?;
    BirthDate::from_ymd(year.parse().ok()?, month.parse().ok()?, day.parse().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> StoredCitizen {
        StoredCitizen {
            citizen_id: 7,
            town: "Москва".into(),
            street: "Льва Толстого".into(),
            building: "16к7стр5".into(),
            apartment: 7,
            name: "Иванов Иван Иванович".into(),
            birth_date: StoredDate::Iso("0997-04-01".into()),
            gender: "male".into(),
            relatives: vec![2, 9],
        }
    }

    #[test]
    fn a_stored_citizen_comes_back_whole_with_its_date_in_the_wire_form() {
        let citizen = Citizen::try_from(stored()).unwrap();
        assert_eq!(citizen.citizen_id.get(), 7);
        assert_eq!(citizen.birth_date.to_string(), "01.04.0997");
        assert_eq!(iso_date(citizen.birth_date), "0997-04-01");
        assert_eq!(citizen.relatives.len(), 2);
    }

    #[test]
    fn each_corrupt_field_is_named() {
        type Breaks = fn(&mut StoredCitizen);
        let cases: [(&str, Breaks); 8] = [
            ("town", |s| s.town.clear()),
            ("street", |s| s.street = "!!!".into()),
            ("building", |s| s.building = "x".repeat(300)),
            ("apartment", |s| s.apartment = u64::MAX),
            ("name", |s| s.name.clear()),
            ("birth_date", |s| {
                s.birth_date = StoredDate::Iso("1997-02-30".into());
            }),
            ("gender", |s| s.gender = "other".into()),
            ("relatives", |s| s.relatives = vec![u64::MAX]),
        ];
        for (field, break_it) in cases {
            let mut row = stored();
            break_it(&mut row);
            let error = Citizen::try_from(row).expect_err(field);
            assert_eq!(
                error.to_string(),
                StorageError::internal(format!("corrupt stored citizen field {field}")).to_string()
            );
        }
    }
}
