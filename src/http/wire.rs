//! Wire types: the exact JSON shapes of request bodies, and their conversion
//! into domain types. Strict serde settings do the JSON-level rules (exact
//! types, no unknown or duplicate keys, no nulls); the domain does the rest.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use time::Date;

use crate::domain::relatives::{check_import, parse_relatives};
use crate::domain::{
    Apartment, BirthDate, Citizen, CitizenId, CitizenPatch, Gender, Name, Place, Reason,
    ValidationError,
};

/// Body of `POST /imports`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportBody<'a> {
    /// The citizens, in the supplier's order.
    #[serde(borrow)]
    pub citizens: Vec<Object<CitizenBody<'a>>>,
}

/// One citizen of an import, every field required. The fields kept as text
/// are owned (they move into the citizen); the two read once borrow from the
/// body unless escaped (two allocations a citizen fewer).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CitizenBody<'a> {
    citizen_id: u64,
    town: String,
    street: String,
    building: String,
    apartment: u64,
    name: String,
    #[serde(borrow)]
    birth_date: Cow<'a, str>,
    #[serde(borrow)]
    gender: Cow<'a, str>,
    relatives: Vec<u64>,
}

/// Body of `PATCH .../citizens/{id}`: every field optional, none may be null.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    #[serde(default, deserialize_with = "present")]
    town: Option<String>,
    #[serde(default, deserialize_with = "present")]
    street: Option<String>,
    #[serde(default, deserialize_with = "present")]
    building: Option<String>,
    #[serde(default, deserialize_with = "present")]
    apartment: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    birth_date: Option<String>,
    #[serde(default, deserialize_with = "present")]
    gender: Option<String>,
    #[serde(default, deserialize_with = "present")]
    relatives: Option<Vec<u64>>,
    /// Accepted by the parser only to answer with a clear "cannot be changed".
    #[serde(default, deserialize_with = "present")]
    citizen_id: Option<IgnoredAny>,
}

/// A key that is present must hold a value of the right type: `null` is an
/// error, unlike serde's default for `Option`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A `T` that must be written as a JSON object: serde's derived structs also
/// accept an array of the field values, which the contract does not allow.
#[derive(Debug)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(ObjectVisitor(PhantomData))
            .map(Object)
    }
}

/// Parses JSON strictly. On failure, parses again tracking the path so the
/// error names the field (`citizens[3].apartment`) and, when the body is valid
/// JSON, the citizen_id at that position — the fast path pays for neither.
pub fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ValidationError> {
    let first_error = match serde_json::from_slice(bytes) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ValidationError::new("", None, Reason::EmptyBody));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let (path, error) = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Err(e) => (e.path().to_string(), e.into_inner()),
        // Only trailing data can fail the first parse and pass this one.
        Ok(_) => (String::new(), first_error),
    };
    let message = error.to_string();
    let mut path = known_path(&path).to_owned();
    if matches!(
        error.classify(),
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof
    ) {
        // Where the JSON broke: the path reached so far and the position.
        return Err(ValidationError::new(
            path,
            None,
            Reason::InvalidJson(message),
        ));
    }
    // serde reports missing and duplicate keys at the enclosing object; name the key.
    for prefix in ["missing field `", "duplicate field `"] {
        if let Some(key) = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
        {
            path = if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            };
        }
    }
    let citizen_id = citizen_at(bytes, &path);
    Err(ValidationError::new(
        path,
        citizen_id,
        Reason::Malformed(message),
    ))
}

/// The part of an error path that is known: serde_path_to_error writes an
/// unknown segment (a body cut off before its key) as `?`, and `.` for the
/// top level; both say nothing to a client.
fn known_path(path: &str) -> &str {
    if path == "." || path == "?" || path.starts_with("?.") || path.starts_with("?[") {
        return "";
    }
    let end = [".?", "[?]"]
        .iter()
        .filter_map(|unknown| path.find(unknown))
        .min()
        .unwrap_or(path.len());
    &path[..end]
}

/// The citizen_id of `citizens[i]` named by an error path, if it can be read.
fn citizen_at(bytes: &[u8], path: &str) -> Option<CitizenId> {
    let rest = path.strip_prefix("citizens[")?;
    let index: usize = rest[..rest.find(']')?].parse().ok()?;
    let body: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let id = body
        .get("citizens")?
        .get(index)?
        .get("citizen_id")?
        .as_u64()?;
    CitizenId::parse(id).ok()
}

