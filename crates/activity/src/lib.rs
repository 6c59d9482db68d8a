//! What the relay has been doing, kept in memory for the console, the API, the CLI and the
//! notifier: per device, per account, and the recent messages.
//!
//! The admin of a small office opens a page to see at a glance what is wrong. That page must
//! not reach into sessions or routes to find out, so the parts that know publish here instead:
//! inbound sessions report devices, logins and what we refused; the scheduler reports every
//! delivery attempt and what it says about the account; the binary seeds the log from the
//! spool's events at start. Readers (the admin crate, the notifier, the state file the CLI
//! reads) only read. Data still flows one way.
//!
//! Everything is bounded: a fixed number of recent messages (`[admin] recent_messages`), the
//! configured devices and accounts, at most [`device::MAX_UNKNOWN_USERS`] unknown usernames
//! and [`MAX_NOTICE_FAILURES`] notice failures. A publish takes one short lock and never waits
//! on a reader: changes go out on a broadcast channel that drops for a reader that lags.
//!
//! # Layout
//! - `account.rs`: account health ([`AccountState`]) decided by a pure function.
//! - `device.rs`: per-device activity and unknown usernames.
//! - `counts.rs`: counters since start and over the last 24 hours.
//! - `messages.rs`: the recent-messages ring and its filter.
//! - `problems.rs`: what is wrong now, in words (the overview and the notifier agree on it).
//! - `alerts.rs`: when to send an alert about a problem (raised, reminder, cleared).
//! - `reply.rs`: a reply as kept here.

#![warn(missing_docs)]

pub mod account;
pub mod alerts;
pub mod counts;
pub mod device;
pub mod messages;
pub mod problems;
pub mod reply;

pub use account::{
    AccountActivity, AccountSignal, AccountState, AttemptReport, AttemptResult, Condition,
    Happening, notice_carrier,
};
pub use alerts::{Alert, AlertBook, AlertKind};
pub use counts::{Counter, Counts};
pub use device::{Connection, DeviceView, LastResult, UnknownLogin};
pub use messages::{MessageFilter, MessageRecord, MessageResult};
pub use problems::{
    CertificateInfo, Environment, EnvironmentFn, Level, NoticeFailure, Problem, Subject,
};
pub use reply::ReplyInfo;

use device::{Device, UnknownLogins};
use messages::Log;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, watch};

/// Notice failures kept for the overview (oldest dropped beyond this).
pub const MAX_NOTICE_FAILURES: usize = 50;
/// Changes a slow reader may fall behind by before it misses some.
const CHANGE_BUFFER: usize = 1024;

/// What the activity store knows from the configuration.
#[derive(Clone, Debug, Default)]
pub struct ActivityConfig {
    /// How many message records to keep (`[admin] recent_messages`).
    pub recent_messages: usize,
    /// Every configured device: (name, account).
    pub devices: Vec<(String, String)>,
    /// Every configured account's name.
    pub accounts: Vec<String>,
}

/// A change readers may want to act on at once (the notifier).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// An account's state changed.
    AccountState {
        /// The account.
        account: String,
        /// The state before.
        from: AccountState,
        /// The condition now.
        to: Condition,
    },
    /// A message record was added (delivered, deferred, failed or refused).
    Message(MessageRecord),
    /// A notice or notification could not be sent.
    NoticeFailed(NoticeFailure),
}

/// Everything at once, for the state file the CLI reads and for `/api/v1` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When it was taken, ms since the epoch.
    pub taken_at_ms: u64,
    /// Every account, in name order.
    pub accounts: Vec<AccountActivity>,
    /// Every device, in name order.
    pub devices: Vec<DeviceView>,
    /// Usernames that matched no device, newest first.
    pub unknown_logins: Vec<UnknownLogin>,
    /// Notices that could not be sent, oldest first.
    pub notice_failures: Vec<NoticeFailure>,
}

#[derive(Debug)]
struct State {
    devices: BTreeMap<String, Device>,
    unknown: UnknownLogins,
    accounts: BTreeMap<String, AccountActivity>,
    log: Log,
    notice_failures: Vec<NoticeFailure>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changes: broadcast::Sender<Change>,
    /// Counts every change of any kind (devices included), for readers that only need to
    /// know that something changed (the state file).
    generation: watch::Sender<u64>,
}

