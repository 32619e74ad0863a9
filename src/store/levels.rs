//! Id level files: `ids/<from>-<upto>.ids`, the distinct ids first seen in
//! the records from seq `from` to `upto`, sorted, on disk, behind filters
//! held in memory.
//!
//! A file is a 64-byte header (`TNDMIDS\0`, format version, section bits,
//! count, trailer length, the ids' crc32c, the trailer's crc32c, the
//! header's own crc32c), the ids as little-endian `u64`s, then a trailer:
//! one binary fuse filter per section (the ids whose top `bits` bits are the
//! section's number, [`SECTION_IDS`] of them on average): a byte (0: the
//! section is empty, 1: a filter follows, 2: no filter, every lookup
//! searches), then the filter's seed, its three segment sizes and its
//! fingerprints' length in little-endian, then the fingerprints. The
//! header also holds the seqs the file covers, checked against its name. It is written once, under a temporary name, fsynced and renamed;
//! opening it reads it whole once, checking both checksums and that the ids
//! ascend, and keeps in memory only the filters (1.13 bytes an id), the
//! first id of each 4 KiB page (1/64 byte an id) and each page's crc32c
//! (1/128 byte an id). A lookup the filter does not rule out reads one page
//! with `pread` and checks its crc: a file damaged while open is refused by
//! name, never read wrongly.
//!
//! Memory to write one: the ids of two sections (8 bytes each: the one being
//! written, and the one whose filter is built meanwhile) and that filter's
//! working memory; then, as for an open level, the filters, fences and page
//! crcs (1.15 bytes an id).

use super::paths::TMP_SUFFIX;
use super::{DataPaths, Error, Result, sync_dir};
use crate::event::Seq;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use xorf::{BinaryFuse8, Descriptor, Filter};

const MAGIC: &[u8; 8] = b"TNDMIDS\0";
/// The level file format this build writes and reads.
pub const IDS_FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: u64 = 64;
/// Ids per page: a lookup reads one page.
const PAGE_IDS: usize = 512;
/// The ids a section holds on average, at most: what writing a file holds.
pub const SECTION_IDS: u64 = 1 << 20;
/// The most section bits a file may say it has (a damaged header allocates no more).
const MAX_BITS: u32 = 24;
const SUFFIX: &str = ".ids";

/// The file name of the level of the ids first seen in `[from, upto)`.
pub fn level_name(from: Seq, upto: Seq) -> String {
    format!("{:020}-{:020}{SUFFIX}", from.0, upto.0)
}

/// The seqs a level file name covers, or `None` for any other name.
fn parse_level_name(name: &str) -> Option<(Seq, Seq)> {
    let (from, upto) = name.strip_suffix(SUFFIX)?.split_once('-')?;
    Some((Seq(from.parse().ok()?), Seq(upto.parse().ok()?)))
}

/// One level file, open: its filters and page fences in memory, its ids on disk.
pub struct Level {
    path: PathBuf,
    file: File,
    from: Seq,
    upto: Seq,
    count: u64,
    bits: u32,
    /// The first id of each page.
    fences: Vec<u64>,
    /// The crc32c of each page's bytes.
    page_crcs: Vec<u32>,
    /// One per section.
    filters: Vec<SectionFilter>,
}

/// What rules ids out of a section before a page is read.
#[derive(Debug)]
enum SectionFilter {
    /// The section holds no id.
    Empty,
    /// Its filter.
    Filter(BinaryFuse8),
    /// None could be built: the search alone is still exact.
    Unfiltered,
}

impl std::fmt::Debug for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Level")
            .field("path", &self.path)
            .field("count", &self.count)
            .finish()
    }
}

fn section_of(id: u64, bits: u32) -> usize {
    if bits == 0 {
        0
    } else {
        (id >> (64 - bits)) as usize
    }
}

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

