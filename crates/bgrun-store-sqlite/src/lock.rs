//! One process per database file: an exclusive lock on `<path>.lock`, held while the store lives.

use std::ffi::OsString;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use bgrun_core::StoreError;

/// An exclusive advisory lock on `<database>.lock`, released when dropped.
///
/// The lock is taken on an open file description, so a second store on the same file fails
/// whether it lives in another process or in this one.
#[derive(Debug)]
pub(crate) struct FileLock {
    // Held, never read: closing the file releases the lock.
    _file: File,
}

impl FileLock {
    /// Takes the lock beside `database`, or fails with `Locked` when someone holds it.
    pub(crate) fn acquire(database: &Path) -> Result<Self, StoreError> {
        let path = lock_path(database);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::backend(format!("opening {}", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(TryLockError::WouldBlock) => Err(StoreError::Locked(format!(
                "{} is in use by another bgrun store (lock file {} is held); \
                 a SQLite store serves one process at a time",
                database.display(),
                path.display()
            ))),
            Err(TryLockError::Error(e)) => Err(StoreError::backend(
                format!("locking {}", path.display()),
                e,
            )),
        }
    }
}

/// `<database>.lock`.
pub(crate) fn lock_path(database: &Path) -> PathBuf {
    let mut name = OsString::from(database.as_os_str());
    name.push(".lock");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("runs.db");
        let first = FileLock::acquire(&db).unwrap();
        assert!(dir.path().join("runs.db.lock").exists());
        match FileLock::acquire(&db) {
            Err(StoreError::Locked(message)) => assert!(message.contains("runs.db"), "{message}"),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        FileLock::acquire(&db).unwrap();
    }
}
