//! The spool: where an accepted message lives until its delivery is settled.
//!
//! We promise devices what Postfix promises: once we answer 250, the message survives a crash,
//! a reboot and a long upstream outage. The spool keeps that promise with the simplest mechanism
//! that is obviously correct: a message is a file, a state is a directory, and every change of
//! state is an fsync followed by a rename.
//!
//! # Layout on disk (under `<store dir>/spool/`)
//! - `data/<id>`: the message bytes exactly as we will send them (our Received header, then the
//!   device's message with CRLF line ends). Written under its final name while the device
//!   streams DATA.
//! - `incoming/<id>`: an envelope being written; never seen by anyone else.
//! - `queue/<id>`: the envelope of an accepted message. Its first line is the envelope as JSON;
//!   later lines are events appended by delivery (attempts, results), one JSON object per line.
//!   **The rename of `incoming/<id>` to `queue/<id>` is the moment a message is accepted.**
//! - `failed/<id>`: an envelope whose delivery failed for good, kept for the admin.
//! - `control/<action>.<id>`: requests from the queue command line to a running relay
//!   (see `control.rs`); `lock`: held by the running relay so only one process owns the spool.
//!
//! # Invariants
//! - A device gets 250 only after [`Incoming::commit`] returned: the data file and the envelope
//!   are fsynced (side by side), the envelope is renamed into `queue/`, and `data/` and `queue/`
//!   are fsynced (side by side, shared with concurrent commits).
//! - A data file without an envelope in `queue/` or `failed/`, or an envelope in `queue/` without
//!   its data file, was never acknowledged; recovery removes it. An envelope whose last line is torn (crash during an append) is still valid: torn
//!   lines are ignored.
//! - Directory fsyncs are shared between concurrent commits (group commit), never skipped.

pub mod control;
pub mod events;
mod fsync;
mod id;

pub use control::{Control, ControlAction, Request as ControlRequest, SpoolLock};
pub use events::{Event, Progress, RecipientResult};
pub use id::MessageId;

use fsync::DirSync;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncWriteExt, BufWriter};

/// What we know about a message besides its bytes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    pub id: String,
    /// Milliseconds since the Unix epoch.
    pub received_at_ms: u64,
    pub account: String,
    pub device: String,
    pub listener: String,
    pub client_ip: String,
    pub helo: String,
    /// The envelope sender we will use upstream (after any rewrite).
    pub sender: String,
    /// The sender the device gave, when it was rewritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_sender: Option<String>,
    pub recipients: Vec<String>,
    /// The message has bytes >= 0x80 (upstream needs BODY=8BITMIME).
    pub eight_bit: bool,
    /// The device asked for SMTPUTF8 (addresses with non-ASCII characters).
    pub smtputf8: bool,
    /// Size of the data file in bytes.
    pub size: u64,
    /// The inbound session that received the message (to match log lines; 0 for our own).
    #[serde(default)]
    pub session: u64,
    /// This message is a failure notice we generated (no notice is ever sent about a notice).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub notice: bool,
}

impl Envelope {
    pub fn received_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.received_at_ms)
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// No space (ENOSPC) or quota exceeded: new mail must get 452 4.3.1.
    #[error("spool storage is full: {0}")]
    Full(io::Error),
    #[error("spool I/O error: {0}")]
    Io(io::Error),
    #[error("spool entry {id} is unreadable: {detail}")]
    Corrupt { id: String, detail: String },
    #[error("no message {0} in the spool")]
    NotFound(String),
    #[error("the spool is in use by another smtp2oauth process (lock {0})")]
    Locked(String),
}

impl From<io::Error> for SpoolError {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => SpoolError::Full(e),
            _ if e.kind() == io::ErrorKind::StorageFull => SpoolError::Full(e),
            _ => SpoolError::Io(e),
        }
    }
}

impl SpoolError {
    pub fn is_full(&self) -> bool {
        matches!(self, SpoolError::Full(_))
    }
}

