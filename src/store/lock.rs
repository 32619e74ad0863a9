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
        Self::lock(paths, true)?.ok_or_else(|| Error::Locked {
            path: root.to_owned(),
        })
    }

    /// Refuses a data_dir that another process holds, creating nothing: a
    /// check before anything else starts (the lock itself is [`acquire`]d later).
    ///
    /// # Errors
    /// [`Error::Locked`] when another process holds it, or an I/O error.
    ///
    /// [`acquire`]: DataDirLock::acquire
    pub fn check_free(paths: &DataPaths) -> Result<()> {
        if !paths.lock().exists() {
            return Ok(());
        }
        Self::lock(paths, false).map(drop)
    }

    /// Locks `data_dir/LOCK`, creating the file when `create`; `None` when
    /// the file does not exist and is not to be created.
    fn lock(paths: &DataPaths, create: bool) -> Result<Option<DataDirLock>> {
        let root = paths.root();
        let path = paths.lock();
        let file = match OpenOptions::new()
            .create(create)
            .truncate(false)
            .write(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(err) if !create && err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::io("open", &path, source)),
        };
        match file.try_lock() {
            Ok(()) => Ok(Some(DataDirLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
                path: root.to_owned(),
            }),
            Err(std::fs::TryLockError::Error(source)) => Err(Error::io("lock", &path, source)),
        }
    }
}
