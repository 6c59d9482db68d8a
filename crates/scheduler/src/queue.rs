//! The in-memory index of the queue: per account, which messages are due when, how many
//! deliveries are running, whether the account is paused by throttling, and how many attempts
//! it started in the last minute (pacing).
//!
//! Pacing keeps an account under its provider's sending rate (Exchange Online: 30 messages a
//! minute per mailbox) instead of running into it: exceeding it earns `4.7.500` throttling for
//! the whole mailbox, so a burst from a scanner is held in the spool and released at the rate
//! the upstream takes. The rule is the upstream's own, a sliding window: at most N attempts
//! start in any 60 seconds.
//!
//! It holds no message data and is rebuilt from the spool at start, so losing it (a crash)
//! loses nothing. Keeping one ordered set per account makes "the next due message of an
//! account that may start another connection" cheap however long the queue of a throttled
//! account grows.

use smtp2oauth_proto::Reply;
use smtp2oauth_spool::{MessageId, Queued};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

const DEFAULT_MAX: usize = 3;
const PACING_WINDOW: Duration = Duration::from_secs(60);

/// An account's delivery limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Deliveries running at once.
    pub max_connections: usize,
    /// Attempts started in any 60 seconds; 0: unlimited.
    pub per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX,
            per_minute: 0,
        }
    }
}

struct AccountQueue {
    due: BTreeSet<(Instant, u64, MessageId)>,
    in_flight: usize,
    max: usize,
    paused_until: Option<Instant>,
    throttle_level: u32,
    /// A message of the account failed as a whole for a reason of the account or the
    /// upstream (not of the message) since its last delivery: the first delivery that goes
    /// through again releases the rest at once.
    troubled: bool,
    per_minute: u32,
    /// Start times of the attempts within the pacing window, oldest first.
    recent: VecDeque<Instant>,
}

impl AccountQueue {
    /// When pacing lets the next attempt start (None: now).
    fn paced_until(&mut self, now: Instant) -> Option<Instant> {
        if self.per_minute == 0 {
            return None;
        }
        while self
            .recent
            .front()
            .is_some_and(|t| *t + PACING_WINDOW <= now)
        {
            self.recent.pop_front();
        }
        if self.recent.len() < self.per_minute as usize {
            return None;
        }
        self.recent.front().map(|t| *t + PACING_WINDOW)
    }
}

struct Entry {
    account: String,
    key: Option<(Instant, u64)>,
    in_flight: bool,
    waiter: Option<oneshot::Sender<Reply>>,
    delete_requested: bool,
    /// The message as its session committed it, for its first attempt: saves reading back an
    /// envelope that nothing has changed yet.
    fresh: Option<Box<Queued>>,
}

pub(crate) struct Queue {
    accounts: HashMap<String, AccountQueue>,
    entries: HashMap<MessageId, Entry>,
    limits: HashMap<String, Limits>,
    seq: u64,
}

