//! How a relatives list is stored: one blob of little-endian i64s.

use crate::domain::CitizenId;
use crate::storage::StorageError;

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
