//! The master dataset's segments: [`MasterLog`] appends with group commit and
//! rolls at a size; [`scan_segment`] streams records back with bounded memory.
//!
//! A segment starts with a 16-byte header (`TNDMSEG1`, then the seq of its first
//! record) and holds framed records back to back. A new segment is prepared
//! under a temporary name and renamed into place, so a segment file always has
//! its header. Only the newest segment can end in a torn write; at open it is
//! cut back to its last whole record.

use super::paths::{self, DataPaths};
use super::record::{self, Corruption, Frame, RecordHeader};
use super::{Error, Result, sync_dir};
use crate::event::{Epoch, Seq};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

const SEGMENT_MAGIC: &[u8; 8] = b"TNDMSEG1";
/// Bytes before a segment's first record.
pub const SEGMENT_HEADER_BYTES: u64 = 16;
/// Read size of the scanner; a longer record grows the buffer to fit it.
const SCAN_CHUNK: usize = 1 << 20;

/// A place in the log: a segment and a byte offset in it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct LogPosition {
    /// Segment index.
    pub segment: u32,
    /// Byte offset in that segment.
    pub offset: u64,
}

impl std::fmt::Display for LogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "segment {} offset {}", self.segment, self.offset)
    }
}

/// One event to append.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    /// The epoch current at its source.
    pub epoch: Epoch,
    /// Arrival time, epoch milliseconds.
    pub ingest_ms: i64,
    /// Event time, epoch milliseconds.
    pub event_ms: i64,
    /// Hash of its id, 0 for none.
    pub id_hash: u64,
    /// The message as received.
    pub raw: &'a [u8],
}

/// What one group commit made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Seq of the first record of the batch.
    pub first_seq: Seq,
    /// Seq the next record will get.
    pub next_seq: Seq,
    /// The log's durable end after the batch.
    pub end: LogPosition,
}

/// What opening the log found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Segments present.
    pub segments: usize,
    /// Seq the next record will get (= records in the log).
    pub next_seq: Seq,
    /// Bytes of a torn tail cut from the newest segment.
    pub torn_bytes: u64,
    /// The log's end.
    pub end: LogPosition,
}

/// The single writer of the master dataset.
#[derive(Debug)]
pub struct MasterLog {
    paths: DataPaths,
    /// A segment is rolled once it reaches this size.
    max_bytes: u64,
    /// The newest segment, opened for appending.
    file: File,
    segment: u32,
    /// Durable size of the newest segment: everything before it is fsynced.
    offset: u64,
    next_seq: Seq,
    /// Seq the next staged record will get; equals `next_seq` when nothing is staged.
    staged_seq: Seq,
    /// Set when a failed write could not be rolled back; appends then refuse
    /// until the log is reopened (and its tail checked again).
    poisoned: bool,
    /// Staged records, encoded, not yet written; reused across batches.
    buf: Vec<u8>,
}

