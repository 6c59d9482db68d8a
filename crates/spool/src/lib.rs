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
//!   streams DATA (a small message is held in memory until commit and written in one go).
//! - `queue/<id>`: the envelope of an accepted message. Its first line is the envelope as JSON;
//!   later lines are events appended by delivery (attempts, results), one JSON object per line.
//!   It is written as `queue/<id>.tmp` and renamed, so a reader never sees half an envelope.
//! - `incoming/`: where older versions wrote envelopes before the rename; emptied at recovery.
//! - `failed/<id>`: an envelope whose delivery failed for good, kept for the admin.
//! - `control/<action>.<id>`: requests from the queue command line to a running relay
//!   (see `control.rs`); `lock`: held by the running relay so only one process owns the spool.
//!
//! # Invariants
//! - A device gets 250 only after [`Incoming::commit`] returned, and commit returns only after
//!   four syncs have all finished: fdatasync of the data file, fdatasync of the envelope, fsync
//!   of `data/` and fsync of `queue/` (each directory sync started after the name it covers was
//!   created). They run side by side, in one round: a commit costs one disk flush, not two.
//! - So until commit returns, an envelope in `queue/` may be a name without durable content.
//!   Recovery removes what shows a torn commit: a first line without its newline, a data file
//!   missing or shorter than the envelope's `size` (data files are never written after commit),
//!   or, for a message without event lines, data that does not match the envelope's CRC-32C
//!   (some filesystems can make a length durable before the bytes under it). Such a message was
//!   never acknowledged to a device, and neither was a data file without an envelope in
//!   `queue/` or `failed/`. What recovery cannot judge (an unreadable file, a complete line
//!   that does not parse) is left in place and logged: it may be acknowledged mail.
//! - Event lines appended after acceptance may be torn by a crash; a torn line is ignored.
//! - Directory fsyncs are shared between concurrent commits (group commit), never skipped.
//! - Every spool operation is one blocking task on the blocking pool (or a few run side by side),
//!   never a chain of small ones: hops between threads cost more than the syscalls they carry.

pub mod control;
mod crc;
pub mod events;
mod fsync;
mod id;

pub use control::{Control, ControlAction, Request as ControlRequest, SpoolLock};
pub use events::{Event, Progress, RecipientResult};
pub use id::MessageId;

