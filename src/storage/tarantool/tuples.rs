//! The tuples on the wire: a citizen as `app.lua` stores it, both ways,
//! and the shapes of the procedures' answers.

use serde::{Deserialize, Serialize};

use crate::domain::{Citizen, CitizenId};
use crate::storage::StorageError;
use crate::storage::row::{StoredCitizen, StoredDate, iso_date};

/// A citizen as `gifts_create_import` takes it: the stored tuple (in
/// [`Row`]'s order), with a placeholder for the import id that the
/// procedure fills in.
#[derive(Serialize)]
pub(super) struct NewCitizen<'a>(
    pub(super) u8,
    pub(super) CitizenId,
    pub(super) &'a str,
    pub(super) &'a str,
    pub(super) &'a str,
    pub(super) u64,
    pub(super) &'a str,
    pub(super) String,
    pub(super) &'a str,
    pub(super) &'a [CitizenId],
);

impl<'a> NewCitizen<'a> {
    pub(super) fn of(c: &'a Citizen) -> Self {
        NewCitizen(
            0,
            c.citizen_id,
            c.town.as_str(),
            c.street.as_str(),
            c.building.as_str(),
            c.apartment.get(),
            c.name.as_str(),
            iso_date(c.birth_date),
            c.gender.as_str(),
            &c.relatives,
        )
    }
}

/// A stored citizen tuple: `{import_id, citizen_id, town, street, building,
/// apartment, name, birth_date, gender, relatives}`, as `tarantool/app.lua`'s
/// `F` table numbers them (a test holds the two together).
#[derive(Deserialize)]
pub(super) struct Row(
    pub(super) u64,
    pub(super) u64,
    pub(super) String,
    pub(super) String,
    pub(super) String,
    pub(super) u64,
    pub(super) String,
    pub(super) String,
    pub(super) String,
    pub(super) Vec<u64>,
);

/// A row of a space the app reads directly (`gifts_read_version`): its
/// import and its primary key, where the next page starts after it.
pub(super) trait Keyed {
    type Key: Serialize + Send + Sync + 'static;
    fn import(&self) -> u64;
    fn key(&self) -> Self::Key;
}

impl Keyed for Row {
    type Key = (u64, u64);
    fn import(&self) -> u64 {
        self.0
    }
    fn key(&self) -> Self::Key {
        (self.0, self.1)
    }
}

/// A presents row `{import_id, month, citizen_id, presents}`.
pub(super) type PresentsTuple = (u64, u8, u64, u32);

impl Keyed for PresentsTuple {
    type Key = (u64, u8, u64);
    fn import(&self) -> u64 {
        self.0
    }
    fn key(&self) -> Self::Key {
        (self.0, self.1, self.2)
    }
}

/// A town years row `{import_id, town, yyyy, dates}`.
pub(super) type BirthsTuple = (u64, String, u32, Dates);

/// A town year's dates: [`crate::domain::summary::encode_dates`]' bytes,
/// one msgpack string (binary on the way out; Tarantool stores a Lua string,
/// which comes back as a msgpack `str` of the same bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Dates(pub(super) Vec<u8>);