impl Level {
    /// The file's name under `ids/`.
    pub fn name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default()
    }

    /// The records whose first ids it holds: from this seq...
    pub fn from(&self) -> Seq {
        self.from
    }

    /// ...up to (not including) this one.
    pub fn upto(&self) -> Seq {
        self.upto
    }

    /// Number of ids.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether it holds no id.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes held in memory (filters and fences).
    pub fn memory_bytes(&self) -> usize {
        self.fences.len() * 12
            + self
                .filters
                .iter()
                .map(|filter| match filter {
                    SectionFilter::Filter(filter) => filter.fingerprints.len(),
                    _ => 0,
                })
                .sum::<usize>()
    }

    /// Opens the level file `name` under `ids/`, checking it whole.
    ///
    /// # Errors
    /// [`Error::BadIds`] for a file that is missing, damaged or of another
    /// format; I/O errors naming it.
    pub fn open(paths: &DataPaths, name: &str) -> Result<Level> {
        let path = paths.ids_dir().join(name);
        let bad = |problem: String| Error::BadIds {
            path: path.clone(),
            problem,
        };
        let (from, upto) =
            parse_level_name(name).ok_or_else(|| bad("not an id level file name".into()))?;
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(bad("missing".into()));
            }
            Err(source) => return Err(Error::io("open", &path, source)),
        };
        let at = path.as_path();
        let io = |op| move |source| Error::io(op, at, source);
        let mut header = [0u8; HEADER_BYTES as usize];
        file.read_exact(&mut header)
            .map_err(|err| match err.kind() {
                std::io::ErrorKind::UnexpectedEof => bad("shorter than its header".into()),
                _ => Error::io("read", &path, err),
            })?;
        if &header[0..8] != MAGIC {
            return Err(bad("not a tandem id level file (bad magic)".into()));
        }
        if crc32c::crc32c(&header[..60]) != le_u32(&header[60..]) {
            return Err(bad("header crc mismatch".into()));
        }
        let version = le_u32(&header[8..]);
        if version != IDS_FORMAT_VERSION {
            return Err(bad(format!(
                "format version {version}, this build reads version {IDS_FORMAT_VERSION}"
            )));
        }
        let bits = le_u32(&header[12..]);
        if bits > MAX_BITS {
            return Err(bad(format!("{bits} section bits, at most {MAX_BITS}")));
        }
        let count = le_u64(&header[16..]);
        let trailer_len = le_u64(&header[24..]);
        let said = (Seq(le_u64(&header[40..])), Seq(le_u64(&header[48..])));
        if said != (from, upto) {
            return Err(bad(format!(
                "holds the ids of seqs {} to {}, not those its name says",
                said.0, said.1
            )));
        }
        let (ids_crc, trailer_crc) = (le_u32(&header[32..]), le_u32(&header[36..]));
        let file_len = file.metadata().map_err(io("stat"))?.len();
        let expected = count
            .checked_mul(8)
            .and_then(|ids| ids.checked_add(HEADER_BYTES + trailer_len));
        if expected != Some(file_len) {
            return Err(bad(format!(
                "{file_len} bytes, the header says {count} ids and a trailer of {trailer_len} bytes"
            )));
        }
        // The ids, read once: checked, and their page fences kept.
        let pages = (count as usize).div_ceil(PAGE_IDS);
        let mut fences = Vec::with_capacity(pages);
        let mut page_crcs = Vec::with_capacity(pages);
        let mut crc = 0u32;
        let mut buffer = vec![0u8; 1 << 20];
        let mut previous: Option<u64> = None;
        let mut read = 0u64;
        while read < count {
            let ids = ((count - read) as usize).min(buffer.len() / 8);
            let chunk = &mut buffer[..ids * 8];
            file.read_exact(chunk).map_err(io("read"))?;
            crc = crc32c::crc32c_append(crc, chunk);
            // Chunks start on page boundaries: a page is whole in one.
            page_crcs.extend(chunk.chunks(PAGE_IDS * 8).map(crc32c::crc32c));
            for (i, bytes) in chunk.chunks_exact(8).enumerate() {
                let id = le_u64(bytes);
                if previous.is_some_and(|previous| previous >= id) {
                    return Err(bad(format!("ids do not ascend at id {}", read + i as u64)));
                }
                previous = Some(id);
                if (read as usize + i).is_multiple_of(PAGE_IDS) {
                    fences.push(id);
                }
            }
            read += ids as u64;
        }
        if crc != ids_crc {
            return Err(bad("ids crc mismatch".into()));
        }
        let mut trailer = Vec::with_capacity(trailer_len as usize);
        file.read_to_end(&mut trailer).map_err(io("read"))?;
        if crc32c::crc32c(&trailer) != trailer_crc {
            return Err(bad("trailer crc mismatch".into()));
        }
        let filters = decode_filters(&trailer, 1 << bits).map_err(bad)?;
        Ok(Level {
            path,
            file,
            from,
            upto,
            count,
            bits,
            fences,
            page_crcs,
            filters,
        })
    }

    /// Whether the level holds `id`.
    ///
    /// # Errors
    /// The page cannot be read.
    pub fn contains(&self, id: u64) -> Result<bool> {
        if self.count == 0 {
            return Ok(false);
        }
        match &self.filters[section_of(id, self.bits)] {
            SectionFilter::Empty => return Ok(false),
            SectionFilter::Filter(filter) if !filter.contains(&id) => return Ok(false),
            _ => {}
        }
        let page = self.fences.partition_point(|fence| *fence <= id);
        if page == 0 {
            return Ok(false);
        }
        let mut ids = [0u64; PAGE_IDS];
        let got = self.read_page(page - 1, &mut ids)?;
        Ok(ids[..got].binary_search(&id).is_ok())
    }

    /// Reads page `page` into `ids`; returns how many ids it holds.
    fn read_page(&self, page: usize, ids: &mut [u64; PAGE_IDS]) -> Result<usize> {
        let first = (page * PAGE_IDS) as u64;
        let n = (self.count - first).min(PAGE_IDS as u64) as usize;
        let mut bytes = [0u8; PAGE_IDS * 8];
        let bytes = &mut bytes[..n * 8];
        self.file
            .read_exact_at(bytes, HEADER_BYTES + first * 8)
            .map_err(|source| Error::io("read", &self.path, source))?;
        if self.page_crcs.get(page) != Some(&crc32c::crc32c(bytes)) {
            return Err(Error::BadIds {
                path: self.path.clone(),
                problem: format!("page {page} crc mismatch"),
            });
        }
        for (id, bytes) in ids.iter_mut().zip(bytes.chunks_exact(8)) {
            *id = le_u64(bytes);
        }
        Ok(n)
    }

    /// Its ids, ascending, read a page at a time.
    pub fn ids(&self) -> LevelIds<'_> {
        LevelIds {
            level: self,
            page: 0,
            ids: [0; PAGE_IDS],
            at: 0,
            len: 0,
        }
    }
}

