//! Which records of the master dataset hold a later copy of an id, found
//! in memory that does not grow with the log.
//!
//! A batch run counts the first copy of an id in log order and no other. It
//! finds the later copies before it applies anything, in a pass over the
//! records' headers: each record's (id hash, seq) is written to one of
//! `P` partitions by the top bits of the hash, `P` the power of two that
//! keeps a partition within a fixed number of entries. Each partition is then
//! sorted alone: within an id, the lowest seq is the first copy (unless an
//! id before the pass holds it), every other seq a later one. Partitions are
//! files in `cache/`, unlinked as soon as they are open, so that nothing
//! is left behind whatever happens to the run; a pass that fits one
//! partition stays in memory.
//!
//! Memory: one partition (16 bytes an entry, at most [`PARTITION_ENTRIES`]
//! of them), a write buffer per partition, and the answer: the later
//! copies' seqs (8 bytes each). The ids first seen go, in order, to a level
//! file (`store::levels`), whose filters alone stay in memory.

use super::ids::IdIndex;
use super::levels::{Level, LevelWriter};
use super::paths::TMP_SUFFIX;
use super::segment::{LogPosition, scan_log_from};
use super::{DataPaths, Error, Result};
use crate::event::Seq;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// The most entries a partition holds in a batch run (64 MiB of them).
pub const PARTITION_ENTRIES: u64 = 4 << 20;
/// The write buffer of each partition file.
const BUFFER_BYTES: usize = 64 << 10;
const ENTRY_BYTES: usize = 16;

/// The later copies among the records of a stretch of the log.
#[derive(Debug, Default)]
pub struct Copies {
    /// The seqs of the records that hold a copy of an id that an earlier
    /// record holds, ascending.
    pub later: Vec<u64>,
    /// The level of the ids whose first copy is in the stretch and before
    /// `upto` (`None`: there are none).
    pub first_ids: Option<Level>,
}