impl MasterLog {
    /// Opens (or creates) the log, cutting a torn tail from the newest segment.
    ///
    /// # Errors
    /// I/O errors, a damaged segment header, or a damaged record before the tail.
    pub fn open(paths: &DataPaths, max_bytes: u64) -> Result<(MasterLog, Recovery)> {
        let dir = paths.master_dir();
        fs::create_dir_all(&dir).map_err(|source| Error::io("create", &dir, source))?;
        remove_tmp_files(&dir)?;
        let segments = list_segments(paths)?;
        let (segment, first_seq, torn_bytes, records, offset) = match segments.last() {
            None => {
                create_segment(paths, 0, Seq(0))?;
                (0, Seq(0), 0, 0, SEGMENT_HEADER_BYTES)
            }
            Some(last) => {
                let scan = scan_segment(last, None, |_, _| {})?;
                let torn_bytes = match scan.torn {
                    Some(torn_at) => {
                        cut_tail(&last.path, torn_at)?;
                        last.len - torn_at
                    }
                    None => 0,
                };
                (
                    last.index,
                    last.first_seq,
                    torn_bytes,
                    scan.records,
                    scan.end,
                )
            }
        };
        let path = paths.segment(segment);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|source| Error::io("open", &path, source))?;
        let next_seq = Seq(first_seq.0 + records);
        let log = MasterLog {
            paths: paths.clone(),
            max_bytes,
            file,
            segment,
            offset,
            next_seq,
            staged_seq: next_seq,
            poisoned: false,
            buf: Vec::with_capacity(1 << 20),
        };
        let recovery = Recovery {
            segments: segments.len().max(1),
            next_seq,
            torn_bytes,
            end: log.end(),
        };
        Ok((log, recovery))
    }

    /// Appends a batch and fsyncs it once: when this returns, every record is durable.
    ///
    /// # Errors
    /// I/O errors. The batch is then not in the log: a partial write is cut back.
    pub fn append<'a>(
        &mut self,
        records: impl IntoIterator<Item = NewRecord<'a>>,
    ) -> Result<Appended> {
        self.stage(records);
        self.commit()
    }

    /// Encodes records after those already staged, without writing them; they
    /// get their seqs now and become durable with the next [`MasterLog::commit`].
    /// Returns the seqs given, `first..next`.
    pub fn stage<'a>(&mut self, records: impl IntoIterator<Item = NewRecord<'a>>) -> (Seq, Seq) {
        let first = self.staged_seq;
        for new in records {
            let header = RecordHeader {
                seq: self.staged_seq,
                epoch: new.epoch,
                ingest_ms: new.ingest_ms,
                event_ms: new.event_ms,
                id_hash: new.id_hash,
            };
            record::encode_record(&mut self.buf, &header, new.raw);
            self.staged_seq = Seq(self.staged_seq.0 + 1);
        }
        (first, self.staged_seq)
    }

    /// Writes every staged record and fsyncs once (group commit).
    ///
    /// # Errors
    /// I/O errors. Every staged record is then dropped, none is in the log,
    /// and their seqs are given again.
    pub fn commit(&mut self) -> Result<Appended> {
        let first_seq = self.next_seq;
        if self.buf.is_empty() {
            return Ok(Appended {
                first_seq,
                next_seq: first_seq,
                end: self.end(),
            });
        }
        let written = self.write_staged();
        self.buf.clear();
        match written {
            Ok(()) => {
                self.next_seq = self.staged_seq;
                Ok(Appended {
                    first_seq,
                    next_seq: self.next_seq,
                    end: self.end(),
                })
            }
            Err(err) => {
                self.staged_seq = self.next_seq;
                Err(err)
            }
        }
    }

    fn write_staged(&mut self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned {
                path: self.paths.segment(self.segment),
            });
        }
        if self.offset >= self.max_bytes {
            self.roll()?;
        }
        let written = if crate::faults::is_armed("commit.mid_write") {
            let half = self.buf.len() / 2;
            self.file.write_all(&self.buf[..half]).and_then(|()| {
                crate::faults::crash_point("commit.mid_write");
                self.file.write_all(&self.buf[half..])
            })
        } else {
            self.file.write_all(&self.buf)
        }
        .and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            self.roll_back();
            return Err(Error::io(
                "append to",
                &self.paths.segment(self.segment),
                source,
            ));
        }
        self.offset += self.buf.len() as u64;
        Ok(())
    }

    /// The durable end of the log.
    pub fn end(&self) -> LogPosition {
        LogPosition {
            segment: self.segment,
            offset: self.offset,
        }
    }

    /// Seq the next durable record will get.
    pub fn next_seq(&self) -> Seq {
        self.next_seq
    }

    /// Whether a failed write could not be cut back: the log then refuses
    /// appends until it is opened again.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Seq the next staged record will get.
    pub fn staged_seq(&self) -> Seq {
        self.staged_seq
    }

    /// Cuts a failed write back to the durable size.
    fn roll_back(&mut self) {
        let path = self.paths.segment(self.segment);
        let cut = self
            .file
            .set_len(self.offset)
            .and_then(|()| self.file.sync_data());
        if let Err(err) = cut {
            tracing::error!(segment = %path.display(), error = %err, "cannot cut back a failed write; appends stop until restart");
            self.poisoned = true;
        }
    }

    fn roll(&mut self) -> Result<()> {
        let next = self.segment + 1;
        create_segment(&self.paths, next, self.next_seq)?;
        let path = self.paths.segment(next);
        self.file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|source| Error::io("open", &path, source))?;
        self.segment = next;
        self.offset = SEGMENT_HEADER_BYTES;
        Ok(())
    }
}

