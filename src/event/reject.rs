//! `Reject`: why a message is not an event, from a closed set with stable names.
//!
//! The names are part of the interface: they appear unchanged in the dead-letter
//! header, the status API and the metrics labels.

use std::fmt;

/// Why a message was rejected, checked in declaration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Larger than `event.max_bytes`.
    TooLarge,
    /// The body as a whole is not UTF-8.
    NotUtf8,
    /// Not one JSON value.
    InvalidJson,
    /// Valid JSON, but not an object.
    NotAnObject,
    /// A field the config uses is absent.
    MissingField,
    /// A metric field that is not a number, or a key field that is an object, array or null.
    WrongType,
    /// The time field is neither RFC 3339 with an offset nor epoch milliseconds.
    BadTime,
}

impl Reason {
    /// Every reason, in check order.
    pub const ALL: [Reason; 7] = [
        Reason::TooLarge,
        Reason::NotUtf8,
        Reason::InvalidJson,
        Reason::NotAnObject,
        Reason::MissingField,
        Reason::WrongType,
        Reason::BadTime,
    ];

    /// The stable name used in headers, the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooLarge => "too_large",
            Reason::NotUtf8 => "not_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::NotAnObject => "not_an_object",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::BadTime => "bad_time",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejection: the reason and, for field-level reasons, which field.
///
/// `field` indexes [`Schema::field_name`](super::Schema::field_name); it stays a
/// small `Copy` value so that rejecting costs no allocation on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    /// Why.
    pub reason: Reason,
    /// The field at fault, for `missing_field`, `wrong_type` and `bad_time`.
    pub field: Option<FieldId>,
}

impl Reject {
    pub(crate) const fn whole(reason: Reason) -> Self {
        Reject {
            reason,
            field: None,
        }
    }

    pub(crate) const fn at(reason: Reason, field: FieldId) -> Self {
        Reject {
            reason,
            field: Some(field),
        }
    }
}

/// Index of a field in the event schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldId(pub(crate) u16);
