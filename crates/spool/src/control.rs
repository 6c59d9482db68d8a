//! Requests from the queue command line (and the admin server) to a running relay, their
//! answers, and the lock that says one runs.
//!
//! While a relay runs, only it changes the state of queued messages; otherwise an admin's
//! `queue delete` could race a delivery in progress. So the command line checks the lock: when
//! no relay holds it, the command acts on the files itself; when one does, the command drops a
//! request file into `control/` (created atomically) and waits for the relay's answer. The admin
//! server, inside the relay, files its requests the same way, so a button on the queue page and
//! `smtp2oauth queue` take one code path.
//!
//! Files (plain, so they survive a restart and can be inspected):
//! - `<action>.<queue id|all>[.<ticket>]`: a request. The ticket (letters and digits) makes it
//!   the requester's own; requests without one (older command lines) are carried out the same.
//! - `<action>.<target>.<ticket>.answer`: what the relay did, written (fsync-free: it is only a
//!   message to a waiting requester) once the request is carried out and before the request is
//!   removed. The requester reads and removes it; answers nobody collected are removed after an
//!   hour.
//!
//! In-process requesters (the admin server) need no polling: filing a request wakes the relay's
//! control task, and writing an answer wakes the requesters waiting in this process.

use crate::{MessageId, SpoolError};
use std::fmt;
use std::fs::{File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

/// Answers nobody collected are removed after this long.
const STALE_ANSWER: Duration = Duration::from_secs(3600);
/// How often a requester in another process looks for its answer.
const ANSWER_POLL: Duration = Duration::from_millis(50);
/// First line of an answer file.
const ANSWER_HEADER: &str = "smtp2oauth-control-answer 1";

/// What the admin asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlAction {
    /// Attempt now (`queue retry ID|--all`).
    Retry,
    /// Remove for good (`queue delete ID|--all`).
    Delete,
    /// Move from `failed/` back into the queue (`queue requeue ID|--all`).
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

    /// Reads [`ControlAction::as_str`].
    pub fn parse(s: &str) -> Option<ControlAction> {
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

/// What became of one message of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Carried out.
    Done,
    /// A delete of a message whose delivery attempt is running: it is removed when the attempt
    /// ends (unless that attempt delivers it).
    AfterAttempt,
    /// No such message in the queue or in `failed/` (delivered, deleted, or never there).
    UnknownId,
    /// A retry of a message that failed for good (it is in `failed/`: requeue it instead).
    AlreadyFailed,
    /// A requeue of a message that is still queued (retry it instead).
    StillQueued,
    /// The spool refused (an I/O error, an unreadable envelope).
    Error,
}

impl OutcomeKind {
    const ALL: [OutcomeKind; 6] = [
        OutcomeKind::Done,
        OutcomeKind::AfterAttempt,
        OutcomeKind::UnknownId,
        OutcomeKind::AlreadyFailed,
        OutcomeKind::StillQueued,
        OutcomeKind::Error,
    ];

    /// The name used in answer files and in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Done => "done",
            OutcomeKind::AfterAttempt => "after_attempt",
            OutcomeKind::UnknownId => "unknown_id",
            OutcomeKind::AlreadyFailed => "already_failed",
            OutcomeKind::StillQueued => "still_queued",
            OutcomeKind::Error => "error",
        }
    }

    /// Reads [`OutcomeKind::as_str`].
    pub fn parse(s: &str) -> Option<OutcomeKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// True when the admin got what they asked for (now, or when the running attempt ends).
    pub fn is_success(self) -> bool {
        matches!(self, OutcomeKind::Done | OutcomeKind::AfterAttempt)
    }
}

/// What became of one message, with the relay's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The message.
    pub id: MessageId,
    /// What became of it.
    pub kind: OutcomeKind,
    /// The relay's words, e.g. `no message 0123456789abcdef in the queue or failed/`.
    pub detail: String,
}

/// The relay's answer to one request: one outcome per message it concerned (none for `--all`
/// over an empty area).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// Per message, in the order carried out.
    pub outcomes: Vec<Outcome>,
}

impl Answer {
    /// True when every message got what was asked (an empty `--all` included).
    pub fn is_success(&self) -> bool {
        self.outcomes.iter().all(|o| o.kind.is_success())
    }

    fn encode(&self) -> String {
        let mut out = format!("{ANSWER_HEADER}\n");
        for o in &self.outcomes {
            let detail: String = o
                .detail
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            out.push_str(&format!("{} {} {detail}\n", o.id, o.kind.as_str()));
        }
        out
    }

