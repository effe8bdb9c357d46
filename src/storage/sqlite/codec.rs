//! How a relatives list is stored (one blob of little-endian i64s), and how an
//! import waiting to be written as rows is (`staged_citizens`, one blob).

use serde::{Deserialize, Serialize};

use crate::domain::{Citizen, CitizenId};
use crate::storage::StorageError;
use crate::storage::row::{StoredCitizen, StoredDate};

pub(super) fn encode_relatives(list: &[CitizenId], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(list.len() * 8);
    for id in list {
        out.extend_from_slice(&id.as_i64().to_le_bytes());
    }
}

pub(super) fn decode_relatives(blob: &[u8]) -> Result<Vec<u64>, StorageError> {
    if !blob.len().is_multiple_of(8) {
        return Err(StorageError::internal("corrupt relatives list"));
    }
    blob.chunks_exact(8)
        .map(|chunk| {
            let value = i64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
            u64::try_from(value).map_err(|_| StorageError::internal("corrupt relative id"))
        })
        .collect()
}

/// The first byte of a staged import's blob: the layout that follows.
const STAGED_FORMAT: u8 = 1;

/// A citizen in a staged import, as written: the row's columns in
/// `CITIZEN_COLUMNS`' order, the birth date as its Julian day.
#[derive(Serialize)]
struct StagedOut<'a>(
    CitizenId,
    &'a str,
    &'a str,
    &'a str,
    u64,
    &'a str,
    i32,
    &'a str,
    &'a [CitizenId],
);

/// A citizen in a staged import, as read back (checked again, as a row is).
#[derive(Deserialize)]
struct StagedIn(
    u64,
    String,
    String,
    String,
    u64,
    String,
    i32,
    String,
    Vec<u64>,
);

/// An import's citizens as one blob: [`STAGED_FORMAT`], then a MessagePack
/// array of the citizens in citizen_id order (`citizens` are in that order,
/// as `wire::ImportBody::into_citizens` leaves them).
pub(super) fn encode_staged(citizens: &[Citizen]) -> Result<Vec<u8>, StorageError> {
    debug_assert!(citizens.is_sorted_by_key(|c| c.citizen_id));
    write_staged(citizens.iter())
}

/// [`encode_staged`] of citizens in the order given.
fn write_staged<'a>(
    citizens: impl ExactSizeIterator<Item = &'a Citizen>,
) -> Result<Vec<u8>, StorageError> {
    // About 70 bytes a citizen of the contract's examples.
    let mut blob = Vec::with_capacity(1 + citizens.len() * 80);
    let rows: Vec<StagedOut<'_>> = citizens
        .map(|c| {
            StagedOut(
                c.citizen_id,
                c.town.as_str(),
                c.street.as_str(),
                c.building.as_str(),
                c.apartment.get(),
                c.name.as_str(),
                c.birth_date.date().to_julian_day(),
                c.gender.as_str(),
                &c.relatives,
            )
        })
        .collect();
    blob.push(STAGED_FORMAT);
    rmp_serde::encode::write(&mut blob, &rows).map_err(StorageError::internal)?;
    Ok(blob)
}

/// The citizens of a staged import's blob, each checked as a stored row is;
/// any other bytes (a format not known, a cut or garbled blob, ids out of
/// order) are an internal error, never a panic.
pub(super) fn decode_staged(blob: &[u8]) -> Result<Vec<Citizen>, StorageError> {
    let corrupt = |what: &str| StorageError::internal(format!("corrupt staged import: {what}"));
    let Some((&STAGED_FORMAT, body)) = blob.split_first() else {
        return Err(corrupt("unknown format"));
    };
    let rows: Vec<StagedIn> = rmp_serde::from_slice(body).map_err(|e| corrupt(&e.to_string()))?;
    let mut citizens = Vec::with_capacity(rows.len());
    for StagedIn(citizen_id, town, street, building, apartment, name, day, gender, relatives) in
        rows
    {
        let date = time::Date::from_julian_day(day).map_err(|_| corrupt("birth_date"))?;
        let citizen = Citizen::try_from(StoredCitizen {
            citizen_id,
            town,
            street,
            building,
            apartment,
            name,
            birth_date: StoredDate::Date(date),
            gender,
            relatives,
        })?;
        if citizens
            .last()
            .is_some_and(|last: &Citizen| last.citizen_id >= citizen.citizen_id)
        {
            return Err(corrupt("citizens out of order"));
        }
        citizens.push(citizen);
    }
    Ok(citizens)
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;

    #[test]
    fn a_staged_import_reads_back_as_the_citizens_written() {
        let citizens = sample(300);
        let blob = encode_staged(&citizens).unwrap();
        assert_eq!(decode_staged(&blob).unwrap(), citizens);
        assert_eq!(decode_staged(&encode_staged(&[]).unwrap()).unwrap(), []);
    }

    #[test]
    fn every_cut_or_garbled_staged_blob_is_an_error_or_valid_citizens_never_a_panic() {
        let blob = encode_staged(&sample(6)).unwrap();
        for len in 0..blob.len() {
            assert!(decode_staged(&blob[..len]).is_err(), "cut at {len}");
        }
        for at in 0..blob.len() {
            for byte in [0x00, 0x7f, 0x80, 0xc0, 0xcf, 0xdd, 0xff] {
                let mut garbled = blob.clone();
                garbled[at] = byte;
                // Either refused, or citizens that pass every stored-row check.
                if let Ok(citizens) = decode_staged(&garbled) {
                    assert!(citizens.is_sorted_by_key(|c| c.citizen_id));
                }
            }
        }
        let mut unknown = blob;
        unknown[0] = STAGED_FORMAT + 1;
        assert!(decode_staged(&unknown).is_err());
    }

    #[test]
    fn citizens_out_of_order_are_refused() {
        let citizens = sample(20);
        let blob = write_staged(citizens.iter().rev()).unwrap();
        let error = decode_staged(&blob).unwrap_err();
        assert!(error.to_string().contains("out of order"), "{error}");
    }
}
