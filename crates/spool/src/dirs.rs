//! Creating the directories and files the relay keeps its state in: private, and durable
//! before use.
//!
//! A new directory is only a name in its parent until the parent is fsynced: after a power cut
//! it can vanish with every fsynced message inside it. So every directory made here is
//! created with mode 0700 (the store holds queued mail and keys; the umask can only narrow it)
//! and, when `fsync` is on, its parent is synced before anything is written into it. Opening a
//! store that exists syncs it and its parent again, which also covers a directory an earlier
//! run created and crashed before syncing.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Creates `path` and any missing ancestors (mode 0700 on Unix), making each new name durable
/// when `fsync` is on. Existing directories are left as they are, apart from the syncs.
pub fn create_dir_durable(path: &Path, fsync: bool) -> io::Result<()> {
    let missing = missing_ancestors(path);
    for dir in missing.iter().rev() {
        match make_private_dir(dir) {
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

#[cfg(unix)]
fn make_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

#[cfg(not(unix))]
fn make_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().create(dir)
}

/// Options that create a file with mode 0600 (read and written by the relay's user only,
/// whatever the umask), for writing.
pub fn private_file() -> std::fs::OpenOptions {
    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o
}

/// Writes `bytes` to a new or truncated private file (mode 0600).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    private_file()
        .create(true)
        .truncate(true)
        .open(path)?
        .write_all(bytes)
}

/// Makes the entries of directory `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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