/// A level's ids in order ([`Level::ids`]).
pub struct LevelIds<'a> {
    level: &'a Level,
    page: usize,
    ids: [u64; PAGE_IDS],
    at: usize,
    len: usize,
}

impl Iterator for LevelIds<'_> {
    type Item = Result<u64>;

    fn next(&mut self) -> Option<Result<u64>> {
        if self.at == self.len {
            if (self.page * PAGE_IDS) as u64 >= self.level.count {
                return None;
            }
            match self.level.read_page(self.page, &mut self.ids) {
                Ok(len) => (self.len, self.at) = (len, 0),
                Err(err) => {
                    self.page = usize::MAX / PAGE_IDS;
                    return Some(Err(err));
                }
            }
            self.page += 1;
        }
        self.at += 1;
        Some(Ok(self.ids[self.at - 1]))
    }
}

/// Writes one level file from ids pushed in ascending order.
pub struct LevelWriter {
    tmp: PathBuf,
    path: PathBuf,
    out: BufWriter<File>,
    from: Seq,
    upto: Seq,
    bits: u32,
    count: u64,
    crc: u32,
    last: Option<u64>,
    fences: Vec<u64>,
    page_crcs: Vec<u32>,
    /// The bytes of the page being written.
    page: Vec<u8>,
    filters: Vec<SectionFilter>,
    /// The filter of the section before, built on a thread of its own while
    /// the next section is written.
    building: Option<std::thread::JoinHandle<SectionFilter>>,
    /// The ids of the section being written.
    section: Vec<u64>,
}

