//! Snapshots: one file per batch run under `snapshots/`, written atomically
//! (temporary file, fsync, rename, fsync the directory), the newest `keep`
//! (`batch.keep_snapshots`) kept, and older ones the batch cache still names.
//!
//! Layout: a 56-byte header (`TNDMSNAP`, format version, epoch, records covered,
//! creation time, payload length, payload crc32c, header crc32c), then the
//! payload in postcard. A damaged snapshot is refused with the reason and the
//! next older one is used.

use super::paths::{self, DataPaths};
use super::{Error, Result, sync_dir};
use crate::event::Epoch;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"TNDMSNAP";
/// The payload format this build writes (5: what a start needs first, the
/// views' states last, the ids in level files the head names; 4 held the
/// ids in the head).
pub const FORMAT_VERSION: u32 = 5;
/// The oldest payload format this build reads (3: the views' states first).
pub const OLDEST_READ_VERSION: u32 = 3;
const HEADER_BYTES: usize = 56;

/// What a snapshot's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SnapshotMeta {
    /// The newest epoch the snapshot covers.
    pub epoch: Epoch,
    /// Records of the master dataset it was computed from.
    pub records: u64,
    /// When it was written, epoch milliseconds.
    pub created_ms: i64,
    /// Payload size in bytes.
    pub payload_bytes: u64,
    /// The payload's format version.
    pub version: u32,
    /// The payload's crc32c: what tells this file from another snapshot of
    /// the same epoch written since (the batch cache names a snapshot by it).
    #[serde(skip)]
    pub payload_crc: u32,
}

impl SnapshotMeta {
    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.epoch.0.to_le_bytes());
        out[24..32].copy_from_slice(&self.records.to_le_bytes());
        out[32..40].copy_from_slice(&self.created_ms.to_le_bytes());
        out[40..48].copy_from_slice(&self.payload_bytes.to_le_bytes());
        out[48..52].copy_from_slice(&self.payload_crc.to_le_bytes());
        let header_crc = crc32c::crc32c(&out[..52]);
        out[52..56].copy_from_slice(&header_crc.to_le_bytes());
        out
    }

    /// The header (with the payload crc it promises).
    fn decode(path: &Path, bytes: &[u8; HEADER_BYTES]) -> Result<SnapshotMeta> {
        let bad = |problem: String| Error::BadSnapshot {
            path: path.to_owned(),
            problem,
        };
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let u64_at = |i: usize| {
            let mut le = [0u8; 8];
            le.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(le)
        };
        if &bytes[0..8] != MAGIC {
            return Err(bad("not a tandem snapshot (bad magic)".into()));
        }
        if crc32c::crc32c(&bytes[..52]) != u32_at(52) {
            return Err(bad("header crc mismatch".into()));
        }
        let version = u32_at(8);
        if !(OLDEST_READ_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(bad(format!(
                "format version {version}, this build reads versions {OLDEST_READ_VERSION} to {FORMAT_VERSION}"
            )));
        }
        let meta = SnapshotMeta {
            epoch: Epoch(u64_at(16)),
            records: u64_at(24),
            created_ms: u64_at(32) as i64,
            payload_bytes: u64_at(40),
            version,
            payload_crc: u32_at(48),
        };
        Ok(meta)
    }
}

/// A snapshot loaded from disk.
#[derive(Debug)]
pub struct Loaded<T> {
    /// Its header.
    pub meta: SnapshotMeta,
    /// Its payload.
    pub data: T,
    /// Its file.
    pub path: PathBuf,
    /// Newer snapshots that were refused, with why.
    pub refused: Vec<Error>,
}

/// Writes the snapshot of `meta.epoch` atomically, then keeps only the newest
/// `keep` (at least the one written).
///
/// # Errors
/// I/O or encoding errors; a failed write leaves the older snapshots in place.
pub fn write_snapshot<T: Serialize>(
    paths: &DataPaths,
    epoch: Epoch,
    records: u64,
    created_ms: i64,
    data: &T,
    keep: usize,
) -> Result<SnapshotMeta> {
    let dir = paths.snapshots_dir();
    fs::create_dir_all(&dir).map_err(|source| Error::io("create", &dir, source))?;
    remove_leftovers(&dir);
    let mut meta = SnapshotMeta {
        epoch,
        records,
        created_ms,
        payload_bytes: 0,
        version: FORMAT_VERSION,
        payload_crc: 0,
    };
    let (tmp, path) = (paths.snapshot_tmp(epoch), paths.snapshot(epoch));
    write_atomically(
        &tmp,
        &path,
        data,
        |payload_bytes, crc| {
            meta.payload_bytes = payload_bytes;
            meta.payload_crc = crc;
            meta.encode().to_vec()
        },
        "snapshot.mid_write",
    )?;
    keep_newest_snapshots(paths, keep, &[])?;
    Ok(meta)
}