/// Creates segment `index` holding only its header, atomically.
fn create_segment(paths: &DataPaths, index: u32, first_seq: Seq) -> Result<()> {
    let tmp = paths.segment_tmp(index);
    let path = paths.segment(index);
    let mut header = Vec::with_capacity(SEGMENT_HEADER_BYTES as usize);
    header.extend_from_slice(SEGMENT_MAGIC);
    header.extend_from_slice(&first_seq.0.to_le_bytes());
    let mut file = File::create(&tmp).map_err(|source| Error::io("create", &tmp, source))?;
    file.write_all(&header)
        .and_then(|()| file.sync_all())
        .map_err(|source| Error::io("write", &tmp, source))?;
    fs::rename(&tmp, &path).map_err(|source| Error::io("rename", &tmp, source))?;
    sync_dir(&paths.master_dir())
}

fn cut_tail(path: &Path, at: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| Error::io("open", path, source))?;
    file.set_len(at)
        .and_then(|()| file.sync_all())
        .map_err(|source| Error::io("truncate", path, source))?;
    tracing::warn!(segment = %path.display(), offset = at, "cut a torn tail from the newest segment");
    Ok(())
}

fn remove_tmp_files(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|source| Error::io("list", dir, source))? {
        let entry = entry.map_err(|source| Error::io("list", dir, source))?;
        if entry.file_name().to_str().is_some_and(paths::is_tmp_name) {
            let path = entry.path();
            fs::remove_file(&path).map_err(|source| Error::io("remove", &path, source))?;
        }
    }
    Ok(())
}

/// A segment file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Its index.
    pub index: u32,
    /// Its path.
    pub path: PathBuf,
    /// Seq of its first record.
    pub first_seq: Seq,
    /// Its size in bytes.
    pub len: u64,
}

/// The segments of a data_dir, in log order, each with its header checked.
///
/// # Errors
/// I/O errors, a damaged header, or a gap in the segment numbers.
pub fn list_segments(paths: &DataPaths) -> Result<Vec<SegmentInfo>> {
    let dir = paths.master_dir();
    let mut indexes = Vec::new();
    match fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|source| Error::io("list", &dir, source))?;
                if let Some(index) = entry
                    .file_name()
                    .to_str()
                    .and_then(paths::parse_segment_name)
                {
                    indexes.push(index);
                }
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::io("list", &dir, source)),
    }
    indexes.sort_unstable();
    let mut segments = Vec::with_capacity(indexes.len());
    for (position, index) in indexes.into_iter().enumerate() {
        let expected = segments
            .first()
            .map_or(index, |first: &SegmentInfo| first.index + position as u32);
        if index != expected {
            return Err(Error::MissingSegment {
                path: paths.segment(expected),
            });
        }
        segments.push(read_segment_info(index, paths.segment(index))?);
    }
    Ok(segments)
}

