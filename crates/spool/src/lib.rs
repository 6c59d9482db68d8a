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
//! - `failed/<id>`: an envelope whose delivery failed for good, kept for the admin.
//! - `control/<action>.<id|all>[.<ticket>]`: requests from the queue command line and the admin
//!   server to a running relay, and the relay's answers (see `control.rs`); `lock`: held by
//!   the running relay so only one process owns the spool.
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
//! - Every operation is async and does its file work as one blocking task on the blocking pool
//!   (or a few side by side), never as a chain of small ones: hops between threads cost more
//!   than the syscalls they carry, and the runtime's threads never wait for the disk. Only
//!   [`Spool::open`], [`Spool::lock`] and [`Spool::list_blocking`] are synchronous, for start-up
//!   and for synchronous callers.

#![warn(missing_docs)]

pub mod control;
mod dirs;
pub mod events;
mod fsync;
mod id;
mod recovery;

pub use control::{
    Answer as ControlAnswer, Control, ControlAction, ControlTarget, Outcome as ControlOutcome,
    OutcomeKind, Request as ControlRequest, SpoolLock, Ticket as ControlTicket,
};
pub use dirs::{create_dir_durable, private_file, sync_dir};
pub use events::{AttemptOutcome, Event, Progress, RecipientResult};
pub use id::MessageId;

use fsync::DirSync;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What we know about a message besides its bytes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    /// The queue id; assigned by [`Spool::receive`], which replaces whatever the caller put here.
    pub id: MessageId,
    /// Milliseconds since the Unix epoch.
    pub received_at_ms: u64,
    /// The account whose route delivers the message.
    pub account: String,
    /// The device that sent it (its name in the configuration).
    pub device: String,
    /// The listener it arrived on.
    pub listener: String,
    /// The device's address.
    pub client_ip: String,
    /// The name the device gave in EHLO or HELO.
    pub helo: String,
    /// The envelope sender we will use upstream (after any rewrite).
    pub sender: String,
    /// The sender the device gave, when it was rewritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_sender: Option<String>,
    /// Every recipient the device gave, in its order.
    pub recipients: Vec<String>,
    /// The message has bytes >= 0x80 (upstream needs BODY=8BITMIME).
    pub eight_bit: bool,
    /// The device asked for SMTPUTF8 (addresses with non-ASCII characters).
    pub smtputf8: bool,
    /// Size of the data file in bytes.
    pub size: u64,
    /// CRC-32C of the data file, checked by recovery (filled in at commit).
    pub crc32c: u32,
    /// The inbound session that received the message (to match log lines; 0 for our own).
    #[serde(default)]
    pub session: u64,
    /// This message is a failure notice we generated (no notice is ever sent about a notice).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub notice: bool,
}

impl Envelope {
    /// When the message was accepted.
    pub fn received_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.received_at_ms)
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// No space (ENOSPC) or quota exceeded: new mail must get 452 4.3.1.
    #[error("spool storage is full: {0}")]
    Full(io::Error),
    /// Any other file system error.
    #[error("spool I/O error: {0}")]
    Io(io::Error),
    /// An envelope whose first line does not parse.
    #[error("spool entry {id} is unreadable: {detail}")]
    Corrupt {
        /// The message's queue id.
        id: MessageId,
        /// What is wrong with it.
        detail: String,
    },
    /// No message with this id in the area asked for.
    #[error("no message {0} in the spool")]
    NotFound(MessageId),
    /// Another process holds the spool's lock.
    #[error("the spool is in use by another smtp2oauth process (lock {0})")]
    Locked(String),
}

impl From<io::Error> for SpoolError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => SpoolError::Full(e),
            _ => SpoolError::Io(e),
        }
    }
}

impl SpoolError {
    /// True when the disk (or the quota) is full: the only spool failure a device should hear
    /// as "insufficient storage" rather than "local error".
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
    queue: PathBuf,
    failed: PathBuf,
    control: PathBuf,
    /// Wakes the relay and requesters in this process (see `control.rs`).
    control_signals: Arc<control::Signals>,
    data_sync: DirSync,
    queue_sync: DirSync,
    failed_sync: DirSync,
    /// fsync files and directories (off only to measure what durability costs).
    fsync: bool,
    /// The last free-space reading and when it was taken (see [`FREE_SPACE_FRESH`]).
    free_space: std::sync::Mutex<Option<(std::time::Instant, u64)>>,
}

