//! Wire types: the exact JSON shapes of request bodies, and their conversion
//! into domain types. Strict serde settings do the JSON-level rules (exact
//! types, no unknown or duplicate keys, no nulls); the domain does the rest.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

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
        let citizens = self
            .citizens
            .into_iter()
            .enumerate()
            .map(|(i, Object(c))| c.into_citizen(i, today))
            .collect::<Result<Vec<_>, _>>()?;
        finish_import(citizens)
    }
}

/// Bodies of `POST /imports` from this size are parsed in parts side by side.
pub const PARTS_FROM: usize = 256 * 1024;

/// How far [`cut_import`] looks for a place to cut, in bytes: from the
/// middle of a part for the end of a citizen, and from the end of the body
/// back over whitespace. A body it finds nothing in is parsed in one piece,
/// so the cut costs microseconds whatever the body (it runs on an async
/// worker).
const CUT_WINDOW: usize = 64 * 1024;

/// A body of `POST /imports` parsed in parts, side by side (about 40 % of a
/// big import's time in the service was the parse on one thread).
///
/// A body of the plain shape, `{"citizens": [...]}` with only JSON
/// whitespace around those tokens, is cut between two citizens (a `}`, a
/// `,` and a `{` with only whitespace between) into up to `parts` parts
/// ([`cut_import`]); each part's citizens are parsed and checked where they
/// lie ([`parse_part`]), and the parts joined in body order ([`join_parts`]).
///
/// The result is the one-piece parse's ([`import_citizens`]), always:
/// - a cut inside a string leaves the part before it a string that never
///   ends (a JSON string holds no raw `"`), and a cut inside a citizen
///   leaves a bracket open: that part fails;
/// - a part that fails for any reason (another shape, a broken citizen)
///   sends the whole body to the one-piece parse, which answers with the
///   first error in body order, as it always did;
/// - when every part passes, the citizens are the array's, in order, each
///   checked alone, and the checks across citizens run over them all.
pub fn cut_import(bytes: &[u8], parts: usize) -> Vec<Range<usize>> {
    let Some((open, close)) = plain_array(bytes) else {
        return Vec::new();
    };
    let (first, len) = (open + 1, close - open - 1);
    let mut ranges = Vec::with_capacity(parts);
    let mut start = first;
    for k in 1..parts {
        let target = (first + len / parts * k).max(start);
        let Some((end, next)) = boundary(bytes, target, close) else {
            break;
        };
        ranges.push(start..end + 1);
        start = next;
    }
    if ranges.is_empty() {
        return ranges;
    }
    ranges.push(start..close);
    ranges
}

/// The positions of the `[` and the `]` of a body written
/// `{"citizens": [...]}`, with only JSON whitespace around those tokens;
/// `None` for any other shape.
fn plain_array(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut at = after_blanks(bytes, 0, bytes.len())?;
    for token in [&b"{"[..], b"\"citizens\"", b":", b"["] {
        if !bytes[at..].starts_with(token) {
            return None;
        }
        at += token.len();
        if token != b"[" {
            at = after_blanks(bytes, at, bytes.len())?;
        }
    }
    let open = at - 1;
    let mut end = bytes.len();
    for token in [b'}', b']'] {
        let from = end.saturating_sub(CUT_WINDOW);
        end = from + bytes[from..end].iter().rposition(|b| !is_blank(*b))?;
        if bytes[end] != token {
            return None;
        }
    }
    (end > open).then_some((open, end))
}

