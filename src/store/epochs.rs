//! The sealed-epoch index, `master/epochs`: for each sealed epoch, the log
//! position before which every one of its records lies. Entries are framed
//! like records and appended with an fsync each; a torn last entry is cut.

use super::record::{self, Frame};
use super::segment::LogPosition;
use super::{DataPaths, Error, Result};
use crate::event::{Epoch, Seq};
use serde::Serialize;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};

pub(crate) const ENTRY_BYTES: usize = 48;

/// One sealed epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SealedEpoch {
    /// The epoch sealed: every record of it and of earlier epochs lies before `end`.
    pub epoch: Epoch,
    /// The log's durable end when it was sealed.
    pub end: LogPosition,
    /// Every record with a lower seq has an epoch <= `epoch`: it is where the
    /// first source passed this epoch's barrier. Records of later epochs come
    /// at or after it (and may come before `end`).
    pub later_from: Seq,
    /// Records in the log before `end`.
    pub next_seq: Seq,
    /// Wall-clock time of the seal, epoch milliseconds.
    pub sealed_at_ms: i64,
}

impl SealedEpoch {
    pub(crate) fn encode(&self) -> [u8; ENTRY_BYTES] {
        let mut out = [0u8; ENTRY_BYTES];
        out[0..8].copy_from_slice(&self.epoch.0.to_le_bytes());
        out[8..12].copy_from_slice(&self.end.segment.to_le_bytes());
        out[12..20].copy_from_slice(&self.end.offset.to_le_bytes());
        out[20..28].copy_from_slice(&self.next_seq.0.to_le_bytes());
        out[28..36].copy_from_slice(&self.sealed_at_ms.to_le_bytes());
        out[36..44].copy_from_slice(&self.later_from.0.to_le_bytes());
        out
    }

    /// The entry of `bytes`; `None` unless they are an entry's length with
    /// its reserved bytes zero (as every writer leaves them).
    fn decode(bytes: &[u8]) -> Option<SealedEpoch> {
        if bytes.len() != ENTRY_BYTES || bytes[44..].iter().any(|byte| *byte != 0) {
            return None;
        }
        let u64_at = |i: usize| bytes[i..i + 8].try_into().ok().map(u64::from_le_bytes);
        let segment = bytes[8..12].try_into().ok().map(u32::from_le_bytes)?;
        Some(SealedEpoch {
            epoch: Epoch(u64_at(0)?),
            end: LogPosition {
                segment,
                offset: u64_at(12)?,
            },
            next_seq: Seq(u64_at(20)?),
            sealed_at_ms: u64_at(28)? as i64,
            later_from: Seq(u64_at(36)?),
        })
    }
}

/// The sealed epochs, in order, and the file they are appended to.
#[derive(Debug)]
pub struct EpochIndex {
    file: File,
    path: std::path::PathBuf,
    entries: Vec<SealedEpoch>,
    /// Bytes of whole entries: a failed append is cut back to here.
    len: u64,
}

impl EpochIndex {
    /// Opens (or creates) the index, cutting a torn last entry.
    ///
    /// # Errors
    /// I/O errors, a damaged entry before the last, or epochs out of order.
    pub fn open(paths: &DataPaths) -> Result<EpochIndex> {
        let dir = paths.master_dir();
        fs::create_dir_all(&dir).map_err(|source| Error::io("create", &dir, source))?;
        let path = paths.epochs();
        let (entries, valid_len) = read_entries(&path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| Error::io("open", &path, source))?;
        let len = file
            .metadata()
            .map_err(|source| Error::io("stat", &path, source))?
            .len();
        if len > valid_len {
            file.set_len(valid_len)
                .and_then(|()| file.sync_all())
                .map_err(|source| Error::io("truncate", &path, source))?;
            tracing::warn!(file = %path.display(), offset = valid_len, "cut a torn entry from the epoch index");
        }
        Ok(EpochIndex {
            file,
            path,
            entries,
            len: valid_len,
        })
    }

    /// Records that `sealed.epoch` is sealed; durable when this returns.
    ///
    /// # Errors
    /// I/O errors, or an epoch not after the last one sealed.
    pub fn seal(&mut self, sealed: SealedEpoch) -> Result<()> {
        if let Some(last) = self.entries.last()
            && (sealed.epoch <= last.epoch || sealed.end < last.end)
        {
            return Err(Error::EpochOutOfOrder {
                path: self.path.clone(),
                last: last.epoch,
                found: sealed.epoch,
            });
        }
        let mut buf = Vec::with_capacity(record::FRAME_BYTES + ENTRY_BYTES);
        record::encode_frame(&mut buf, &sealed.encode());
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            // A part of an entry (a full disk) must not stay in front of the next one.
            if let Err(err) = self.file.set_len(self.len) {
                tracing::error!(file = %self.path.display(), offset = self.len, error = %err, "cannot cut back a failed epoch entry");
            }
            return Err(Error::io("append to", &self.path, source));
        }
        self.len += buf.len() as u64;
        self.entries.push(sealed);
        Ok(())
    }

    /// Every sealed epoch, oldest first.
    pub fn entries(&self) -> &[SealedEpoch] {
        &self.entries
    }

    /// The newest sealed epoch.
    pub fn last(&self) -> Option<&SealedEpoch> {
        self.entries.last()
    }
}

/// Reads the index without opening it for writing (for `tandem inspect`).
///
/// # Errors
/// As [`EpochIndex::open`].
pub fn read_epochs(paths: &DataPaths) -> Result<Vec<SealedEpoch>> {
    read_entries(&paths.epochs()).map(|(entries, _)| entries)
}

/// The entries and the length of the file they fill.
fn read_entries(path: &std::path::Path) -> Result<(Vec<SealedEpoch>, u64)> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => {
            file.read_to_end(&mut bytes)
                .map_err(|source| Error::io("read", path, source))?;
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(source) => return Err(Error::io("open", path, source)),
    }
    parse_entries(&bytes, path)
}

/// The entries of an `epochs` file's bytes (`path` names it in errors) and
/// the length they fill: a torn last entry is left out.
///
/// # Errors
/// A damaged entry before the last, or epochs out of order.
pub fn parse_entries(bytes: &[u8], path: &std::path::Path) -> Result<(Vec<SealedEpoch>, u64)> {
    let mut entries: Vec<SealedEpoch> = Vec::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        let corrupt = |what: String| Error::CorruptEpochs {
            path: path.to_owned(),
            offset: offset as u64,
            what,
        };
        match record::decode_frame(&bytes[offset..]) {
            Frame::Whole { payload, size } => {
                let entry = SealedEpoch::decode(payload).ok_or_else(|| {
                    corrupt("entry of the wrong size, or with its reserved bytes set".into())
                })?;
                if let Some(last) = entries.last()
                    && entry.epoch <= last.epoch
                {
                    return Err(corrupt(format!(
                        "epoch {} after epoch {}",
                        entry.epoch, last.epoch
                    )));
                }
                entries.push(entry);
                offset += size;
            }
            // The last append was torn.
            Frame::Incomplete { .. } => break,
            Frame::Corrupt(_) if bytes.len() - offset <= record::FRAME_BYTES + ENTRY_BYTES => break,
            Frame::Corrupt(what) => return Err(corrupt(what.to_string())),
        }
    }
    Ok((entries, offset as u64))
}