fn read_segment_info(index: u32, path: PathBuf) -> Result<SegmentInfo> {
    let mut file = File::open(&path).map_err(|source| Error::io("open", &path, source))?;
    let len = file
        .metadata()
        .map_err(|source| Error::io("stat", &path, source))?
        .len();
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    if len < SEGMENT_HEADER_BYTES {
        return Err(Error::BadSegmentHeader {
            path,
            problem: "shorter than its header",
        });
    }
    file.read_exact(&mut header)
        .map_err(|source| Error::io("read", &path, source))?;
    if &header[..8] != SEGMENT_MAGIC {
        return Err(Error::BadSegmentHeader {
            path,
            problem: "not a tandem segment (bad magic)",
        });
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&header[8..]);
    Ok(SegmentInfo {
        index,
        path,
        first_seq: Seq(u64::from_le_bytes(seq)),
        len,
    })
}

/// What a scan of one segment saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Whole records read.
    pub records: u64,
    /// Offset just after the last whole record read.
    pub end: u64,
    /// Where a torn tail starts, if the segment ends in one.
    pub torn: Option<u64>,
    /// Whether the caller stopped the scan (the records after `end` were not read).
    pub stopped: bool,
}

/// Streams the records of one segment, up to byte offset `end` (the whole file
/// when `None`), calling `on_record` for each. Memory stays at one read chunk.
///
/// A damaged record followed by anything but zeros is an error naming the
/// segment and offset; a damaged or incomplete last record is reported as a
/// torn tail in the outcome, for the caller to judge.
///
/// # Errors
/// I/O errors, corruption, a seq out of order, or a file shorter than `end`.
pub fn scan_segment(
    info: &SegmentInfo,
    end: Option<u64>,
    mut on_record: impl FnMut(&RecordHeader, &[u8]),
) -> Result<ScanOutcome> {
    scan_segment_until(info, end, |header, raw| {
        on_record(header, raw);
        ControlFlow::Continue(())
    })
}

/// [`scan_segment`], stopped early when `on_record` breaks.
fn scan_segment_until(
    info: &SegmentInfo,
    end: Option<u64>,
    mut on_record: impl FnMut(&RecordHeader, &[u8]) -> ControlFlow<()>,
) -> Result<ScanOutcome> {
    let path = &info.path;
    let mut file = File::open(path).map_err(|source| Error::io("open", path, source))?;
    let file_len = file
        .metadata()
        .map_err(|source| Error::io("stat", path, source))?
        .len();
    let limit = end.unwrap_or(file_len);
    if limit > file_len {
        return Err(Error::ShortSegment {
            path: path.clone(),
            len: file_len,
            expected: limit,
        });
    }
    file.seek(SeekFrom::Start(SEGMENT_HEADER_BYTES))
        .map_err(|source| Error::io("seek", path, source))?;
    let mut buf = vec![0u8; SCAN_CHUNK];
    let (mut start, mut filled) = (0usize, 0usize);
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut records = 0u64;
    loop {
        let mut need = None;
        while offset < limit {
            match record::decode_frame(&buf[start..filled]) {
                Frame::Whole { payload, size } => {
                    let corrupt = |what| Error::CorruptRecord {
                        segment: path.clone(),
                        offset,
                        what,
                    };
                    if offset + size as u64 > limit {
                        return Err(Error::NotARecordBoundary {
                            path: path.clone(),
                            offset: limit,
                        });
                    }
                    let (header, raw) = record::split_record(payload).map_err(corrupt)?;
                    let expected = Seq(info.first_seq.0 + records);
                    if header.seq != expected {
                        return Err(Error::SeqOutOfOrder {
                            segment: path.clone(),
                            offset,
                            expected,
                            found: header.seq,
                        });
                    }
                    let flow = on_record(&header, raw);
                    records += 1;
                    start += size;
                    offset += size as u64;
                    if flow.is_break() {
                        return Ok(ScanOutcome {
                            records,
                            end: offset,
                            torn: None,
                            stopped: true,
                        });
                    }
                }
                Frame::Incomplete { need: needed } => {
                    need = needed;
                    break;
                }
                Frame::Corrupt(what) => {
                    let frame_len = frame_size(&buf[start..filled]);
                    return match is_torn(path, offset, file_len, what, frame_len)? {
                        true => Ok(ScanOutcome {
                            records,
                            end: offset,
                            torn: Some(offset),
                            stopped: false,
                        }),
                        false => Err(Error::CorruptRecord {
                            segment: path.clone(),
                            offset,
                            what,
                        }),
                    };
                }
            }
        }
        if offset >= limit {
            return Ok(ScanOutcome {
                records,
                end: offset,
                torn: None,
                stopped: false,
            });
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        start = 0;
        if let Some(need) = need
            && need > buf.len()
        {
            buf.resize(need, 0);
        }
        let n = file
            .read(&mut buf[filled..])
            .map_err(|source| Error::io("read", path, source))?;
        if n == 0 {
            // The file ends inside a record.
            return Ok(ScanOutcome {
                records,
                end: offset,
                torn: Some(offset),
                stopped: false,
            });
        }
        filled += n;
    }
}

/// The frame size claimed by a (possibly damaged) frame header.
fn frame_size(buf: &[u8]) -> Option<u64> {
    let len = buf.get(..4)?;
    Some(
        record::FRAME_BYTES as u64
            + u64::from(u32::from_le_bytes([len[0], len[1], len[2], len[3]])),
    )
}

/// Whether damage at `offset` is a torn write rather than corruption: either
/// only zeros follow (blocks allocated but never written), or the damaged
/// record is exactly the last thing in the file.
fn is_torn(
    path: &Path,
    offset: u64,
    file_len: u64,
    what: Corruption,
    frame_len: Option<u64>,
) -> Result<bool> {
    if what == Corruption::Crc && frame_len.is_some_and(|len| offset + len == file_len) {
        return Ok(true);
    }
    let mut file = File::open(path).map_err(|source| Error::io("open", path, source))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|source| Error::io("seek", path, source))?;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut chunk)
            .map_err(|source| Error::io("read", path, source))?;
        if n == 0 {
            return Ok(true);
        }
        if chunk[..n].iter().any(|byte| *byte != 0) {
            return Ok(false);
        }
    }
}

