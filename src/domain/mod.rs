//! The pure core: citizen types and their rules, the relatives graph, and the
//! analytics. No I/O, no clock (today's date is a parameter), no framework types.

pub mod citizen;
pub mod error;
pub mod relatives;
pub mod stats;

pub use citizen::{
    Apartment, BirthDate, Citizen, CitizenId, CitizenPatch, Gender, MAX_INTEGER, Name, Place,
};
pub use error::{Reason, ValidationError};

/// Positive id of a stored import, handed out in increasing order.
pub type ImportId = i64;

/// Today's date in UTC: the one clock read, done by callers at the edge.
pub fn today_utc() -> time::Date {
    time::OffsetDateTime::now_utc().date()
}
