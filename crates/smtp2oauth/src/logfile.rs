//! A log file that rotates by size, for a relay with nobody reading its standard error: the
//! Windows service. (On Unix the journal or Docker collects standard error.)
//!
//! `smtp2oauth.log` grows to `max_bytes`, then becomes `smtp2oauth.1.log` (the older ones
//! move up, the oldest beyond `keep` is removed) and a new one starts. A whole log line is one
//! write, so a line is never split across two files. The directory and the files are private:
//! log lines name devices, accounts and addresses.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// The current log file's name; rotated ones are `smtp2oauth.<n>.log`.
pub const LOG_NAME: &str = "smtp2oauth.log";

/// An append-only log file that rotates by size. Write through `&LogFile` (it locks).
pub struct LogFile {
    dir: PathBuf,
    max_bytes: u64,
    keep: usize,
    current: Mutex<Option<(File, u64)>>,
}

impl LogFile {
    /// Opens (creating privately) `dir/smtp2oauth.log` for appending.
    pub fn open(dir: &Path, max_bytes: u64, keep: usize) -> io::Result<LogFile> {
        smtp2oauth_platform::create_private_dir_all(dir)?;
        let log = LogFile {
            dir: dir.to_path_buf(),
            max_bytes,
            keep,
            current: Mutex::new(None),
        };
        let opened = log.open_current()?;
        *log.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(opened);
        Ok(log)
    }

    /// The file being written now.
    pub fn path(&self) -> PathBuf {
        self.dir.join(LOG_NAME)
    }

    fn rotated(&self, n: usize) -> PathBuf {
        self.dir.join(format!("smtp2oauth.{n}.log"))
    }

    fn open_current(&self) -> io::Result<(File, u64)> {
        let path = self.path();
        let file =
            smtp2oauth_platform::open_private(OpenOptions::new().append(true).create(true), &path)?;
        let len = file.metadata()?.len();
        Ok((file, len))
    }

    /// Moves the current file to `.1` (and the older ones up); the file must be closed first,
    /// as Windows does not rename an open file.
    fn rotate(&self) -> io::Result<()> {
        if self.keep == 0 {
            return std::fs::remove_file(self.path());
        }
        let _ = std::fs::remove_file(self.rotated(self.keep));
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        std::fs::rename(self.path(), self.rotated(1))
    }
}

impl Write for &LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let full = matches!(&*current, Some((_, len)) if *len > 0 && len + buf.len() as u64 > self.max_bytes);
        if full || current.is_none() {
            // A failed rotation keeps writing to the file we have (reopened): losing log lines
            // is worse than a file over its size.
            *current = None;
            if full {
                let _ = self.rotate();
            }
            *current = Some(self.open_current()?);
        }
        let Some((file, len)) = current.as_mut() else {
            return Err(io::Error::other("no log file"));
        };
        file.write_all(buf)?;
        *len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.current.lock().unwrap_or_else(PoisonError::into_inner) {
            Some((file, _)) => file.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: PathBuf) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    #[test]
    fn rotates_by_size_keeping_whole_lines_and_the_newest_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("logs");
        let log = LogFile::open(&dir, 25, 2).unwrap();
        for i in 0..7 {
            (&log)
                .write_all(format!("line {i} of the log\n").as_bytes())
                .unwrap();
        }
        // 18 bytes a line, 25 a file: one line per file; the current and two rotated remain.
        assert_eq!(read(dir.join(LOG_NAME)), "line 6 of the log\n");
        assert_eq!(read(dir.join("smtp2oauth.1.log")), "line 5 of the log\n");
        assert_eq!(read(dir.join("smtp2oauth.2.log")), "line 4 of the log\n");
        assert!(!dir.join("smtp2oauth.3.log").exists());
        assert_eq!(smtp2oauth_platform::readable_by_others(&dir).unwrap(), None);
        assert_eq!(
            smtp2oauth_platform::readable_by_others(&log.path()).unwrap(),
            None
        );
    }

    #[test]
    fn a_restart_appends_to_the_current_file() {
        let tmp = tempfile::tempdir().unwrap();
        let log = LogFile::open(tmp.path(), 1000, 3).unwrap();
        (&log).write_all(b"before\n").unwrap();
        drop(log);
        let log = LogFile::open(tmp.path(), 1000, 3).unwrap();
        (&log).write_all(b"after\n").unwrap();
        assert_eq!(read(tmp.path().join(LOG_NAME)), "before\nafter\n");
    }
}