impl LevelWriter {
    /// Starts the level of the ids first seen in `[from, upto)`, of at most
    /// `at_most` ids (which sizes its sections).
    ///
    /// # Errors
    /// The file cannot be created.
    pub fn create(paths: &DataPaths, from: Seq, upto: Seq, at_most: u64) -> Result<LevelWriter> {
        let dir = paths.ids_dir();
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|source| Error::io("create", &dir, source))?;
            // The directory itself lasts once its parent is synced.
            sync_dir(paths.root())?;
        }
        let path = dir.join(level_name(from, upto));
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(TMP_SUFFIX);
        let tmp = PathBuf::from(tmp);
        // Read and write: the level it becomes reads it through the same file.
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|source| Error::io("create", &tmp, source))?;
        file.seek(SeekFrom::Start(HEADER_BYTES))
            .map_err(|source| Error::io("seek", &tmp, source))?;
        let bits = at_most
            .div_ceil(SECTION_IDS)
            .max(1)
            .next_power_of_two()
            .trailing_zeros()
            .min(MAX_BITS);
        Ok(LevelWriter {
            tmp,
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            from,
            upto,
            bits,
            count: 0,
            crc: 0,
            last: None,
            fences: Vec::new(),
            page_crcs: Vec::new(),
            page: Vec::with_capacity(PAGE_IDS * 8),
            filters: Vec::with_capacity(1 << bits),
            building: None,
            section: Vec::new(),
        })
    }

    /// Appends `id`, greater than every id before it.
    ///
    /// # Errors
    /// The write fails; an id that does not ascend is refused.
    pub fn push(&mut self, id: u64) -> Result<()> {
        if self.last.is_some_and(|last| last >= id) {
            return Err(Error::BadIds {
                path: self.path.clone(),
                problem: format!("ids written out of order at id {}", self.count),
            });
        }
        self.last = Some(id);
        let section = section_of(id, self.bits);
        while self.ended() < section {
            self.end_section();
        }
        if self.count.is_multiple_of(PAGE_IDS as u64) {
            self.end_page()?;
            self.fences.push(id);
        }
        self.page.extend_from_slice(&id.to_le_bytes());
        self.section.push(id);
        self.count += 1;
        Ok(())
    }

    /// Writes the page being written, and keeps its crc.
    fn end_page(&mut self) -> Result<()> {
        if self.page.is_empty() {
            return Ok(());
        }
        self.crc = crc32c::crc32c_append(self.crc, &self.page);
        self.page_crcs.push(crc32c::crc32c(&self.page));
        self.out
            .write_all(&self.page)
            .map_err(|source| Error::io("write", &self.tmp, source))?;
        self.page.clear();
        Ok(())
    }

    /// Ends the current section: its filter is built on a thread of its own
    /// (the section before's is taken first, so at most one is built at a time).
    fn end_section(&mut self) {
        self.take_built();
        if self.section.is_empty() {
            self.filters.push(SectionFilter::Empty);
            return;
        }
        let capacity = self.section.len();
        let ids = std::mem::replace(&mut self.section, Vec::with_capacity(capacity));
        // Unique keys, for which construction does not fail; were it to (or
        // the thread not start), the search alone is still exact.
        let build = move || {
            BinaryFuse8::try_from(ids.as_slice())
                .map_or(SectionFilter::Unfiltered, SectionFilter::Filter)
        };
        match std::thread::Builder::new()
            .name("tandem-id-filter".into())
            .spawn(build)
        {
            Ok(building) => self.building = Some(building),
            Err(_) => self.filters.push(SectionFilter::Unfiltered),
        }
    }

    /// Sections ended: those in `filters` and the one in `building`.
    fn ended(&self) -> usize {
        self.filters.len() + usize::from(self.building.is_some())
    }

    /// The filter being built, once it is.
    fn take_built(&mut self) {
        if let Some(building) = self.building.take() {
            let built = building.join().unwrap_or(SectionFilter::Unfiltered);
            self.filters.push(built);
        }
    }

    /// Writes the filters and the header, fsyncs and renames the file into
    /// place: the level, open; `None` (and no file) when no id was pushed.
    ///
    /// # Errors
    /// I/O errors naming the file (which is then removed).
    pub fn finish(mut self) -> Result<Option<Level>> {
        if self.count == 0 {
            fs::remove_file(&self.tmp).map_err(|source| Error::io("remove", &self.tmp, source))?;
            return Ok(None);
        }
        while self.ended() < 1 << self.bits {
            self.end_section();
        }
        self.take_built();
        self.section = Vec::new();
        let written = self.end_page().and_then(|()| self.write_rest());
        if written.is_err() {
            fs::remove_file(&self.tmp).ok();
        }
        let file = written?;
        crate::faults::crash_point("ids.before_rename");
        fs::rename(&self.tmp, &self.path)
            .map_err(|source| Error::io("rename", &self.tmp, source))?;
        sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
        Ok(Some(Level {
            path: self.path,
            file,
            from: self.from,
            upto: self.upto,
            count: self.count,
            bits: self.bits,
            fences: self.fences,
            page_crcs: self.page_crcs,
            filters: self.filters,
        }))
    }

    fn write_rest(&mut self) -> Result<File> {
        let tmp = &self.tmp;
        let io = |op| move |source| Error::io(op, tmp, source);
        let trailer = encode_filters(&self.filters);
        self.out.write_all(&trailer).map_err(io("write"))?;
        self.out.flush().map_err(io("write"))?;
        let mut header = [0u8; HEADER_BYTES as usize];
        header[0..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&IDS_FORMAT_VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&self.bits.to_le_bytes());
        header[16..24].copy_from_slice(&self.count.to_le_bytes());
        header[24..32].copy_from_slice(&(trailer.len() as u64).to_le_bytes());
        header[32..36].copy_from_slice(&self.crc.to_le_bytes());
        header[36..40].copy_from_slice(&crc32c::crc32c(&trailer).to_le_bytes());
        header[40..48].copy_from_slice(&self.from.0.to_le_bytes());
        header[48..56].copy_from_slice(&self.upto.0.to_le_bytes());
        let header_crc = crc32c::crc32c(&header[..60]);
        header[60..64].copy_from_slice(&header_crc.to_le_bytes());
        let file = self.out.get_mut();
        file.write_all_at(&header, 0).map_err(io("write"))?;
        file.sync_all().map_err(io("fsync"))?;
        file.try_clone().map_err(io("open"))
    }
}

