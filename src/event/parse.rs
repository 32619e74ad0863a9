//! Bytes to `ParsedEvent`: one pass of serde_json that keeps only the fields the
//! schema names, then the rejection checks in their documented order.

use super::{FieldId, Need, Reason, Reject, Schema};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use std::fmt::{self, Write as _};
use std::num::NonZeroU64;

/// Latest event time accepted: 9999-12-31T23:59:59.999Z, in epoch milliseconds.
const MAX_EVENT_MS: i64 = 253_402_300_799_999;

/// Rejection field id used for the event-time field.
const TIME_FIELD: FieldId = FieldId(u16::MAX);

/// One captured field: its number (for number fields) and its text (for text uses).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slot {
    num: f64,
    start: u32,
    len: u32,
    kind: Kind,
}

const EMPTY_SLOT: Slot = Slot {
    num: 0.0,
    start: 0,
    len: 0,
    kind: Kind::Missing,
};

/// The fields of one accepted event that the views use.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedEvent {
    /// Event time in epoch milliseconds (ingest time when no time field is configured).
    pub event_ms: i64,
    /// Hash of the id field's text; `None` when the config names no id field.
    pub id_hash: Option<NonZeroU64>,
    slots: Vec<Slot>,
    /// Text of every text-using slot, back to back; slots hold ranges into it.
    text: String,
}

impl ParsedEvent {
    /// The canonical text of a slot: strings as written, numbers in shortest form
    /// (`42` and `"42"` give the same text), booleans as `true`/`false`.
    pub fn text(&self, slot: usize) -> &str {
        let Slot { start, len, .. } = self.slots[slot];
        &self.text[start as usize..(start + len) as usize]
    }

    /// The number held by a number slot.
    pub fn number(&self, slot: usize) -> f64 {
        self.slots[slot].num
    }

    /// Asks the CPU to bring the event's slots and text into cache: an event
    /// parsed on another thread is in that core's cache, and a reader that
    /// knows which events it reads next hides the wait behind other work.
    pub fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            // SAFETY: a prefetch is a hint: it reads nothing into the
            // program and never faults, whatever the address; SSE, which it
            // needs, is part of every x86_64 CPU.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(self.slots.as_ptr().cast());
                _mm_prefetch::<_MM_HINT_T0>(self.text.as_ptr().cast());
            }
        }
    }
}

/// What one member held, before the checks.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Missing,
    Str,
    Num,
    Bool,
    Null,
    Composite,
}

/// Event time as captured.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Time {
    Missing,
    Ms(i64),
    Bad,
}

struct Capture {
    slots: Vec<Slot>,
    text: String,
    time: Time,
}

impl Schema {
    /// Parses one message, reading only the fields this schema names.
    ///
    /// `ingest_ms` becomes the event time when no time field is configured.
    ///
    /// # Errors
    /// The first failed check, in the order of [`Reason`].
    pub fn parse(&self, bytes: &[u8], ingest_ms: i64) -> Result<ParsedEvent, Reject> {
        if bytes.len() > self.max_bytes {
            return Err(Reject::whole(Reason::TooLarge));
        }
        let body = std::str::from_utf8(bytes).map_err(|_| Reject::whole(Reason::NotUtf8))?;
        if !body.trim_start().starts_with('{') {
            // Tell "not JSON" from "JSON, but not an object": the first wins.
            return Err(match serde_json::from_str::<IgnoredAny>(body) {
                Ok(_) => Reject::whole(Reason::NotAnObject),
                Err(_) => Reject::whole(Reason::InvalidJson),
            });
        }
        let n_fields = self.fields.len();
        let mut capture = Capture {
            slots: vec![EMPTY_SLOT; n_fields],
            text: String::with_capacity(64),
            time: Time::Missing,
        };
        let mut de = serde_json::Deserializer::from_str(body);
        EventSeed {
            schema: self,
            capture: &mut capture,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|_| Reject::whole(Reason::InvalidJson))?;
        self.check(capture, ingest_ms)
    }

    fn check(&self, capture: Capture, ingest_ms: i64) -> Result<ParsedEvent, Reject> {
        let field_id = |slot: usize| FieldId(slot as u16);
        if let Some(slot) = capture
            .slots
            .iter()
            .position(|slot| slot.kind == Kind::Missing)
        {
            return Err(Reject::at(Reason::MissingField, field_id(slot)));
        }
        if self.time.is_some() && capture.time == Time::Missing {
            return Err(Reject::at(Reason::MissingField, TIME_FIELD));
        }
        for (slot, (spec, captured)) in self.fields.iter().zip(&capture.slots).enumerate() {
            let fits = match spec.need {
                Need::Number => captured.kind == Kind::Num,
                Need::Scalar => matches!(captured.kind, Kind::Str | Kind::Num | Kind::Bool),
            };
            if !fits {
                return Err(Reject::at(Reason::WrongType, field_id(slot)));
            }
        }
        let event_ms = match capture.time {
            Time::Ms(ms) => ms,
            Time::Bad => return Err(Reject::at(Reason::BadTime, TIME_FIELD)),
            Time::Missing => ingest_ms,
        };
        let mut event = ParsedEvent {
            event_ms,
            id_hash: None,
            slots: capture.slots,
            text: capture.text,
        };
        if let Some(slot) = self.id {
            let hash = super::hash_text(event.text(slot));
            event.id_hash = Some(NonZeroU64::new(hash).unwrap_or(NonZeroU64::MIN));
        }
        Ok(event)
    }

