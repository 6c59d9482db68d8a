//! Watching the upstream sink: when did each message arrive, did every accepted one arrive, and
//! did any arrive twice.
//!
//! Why: "delivered msgs/s" ends at the last message the sink stored, so we need its arrival time,
//! and a durable relay is only worth measuring if it loses and duplicates nothing. The testkit's
//! `FakeSmtp` keeps every message in memory; we take them out as they arrive so a long or
//! large-message run keeps our memory flat, and keep only their sequence numbers.

use crate::message::find_seq;
use smtp2oauth_testkit::FakeSmtp;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

#[derive(Debug, Default, Clone)]
pub struct SinkResult {
    /// Messages the sink stored (duplicates included).
    pub received: u64,
    /// Accepted messages that arrived (at least once).
    pub delivered: u64,
    /// Accepted messages that did not arrive before the drain timeout.
    pub missing: u64,
    /// Arrivals of a sequence number seen before.
    pub duplicates: u64,
    /// Arrivals without one of our message ids (should never happen).
    pub foreign: u64,
    pub bytes: u64,
    /// Offset from the run's base time of the last arrival.
    pub last_arrival: Option<Duration>,
    /// Every sequence number that arrived.
    pub arrived: HashSet<u64>,
}

/// A running watcher; [`SinkWatch::finish`] hands it the accepted messages and waits.
pub struct SinkWatch {
    accepted: oneshot::Sender<(Vec<u64>, Duration)>,
    task: tokio::task::JoinHandle<SinkResult>,
}

impl SinkWatch {
    /// `abort` turning true (the relay was killed) ends the wait for missing messages at once.
    pub fn start(
        sink: FakeSmtp,
        tag: String,
        base: Instant,
        abort: watch::Receiver<bool>,
    ) -> SinkWatch {
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(run(sink, tag, base, rx, abort));
        SinkWatch { accepted: tx, task }
    }

    /// Returns once every accepted message has arrived, or `timeout` after this call.
    pub async fn finish(self, accepted: &[u64], timeout: Duration) -> SinkResult {
        let _ = self.accepted.send((accepted.to_vec(), timeout));
        self.task.await.unwrap_or_default()
    }
}

async fn run(
    sink: FakeSmtp,
    tag: String,
    base: Instant,
    mut accepted: oneshot::Receiver<(Vec<u64>, Duration)>,
    abort: watch::Receiver<bool>,
) -> SinkResult {
    let mut r = SinkResult::default();
    let mut seen: HashSet<u64> = HashSet::new();
    // Set once the load is over: the accepted sequence numbers not yet seen, and the deadline.
    let mut waiting: Option<(HashSet<u64>, usize, Instant)> = None;
    loop {
        // Returns at once when something is stored; otherwise wakes up now and then to check
        // whether the load has finished.
        sink.wait_for_messages(1, Duration::from_millis(50)).await;
        let arrived = sink.take_messages();
        let now = Instant::now();
        if !arrived.is_empty() {
            r.last_arrival = Some(now - base);
        }
        for m in arrived {
            r.received += 1;
            r.bytes += m.data.len() as u64;
            match find_seq(&m.data, &tag) {
                Some(seq) if !seen.insert(seq) => r.duplicates += 1,
                Some(seq) => {
                    if let Some((left, _, _)) = waiting.as_mut() {
                        left.remove(&seq);
                    }
                }
                None => r.foreign += 1,
            }
        }
        if waiting.is_none() {
            match accepted.try_recv() {
                Ok((acc, timeout)) => {
                    let total = acc.len();
                    let left: HashSet<u64> =
                        acc.into_iter().filter(|s| !seen.contains(s)).collect();
                    waiting = Some((left, total, Instant::now() + timeout));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
                // The run was abandoned: nothing to wait for.
                Err(oneshot::error::TryRecvError::Closed) => return r,
            }
        }
        if let Some((left, total, deadline)) = &waiting
            && (left.is_empty() || Instant::now() >= *deadline || *abort.borrow())
        {
            r.missing = left.len() as u64;
            r.delivered = (*total - left.len()) as u64;
            r.arrived = seen;
            return r;
        }
    }
}
