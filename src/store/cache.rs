//! The batch cache: what an incremental batch run starts from, under `cache/`.
//!
//! - `cache/ids.bin`: the distinct ids of the records before a seq (`upto`),
//!   with the counts of those records;
//! - `cache/view-<name>.bin`: per view, its state over the records before
//!   `upto` (retention applied as of the run that wrote it), with the
//!   fingerprint of everything that decides it. The state is in the file
//!   only when the snapshot of the run that wrote it holds other states;
//!   else the file names that snapshot (its epoch, when it was written, and
//!   the length and crc of its payload), which holds the same state, so a
//!   run writes it once.
//!
//! Each file is written whole or not at all (temporary name, fsync, rename,
//! fsync the directory) and checked when read: a 32-byte header (`TNDMCACH`,
//! format version, payload length, payload crc32c, header crc32c), then the
//! payload in postcard. A file that is missing, damaged, of another format or
//! of another fingerprint is not used: the run recomputes what it held from
//! the master dataset. The cache only ever saves work; it is never the truth.

use super::paths::{self, DataPaths};
use super::snapshot::{read_framed, read_header, read_rest, remove_leftovers, write_atomically};
use super::{Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"TNDMCACH";
/// The payload format this build writes and reads.
pub const CACHE_FORMAT_VERSION: u32 = 4;
const HEADER_BYTES: usize = 32;

/// Writes one cache file atomically.
///
/// # Errors
/// I/O or encoding errors, naming the file; the file is then absent or as it was.
pub fn write_cache<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|source| Error::io("create", dir, source))?;
    let header = |payload_bytes: u64, crc: u32| {
        let mut header = [0u8; HEADER_BYTES];
        header[0..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&CACHE_FORMAT_VERSION.to_le_bytes());
        header[12..20].copy_from_slice(&payload_bytes.to_le_bytes());
        header[20..24].copy_from_slice(&crc.to_le_bytes());
        let header_crc = crc32c::crc32c(&header[..28]);
        header[28..32].copy_from_slice(&header_crc.to_le_bytes());
        header.to_vec()
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(paths::TMP_SUFFIX);
    write_atomically(Path::new(&tmp), path, value, header, "cache.mid_write")
}

/// Reads one cache file: `Ok(None)` when it does not exist.
///
/// # Errors
/// I/O errors, and [`Error::BadCache`] for a file that is damaged, of
/// another format, or does not decode.
pub fn read_cache<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let Some(payload) = read_checked(path)? else {
        return Ok(None);
    };
    postcard::from_bytes(&payload)
        .map(Some)
        .map_err(|err| bad_cache(path)(format!("payload does not decode: {err}")))
}

/// What `tandem inspect` shows of a cache file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheInfo {
    /// Payload size in bytes.
    pub payload_bytes: u64,
    /// The records it covers: every seq below this.
    pub upto: u64,
}

/// Checks one cache file's header and payload checksum, and reads the seq
/// it covers up to (every payload starts with it).
///
/// # Errors
/// As [`read_cache`]; a file that does not exist is [`Error::BadCache`] too.
pub fn verify_cache(path: &Path) -> Result<CacheInfo> {
    verify_cache_as::<()>(path).map(|(info, ())| info)
}

/// As [`verify_cache`], in the same read, and the start of the payload
/// decoded as `T` (a type whose fields are the first of what the file holds).
///
/// # Errors
/// As [`verify_cache`]; also a payload whose start is not a `T`.
pub fn verify_cache_as<T: DeserializeOwned>(path: &Path) -> Result<(CacheInfo, T)> {
    let bad = bad_cache(path);
    let payload = read_checked(path)?.ok_or_else(|| bad("missing".to_owned()))?;
    let (upto, _) = postcard::take_from_bytes::<u64>(&payload)
        .map_err(|_| bad("payload does not start with the records it covers".to_owned()))?;
    let head = postcard::from_bytes(&payload)
        .map_err(|err| bad(format!("payload does not decode: {err}")))?;
    let info = CacheInfo {
        payload_bytes: payload.len() as u64,
        upto,
    };
    Ok((info, head))
}

/// The payload of a cache file, its header and checksum checked; `None` when
/// the file does not exist.
fn read_checked(path: &Path) -> Result<Option<Vec<u8>>> {
    let bad = bad_cache(path);
    let Some(file) = open_if_there(path)? else {
        return Ok(None);
    };
    let header = |header: &[u8; HEADER_BYTES]| check_header(header, &bad);
    read_framed(file, path, bad, header, read_rest).map(|((), payload)| Some(payload))
}

/// An [`Error::BadCache`] of `path`, saying `problem`.
fn bad_cache(path: &Path) -> impl Fn(String) -> Error + Copy + '_ {
    move |problem| Error::BadCache {
        path: path.to_owned(),
        problem,
    }
}

/// `path` opened for reading; `None` when it does not exist.
fn open_if_there(path: &Path) -> Result<Option<fs::File>> {
    match fs::File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::io("open", path, source)),
    }
}