/// The shared activity store. Cheap to clone; every clone is the same store.
#[derive(Clone, Debug)]
pub struct Activity {
    shared: Arc<Shared>,
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Activity {
    /// An empty store for the configured devices and accounts.
    pub fn new(config: &ActivityConfig) -> Activity {
        let state = State {
            devices: config
                .devices
                .iter()
                .map(|(name, account)| (name.clone(), Device::new(account)))
                .collect(),
            unknown: UnknownLogins::default(),
            accounts: config
                .accounts
                .iter()
                .map(|a| (a.clone(), AccountActivity::new(a)))
                .collect(),
            log: Log::new(config.recent_messages),
            notice_failures: Vec::new(),
        };
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        Activity {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                changes,
                generation: watch::Sender::new(0),
            }),
        }
    }

    /// The state, locked. Every caller that may change it goes through here, so the
    /// generation is bumped once the lock is released (readers of the generation never wait
    /// on this lock while it is held).
    fn state(&self) -> Changing<'_> {
        Changing {
            guard: Some(self.read()),
            generation: &self.shared.generation,
        }
    }

    /// The state, locked, for reading only.
    fn read(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, change: Change) {
        // No receiver is not an error: nobody is listening yet (seeding) or at all.
        let _ = self.shared.changes.send(change);
    }

    // --- what sessions publish ---

    /// A session was identified as `device` (by login or by address).
    pub fn device_seen(&self, device: &str, at_ms: u64, connection: &Connection) {
        self.state()
            .devices
            .entry(device.to_string())
            .or_default()
            .seen(at_ms, connection);
    }

    /// We answered `device` with `reply` (a message accepted, or a refusal); `counter` says what
    /// to count it as, None to only remember it as the last result.
    pub fn device_reply(
        &self,
        device: &str,
        at_ms: u64,
        reply: ReplyInfo,
        counter: Option<Counter>,
    ) {
        self.state()
            .devices
            .entry(device.to_string())
            .or_default()
            .result(at_ms, reply, counter);
    }

    /// A login failed. `device` is the device whose username it was, None for an unknown username.
    pub fn login_failed(&self, username: &str, device: Option<&str>, peer: &str, at_ms: u64) {
        let mut state = self.state();
        match device {
            Some(d) => state
                .devices
                .entry(d.to_string())
                .or_default()
                .login_failed(at_ms),
            None => state.unknown.record(username, peer, at_ms),
        }
    }

    // --- what the scheduler and sessions publish about messages ---

    /// Adds a record to the recent-messages log (its `seq` is assigned here).
    pub fn message(&self, record: MessageRecord) {
        let record = self.state().log.push(record);
        self.publish(Change::Message(record));
    }

    /// An attempt's (or a sign-in's) effect on its account.
    pub fn attempt(&self, report: &AttemptReport) {
        let change = {
            let mut state = self.state();
            let account = state
                .accounts
                .entry(report.account.clone())
                .or_insert_with(|| AccountActivity::new(&report.account));
            let (from, to) = account.apply(report);
            (from != to).then(|| Change::AccountState {
                account: report.account.clone(),
                from,
                to: account.condition.clone(),
            })
        };
        if let Some(c) = change {
            self.publish(c);
        }
    }

    // --- what the notifier publishes ---

    /// A notice or notification could not be sent.
    pub fn notice_failed(&self, failure: NoticeFailure) {
        {
            let mut state = self.state();
            state.notice_failures.retain(|f| f.about != failure.about);
            if state.notice_failures.len() >= MAX_NOTICE_FAILURES {
                state.notice_failures.remove(0);
            }
            state.notice_failures.push(failure.clone());
        }
        self.publish(Change::NoticeFailed(failure));
    }

    /// A notice about `about` went out: an earlier failure about it is no longer a problem.
    pub fn notice_sent(&self, about: &str) {
        self.state().notice_failures.retain(|f| f.about != about);
    }

    // --- readers ---

    /// Changes as they happen. A reader that falls more than 1024 changes behind misses some
    /// (`RecvError::Lagged`) and should re-read the state.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.shared.changes.subscribe()
    }

    /// A counter that grows with every change of any kind, devices included: for readers
    /// that only need to know that something changed (the state file the CLI reads).
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    /// Every device, in name order, with counts as of `now_ms`.
    pub fn devices(&self, now_ms: u64) -> Vec<DeviceView> {
        let state = self.read();
        state
            .devices
            .iter()
            .map(|(n, d)| d.view(n, now_ms))
            .collect()
    }

    /// Usernames that matched no device, newest first.
    pub fn unknown_logins(&self) -> Vec<UnknownLogin> {
        self.read().unknown.list()
    }

    /// Every account, in name order, with conditions as of `now_ms`.
    pub fn accounts(&self, now_ms: u64) -> Vec<AccountActivity> {
        let state = self.read();
        state.accounts.values().map(|a| a.at(now_ms)).collect()
    }

    /// One account, with its condition as of `now_ms`.
    pub fn account(&self, name: &str, now_ms: u64) -> Option<AccountActivity> {
        self.read().accounts.get(name).map(|a| a.at(now_ms))
    }

    /// Recent message records matching `filter`, newest first.
    pub fn messages(&self, filter: &MessageFilter) -> Vec<MessageRecord> {
        self.read().log.search(filter)
    }

    /// Notices that could not be sent and have not been sent since, oldest first.
    pub fn notice_failures(&self) -> Vec<NoticeFailure> {
        self.read().notice_failures.clone()
    }

    /// Everything at once, as of `now_ms`.
    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        let state = self.read();
        Snapshot {
            taken_at_ms: now_ms,
            accounts: state.accounts.values().map(|a| a.at(now_ms)).collect(),
            devices: state
                .devices
                .iter()
                .map(|(n, d)| d.view(n, now_ms))
                .collect(),
            unknown_logins: state.unknown.list(),
            notice_failures: state.notice_failures.clone(),
        }
    }
}

/// The state locked by a producer; dropping it releases the lock, then counts one change.
struct Changing<'a> {
    /// Always `Some` until dropped.
    guard: Option<MutexGuard<'a, State>>,
    generation: &'a watch::Sender<u64>,
}

impl std::ops::Deref for Changing<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.guard.as_deref().expect("held until drop")
    }
}

impl std::ops::DerefMut for Changing<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.guard.as_deref_mut().expect("held until drop")
    }
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests;