/// The later copies among the records from `from` to `end`, where `earlier`
/// holds the ids of the records before `from`, and the level of the ids
/// first seen from `from` up to `upto` (written under `paths`). `records` (how many records the
/// stretch holds, at most) sizes the partitions, each kept within
/// `partition_entries`. Records without an id (0) are never copies.
///
/// # Errors
/// The master dataset cannot be read, or a partition file written or read
/// (each error names its file).
pub fn find_copies(
    paths: &DataPaths,
    from: Seq,
    end: LogPosition,
    upto: Seq,
    earlier: &IdIndex,
    records: u64,
    partition_entries: u64,
) -> Result<Copies> {
    let parts = records
        .div_ceil(partition_entries.max(1))
        .next_power_of_two();
    let mut spill = Spill::new(paths, parts)?;
    let mut failed = None;
    // Entries before `upto`: at least the ids first seen there.
    let mut before_upto = 0usize;
    scan_log_from(paths, from, end, |header, _| {
        if header.id_hash == 0 {
            return ControlFlow::Continue(());
        }
        before_upto += usize::from(header.seq < upto);
        match spill.push(header.id_hash, header.seq.0) {
            Ok(()) => ControlFlow::Continue(()),
            Err(err) => {
                failed = Some(err);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(err) = failed {
        return Err(err);
    }
    let mut later = Vec::new();
    // Partitions are ranges of hash in order: their first ids come out sorted.
    let mut first_ids = match before_upto {
        0 => None,
        n => Some(LevelWriter::create(paths, from, upto, n as u64)?),
    };
    let mut entries = Vec::new();
    for part in 0..spill.parts() {
        spill.read(part, &mut entries)?;
        sift(&mut entries, earlier, upto, &mut later, first_ids.as_mut())?;
    }
    later.sort_unstable();
    let first_ids = match first_ids {
        Some(writer) => writer.finish()?,
        None => None,
    };
    Ok(Copies { later, first_ids })
}

/// Sorts one partition's (id, seq) entries: the seqs of later copies go to
/// `later`, the ids first seen before `upto` to `first_ids`.
fn sift(
    entries: &mut [(u64, u64)],
    earlier: &IdIndex,
    upto: Seq,
    later: &mut Vec<u64>,
    mut first_ids: Option<&mut LevelWriter>,
) -> Result<()> {
    entries.sort_unstable();
    let mut previous = None;
    for &(id, seq) in entries.iter() {
        if previous == Some(id) {
            later.push(seq);
            continue;
        }
        previous = Some(id);
        if earlier.contains(id)? {
            later.push(seq);
        } else if seq < upto.0
            && let Some(first_ids) = first_ids.as_deref_mut()
        {
            first_ids.push(id)?;
        }
    }
    Ok(())
}

/// The partitions of one pass: in memory when there is one, else files.
enum Spill {
    Memory(Vec<(u64, u64)>),
    Files {
        /// Bits of the hash below the partition's number.
        shift: u32,
        files: Vec<(PathBuf, BufWriter<File>)>,
    },
}

impl Spill {
    fn new(paths: &DataPaths, parts: u64) -> Result<Spill> {
        if parts <= 1 {
            return Ok(Spill::Memory(Vec::new()));
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = paths.cache_dir();
        fs::create_dir_all(&dir).map_err(|source| Error::io("create", &dir, source))?;
        let files = (0..parts)
            .map(|part| {
                let run = NEXT.fetch_add(1, Ordering::Relaxed);
                let path = dir.join(format!(
                    "copies-{}-{run}-{part}{TMP_SUFFIX}",
                    std::process::id()
                ));
                let file = File::options()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|source| Error::io("create", &path, source))?;
                // Unlinked at once: the space is freed when the pass ends, however it ends.
                fs::remove_file(&path).map_err(|source| Error::io("unlink", &path, source))?;
                Ok((path, BufWriter::with_capacity(BUFFER_BYTES, file)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Spill::Files {
            shift: 64 - parts.trailing_zeros(),
            files,
        })
    }

    fn parts(&self) -> u64 {
        match self {
            Spill::Memory(_) => 1,
            Spill::Files { files, .. } => files.len() as u64,
        }
    }

    fn push(&mut self, id: u64, seq: u64) -> Result<()> {
        match self {
            Spill::Memory(entries) => {
                entries.push((id, seq));
                Ok(())
            }
            Spill::Files { shift, files } => {
                let (path, file) = &mut files[(id >> *shift) as usize];
                let mut entry = [0u8; ENTRY_BYTES];
                entry[..8].copy_from_slice(&id.to_le_bytes());
                entry[8..].copy_from_slice(&seq.to_le_bytes());
                file.write_all(&entry)
                    .map_err(|source| Error::io("write", path, source))
            }
        }
    }

    /// Partition `part`'s entries into `entries` (its old contents dropped).
    fn read(&mut self, part: u64, entries: &mut Vec<(u64, u64)>) -> Result<()> {
        match self {
            Spill::Memory(all) => {
                *entries = std::mem::take(all);
                Ok(())
            }
            Spill::Files { files, .. } => {
                let (path, writer) = &mut files[part as usize];
                let path: &PathBuf = path;
                let io = |op| move |source| Error::io(op, path, source);
                writer.flush().map_err(io("write"))?;
                let file = writer.get_mut();
                let bytes = file.stream_position().map_err(io("seek"))?;
                file.seek(SeekFrom::Start(0)).map_err(io("seek"))?;
                entries.clear();
                entries.reserve(bytes as usize / ENTRY_BYTES);
                let mut reader = BufReader::with_capacity(BUFFER_BYTES, file);
                let mut entry = [0u8; ENTRY_BYTES];
                for _ in 0..bytes as usize / ENTRY_BYTES {
                    reader.read_exact(&mut entry).map_err(io("read"))?;
                    let (id, seq) = entry.split_at(8);
                    entries.push((le_u64(id), le_u64(seq)));
                }
                // The partition is read: its space goes back now, not at the pass's end.
                reader.into_inner().set_len(0).map_err(io("truncate"))?;
                Ok(())
            }
        }
    }
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Epoch;
    use crate::store::{MasterLog, NewRecord};
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// The first copy of each id in log order, one record at a time: the
    /// later copies' seqs, and the ids first seen before `upto`, sorted.
    fn oracle(ids: &[u64], from: usize, upto: usize) -> (Vec<u64>, Vec<u64>) {
        let mut seen: HashSet<u64> = ids[..from].iter().copied().filter(|id| *id != 0).collect();
        let (mut later, mut first_ids) = (Vec::new(), Vec::new());
        for (seq, id) in ids.iter().enumerate().skip(from) {
            if *id == 0 {
                continue;
            }
            if !seen.insert(*id) {
                later.push(seq as u64);
            } else if seq < upto {
                first_ids.push(*id);
            }
        }
        first_ids.sort_unstable();
        (later, first_ids)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever the number of partitions, the pass finds what a set of
        /// every id seen finds, and leaves no file behind.
        #[test]
        fn the_partitioned_pass_finds_the_first_copies(
            picks in prop::collection::vec(0u64..40, 1..300),
            from in 0usize..300,
            upto in 0usize..300,
            partition_entries in 1u64..64,
        ) {
            // Spread over the whole hash range, so that every partition gets some; 0 is no id.
            let ids: Vec<u64> = picks
                .iter()
                .map(|pick| if *pick == 0 { 0 } else { pick.wrapping_mul(0x9E37_79B9_7F4A_7C15) })
                .collect();
            let from = from.min(ids.len());
            let upto = upto.min(ids.len());
            let dir = tempfile::tempdir().expect("tempdir");
            let paths = DataPaths::new(dir.path());
            let (mut log, _) = MasterLog::open(&paths, 4096).expect("log");
            let appended = log
                .append(ids.iter().map(|id| NewRecord {
                    epoch: Epoch(1),
                    ingest_ms: 0,
                    event_ms: 0,
                    id_hash: *id,
                    raw: b"{}",
                }))
                .expect("append");
            let earlier = IdIndex::new(&paths, Seq(from as u64), ids[..from].to_vec()).expect("earlier");
            let found = find_copies(
                &paths,
                Seq(from as u64),
                appended.end,
                Seq(upto as u64),
                &earlier,
                (ids.len() - from) as u64,
                partition_entries,
            )
            .expect("pass");
            let first_ids = match &found.first_ids {
                Some(level) => level.ids().collect::<Result<Vec<u64>>>().expect("ids"),
                None => Vec::new(),
            };
            prop_assert_eq!((found.later, first_ids), oracle(&ids, from, upto));
            let left: Vec<_> = [paths.cache_dir(), paths.ids_dir()]
                .iter()
                .flat_map(|dir| fs::read_dir(dir).into_iter().flatten().flatten())
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_none_or(|extension| extension != "ids"))
                .collect();
            // No empty level: a stretch without a new id writes none.
            prop_assert!(
                found.first_ids.as_ref().is_none_or(|level| !level.is_empty()),
                "an empty level was written"
            );
            prop_assert!(left.is_empty(), "left behind: {:?}", left);
        }
    }
}
