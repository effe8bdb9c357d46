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

/// Bodies from this size on are parsed in parts, one thread each
/// ([`import_citizens`]): below it a thread costs more than it saves.
pub const PARSE_IN_PARTS_FROM: usize = 256 << 10;

/// Parses and validates the body of `POST /imports`: [`parse`], then
/// [`ImportBody::into_citizens`]. A body of [`PARSE_IN_PARTS_FROM`] bytes or
/// more is cut into up to `parts` runs of citizens, each parsed and validated
/// on its own thread (the parse is most of a big import's time, and serial).
/// Any part that fails, for whatever reason, sends the whole body down the
/// serial path, which gives the error a client sees: so the parts never
/// decide an answer, only how fast a valid one comes.
pub fn import_citizens(
    bytes: &[u8],
    today: Date,
    parts: usize,
) -> Result<Vec<Citizen>, ValidationError> {
    if bytes.len() >= PARSE_IN_PARTS_FROM
        && let Some(runs) = citizen_runs(bytes, parts)
        && let Some(citizens) = parse_runs(&runs, today)
    {
        check_import(&citizens)?;
        return Ok(sorted(citizens));
    }
    parse::<Object<ImportBody>>(bytes)?.0.into_citizens(today)
}

/// The bytes of the `citizens` array of `{"citizens": [...]}` (whitespace
/// anywhere between), cut into up to `parts` runs of whole elements at a
/// `}` `,` `{` near each even share. Nothing when the body is not of that
/// shape or has no such place (the serial path tells what is wrong, if
/// anything). A cut may fall inside a string: the run before it then does
/// not parse, as a string is unterminated at its end.
fn citizen_runs(bytes: &[u8], parts: usize) -> Option<Vec<&[u8]>> {
    let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let trim_start = |s: &'_ [u8]| -> usize { s.iter().position(|b| !space(b)).unwrap_or(s.len()) };
    let mut rest = bytes;
    for token in [&b"{"[..], b"\"citizens\"", b":", b"["] {
        rest = rest[trim_start(rest)..].strip_prefix(token)?;
    }
    for token in [b'}', b']'] {
        let end = rest.iter().rposition(|b| !space(b))?;
        (rest[end] == token).then_some(())?;
        rest = &rest[..end];
    }
    let mut runs = Vec::with_capacity(parts);
    let mut from = 0;
    for k in 1..parts {
        let share = rest.len() * k / parts;
        if share <= from {
            continue;
        }
        let Some((end, next)) = object_boundary(rest, share) else {
            break;
        };
        runs.push(&rest[from..end]);
        from = next;
    }
    runs.push(&rest[from..]);
    (runs.len() > 1).then_some(runs)
}

/// From `at` on, the first `}`, `,`, `{` (whitespace between): the end of
/// the object before it and the start of the one after.
fn object_boundary(array: &[u8], at: usize) -> Option<(usize, usize)> {
    let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let mut i = at;
    loop {
        i += array[i..].iter().position(|&b| b == b'}')? + 1;
        let mut j = i;
        let mut comma = false;
        while let Some(b) = array.get(j) {
            match b {
                b',' if !comma => comma = true,
                b'{' if comma => return Some((i, j)),
                b if space(b) => {}
                _ => break,
            }
            j += 1;
        }
    }
}

/// Parses and validates each run as a JSON array of citizens on its own
/// thread (the last on this one); the citizens in body order, or nothing if
/// any run fails.
fn parse_runs(runs: &[&[u8]], today: Date) -> Option<Vec<Citizen>> {
    let run = |bytes: &[u8]| -> Option<Vec<Citizen>> {
        let mut array = Vec::with_capacity(bytes.len() + 2);
        array.push(b'[');
        array.extend_from_slice(bytes);
        array.push(b']');
        let bodies: Vec<Object<CitizenBody>> = serde_json::from_slice(&array).ok()?;
        // The index only names a field in an error, and any error here is
        // found again, with its true index, by the serial path.
        bodies
            .into_iter()
            .map(|Object(c)| c.into_citizen(0, today).ok())
            .collect()
    };
    let (last, others) = runs.split_last()?;
    let parsed: Vec<Option<Vec<Citizen>>> = std::thread::scope(|scope| {
        let threads: Vec<_> = others
            .iter()
            .map(|bytes| scope.spawn(|| run(bytes)))
            .collect();
        let last = run(last);
        threads
            .into_iter()
            .map(|t| t.join().ok().flatten())
            .chain([last])
            .collect()
    });
    let mut citizens = Vec::with_capacity(parsed.iter().flatten().map(Vec::len).sum());
    for part in parsed {
        citizens.extend(part?);
    }
    Some(citizens)
}

/// Citizens put in citizen_id order, so stores append to their indexes
/// instead of inserting at random places (which made a 100,000-citizen
/// import 28× slower than a 10,000 one instead of 10×). Sorted by a cached
/// key: the ids and positions are sorted, and each citizen (about 200
/// bytes) moved once.
fn sorted(mut citizens: Vec<Citizen>) -> Vec<Citizen> {
    citizens.sort_by_cached_key(|c| c.citizen_id);
    citizens
}

