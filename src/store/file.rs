//! Which file a path names (device and inode), so that a database file or its WAL removed or
//! replaced under a running gateway is noticed.

use std::path::{Path, PathBuf};

use super::StoreError;

/// Which file a path names (device and inode), to notice it removed or replaced.
pub(crate) struct FileId {
    path: PathBuf,
    id: (u64, u64),
}

impl FileId {
    /// The write-ahead log beside a database file.
    pub(super) fn wal_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push("-wal");
        PathBuf::from(p)
    }

    pub(super) fn of(path: &Path) -> std::io::Result<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(FileId {
            path: path.to_path_buf(),
            id: (m.dev(), m.ino()),
        })
    }

    /// Whether the path still names the file opened.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        match FileId::of(&self.path) {
            Ok(now) if now.id == self.id => Ok(()),
            _ => Err(StoreError::Gone {
                path: self.path.clone(),
            }),
        }
    }
}