    fn decode(text: &str) -> Option<Answer> {
        let mut lines = text.lines();
        if lines.next()? != ANSWER_HEADER {
            return None;
        }
        let mut outcomes = Vec::new();
        for line in lines {
            let mut parts = line.splitn(3, ' ');
            let id = MessageId::parse(parts.next()?)?;
            let kind = OutcomeKind::parse(parts.next()?)?;
            let detail = parts.next().unwrap_or_default().to_string();
            outcomes.push(Outcome { id, kind, detail });
        }
        Some(Answer { outcomes })
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
    /// The requester's ticket, when it waits for an answer.
    pub ticket: Option<String>,
}

/// A filed request the requester waits on.
#[derive(Clone, Debug)]
pub struct Ticket {
    /// The request's file.
    pub path: PathBuf,
    answer: PathBuf,
}

/// Wakes the relay when a request is filed in this process, and waiting requesters when an
/// answer is written.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    filed: Notify,
    answered: Notify,
    tickets: AtomicU64,
}

/// The `control/` directory.
#[derive(Clone)]
pub struct Control {
    dir: PathBuf,
    signals: Arc<Signals>,
}

impl Control {
    pub(crate) fn new(dir: PathBuf, signals: Arc<Signals>) -> Self {
        Control { dir, signals }
    }

    /// Files a request without a ticket (nobody reads its answer); returns its path, which
    /// disappears once the relay has carried it out.
    pub async fn request(
        &self,
        action: ControlAction,
        target: &ControlTarget,
    ) -> Result<PathBuf, SpoolError> {
        let name = format!("{}.{target}", action.as_str());
        self.file(name).await
    }

    /// Files a request the caller will wait on with [`Control::wait`].
    pub async fn submit(
        &self,
        action: ControlAction,
        target: &ControlTarget,
    ) -> Result<Ticket, SpoolError> {
        let n = self.signals.tickets.fetch_add(1, Ordering::Relaxed);
        let ticket = format!("{:x}x{:x}x{n:x}", std::process::id(), crate::now_ms());
        let name = format!("{}.{target}.{ticket}", action.as_str());
        let answer = self.dir.join(format!("{name}.answer"));
        let path = self.file(name).await?;
        Ok(Ticket { path, answer })
    }

    async fn file(&self, name: String) -> Result<PathBuf, SpoolError> {
        let dir = self.dir.clone();
        let path = crate::blocking(move || {
            let tmp = dir.join(format!(".{name}.tmp"));
            crate::dirs::write_private(&tmp, b"")?;
            let path = dir.join(&name);
            std::fs::rename(&tmp, &path)?;
            Ok(path)
        })
        .await?;
        self.signals.filed.notify_one();
        Ok(path)
    }

    /// The relay's answer to `ticket`, waiting up to `timeout`; None when none came in time (the
    /// request stays filed and is carried out later). In this process the wait ends as soon as
    /// the answer is written; from another process the file is looked for every 50 ms.
    pub async fn wait(
        &self,
        ticket: &Ticket,
        timeout: Duration,
    ) -> Result<Option<Answer>, SpoolError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let answered = self.signals.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if let Some(answer) = self.collect(ticket).await? {
                return Ok(Some(answer));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::select! {
                _ = answered => {}
                _ = tokio::time::sleep(ANSWER_POLL) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Reads and removes the answer to `ticket`, if it is there.
    async fn collect(&self, ticket: &Ticket) -> Result<Option<Answer>, SpoolError> {
        let path = ticket.answer.clone();
        crate::blocking(move || match std::fs::read_to_string(&path) {
            Ok(text) => {
                let _ = std::fs::remove_file(&path);
                Ok(Some(Answer::decode(&text).ok_or_else(|| {
                    SpoolError::Io(io::Error::other(format!(
                        "unreadable answer {}",
                        path.display()
                    )))
                })?))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        })
        .await
    }

    /// Waits until a request is filed in this process (the relay's control task also looks
    /// at the directory now and then, for requests from other processes).
    pub async fn filed(&self) {
        self.signals.filed.notified().await
    }

    /// Requests waiting to be carried out, oldest first. Also removes answers nobody collected.
    pub async fn pending(&self) -> Result<Vec<Request>, SpoolError> {
        let dir = self.dir.clone();
        crate::blocking(move || Ok(pending_in(&dir)?)).await
    }

    /// Marks a request as carried out, leaving `answer` for a requester that waits on it.
    pub async fn answer(&self, request: &Request, answer: &Answer) {
        let path = request.path.clone();
        let text = request.ticket.as_ref().map(|_| answer.encode());
        let _ = crate::blocking(move || {
            if let Some(text) = text {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                let tmp = path.with_file_name(format!(".{name}.answer.tmp"));
                crate::dirs::write_private(&tmp, text.as_bytes())?;
                std::fs::rename(&tmp, path.with_file_name(format!("{name}.answer")))?;
            }
            Ok(std::fs::remove_file(path)?)
        })
        .await;
        self.signals.answered.notify_waiters();
    }

    /// Marks a request as carried out without an answer.
    pub async fn done(&self, request: &Request) {
        self.answer(request, &Answer::default()).await
    }
}

/// Reads a request's file name: `<action>.<target>[.<ticket>]`.
fn parse_request(name: &str) -> Option<(ControlAction, ControlTarget, Option<String>)> {
    let mut parts = name.split('.');
    let action = ControlAction::parse(parts.next()?)?;
    let target = ControlTarget::parse(parts.next()?)?;
    let ticket = match parts.next() {
        None => None,
        Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            Some(t.to_string())
        }
        Some(_) => return None,
    };
    parts.next().is_none().then_some((action, target, ticket))
}

fn pending_in(dir: &Path) -> io::Result<Vec<Request>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let modified = entry.metadata().and_then(|m| m.modified()).ok();
        if name.ends_with(".answer") {
            remove_if_stale(&entry.path(), modified);
            continue;
        }
        let Some((action, target, ticket)) = parse_request(name) else {
            continue;
        };
        out.push((
            modified,
            Request {
                action,
                target,
                path: entry.path(),
                ticket,
            },
        ));
    }
    out.sort_by_key(|(m, _)| *m);
    Ok(out.into_iter().map(|(_, r)| r).collect())
}

