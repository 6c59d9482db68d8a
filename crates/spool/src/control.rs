//! Requests from the queue command line to a running relay, and the lock that says one runs.
//!
//! While a relay runs, only it changes the state of queued messages; otherwise an admin's
//! `queue delete` could race a delivery in progress. So the command line checks the lock: when
//! no relay holds it, the command acts on the files itself; when one does, the command drops a
//! request file into `control/` (created atomically) and waits for the relay to carry it out and
//! remove it. Requests are plain files named `<action>.<queue id>` or `<action>.all`, so they
//! survive a restart and can be inspected.

use crate::{MessageId, SpoolError};
use std::fmt;
use std::fs::{File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

/// What the admin asks for.
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
    /// The action's name (the first part of a request's file name).
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

/// Which messages a request concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlTarget {
    /// One message.
    One(MessageId),
    /// Every message of the area the action works on (`--all`).
    All,
}

impl ControlTarget {
    /// Reads a target as written after the action in a request's file name.
    pub fn parse(s: &str) -> Option<ControlTarget> {
        match s {
            "all" => Some(ControlTarget::All),
            id => MessageId::parse(id).map(ControlTarget::One),
        }
    }
}

impl fmt::Display for ControlTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlTarget::One(id) => f.write_str(id.as_str()),
            ControlTarget::All => f.write_str("all"),
        }
    }
}

/// A pending request: what to do, to which messages, and its file.
#[derive(Clone, Debug)]
pub struct Request {
    /// What to do.
    pub action: ControlAction,
    /// To which messages.
    pub target: ControlTarget,
    /// The request's file (removed once carried out).
    pub path: PathBuf,
}

/// The `control/` directory.
#[derive(Clone)]
pub struct Control {
    dir: PathBuf,
}

impl Control {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Control { dir }
    }

    /// Files a request; returns its path (it disappears once the relay has carried it out).
    pub async fn request(
        &self,
        action: ControlAction,
        target: &ControlTarget,
    ) -> Result<PathBuf, SpoolError> {
        let name = format!("{}.{target}", action.as_str());
        let dir = self.dir.clone();
        crate::blocking(move || {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, b"")?;
            let path = dir.join(&name);
            std::fs::rename(&tmp, &path)?;
            Ok(path)
        })
        .await
    }

    /// Requests waiting to be carried out, oldest first.
    pub async fn pending(&self) -> Result<Vec<Request>, SpoolError> {
        let dir = self.dir.clone();
        crate::blocking(move || Ok(pending_in(&dir)?)).await
    }

    /// Marks a request as carried out.
    pub async fn done(&self, request: &Request) {
        let path = request.path.clone();
        let _ = crate::blocking(move || Ok(std::fs::remove_file(path)?)).await;
    }
}

fn pending_in(dir: &Path) -> io::Result<Vec<Request>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some((action, target)) = name.to_str().and_then(|n| n.split_once('.')) else {
            continue;
        };
        let (Some(action), Some(target)) =
            (ControlAction::parse(action), ControlTarget::parse(target))
        else {
            continue;
        };
        let modified = entry.metadata().and_then(|m| m.modified()).ok();
        out.push((
            modified,
            Request {
                action,
                target,
                path: entry.path(),
            },
        ));
    }
    out.sort_by_key(|(m, _)| *m);
    Ok(out.into_iter().map(|(_, r)| r).collect())
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
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked(path.display().to_string()));
            }
            Err(TryLockError::Error(e)) => return Err(e.into()),
        }
        let _ = std::fs::write(path, format!("{}\n", std::process::id()));
        Ok(SpoolLock { _file: file })
    }

    pub(crate) fn held_by_other(path: &Path) -> bool {
        let Ok(file) = std::fs::OpenOptions::new().read(true).open(path) else {
            return false;
        };
        // A shared lock is refused only while someone holds the exclusive one; ours is
        // released when `file` closes.
        file.try_lock_shared().is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_listed_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let c = Control::new(d.path().to_path_buf());
        c.request(ControlAction::Retry, &ControlTarget::All)
            .await
            .unwrap();
        let id = MessageId::parse("0123456789abcdef").unwrap();
        c.request(ControlAction::Delete, &ControlTarget::One(id.clone()))
            .await
            .unwrap();
        std::fs::write(d.path().join("junk.txt"), b"").unwrap();
        std::fs::write(d.path().join("retry.../../x"), b"").ok();
        let p = c.pending().await.unwrap();
        assert_eq!(p.len(), 2);
        let targets: Vec<_> = p.iter().map(|r| (r.action, r.target.clone())).collect();
        assert!(targets.contains(&(ControlAction::Retry, ControlTarget::All)));
        assert!(targets.contains(&(ControlAction::Delete, ControlTarget::One(id))));
        for r in &p {
            c.done(r).await;
        }
        assert!(c.pending().await.unwrap().is_empty());
    }

    /// The file names are the format shared with other versions of the command line: requests
    /// they filed are read, and ours are named as they expect.
    #[tokio::test]
    async fn request_files_keep_their_names() {
        let d = tempfile::tempdir().unwrap();
        let c = Control::new(d.path().to_path_buf());
        let id = MessageId::parse("0123456789abcdef").unwrap();
        let path = c
            .request(ControlAction::Requeue, &ControlTarget::One(id.clone()))
            .await
            .unwrap();
        assert_eq!(path, d.path().join("requeue.0123456789abcdef"));
        let all = c
            .request(ControlAction::Retry, &ControlTarget::All)
            .await
            .unwrap();
        assert_eq!(all, d.path().join("retry.all"));
        std::fs::remove_file(path).unwrap();
        std::fs::remove_file(all).unwrap();
        std::fs::write(d.path().join("delete.all"), b"").unwrap();
        std::fs::write(d.path().join("retry.0123456789abcdef"), b"").unwrap();
        let mut got: Vec<_> = c
            .pending()
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.action, r.target))
            .collect();
        got.sort_by_key(|(a, _)| a.as_str());
        assert_eq!(
            got,
            vec![
                (ControlAction::Delete, ControlTarget::All),
                (ControlAction::Retry, ControlTarget::One(id)),
            ]
        );
        assert_eq!(ControlTarget::parse("../../x"), None);
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