const FILTER_HEAD_BYTES: usize = 1 + 8 + 4 * 3 + 8;

/// The byte in front of each section's entry in the trailer.
const SECTION_EMPTY: u8 = 0;
const SECTION_FILTER: u8 = 1;
const SECTION_UNFILTERED: u8 = 2;

/// The trailer of a level file: its sections' filters.
fn encode_filters(filters: &[SectionFilter]) -> Vec<u8> {
    let mut out = Vec::new();
    for filter in filters {
        let filter = match filter {
            SectionFilter::Empty => {
                out.push(SECTION_EMPTY);
                continue;
            }
            SectionFilter::Unfiltered => {
                out.push(SECTION_UNFILTERED);
                continue;
            }
            SectionFilter::Filter(filter) => filter,
        };
        let descriptor = &filter.descriptor;
        out.push(SECTION_FILTER);
        out.extend_from_slice(&descriptor.seed.to_le_bytes());
        out.extend_from_slice(&descriptor.segment_length.to_le_bytes());
        out.extend_from_slice(&descriptor.segment_length_mask.to_le_bytes());
        out.extend_from_slice(&descriptor.segment_count_length.to_le_bytes());
        out.extend_from_slice(&(filter.fingerprints.len() as u64).to_le_bytes());
        out.extend_from_slice(&filter.fingerprints);
    }
    out
}

/// [`encode_filters`] read back: `sections` filters, each one whose
/// lookups stay within its fingerprints.
fn decode_filters(
    mut bytes: &[u8],
    sections: usize,
) -> std::result::Result<Vec<SectionFilter>, String> {
    // At least a byte a section: a damaged count reserves no more than that.
    let mut filters = Vec::with_capacity(sections.min(bytes.len()));
    for section in 0..sections {
        let short = || format!("the trailer ends in section {section}'s filter");
        let (&flag, rest) = bytes.split_first().ok_or_else(short)?;
        let plain = match flag {
            SECTION_EMPTY => Some(SectionFilter::Empty),
            SECTION_UNFILTERED => Some(SectionFilter::Unfiltered),
            _ => None,
        };
        if let Some(plain) = plain {
            filters.push(plain);
            bytes = rest;
            continue;
        }
        if bytes.len() < FILTER_HEAD_BYTES {
            return Err(short());
        }
        let descriptor = Descriptor {
            seed: le_u64(&bytes[1..]),
            segment_length: le_u32(&bytes[9..]),
            segment_length_mask: le_u32(&bytes[13..]),
            segment_count_length: le_u32(&bytes[17..]),
        };
        let len = le_u64(&bytes[21..]);
        bytes = &bytes[FILTER_HEAD_BYTES..];
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= bytes.len())
            .ok_or_else(short)?;
        // A lookup reads below the segment count's length plus two segments,
        // as long as that length is a whole number of segments (and the sum,
        // which the filter takes in 32 bits, fits).
        let (count_length, length) = (descriptor.segment_count_length, descriptor.segment_length);
        let reach = u64::from(count_length) + 2 * u64::from(length);
        if flag != SECTION_FILTER
            || !length.is_power_of_two()
            || descriptor.segment_length_mask != length - 1
            || count_length == 0
            || !count_length.is_multiple_of(length)
            || reach > u64::from(u32::MAX)
            || reach > len as u64
        {
            return Err(format!(
                "section {section}'s filter is not one this build writes"
            ));
        }
        filters.push(SectionFilter::Filter(BinaryFuse8 {
            descriptor,
            fingerprints: bytes[..len].into(),
        }));
        bytes = &bytes[len..];
    }
    if !bytes.is_empty() {
        return Err(format!("{} bytes after the last filter", bytes.len()));
    }
    Ok(filters)
}

