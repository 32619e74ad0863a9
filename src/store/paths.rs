//! Every file name under `data_dir`, built in one place, with numbers
//! zero-padded so that a directory listing sorts in log order.

use crate::event::Epoch;
use std::path::{Path, PathBuf};

const SEGMENT_PREFIX: &str = "segment-";
const SEGMENT_SUFFIX: &str = ".log";
const SNAPSHOT_PREFIX: &str = "snapshot-";
const SNAPSHOT_SUFFIX: &str = ".snap";
pub(super) const TMP_SUFFIX: &str = ".tmp";

/// The layout of one `data_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPaths {
    root: PathBuf,
}

impl DataPaths {
    /// The layout rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> DataPaths {
        DataPaths { root: root.into() }
    }

    /// The data_dir itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `master/`: the segments and the epoch index.
    pub fn master_dir(&self) -> PathBuf {
        self.root.join("master")
    }

    /// `master/segment-0000000042.log`.
    pub fn segment(&self, index: u32) -> PathBuf {
        self.master_dir()
            .join(format!("{SEGMENT_PREFIX}{index:010}{SEGMENT_SUFFIX}"))
    }

    /// The temporary name a segment is prepared under before it appears.
    pub fn segment_tmp(&self, index: u32) -> PathBuf {
        self.master_dir().join(format!(
            "{SEGMENT_PREFIX}{index:010}{SEGMENT_SUFFIX}{TMP_SUFFIX}"
        ))
    }

    /// `master/epochs`: the sealed epochs and their log positions.
    pub fn epochs(&self) -> PathBuf {
        self.master_dir().join("epochs")
    }

    /// `cache/`: the batch cache.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// `cache/ids.bin`: the ids an incremental batch run dedups against.
    pub fn cache_ids(&self) -> PathBuf {
        self.cache_dir().join("ids.bin")
    }

    /// `cache/view-<name>.bin`: a view's cached state, or the snapshot that holds it.
    pub fn cache_view(&self, view: &str) -> PathBuf {
        self.cache_dir().join(format!("view-{view}.bin"))
    }

    /// `ids/`: the id level files.
    pub fn ids_dir(&self) -> PathBuf {
        self.root.join("ids")
    }

    /// `snapshots/`.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// `snapshots/snapshot-00000000000000000042.snap`.
    pub fn snapshot(&self, epoch: Epoch) -> PathBuf {
        self.snapshots_dir()
            .join(format!("{SNAPSHOT_PREFIX}{:020}{SNAPSHOT_SUFFIX}", epoch.0))
    }

    /// The temporary name a snapshot is written under before the rename.
    pub fn snapshot_tmp(&self, epoch: Epoch) -> PathBuf {
        self.snapshots_dir().join(format!(
            "{SNAPSHOT_PREFIX}{:020}{SNAPSHOT_SUFFIX}{TMP_SUFFIX}",
            epoch.0
        ))
    }

    /// `counters.json`: totals not kept in the master dataset.
    pub fn counters(&self) -> PathBuf {
        self.root.join("counters.json")
    }

    /// `LOCK`: held by the running daemon.
    pub fn lock(&self) -> PathBuf {
        self.root.join("LOCK")
    }
}

/// The index of a segment file name, or `None` for any other name.
pub fn parse_segment_name(name: &str) -> Option<u32> {
    name.strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?
        .parse()
        .ok()
}

/// The epoch of a snapshot file name, or `None` for any other name.
pub fn parse_snapshot_name(name: &str) -> Option<Epoch> {
    name.strip_prefix(SNAPSHOT_PREFIX)?
        .strip_suffix(SNAPSHOT_SUFFIX)?
        .parse()
        .ok()
        .map(Epoch)
}

/// Whether a name is a leftover temporary file.
pub fn is_tmp_name(name: &str) -> bool {
    name.ends_with(TMP_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        let paths = DataPaths::new("/d");
        let seg = paths.segment(42);
        let name = seg.file_name().and_then(|n| n.to_str()).unwrap();
        assert_eq!(name, "segment-0000000042.log");
        assert_eq!(parse_segment_name(name), Some(42));
        let snap = paths.snapshot(Epoch(7));
        let name = snap.file_name().and_then(|n| n.to_str()).unwrap();
        assert_eq!(parse_snapshot_name(name), Some(Epoch(7)));
        assert!(paths.segment(9) < paths.segment(10));
        assert_eq!(parse_segment_name("segment-0000000042.log.tmp"), None);
    }
}
