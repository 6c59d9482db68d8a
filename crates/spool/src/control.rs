//! Requests from the queue command line to a running relay, and the lock that says one runs.
//!
//! While a relay runs, only it changes the state of queued messages; otherwise an admin's
//! `queue delete` could race a delivery in progress. So the command line checks the lock: when
//! no relay holds it, the command acts on the files itself; when one does, the command drops a
//! request file into `control/` (created atomically) and waits for the relay to carry it out and
//! remove it. Requests are plain files, so they survive a restart and can be inspected.

use crate::SpoolError;
use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlAction {
    /// Attempt now (`queue retry ID|--all`).
    Retry,
    /// Remove for good (`queue delete ID`).
    Delete,
    /// Move from `failed/` back into the queue (`queue requeue ID`).
    Requeue,
}

impl ControlAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlAction::Retry => "retry",
            ControlAction::Delete => "delete",
            ControlAction::Requeue => "requeue",
        }
    }

    fn parse(s: &str) -> Option<ControlAction> {
        match s {
            "retry" => Some(ControlAction::Retry),
            "delete" => Some(ControlAction::Delete),
            "requeue" => Some(ControlAction::Requeue),
            _ => None,
        }
    }
}

/// A pending request: what to do, to which message id (or `all`), and its file.
#[derive(Clone, Debug)]
pub struct Request {
    pub action: ControlAction,
    pub target: String,
    pub path: PathBuf,
}

#[derive(Clone)]
pub struct Control {
    dir: PathBuf,
}

impl Control {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Control { dir }
    }

    /// Files a request; returns its path (it disappears once the relay has carried it out).
    pub fn request(&self, action: ControlAction, target: &str) -> io::Result<PathBuf> {
        if target != "all" && crate::MessageId::parse(target).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{target}` is not a queue id"),
            ));
        }
        let name = format!("{}.{target}", action.as_str());
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, b"")?;
        let path = self.dir.join(&name);
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Requests waiting to be carried out, oldest first.
    pub fn pending(&self) -> io::Result<Vec<Request>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((action, target)) = name.split_once('.') else {
                continue;
            };
            let (Some(action), true) = (
                ControlAction::parse(action),
                target == "all" || crate::MessageId::parse(target).is_some(),
            ) else {
                continue;
            };
            let modified = entry.metadata().and_then(|m| m.modified()).ok();
            out.push((
                modified,
                Request {
                    action,
                    target: target.to_string(),
                    path: entry.path(),
                },
            ));
        }
        out.sort_by_key(|(m, _)| *m);
        Ok(out.into_iter().map(|(_, r)| r).collect())
    }

    /// Marks a request as carried out.
    pub fn done(&self, request: &Request) {
        let _ = std::fs::remove_file(&request.path);
    }
}

/// An exclusive lock on the spool, held for the life of the relay process.
pub struct SpoolLock {
    _file: File,
}

impl SpoolLock {
    pub(crate) fn acquire(path: &Path) -> Result<SpoolLock, SpoolError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(SpoolError::Locked(path.display().to_string()));
            }
            return Err(e.into());
        }
        let _ = std::fs::write(path, format!("{}\n", std::process::id()));
        Ok(SpoolLock { _file: file })
    }

    pub(crate) fn held_by_other(path: &Path) -> bool {
        let Ok(file) = std::fs::OpenOptions::new().read(true).open(path) else {
            return false;
        };
        // SAFETY: flock on a descriptor we own; released when `file` closes.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_listed_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let c = Control::new(d.path().to_path_buf());
        c.request(ControlAction::Retry, "all").unwrap();
        c.request(ControlAction::Delete, "0123456789abcdef")
            .unwrap();
        assert!(c.request(ControlAction::Delete, "../../x").is_err());
        std::fs::write(d.path().join("junk.txt"), b"").unwrap();
        let p = c.pending().unwrap();
        assert_eq!(p.len(), 2);
        for r in &p {
            c.done(r);
        }
        assert!(c.pending().unwrap().is_empty());
    }

    #[test]
    fn lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("lock");
        assert!(!SpoolLock::held_by_other(&path));
        let l = SpoolLock::acquire(&path).unwrap();
        assert!(SpoolLock::held_by_other(&path));
        assert!(matches!(
            SpoolLock::acquire(&path),
            Err(SpoolError::Locked(_))
        ));
        drop(l);
        assert!(!SpoolLock::held_by_other(&path));
    }
}