fn remove_if_stale(path: &Path, modified: Option<SystemTime>) {
    let age = modified.and_then(|m| SystemTime::now().duration_since(m).ok());
    if age.is_some_and(|a| a > STALE_ANSWER) {
        let _ = std::fs::remove_file(path);
    }
}

/// An exclusive lock on the spool, held for the life of the relay process.
pub struct SpoolLock {
    _file: File,
}

impl SpoolLock {
    pub(crate) fn acquire(path: &Path) -> Result<SpoolLock, SpoolError> {
        let file = crate::dirs::private_file()
            .create(true)
            .truncate(false)
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
        let c = Control::new(d.path().to_path_buf(), Arc::default());
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
        let c = Control::new(d.path().to_path_buf(), Arc::default());
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

    /// A requester in this process is woken by the answer at once; the answer says what
    /// became of each message, and the request and the answer files are gone afterwards.
    #[tokio::test]
    async fn answers_reach_the_requester_at_once() {
        let d = tempfile::tempdir().unwrap();
        let c = Control::new(d.path().to_path_buf(), Arc::default());
        let id = MessageId::parse("0123456789abcdef").unwrap();
        let ticket = c
            .submit(ControlAction::Delete, &ControlTarget::One(id.clone()))
            .await
            .unwrap();
        // The relay's side: woken by the filing, carries it out, answers.
        let relay = c.clone();
        let relay_id = id.clone();
        let relay_task = tokio::spawn(async move {
            relay.filed().await;
            let reqs = relay.pending().await.unwrap();
            assert_eq!(reqs.len(), 1);
            assert!(reqs[0].ticket.is_some());
            assert_eq!(reqs[0].target, ControlTarget::One(relay_id.clone()));
            let answer = Answer {
                outcomes: vec![Outcome {
                    id: relay_id,
                    kind: OutcomeKind::UnknownId,
                    detail: "no message\x1b here\nreally".into(),
                }],
            };
            relay.answer(&reqs[0], &answer).await;
        });
        let started = std::time::Instant::now();
        let answer = c
            .wait(&ticket, Duration::from_secs(10))
            .await
            .unwrap()
            .expect("an answer");
        relay_task.await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!answer.is_success());
        assert_eq!(answer.outcomes[0].id, id);
        assert_eq!(answer.outcomes[0].kind, OutcomeKind::UnknownId);
        assert!(!answer.outcomes[0].detail.contains('\n'));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    /// Without an answer the wait ends at its deadline, leaving the request filed.
    #[tokio::test]
    async fn a_wait_without_answer_ends_at_the_deadline() {
        let d = tempfile::tempdir().unwrap();
        let c = Control::new(d.path().to_path_buf(), Arc::default());
        let ticket = c
            .submit(ControlAction::Retry, &ControlTarget::All)
            .await
            .unwrap();
        let got = c.wait(&ticket, Duration::from_millis(200)).await.unwrap();
        assert_eq!(got, None);
        assert!(ticket.path.exists());
        // Answer files never count as requests.
        std::fs::write(d.path().join("retry.all.abc.answer"), ANSWER_HEADER).unwrap();
        assert_eq!(c.pending().await.unwrap().len(), 1);
    }

    #[test]
    fn request_names() {
        let id = MessageId::parse("0123456789abcdef").unwrap();
        assert_eq!(
            parse_request("retry.0123456789abcdef"),
            Some((ControlAction::Retry, ControlTarget::One(id.clone()), None))
        );
        assert_eq!(
            parse_request("delete.all.1fx2"),
            Some((
                ControlAction::Delete,
                ControlTarget::All,
                Some("1fx2".into())
            ))
        );
        for bad in [
            "delete.all.1fx2.answer",
            "delete.all..",
            "delete.all.a/b",
            "purge.all",
            ".retry.all.tmp",
        ] {
            assert_eq!(parse_request(bad), None, "{bad}");
        }
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