    fn lookup(&self, name: &str) -> Member {
        Member {
            slot: self.fields.iter().position(|field| field.name == name),
            is_time: self.time.as_deref() == Some(name),
        }
    }
}

/// Which roles a member name plays.
struct Member {
    slot: Option<usize>,
    is_time: bool,
}

struct EventSeed<'a> {
    schema: &'a Schema,
    capture: &'a mut Capture,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(member) = map.next_key_seed(KeySeed {
            schema: self.schema,
        })? {
            if member.slot.is_none() && !member.is_time {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let text = member
                .slot
                .is_some_and(|slot| self.schema.fields[slot].text);
            let seed = ValueSeed {
                text,
                is_time: member.is_time,
                capture: &mut *self.capture,
            };
            let value = map.next_value_seed(seed)?;
            if let Some(slot) = member.slot {
                self.capture.slots[slot] = value.slot;
            }
            if member.is_time {
                self.capture.time = value.time;
            }
        }
        Ok(())
    }
}

struct KeySeed<'a> {
    schema: &'a Schema,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Member;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Member, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Member;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Member, E> {
        Ok(self.schema.lookup(name))
    }
}

/// A captured member value; `time` is its reading as an event time.
struct Value {
    slot: Slot,
    time: Time,
}

struct ValueSeed<'a> {
    /// Whether to keep the value's text.
    text: bool,
    /// Whether the value is the event time (only then are strings parsed as times).
    is_time: bool,
    capture: &'a mut Capture,
}

impl ValueSeed<'_> {
    fn value(self, kind: Kind, num: f64, write: impl FnOnce(&mut String), time: Time) -> Value {
        let start = self.capture.text.len();
        if self.text {
            write(&mut self.capture.text);
        }
        let len = self.capture.text.len() - start;
        let slot = Slot {
            num,
            start: start as u32,
            len: len as u32,
            kind,
        };
        Value { slot, time }
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Value, E> {
        let time = match self
            .is_time
            .then(|| chrono::DateTime::parse_from_rfc3339(text))
        {
            Some(Ok(at)) => time_from_ms(at.timestamp_millis()),
            _ => Time::Bad,
        };
        Ok(self.value(Kind::Str, 0.0, |buf| buf.push_str(text), time))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        let time = i64::try_from(n).map_or(Time::Bad, time_from_ms);
        Ok(self.value(Kind::Num, n as f64, |buf| push_display(buf, n), time))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        Ok(self.value(
            Kind::Num,
            n as f64,
            |buf| push_display(buf, n),
            time_from_ms(n),
        ))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        let time = if n.fract() == 0.0 && n.abs() <= MAX_EVENT_MS as f64 {
            Time::Ms(n as i64)
        } else {
            Time::Bad
        };
        Ok(self.value(Kind::Num, n, |buf| push_number(buf, n), time))
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(self.value(
            Kind::Bool,
            0.0,
            |buf| buf.push_str(if b { "true" } else { "false" }),
            Time::Bad,
        ))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(self.value(Kind::Null, 0.0, |_| {}, Time::Bad))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.value(Kind::Composite, 0.0, |_| {}, Time::Bad))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(self.value(Kind::Composite, 0.0, |_| {}, Time::Bad))
    }
}

fn time_from_ms(ms: i64) -> Time {
    if ms.abs() <= MAX_EVENT_MS {
        Time::Ms(ms)
    } else {
        Time::Bad
    }
}

fn push_display(buf: &mut String, value: impl fmt::Display) {
    write!(buf, "{value}").expect("writing to a String cannot fail");
}

