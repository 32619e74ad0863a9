//! `counters.json`: totals that are not in the master dataset but must
//! survive restarts (rejections by reason). Written atomically at each seal
//! and at shutdown; after a crash, counts since the last write are lost.

use super::{DataPaths, Error, Result, sync_dir};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The persisted totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Rejected messages since the data_dir was created, by reason name.
    pub rejected: BTreeMap<String, u64>,
}

/// Reads the totals; none yet is all zeros.
///
/// # Errors
/// I/O errors, or a file that is not valid JSON.
pub fn load_counters(paths: &DataPaths) -> Result<Counters> {
    let path = paths.counters();
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| Error::BadCounters {
            path,
            problem: err.to_string(),
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Counters::default()),
        Err(source) => Err(Error::io("read", &path, source)),
    }
}

/// Replaces the totals atomically.
///
/// # Errors
/// I/O errors.
pub fn save_counters(paths: &DataPaths, counters: &Counters) -> Result<()> {
    let path = paths.counters();
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(counters).map_err(|err| Error::BadCounters {
        path: path.clone(),
        problem: err.to_string(),
    })?;
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .map_err(|source| Error::io("write", &tmp, source))?;
    std::fs::rename(&tmp, &path).map_err(|source| Error::io("rename", &tmp, source))?;
    sync_dir(paths.root())
}
