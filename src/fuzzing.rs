//! The invariants the fuzz targets check (`fuzz/`, `cargo fuzz`): one
//! function per decoder of outside bytes, each panicking when an invariant
//! does not hold. `tests/fuzz_replay.rs` replays the committed corpora and
//! every past finding through the same functions on the stable toolchain.
//!
//! - [`event`]: the event parser, for a config using every aggregation;
//! - [`push_body`]: the HTTP push source's splitting of a body into events;
//! - [`segment`]: the record frames of a segment file;
//! - [`epochs`]: the sealed-epoch index;
//! - [`config`]: the config loader;
//! - [`snapshot`]: a snapshot's payload, and the indexes built from it.

use crate::actors::recompute::{Batch, SnapshotData};
use crate::aggregate::{Input, ViewSpec};
use crate::config::Config;
use crate::event::ParsedEvent;
use crate::store::record::{self, Frame};
use std::sync::{Arc, OnceLock};

/// A config whose views use every aggregation, a composite key, an id and a time field.
pub const EVENT_CONFIG: &str = r#"
data_dir = "unused"
[event]
id = "id"
time = "ts"
[[view]]
name = "every_agg"
key = ["k", "c"]
bucket = "1m"
metrics = [
  { name = "n", agg = "count" },
  { name = "s", agg = "sum", field = "x" },
  { name = "lo", agg = "min", field = "x" },
  { name = "hi", agg = "max", field = "x" },
  { name = "avg", agg = "mean", field = "x" },
  { name = "u", agg = "distinct", field = "u" },
  { name = "p", agg = "quantile", field = "x", q = 0.9 },
]
[[view]]
name = "by_k"
key = ["k"]
bucket = "1h"
metrics = [{ name = "n", agg = "count" }, { name = "u", agg = "distinct", field = "k" }]
"#;

fn event_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| match Config::parse(EVENT_CONFIG, "fuzz.toml") {
        Ok(config) => config,
        Err(errors) => panic!("the fuzzing config is valid: {errors}"),
    })
}

/// What an event gives each view: its key text and inputs.
fn contributions(views: &[Arc<ViewSpec>], event: &ParsedEvent) -> Vec<(String, i64, Vec<Input>)> {
    let mut scratch = String::new();
    views
        .iter()
        .map(|spec| {
            let mut inputs = Vec::new();
            spec.inputs(event, &mut inputs);
            (
                spec.key_text(event, &mut scratch).to_owned(),
                spec.bucket_of(event.event_ms),
                inputs,
            )
        })
        .collect()
}

/// The event parser: the same bytes give the same outcome; an accepted
/// event is a JSON object holding every field the views use, and gives
/// every view finite numbers; a rejection as something other than not UTF-8,
/// not JSON or too large is of valid JSON.
pub fn event(data: &[u8]) {
    let config = event_config();
    let first = config.schema.parse(data, 1_700_000_000_000);
    let again = config.schema.parse(data, 1_700_000_000_000);
    match (first, again) {
        (Ok(event), Ok(twin)) => {
            assert_eq!(event.event_ms, twin.event_ms);
            assert_eq!(event.id_hash, twin.id_hash);
            let contributed = contributions(&config.views, &event);
            assert_eq!(contributed, contributions(&config.views, &twin));
            // Read as names over any values: JSON puts no bound on a
            // number's size, and an unused field may hold any.
            let object: std::collections::HashMap<String, serde::de::IgnoredAny> =
                serde_json::from_slice(data).expect("an accepted event is a JSON object");
            for field in ["k", "c", "x", "u", "ts", "id"] {
                assert!(object.contains_key(field), "accepted without {field}");
            }
            for (_, _, inputs) in contributed {
                for input in inputs {
                    if let Input::Number(number) = input {
                        assert!(number.is_finite(), "a number input is {number}");
                    }
                }
            }
        }
        (Err(reject), Err(twin)) => {
            use crate::event::Reason;
            assert_eq!(reject.reason, twin.reason);
            if !matches!(
                reject.reason,
                Reason::TooLarge | Reason::NotUtf8 | Reason::InvalidJson
            ) {
                assert!(
                    serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok(),
                    "rejected as {:?}, but it is not JSON",
                    reject.reason
                );
            }
        }
        _ => panic!("the same bytes parsed once and were rejected once"),
    }
}

