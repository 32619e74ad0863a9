//! Framing shared by segment records and epoch-index entries:
//! `[len u32][!len u32][crc32c u32][payload]`, little-endian.
//!
//! The length is stored with its complement so that a flipped bit in it is
//! seen at once, instead of sending the reader off to a wrong offset. A segment
//! record's payload is a fixed [`RecordHeader`] followed by the raw event bytes.

use crate::event::{Epoch, Seq};
use std::fmt;

/// Bytes before a frame's payload.
pub const FRAME_BYTES: usize = 12;
/// Bytes of a [`RecordHeader`].
pub const HEADER_BYTES: usize = 40;
/// Largest payload a writer produces; anything longer is corruption.
pub const MAX_PAYLOAD: usize = 64 * 1024 * 1024 + HEADER_BYTES;

/// What the master dataset knows of one event besides its raw bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Position in the log, counted from 0 over all segments.
    pub seq: Seq,
    /// The epoch current at the source when the event arrived.
    pub epoch: Epoch,
    /// Wall-clock arrival, epoch milliseconds.
    pub ingest_ms: i64,
    /// Event time, epoch milliseconds.
    pub event_ms: i64,
    /// Hash of the event id; 0 when the config names no id field.
    pub id_hash: u64,
}

impl RecordHeader {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seq.0.to_le_bytes());
        out.extend_from_slice(&self.epoch.0.to_le_bytes());
        out.extend_from_slice(&self.ingest_ms.to_le_bytes());
        out.extend_from_slice(&self.event_ms.to_le_bytes());
        out.extend_from_slice(&self.id_hash.to_le_bytes());
    }

    fn decode(bytes: &[u8; HEADER_BYTES]) -> RecordHeader {
        let word = |i: usize| {
            let mut le = [0u8; 8];
            le.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(le)
        };
        RecordHeader {
            seq: Seq(word(0)),
            epoch: Epoch(word(1)),
            ingest_ms: word(2) as i64,
            event_ms: word(3) as i64,
            id_hash: word(4),
        }
    }
}

/// How a frame is damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// The length and its complement disagree.
    LengthCheck,
    /// The length is larger than any writer produces.
    TooLong,
    /// The payload does not match its checksum.
    Crc,
    /// A segment record's payload is shorter than a record header.
    ShortRecord,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Corruption::LengthCheck => "length check mismatch",
            Corruption::TooLong => "length beyond the largest record",
            Corruption::Crc => "crc mismatch",
            Corruption::ShortRecord => "record shorter than its header",
        })
    }
}

/// The outcome of reading one frame at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole, valid frame of `size` bytes in all.
    Whole {
        /// The payload.
        payload: &'a [u8],
        /// Frame plus payload.
        size: usize,
    },
    /// The buffer ends inside the frame; `need` bytes in all would hold it.
    Incomplete {
        /// Bytes needed from the frame start, when the length is known.
        need: Option<usize>,
    },
    /// The frame is damaged.
    Corrupt(Corruption),
}

/// Appends a frame holding `payload`.
pub fn encode_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Reads the frame at the start of `buf`.
pub fn decode_frame(buf: &[u8]) -> Frame<'_> {
    if buf.len() < FRAME_BYTES {
        return Frame::Incomplete { need: None };
    }
    let word = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let (len, check, crc) = (word(0), word(4), word(8));
    if len != !check {
        return Frame::Corrupt(Corruption::LengthCheck);
    }
    let len = len as usize;
    if len > MAX_PAYLOAD {
        return Frame::Corrupt(Corruption::TooLong);
    }
    let size = FRAME_BYTES + len;
    if buf.len() < size {
        return Frame::Incomplete { need: Some(size) };
    }
    let payload = &buf[FRAME_BYTES..size];
    if crc32c::crc32c(payload) != crc {
        return Frame::Corrupt(Corruption::Crc);
    }
    Frame::Whole { payload, size }
}

/// Appends one segment record.
pub fn encode_record(out: &mut Vec<u8>, header: &RecordHeader, raw: &[u8]) {
    let len = (HEADER_BYTES + raw.len()) as u32;
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    header.encode(out);
    out.extend_from_slice(raw);
    let crc = crc32c::crc32c(&out[start + FRAME_BYTES..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// Splits a segment record's payload into its header and raw event bytes.
pub fn split_record(payload: &[u8]) -> Result<(RecordHeader, &[u8]), Corruption> {
    let (header, raw) = payload
        .split_at_checked(HEADER_BYTES)
        .ok_or(Corruption::ShortRecord)?;
    let header: &[u8; HEADER_BYTES] = header.try_into().map_err(|_| Corruption::ShortRecord)?;
    Ok((RecordHeader::decode(header), raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(seq: u64) -> RecordHeader {
        RecordHeader {
            seq: Seq(seq),
            epoch: Epoch(3),
            ingest_ms: -5,
            event_ms: 1_700_000_000_000,
            id_hash: u64::MAX,
        }
    }

    proptest! {
        #[test]
        fn records_round_trip(raw in proptest::collection::vec(any::<u8>(), 0..300), seq in any::<u64>()) {
            let mut buf = Vec::new();
            encode_record(&mut buf, &header(seq), &raw);
            let Frame::Whole { payload, size } = decode_frame(&buf) else { panic!("not whole") };
            prop_assert_eq!(size, buf.len());
            let (decoded, body) = split_record(payload).unwrap();
            prop_assert_eq!(decoded, header(seq));
            prop_assert_eq!(body, &raw[..]);
        }

        #[test]
        fn every_prefix_is_incomplete(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = Vec::new();
            encode_record(&mut buf, &header(1), &raw);
            for cut in 0..buf.len() {
                prop_assert!(matches!(decode_frame(&buf[..cut]), Frame::Incomplete { .. }), "cut {}", cut);
            }
        }

        #[test]
        fn every_flipped_bit_is_caught(raw in proptest::collection::vec(any::<u8>(), 1..64), bit in any::<prop::sample::Index>()) {
            let mut buf = Vec::new();
            encode_record(&mut buf, &header(1), &raw);
            let bit = bit.index(buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            let whole = matches!(decode_frame(&buf), Frame::Whole { .. });
            prop_assert!(!whole, "flipped bit {} went unseen", bit);
        }
    }
}
