//! Validation errors: which field of which citizen broke which rule.
//!
//! Every rejected request names the offending field by its path in the body
//! (`citizens[3].birth_date` for an import, `birth_date` for a PATCH) and, when
//! it is known, the `citizen_id` it belongs to.

use std::fmt;

use super::CitizenId;

/// A rule of the citizen contract that a request broke, with the field and citizen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// Path of the field in the request body, e.g. `citizens[3].birth_date`.
    pub field: String,
    /// The citizen the field belongs to, when the body got far enough to tell.
    pub citizen_id: Option<CitizenId>,
    /// Which rule was broken.
    pub reason: Reason,
}

impl ValidationError {
    /// An error on `field` of the citizen with `citizen_id`.
    pub fn new(field: impl Into<String>, citizen_id: Option<CitizenId>, reason: Reason) -> Self {
        Self {
            field: field.into(),
            citizen_id,
            reason,
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.field.is_empty(), self.citizen_id) {
            (false, Some(id)) => write!(f, "{} (citizen {}): {}", self.field, id, self.reason),
            (false, None) => write!(f, "{}: {}", self.field, self.reason),
            (true, Some(id)) => write!(f, "citizen {}: {}", id, self.reason),
            (true, None) => write!(f, "{}", self.reason),
        }
    }
}

/// The rule that was broken; `code()` is the stable machine-readable name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// The request has no body at all.
    #[error("the request body is empty; expected a JSON object")]
    EmptyBody,
    /// The body is not JSON: a syntax error or an early end, with its position.
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// Valid JSON of the wrong shape (type, unknown, missing or duplicate key, null).
    #[error("{0}")]
    Malformed(String),
    /// A string is shorter than 1 or longer than 256 code points.
    #[error("must be 1 to 256 characters long, got {0}")]
    Length(usize),
    /// An address part has no letter and no digit.
    #[error("must contain at least one letter or digit")]
    NoLetterOrDigit,
    /// An integer above 2^63 − 1.
    #[error("{0} is greater than 9223372036854775807")]
    OutOfRange(u64),
    /// A birth date that is not `DD.MM.YYYY`.
    #[error("{0:?} is not a date in DD.MM.YYYY form")]
    DateFormat(String),
    /// A `DD.MM.YYYY` date that does not exist in the calendar.
    #[error("{0} is not a calendar date")]
    NotCalendarDate(String),
    /// A birth date after today's date (UTC).
    #[error("{0} is in the future")]
    FutureDate(String),
    /// A gender other than `male` or `female`.
    #[error("must be \"male\" or \"female\", got {0:?}")]
    Gender(String),
    /// Two citizens of one import share a citizen_id.
    #[error("citizen_id {0} appears more than once in the import")]
    DuplicateCitizen(CitizenId),
    /// A relative listed twice.
    #[error("lists relative {0} more than once")]
    DuplicateRelative(CitizenId),
    /// A relative that is not a citizen of the import.
    #[error("relative {0} is not a citizen of this import")]
    UnknownRelative(CitizenId),
    /// A lists B, but B does not list A.
    #[error("lists relative {other}, but citizen {other} does not list {this}")]
    NotSymmetric {
        /// The citizen whose list holds the relative.
        this: CitizenId,
        /// The relative that does not list `this` back.
        other: CitizenId,
    },
    /// A PATCH body that changes nothing.
    #[error(
        "the body must change at least one field: name, gender, birth_date, relatives, town, street, building or apartment"
    )]
    EmptyPatch,
    /// A PATCH body that tries to change citizen_id.
    #[error("citizen_id cannot be changed")]
    ImmutableField,
}

impl Reason {
    /// Stable snake_case name of the rule, sent as `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::EmptyBody => "empty_body",
            Reason::InvalidJson(_) => "invalid_json",
            Reason::Malformed(_) => "malformed",
            Reason::Length(_) => "invalid_length",
            Reason::NoLetterOrDigit => "no_letter_or_digit",
            Reason::OutOfRange(_) => "out_of_range",
            Reason::DateFormat(_) => "invalid_date_format",
            Reason::NotCalendarDate(_) => "not_a_calendar_date",
            Reason::FutureDate(_) => "date_in_future",
            Reason::Gender(_) => "invalid_gender",
            Reason::DuplicateCitizen(_) => "duplicate_citizen_id",
            Reason::DuplicateRelative(_) => "duplicate_relative",
            Reason::UnknownRelative(_) => "unknown_relative",
            Reason::NotSymmetric { .. } => "relatives_not_symmetric",
            Reason::EmptyPatch => "empty_patch",
            Reason::ImmutableField => "immutable_field",
        }
    }
}
