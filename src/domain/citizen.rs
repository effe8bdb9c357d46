//! Citizen types that can only hold valid data: each field type has a `parse`
//! that enforces its rule from the contract (docs/api.md), and `Citizen` is built from them.

use std::fmt;

use serde::{Serialize, Serializer};
use time::{Date, Month};

use super::error::Reason;

/// Largest id or apartment number the contract allows (2^63 − 1).
pub const MAX_INTEGER: u64 = i64::MAX as u64;

/// A citizen's id inside its import: 0 ≤ id ≤ 2^63 − 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct CitizenId(u64);

impl CitizenId {
    /// Checks the range; the JSON layer has already rejected negatives and non-integers.
    pub fn parse(value: u64) -> Result<Self, Reason> {
        if value > MAX_INTEGER {
            return Err(Reason::OutOfRange(value));
        }
        Ok(Self(value))
    }

    /// The id as stored (always fits an SQL INTEGER).
    pub fn get(self) -> u64 {
        self.0
    }

    /// The id as a signed integer, which cannot overflow because of the range rule.
    #[allow(clippy::cast_possible_wrap)] // at most 2^63 − 1 by the range rule
    pub fn as_i64(self) -> i64 {
        self.0 as i64
    }
}

impl fmt::Display for CitizenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An apartment number: 0 ≤ n ≤ 2^63 − 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Apartment(u64);

impl Apartment {
    /// Checks the range.
    pub fn parse(value: u64) -> Result<Self, Reason> {
        if value > MAX_INTEGER {
            return Err(Reason::OutOfRange(value));
        }
        Ok(Self(value))
    }

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The number as a signed integer, which cannot overflow because of the range rule.
    #[allow(clippy::cast_possible_wrap)] // at most 2^63 − 1 by the range rule
    pub fn as_i64(self) -> i64 {
        self.0 as i64
    }
}

/// Counts code points up to 257, so a huge string costs no more than a short one.
fn check_length(value: &str) -> Result<(), Reason> {
    // 1–256 bytes are 1–256 code points: most fields are, and need no count.
    if (1..=256).contains(&value.len()) {
        return Ok(());
    }
    let len = value.chars().take(257).count();
    if (1..=256).contains(&len) {
        Ok(())
    } else {
        Err(Reason::Length(value.chars().count()))
    }
}

/// Town, street or building: 1–256 code points with at least one Unicode letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Place(String);

impl Place {
    /// Enforces the length and letter-or-digit rules.
    pub fn parse(value: String) -> Result<Self, Reason> {
        check_length(&value)?;
        if !value.chars().any(char::is_alphanumeric) {
            return Err(Reason::NoLetterOrDigit);
        }
        Ok(Self(value))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A citizen's name: 1–256 code points, any characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    /// Enforces the length rule.
    pub fn parse(value: String) -> Result<Self, Reason> {
        check_length(&value)?;
        Ok(Self(value))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `male` or `female`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Gender {
    /// "male"
    Male,
    /// "female"
    Female,
}

impl Gender {
    /// Accepts exactly `male` or `female`.
    pub fn parse(value: &str) -> Result<Self, Reason> {
        match value {
            "male" => Ok(Gender::Male),
            "female" => Ok(Gender::Female),
            other => Err(Reason::Gender(other.to_owned())),
        }
    }

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Gender::Male => "male",
            Gender::Female => "female",
        }
    }
}

/// A real calendar date that is not after the day it was checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BirthDate(Date);

impl BirthDate {
    /// Parses strict `DD.MM.YYYY` (ASCII digits only) and rejects dates after `today`.
    pub fn parse(value: &str, today: Date) -> Result<Self, Reason> {
        let date = Self::parse_format(value)?;
        if date > today {
            return Err(Reason::FutureDate(value.to_owned()));
        }
        Ok(Self(date))
    }

    /// Rebuilds a date read back from storage, where it was validated on the way in.
    pub fn from_ymd(year: i32, month: u8, day: u8) -> Option<Self> {
        let month = Month::try_from(month).ok()?;
        Date::from_calendar_date(year, month, day).ok().map(Self)
    }

    fn parse_format(value: &str) -> Result<Date, Reason> {
        let format_error = || Reason::DateFormat(value.to_owned());
        let bytes = value.as_bytes();
        if bytes.len() != 10 || bytes[2] != b'.' || bytes[5] != b'.' {
            return Err(format_error());
        }
        let number = |range: std::ops::Range<usize>| -> Result<u32, Reason> {
            bytes[range].iter().try_fold(0u32, |acc, &b| {
                if b.is_ascii_digit() {
                    Ok(acc * 10 + u32::from(b - b'0'))
                } else {
                    Err(format_error())
                }
            })
        };
        let (day, month, year) = (number(0..2)?, number(3..5)?, number(6..10)?);
        let not_a_date = || Reason::NotCalendarDate(value.to_owned());
        // Year 0000 does not exist in the Gregorian calendar (1 BC is followed by AD 1).
        if year == 0 {
            return Err(not_a_date());
        }
        let month = u8::try_from(month)
            .ok()
            .and_then(|m| Month::try_from(m).ok())
            .ok_or_else(not_a_date)?;
        // Four digits and two digits: the casts cannot wrap.
        #[allow(clippy::cast_possible_wrap, clippy::cast_possible_truncation)]
        let (year, day) = (year as i32, day as u8);
        Date::from_calendar_date(year, month, day).map_err(|_| not_a_date())
    }

