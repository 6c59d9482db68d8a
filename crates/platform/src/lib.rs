//! What Unix and Windows do differently, behind one small API, so that no other crate needs a
//! `cfg(unix)`.
//!
//! The store holds queued mail, refresh tokens and keys, so everything the relay creates in it
//! must be readable by the relay and the machine's administrators only, and every commit must be
//! durable before a device hears 250. Both systems can do that; they say it differently:
//!
//! | | Unix | Windows |
//! |---|---|---|
//! | private directory / file | mode 0700 / 0600 | a protected DACL: SYSTEM, Administrators, the service account `NT SERVICE\smtp2oauth` and the user running the process, full control (inherited by what is created inside) |
//! | "readable by every user" | the mode's other-read bit | an allow ACE with read access for Everyone, Users, Authenticated Users, Interactive, Guests or Anonymous |
//! | a directory's entries made durable | `fsync` of the directory | `FlushFileBuffers` on a directory handle opened with `FILE_FLAG_BACKUP_SEMANTICS` and write access (NTFS commits its journal, which holds the rename) |
//! | free space | `statvfs` | `GetDiskFreeSpaceExW` (the caller's quota included) |
//! | a file's identity | inode number | the NTFS file index (`GetFileInformationByHandle`) |
//!
//! Locks need nothing here: `std::fs::File::lock` is `flock` on Unix and `LockFileEx` on Windows.

#[cfg(any(windows, test))]
mod sddl;
#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as sys;
#[cfg(windows)]
pub mod windows;
#[cfg(windows)]
use windows as sys;

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// The Windows service's name; its virtual account `NT SERVICE\smtp2oauth` is one of the owners
/// of every private file and directory on Windows.
pub const SERVICE_NAME: &str = "smtp2oauth";

/// Creates the directory `path` (its parent must exist) so that only the relay's account and
/// the administrators can use it.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    sys::create_private_dir(path)
}

/// Creates `path` and every missing ancestor, each one private; existing ones are left alone.
pub fn create_private_dir_all(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir_all(parent)?;
    }
    match create_private_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other,
    }
}

/// Opens `path` with `options`; a file this creates is private (mode 0600 on Unix; on Windows
/// the private DACL is set before anything is written to it).
pub fn open_private(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    sys::open_private(options, path)
}

/// Options for writing, under which a file is created private when it is created inside a
/// private directory (one made by [`create_private_dir`]): mode 0600 on Unix, whatever the
/// umask; on Windows the file inherits that directory's private DACL, as everything created in
/// it does. For options that must stay a builder (`create_new`, tokio's `OpenOptions`);
/// elsewhere [`open_private`] also covers a file outside such a directory.
pub fn private_file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true);
    sys::private_file_options(&mut options);
    options
}

/// Opens a directory so that `sync_all` on the handle makes its entries (creates, renames,
/// removals) durable.
pub fn open_dir(path: &Path) -> io::Result<File> {
    sys::open_dir(path)
}

/// Makes the entries of directory `path` durable.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    open_dir(path)?.sync_all()
}

/// Replaces `path` whole with `bytes`: a private temporary file beside it (`<name>.tmp`), then
/// a rename over the old one, so a reader sees the old content or the new, never a part.
/// `durable`: the file and then the directory entry are synced, so the new content survives a
/// power cut (for what must not be lost; a status file rewritten every few seconds need not).
pub fn replace_private(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    use std::io::Write;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut f = open_private(
        OpenOptions::new().write(true).create(true).truncate(true),
        &tmp,
    )?;
    f.write_all(bytes)?;
    if durable {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) if durable => sync_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }),
        _ => Ok(()),
    }
}

/// Bytes the relay may still write on the filesystem that holds `path`.
pub fn free_space(path: &Path) -> io::Result<u64> {
    sys::free_space(path)
}

/// A number that changes when another file is renamed over `path` (the inode on Unix, the file
/// index on Windows), even if size and modification time stay the same.
pub fn file_id(path: &Path) -> io::Result<u64> {
    sys::file_id(path)
}

/// Who besides the relay and the administrators may read `path`, in words (`mode 644`,
/// `Users, Everyone`), or None when nobody else may. Errors when it cannot be read.
pub fn readable_by_others(path: &Path) -> io::Result<Option<String>> {
    sys::readable_by_others(path)
}

/// What an admin runs to make `path` private again, for log lines.
pub fn restrict_advice(path: &Path) -> String {
    sys::restrict_advice(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn private_directories_and_files_are_not_readable_by_others() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("store/spool/queue");
        create_private_dir_all(&deep).unwrap();
        create_private_dir_all(&deep).unwrap();
        for d in ["store", "store/spool", "store/spool/queue"] {
            assert_eq!(
                readable_by_others(&tmp.path().join(d)).unwrap(),
                None,
                "{d}"
            );
        }
        let key = deep.join("key");
        let mut f = open_private(OpenOptions::new().write(true).create(true), &key).unwrap();
        f.write_all(b"secret").unwrap();
        assert_eq!(readable_by_others(&key).unwrap(), None);
        assert!(matches!(
            create_private_dir(&deep).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        ));
    }

    #[test]
    fn a_replaced_file_holds_the_new_bytes_is_private_and_leaves_no_temporary() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("known-logins");
        std::fs::write(&path, "old").unwrap();
        for durable in [true, false] {
            replace_private(&path, b"new", durable).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"new");
            assert_eq!(readable_by_others(&path).unwrap(), None);
            let names: Vec<_> = std::fs::read_dir(tmp.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["known-logins"], "durable: {durable}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_file_everyone_may_read_is_reported_with_advice() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("smtp2oauth.toml");
        std::fs::write(&path, "x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            readable_by_others(&path).unwrap().as_deref(),
            Some("mode 644")
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(readable_by_others(&path).unwrap(), None);
        assert!(restrict_advice(&path).contains("chmod o-rwx"));
    }

    #[test]
    fn directories_sync_and_report_free_space_and_identity() {
        let tmp = tempfile::tempdir().unwrap();
        sync_dir(tmp.path()).unwrap();
        assert!(free_space(tmp.path()).unwrap() > 0);
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "1").unwrap();
        let before = file_id(&a).unwrap();
        assert_eq!(file_id(&a).unwrap(), before, "stable while unchanged");
        std::fs::rename(&b, &a).unwrap();
        assert_ne!(file_id(&a).unwrap(), before, "another file renamed over it");
    }
}