use crc::{Crc32c, crc32c_of_file};
use fsync::DirSync;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// CRC-32C of the data file (checked by recovery; absent in envelopes of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<u32>,
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
        let mut keep = std::collections::HashSet::new();
        // Envelopes written by older versions before their rename into queue/.
        for entry in std::fs::read_dir(&self.inner.incoming)? {
            let entry = entry?;
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
        for entry in std::fs::read_dir(&self.inner.queue)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                // An envelope being written when we stopped: its commit never returned.
                std::fs::remove_file(entry.path())?;
                removed += 1;
                continue;
            }
            if MessageId::parse(name).is_none() {
                continue;
            }
            match self.whole(name) {
                Whole::Yes => {}
                Whole::Torn(why) => {
                    tracing::warn!(queue_id = %name, reason = %why, "envelope from an interrupted commit removed (never acknowledged)");
                    std::fs::remove_file(entry.path())?;
                    removed += 1;
                }
                Whole::Unknown(why) => {
                    // Not what a crash leaves: an acknowledged message may be behind it, so it
                    // stays (its data file too) for the admin; delivery reports it.
                    tracing::error!(queue_id = %name, reason = %why, "cannot check a queued message; left in place");
                    keep.insert(name.to_string());
                }
            }
        }
        for entry in std::fs::read_dir(&self.inner.data)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let id = name.trim_end_matches(".part");
            if name.ends_with(".part")
                || (!keep.contains(id)
                    && !self.inner.queue.join(id).exists()
                    && !self.inner.failed.join(id).exists())
            {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Checks that a queued envelope was committed whole: see the invariants above. Only what
    /// an interrupted commit leaves is `Torn`; anything else (an unreadable file, a line that
    /// is complete but does not parse) is `Unknown` and never deleted.
    fn whole(&self, id: &str) -> Whole {
        let text = match std::fs::read(self.inner.queue.join(id)) {
            Ok(t) => t,
            Err(e) => return Whole::Unknown(format!("the envelope is unreadable: {e}")),
        };
        let Some(end) = text.iter().position(|&b| b == b'\n') else {
            return Whole::Torn("the envelope is incomplete".into());
        };
        let envelope: Envelope = match serde_json::from_slice(&text[..end]) {
            Ok(e) => e,
            // A torn write that happens to contain a newline (e.g. zeros, then garbage).
            Err(_) if text[..end].contains(&0) => {
                return Whole::Torn("the envelope holds bytes never written".into());
            }
            Err(e) => return Whole::Unknown(format!("the envelope does not parse: {e}")),
        };
        let data = self.inner.data.join(id);
        match std::fs::metadata(&data) {
            Ok(m) if m.len() < envelope.size => {
                return Whole::Torn(format!(
                    "the data file has {} bytes, the envelope says {}",
                    m.len(),
                    envelope.size
                ));
            }
            Ok(m) if m.len() > envelope.size => {
                return Whole::Unknown(format!(
                    "the data file has {} bytes, more than the envelope's {}",
                    m.len(),
                    envelope.size
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Whole::Torn("the data file is missing".into());
            }
            Err(e) => return Whole::Unknown(format!("the data file is unreadable: {e}")),
        }
        // The length can reach the disk before the bytes under it on some filesystems (ext4
        // with data=writeback): a message never attempted has its checksum checked too. One
        // with an event line was handed to delivery, which only happens after its commit.
        let attempted = text.len() > end + 1;
        if let Some(expected) = envelope.crc32c
            && !attempted
        {
            match crc32c_of_file(&data) {
                Ok(actual) if actual == expected => {}
                Ok(_) => return Whole::Torn("the data file's checksum does not match".into()),
                Err(e) => return Whole::Unknown(format!("the data file is unreadable: {e}")),
            }
        }
        Whole::Yes
    }

    /// Starts receiving a message. The envelope's `size` and `eight_bit` are filled in at commit.
    pub async fn receive(&self, envelope: Envelope) -> Result<Incoming, SpoolError> {
        let id = MessageId::new();
        let mut envelope = envelope;
        envelope.id = id.to_string();
        // The data file gets its final name: until its envelope is in queue/, it is an orphan
        // that recovery removes, so no rename is needed to mark it complete. It is created only
        // when the message outgrows its buffer, or at commit.
        let path = self.inner.data.join(id.as_str());
        Ok(Incoming {
            spool: self.clone(),
            id,
            envelope,
            path,
            buf: Vec::new(),
            file: None,
            on_disk: false,
            written: 0,
            crc: Crc32c::new(),
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
        let data = self.data_path(id);
        let owned_id = id.to_string();
        blocking(move || {
            match std::fs::remove_file(&env) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(SpoolError::NotFound(owned_id));
                }
                Err(e) => return Err(e.into()),
            }
            match std::fs::remove_file(&data) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await?;
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

    /// True while `id`'s envelope is in `queue/`.
    pub fn is_queued(&self, id: &str) -> bool {
        check_id(id).is_ok() && self.inner.queue.join(id).exists()
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
        let fsync = self.inner.fsync;
        let owned_id = id.to_string();
        blocking(move || {
            use std::io::Write;
            let mut f = match std::fs::OpenOptions::new().append(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(SpoolError::NotFound(owned_id));
                }
                Err(e) => return Err(e.into()),
            };
            f.write_all(&line)?;
            if fsync {
                f.sync_data()?;
            }
            Ok(())
        })
        .await
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

/// Runs one spool operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SpoolError::Io(io::Error::other(e)))?
}

fn check_id(id: &str) -> Result<(), SpoolError> {
    // Ids come from the queue CLI too: never let one name a path outside the spool.
    if MessageId::parse(id).is_none() {
        return Err(SpoolError::NotFound(id.to_string()));
    }
    Ok(())
}

/// How much of a message is held in memory before it goes to its data file: a typical scan
/// or alert is written in one go at commit, with the flush it needs anyway, and a large one in
/// 256 KiB steps (each a hand-off to the blocking pool; 64 KiB steps were measurably slower).
const BUFFER: usize = 256 * 1024;

/// What recovery concludes about a queued envelope.
enum Whole {
    Yes,
    /// What an interrupted commit leaves: never acknowledged, removed.
    Torn(String),
    /// Cannot tell: left in place.
    Unknown(String),
}

/// A message being received. Dropping it without [`Incoming::commit`] removes its file.
pub struct Incoming {
    spool: Spool,
    id: MessageId,
    envelope: Envelope,
    path: PathBuf,
    /// Bytes not yet written to the data file (at most [`BUFFER`] between writes).
    buf: Vec<u8>,
    /// The data file, once the message outgrew the buffer.
    file: Option<std::fs::File>,
    /// The data file may exist (so dropping must remove it).
    on_disk: bool,
    written: u64,
    crc: Crc32c,
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
        self.buf.extend_from_slice(bytes);
        self.crc.update(bytes);
        self.written += bytes.len() as u64;
        if self.buf.len() >= BUFFER {
            self.flush_buffer().await?;
        }
        Ok(())
    }

    /// Writes the buffer to the data file (creating it the first time), in one blocking task.
    async fn flush_buffer(&mut self) -> Result<(), SpoolError> {
        let buf = std::mem::take(&mut self.buf);
        let file = self.file.take();
        let path = self.path.clone();
        self.on_disk = true;
        let (file, mut buf) = blocking(move || {
            use std::io::Write;
            let mut file = match file {
                Some(f) => f,
                None => create_new(&path)?,
            };
            file.write_all(&buf)?;
            Ok((file, buf))
        })
        .await?;
        buf.clear();
        self.buf = buf;
        self.file = Some(file);
        Ok(())
    }

    /// Makes the message durable and accepted. Only after this returns may the device get 250.
    pub async fn commit(mut self, eight_bit: bool) -> Result<Queued, SpoolError> {
        self.on_disk = true;
        let id = self.id.to_string();
        let inner = self.spool.inner.clone();
        self.envelope.size = self.written;
        self.envelope.crc32c = Some(self.crc.value());
        self.envelope.eight_bit = eight_bit;
        let mut env =
            serde_json::to_vec(&self.envelope).map_err(|e| SpoolError::Io(io::Error::other(e)))?;
        env.push(b'\n');
        let fsync = inner.fsync;
        let tmp = inner.queue.join(format!("{id}.tmp"));
        let dest = inner.queue.join(&id);

        // One round: the data file and the envelope are written, named and flushed while both
        // directories are flushed, all side by side. A directory's flush starts only once the
        // name it must cover exists.
        let (data_named, data_named_rx) = tokio::sync::oneshot::channel::<()>();
        let (env_named, env_named_rx) = tokio::sync::oneshot::channel::<()>();
        let buf = std::mem::take(&mut self.buf);
        let file = self.file.take();
        let path = self.path.clone();
        let data_done = blocking(move || {
            use std::io::Write;
            let mut file = match file {
                Some(f) => f,
                None => create_new(&path)?,
            };
            let _ = data_named.send(());
            file.write_all(&buf)?;
            if fsync {
                // fdatasync: the bytes and the length needed to read them back, not timestamps.
                file.sync_data()?;
            }
            Ok(())
        });
        let (tmp2, dest2) = (tmp.clone(), dest.clone());
        let env_done = blocking(move || {
            use std::io::Write;
            let mut f = create_new(&tmp2)?;
            let written = f
                .write_all(&env)
                .and_then(|()| std::fs::rename(&tmp2, &dest2));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp2);
                return Err(e.into());
            }
            let _ = env_named.send(());
            if fsync {
                f.sync_data()?;
            }
            Ok(())
        });
        let named = |e: tokio::sync::oneshot::error::RecvError| {
            SpoolError::Io(io::Error::other(format!("commit interrupted: {e}")))
        };
        let data_dir = async {
            data_named_rx.await.map_err(named)?;
            inner.data_sync.sync().await.map_err(SpoolError::from)
        };
        let queue_dir = async {
            env_named_rx.await.map_err(named)?;
            inner.queue_sync.sync().await.map_err(SpoolError::from)
        };
        let (d, e, dd, qd) = tokio::join!(data_done, env_done, data_dir, queue_dir);
        // The file operations' own errors first: a directory flush that never started only
        // says that one of them failed.
        if let Err(err) = d.and(e).and(dd).and(qd) {
            let _ = std::fs::remove_file(&dest);
            return Err(err);
        }
        let queued = Queued {
            data_path: self.path.clone(),
            progress: Progress::from_events(&self.envelope, &[]),
            envelope: self.envelope.clone(),
            events: Vec::new(),
            area: Area::Queue,
        };
        // Committed: the data file is now owned by the queue entry.
        self.on_disk = false;
        Ok(queued)
    }

    /// Gives up on the message (too large, device vanished): removes its file.
    pub async fn abort(mut self) {
        self.file.take();
        if self.on_disk {
            self.on_disk = false;
            let path = self.path.clone();
            let _ = blocking(move || Ok(std::fs::remove_file(path)?)).await;
        }
    }
}

fn create_new(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.on_disk {
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