/// The push source's split of a body: as lines, every line that is not
/// blank, whole and in order, with its 1-based number; as JSON, the array's
/// elements (or the one object), each the JSON it was in the body.
pub fn push_body(data: &[u8]) {
    use crate::http::push::{Framing, split};
    let (messages, positions) = split(data, Framing::Lines).expect("lines always split");
    let expected: Vec<(usize, &[u8])> = data
        .split(|byte| *byte == b'\n')
        .enumerate()
        .map(|(index, line)| (index + 1, line.strip_suffix(b"\r").unwrap_or(line)))
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .collect();
    assert_eq!(messages.len(), expected.len());
    for ((message, position), (line_number, line)) in messages.iter().zip(&positions).zip(expected)
    {
        assert_eq!(*position, line_number);
        assert_eq!(message.as_slice(), line);
    }

    use serde::de::IgnoredAny;
    let array = serde_json::from_slice::<Vec<IgnoredAny>>(data);
    // An object, read without its keys: a key may hold an escape that is
    // not a character (a lone surrogate), which only a reader of keys refuses.
    let object = serde_json::from_slice::<IgnoredAny>(data).is_ok()
        && data.trim_ascii_start().starts_with(b"{");
    match split(data, Framing::Array) {
        Ok((messages, positions)) => {
            let count = match &array {
                Ok(elements) => elements.len(),
                Err(_) if object => 1,
                Err(_) => panic!("split a body that is neither a JSON array nor an object"),
            };
            assert_eq!(messages.len(), count);
            assert!(positions.iter().copied().eq(0..count));
            // Where serde_json can hold every number, each element is the
            // same value as in the body (JSON bounds no number's size).
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
                let elements = match value {
                    serde_json::Value::Array(elements) => elements,
                    object => vec![object],
                };
                for (message, element) in messages.iter().zip(&elements) {
                    let value: serde_json::Value =
                        serde_json::from_slice(message).expect("each element is JSON");
                    assert_eq!(&value, element);
                }
            }
        }
        // JSON is UTF-8; skipping a string's bytes does not check them.
        Err(_) => assert!(
            std::str::from_utf8(data).is_err() || (array.is_err() && !object),
            "refused a JSON array or object"
        ),
    }
}

/// A segment's record frames, read as a scan reads them: a whole frame
/// re-encodes to its bytes, a record to its header and raw bytes; a frame
/// that needs more bytes says so only when it has fewer.
pub fn segment(data: &[u8]) {
    let mut at = 0;
    while at < data.len() {
        match record::decode_frame(&data[at..]) {
            Frame::Whole { payload, size } => {
                let mut again = Vec::new();
                record::encode_frame(&mut again, payload);
                assert_eq!(again, &data[at..at + size]);
                if let Ok((header, raw)) = record::split_record(payload) {
                    let mut again = Vec::new();
                    record::encode_record(&mut again, &header, raw);
                    assert_eq!(again, &data[at..at + size]);
                }
                at += size;
            }
            Frame::Incomplete { need } => {
                assert!(need.is_none_or(|need| need > data.len() - at));
                break;
            }
            Frame::Corrupt(_) => break,
        }
    }
}

