//! The relay's live state on disk, for the commands that run in another process
//! (`smtp2oauth account status`, `account list`).
//!
//! The activity store lives in the relay's memory; a CLI started beside it cannot ask it
//! directly without an admin password or the admin address. So the relay writes a snapshot to
//! `<store>/state.json`: shortly after something changes (a second's debounce, so a burst of
//! scans costs one write) and every [`PERIOD`] regardless, which lets a reader tell a stale
//! file from a running relay's. The file is written whole to a temporary name and renamed, so a
//! reader never sees half of one; it is mode 0600 (it names devices, addresses and
//! recipients). It is not fsynced: it is a view of memory, rebuilt at every start.

use crate::wiring::TokenSources;
use serde::{Deserialize, Serialize};
use smtp2oauth_activity::{Activity, MessageFilter, MessageRecord, Snapshot, now_ms};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The file's name in the store directory.
pub const FILE: &str = "state.json";
/// How often the file is written when nothing changes.
pub const PERIOD: Duration = Duration::from_secs(30);
/// How long after a change the file is written (more changes meanwhile are in the same write).
pub const DEBOUNCE: Duration = Duration::from_secs(1);
/// Recent message records kept in the file, newest first.
pub const MESSAGES: usize = 100;

/// What the file holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    /// When it was written, ms since the epoch.
    pub written_at_ms: u64,
    /// The relay's process id.
    pub pid: u32,
    /// When the relay started, ms since the epoch.
    pub started_at_ms: u64,
    /// Devices, accounts, unknown logins, notices that could not be sent.
    pub activity: Snapshot,
    /// The accounts' token sources (accounts whose routes need a token).
    pub tokens: Vec<TokenState>,
    /// The most recent message records, newest first (at most [`MESSAGES`]).
    pub messages: Vec<MessageRecord>,
}

/// One account's token source, as the running relay sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenState {
    /// The account.
    pub account: String,
    /// Expiry of the token held now, ms since the epoch.
    pub valid_until_ms: Option<u64>,
    /// When a token was last obtained, ms since the epoch.
    pub last_refresh_ms: Option<u64>,
    /// The last failure, until a request succeeds again (never a secret).
    pub last_error: Option<String>,
    /// Token requests sent since start.
    pub requests: u64,
    /// Of which failed.
    pub failures: u64,
    /// A person must sign in before a token can be had.
    pub sign_in_required: bool,
}

/// Where the file is for a store directory.
pub fn path(store_dir: &Path) -> PathBuf {
    store_dir.join(FILE)
}

/// Reads the file; `Ok(None)` when there is none (the relay never ran with this store).
pub fn read(store_dir: &Path) -> std::io::Result<Option<StateFile>> {
    match std::fs::read(path(store_dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the file while the relay runs.
pub struct Writer {
    pub path: PathBuf,
    pub activity: Activity,
    pub tokens: TokenSources,
    pub started_at_ms: u64,
}

impl Writer {
    /// Writes on every change (debounced) and every [`PERIOD`] until `stop`, then once more.
    pub async fn run(self, stop: CancellationToken) {
        let mut generation = self.activity.generation();
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
                changed = generation.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(DEBOUNCE) => {}
                    }
                    generation.borrow_and_update();
                }
            }
            failing = self.write_logged(failing).await;
        }
        self.write_logged(failing).await;
    }

    /// Writes the file; logs the first failure of a run of them. Returns whether it failed.
    async fn write_logged(&self, was_failing: bool) -> bool {
        let state = self.state();
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || write(&path, &state))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match written {
            Ok(()) => false,
            Err(e) => {
                if !was_failing {
                    warn!(file = %self.path.display(), error = %e,
                        "cannot write the state file; `smtp2oauth account status` shows older state");
                }
                true
            }
        }
    }

    fn state(&self) -> StateFile {
        let now = now_ms();
        let mut tokens: Vec<TokenState> = self
            .tokens
            .iter()
            .map(|(account, source)| token_state(account, &source.status()))
            .collect();
        tokens.sort_by(|a, b| a.account.cmp(&b.account));
        StateFile {
            written_at_ms: now,
            pid: std::process::id(),
            started_at_ms: self.started_at_ms,
            activity: self.activity.snapshot(now),
            tokens,
            messages: self.activity.messages(&MessageFilter {
                limit: Some(MESSAGES),
                ..MessageFilter::default()
            }),
        }
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn token_state(account: &str, st: &smtp2oauth_tokens::TokenStatus) -> TokenState {
    TokenState {
        account: account.to_string(),
        valid_until_ms: st.valid_until.map(ms),
        last_refresh_ms: st.last_refresh.map(ms),
        last_error: st.last_error.clone(),
        requests: st.requests,
        failures: st.failures,
        sign_in_required: st.sign_in_required,
    }
}

/// Writes `state` to `path` whole: a private temporary file, then a rename over the old one.
fn write(path: &Path, state: &StateFile) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    // Not synced: a view of memory, rewritten on changes and every 30 s, rebuilt at each start.
    smtp2oauth_platform::replace_private(path, &bytes, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp2oauth_activity::{ActivityConfig, Connection};
    use std::collections::HashMap;

    fn writer(dir: &Path, activity: &Activity) -> Writer {
        Writer {
            path: path(dir),
            activity: activity.clone(),
            tokens: HashMap::new(),
            started_at_ms: 1,
        }
    }

    #[tokio::test]
    async fn the_file_follows_changes_is_private_and_written_once_more_at_the_end() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let activity = Activity::new(&ActivityConfig {
            recent_messages: 10,
            devices: vec![("mfp".into(), "scanner".into())],
            accounts: vec!["scanner".into()],
        });
        assert!(read(dir.path()).unwrap().is_none());
        let stop = CancellationToken::new();
        let task = tokio::spawn(writer(dir.path(), &activity).run(stop.clone()));
        // The first write comes at once (the period's first tick).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while read(dir.path()).unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "no state file");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        activity.device_seen(
            "mfp",
            5,
            &Connection {
                peer: "192.0.2.1".into(),
                listener: "plain".into(),
                tls: None,
            },
        );
        let seen = |s: &StateFile| s.activity.devices[0].last_seen_ms == Some(5);
        while !read(dir.path()).unwrap().is_some_and(|s| seen(&s)) {
            assert!(
                std::time::Instant::now() < deadline,
                "the change was not written"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = read(dir.path()).unwrap().unwrap().written_at_ms;
        tokio::time::sleep(Duration::from_millis(5)).await;
        stop.cancel();
        task.await.unwrap();
        let last = read(dir.path()).unwrap().unwrap();
        assert!(last.written_at_ms > before, "a last write at shutdown");
        assert_eq!(last.pid, std::process::id());
        assert!(!dir.path().join("state.json.tmp").exists());
    }
}