impl ImportBody<'_> {
    /// Validates every field and the import as a whole, in body order, and
    /// stops at the first error. The citizens come back ordered by
    /// citizen_id, so stores append to their indexes instead of inserting at
    /// random places (which made a 100,000-citizen import 28× slower than a
    /// 10,000 one instead of 10×). Sorted by a cached key: the ids and
    /// positions are sorted, and each citizen (about 200 bytes) moved once.
    pub fn into_citizens(self, today: Date) -> Result<Vec<Citizen>, ValidationError> {
        let mut citizens = self
            .citizens
            .into_iter()
            .enumerate()
            .map(|(i, Object(c))| c.into_citizen(i, today))
            .collect::<Result<Vec<_>, _>>()?;
        check_import(&citizens)?;
        citizens.sort_by_cached_key(|c| c.citizen_id);
        Ok(citizens)
    }
}

impl CitizenBody<'_> {
    fn into_citizen(self, index: usize, today: Date) -> Result<Citizen, ValidationError> {
        let id = CitizenId::parse(self.citizen_id).ok();
        let at = |field: &'static str| {
            move |reason| ValidationError::new(format!("citizens[{index}].{field}"), id, reason)
        };
        Ok(Citizen {
            citizen_id: CitizenId::parse(self.citizen_id).map_err(at("citizen_id"))?,
            town: Place::parse(self.town).map_err(at("town"))?,
            street: Place::parse(self.street).map_err(at("street"))?,
            building: Place::parse(self.building).map_err(at("building"))?,
            apartment: Apartment::parse(self.apartment).map_err(at("apartment"))?,
            name: Name::parse(self.name).map_err(at("name"))?,
            birth_date: BirthDate::parse(&self.birth_date, today).map_err(at("birth_date"))?,
            gender: Gender::parse(&self.gender).map_err(at("gender"))?,
            relatives: parse_relatives(self.relatives).map_err(at("relatives"))?,
        })
    }
}

impl PatchBody {
    /// Validates the fields present for the citizen `id` (named in errors).
    pub fn into_patch(self, id: CitizenId, today: Date) -> Result<CitizenPatch, ValidationError> {
        let at = |field: &'static str| move |reason| ValidationError::new(field, Some(id), reason);
        if self.citizen_id.is_some() {
            return Err(at("citizen_id")(Reason::ImmutableField));
        }
        let patch = CitizenPatch {
            town: self
                .town
                .map(Place::parse)
                .transpose()
                .map_err(at("town"))?,
            street: self
                .street
                .map(Place::parse)
                .transpose()
                .map_err(at("street"))?,
            building: self
                .building
                .map(Place::parse)
                .transpose()
                .map_err(at("building"))?,
            apartment: self
                .apartment
                .map(Apartment::parse)
                .transpose()
                .map_err(at("apartment"))?,
            name: self.name.map(Name::parse).transpose().map_err(at("name"))?,
            birth_date: self
                .birth_date
                .map(|d| BirthDate::parse(&d, today))
                .transpose()
                .map_err(at("birth_date"))?,
            gender: self
                .gender
                .map(|g| Gender::parse(&g))
                .transpose()
                .map_err(at("gender"))?,
            relatives: self
                .relatives
                .map(parse_relatives)
                .transpose()
                .map_err(at("relatives"))?,
        };
        if patch.is_empty() {
            return Err(ValidationError::new("", Some(id), Reason::EmptyPatch));
        }
        Ok(patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_birth_date_and_gender_escaped_in_the_body_read_as_written_plain() {
        let body = |birth_date: &str, gender: &str| {
            format!(
                r#"{{"citizens":[{{"citizen_id":1,"town":"Москва","street":"a","building":"1",
                "apartment":2,"name":"Иван","birth_date":"{birth_date}","gender":"{gender}",
                "relatives":[]}}]}}"#
            )
        };
        let today = time::macros::date!(2026 - 01 - 01);
        let citizens = |bytes: String| {
            parse::<Object<ImportBody>>(bytes.as_bytes())
                .unwrap()
                .0
                .into_citizens(today)
        };
        let plain = citizens(body("26.12.1986", "male")).unwrap();
        let escaped = citizens(body(r"26\u002e12.1986", r"m\u0061le")).unwrap();
        assert_eq!(escaped, plain);
        assert!(citizens(body(r"26\u002e13.1986", "male")).is_err());
    }
}
