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

/// About how many bytes the listing of `citizens` takes: a lower bound
/// (escapes are not counted), cheap enough to decide whether to stream.
pub fn estimated_len(citizens: &[Arc<Citizen>]) -> usize {
    citizens
        .iter()
        .map(|c| {
            // The keys, punctuation, id, apartment, date and gender.
            let fixed = 130;
            let strings = [c.town.as_str(), c.street.as_str(), c.building.as_str()]
                .iter()
                .map(|s| s.len())
                .sum::<usize>()
                + c.name.as_str().len();
            fixed + strings + 2 * c.relatives.len()
        })
        .sum::<usize>()
        + PREFIX.len()
        + SUFFIX.len()
}

/// How much of a streamed listing is rendered at a time.
pub const CHUNK: usize = 64 * 1024;

/// The listing of `citizens`, byte for byte [`render`]'s body, rendered
/// [`CHUNK`] bytes at a time as it is sent (and gzip-compressed as it goes,
/// if asked): memory O(chunk), whatever the import's size. Each citizen is
/// let go once rendered if the list is not shared (loaded for this answer).
pub struct Chunks {
    citizens: std::vec::IntoIter<Arc<Citizen>>,
    started: bool,
    done: bool,
    gzip: Option<flate2::write::GzEncoder<Vec<u8>>>,
}

impl Chunks {
    /// The chunks of the listing of `citizens`, gzip-compressed if `gzip`.
    pub fn new(citizens: Arc<Vec<Arc<Citizen>>>, gzip: bool) -> Self {
        // Unshared (loaded for this answer): consumed as it is rendered.
        // Shared (a cached snapshot): the pointers copied, the citizens not.
        let citizens = Arc::try_unwrap(citizens).unwrap_or_else(|shared| (*shared).clone());
        Self {
            citizens: citizens.into_iter(),
            started: false,
            done: false,
            gzip: gzip
                .then(|| flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast())),
        }
    }

    /// The next chunk of the listing, uncompressed; `None` once done.
    fn plain(&mut self) -> Option<serde_json::Result<Vec<u8>>> {
        if self.done {
            return None;
        }
        let mut out = Vec::with_capacity(CHUNK + 1024);
        while out.len() < CHUNK {
            let Some(citizen) = self.citizens.next() else {
                if !self.started {
                    out.extend_from_slice(PREFIX);
                }
                out.extend_from_slice(SUFFIX);
                self.done = true;
                break;
            };
            if self.started {
                out.push(b',');
            } else {
                out.extend_from_slice(PREFIX);
                self.started = true;
            }
            if let Err(e) = write(&mut out, &*citizen) {
                self.done = true;
                return Some(Err(e));
            }
        }
        Some(Ok(out))
    }
}

impl Iterator for Chunks {
    type Item = serde_json::Result<axum::body::Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::io::Write;
        loop {
            let chunk = match self.plain() {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => return Some(Err(e)),
                None => return None,
            };
            let Some(gzip) = &mut self.gzip else {
                return Some(Ok(chunk.into()));
            };
            // Writing to a Vec cannot fail; the compressor may keep what it
            // was given until it has enough for a block.
            let _ = gzip.write_all(&chunk);
            if self.done {
                let _ = gzip.try_finish();
            }
            let out = std::mem::take(gzip.get_mut());
            if !out.is_empty() {
                return Some(Ok(out.into()));
            }
            if self.done {
                return None;
            }
        }
    }
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

    /// Every chunk of a streamed listing, joined (and unzipped).
    fn streamed(citizens: Vec<Arc<Citizen>>, gzip: bool) -> (Vec<u8>, usize) {
        use std::io::Read;
        let chunks: Vec<_> = Chunks::new(Arc::new(citizens), gzip)
            .map(Result::unwrap)
            .collect();
        assert!(chunks.iter().all(|c| !c.is_empty()), "no empty chunk");
        let joined = chunks.concat();
        if !gzip {
            return (joined, chunks.len());
        }
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&joined[..])
            .read_to_end(&mut plain)
            .unwrap();
        (plain, chunks.len())
    }

    #[test]
    fn a_streamed_listing_is_the_rendered_one_in_chunks_plain_or_gzipped() {
        // 0 and 1 citizens, and sizes around a chunk's edge: one citizen
        // here is about 230 bytes, so ~285 fill a chunk.
        for n in [0, 1, 2, 284, 285, 286, 287, 600, 2_000] {
            let citizens: Vec<_> = (1..=n).map(|i| citizen(i, "Иван", &[i])).collect();
            let whole = render(&citizens).unwrap().body;
            for gzip in [false, true] {
                let (body, chunks) = streamed(citizens.clone(), gzip);
                assert_eq!(body, whole, "{n} citizens, gzip {gzip}");
                if !gzip {
                    assert!(chunks <= whole.len() / CHUNK + 1, "{n}: {chunks} chunks");
                }
            }
        }
    }

    #[test]
    fn the_estimate_is_a_lower_bound_near_the_length() {
        let citizens: Vec<_> = (1..=1_000)
            .map(|i| citizen(i, "Иван", &[i, i + 1]))
            .collect();
        let (estimate, real) = (
            estimated_len(&citizens),
            render(&citizens).unwrap().body.len(),
        );
        assert!(
            estimate <= real && estimate * 10 >= real * 8,
            "{estimate} vs {real}"
        );
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
