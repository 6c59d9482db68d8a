//! Group commit for directory fsyncs.
//!
//! A rename is durable only once its directory is fsynced, and that fsync is the slow part of
//! accepting a message. Many sessions commit at once under load, and one fsync of a directory
//! makes every rename done before it durable, so concurrent committers share fsyncs: a caller
//! takes a ticket after its rename; whoever holds the lock syncs once for every ticket issued so
//! far; a caller whose ticket is already covered returns without syncing. No caller returns
//! before an fsync that started after its rename has finished.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) struct DirSync {
    dir: Arc<File>,
    enabled: bool,
    issued: AtomicU64,
    synced: AtomicU64,
    /// fsyncs actually done (for tests: sharing is the point of this module).
    fsyncs: AtomicU64,
    lock: tokio::sync::Mutex<()>,
}

impl DirSync {
    pub(crate) fn open(path: &Path, enabled: bool) -> io::Result<DirSync> {
        Ok(DirSync {
            dir: Arc::new(smtp2oauth_platform::open_dir(path)?),
            enabled,
            issued: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Returns once every change made to the directory before this call is durable.
    pub(crate) async fn sync(&self) -> io::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let ticket = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let _guard = self.lock.lock().await;
        if self.synced.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        // Everything issued up to now is covered by the fsync we are about to start.
        let upto = self.issued.load(Ordering::SeqCst);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || dir.sync_all())
            .await
            .map_err(io::Error::other)??;
        self.synced.store(upto, Ordering::SeqCst);
        self.fsyncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// How many fsyncs of the directory were done.
    #[cfg(test)]
    pub(crate) fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers that arrive while an fsync runs share the next one: ten callers, one fsync;
    /// a caller after that gets an fsync of its own (its change came after the shared one).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_waiting_for_a_running_fsync_share_the_next() {
        let d = tempfile::tempdir().unwrap();
        let s = Arc::new(DirSync::open(d.path(), true).unwrap());
        let running = s.lock.lock().await;
        let waiting: Vec<_> = (0..10)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.sync().await })
            })
            .collect();
        while s.issued.load(Ordering::SeqCst) < 10 {
            tokio::task::yield_now().await;
        }
        drop(running);
        for w in waiting {
            w.await.unwrap().unwrap();
        }
        assert_eq!(s.fsyncs(), 1, "ten callers, one fsync");
        s.sync().await.unwrap();
        assert_eq!(
            s.fsyncs(),
            2,
            "a later caller is not covered by an earlier fsync"
        );
        let off = DirSync::open(d.path(), false).unwrap();
        off.sync().await.unwrap();
        assert_eq!(off.fsyncs(), 0, "[store] fsync = false");
    }
}