/// The level of the ids first seen in `[from, upto)`, from `ids` (sorted,
/// unique); `None` when there are none.
///
/// # Errors
/// As [`LevelWriter`].
pub fn write_level(
    paths: &DataPaths,
    from: Seq,
    upto: Seq,
    ids: impl ExactSizeIterator<Item = u64>,
) -> Result<Option<Level>> {
    if ids.len() == 0 {
        return Ok(None);
    }
    let mut writer = LevelWriter::create(paths, from, upto, ids.len() as u64)?;
    for id in ids {
        writer.push(id)?;
    }
    writer.finish()
}

/// Two levels as one, covering both their records (an id in both, once),
/// streamed from their files into a new one.
///
/// # Errors
/// Either cannot be read, or the new one written.
pub fn merge_levels(paths: &DataPaths, older: &Level, newer: &Level) -> Result<Level> {
    let mut writer = LevelWriter::create(paths, older.from, newer.upto, older.count + newer.count)?;
    let mut a = older.ids().peekable();
    let mut b = newer.ids().peekable();
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(Err(_)), _) => a.next(),
            (_, Some(Err(_))) => b.next(),
            (Some(Ok(x)), Some(Ok(y))) => match x.cmp(y) {
                std::cmp::Ordering::Less => a.next(),
                std::cmp::Ordering::Greater => b.next(),
                std::cmp::Ordering::Equal => {
                    b.next();
                    a.next()
                }
            },
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => break,
        };
        if let Some(id) = next {
            writer.push(id?)?;
        }
    }
    writer.finish()?.ok_or_else(|| Error::BadIds {
        path: paths.ids_dir().join(level_name(older.from, newer.upto)),
        problem: "two levels merged to no id".into(),
    })
}

/// The names of the level files under `ids/` (temporary files left out), sorted.
///
/// # Errors
/// I/O errors listing the directory.
pub fn list_levels(paths: &DataPaths) -> Result<Vec<String>> {
    let mut names: Vec<String> = super::list_dir(&paths.ids_dir())?
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| !super::paths::is_tmp_name(name))
        .collect();
    names.sort();
    Ok(names)
}