/// Removes every snapshot but the newest `keep` (at least one) and those of
/// the epochs in `also` (the ones a batch cache file still names).
///
/// # Errors
/// I/O errors listing or removing, naming the file.
pub fn keep_newest_snapshots(paths: &DataPaths, keep: usize, also: &[Epoch]) -> Result<()> {
    for (epoch, old) in list_snapshots(paths)?.into_iter().skip(keep.max(1)) {
        if !also.contains(&epoch) {
            fs::remove_file(&old).map_err(|source| Error::io("remove", &old, source))?;
        }
    }
    Ok(())
}

/// Writes a header and `value` in postcard to `tmp`, fsyncs it, renames it
/// to `path` and fsyncs the directory: `path` is then whole or absent,
/// whatever crashes. The payload is encoded straight into the file (never
/// whole in memory: it is the size of the views); `header` makes the header
/// from its length and crc32c, and is written over the placeholder (the
/// header of an empty payload) left for it in front. A crash at `crash_point` (for the fault tests) comes once
/// [`CRASH_AFTER`] bytes of payload are in `tmp`, or all of a smaller one
/// (its header still the placeholder). A failed write removes
/// `tmp`: a full disk must not stay full of a file that will never be used.
///
/// # Errors
/// I/O and encoding errors, naming the file.
pub(super) fn write_atomically<T: Serialize>(
    tmp: &Path,
    path: &Path,
    value: &T,
    header: impl FnMut(u64, u32) -> Vec<u8>,
    crash_point: &str,
) -> Result<()> {
    let file = File::create(tmp).map_err(|source| Error::io("create", tmp, source))?;
    let written = write_payload(file, value, header, crash_point);
    if let Err(err) = written {
        fs::remove_file(tmp).ok();
        return Err(match err {
            Written::Io(source) => Error::io("write", tmp, source),
            Written::Encode(source) => Error::Encode {
                path: path.to_owned(),
                source,
            },
        });
    }
    fs::rename(tmp, path).map_err(|source| Error::io("rename", tmp, source))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Payload bytes written before a file's crash point fires.
const CRASH_AFTER: u64 = 1024;

/// Why [`write_payload`] failed.
enum Written {
    Io(std::io::Error),
    Encode(postcard::Error),
}

fn write_payload<T: Serialize>(
    mut file: File,
    value: &T,
    mut header: impl FnMut(u64, u32) -> Vec<u8>,
    crash_point: &str,
) -> std::result::Result<(), Written> {
    let placeholder = header(0, 0);
    file.write_all(&placeholder).map_err(Written::Io)?;
    let mut payload = Payload {
        file,
        buffer: Vec::with_capacity(PAYLOAD_CHUNK),
        crc: 0,
        len: 0,
        crash_point,
        crashed: false,
        failed: None,
    };
    let encoded = postcard::serialize_with_flavor(value, &mut payload);
    if let Some(io) = payload.failed.take() {
        return Err(Written::Io(io));
    }
    encoded.map_err(Written::Encode)?;
    payload.drain().map_err(Written::Io)?;
    payload.crash();
    let Payload {
        mut file, len, crc, ..
    } = payload;
    let header = header(len, crc);
    debug_assert_eq!(header.len(), placeholder.len());
    file.seek(std::io::SeekFrom::Start(0))
        .and_then(|_| file.write_all(&header))
        .and_then(|()| file.sync_all())
        .map_err(Written::Io)
}

/// Payload bytes gathered before they are checksummed and written.
const PAYLOAD_CHUNK: usize = 1 << 20;

/// A file's payload as it is written: gathered in chunks, each counted,
/// checksummed and written whole (postcard writes field by field).
struct Payload<'a> {
    file: File,
    buffer: Vec<u8>,
    /// Of the bytes written to `file`.
    crc: u32,
    len: u64,
    crash_point: &'a str,
    /// Whether the crash point was passed.
    crashed: bool,
    /// The I/O error behind an encoding error.
    failed: Option<std::io::Error>,
}

