//! The GET citizens body, `{"data":[…]}`, with where each citizen starts in
//! it, so that the body after a PATCH is the previous one with only the
//! changed citizens rendered again: copying bytes, not serialising them.

use std::sync::Arc;

use serde::Serialize;

use crate::domain::Citizen;

const PREFIX: &[u8] = b"{\"data\":[";
const SUFFIX: &[u8] = b"]}";

/// A rendered listing: the body, and `starts[i]` the offset of citizen i's
/// JSON; citizen i ends one byte before `starts[i + 1]` (at a `,`, or at the
/// closing `]` for the last one). `starts` has one entry more than there are
/// citizens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The body, byte for byte what `{"data": citizens}` serialises to.
    pub body: Vec<u8>,
    /// Where each citizen starts, and one past the last one's end.
    pub starts: Vec<usize>,
}

fn write<T: Serialize>(body: &mut Vec<u8>, value: &T) -> serde_json::Result<()> {
    serde_json::to_writer(body, value)
}

/// Closes a body whose every citizen is followed by one separator byte.
fn finish(mut body: Vec<u8>, mut starts: Vec<usize>, citizens: usize) -> Rendered {
    starts.push(body.len());
    if citizens > 0 {
        body.pop(); // the separator after the last citizen
    }
    body.extend_from_slice(SUFFIX);
    Rendered { body, starts }
}

/// Renders every citizen.
pub fn render(citizens: &[Arc<Citizen>]) -> serde_json::Result<Rendered> {
    // A citizen takes 150–300 bytes: room for 256 each spares the copy of
    // a reallocation near the end (`compact` trims what is left over).
    let mut body = Vec::with_capacity(PREFIX.len() + 256 * citizens.len() + SUFFIX.len());
    let mut starts = Vec::with_capacity(citizens.len() + 1);
    body.extend_from_slice(PREFIX);
    for citizen in citizens {
        starts.push(body.len());
        write(&mut body, &**citizen)?;
        body.push(b',');
    }
    Ok(finish(body, starts, citizens.len()))
}

/// The listing of `citizens` from `previous`, the listing of the same
/// import (same citizens in the same order) in which only the citizens at
/// `changed` (ascending, each below `citizens.len()`) may differ: those are
/// rendered, the rest copied. O(body bytes) to copy, O(changed) to render.
pub fn splice(
    previous: &[u8],
    previous_starts: &[usize],
    citizens: &[Arc<Citizen>],
    changed: &[usize],
) -> serde_json::Result<Rendered> {
    let n = citizens.len();
    debug_assert_eq!(previous_starts.len(), n + 1);
    let mut body = Vec::with_capacity(previous.len() + 64 * changed.len());
    let mut starts = Vec::with_capacity(n + 1);
    body.extend_from_slice(PREFIX);
    // Copies the unchanged citizens from..to (none when equal), each with
    // its separator.
    let copy = |body: &mut Vec<u8>, starts: &mut Vec<usize>, from: usize, to: usize| {
        let (a, b) = (previous_starts[from], previous_starts[to]);
        let at = body.len();
        starts.extend(previous_starts[from..to].iter().map(|s| s - a + at));
        body.extend_from_slice(&previous[a..b]);
    };
    let mut next = 0;
    for &i in changed {
        copy(&mut body, &mut starts, next, i);
        starts.push(body.len());
        write(&mut body, &*citizens[i])?;
        body.push(b',');
        next = i + 1;
    }
    copy(&mut body, &mut starts, next, n);
    Ok(finish(body, starts, n))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::{Apartment, BirthDate, CitizenId, Gender, Name, Place};

    fn citizen(id: u64, name: &str, relatives: &[u64]) -> Arc<Citizen> {
        Arc::new(Citizen {
            citizen_id: CitizenId::parse(id).unwrap(),
            town: Place::parse("Москва".into()).unwrap(),
            street: Place::parse("Льва Толстого".into()).unwrap(),
            building: Place::parse("16к7стр5".into()).unwrap(),
            apartment: Apartment::parse(7).unwrap(),
            name: Name::parse(name.into()).unwrap(),
            birth_date: BirthDate::from_ymd(1986, 12, 26).unwrap(),
            gender: Gender::parse("male").unwrap(),
            relatives: relatives
                .iter()
                .map(|r| CitizenId::parse(*r).unwrap())
                .collect(),
        })
    }

    fn serialised(citizens: &[Arc<Citizen>]) -> Vec<u8> {
        #[derive(Serialize)]
        struct Data<'a> {
            data: &'a [Arc<Citizen>],
        }
        serde_json::to_vec(&Data { data: citizens }).unwrap()
    }

    #[test]
    fn a_listing_is_the_serialised_answer_and_knows_where_each_citizen_is() {
        for n in [0, 1, 3] {
            let citizens: Vec<_> = (1..=n).map(|i| citizen(i, "Иван", &[i])).collect();
            let listing = render(&citizens).unwrap();
            assert_eq!(listing.body, serialised(&citizens), "{n} citizens");
            assert_eq!(listing.starts.len(), citizens.len() + 1);
            for (i, c) in citizens.iter().enumerate() {
                let own = &listing.body[listing.starts[i]..listing.starts[i + 1] - 1];
                assert_eq!(own, serde_json::to_vec(&**c).unwrap());
            }
        }
    }

    proptest! {
        /// Splicing the changed citizens into the previous listing gives the
        /// listing rendered whole, byte for byte and offset for offset.
        #[test]
        fn a_spliced_listing_equals_one_rendered_whole(
            names in prop::collection::vec("[a-zА-я]{1,12}", 1..30),
            edits in prop::collection::vec((any::<prop::sample::Index>(), "[a-zА-я]{1,40}"), 0..8),
        ) {
            let before: Vec<_> = names
                .iter()
                .enumerate()
                .map(|(i, name)| citizen(i as u64 + 1, name, &[]))
                .collect();
            let mut after = before.clone();
            let mut changed: Vec<usize> = Vec::new();
            for (index, name) in &edits {
                let i = index.index(after.len());
                after[i] = citizen(i as u64 + 1, name, &[i as u64 + 1, 500]);
                changed.push(i);
            }
            changed.sort_unstable();
            changed.dedup();
            let previous = render(&before).unwrap();
            let spliced = splice(&previous.body, &previous.starts, &after, &changed).unwrap();
            prop_assert_eq!(&spliced, &render(&after).unwrap());
        }
    }
}