    /// The underlying date.
    pub fn date(self) -> Date {
        self.0
    }

    /// Month of the year, 1–12.
    pub fn month(self) -> u8 {
        self.0.month() as u8
    }

    /// Whole years of age on `today`; someone born on 29.02 ages on 01.03 in common years.
    pub fn age_on(self, today: Date) -> i64 {
        let (birth, now) = (self.0, today);
        let mut age = i64::from(now.year()) - i64::from(birth.year());
        if (now.month() as u8, now.day()) < (birth.month() as u8, birth.day()) {
            age -= 1;
        }
        age
    }
}

impl fmt::Display for BirthDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}.{:02}.{:04}",
            self.0.day(),
            self.0.month() as u8,
            self.0.year()
        )
    }
}

impl Serialize for BirthDate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A valid citizen; `relatives` is sorted ascending and free of duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Citizen {
    /// Id inside the import.
    pub citizen_id: CitizenId,
    /// Town.
    pub town: Place,
    /// Street.
    pub street: Place,
    /// Building.
    pub building: Place,
    /// Apartment number.
    pub apartment: Apartment,
    /// Full name.
    pub name: Name,
    /// Birth date, `DD.MM.YYYY` on the wire.
    pub birth_date: BirthDate,
    /// Gender.
    pub gender: Gender,
    /// Ids of relatives in the same import, ascending.
    pub relatives: Vec<CitizenId>,
}

impl Citizen {
    /// Capacities of the heap buffers this citizen owns, in bytes: its four
    /// strings and its relatives list (for weighing what a cache holds).
    pub fn heap_buffers(&self) -> [usize; 5] {
        [
            self.town.0.capacity(),
            self.street.0.capacity(),
            self.building.0.capacity(),
            self.name.0.capacity(),
            self.relatives.capacity() * std::mem::size_of::<CitizenId>(),
        ]
    }
}

/// A validated PATCH: the fields to replace; at least one is present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CitizenPatch {
    /// New town.
    pub town: Option<Place>,
    /// New street.
    pub street: Option<Place>,
    /// New building.
    pub building: Option<Place>,
    /// New apartment.
    pub apartment: Option<Apartment>,
    /// New name.
    pub name: Option<Name>,
    /// New birth date.
    pub birth_date: Option<BirthDate>,
    /// New gender.
    pub gender: Option<Gender>,
    /// New relatives list, ascending and unique; existence is checked by storage
    /// inside the write transaction.
    pub relatives: Option<Vec<CitizenId>>,
}

impl CitizenPatch {
    /// True when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Replaces every field the patch carries except `relatives`, which the
    /// caller mirrors onto the other citizens first.
    pub fn apply_fields(&self, citizen: &mut Citizen) {
        if let Some(v) = &self.town {
            citizen.town = v.clone();
        }
        if let Some(v) = &self.street {
            citizen.street = v.clone();
        }
        if let Some(v) = &self.building {
            citizen.building = v.clone();
        }
        if let Some(v) = self.apartment {
            citizen.apartment = v;
        }
        if let Some(v) = &self.name {
            citizen.name = v.clone();
        }
        if let Some(v) = self.birth_date {
            citizen.birth_date = v;
        }
        if let Some(v) = self.gender {
            citizen.gender = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    const TODAY: Date = date!(2024 - 03 - 10);

    #[test]
    fn dates_follow_the_calendar_and_the_strict_format() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("26.12.1986", None, "an ordinary date"),
            ("29.02.2020", None, "leap day of a leap year"),
            ("10.03.2024", None, "today counts as already born"),
            ("31.02.2019", Some("not_a_calendar_date"), "no 31 February"),
            (
                "29.02.2019",
                Some("not_a_calendar_date"),
                "no leap day in 2019",
            ),
            ("00.01.2000", Some("not_a_calendar_date"), "day zero"),
            ("01.13.2000", Some("not_a_calendar_date"), "month thirteen"),
            ("01.01.0000", Some("not_a_calendar_date"), "year zero"),
            ("11.03.2024", Some("date_in_future"), "tomorrow"),
            ("1.01.2000", Some("invalid_date_format"), "one-digit day"),
            ("01.1.2000", Some("invalid_date_format"), "one-digit month"),
            ("01.01.200", Some("invalid_date_format"), "three-digit year"),
            ("2000-01-01", Some("invalid_date_format"), "ISO form"),
            ("01/01/2000", Some("invalid_date_format"), "slashes"),
            (
                "01.01x2000",
                Some("invalid_date_format"),
                "second separator",
            ),
            ("01x01.2000", Some("invalid_date_format"), "first separator"),
            (" 1.01.2000", Some("invalid_date_format"), "leading space"),
            ("01.01.2000 ", Some("invalid_date_format"), "trailing space"),
            (
                "٠١.٠١.٢٠٠٠",
                Some("invalid_date_format"),
                "Arabic-Indic digits",
            ),
            ("+1.01.2000", Some("invalid_date_format"), "sign"),
            ("", Some("invalid_date_format"), "empty"),
        ];
        for (input, expected, why) in cases {
            let got = BirthDate::parse(input, TODAY).err().map(|r| r.code());
            assert_eq!(got, *expected, "{why}: {input:?}");
        }
    }