/// A spool directory. Cheap to clone.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    data: PathBuf,
    incoming: PathBuf,
    queue: PathBuf,
    failed: PathBuf,
    control: PathBuf,
    data_sync: DirSync,
    queue_sync: DirSync,
    failed_sync: DirSync,
    /// fsync files and directories (off only to measure what durability costs).
    fsync: bool,
}

/// The states a message can be in, each a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    Queue,
    Failed,
}

impl Spool {
    /// Opens (creating if needed) the spool under `dir`.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        Self::open_with(dir, true)
    }

    /// Opens the spool; with `fsync = false` nothing is synced to disk (never in production).
    pub fn open_with(dir: &Path, fsync: bool) -> Result<Spool, SpoolError> {
        let root = dir.to_path_buf();
        let data = root.join("data");
        let incoming = root.join("incoming");
        let queue = root.join("queue");
        let failed = root.join("failed");
        let control = root.join("control");
        for d in [&root, &data, &incoming, &queue, &failed, &control] {
            std::fs::create_dir_all(d)?;
        }
        Ok(Spool {
            inner: Arc::new(Inner {
                data_sync: DirSync::open(&data, fsync)?,
                queue_sync: DirSync::open(&queue, fsync)?,
                failed_sync: DirSync::open(&failed, fsync)?,
                root,
                data,
                incoming,
                queue,
                failed,
                control,
                fsync,
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Removes what a crash left behind: envelopes that were never committed, and data files
    /// without an envelope (their devices never got 250). Returns how many files were removed.
    pub fn clean_orphans(&self) -> Result<usize, SpoolError> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.inner.incoming)? {
            let entry = entry?;
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
        // An envelope whose data file is missing: a crash after the rename, before both
        // directories were synced. Its device never got 250.
        for entry in std::fs::read_dir(&self.inner.queue)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if MessageId::parse(name).is_some() && !self.inner.data.join(name).exists() {
                tracing::warn!(queue_id = %name, "envelope without data from an interrupted commit removed (never acknowledged)");
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        for entry in std::fs::read_dir(&self.inner.data)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let id = name.trim_end_matches(".part");
            if name.ends_with(".part")
                || (!self.inner.queue.join(id).exists() && !self.inner.failed.join(id).exists())
            {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Starts receiving a message. The envelope's `size` and `eight_bit` are filled in at commit.
    pub async fn receive(&self, envelope: Envelope) -> Result<Incoming, SpoolError> {
        let id = MessageId::new();
        let mut envelope = envelope;
        envelope.id = id.to_string();
        // The data file gets its final name at once: until its envelope is in queue/, it is an
        // orphan that recovery removes, so no rename is needed to mark it complete.
        let path = self.inner.data.join(id.as_str());
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok(Incoming {
            spool: self.clone(),
            id,
            envelope,
            path,
            file: Some(BufWriter::with_capacity(64 * 1024, file)),
            written: 0,
        })
    }

    pub fn data_path(&self, id: &str) -> PathBuf {
        self.inner.data.join(id)
    }

    fn area_dir(&self, area: Area) -> &Path {
        match area {
            Area::Queue => &self.inner.queue,
            Area::Failed => &self.inner.failed,
        }
    }

    /// Removes a message for good (delivered, or refused while its device waited): envelope
    /// first (after which the message no longer exists), then its data.
    pub async fn remove(&self, id: &str, area: Area) -> Result<(), SpoolError> {
        check_id(id)?;
        let env = self.area_dir(area).join(id);
        match tokio::fs::remove_file(&env).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound(id.into()));
            }
            Err(e) => return Err(e.into()),
        }
        match tokio::fs::remove_file(self.data_path(id)).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        // Made durable in the background (shared with other syncs): a removal lost to a power
        // cut only means a delivered message is delivered again, so no caller waits for it.
        let spool = self.clone();
        tokio::spawn(async move {
            let r = match area {
                Area::Queue => spool.inner.queue_sync.sync().await,
                Area::Failed => spool.inner.failed_sync.sync().await,
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "cannot sync the spool directory after a removal");
            }
        });
        Ok(())
    }

    /// Reads an envelope and its event lines.
    pub async fn read(&self, id: &str, area: Area) -> Result<Queued, SpoolError> {
        check_id(id)?;
        let path = self.area_dir(area).join(id);
        let text = match tokio::fs::read(&path).await {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound(id.into()));
            }
            Err(e) => return Err(e.into()),
        };
        let mut lines = text.split(|&b| b == b'\n');
        let first = lines.next().unwrap_or_default();
        let envelope: Envelope =
            serde_json::from_slice(first).map_err(|e| SpoolError::Corrupt {
                id: id.into(),
                detail: e.to_string(),
            })?;
        // Torn or unreadable event lines (a crash during an append) are skipped, not fatal.
        let events: Vec<Event> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect();
        let progress = Progress::from_events(&envelope, &events);
        Ok(Queued {
            data_path: self.data_path(id),
            envelope,
            events,
            progress,
            area,
        })
    }

    /// Lists the ids in an area, oldest first (ids sort by arrival time).
    pub fn list(&self, area: Area) -> Result<Vec<String>, SpoolError> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(self.area_dir(area))? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str()
                && MessageId::parse(name).is_some()
            {
                ids.push(name.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Appends one event line to a message's envelope file and makes it durable.
    pub async fn append_event(
        &self,
        id: &str,
        area: Area,
        event: &Event,
    ) -> Result<(), SpoolError> {
        check_id(id)?;
        let mut line =
            serde_json::to_vec(event).map_err(|e| SpoolError::Io(io::Error::other(e)))?;
        line.push(b'\n');
        let path = self.area_dir(area).join(id);
        let mut f = match tokio::fs::OpenOptions::new().append(true).open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound(id.into()));
            }
            Err(e) => return Err(e.into()),
        };
        f.write_all(&line).await?;
        if self.inner.fsync {
            f.sync_data().await?;
        }
        Ok(())
    }

    /// Moves a message between areas (e.g. to `failed/`), durably.
    pub async fn move_to(&self, id: &str, from: Area, to: Area) -> Result<(), SpoolError> {
        check_id(id)?;
        if from == to {
            return Ok(());
        }
        let src = self.area_dir(from).join(id);
        let dst = self.area_dir(to).join(id);
        match tokio::fs::rename(&src, &dst).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound(id.into()));
            }
            Err(e) => return Err(e.into()),
        }
        match to {
            Area::Queue => self.inner.queue_sync.sync().await?,
            Area::Failed => self.inner.failed_sync.sync().await?,
        }
        Ok(())
    }
}