/// How long a free-space reading is used again. Sessions ask at every MAIL; a reading a
/// fraction of a second old decides "enough room?" just as well, and saves each MAIL a hand-off
/// to the blocking pool. A write that finds the disk full is refused whatever the reading said.
const FREE_SPACE_FRESH: Duration = Duration::from_millis(500);

/// The states a message can be in, each a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// `queue/`: accepted, delivery not settled.
    Queue,
    /// `failed/`: refused or expired, kept for the admin.
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
        let queue = root.join("queue");
        let failed = root.join("failed");
        let control = root.join("control");
        // The directories must be durable before the first message is: a message fsynced into
        // a directory whose own name is not durable is lost with it.
        for d in [&root, &data, &queue, &failed, &control] {
            create_dir_durable(d, fsync)?;
        }
        Ok(Spool {
            inner: Arc::new(Inner {
                data_sync: DirSync::open(&data, fsync)?,
                queue_sync: DirSync::open(&queue, fsync)?,
                failed_sync: DirSync::open(&failed, fsync)?,
                root,
                data,
                queue,
                failed,
                control,
                control_signals: Arc::default(),
                fsync,
                free_space: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The spool's directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Removes what a crash left behind: envelopes that were never committed, and data files
    /// without an envelope (their devices never got 250). Returns how many files were removed.
    pub async fn clean_orphans(&self) -> Result<usize, SpoolError> {
        let spool = self.clone();
        blocking(move || recovery::clean_orphans(&spool)).await
    }

    /// Starts receiving a message. The envelope's `id` is assigned here; `size`, `crc32c` and
    /// `eight_bit` are filled in at commit.
    pub async fn receive(&self, envelope: Envelope) -> Result<Incoming, SpoolError> {
        let id = MessageId::new();
        let mut envelope = envelope;
        envelope.id = id.clone();
        // The data file gets its final name: until its envelope is in queue/, it is an orphan
        // that recovery removes, so no rename is needed to mark it complete. It is created only
        // when the message outgrows its buffer, or at commit.
        let path = self.data_path(&id);
        Ok(Incoming {
            spool: self.clone(),
            id,
            envelope,
            path,
            buf: Vec::new(),
            file: None,
            on_disk: false,
            written: 0,
            crc: 0,
        })
    }

    /// Where the bytes of message `id` are.
    pub fn data_path(&self, id: &MessageId) -> PathBuf {
        self.inner.data.join(id.as_str())
    }

    fn area_dir(&self, area: Area) -> &Path {
        match area {
            Area::Queue => &self.inner.queue,
            Area::Failed => &self.inner.failed,
        }
    }

    fn area_sync(&self, area: Area) -> &DirSync {
        match area {
            Area::Queue => &self.inner.queue_sync,
            Area::Failed => &self.inner.failed_sync,
        }
    }

    /// Removes a message for good (delivered, or refused while its device waited): envelope
    /// first (after which the message no longer exists), then its data.
    pub async fn remove(&self, id: &MessageId, area: Area) -> Result<(), SpoolError> {
        let env = self.area_dir(area).join(id.as_str());
        let data = self.data_path(id);
        let owned_id = id.clone();
        blocking(move || {
            std::fs::remove_file(&env).map_err(|e| not_found_as(e, &owned_id))?;
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
            if let Err(e) = spool.area_sync(area).sync().await {
                tracing::warn!(error = %e, "cannot sync the spool directory after a removal");
            }
        });
        Ok(())
    }

    /// Reads an envelope and its event lines.
    pub async fn read(&self, id: &MessageId, area: Area) -> Result<Queued, SpoolError> {
        let path = self.area_dir(area).join(id.as_str());
        let data_path = self.data_path(id);
        let id = id.clone();
        blocking(move || {
            let text = std::fs::read(&path).map_err(|e| not_found_as(e, &id))?;
            let (envelope, events) = parse_envelope_file(&id, &text)?;
            let progress = Progress::from_events(&envelope, &events);
            Ok(Queued {
                data_path,
                envelope,
                events,
                progress,
                area,
            })
        })
        .await
    }

    /// True while `id`'s envelope is in `queue/`.
    pub async fn is_queued(&self, id: &MessageId) -> bool {
        let path = self.inner.queue.join(id.as_str());
        blocking(move || Ok(path.exists())).await.unwrap_or(false)
    }

    /// Lists the ids in an area, oldest first (ids sort by arrival time).
    pub async fn list(&self, area: Area) -> Result<Vec<MessageId>, SpoolError> {
        let spool = self.clone();
        blocking(move || spool.list_blocking(area)).await
    }

    /// [`Spool::list`] for synchronous callers (the collector that reports the queue's depth
    /// at scrape time): it reads the directory on the calling thread.
    pub fn list_blocking(&self, area: Area) -> Result<Vec<MessageId>, SpoolError> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(self.area_dir(area))? {
            if let Some(id) = entry?.file_name().to_str().and_then(MessageId::parse) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Appends one event line to a message's envelope file and makes it durable.
    pub async fn append_event(
        &self,
        id: &MessageId,
        area: Area,
        event: &Event,
    ) -> Result<(), SpoolError> {
        let mut line =
            serde_json::to_vec(event).map_err(|e| SpoolError::Io(io::Error::other(e)))?;
        line.push(b'\n');
        let path = self.area_dir(area).join(id.as_str());
        let fsync = self.inner.fsync;
        let owned_id = id.clone();
        blocking(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| not_found_as(e, &owned_id))?;
            f.write_all(&line)?;
            if fsync {
                f.sync_data()?;
            }
            Ok(())
        })
        .await
    }

    /// Moves a message between areas (e.g. to `failed/`), durably.
    pub async fn move_to(&self, id: &MessageId, from: Area, to: Area) -> Result<(), SpoolError> {
        if from == to {
            return Ok(());
        }
        let src = self.area_dir(from).join(id.as_str());
        let dst = self.area_dir(to).join(id.as_str());
        let owned_id = id.clone();
        blocking(move || {
            std::fs::rename(&src, &dst).map_err(|e| not_found_as(e, &owned_id))?;
            Ok(())
        })
        .await?;
        self.area_sync(to).sync().await?;
        Ok(())
    }

    /// The control directory (requests from the queue command line).
    pub fn control(&self) -> Control {
        Control::new(
            self.inner.control.clone(),
            self.inner.control_signals.clone(),
        )
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
    /// A reading at most [`FREE_SPACE_FRESH`] old is reused.
    pub async fn free_space(&self) -> Option<u64> {
        let cached = *self
            .inner
            .free_space
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((at, bytes)) = cached
            && at.elapsed() < FREE_SPACE_FRESH
        {
            return Some(bytes);
        }
        let root = self.inner.root.clone();
        let bytes = blocking(move || Ok(smtp2oauth_platform::free_space(&root)?))
            .await
            .ok()?;
        *self
            .inner
            .free_space
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((std::time::Instant::now(), bytes));
        Some(bytes)
    }

    /// Checks that new mail can be written: creates and removes a file where message bytes go.
    pub async fn check_writable(&self) -> Result<(), SpoolError> {
        let probe = self
            .inner
            .data
            .join(format!(".probe-{}", std::process::id()));
        blocking(move || {
            std::fs::write(&probe, b"ok")?;
            std::fs::remove_file(&probe)?;
            Ok(())
        })
        .await
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

/// An envelope file's first line and its readable event lines. Torn or unreadable event lines
/// (a crash during an append) are skipped, not fatal.
fn parse_envelope_file(id: &MessageId, text: &[u8]) -> Result<(Envelope, Vec<Event>), SpoolError> {
    let mut lines = text.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let envelope: Envelope = serde_json::from_slice(first).map_err(|e| SpoolError::Corrupt {
        id: id.clone(),
        detail: e.to_string(),
    })?;
    let events = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    Ok((envelope, events))
}

/// A missing file means a missing message; anything else is an I/O error.
fn not_found_as(e: io::Error, id: &MessageId) -> SpoolError {
    if e.kind() == io::ErrorKind::NotFound {
        SpoolError::NotFound(id.clone())
    } else {
        e.into()
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

/// How much of a message is held in memory before it goes to its data file: a typical scan
/// or alert is written in one go at commit, with the flush it needs anyway, and a large one in
/// 256 KiB steps (each a hand-off to the blocking pool; 64 KiB steps were measurably slower).
const BUFFER: usize = 256 * 1024;

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
    /// CRC-32C of the bytes written so far.
    crc: u32,
}

impl Incoming {
    /// The queue id the message will have.
    pub fn id(&self) -> &MessageId {
        &self.id
    }

    /// The envelope as it will be committed (size and checksum still open).
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Bytes received so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Adds bytes to the message (buffered; written to disk in large steps).
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        self.buf.extend_from_slice(bytes);
        self.crc = crc32c::crc32c_append(self.crc, bytes);
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
        self.envelope.size = self.written;
        self.envelope.crc32c = self.crc;
        self.envelope.eight_bit = eight_bit;
        let mut env =
            serde_json::to_vec(&self.envelope).map_err(|e| SpoolError::Io(io::Error::other(e)))?;
        env.push(b'\n');
        let inner = self.spool.inner.clone();
        let dest = inner.queue.join(self.id.as_str());

        // One round: the data file and the envelope are written, named and flushed while both
        // directories are flushed, all side by side. A directory's flush starts only once the
        // name it must cover exists.
        let (data_named, data_named_rx) = tokio::sync::oneshot::channel::<()>();
        let (env_named, env_named_rx) = tokio::sync::oneshot::channel::<()>();
        let data_done = self.write_data(data_named);
        let env_done = write_envelope(&inner, &self.id, env, env_named);
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

    /// The data file's part of a commit: the last bytes written and flushed; `named` is told
    /// once the file exists under its name.
    fn write_data(
        &mut self,
        named: tokio::sync::oneshot::Sender<()>,
    ) -> impl Future<Output = Result<(), SpoolError>> + use<> {
        let buf = std::mem::take(&mut self.buf);
        let file = self.file.take();
        let path = self.path.clone();
        let fsync = self.spool.inner.fsync;
        blocking(move || {
            use std::io::Write;
            let mut file = match file {
                Some(f) => f,
                None => create_new(&path)?,
            };
            let _ = named.send(());
            file.write_all(&buf)?;
            if fsync {
                // fdatasync: the bytes and the length needed to read them back, not timestamps.
                file.sync_data()?;
            }
            Ok(())
        })
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

/// The envelope's part of a commit: written as `<id>.tmp`, renamed into place and flushed;
/// `named` is told once the final name exists.
fn write_envelope(
    inner: &Inner,
    id: &MessageId,
    env: Vec<u8>,
    named: tokio::sync::oneshot::Sender<()>,
) -> impl Future<Output = Result<(), SpoolError>> + use<> {
    let tmp = inner.queue.join(format!("{id}.tmp"));
    let dest = inner.queue.join(id.as_str());
    let fsync = inner.fsync;
    blocking(move || {
        use std::io::Write;
        let mut f = create_new(&tmp)?;
        let written = f
            .write_all(&env)
            .and_then(|()| std::fs::rename(&tmp, &dest));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        let _ = named.send(());
        if fsync {
            f.sync_data()?;
        }
        Ok(())
    })
}

/// A new private file (mode 0600): queued mail is for the relay's user only.
fn create_new(path: &Path) -> io::Result<std::fs::File> {
    dirs::private_file().create_new(true).open(path)
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
    /// Where the message's bytes are.
    pub data_path: PathBuf,
    /// The envelope (the file's first line).
    pub envelope: Envelope,
    /// The events appended since, in order.
    pub events: Vec<Event>,
    /// The state derived from the envelope and the events.
    pub progress: Progress,
    /// The area the envelope was read from.
    pub area: Area,
}

impl Queued {
    /// The message's queue id.
    pub fn id(&self) -> &MessageId {
        &self.envelope.id
    }
}

#[cfg(test)]
mod tests;