    #[test]
    fn dates_print_back_in_the_wire_form() {
        let d = BirthDate::parse("01.04.0997", TODAY).unwrap();
        assert_eq!(d.to_string(), "01.04.0997");
    }

    #[test]
    fn ages_count_whole_years_and_leap_day_birthdays_age_on_first_of_march() {
        let born = BirthDate::parse("29.02.2000", TODAY).unwrap();
        assert_eq!(born.age_on(date!(2023 - 02 - 28)), 22);
        assert_eq!(born.age_on(date!(2023 - 03 - 01)), 23);
        assert_eq!(born.age_on(date!(2024 - 02 - 28)), 23);
        assert_eq!(born.age_on(date!(2024 - 02 - 29)), 24);
        let born = BirthDate::parse("10.03.2000", TODAY).unwrap();
        assert_eq!(born.age_on(date!(2024 - 03 - 09)), 23);
        assert_eq!(born.age_on(date!(2024 - 03 - 10)), 24);
        assert_eq!(born.age_on(date!(2000 - 03 - 10)), 0);
    }

    #[test]
    fn places_need_a_letter_or_digit_and_count_code_points() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("Москва", None, "Cyrillic letters"),
            ("7", None, "a digit alone"),
            ("٣", None, "a non-ASCII digit"),
            (" -a- ", None, "punctuation around a letter"),
            ("-", Some("no_letter_or_digit"), "punctuation only"),
            ("   ", Some("no_letter_or_digit"), "spaces only"),
            ("", Some("invalid_length"), "empty"),
        ];
        for (input, expected, why) in cases {
            let got = Place::parse((*input).to_owned()).err().map(|r| r.code());
            assert_eq!(got, *expected, "{why}: {input:?}");
        }
        assert!(
            Place::parse("ж".repeat(256)).is_ok(),
            "256 two-byte characters"
        );
        assert_eq!(Place::parse("ж".repeat(257)), Err(Reason::Length(257)));
    }

    #[test]
    fn names_allow_anything_of_the_right_length() {
        assert!(Name::parse(" ".into()).is_ok());
        assert!(Name::parse("🎁".repeat(256)).is_ok());
        assert_eq!(Name::parse(String::new()), Err(Reason::Length(0)));
        assert_eq!(Name::parse("x".repeat(300)), Err(Reason::Length(300)));
        assert!(Name::parse("x".repeat(256)).is_ok());
        assert_eq!(Name::parse("x".repeat(257)), Err(Reason::Length(257)));
        assert_eq!(Name::parse("ж".repeat(129)), Ok(Name("ж".repeat(129))));
    }

    #[test]
    fn integers_stop_at_two_to_the_sixty_third_minus_one() {
        assert!(CitizenId::parse(MAX_INTEGER).is_ok());
        assert_eq!(
            CitizenId::parse(MAX_INTEGER + 1),
            Err(Reason::OutOfRange(MAX_INTEGER + 1))
        );
        assert!(Apartment::parse(0).is_ok());
        assert!(Apartment::parse(u64::MAX).is_err());
    }

    #[test]
    fn gender_is_exactly_male_or_female() {
        assert_eq!(Gender::parse("male"), Ok(Gender::Male));
        assert_eq!(Gender::parse("female"), Ok(Gender::Female));
        for bad in ["Male", "FEMALE", " male", "other", ""] {
            assert!(Gender::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn heap_buffers_are_the_capacities_of_the_strings_and_the_relatives_in_bytes() {
        let mut relatives = Vec::with_capacity(3);
        relatives.push(CitizenId::parse(2).unwrap());
        let citizen = Citizen {
            citizen_id: CitizenId::parse(1).unwrap(),
            town: Place::parse(String::with_capacity(10) + "Town").unwrap(),
            street: Place::parse("Street".into()).unwrap(),
            building: Place::parse("1".into()).unwrap(),
            apartment: Apartment::parse(1).unwrap(),
            name: Name::parse("Имя".into()).unwrap(),
            birth_date: BirthDate::from_ymd(2000, 1, 1).unwrap(),
            gender: Gender::Male,
            relatives,
        };
        let [town, street, building, name, relatives] = citizen.heap_buffers();
        assert!(town >= 10, "{town}");
        assert_eq!((street, building, name), (6, 1, 6));
        assert_eq!(relatives, 3 * 8, "three ids of eight bytes, not 3 + 8");
    }
}