/// The sealed-epoch index: the input is cut into entries, each framed with
/// its checksum as the writer frames it (so that the fuzzer reaches the
/// decoder, not only the checksum), the rest appended as a torn tail. What
/// reads back re-encodes to the bytes it was read from, epochs ascending.
pub fn epochs(data: &[u8]) {
    use crate::store::epochs::ENTRY_BYTES;
    let mut file = Vec::new();
    let mut chunks = data.chunks_exact(ENTRY_BYTES);
    for chunk in &mut chunks {
        record::encode_frame(&mut file, chunk);
    }
    file.extend_from_slice(chunks.remainder());
    let Ok((entries, len)) = crate::store::parse_entries(&file, "fuzz/epochs".as_ref()) else {
        return;
    };
    let mut again = Vec::new();
    for entry in &entries {
        record::encode_frame(&mut again, &entry.encode());
    }
    assert_eq!(
        again,
        &file[..len as usize],
        "entries re-encode to their bytes"
    );
    assert!(entries.windows(2).all(|pair| pair[0].epoch < pair[1].epoch));
}

/// The config loader: the same text gives the same outcome; a config it
/// accepts has views with unique names and metrics; a refusal names at
/// least one problem, each with a key or a line.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Variables are left to the machine: the text names none that are set.
    if text.contains("${") {
        return;
    }
    let first = Config::parse(text, "fuzz.toml");
    let again = Config::parse(text, "fuzz.toml");
    match (first, again) {
        (Ok(config), Ok(other)) => {
            assert_eq!(format!("{config:?}"), format!("{other:?}"));
            assert!(!config.views.is_empty());
            let mut names = std::collections::HashSet::new();
            for view in &config.views {
                assert!(names.insert(&view.name), "two views named {}", view.name);
                assert!(!view.metrics.is_empty(), "view {} has no metric", view.name);
            }
        }
        (Err(errors), Err(other)) => {
            assert_eq!(errors.to_string(), other.to_string());
            assert!(!errors.0.is_empty());
            for error in &errors.0 {
                assert!(!error.problem.is_empty());
                assert!(!error.key.is_empty() || error.line.is_some(), "{error}");
            }
        }
        _ => panic!("the same text was accepted once and refused once"),
    }
}

/// A snapshot's payload (what follows its checksummed header), read as
/// each format this build reads: read as a start reads it (the head, then the
/// states after it) it decodes to what a whole read does; one that decodes
/// re-encodes to bytes that decode to the same; and serving it (matching
/// views to the config, building their indexes) does not panic.
pub fn snapshot(data: &[u8]) {
    for version in crate::store::OLDEST_READ_VERSION..=crate::store::FORMAT_VERSION {
        snapshot_of(version, data);
    }
}

fn snapshot_of(version: u32, data: &[u8]) {
    let whole = SnapshotData::decode(version, data).ok();
    let split = SnapshotData::decode_head(version, data)
        .ok()
        .and_then(|(head, states)| Some((head, states.decode(data).ok()?)))
        .and_then(|(head, states)| head.with_states(states).ok());
    let encoded = |data: &Option<SnapshotData<'_>>| {
        data.as_ref()
            .map(|data| postcard::to_allocvec(data).expect("a decoded snapshot encodes"))
    };
    assert_eq!(
        encoded(&whole),
        encoded(&split),
        "format {version}: the head and the states read apart decode as the whole"
    );
    let Some(decoded) = whole else {
        return;
    };
    let encoded = postcard::to_allocvec(&decoded).expect("a decoded snapshot encodes");
    let again: SnapshotData<'_> =
        postcard::from_bytes(&encoded).expect("a re-encoded snapshot decodes");
    assert_eq!(
        postcard::to_allocvec(&again).expect("encodes"),
        encoded,
        "decoding is stable"
    );
    let config = event_config();
    let meta = crate::store::SnapshotMeta {
        epoch: crate::event::Epoch(decoded.sealed.map_or(1, |sealed| sealed.epoch)),
        records: 0,
        created_ms: 0,
        payload_bytes: data.len() as u64,
        version: crate::store::FORMAT_VERSION,
        payload_crc: 0,
    };
    if let Ok(batch) = Batch::from_snapshot(&config.views, meta, decoded, Default::default()) {
        for (spec, state) in config.views.iter().zip(&batch.views) {
            crate::aggregate::ViewIndex::build(spec, state);
        }
    }
}
