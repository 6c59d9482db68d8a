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
    lock: tokio::sync::Mutex<()>,
}

impl DirSync {
    pub(crate) fn open(path: &Path, enabled: bool) -> io::Result<DirSync> {
        Ok(DirSync {
            dir: Arc::new(File::open(path)?),
            enabled,
            issued: AtomicU64::new(0),
            synced: AtomicU64::new(0),
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
        Ok(())
    }
}
