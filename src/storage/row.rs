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
    IsoDate::of(date).as_str().to_owned()
}

/// [`iso_date`] on the stack for the years of four digits (every year a
/// body can write): writing 10,000 rows, the allocations and the formatting
/// machinery were a few percent of the writer's time.
pub(crate) enum IsoDate {
    Short([u8; 10]),
    Long(String),
}

impl IsoDate {
    pub(crate) fn of(date: BirthDate) -> Self {
        let date = date.date();
        let (month, day) = (u16::from(date.month() as u8), u16::from(date.day()));
        let Some(year) = u16::try_from(date.year()).ok().filter(|&y| y <= 9999) else {
            return IsoDate::Long(format!("{:04}-{month:02}-{day:02}", date.year()));
        };
        let digit = |value: u16, at: u16| b'0' + (value / at % 10) as u8;
        IsoDate::Short([
            digit(year, 1000),
            digit(year, 100),
            digit(year, 10),
            digit(year, 1),
            b'-',
            digit(month, 10),
            digit(month, 1),
            b'-',
            digit(day, 10),
            digit(day, 1),
        ])
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Ten ASCII digits and dashes.
            IsoDate::Short(bytes) => std::str::from_utf8(bytes).unwrap_or_default(),
            IsoDate::Long(text) => text,
        }
    }
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
        for (y, m, d, iso) in [
            (1, 1, 1, "0001-01-01"),
            (2024, 2, 29, "2024-02-29"),
            (9999, 12, 31, "9999-12-31"),
            (0, 1, 1, "0000-01-01"),
            (-1, 12, 31, "-001-12-31"),
        ] {
            assert_eq!(iso_date(BirthDate::from_ymd(y, m, d).unwrap()), iso);
        }
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
