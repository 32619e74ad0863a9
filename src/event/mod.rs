//! Events: the schema the config compiles, the parsed form of one message, and
//! the identifiers every layer shares (`Epoch`, `Seq`).
//!
//! A message is parsed once, at its source, reading only the fields the config
//! names. The raw bytes are what the master dataset keeps; the parsed form is
//! what the speed layer and a recompute apply to views.

mod parse;
mod reject;

pub use parse::{ParsedEvent, Slot};
pub use reject::{FieldId, Reason, Reject};

use serde::{Deserialize, Serialize};
use std::fmt;

/// A span of ingestion; every accepted event carries the epoch current at its source.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch after this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Position of a record in the master dataset, counted from 0 over all segments.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a field must hold to be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    /// A string, number or boolean (key, distinct and id fields).
    Scalar,
    /// A JSON number (sum, min, max, mean and quantile fields).
    Number,
}

/// One field the config uses.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    /// The JSON member name.
    pub name: String,
    /// The strictest use any view makes of it.
    pub need: Need,
    /// Whether some use reads its text (keys, distinct values, the id).
    pub text: bool,
}

/// The fields a config uses, compiled once into slots.
///
/// A view refers to a field by its slot index, so applying an event does no
/// name look-ups.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    fields: Vec<FieldSpec>,
    /// Slot of the id field, if the config names one.
    id: Option<usize>,
    /// Name of the event-time field; absent means ingest time.
    time: Option<String>,
    /// Larger messages are rejected as `too_large`.
    max_bytes: usize,
}

impl Schema {
    /// A schema with the given id and time fields and no other field yet.
    pub fn new(id: Option<&str>, time: Option<&str>, max_bytes: usize) -> Schema {
        let mut schema = Schema {
            fields: Vec::new(),
            id: None,
            time: time.map(str::to_owned),
            max_bytes,
        };
        schema.id = id.map(|name| schema.slot(name, Need::Scalar, true));
        schema
    }

    /// The slot of `name`, added if new; a field used in several ways keeps the strictest need.
    pub fn slot(&mut self, name: &str, need: Need, text: bool) -> usize {
        if let Some(index) = self.fields.iter().position(|field| field.name == name) {
            let field = &mut self.fields[index];
            field.need = field.need.max(need);
            field.text |= text;
            return index;
        }
        self.fields.push(FieldSpec {
            name: name.to_owned(),
            need,
            text,
        });
        self.fields.len() - 1
    }

    /// The fields, in slot order.
    pub fn fields(&self) -> &[FieldSpec] {
        &self.fields
    }

    /// Name of a field named in a rejection (or of the time field).
    pub fn field_name(&self, field: FieldId) -> &str {
        match self.fields.get(usize::from(field.0)) {
            Some(spec) => &spec.name,
            None => self.time.as_deref().unwrap_or("<time>"),
        }
    }

    /// The event-time field, if configured.
    pub fn time_field(&self) -> Option<&str> {
        self.time.as_deref()
    }

    /// The id field, if configured.
    pub fn id_field(&self) -> Option<&str> {
        self.id.map(|slot| self.fields[slot].name.as_str())
    }

    /// The size limit of one message.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// A human-readable form of a rejection: `missing_field: product_id`.
    pub fn describe(&self, reject: &Reject) -> String {
        match reject.field {
            Some(field) => format!("{}: {}", reject.reason, self.field_name(field)),
            None => reject.reason.to_string(),
        }
    }
}

/// Stable 64-bit hash of a text value (event ids, distinct values, key routing).
///
/// xxh3 has a fixed definition, so hashes stored on disk stay valid across
/// builds and platforms.
pub fn hash_text(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::hash_text;

    /// Stored hashes (record ids, distinct values, the id index, key routing)
    /// must read the same in every build: these values come from the
    /// reference xxh3 implementation (Python's `xxhash.xxh3_64_intdigest`),
    /// not from this code.
    #[test]
    fn hash_text_is_the_reference_xxh3() {
        for (text, expected) in [
            ("", 0x2d06_8005_38d3_94c2),
            ("abc", 0x78af_5f94_892f_3950),
            ("order-42", 0x79cc_a591_0b9a_ce3c),
            ("café 😀", 0x936c_cc50_4ef7_1510),
        ] {
            assert_eq!(hash_text(text), expected, "{text:?}");
        }
    }
}