impl Spool {
    /// The control directory (requests from the queue command line).
    pub fn control(&self) -> Control {
        Control::new(self.inner.control.clone())
    }

    /// Takes the spool's lock for this process's lifetime; fails if another process holds it.
    pub fn lock(&self) -> Result<SpoolLock, SpoolError> {
        SpoolLock::acquire(&self.inner.root.join("lock"))
    }

    /// True when a running relay holds the spool's lock.
    pub fn is_locked(&self) -> bool {
        SpoolLock::held_by_other(&self.inner.root.join("lock"))
    }

    /// Bytes available to us on the spool's filesystem (None if unknown).
    pub fn free_space(&self) -> Option<u64> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.inner.root.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs fills the struct we own from a NUL-terminated path.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }

    /// Writes a whole message we compose ourselves (failure notices) and commits it.
    pub async fn write_message(
        &self,
        envelope: Envelope,
        bytes: &[u8],
    ) -> Result<Queued, SpoolError> {
        let eight_bit = bytes.iter().any(|&b| b >= 0x80);
        let mut inc = self.receive(envelope).await?;
        inc.write(bytes).await?;
        inc.commit(eight_bit).await
    }
}

fn check_id(id: &str) -> Result<(), SpoolError> {
    // Ids come from the queue CLI too: never let one name a path outside the spool.
    if MessageId::parse(id).is_none() {
        return Err(SpoolError::NotFound(id.to_string()));
    }
    Ok(())
}