/// Removes the level files under `ids/` that are not named in `keep`, and
/// temporary files a crash left. A file another index still has open stays
/// readable through it until that index is dropped.
///
/// # Errors
/// I/O errors listing or removing, naming the file.
pub fn remove_other_levels(paths: &DataPaths, keep: &[String]) -> Result<()> {
    for (name, path) in super::list_dir(&paths.ids_dir())? {
        if !keep.contains(&name) {
            fs::remove_file(&path).map_err(|source| Error::io("remove", &path, source))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(n: u64) -> Vec<u64> {
        let mut ids: Vec<u64> = (1..=n)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The level of [`spread`]`(100)`, the records before seq 100.
    fn hundred_ids(paths: &DataPaths) -> Level {
        write_level(paths, Seq(0), Seq(100), spread(100).into_iter())
            .expect("write")
            .expect("some ids")
    }

    #[test]
    fn a_level_reads_back_exactly_its_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = DataPaths::new(dir.path());
        let ids = spread(5_000);
        let written = write_level(&paths, Seq(3), Seq(9_000), ids.iter().copied())
            .expect("write")
            .expect("some ids");
        let opened = Level::open(&paths, written.name()).expect("open");
        for level in [&written, &opened] {
            assert_eq!(level.len(), 5_000);
            assert_eq!((level.from(), level.upto()), (Seq(3), Seq(9_000)));
            let read: Vec<u64> = level.ids().collect::<Result<_>>().expect("ids");
            assert_eq!(read, ids);
            for id in &ids {
                assert!(level.contains(*id).expect("lookup"), "{id}");
            }
            for stranger in (0..20_000u64).map(|i| i.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1) {
                assert_eq!(
                    level.contains(stranger).expect("lookup"),
                    ids.binary_search(&stranger).is_ok()
                );
            }
        }
    }

    #[test]
    fn a_level_of_many_sections_holds_its_ids_and_merges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = DataPaths::new(dir.path());
        // Sized as if for 5 sections: 8 of them, some nearly empty.
        let ids = spread(3_000);
        let mut writer =
            LevelWriter::create(&paths, Seq(0), Seq(10), 5 * SECTION_IDS).expect("create");
        for id in &ids[..2_000] {
            writer.push(*id).expect("push");
        }
        assert!(
            writer.push(ids[0]).is_err(),
            "an id out of order is refused"
        );
        let older = writer.finish().expect("finish").expect("some ids");
        let newer = write_level(&paths, Seq(10), Seq(20), ids[1_500..].iter().copied())
            .expect("write")
            .expect("some");
        let merged = merge_levels(&paths, &older, &newer).expect("merge");
        assert_eq!(merged.name(), level_name(Seq(0), Seq(20)));
        let read: Vec<u64> = merged.ids().collect::<Result<_>>().expect("ids");
        assert_eq!(read, ids);
        let reopened = Level::open(&paths, merged.name()).expect("open");
        assert!(ids.iter().all(|id| reopened.contains(*id).expect("lookup")));
        remove_other_levels(&paths, &[merged.name().to_owned()]).expect("remove");
        assert!(Level::open(&paths, older.name()).is_err(), "removed");
        assert!(
            older.contains(ids[0]).expect("still open"),
            "an open level stays readable"
        );
    }

    /// A trailer whose crc holds but whose filter would read past its
    /// fingerprints is refused, not trusted.
    #[test]
    fn a_filter_that_would_read_out_of_bounds_is_refused() {
        let ids = spread(1_000);
        let filter = BinaryFuse8::try_from(ids.as_slice()).expect("filter");
        let good = encode_filters(&[SectionFilter::Filter(filter), SectionFilter::Empty]);
        let decoded = decode_filters(&good, 2).expect("decodes");
        assert!(matches!(decoded[1], SectionFilter::Empty));
        let SectionFilter::Filter(filter) = &decoded[0] else {
            panic!("a filter")
        };
        assert!(ids.iter().all(|id| filter.contains(id)));
        // The segment count's length: at 17, not a whole number of segments,
        // and at 0.
        for count_length in [17u32, 0] {
            let mut bad = good.clone();
            bad[17..21].copy_from_slice(&count_length.to_le_bytes());
            let err = decode_filters(&bad, 2).expect_err("refused");
            assert!(err.contains("section 0's filter is not one"), "{err}");
        }
        assert!(decode_filters(&good, 3).is_err(), "a section missing");
        assert!(decode_filters(&good, 1).is_err(), "bytes left over");
    }

    #[test]
    fn a_level_under_another_name_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = DataPaths::new(dir.path());
        let level = hundred_ids(&paths);
        let other = level_name(Seq(0), Seq(200));
        fs::copy(
            paths.ids_dir().join(level.name()),
            paths.ids_dir().join(&other),
        )
        .expect("copy");
        let err = Level::open(&paths, &other).expect_err("another name");
        assert!(err.to_string().contains("not those its name says"), "{err}");
    }

    #[test]
    fn a_damaged_level_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = DataPaths::new(dir.path());
        let level = hundred_ids(&paths);
        let path = paths.ids_dir().join(level.name());
        let mut bytes = fs::read(&path).expect("read");
        bytes[HEADER_BYTES as usize + 17] ^= 1;
        fs::write(&path, &bytes).expect("write");
        let err = Level::open(&paths, level.name()).expect_err("damaged");
        assert!(err.to_string().contains("ids crc mismatch"), "{err}");
        // Damaged while open: the page that holds the damage is refused.
        let err = level.contains(spread(100)[2]).expect_err("damaged page");
        assert!(err.to_string().contains("page 0 crc mismatch"), "{err}");
        assert!(err.to_string().contains(level.name()), "{err}");
        fs::remove_file(&path).expect("remove");
        let err = Level::open(&paths, level.name()).expect_err("missing");
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