/// Canonical text of a JSON number: integral values without a fraction, others
/// in the shortest form that reads back to the same f64.
pub(crate) fn push_number(buf: &mut String, n: f64) {
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        push_display(buf, n as i64);
    } else if n.abs() < 1e16 {
        push_display(buf, n);
    } else {
        write!(buf, "{n:?}").expect("writing to a String cannot fail");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        let mut schema = Schema::new(Some("order_id"), Some("ts"), 1024);
        schema.slot("product_id", Need::Scalar, true);
        schema.slot("amount", Need::Number, false);
        schema.slot("user_id", Need::Scalar, true);
        schema
    }

    const GOOD: &str = r#"{"order_id":"o-1","ts":"2026-11-24T10:00:00.123Z","product_id":"p-7","category":"c","user_id":"u-1","amount":23.45,"qty":2}"#;

    fn reject(body: &str) -> (Reason, Option<String>) {
        let schema = schema();
        let err = schema.parse(body.as_bytes(), 0).expect_err(body);
        (
            err.reason,
            err.field.map(|field| schema.field_name(field).to_owned()),
        )
    }

    #[test]
    fn reads_the_configured_fields() {
        let schema = schema();
        let event = schema.parse(GOOD.as_bytes(), 0).unwrap();
        assert_eq!(event.event_ms, 1_795_514_400_123);
        assert_eq!(event.text(1), "p-7");
        assert_eq!(event.number(2), 23.45);
        assert_eq!(event.text(3), "u-1");
        assert!(event.id_hash.is_some());
    }

    #[test]
    fn numeric_and_string_keys_are_the_same_key() {
        let schema = schema();
        let a = schema
            .parse(
                br#"{"order_id":1,"ts":0,"product_id":42,"user_id":"u","amount":1}"#,
                0,
            )
            .unwrap();
        let b = schema
            .parse(
                br#"{"order_id":"1","ts":0,"product_id":"42","user_id":"u","amount":1}"#,
                0,
            )
            .unwrap();
        let c = schema
            .parse(
                br#"{"order_id":1.0,"ts":0,"product_id":42.0,"user_id":"u","amount":1}"#,
                0,
            )
            .unwrap();
        assert_eq!(a.text(1), "42");
        assert_eq!(a.text(1), b.text(1));
        assert_eq!(a.text(1), c.text(1));
        assert_eq!(a.id_hash, b.id_hash);
    }

    #[test]
    fn epoch_milliseconds_are_an_event_time() {
        let event = schema()
            .parse(
                br#"{"order_id":1,"ts":1795514400123,"product_id":1,"user_id":1,"amount":1}"#,
                0,
            )
            .unwrap();
        assert_eq!(event.event_ms, 1_795_514_400_123);
    }

    #[test]
    fn no_time_field_means_ingest_time() {
        let mut schema = Schema::new(None, None, 100);
        schema.slot("k", Need::Scalar, true);
        assert_eq!(schema.parse(br#"{"k":"a"}"#, 77).unwrap().event_ms, 77);
    }

    #[test]
    fn each_reason_in_order() {
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2000));
        assert_eq!(reject(&big), (Reason::TooLarge, None));
        let schema = schema();
        assert_eq!(
            schema.parse(b"{\"a\":\"\xff\"}", 0).unwrap_err().reason,
            Reason::NotUtf8
        );
        assert_eq!(reject(r#"{"order_id":"o-1","#), (Reason::InvalidJson, None));
        assert_eq!(reject(r#"[1,2,"#), (Reason::InvalidJson, None));
        assert_eq!(reject(r#"{"a":1} trailing"#), (Reason::InvalidJson, None));
        assert_eq!(reject("[1,2,3]"), (Reason::NotAnObject, None));
        assert_eq!(reject("\"text\""), (Reason::NotAnObject, None));
        assert_eq!(
            reject(&GOOD.replace("\"product_id\":\"p-7\",", "")),
            (Reason::MissingField, Some("product_id".into()))
        );
        assert_eq!(
            reject(&GOOD.replace("\"ts\":\"2026-11-24T10:00:00.123Z\",", "")),
            (Reason::MissingField, Some("ts".into()))
        );
        assert_eq!(
            reject(&GOOD.replace("23.45", "\"twelve\"")),
            (Reason::WrongType, Some("amount".into()))
        );
        assert_eq!(
            reject(&GOOD.replace("\"p-7\"", "null")),
            (Reason::WrongType, Some("product_id".into()))
        );
        assert_eq!(
            reject(&GOOD.replace("\"p-7\"", "{\"x\":[1]}")),
            (Reason::WrongType, Some("product_id".into()))
        );
        assert_eq!(
            reject(&GOOD.replace("2026-11-24T10:00:00.123Z", "yesterday")),
            (Reason::BadTime, Some("ts".into()))
        );
        assert_eq!(
            reject(&GOOD.replace("2026-11-24T10:00:00.123Z", "2026-11-24T10:00:00")),
            (Reason::BadTime, Some("ts".into()))
        );
        assert_eq!(
            reject(&GOOD.replace("\"2026-11-24T10:00:00.123Z\"", "1.5")),
            (Reason::BadTime, Some("ts".into()))
        );
        // A missing field is reported before a wrong type elsewhere.
        let both = GOOD
            .replace("23.45", "\"x\"")
            .replace("\"user_id\":\"u-1\",", "");
        assert_eq!(
            reject(&both),
            (Reason::MissingField, Some("user_id".into()))
        );
    }
}
