//! Creating the directories and files the relay keeps its state in: private, and durable
//! before use.
//!
//! A new directory is only a name in its parent until the parent is fsynced: after a power cut
//! it can vanish with every fsynced message inside it. So every directory made here is
//! private (the store holds queued mail and keys: mode 0700 on Unix, a protected ACL on
//! Windows; see `smtp2oauth_platform`) and, when `fsync` is on, its parent is synced before
//! anything is written into it. Opening a store that exists syncs it and its parent again,
//! which also covers a directory an earlier run created and crashed before syncing.

use smtp2oauth_platform::create_private_dir;
use std::io;
use std::path::{Path, PathBuf};

/// Creates `path` and any missing ancestors (private), making each new name durable
/// when `fsync` is on. Existing directories are left as they are, apart from the syncs.
pub fn create_dir_durable(path: &Path, fsync: bool) -> io::Result<()> {
    let missing = missing_ancestors(path);
    for dir in missing.iter().rev() {
        match create_private_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if fsync {
            sync_dir(parent_of(dir))?;
        }
    }
    if fsync {
        sync_dir(path)?;
        sync_dir(parent_of(path))?;
    }
    Ok(())
}

/// `path` and its ancestors that do not exist yet, deepest first.
fn missing_ancestors(path: &Path) -> Vec<PathBuf> {
    let mut missing = Vec::new();
    let mut p = path;
    while !p.exists() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => break,
        }
    }
    missing
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Options that create a file private (read and written by the relay's user only: mode 0600
/// whatever the umask; on Windows the DACL of the private directory it is created in), for
/// writing. Every file of the store is created inside the store's private directories.
pub fn private_file() -> std::fs::OpenOptions {
    smtp2oauth_platform::private_file_options()
}

/// Writes `bytes` to a new or truncated private file.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    private_file()
        .create(true)
        .truncate(true)
        .open(path)?
        .write_all(bytes)
}

/// Makes the entries of directory `dir` durable (on Windows: `FlushFileBuffers` on the
/// directory, see `smtp2oauth_platform`).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    smtp2oauth_platform::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_missing_ancestors_privately() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("store/spool/queue");
        create_dir_durable(&deep, true).unwrap();
        assert!(deep.is_dir());
        for d in ["store", "store/spool", "store/spool/queue"] {
            let who = smtp2oauth_platform::readable_by_others(&tmp.path().join(d)).unwrap();
            assert_eq!(who, None, "{d}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for d in ["store", "store/spool", "store/spool/queue"] {
                let mode = std::fs::metadata(tmp.path().join(d))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o700, "{d}");
            }
        }
        // Existing directories are fine, and keep their mode.
        create_dir_durable(&deep, true).unwrap();
        create_dir_durable(tmp.path(), false).unwrap();
    }
}