/// Checks a cache file's header: answers the payload's length and crc.
fn check_header(
    header: &[u8; HEADER_BYTES],
    bad: &impl Fn(String) -> Error,
) -> Result<((), u64, u32)> {
    let u32_at =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    if &header[0..8] != MAGIC {
        return Err(bad("not a tandem cache file (bad magic)".into()));
    }
    if crc32c::crc32c(&header[..28]) != u32_at(28) {
        return Err(bad("header crc mismatch".into()));
    }
    let version = u32_at(8);
    if version != CACHE_FORMAT_VERSION {
        return Err(bad(format!(
            "format version {version}, this build reads version {CACHE_FORMAT_VERSION}"
        )));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[12..20]);
    Ok(((), u64::from_le_bytes(len), u32_at(20)))
}

/// How much of a payload [`read_cache_head`] reads first.
const HEAD_BYTES: u64 = 4096;

/// The start of a cache file's payload decoded as `T` (a type whose fields
/// are the first of what the file holds), reading the first [`HEAD_BYTES`]
/// of it, and the rest only if `T` is longer (a long fingerprint): its header
/// is checked, its payload's crc is not, so what it answers is a hint (which
/// snapshot a view's file names), never a state. `Ok(None)` when the file
/// does not exist.
///
/// # Errors
/// I/O errors, a damaged header, another format, or a payload that does not
/// start with a `T`.
pub fn read_cache_head<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let bad = bad_cache(path);
    let Some(mut file) = open_if_there(path)? else {
        return Ok(None);
    };
    let io = |source| Error::io("read", path, source);
    let header = read_header::<HEADER_BYTES>(&mut file, path, bad)?;
    let ((), len, _) = check_header(&header, &bad)?;
    let mut payload = Vec::new();
    (&mut file)
        .take(HEAD_BYTES.min(len))
        .read_to_end(&mut payload)
        .map_err(io)?;
    if let Ok((head, _)) = postcard::take_from_bytes(&payload) {
        return Ok(Some(head));
    }
    file.read_to_end(&mut payload).map_err(io)?;
    postcard::take_from_bytes(&payload)
        .map(|(head, _)| Some(head))
        .map_err(|err| bad(format!("payload does not start as it should: {err}")))
}

/// The files under `cache/`, by name (temporary files left out).
///
/// # Errors
/// I/O errors listing the directory.
pub fn list_cache(paths: &DataPaths) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = super::list_dir(&paths.cache_dir())?
        .into_iter()
        .filter(|(name, _)| !paths::is_tmp_name(name))
        .map(|(_, path)| path)
        .collect();
    found.sort();
    Ok(found)
}

/// Removes the files under `cache/` that are not in `keep` (a view no longer
/// configured), and temporary files a crash left.
///
/// # Errors
/// I/O errors listing or removing, naming the file.
pub fn remove_stale_cache(paths: &DataPaths, keep: &[PathBuf]) -> Result<()> {
    remove_leftovers(&paths.cache_dir());
    for path in list_cache(paths)? {
        if !keep.contains(&path) {
            fs::remove_file(&path).map_err(|source| Error::io("remove", &path, source))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file's first fields, as a reader of its head declares them.
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Head {
        upto: u64,
        name: String,
    }

    #[test]
    fn a_head_is_read_from_the_start_of_a_payload_of_any_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("view-x.bin");
        assert!(read_cache_head::<Head>(&path).expect("read").is_none());
        // Far longer than the part of it that is read.
        let tail = vec![7u64; 100_000];
        write_cache(&path, &(42u64, "x".to_owned(), &tail)).expect("write");
        let head = read_cache_head::<Head>(&path).expect("read");
        assert_eq!(
            head,
            Some(Head {
                upto: 42,
                name: "x".to_owned()
            })
        );
        let (info, head) = verify_cache_as::<Head>(&path).expect("verify");
        assert_eq!((info.upto, head.name.as_str()), (42, "x"));

        // A damaged header is refused; the payload's crc is not what a head read checks.
        let mut bytes = fs::read(&path).expect("read");
        bytes[9] ^= 1;
        fs::write(&path, &bytes).expect("write");
        let refused = read_cache_head::<Head>(&path).expect_err("a damaged header");
        assert!(refused.to_string().contains("header crc"), "{refused}");
        bytes[9] ^= 1;
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).expect("write");
        assert!(read_cache_head::<Head>(&path).expect("read").is_some());
        assert!(verify_cache(&path).is_err(), "a whole read checks the crc");

        // A head longer than the part read first is read whole all the same.
        let long = "n".repeat(3 * HEAD_BYTES as usize);
        write_cache(&path, &(7u64, &long, &tail)).expect("write");
        let head = read_cache_head::<Head>(&path)
            .expect("read")
            .expect("a head");
        assert_eq!((head.upto, head.name.len()), (7, long.len()));
    }
}