impl Serialize for Dates {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Dates {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = Dates;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a town year's dates as a string of bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Dates, E> {
                Ok(Dates(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Dates, E> {
                Ok(Dates(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dates, E> {
                Ok(Dates(v.as_bytes().to_vec()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Dates, E> {
                Ok(Dates(v.into_bytes()))
            }
        }
        deserializer.deserialize_bytes(Bytes)
    }
}

/// A town picks row `{import_id, town, picks}`: the town's
/// `summary::picked`, empty while not known (`tarantool/gifts/schema.lua`, 9).
pub(super) type PicksTuple = (u64, String, Dates);

impl Keyed for PicksTuple {
    type Key = (u64, String);
    fn import(&self) -> u64 {
        self.0
    }
    fn key(&self) -> Self::Key {
        (self.0, self.1.clone())
    }
}

impl Keyed for BirthsTuple {
    type Key = (u64, String, u32);
    fn import(&self) -> u64 {
        self.0
    }
    fn key(&self) -> Self::Key {
        (self.0, self.1.clone(), self.2)
    }
}

impl Row {
    pub(super) fn into_citizen(self) -> Result<Citizen, StorageError> {
        let Row(
            _,
            citizen_id,
            town,
            street,
            building,
            apartment,
            name,
            birth_date,
            gender,
            relatives,
        ) = self;
        Citizen::try_from(StoredCitizen {
            citizen_id,
            town,
            street,
            building,
            apartment,
            name,
            birth_date: StoredDate::Iso(birth_date),
            gender,
            relatives,
        })
    }
}

/// A new field value in a patch: text or number.
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum FieldValue {
    Text(String),
    Number(u64),
}

/// The second value of an import procedure's answer: an id or a reason.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum IdOrReason {
    Id(u64),
    Reason(String),
    None(()),
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::{Apartment, BirthDate, Gender, Name, Place};

    /// The tuple's fields in [`Row`]'s and [`NewCitizen`]'s order.
    const TUPLE_FIELDS: [&str; 10] = [
        "import_id",
        "citizen_id",
        "town",
        "street",
        "building",
        "apartment",
        "name",
        "birth_date",
        "gender",
        "relatives",
    ];

    #[test]
    pub(super) fn the_tuple_fields_are_numbered_as_the_lua_schema_numbers_them() {
        let script = include_str!("../../../tarantool/gifts/schema.lua");
        let start = script
            .find("M.F = {")
            .expect("schema.lua defines the field numbers F");
        let table = &script[start + "M.F = {".len()..];
        let table = &table[..table.find('}').expect("F ends")];
        let numbered: BTreeMap<&str, usize> = table
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(name, n)| (name.trim(), n.trim().parse().expect("a field number")))
            .collect();
        assert_eq!(numbered.len(), TUPLE_FIELDS.len(), "{numbered:?}");
        for (i, field) in TUPLE_FIELDS.iter().enumerate() {
            assert_eq!(numbered.get(field), Some(&(i + 1)), "{field}");
        }
    }

    /// A town year's dates go out as msgpack binary and come back as
    /// Tarantool returns the Lua string it stored: a `str` of the same
    /// bytes, which are not UTF-8.
    #[test]
    pub(super) fn a_town_year_s_dates_read_back_as_the_bytes_sent() {
        let dates = Dates(vec![0xff, 0xfe, 0, 0x80, 1, 0, 0, 0]);
        let sent = rmp_serde::to_vec(&dates).unwrap();
        assert_eq!(sent[0], 0xc4, "bin 8");
        let mut stored = Vec::new();
        rmp::encode::write_array_len(&mut stored, 4).unwrap();
        rmp::encode::write_uint(&mut stored, 7).unwrap();
        rmp::encode::write_str(&mut stored, "Керчь").unwrap();
        rmp::encode::write_uint(&mut stored, 1986).unwrap();
        rmp::encode::write_str_len(&mut stored, 8).unwrap();
        stored.extend_from_slice(&dates.0);
        let row: BirthsTuple = rmp_serde::from_slice(&stored).unwrap();
        assert_eq!(row, (7, "Керчь".to_owned(), 1986, dates));
    }

    #[test]
    pub(super) fn a_tuple_written_for_an_import_reads_back_as_the_same_citizen() {
        let citizen = Citizen {
            citizen_id: CitizenId::parse(u64::MAX >> 1).unwrap(),
            town: Place::parse("Керчь".into()).unwrap(),
            street: Place::parse("Иосифа Бродского".into()).unwrap(),
            building: Place::parse("2".into()).unwrap(),
            apartment: Apartment::parse(11).unwrap(),
            name: Name::parse("Романова Мария Леонидовна".into()).unwrap(),
            birth_date: BirthDate::from_ymd(1986, 11, 23).unwrap(),
            gender: Gender::parse("female").unwrap(),
            relatives: vec![CitizenId::parse(1).unwrap()],
        };
        let tuple = rmp_serde::to_vec(&NewCitizen::of(&citizen)).unwrap();
        let row: Row = rmp_serde::from_slice(&tuple).unwrap();
        assert_eq!(row.into_citizen().unwrap(), citizen);
    }
}
