//! The query of a paged answer (`GET /imports`, a page of citizens): how
//! many per page, and an opaque cursor that names where the last page ended.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::error::AppError;

/// The page size from `limit` as sent: `default` without one, else a whole
/// number from 1 to `max` (400 naming `limit`).
pub fn limit(sent: Option<&str>, default: usize, max: usize) -> Result<usize, AppError> {
    let Some(text) = sent else {
        return Ok(default);
    };
    number::<usize>(text)
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            AppError::BadQuery(
                "limit",
                format!("must be a whole number from 1 to {max}, got {text:?}"),
            )
        })
}

/// A whole number written in ASCII digits only (Rust's own parse takes a
/// leading `+` too, which the API's query parameters do not allow).
pub fn number<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A cursor for the page after the one that ended at `value`: `kind:value`
/// in URL-safe base64, so a cursor of one list is not one of another.
pub fn encode(kind: &str, value: impl std::fmt::Display) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{value}"))
}

/// The value of a cursor as sent, if any, read by `parse` (400 naming
/// `cursor` when it is not one of `kind` this service gave out).
pub fn cursor<T>(
    sent: Option<&str>,
    kind: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<Option<T>, AppError> {
    let Some(cursor) = sent else {
        return Ok(None);
    };
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(kind)?.strip_prefix(':').and_then(parse))
        .map(Some)
        .ok_or_else(|| {
            AppError::BadQuery(
                "cursor",
                "is not a cursor this service gave out (use next_cursor as it came)".into(),
            )
        })
}
