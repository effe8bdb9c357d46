//! The bytes of an answer: `{"data": …}`, kept compact, gzipped.
//!
//! The cache keeps and splices rendered bodies, so they are made here,
//! beside it; the HTTP edge adds status, headers and the encoding's name.

use axum::body::Bytes;
use serde::Serialize;

#[derive(Serialize)]
struct Data<T> {
    data: T,
}

/// `{"data": value}` serialised.
pub fn to_data<T: Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&Data { data: value })
}

/// A rendered body as the bytes to keep: a serialiser's buffer may hold up
/// to twice its length, so a wasteful one is copied to an exact allocation.
pub fn compact(body: Vec<u8>) -> Bytes {
    if body.capacity() > body.len() + body.len() / 8 {
        Bytes::copy_from_slice(&body)
    } else {
        Bytes::from(body)
    }
}

/// `body` gzip-compressed (fast level: answers are compressed once per
/// version and kept).
pub fn gzip(body: &[u8]) -> Bytes {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 6),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(body);
    compact(encoder.finish().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_copied_only_when_its_buffer_wastes_over_an_eighth() {
        let with = |len: usize, capacity: usize| {
            let mut buffer = Vec::with_capacity(capacity);
            buffer.resize(len, b'x');
            assert_eq!(buffer.capacity(), capacity);
            let before = buffer.as_ptr();
            let body = compact(buffer);
            assert_eq!(body.len(), len);
            body.as_ptr() != before
        };
        assert!(!with(800, 800), "an exact buffer is kept");
        assert!(!with(800, 900), "an eighth more is kept");
        assert!(with(800, 901), "more is copied");
        assert!(with(1000, 4096));
    }

    #[test]
    fn compact_bodies_hold_no_spare_capacity() {
        let mut wasteful = Vec::with_capacity(4096);
        wasteful.extend_from_slice(&[b'x'; 1000]);
        let body = compact(wasteful);
        assert_eq!(body.len(), 1000);
    }

    #[test]
    fn a_gzipped_body_unzips_to_itself() {
        use std::io::Read;
        let body = br#"{"data":[1,2,3]}"#.repeat(100);
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&gzip(&body)[..])
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, body);
    }
}