/// Streams every record before `end`, segment by segment.
///
/// # Errors
/// As [`scan_segment`]; a torn tail before `end` is an error too.
pub fn scan_log(
    paths: &DataPaths,
    end: LogPosition,
    mut on_record: impl FnMut(&RecordHeader, &[u8]),
) -> Result<u64> {
    scan_log_from(paths, Seq(0), end, |header, raw| {
        on_record(header, raw);
        ControlFlow::Continue(())
    })
}

/// Streams every record from seq `from` to `end`, segment by segment: the
/// segments wholly before `from` are not read; the records before it in the
/// segment that holds it are read (and checked) but not handed on. Answers
/// the records read. When `on_record` breaks, the scan stops after that record.
///
/// # Errors
/// As [`scan_log`].
pub fn scan_log_from(
    paths: &DataPaths,
    from: Seq,
    end: LogPosition,
    mut on_record: impl FnMut(&RecordHeader, &[u8]) -> ControlFlow<()>,
) -> Result<u64> {
    let segments = list_segments(paths)?;
    // The last segment starting at or before `from` holds it (or ends before it).
    let first = segments
        .iter()
        .rposition(|segment| segment.first_seq <= from)
        .unwrap_or(0);
    let mut records = 0;
    for segment in segments[first..]
        .iter()
        .filter(|segment| segment.index <= end.segment)
    {
        let limit = (segment.index == end.segment).then_some(end.offset);
        let outcome = scan_segment_until(segment, limit, |header, raw| {
            if header.seq >= from {
                on_record(header, raw)
            } else {
                ControlFlow::Continue(())
            }
        })?;
        if let Some(offset) = outcome.torn {
            return Err(Error::TornSegment {
                path: segment.path.clone(),
                offset,
            });
        }
        records += outcome.records;
        if outcome.stopped {
            break;
        }
    }
    Ok(records)
}
