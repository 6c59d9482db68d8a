//! A real small filesystem that tests can fill: a tmpfs of a given size, mounted on a fresh
//! temporary directory and unmounted when dropped.
//!
//! A full disk cannot be faked honestly: `ENOSPC` arrives in the middle of a write, after a
//! file was created, or at a rename, and the code under test must leave nothing half-written
//! whichever it is. Mounting needs root (CI runs as root); where it cannot be done, a test
//! skips with a message, except when `SMTP2OAUTH_REQUIRE_CLIENTS` is set (as `.ci/run` does),
//! where skipping would hide the test: it fails instead.

use std::path::Path;
use std::process::Command;

/// A mounted tmpfs; unmounted (lazily) on drop.
#[derive(Debug)]
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`: `256k`, `3m`) on a new temporary
    /// directory. Err with the reason when it cannot.
    pub fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    /// [`Tmpfs::mount`], or None after saying why on stderr: the caller skips. Panics instead
    /// when `SMTP2OAUTH_REQUIRE_CLIENTS` is set, so CI cannot pass by skipping.
    pub fn mount_or_skip(size: &str, test: &str) -> Option<Tmpfs> {
        match Tmpfs::mount(size) {
            Ok(fs) => Some(fs),
            Err(why) if std::env::var_os("SMTP2OAUTH_REQUIRE_CLIENTS").is_some() => {
                panic!(
                    "{test}: cannot mount a tmpfs ({why}), and SMTP2OAUTH_REQUIRE_CLIENTS is set"
                )
            }
            Err(why) => {
                eprintln!("SKIPPED {test}: cannot mount a tmpfs ({why}); run as root");
                None
            }
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem up with one file, `name`, until a write fails with ENOSPC;
    /// returns how many bytes it took. Remove the file to give the space back.
    pub fn fill(&self, name: &str) -> u64 {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join(name)).expect("create the filler");
        let block = vec![0x5a_u8; 4096];
        let mut n = 0u64;
        loop {
            match f.write(&block) {
                Ok(0) => return n,
                Ok(k) => n += k as u64,
                Err(e) if e.raw_os_error() == Some(28) => return n, // ENOSPC
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
