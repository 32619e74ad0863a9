//! The master dataset and snapshots: the only code that touches `data_dir`.
//!
//! - `master/segment-NNNNNNNNNN.log`: framed records `[len][!len][crc32c][header][raw]`.
//! - `master/epochs`: the sealed epochs and their log positions.
//! - `snapshots/snapshot-NNNNNNNNNNNNNNNNNNNN.snap`: one per batch run, the newest `batch.keep_snapshots` kept (and older ones the batch cache still names).
//! - `ids/<from>-<upto>.ids`: the distinct ids first seen in a stretch of the log, sorted
//!   (the id levels a snapshot and the batch cache name).
//! - `cache/ids.bin`, `cache/view-<name>.bin`: what an incremental batch run starts from;
//!   `cache/copies-*.tmp`: a batch run's partitions of ids, unlinked while open.
//! - `LOCK`: held by the running daemon.

mod cache;
mod copies;
mod counters;
pub(crate) mod epochs;
mod ids;
mod levels;
mod lock;
mod paths;
pub(crate) mod record;
mod segment;
mod snapshot;

pub use cache::{
    CACHE_FORMAT_VERSION, CacheInfo, list_cache, read_cache, read_cache_head, remove_stale_cache,
    verify_cache, verify_cache_as, write_cache,
};
pub use copies::{Copies, PARTITION_ENTRIES, find_copies};
pub use counters::{Counters, load_counters, save_counters};
pub use epochs::{EpochIndex, SealedEpoch, parse_entries, read_epochs};
pub use ids::{FirstCopies, IdIndex};
pub use levels::{Level, list_levels, remove_other_levels, write_level};
pub use lock::DataDirLock;
pub use paths::DataPaths;
pub use record::{Corruption, RecordHeader};
pub use segment::{
    Appended, LogPosition, MasterLog, NewRecord, Recovery, SEGMENT_HEADER_BYTES, ScanOutcome,
    SegmentInfo, list_segments, scan_log, scan_log_from, scan_segment,
};
pub use snapshot::{
    FORMAT_VERSION, Loaded, OLDEST_READ_VERSION, SnapshotMeta, keep_newest_snapshots,
    list_snapshots, load_newest, map_snapshot_payload, read_snapshot, read_snapshot_payload,
    report_none_usable, report_refused, undecodable, verify_snapshot, write_snapshot,
};

use crate::event::{Epoch, Seq};
use std::path::{Path, PathBuf};

/// A store result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong with the files under data_dir; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A record before the tail is damaged.
    #[error("{what} in {} at offset {offset}", segment.display())]
    CorruptRecord {
        /// The segment.
        segment: PathBuf,
        /// Byte offset of the damaged record.
        offset: u64,
        /// How it is damaged.
        what: Corruption,
    },
    /// A record's seq is not the one its place in the log implies.
    #[error("record out of order in {} at offset {offset}: seq {found}, expected {expected}", segment.display())]
    SeqOutOfOrder {
        /// The segment.
        segment: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// The seq its place implies.
        expected: Seq,
        /// The seq it holds.
        found: Seq,
    },
    /// A segment other than the newest ends inside a record.
    #[error("{} ends inside a record at offset {offset}", path.display())]
    TornSegment {
        /// The segment.
        path: PathBuf,
        /// Where the incomplete record starts.
        offset: u64,
    },
    /// A segment is shorter than a position recorded for it.
    #[error("{} is {len} bytes, shorter than the recorded position {expected}", path.display())]
    ShortSegment {
        /// The segment.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The offset recorded for it.
        expected: u64,
    },
    /// A recorded position falls inside a record.
    #[error("position {offset} in {} is not a record boundary", path.display())]
    NotARecordBoundary {
        /// The segment.
        path: PathBuf,
        /// The offset.
        offset: u64,
    },
    /// A segment file's header is damaged.
    #[error("{}: {problem}", path.display())]
    BadSegmentHeader {
        /// The segment.
        path: PathBuf,
        /// What is wrong.
        problem: &'static str,
    },
    /// A segment between the first and the last is missing.
    #[error("segment {} is missing", path.display())]
    MissingSegment {
        /// The expected path.
        path: PathBuf,
    },
    /// An entry of the epoch index is damaged.
    #[error("corrupt entry in {} at offset {offset}: {what}", path.display())]
    CorruptEpochs {
        /// The index file.
        path: PathBuf,
        /// Byte offset of the entry.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// The epoch index seals records the log does not have (an index newer
    /// than the segments, say after a partial restore).
    #[error("{} seals epoch {epoch} up to {sealed}, but the master dataset ends at {log_end}: records of sealed epochs are missing; restore master/ from one backup (segments and epochs together), `tandem inspect` shows what is there", path.display())]
    SealedBeyondLog {
        /// The index file.
        path: PathBuf,
        /// The newest sealed epoch.
        epoch: Epoch,
        /// Where the index says it ends.
        sealed: LogPosition,
        /// Where the log ends.
        log_end: LogPosition,
    },
    /// An epoch was sealed out of order.
    #[error("{}: cannot seal epoch {found} after epoch {last}", path.display())]
    EpochOutOfOrder {
        /// The index file.
        path: PathBuf,
        /// The last epoch sealed.
        last: Epoch,
        /// The epoch offered.
        found: Epoch,
    },
    /// A snapshot file is damaged or of another format.
    #[error("snapshot {}: {problem}", path.display())]
    BadSnapshot {
        /// The snapshot.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// An id level file is missing, damaged or of another format: what it
    /// held is read again from the master dataset.
    #[error("id level {}: {problem}", path.display())]
    BadIds {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A batch cache file is damaged or of another format: what it held is recomputed.
    #[error("batch cache {}: {problem}", path.display())]
    BadCache {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A snapshot could not be encoded.
    #[error("cannot encode {}", path.display())]
    Encode {
        /// The snapshot.
        path: PathBuf,
        /// The cause.
        #[source]
        source: postcard::Error,
    },
    /// A failed write could not be cut back, so the log refuses appends.
    #[error("{} refuses appends after a failed write; restart to recover it", path.display())]
    Poisoned {
        /// The newest segment.
        path: PathBuf,
    },
    /// The counters file is damaged.
    #[error("{}: {problem}", path.display())]
    BadCounters {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Another process holds the data_dir.
    #[error("data_dir {} is in use by another tandem process", path.display())]
    Locked {
        /// The data_dir.
        path: PathBuf,
    },
}

impl Error {
    /// Whether the files are damaged (rather than unreadable or locked): the
    /// operator's move is to restore them.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            Error::CorruptRecord { .. }
                | Error::SeqOutOfOrder { .. }
                | Error::TornSegment { .. }
                | Error::ShortSegment { .. }
                | Error::NotARecordBoundary { .. }
                | Error::BadSegmentHeader { .. }
                | Error::MissingSegment { .. }
                | Error::CorruptEpochs { .. }
                | Error::BadSnapshot { .. }
                | Error::BadCache { .. }
                | Error::BadIds { .. }
                | Error::BadCounters { .. }
        )
    }

    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// The entries of `dir` as (file name, path), in no order; none when it
/// does not exist.
fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::io("list", dir, source)),
    };
    entries
        .map(|entry| {
            let entry = entry.map_err(|source| Error::io("list", dir, source))?;
            Ok((
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            ))
        })
        .collect()
}

/// Fsyncs a directory, so that a rename or a new file in it is durable.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(|source| Error::io("fsync", dir, source))
}
