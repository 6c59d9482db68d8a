//! Per-device activity: when a device was last seen, from where, how, and what we last told it.
//!
//! An admin whose printer "stopped sending" first asks whether it reached us at all and what we
//! answered; this is that answer, kept per configured device. Logins with usernames that match
//! no device are kept apart, bounded, so guessing cannot grow memory.

use crate::counts::{Counter, Counts, Tally};
use crate::reply::ReplyInfo;
use serde::{Deserialize, Serialize};
use smtp2oauth_proto::reply::truncate_at_char;
use std::collections::HashMap;

/// Usernames that matched no device, kept for the console (oldest dropped beyond this).
pub const MAX_UNKNOWN_USERS: usize = 64;
/// Longest username kept for an unknown login.
pub const MAX_USERNAME: usize = 64;

/// How a device's session reached us.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// The peer's address (`192.0.2.10:51234` or just the IP).
    pub peer: String,
    /// The listener's label from the configuration.
    pub listener: String,
    /// The negotiated TLS version (`TLSv1.3`), or None for a plain session.
    pub tls: Option<String>,
}

/// What we last answered a device, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastResult {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Our reply, e.g. `250 2.0.0 OK: queued as ...` or `553 5.7.1 ...`.
    pub reply: ReplyInfo,
}

/// Everything known about one device's activity since the relay started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    /// The device's name (its label in the configuration).
    pub name: String,
    /// The account it sends through.
    pub account: String,
    /// When it was last seen (a session identified as this device, or a login attempt with its
    /// username), ms since the epoch.
    pub last_seen_ms: Option<u64>,
    /// The connection it was last seen on.
    pub connection: Option<Connection>,
    /// The last reply we gave it to a message or a refused command.
    pub last_result: Option<LastResult>,
    /// Counts since the relay started.
    pub since_start: Counts,
    /// Counts over the last 24 hours.
    pub last_24h: Counts,
}

/// Logins with a username that matches no device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnknownLogin {
    /// The username tried (cut to [`MAX_USERNAME`] bytes; show it escaped).
    pub username: String,
    /// How many times since start.
    pub attempts: u64,
    /// The last address it came from.
    pub last_peer: String,
    /// When it was last tried, ms since the epoch.
    pub last_ms: u64,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Device {
    pub(crate) account: String,
    last_seen_ms: Option<u64>,
    connection: Option<Connection>,
    last_result: Option<LastResult>,
    tally: Tally,
}

impl Device {
    pub(crate) fn new(account: &str) -> Device {
        Device {
            account: account.to_string(),
            ..Device::default()
        }
    }

    pub(crate) fn seen(&mut self, at_ms: u64, connection: &Connection) {
        self.last_seen_ms = Some(self.last_seen_ms.map_or(at_ms, |t| t.max(at_ms)));
        self.connection = Some(connection.clone());
    }

    pub(crate) fn result(&mut self, at_ms: u64, reply: ReplyInfo, counter: Option<Counter>) {
        if let Some(c) = counter {
            self.tally.add(at_ms, c);
        }
        self.last_seen_ms = Some(self.last_seen_ms.map_or(at_ms, |t| t.max(at_ms)));
        self.last_result = Some(LastResult { at_ms, reply });
    }

    pub(crate) fn login_failed(&mut self, at_ms: u64) {
        self.tally.add(at_ms, Counter::FailedLogin);
        self.last_seen_ms = Some(self.last_seen_ms.map_or(at_ms, |t| t.max(at_ms)));
    }

    pub(crate) fn view(&self, name: &str, now_ms: u64) -> DeviceView {
        DeviceView {
            name: name.to_string(),
            account: self.account.clone(),
            last_seen_ms: self.last_seen_ms,
            connection: self.connection.clone(),
            last_result: self.last_result.clone(),
            since_start: self.tally.since_start(),
            last_24h: self.tally.last_24h(now_ms),
        }
    }
}

/// The bounded book of unknown usernames.
#[derive(Clone, Debug, Default)]
pub(crate) struct UnknownLogins {
    by_name: HashMap<String, UnknownLogin>,
}

impl UnknownLogins {
    pub(crate) fn record(&mut self, username: &str, peer: &str, at_ms: u64) {
        let username = truncate_at_char(username, MAX_USERNAME);
        if let Some(u) = self.by_name.get_mut(username) {
            u.attempts += 1;
            u.last_peer = peer.to_string();
            u.last_ms = u.last_ms.max(at_ms);
            return;
        }
        if self.by_name.len() >= MAX_UNKNOWN_USERS
            && let Some(oldest) = self
                .by_name
                .values()
                .min_by_key(|u| u.last_ms)
                .map(|u| u.username.clone())
        {
            self.by_name.remove(&oldest);
        }
        self.by_name.insert(
            username.to_string(),
            UnknownLogin {
                username: username.to_string(),
                attempts: 1,
                last_peer: peer.to_string(),
                last_ms: at_ms,
            },
        );
    }

    /// Newest first.
    pub(crate) fn list(&self) -> Vec<UnknownLogin> {
        let mut v: Vec<UnknownLogin> = self.by_name.values().cloned().collect();
        v.sort_by(|a, b| b.last_ms.cmp(&a.last_ms).then(a.username.cmp(&b.username)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_usernames_are_bounded_and_cut() {
        let mut u = UnknownLogins::default();
        for i in 0..(MAX_UNKNOWN_USERS as u64 + 10) {
            u.record(&format!("guess{i}"), "10.0.0.1", i);
        }
        let list = u.list();
        assert_eq!(list.len(), MAX_UNKNOWN_USERS);
        assert_eq!(list[0].username, format!("guess{}", MAX_UNKNOWN_USERS + 9));
        assert!(list.iter().all(|l| l.username != "guess0"));
        u.record(&"x".repeat(1000), "10.0.0.2", 10_000);
        assert_eq!(u.list()[0].username.len(), MAX_USERNAME);
    }

    #[test]
    fn repeated_unknown_username_counts_up() {
        let mut u = UnknownLogins::default();
        u.record("admin", "10.0.0.1", 1);
        u.record("admin", "10.0.0.2", 5);
        let list = u.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].attempts, 2);
        assert_eq!(list[0].last_peer, "10.0.0.2");
        assert_eq!(list[0].last_ms, 5);
    }
}