/// JSON's whitespace.
fn is_blank(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// The first byte at or after `at` (before `end`, within [`CUT_WINDOW`])
/// that is not whitespace.
fn after_blanks(bytes: &[u8], at: usize, end: usize) -> Option<usize> {
    let end = end.min(at.saturating_add(CUT_WINDOW));
    let skip = bytes.get(at..end)?.iter().position(|b| !is_blank(*b))?;
    Some(at + skip)
}

/// The first `}` at or after `from` (before `close`, within [`CUT_WINDOW`])
/// followed by a `,` and a `{` with only whitespace between: the positions
/// of the `}` and the `{`.
fn boundary(bytes: &[u8], from: usize, close: usize) -> Option<(usize, usize)> {
    let (mut at, until) = (from, close.min(from.saturating_add(CUT_WINDOW)));
    while let Some(found) = bytes.get(at..until)?.iter().position(|&b| b == b'}') {
        let end = at + found;
        if let Some(comma) = after_blanks(bytes, end + 1, close).filter(|&i| bytes[i] == b',')
            && let Some(next) = after_blanks(bytes, comma + 1, close).filter(|&i| bytes[i] == b'{')
        {
            return Some((end, next));
        }
        at = end + 1;
    }
    None
}

/// One part of a body cut by [`cut_import`]: a citizen, then any number of
/// `,` and a citizen, with whitespace around (the array's grammar). Each
/// citizen is parsed where it lies in the body (no copy of the part) and
/// checked; `None` if anything fails (the whole body then goes to
/// [`import_citizens`], which names the error).
pub fn parse_part(bytes: &[u8], range: Range<usize>, today: Date) -> Option<Vec<Citizen>> {
    let part = bytes.get(range)?;
    let mut citizens = Vec::new();
    let mut at = 0;
    loop {
        let mut one = serde_json::Deserializer::from_slice(&part[at..])
            .into_iter::<Object<CitizenBody<'_>>>();
        let Object(citizen) = one.next()?.ok()?;
        citizens.push(citizen.into_citizen(citizens.len(), today).ok()?);
        at += one.byte_offset();
        at += part[at..].iter().take_while(|b| is_blank(**b)).count();
        match part.get(at) {
            None => return Some(citizens),
            Some(b',') => at += 1,
            Some(_) => return None,
        }
    }
}

/// The parts' citizens, in body order, checked across citizens and ordered
/// as [`ImportBody::into_citizens`] orders them.
pub fn join_parts(parts: Vec<Vec<Citizen>>) -> Result<Vec<Citizen>, ValidationError> {
    let mut citizens = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for part in parts {
        citizens.extend(part);
    }
    finish_import(citizens)
}

/// A body of `POST /imports` parsed and checked in one piece.
pub fn import_citizens(bytes: &[u8], today: Date) -> Result<Vec<Citizen>, ValidationError> {
    parse::<Object<ImportBody>>(bytes)?.0.into_citizens(today)
}

/// The checks across citizens, then the order the stores take.
fn finish_import(mut citizens: Vec<Citizen>) -> Result<Vec<Citizen>, ValidationError> {
    check_import(&citizens)?;
    citizens.sort_by_cached_key(|c| c.citizen_id);
    Ok(citizens)
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

    const TODAY: Date = time::macros::date!(2026 - 01 - 01);

    /// What `POST /imports` answers a body cut in up to `parts` parts: the
    /// handler's steps, one after another.
    fn in_parts(bytes: &[u8], parts: usize) -> Result<Vec<Citizen>, ValidationError> {
        let cut = cut_import(bytes, parts);
        let parsed: Option<Vec<_>> = cut
            .into_iter()
            .map(|range| parse_part(bytes, range, TODAY))
            .collect();
        match parsed {
            Some(parsed) if !parsed.is_empty() => join_parts(parsed),
            _ => import_citizens(bytes, TODAY),
        }
    }

    #[test]
    fn a_big_body_is_cut_between_citizens_and_reads_as_in_one_piece() {
        let body = crate::sample::import_body(3_000, 900, 5);
        let whole = import_citizens(&body, TODAY).unwrap();
        for parts in 2..=4 {
            let cut = cut_import(&body, parts);
            assert_eq!(cut.len(), parts, "{parts} parts");
            for range in &cut {
                assert_eq!(body[range.start], b'{');
                assert_eq!(body[range.end - 1], b'}');
            }
            assert_eq!(in_parts(&body, parts), Ok(whole.clone()));
        }
        // Whitespace anywhere JSON allows it, and none.
        let text = String::from_utf8(body).unwrap();
        let spaced = text
            .replace("},{", "} \r\n,\t{")
            .replace("{\"citizens\":[", " \n{ \"citizens\" :\t[ ")
            .replace("]}", " ] \n} \n");
        assert_eq!(cut_import(spaced.as_bytes(), 2).len(), 2);
        assert_eq!(in_parts(spaced.as_bytes(), 3), Ok(whole));
        // A comma too many at the end of the array, or between two citizens,
        // or a citizen doubled without one: refused as in one piece.
        let end = text.rfind("]}").unwrap();
        let middle = text[text.len() / 2..].find("},{").unwrap() + text.len() / 2;
        for broken in [
            format!("{},{}", &text[..end], &text[end..]),
            format!("{} , \n{}", &text[..end], &text[end..]),
            format!("{},,{}", &text[..=middle], &text[middle + 2..]),
            format!("{} {}", &text[..=middle], &text[middle + 2..]),
        ] {
            let whole = import_citizens(broken.as_bytes(), TODAY);
            assert!(whole.is_err());
            for parts in 2..=4 {
                assert_eq!(in_parts(broken.as_bytes(), parts), whole);
            }
        }
    }

    #[test]
    fn any_other_shape_is_not_cut() {
        for body in [
            &br#"{"citizens":[]}"#[..],
            br#"{"citizens":[{"a":1}]}"#,
            br#"[{"citizens":[{},{}]}]"#,
            br#"{"citizens":[{},{}],"more":[1]}"#,
            br#"{"citizens":[{},{}]}x"#,
            br#"{"citi\u007aens":[{},{}]}"#,
            br#"{"citizens":[{},{}]"#,
            br#"{"citizens":[{} {}]}"#,
            b"\xef\xbb\xbf{\"citizens\":[{},{}]}",
        ] {
            let cut = cut_import(body, 2);
            let whole = import_citizens(body, TODAY);
            assert!(
                cut.is_empty() || in_parts(body, 2) == whole,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(cut_import(br#"{"citizens":[{},{}],"more":[1]}"#, 2).is_empty());
        // Whitespace past the window, where a cut is looked for: not cut.
        let wide = " ".repeat(CUT_WINDOW + 1);
        for body in [
            format!(r#"{wide}{{"citizens":[{{}},{{}},{{}},{{}}]}}"#),
            format!(r#"{{"citizens":[{{}},{{}},{{}},{{}}]}}{wide}"#),
            format!(r#"{{"citizens":[{{}}{wide},{{}}{wide},{{}}{wide},{{}}]}}"#),
        ] {
            assert!(cut_import(body.as_bytes(), 2).is_empty());
            assert_eq!(cut_import(body.replace(&wide, "").as_bytes(), 2).len(), 2);
        }
        assert!(cut_import(br#"{"citizens":[{}]}"#, 2).is_empty());
    }

    #[test]
    fn every_byte_of_a_body_changed_to_a_delimiter_answers_as_in_one_piece() {
        // A cut in a string, in a citizen, around a broken citizen: whatever
        // the parts make of it, the answer is the one-piece parse's.
        let body = crate::sample::import_body(6, 4, 3);
        for at in 0..body.len() {
            for byte in [b'}', b',', b'{', b'"', b'\\', b']', b'[', b' ', 0x0c] {
                let mut changed = body.clone();
                changed[at] = byte;
                let whole = import_citizens(&changed, TODAY);
                for parts in [2, 3, 6] {
                    assert_eq!(
                        in_parts(&changed, parts),
                        whole,
                        "byte {at} to {:?}, {parts} parts",
                        byte as char
                    );
                }
            }
        }
    }

    #[test]
    fn rules_across_citizens_and_a_broken_citizen_in_a_later_part_answer_as_in_one_piece() {
        let body = String::from_utf8(crate::sample::import_body(2_000, 600, 9)).unwrap();
        let citizens: serde_json::Value = serde_json::from_str(&body).unwrap();
        let list = citizens["citizens"].as_array().unwrap();
        let with = |at: usize, key: &str, value: serde_json::Value| {
            let mut changed = citizens.clone();
            changed["citizens"][at][key] = value;
            serde_json::to_vec(&changed).unwrap()
        };
        let first_id = list[0]["citizen_id"].clone();
        let one_sided = list
            .iter()
            .position(|c| !c["relatives"].as_array().unwrap().is_empty())
            .unwrap();
        for changed in [
            // a citizen_id twice, across parts
            with(1_990, "citizen_id", first_id),
            // a relative listed on one side only
            with(one_sided, "relatives", serde_json::json!([])),
            // a broken citizen, then a broken value, in the last part
            with(1_500, "birth_date", "31.02.2000".into()),
            with(1_999, "apartment", (-1).into()),
            with(1_999, "gender", serde_json::Value::Null),
        ] {
            let whole = import_citizens(&changed, TODAY);
            assert!(whole.is_err());
            assert_eq!(cut_import(&changed, 2).len(), 2);
            assert_eq!(in_parts(&changed, 2), whole);
            assert_eq!(in_parts(&changed, 4), whole);
        }
    }

    #[test]
    fn a_birth_date_and_gender_escaped_in_the_body_read_as_written_plain() {
        let body = |birth_date: &str, gender: &str| {
            format!(
                r#"{{"citizens":[{{"citizen_id":1,"town":"Москва","street":"a","building":"1",
                "apartment":2,"name":"Иван","birth_date":"{birth_date}","gender":"{gender}",
                "relatives":[]}}]}}"#
            )
        };
        let citizens = |bytes: String| import_citizens(bytes.as_bytes(), TODAY);
        let plain = citizens(body("26.12.1986", "male")).unwrap();
        let escaped = citizens(body(r"26\u002e12.1986", r"m\u0061le")).unwrap();
        assert_eq!(escaped, plain);
        assert!(citizens(body(r"26\u002e13.1986", "male")).is_err());
    }
}