impl ImportBody<'_> {
    /// Validates every field and the import as a whole, in body order, and
    /// stops at the first error. The citizens come back ordered by
    /// citizen_id ([`sorted`]).
    pub fn into_citizens(self, today: Date) -> Result<Vec<Citizen>, ValidationError> {
        let citizens = self
            .citizens
            .into_iter()
            .enumerate()
            .map(|(i, Object(c))| c.into_citizen(i, today))
            .collect::<Result<Vec<_>, _>>()?;
        check_import(&citizens)?;
        Ok(sorted(citizens))
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
    use crate::sample::{SampleCitizen, import, import_body};

    const TODAY: Date = time::macros::date!(2026 - 01 - 01);

    fn serial(bytes: &[u8]) -> Result<Vec<Citizen>, ValidationError> {
        parse::<Object<ImportBody>>(bytes)?.0.into_citizens(TODAY)
    }

    fn body(citizens: &[SampleCitizen]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "citizens": citizens })).unwrap()
    }

    /// Whether `bytes` is parsed in parts (not sent down the serial path).
    fn in_parts(bytes: &[u8], parts: usize) -> bool {
        citizen_runs(bytes, parts).is_some_and(|runs| parse_runs(&runs, TODAY).is_some())
    }

    #[test]
    fn a_big_body_parsed_in_parts_gives_what_the_serial_parse_gives() {
        let compact = import_body(3_000, 600, 7);
        assert!(compact.len() >= PARSE_IN_PARTS_FROM);
        let value: serde_json::Value = serde_json::from_slice(&compact).unwrap();
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        let spaced = [&b" \n\t"[..], &compact, b"\r\n "].concat();
        for bytes in [&compact, &pretty, &spaced] {
            let want = serial(bytes).unwrap();
            for parts in [2, 3, 5, 16] {
                assert!(in_parts(bytes, parts), "{parts} parts");
                assert_eq!(citizen_runs(bytes, parts).unwrap().len(), parts);
                assert_eq!(import_citizens(bytes, TODAY, parts).unwrap(), want);
            }
            assert!(!in_parts(bytes, 1));
            assert_eq!(import_citizens(bytes, TODAY, 1).unwrap(), want);
        }
    }

    #[test]
    fn a_cut_inside_a_string_fails_its_part_and_the_serial_path_answers() {
        // Every name holds what a cut looks for: the first place found after
        // an even share is inside a string.
        let mut citizens = import(3_000, 600, 8);
        for c in &mut citizens {
            c.name = format!("{} }}, {{ \"x\": 1}} ,{{", c.name);
        }
        let bytes = body(&citizens);
        let want = serial(&bytes).unwrap();
        let runs = citizen_runs(&bytes, 2).expect("a cut is found");
        assert!(
            parse_runs(&runs, TODAY).is_none(),
            "the cut in a name fails"
        );
        assert_eq!(import_citizens(&bytes, TODAY, 2).unwrap(), want);
    }

    #[test]
    fn an_invalid_big_body_gets_the_serial_parse_s_error() {
        let citizens = import(3_000, 600, 9);
        let last = citizens.len() - 1;
        let with = |change: &dyn Fn(&mut Vec<SampleCitizen>)| {
            let mut citizens = citizens.clone();
            change(&mut citizens);
            body(&citizens)
        };
        let mut bodies = vec![
            // A field rule broken in the second part, and in the first.
            with(&|c| c[last].birth_date = "31.02.2000".into()),
            with(&|c| c[last - 1].name = String::new()),
            with(&|c| c[1].gender = "other"),
            // Rules of the import as a whole, across parts.
            with(&|c| c[last].citizen_id = c[0].citizen_id),
            with(&|c| c[last].relatives.push(1 << 40)),
            with(&|c| {
                let other = c[0].citizen_id;
                c[last].relatives.retain(|&r| r != other);
                c[last].relatives.push(other);
            }),
        ];
        let valid = body(&citizens);
        let text = String::from_utf8(valid.clone()).unwrap();
        // JSON-level faults: a wrong type late, a key twice, trailing data,
        // an unknown key at the top, the array cut short.
        let apartment = text.rfind("\"apartment\":").unwrap() + "\"apartment\":".len();
        bodies.push([&valid[..apartment], b"\"7\",\"x\":", &valid[apartment..]].concat());
        let name = text.rfind("\"name\":").unwrap();
        bodies.push([&valid[..name], b"\"name\":\"a\",", &valid[name..]].concat());
        bodies.push([&valid[..], b"{}"].concat());
        bodies.push([&valid[..valid.len() - 1], b",\"more\":1}"].concat());
        bodies.push(
            [
                &valid[..valid.len() - 2],
                b"],\"citizens\":[",
                &valid[12..valid.len() - 2],
                b"]}",
            ]
            .concat(),
        );
        let cut = text[..text.len() / 2].rfind('{').unwrap();
        bodies.push([&valid[..cut - 1], b"]}"].concat());
        for (n, bytes) in bodies.iter().enumerate() {
            let want = serial(bytes).expect_err("invalid");
            for parts in [2, 3, 7] {
                assert_eq!(
                    import_citizens(bytes, TODAY, parts).expect_err("invalid"),
                    want,
                    "body {n}, {parts} parts"
                );
            }
        }
    }
}
