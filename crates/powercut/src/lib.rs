//! A filesystem that loses power: the spool's durability, tested the way a disk fails.
//!
//! Why: killing the relay with SIGKILL leaves the kernel's page cache intact, so it proves
//! nothing about fsync. A power cut keeps only what was made durable. This crate is a FUSE
//! filesystem held in memory that knows, for every file and directory, what is durable under
//! the strict POSIX rules (see `model.rs`), and on [`PowerCutFs::cut`] throws the rest away.
//! The rig (`smtp2oauth-bench power-cut`) runs the relay with its store on it, cuts, kills the
//! relay, remounts what survived and restarts the relay on it.
//!
//! Test-only: never a dependency of the relay binary.
//!
//! A cut can be made by the caller at any moment, or armed as a [`Trigger`] that fires inside
//! the filesystem at an exact operation (the 3rd fsync of a file under `/spool/data/`, before
//! it is carried out, say), so the moments that matter (between the body and the 250, during
//! delivery, during removal) are hit on purpose rather than by luck. After a cut every request
//! fails with EIO until the filesystem is unmounted and mounted again.

mod fs;
pub mod model;

pub use model::{FsError, Kind, Model, Stats};

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The operations a trigger can wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Create,
    Mkdir,
    Write,
    Read,
    Truncate,
    SetAttr,
    /// fsync or fdatasync of a file.
    Fsync,
    /// fsync of a directory.
    FsyncDir,
    /// The target path is the new name.
    Rename,
    /// unlink or rmdir.
    Unlink,
}

/// Whether a trigger cuts before the operation (it never happens) or right after it (it
/// happened, and the program may or may not have heard so).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    Before,
    After,
}

/// Cut at the `nth` (from 1) operation `op` on a path containing `path_contains`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trigger {
    pub op: Op,
    pub path_contains: String,
    pub nth: u32,
    pub when: When,
}

/// A cut that happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutEvent {
    /// What caused it, e.g. "before Fsync of /store/spool/data/0001".
    pub reason: String,
    /// Cuts so far, this one included.
    pub number: u64,
}

/// Called inside the filesystem at the moment of a cut (e.g. to SIGKILL the program using it).
/// It must not touch the filesystem.
pub type CutHook = Arc<dyn Fn(&CutEvent) + Send + Sync>;

struct State {
    model: Model,
    powered: bool,
    trigger: Option<Trigger>,
    /// Operations that matched the armed trigger so far.
    matched: u32,
    last_cut: Option<CutEvent>,
    hook: Option<CutHook>,
}

impl State {
    fn trigger_fires(&mut self, op: Op, path: &str, when: When) -> bool {
        let Some(t) = &self.trigger else {
            return false;
        };
        if t.op != op || t.when != when || !path.contains(&t.path_contains) {
            return false;
        }
        self.matched += 1;
        self.matched >= t.nth
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a request handler must not turn every later request into a second one.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The power goes: only what was durable is left, and nothing more is carried out.
    fn power_off(&self, st: &mut State, reason: String) {
        st.model.cut();
        st.powered = false;
        st.trigger = None;
        let event = CutEvent {
            reason,
            number: st.model.stats.cuts,
        };
        if let Some(hook) = &st.hook {
            hook(&event);
        }
        st.last_cut = Some(event);
    }
}

/// The filesystem, shared between its mounts and the rig. Cheap to clone.
#[derive(Clone)]
pub struct PowerCutFs {
    shared: Arc<Shared>,
}

impl Default for PowerCutFs {
    fn default() -> Self {
        Self::new()
    }
}

impl PowerCutFs {
    /// An empty filesystem, powered on.
    pub fn new() -> PowerCutFs {
        PowerCutFs {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    model: Model::new(),
                    powered: true,
                    trigger: None,
                    matched: 0,
                    last_cut: None,
                    hook: None,
                }),
            }),
        }
    }

    /// Mounts it at `at` (an existing empty directory) and powers it on. Needs /dev/fuse and
    /// root (or fusermount3).
    pub fn mount(&self, at: &Path) -> io::Result<Mount> {
        self.shared.lock().powered = true;
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("smtp2oauth-powercut".into()),
            fuser::MountOption::RW,
        ];
        config.n_threads = Some(1);
        let fs = fs::CutFs {
            shared: self.shared.clone(),
        };
        let session = fuser::spawn_mount(fs, at, &config)?;
        Ok(Mount {
            session: Some(session),
            path: at.to_path_buf(),
        })
    }

    /// Cuts the power now. Returns false if it was already off.
    pub fn cut(&self, reason: &str) -> bool {
        let mut st = self.shared.lock();
        if !st.powered {
            return false;
        }
        self.shared.power_off(&mut st, reason.to_string());
        true
    }

    /// Arms a trigger (replacing any other); it fires once.
    pub fn arm(&self, trigger: Trigger) {
        let mut st = self.shared.lock();
        st.trigger = Some(trigger);
        st.matched = 0;
    }

    pub fn disarm(&self) {
        self.shared.lock().trigger = None;
    }

    /// Sets what runs at each cut (see [`CutHook`]).
    pub fn on_cut(&self, hook: Option<CutHook>) {
        self.shared.lock().hook = hook;
    }

    /// Makes everything durable, as a quiet disk after sync(2) would.
    pub fn checkpoint(&self) {
        self.shared.lock().model.checkpoint();
    }

    pub fn is_powered(&self) -> bool {
        self.shared.lock().powered
    }

    pub fn last_cut(&self) -> Option<CutEvent> {
        self.shared.lock().last_cut.clone()
    }

    pub fn stats(&self) -> Stats {
        self.shared.lock().model.stats.clone()
    }

    /// A look at the model (e.g. from a test, without going through the kernel).
    pub fn inspect<R>(&self, f: impl FnOnce(&Model) -> R) -> R {
        f(&self.shared.lock().model)
    }
}

/// A mounted [`PowerCutFs`]; unmounted when dropped.
pub struct Mount {
    session: Option<fuser::BackgroundSession>,
    path: PathBuf,
}

impl Mount {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts (retrying while a process that just died still holds it) and waits for the
    /// request loop to end.
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let path = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes())
            .map_err(io::Error::other)?;
        loop {
            // SAFETY: umount2(2) with a NUL-terminated path we own.
            if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EBUSY) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                // Not mounted any more (or never was): the session below ends by itself.
                Some(libc::EINVAL) | Some(libc::ENOENT) => break,
                Some(libc::EBUSY) => {
                    // Still busy after 10 s: detach it so the next mount can go ahead; the
                    // request loop ends when its last user goes.
                    // SAFETY: as above.
                    unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
                    return Err(io::Error::other(format!(
                        "{} stayed busy; detached it",
                        self.path.display()
                    )));
                }
                _ => return Err(e),
            }
        }
        // Unmounted: the request loop sees the end of /dev/fuse and returns. When requests of a
        // killed process were still queued, the kernel aborts the connection instead, and the
        // loop ends with ECONNABORTED: that is the end of this mount too.
        match session.join() {
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
            r => r,
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = self.unmount_inner();
    }
}

/// Whether this machine can mount a FUSE filesystem here (root and /dev/fuse), and if not why.
pub fn can_mount() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse does not exist".into());
    }
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 && which("fusermount3").is_none() {
        return Err("not root and no fusermount3 on PATH (Debian package fuse3)".into());
    }
    Ok(())
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(bin))
            .find(|p| p.is_file())
    })
}