impl Queue {
    pub(crate) fn new(limits: HashMap<String, Limits>) -> Self {
        Queue {
            accounts: HashMap::new(),
            entries: HashMap::new(),
            limits,
            seq: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn account(&mut self, name: &str) -> &mut AccountQueue {
        let limits = self.limits.get(name).copied().unwrap_or_default();
        self.accounts
            .entry(name.to_string())
            .or_insert_with(|| AccountQueue {
                due: BTreeSet::new(),
                in_flight: 0,
                max: limits.max_connections.max(1),
                paused_until: None,
                throttle_level: 0,
                troubled: false,
                per_minute: limits.per_minute,
                recent: VecDeque::new(),
            })
    }

    /// Adds a message (or moves it) to be attempted at `due`; `waiter` gets the first outcome.
    pub(crate) fn schedule(
        &mut self,
        id: &MessageId,
        account: &str,
        due: Instant,
        waiter: Option<oneshot::Sender<Reply>>,
    ) {
        if let Some(e) = self.entries.get_mut(id) {
            if waiter.is_some() {
                e.waiter = waiter;
            }
            if e.in_flight {
                return;
            }
            let account = e.account.clone();
            self.reschedule(id, &account, due);
            return;
        }
        self.seq += 1;
        let key = (due, self.seq);
        self.account(account).due.insert((due, key.1, id.clone()));
        self.entries.insert(
            id.clone(),
            Entry {
                account: account.to_string(),
                key: Some(key),
                in_flight: false,
                waiter,
                delete_requested: false,
                fresh: None,
            },
        );
    }

    fn reschedule(&mut self, id: &MessageId, account: &str, due: Instant) {
        self.seq += 1;
        let seq = self.seq;
        let old = self
            .entries
            .get_mut(id)
            .and_then(|e| e.key.replace((due, seq)));
        let acc = self.account(account);
        if let Some((t, s)) = old {
            acc.due.remove(&(t, s, id.clone()));
        }
        acc.due.insert((due, seq, id.clone()));
    }

    /// Messages to start now (marked in flight), and when to look again.
    pub(crate) fn take_due(&mut self, now: Instant) -> (Vec<MessageId>, Option<Instant>) {
        let mut start = Vec::new();
        let mut next: Option<Instant> = None;
        let mut soonest = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for acc in self.accounts.values_mut() {
            if acc.due.is_empty() {
                continue;
            }
            if let Some(until) = acc.paused_until {
                if until > now {
                    soonest(until);
                    continue;
                }
                acc.paused_until = None;
            }
            while acc.in_flight < acc.max {
                let Some(first) = acc.due.first().cloned() else {
                    break;
                };
                if first.0 > now {
                    soonest(first.0);
                    break;
                }
                if let Some(until) = acc.paced_until(now) {
                    soonest(until);
                    break;
                }
                acc.due.pop_first();
                acc.in_flight += 1;
                if acc.per_minute > 0 {
                    acc.recent.push_back(now);
                }
                start.push(first.2);
            }
        }
        for id in &start {
            if let Some(e) = self.entries.get_mut(id) {
                e.in_flight = true;
                e.key = None;
            }
        }
        (start, next)
    }

    /// An attempt ended. Returns true when an admin asked to delete the message meanwhile.
    pub(crate) fn finish(&mut self, id: &MessageId) -> bool {
        let Some(e) = self.entries.get_mut(id) else {
            return false;
        };
        e.in_flight = false;
        let (account, delete) = (e.account.clone(), e.delete_requested);
        let acc = self.account(&account);
        acc.in_flight = acc.in_flight.saturating_sub(1);
        delete
    }

    pub(crate) fn reschedule_after_attempt(&mut self, id: &MessageId, due: Instant) {
        let Some(account) = self.entries.get(id).map(|e| e.account.clone()) else {
            return;
        };
        self.reschedule(id, &account, due);
    }

    pub(crate) fn forget(&mut self, id: &MessageId) {
        if let Some(e) = self.entries.remove(id)
            && let Some((t, s)) = e.key
            && let Some(acc) = self.accounts.get_mut(&e.account)
        {
            acc.due.remove(&(t, s, id.clone()));
        }
    }

    pub(crate) fn set_fresh(&mut self, id: &MessageId, queued: Queued) {
        if let Some(e) = self.entries.get_mut(id) {
            e.fresh = Some(Box::new(queued));
        }
    }

    pub(crate) fn take_fresh(&mut self, id: &MessageId) -> Option<Queued> {
        self.entries
            .get_mut(id)
            .and_then(|e| e.fresh.take())
            .map(|q| *q)
    }

    pub(crate) fn take_waiter(&mut self, id: &MessageId) -> Option<oneshot::Sender<Reply>> {
        self.entries.get_mut(id).and_then(|e| e.waiter.take())
    }

    /// An admin asked to try `id` now: it is due now, and its account's pause (a hold after
    /// a refusal of the account, or throttling) no longer stands in the way. The pause's level
    /// is kept, so a new refusal pauses it as long as before.
    pub(crate) fn retry_now(&mut self, id: &MessageId, account: &str) {
        self.account(account).paused_until = None;
        self.schedule(id, account, Instant::now(), None);
    }

    /// Marks a message for deletion when a delivery of it is running (returns true); false
    /// when none is running (the caller deletes it now and it is forgotten here).
    pub(crate) fn request_delete(&mut self, id: &MessageId) -> bool {
        match self.entries.get_mut(id) {
            Some(e) if e.in_flight => {
                e.delete_requested = true;
                true
            }
            _ => {
                self.forget(id);
                false
            }
        }
    }

    /// The account's upstream throttled us: no attempt of it starts before `until`.
    /// Returns the throttle level reached (consecutive throttles). A throttle that arrives
    /// while the account is already paused came from an attempt that was in flight when the
    /// pause began: it extends the pause but is not a further step (a burst of replies to
    /// attempts in flight at once would otherwise multiply the pause within milliseconds).
    pub(crate) fn pause(&mut self, account: &str, until: Instant, now: Instant) -> u32 {
        let acc = self.account(account);
        let already = acc.paused_until.is_some_and(|u| u > now);
        acc.paused_until = Some(acc.paused_until.map_or(until, |u| u.max(until)));
        if !already {
            acc.throttle_level += 1;
        }
        acc.throttle_level
    }

    pub(crate) fn throttle_level(&mut self, account: &str) -> u32 {
        self.account(account).throttle_level
    }

    /// Makes every waiting message of `account` due now and lifts its pause (the cause of the
    /// failures was fixed, e.g. someone signed in again). Returns how many messages it moved.
    pub(crate) fn account_due_now(&mut self, account: &str, now: Instant) -> usize {
        let ids: Vec<MessageId> = match self.accounts.get_mut(account) {
            Some(acc) => {
                acc.paused_until = None;
                acc.throttle_level = 0;
                acc.due.iter().map(|(_, _, id)| id.clone()).collect()
            }
            None => return 0,
        };
        for id in &ids {
            self.reschedule(id, account, now);
        }
        ids.len()
    }

    /// A message of the account failed as a whole for the account's or the upstream's sake.
    pub(crate) fn mark_troubled(&mut self, account: &str) {
        self.account(account).troubled = true;
    }

    /// A delivery of the account went through: its throttling is over, and when it was in
    /// trouble, the messages waiting for their next retry are due now (the cause is gone, so
    /// there is no reason to wait for their backoff). Returns how many were moved.
    pub(crate) fn recovered(&mut self, account: &str, now: Instant) -> usize {
        let acc = self.account(account);
        acc.throttle_level = 0;
        acc.paused_until = None;
        if !std::mem::take(&mut acc.troubled) {
            return 0;
        }
        self.account_due_now(account, now)
    }

    /// Takes a connection slot of the account for a delivery outside the queue (synchronous
    /// mode); false when all are in use. Give it back with [`Queue::release_slot`].
    pub(crate) fn acquire_slot(&mut self, account: &str) -> bool {
        let acc = self.account(account);
        if acc.in_flight >= acc.max {
            return false;
        }
        acc.in_flight += 1;
        true
    }

    /// Gives back a slot taken with [`Queue::acquire_slot`].
    pub(crate) fn release_slot(&mut self, account: &str) {
        let acc = self.account(account);
        acc.in_flight = acc.in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A queue id spelling `label` (at most 8 ASCII bytes), so tables read as words.
    fn id(label: &str) -> MessageId {
        let hex: String = label.bytes().map(|b| format!("{b:02x}")).collect();
        MessageId::parse(&format!("{hex:0>16}")).unwrap()
    }

    /// The label `id` spells.
    fn label(id: &MessageId) -> String {
        let hex = id.as_str().trim_start_matches('0');
        let hex = if hex.len() % 2 == 1 {
            format!("0{hex}")
        } else {
            hex.to_string()
        };
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap() as char)
            .collect()
    }

    fn labels(ids: Vec<MessageId>) -> Vec<String> {
        ids.iter().map(label).collect()
    }

    #[test]
    fn per_account_concurrency_and_order() {
        let mut q = Queue::new(
            [(
                "a".to_string(),
                Limits {
                    max_connections: 2,
                    per_minute: 0,
                },
            )]
            .into(),
        );
        let t0 = Instant::now();
        for i in 0..5 {
            q.schedule(
                &id(&format!("a{i}")),
                "a",
                t0 + Duration::from_millis(i),
                None,
            );
        }
        q.schedule(&id("b0"), "b", t0, None);
        let start = labels(q.take_due(t0 + Duration::from_secs(1)).0);
        assert_eq!(
            start
                .iter()
                .filter(|s| s.starts_with('a'))
                .collect::<Vec<_>>(),
            vec!["a0", "a1"]
        );
        assert!(start.contains(&"b0".to_string()));
        // no slot until one finishes
        assert!(q.take_due(t0 + Duration::from_secs(1)).0.is_empty());
        assert!(!q.finish(&id("a0")));
        q.forget(&id("a0"));
        assert_eq!(
            labels(q.take_due(t0 + Duration::from_secs(1)).0),
            vec!["a2"]
        );
    }

    /// A burst beyond the per-minute limit is held and released as the window slides, never
    /// more than N attempts in any 60 seconds; other accounts are not held back.
    #[test]
    fn pacing_holds_a_burst_to_n_per_minute() {
        let mut q = Queue::new(
            [(
                "mfp".to_string(),
                Limits {
                    max_connections: 100,
                    per_minute: 30,
                },
            )]
            .into(),
        );
        let t0 = Instant::now();
        for i in 0..75 {
            q.schedule(&id(&format!("m{i:02}")), "mfp", t0, None);
        }
        q.schedule(&id("other"), "b", t0, None);
        let mut started: Vec<(Duration, String)> = Vec::new();
        let mut now = t0;
        for _ in 0..20 {
            let (ids, next) = q.take_due(now);
            for i in ids {
                q.finish(&i);
                q.forget(&i);
                started.push((now - t0, label(&i)));
            }
            match next {
                Some(n) => now = n,
                None => break,
            }
        }
        assert!(started.iter().any(|(t, id)| id == "other" && t.is_zero()));
        let mfp: Vec<Duration> = started
            .iter()
            .filter(|(_, id)| id.starts_with('m'))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(mfp.len(), 75, "every message is started in the end");
        assert_eq!(mfp.iter().filter(|t| t.is_zero()).count(), 30);
        assert_eq!(mfp.iter().filter(|t| **t == PACING_WINDOW).count(), 30);
        assert_eq!(mfp.iter().filter(|t| **t == 2 * PACING_WINDOW).count(), 15);
        // The upstream's rule: no 60-second window holds more than 30 starts.
        for (i, t) in mfp.iter().enumerate() {
            let within = mfp[i..].iter().filter(|u| **u < *t + PACING_WINDOW).count();
            assert!(within <= 30, "{within} starts within a minute from {t:?}");
        }
    }

    #[test]
    fn no_pacing_when_the_limit_is_zero() {
        let mut q = Queue::new(
            [(
                "a".to_string(),
                Limits {
                    max_connections: 1000,
                    per_minute: 0,
                },
            )]
            .into(),
        );
        let t0 = Instant::now();
        for i in 0..500 {
            q.schedule(&id(&format!("m{i}")), "a", t0, None);
        }
        assert_eq!(q.take_due(t0).0.len(), 500);
    }

    #[test]
    fn not_due_yet_gives_the_next_wake() {
        let mut q = Queue::new(HashMap::new());
        let t0 = Instant::now();
        q.schedule(&id("x"), "a", t0 + Duration::from_secs(5), None);
        let (start, next) = q.take_due(t0);
        assert!(start.is_empty());
        assert_eq!(next, Some(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn paused_accounts_wait() {
        let mut q = Queue::new(HashMap::new());
        let t0 = Instant::now();
        q.schedule(&id("x"), "a", t0, None);
        assert_eq!(q.pause("a", t0 + Duration::from_secs(30), t0), 1);
        // Throttles of attempts that were in flight when the pause began do not raise it.
        assert_eq!(q.pause("a", t0 + Duration::from_secs(30), t0), 1);
        assert_eq!(q.pause("a", t0 + Duration::from_secs(20), t0), 1);
        let (start, next) = q.take_due(t0 + Duration::from_secs(1));
        assert!(start.is_empty());
        assert_eq!(next, Some(t0 + Duration::from_secs(30)));
        assert_eq!(
            labels(q.take_due(t0 + Duration::from_secs(31)).0),
            vec!["x"]
        );
        // Once the pause is over, a new throttle is the next step.
        let t1 = t0 + Duration::from_secs(31);
        assert_eq!(q.pause("a", t1 + Duration::from_secs(60), t1), 2);
        assert_eq!(q.recovered("a", t0), 0, "not in trouble: nothing to move");
        assert_eq!(q.throttle_level("a"), 0);
    }

    #[test]
    fn account_due_now_moves_only_that_account() {
        let mut q = Queue::new(HashMap::new());
        let now = Instant::now();
        let later = now + Duration::from_secs(3600);
        q.schedule(&id("a1"), "a", later, None);
        q.schedule(&id("a2"), "a", later, None);
        q.schedule(&id("b1"), "b", later, None);
        q.pause("a", later, now);
        assert_eq!(labels(q.take_due(now).0), Vec::<String>::new());
        assert_eq!(q.account_due_now("a", now), 2);
        assert_eq!(q.account_due_now("nobody", now), 0);
        let mut due = labels(q.take_due(now).0);
        due.sort();
        assert_eq!(due, ["a1", "a2"]);
    }

    /// The first delivery after a failure of the account releases its other messages; a
    /// delivery of an account that was fine moves nothing.
    #[test]
    fn a_recovered_account_releases_its_waiting_mail() {
        let mut q = Queue::new(HashMap::new());
        let now = Instant::now();
        let later = now + Duration::from_secs(600);
        q.schedule(&id("a1"), "a", later, None);
        q.schedule(&id("a2"), "a", later, None);
        assert_eq!(q.recovered("a", now), 0);
        assert!(q.take_due(now).0.is_empty());
        q.mark_troubled("a");
        q.pause("a", later, now);
        assert_eq!(q.recovered("a", now), 2);
        assert_eq!(q.take_due(now).0.len(), 2);
        assert_eq!(q.recovered("a", now), 0, "once");
    }

    /// Synchronous deliveries and queued ones share the account's connection slots.
    #[test]
    fn slots_are_shared_with_synchronous_deliveries() {
        let mut q = Queue::new(
            [(
                "a".to_string(),
                Limits {
                    max_connections: 2,
                    per_minute: 0,
                },
            )]
            .into(),
        );
        let now = Instant::now();
        assert!(q.acquire_slot("a"));
        assert!(q.acquire_slot("a"));
        assert!(!q.acquire_slot("a"), "the third waits");
        q.schedule(&id("x"), "a", now, None);
        assert!(q.take_due(now).0.is_empty(), "no slot for the queue either");
        q.release_slot("a");
        assert_eq!(labels(q.take_due(now).0), ["x"]);
        assert!(!q.acquire_slot("a"));
    }

    #[test]
    fn reschedule_retry_and_delete() {
        let mut q = Queue::new(HashMap::new());
        let t0 = Instant::now();
        q.schedule(&id("x"), "a", t0, None);
        assert_eq!(labels(q.take_due(t0).0), vec!["x"]);
        assert!(q.request_delete(&id("x")), "in flight: marked");
        assert!(q.finish(&id("x")));
        q.forget(&id("x"));
        assert_eq!(q.len(), 0);
        q.schedule(&id("y"), "a", t0 + Duration::from_secs(100), None);
        q.pause("a", t0 + Duration::from_secs(600), t0);
        q.retry_now(&id("y"), "a");
        assert_eq!(labels(q.take_due(Instant::now()).0), vec!["y"]);
        q.finish(&id("y"));
        q.reschedule_after_attempt(&id("y"), t0 + Duration::from_secs(50));
        assert!(q.take_due(t0 + Duration::from_secs(49)).0.is_empty());
        assert_eq!(
            labels(q.take_due(t0 + Duration::from_secs(50)).0),
            vec!["y"]
        );
        assert!(!q.request_delete(&id("zzz")));
    }
}