impl Payload<'_> {
    /// Checksums and writes what is gathered; passes the crash point once
    /// [`CRASH_AFTER`] bytes are in the file.
    fn drain(&mut self) -> std::io::Result<()> {
        self.file.write_all(&self.buffer)?;
        self.crc = crc32c::crc32c_append(self.crc, &self.buffer);
        self.len += self.buffer.len() as u64;
        self.buffer.clear();
        if self.len >= CRASH_AFTER {
            self.crash();
        }
        Ok(())
    }

    /// Passes the crash point (once), with what is written so far in the file.
    fn crash(&mut self) {
        if !self.crashed {
            self.crashed = true;
            crate::faults::crash_point(self.crash_point);
        }
    }

    /// Drains the chunk once it is full; an I/O error is kept for the caller
    /// (postcard reports any error of its output as its own).
    #[inline]
    fn drain_when_full(&mut self) -> postcard::Result<()> {
        // The first chunk is small, so that the crash point comes early.
        let limit = if self.len == 0 {
            CRASH_AFTER as usize
        } else {
            PAYLOAD_CHUNK
        };
        if self.buffer.len() < limit {
            return Ok(());
        }
        self.drain().map_err(|err| {
            self.failed = Some(err);
            postcard::Error::SerializeBufferFull
        })
    }
}

/// Postcard writes into the gathered chunk directly, a field at a time
/// (through `io::Write`, each field cost a call of its own).
impl postcard::ser_flavors::Flavor for &mut Payload<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.buffer.push(byte);
        self.drain_when_full()
    }

    #[inline]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.buffer.extend_from_slice(bytes);
        self.drain_when_full()
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Removes temporary files a crash left half written (only one batch run
/// writes at a time); they would hold disk space for nothing.
pub(super) fn remove_leftovers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(paths::is_tmp_name) {
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed a half-written file")
                }
                Err(err) => {
                    tracing::warn!(file = %entry.path().display(), error = %err, "cannot remove a half-written file")
                }
            }
        }
    }
}

/// The snapshot files, newest first. Leftover temporary files are ignored.
///
/// # Errors
/// I/O errors listing the directory.
pub fn list_snapshots(paths: &DataPaths) -> Result<Vec<(Epoch, PathBuf)>> {
    let mut found: Vec<(Epoch, PathBuf)> = super::list_dir(&paths.snapshots_dir())?
        .into_iter()
        .filter_map(|(name, path)| Some((paths::parse_snapshot_name(&name)?, path)))
        .collect();
    found.sort_unstable_by_key(|(epoch, _)| std::cmp::Reverse(*epoch));
    Ok(found)
}

/// Reads and checks one snapshot's header and payload, of this build's
/// format version (an older one's payload is read by its own decoder:
/// `recompute::read_snapshot_data`).
///
/// # Errors
/// I/O errors, a damaged header or payload, an older format, or a payload
/// this build cannot decode.
pub fn read_snapshot<T: DeserializeOwned>(path: &Path) -> Result<(SnapshotMeta, T)> {
    let (meta, payload) = read_snapshot_payload(path)?;
    if meta.version != FORMAT_VERSION {
        return Err(Error::BadSnapshot {
            path: path.to_owned(),
            problem: format!(
                "format version {}, read here only at {FORMAT_VERSION}",
                meta.version
            ),
        });
    }
    let data = postcard::from_bytes(&payload).map_err(|err| undecodable(path, &err))?;
    Ok((meta, data))
}

/// The error of a snapshot at `path` whose checked payload does not decode.
pub fn undecodable(path: &Path, err: &postcard::Error) -> Error {
    Error::BadSnapshot {
        path: path.to_owned(),
        problem: format!("payload does not decode: {err}"),
    }
}

/// Checks one snapshot's header and payload checksum without decoding it.
///
/// # Errors
/// As [`read_snapshot`].
pub fn verify_snapshot(path: &Path) -> Result<SnapshotMeta> {
    read_snapshot_payload(path).map(|(meta, _)| meta)
}

/// Reads one snapshot's header and payload, checked against its length and
/// checksum but not decoded: for a reader that decodes it itself.
///
/// # Errors
/// As [`read_snapshot`], but for decoding.
pub fn read_snapshot_payload(path: &Path) -> Result<(SnapshotMeta, Vec<u8>)> {
    open_snapshot(path, read_rest)
}

/// [`read_snapshot_payload`], the payload mapped into memory rather than
/// copied: its pages are the page cache's, so a start does not fault in (and
/// zero) the payload's size in fresh memory before it decodes. For the start
/// only: a disk that fails to read a mapped page stops the process (SIGBUS)
/// where a read would have refused the snapshot, which a running daemon
/// must not risk.
///
/// # Errors
/// As [`read_snapshot_payload`].
pub fn map_snapshot_payload(path: &Path) -> Result<(SnapshotMeta, memmap2::Mmap)> {
    open_snapshot(path, |file, _| {
        // SAFETY: the mapping is read-only, and tandem never changes a
        // snapshot file once it has its name (it is written whole under
        // another and renamed; removing it leaves a mapping valid). A file
        // cut short or rewritten in place by another program while mapped,
        // or a disk that fails to read it, faults the process instead.
        let payload = unsafe {
            memmap2::MmapOptions::new()
                .offset(HEADER_BYTES as u64)
                .map(&*file)?
        };
        payload.advise(memmap2::Advice::Sequential).ok();
        Ok(payload)
    })
}

