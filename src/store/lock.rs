//! The OS file lock that keeps one daemon per data_dir. It dies with its
//! process, so a restart after `kill -9` finds it free.

use super::{DataPaths, Error, Result};
use std::fs::{File, OpenOptions};

/// Held for as long as the process uses the data_dir.
#[derive(Debug)]
pub struct DataDirLock {
    /// The locked file; the lock is released when it is closed.
    _file: File,
}

impl DataDirLock {
    /// Takes the exclusive lock on `data_dir/LOCK`, creating the data_dir if needed.
    ///
    /// # Errors
    /// [`Error::Locked`] when another process holds it, or an I/O error.
    pub fn acquire(paths: &DataPaths) -> Result<DataDirLock> {
        let root = paths.root();
        std::fs::create_dir_all(root).map_err(|source| Error::io("create", root, source))?;
        let path = paths.lock();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| Error::io("open", &path, source))?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
                path: root.to_owned(),
            }),
            Err(std::fs::TryLockError::Error(source)) => Err(Error::io("lock", &path, source)),
        }
    }
}
