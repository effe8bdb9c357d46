//! The pure core: citizen types and their rules, the relatives graph, and the
//! analytics. No I/O, no clock (today's date is a parameter), no framework types.

pub mod analytics;
pub mod citizen;
pub mod error;
pub mod order;
pub mod patch;
pub mod relatives;
pub mod search;
pub mod stats;
pub mod summary;

pub use citizen::{
    Apartment, BirthDate, Citizen, CitizenId, CitizenPatch, Gender, MAX_INTEGER, Name, Place,
};
pub use error::{Reason, ValidationError};

/// Positive id of a stored import, handed out in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ImportId(i64);

impl ImportId {
    /// The id, if positive.
    pub fn new(id: i64) -> Option<Self> {
        (id > 0).then_some(Self(id))
    }

    /// The number.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<u64> for ImportId {
    type Error = String;

    fn try_from(id: u64) -> Result<Self, String> {
        i64::try_from(id)
            .ok()
            .and_then(Self::new)
            .ok_or_else(|| format!("{id} is not an import id"))
    }
}

impl std::fmt::Display for ImportId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Version of an import's data: bumped by exactly one by every write to it.
pub type Version = u64;

/// Today's date in UTC: the one clock read, done by callers at the edge.
pub fn today_utc() -> time::Date {
    time::OffsetDateTime::now_utc().date()
}
