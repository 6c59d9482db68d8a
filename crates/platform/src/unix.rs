//! Unix: modes 0700 and 0600 (the umask can only narrow them), `fsync` of a directory,
//! `statvfs`, inode numbers.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub(crate) fn create_private_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(path)
}

pub(crate) fn open_private(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    options.mode(0o600).open(path)
}

pub(crate) fn private_file_options(options: &mut OpenOptions) {
    options.mode(0o600);
}

pub(crate) fn open_dir(path: &Path) -> io::Result<File> {
    File::open(path)
}

pub(crate) fn free_space(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

pub(crate) fn file_id(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

pub(crate) fn readable_by_others(path: &Path) -> io::Result<Option<String>> {
    let mode = std::fs::metadata(path)?.permissions().mode();
    Ok((mode & 0o004 != 0).then(|| format!("mode {:o}", mode & 0o777)))
}

pub(crate) fn restrict_advice(path: &Path) -> String {
    format!("chmod o-rwx {}", path.display())
}