/// A snapshot's header, checked, and its payload as `payload` fetches it,
/// checked against the header.
fn open_snapshot<P: std::ops::Deref<Target = [u8]>>(
    path: &Path,
    payload: impl FnOnce(&mut File, u64) -> std::io::Result<P>,
) -> Result<(SnapshotMeta, P)> {
    let file = File::open(path).map_err(|source| Error::io("open", path, source))?;
    let bad = |problem: String| Error::BadSnapshot {
        path: path.to_owned(),
        problem,
    };
    let header = |header: &[u8; HEADER_BYTES]| {
        let meta = SnapshotMeta::decode(path, header)?;
        Ok((meta, meta.payload_bytes, meta.payload_crc))
    };
    read_framed(file, path, bad, header, payload)
}

/// Reads a file written by [`write_atomically`]: its `N`-byte header, which
/// `decode` checks and reads into what it says and the length and crc32c it
/// promises of the payload, then the payload (by `payload`, given the file
/// after the header and the length promised: [`read_rest`], or a mapping),
/// checked against those. `bad` names damage (a short header, a payload of
/// another length or crc).
///
/// # Errors
/// I/O errors, damage, or what `decode` refuses.
pub(super) fn read_framed<const N: usize, H, P: std::ops::Deref<Target = [u8]>>(
    mut file: File,
    path: &Path,
    bad: impl Fn(String) -> Error,
    decode: impl FnOnce(&[u8; N]) -> Result<(H, u64, u32)>,
    payload: impl FnOnce(&mut File, u64) -> std::io::Result<P>,
) -> Result<(H, P)> {
    let header = read_header::<N>(&mut file, path, &bad)?;
    let (said, len, crc) = decode(&header)?;
    let payload = payload(&mut file, len).map_err(|source| Error::io("read", path, source))?;
    if payload.len() as u64 != len {
        return Err(bad(format!(
            "payload is {} bytes, the header says {len}",
            payload.len()
        )));
    }
    if crc32c::crc32c(&payload) != crc {
        return Err(bad("payload crc mismatch".into()));
    }
    Ok((said, payload))
}

/// The first `N` bytes of `file`, a framed file's header.
pub(super) fn read_header<const N: usize>(
    file: &mut File,
    path: &Path,
    bad: impl Fn(String) -> Error,
) -> Result<[u8; N]> {
    let mut header = [0u8; N];
    file.read_exact(&mut header)
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::UnexpectedEof => bad("shorter than its header".into()),
            _ => Error::io("read", path, err),
        })?;
    Ok(header)
}

/// The rest of `file`, of about `len` bytes: a [`read_framed`] payload.
pub(super) fn read_rest(file: &mut File, len: u64) -> std::io::Result<Vec<u8>> {
    let mut payload = Vec::with_capacity(len.min(1 << 30) as usize);
    file.read_to_end(&mut payload)?;
    Ok(payload)
}

/// Loads the newest snapshot that reads back whole, refusing (and reporting)
/// damaged newer ones. `None` when there is no usable snapshot.
///
/// # Errors
/// I/O errors listing the directory.
pub fn load_newest<T: DeserializeOwned>(paths: &DataPaths) -> Result<Option<Loaded<T>>> {
    let mut refused = Vec::new();
    for (_, path) in list_snapshots(paths)? {
        match read_snapshot(&path) {
            Ok((meta, data)) => {
                return Ok(Some(Loaded {
                    meta,
                    data,
                    path,
                    refused,
                }));
            }
            Err(err) => {
                report_refused(&err);
                refused.push(err);
            }
        }
    }
    report_none_usable(refused.len());
    Ok(None)
}

/// Logs a snapshot refused (`err` says why) before an older one is tried.
pub fn report_refused(err: &Error) {
    tracing::error!(error = %err, "refused a snapshot; trying an older one");
}

/// Logs that no snapshot was usable, if `refused` (> 0) were tried.
pub fn report_none_usable(refused: usize) {
    if refused > 0 {
        tracing::error!(
            refused,
            "no usable snapshot: the next batch run recomputes from the master dataset"
        );
    }
}