/// A message being received. Dropping it without [`Incoming::commit`] removes its file.
pub struct Incoming {
    spool: Spool,
    id: MessageId,
    envelope: Envelope,
    path: PathBuf,
    file: Option<BufWriter<tokio::fs::File>>,
    written: u64,
}

impl Incoming {
    pub fn id(&self) -> &MessageId {
        &self.id
    }

    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| SpoolError::Io(io::Error::other("already committed")))?;
        f.write_all(bytes).await?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Makes the message durable and accepted. Only after this returns may the device get 250.
    pub async fn commit(mut self, eight_bit: bool) -> Result<Queued, SpoolError> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| SpoolError::Io(io::Error::other("already committed")))?;
        file.flush().await?;
        let file = file.into_inner().into_std().await;

        let id = self.id.to_string();
        let inner = self.spool.inner.clone();
        self.envelope.size = self.written;
        self.envelope.eight_bit = eight_bit;
        let mut env =
            serde_json::to_vec(&self.envelope).map_err(|e| SpoolError::Io(io::Error::other(e)))?;
        env.push(b'\n');
        let tmp = inner.incoming.join(&id);
        let fsync = inner.fsync;

        // 1. The data and the envelope become durable, side by side.
        let data_done =
            tokio::task::spawn_blocking(move || if fsync { file.sync_data() } else { Ok(()) });
        let env_path = tmp.clone();
        let env_done = tokio::task::spawn_blocking(move || -> io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&env_path)?;
            f.write_all(&env)?;
            if fsync {
                // fdatasync: the data and the size needed to read it back, not timestamps.
                f.sync_data()?;
            }
            Ok(())
        });
        let (d, e) = tokio::join!(data_done, env_done);
        let joined = d
            .map_err(io::Error::other)
            .and_then(|r| r)
            .and(e.map_err(io::Error::other).and_then(|r| r));
        if let Err(err) = joined {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(err.into());
        }

        // 2. The envelope enters queue/ (the moment of acceptance), then both directories are
        // made durable, side by side and shared with concurrent commits. If a crash leaves the
        // envelope's name durable but not the data's, the device never got 250 and recovery
        // removes the envelope (see `clean_orphans`).
        let dest = inner.queue.join(&id);
        if let Err(err) = tokio::fs::rename(&tmp, &dest).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(err.into());
        }
        let (d, q) = tokio::join!(inner.data_sync.sync(), inner.queue_sync.sync());
        if let Err(err) = d.and(q) {
            let _ = tokio::fs::remove_file(&dest).await;
            return Err(err.into());
        }
        let data_path = self.path.clone();
        let queued = Queued {
            data_path,
            progress: Progress::from_events(&self.envelope, &[]),
            envelope: self.envelope.clone(),
            events: Vec::new(),
            area: Area::Queue,
        };
        // Committed: the data file is now owned by the queue entry.
        self.path = PathBuf::new();
        Ok(queued)
    }

    /// Gives up on the message (too large, device vanished): removes its file.
    pub async fn abort(mut self) {
        self.file.take();
        if !self.path.as_os_str().is_empty() {
            let _ = tokio::fs::remove_file(&self.path).await;
            self.path = PathBuf::new();
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An accepted message: its envelope, the events recorded so far, and where its bytes are.
#[derive(Clone, Debug)]
pub struct Queued {
    pub data_path: PathBuf,
    pub envelope: Envelope,
    pub events: Vec<Event>,
    pub progress: Progress,
    pub area: Area,
}

impl Queued {
    pub fn id(&self) -> &str {
        &self.envelope.id
    }
}

#[cfg(test)]
mod tests;
