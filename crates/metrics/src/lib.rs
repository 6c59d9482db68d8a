//! Every Prometheus metric smtp2oauth exports, defined in one place.
//!
//! Admins build dashboards and alerts on these names, so they follow Prometheus conventions
//! (`smtp2oauth_` prefix, `_total` counters, base units such as seconds and bytes) and never
//! change casually. Labels only take bounded values: listener and account names from the
//! configuration, result and class words from fixed lists, enhanced status codes. Addresses,
//! message ids and usernames never become labels.
//!
//! This crate is a leaf: the inbound server, the scheduler and the binary each update the
//! metrics they own through a shared [`Metrics`], and values that are cheaper to read than to
//! track (queue depth, token expiry) are read at scrape time from a [`Snapshot`].

#![warn(missing_docs)]

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;

/// Labels of the session metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    /// The listener's name.
    pub listener: String,
    /// `none`, `starttls` or `implicit`: how the session is (or ended up) encrypted.
    pub tls: &'static str,
}

/// Labels of a metric counted by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// The outcome, a word from a fixed list (e.g. `success`, `failure`).
    pub result: &'static str,
}

/// Labels of a per-account metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabels {
    /// The account's name.
    pub account: String,
}

/// Labels of a per-route metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The account's name.
    pub account: String,
    /// The kind of route (`smtp`, `graph`, `smarthost`, `capture`, `fallback`).
    pub route: &'static str,
}

/// Labels of the upstream replies counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplyLabels {
    /// The account's name.
    pub account: String,
    /// `2xx`, `4xx` or `5xx`.
    pub class: &'static str,
    /// The enhanced status code (`4.7.500`), or `none`.
    pub status: String,
}

/// Labels of the inbound refusals counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// The reply code we sent (`535`, `552`, ...).
    pub code: String,
}

/// What is read at scrape time rather than counted.
pub trait Snapshot: Send + Sync + std::fmt::Debug + 'static {
    /// Messages queued and failed, and the age of the oldest queued one.
    fn queue(&self) -> QueueSnapshot;
    /// Token state of every account.
    fn accounts(&self) -> Vec<AccountSnapshot>;
}

/// The queue, read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct QueueSnapshot {
    /// Messages in the queue.
    pub queued: u64,
    /// Messages in `failed/`.
    pub failed: u64,
    /// Age of the oldest queued message, in seconds (0 when the queue is empty).
    pub oldest_age_seconds: f64,
}

/// One account's token state, read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct AccountSnapshot {
    /// The account's name.
    pub account: String,
    /// Seconds until the cached access token expires (None: no valid token).
    pub token_expires_in: Option<f64>,
    /// Token requests sent.
    pub token_requests: u64,
    /// Token requests that failed.
    pub token_failures: u64,
    /// True while the account waits for a person to sign in.
    pub sign_in_required: bool,
    /// Every health state the account can be in, true for the one it is in now
    /// (`smtp2oauth_account_state`). Empty: the metric has no rows for the account.
    pub states: Vec<(&'static str, bool)>,
}

/// Every metric, and the registry they are exported from.
pub struct Metrics {
    registry: Registry,
    /// `smtp2oauth_sessions_active`: SMTP sessions open now.
    pub sessions_active: Family<SessionLabels, Gauge>,
    /// `smtp2oauth_sessions_total`: SMTP sessions accepted.
    pub sessions: Family<SessionLabels, Counter>,
    /// `smtp2oauth_auth_attempts_total`: device AUTH attempts by result.
    pub auth_attempts: Family<ResultLabels, Counter>,
    /// `smtp2oauth_inbound_refusals_total`: commands and messages refused to devices.
    pub refusals: Family<RefusalLabels, Counter>,
    /// `smtp2oauth_messages_received_total`: messages accepted into the spool.
    pub messages_received: Family<AccountLabels, Counter>,
    /// `smtp2oauth_received_bytes_total`: bytes of messages accepted.
    pub received_bytes: Family<AccountLabels, Counter>,
    /// `smtp2oauth_messages_delivered_total`: messages delivered upstream.
    pub messages_delivered: Family<RouteLabels, Counter>,
    /// `smtp2oauth_messages_deferred_total`: attempts that ended in a temporary failure.
    pub messages_deferred: Family<RouteLabels, Counter>,
    /// `smtp2oauth_messages_failed_total`: messages that failed for good.
    pub messages_failed: Family<RouteLabels, Counter>,
    /// `smtp2oauth_delivered_bytes_total`: bytes of messages delivered upstream.
    pub delivered_bytes: Family<RouteLabels, Counter>,
    /// `smtp2oauth_upstream_replies_total`: final upstream replies by class and status.
    pub upstream_replies: Family<ReplyLabels, Counter>,
    /// `smtp2oauth_upstream_attempt_duration_seconds`: time one delivery attempt took.
    pub upstream_duration: Family<RouteLabels, Histogram>,
    /// `smtp2oauth_delivery_latency_seconds`: time from acceptance to delivery.
    pub delivery_latency: Family<AccountLabels, Histogram>,
}

fn seconds_histogram() -> Histogram {
    // 10 ms .. ~5.8 days: an attempt takes milliseconds to minutes, a queued message up to days.
    Histogram::new([
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
        14400.0, 86400.0, 500000.0,
    ])
}

impl Metrics {
    /// Registers every metric; `snapshot` supplies the values read at scrape time.
    pub fn new(snapshot: Option<Arc<dyn Snapshot>>) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("smtp2oauth");
        let m = Metrics {
            sessions_active: Family::default(),
            sessions: Family::default(),
            auth_attempts: Family::default(),
            refusals: Family::default(),
            messages_received: Family::default(),
            received_bytes: Family::default(),
            messages_delivered: Family::default(),
            messages_deferred: Family::default(),
            messages_failed: Family::default(),
            delivered_bytes: Family::default(),
            upstream_replies: Family::default(),
            upstream_duration: Family::new_with_constructor(seconds_histogram),
            delivery_latency: Family::new_with_constructor(seconds_histogram),
            registry: Registry::default(),
        };
        registry.register(
            "sessions_active",
            "SMTP sessions open now, by listener and TLS",
            m.sessions_active.clone(),
        );
        registry.register(
            "sessions",
            "SMTP sessions accepted, by listener and TLS",
            m.sessions.clone(),
        );
        registry.register(
            "auth_attempts",
            "Device AUTH attempts by result (success, failure, locked_out, busy, error)",
            m.auth_attempts.clone(),
        );
        registry.register(
            "inbound_refusals",
            "Commands and messages refused to devices, by reply code",
            m.refusals.clone(),
        );
        registry.register(
            "messages_received",
            "Messages accepted from devices into the spool",
            m.messages_received.clone(),
        );
        registry.register_with_unit(
            "received",
            "Bytes of messages accepted from devices",
            Unit::Bytes,
            m.received_bytes.clone(),
        );
        registry.register(
            "messages_delivered",
            "Messages delivered upstream (all recipients settled, none refused)",
            m.messages_delivered.clone(),
        );
        registry.register(
            "messages_deferred",
            "Delivery attempts that ended in a temporary failure",
            m.messages_deferred.clone(),
        );
        registry.register(
            "messages_failed",
            "Messages that failed for good (refused or expired), kept in failed/",
            m.messages_failed.clone(),
        );
        registry.register_with_unit(
            "delivered",
            "Bytes of messages delivered upstream",
            Unit::Bytes,
            m.delivered_bytes.clone(),
        );
        registry.register(
            "upstream_replies",
            "Final upstream replies to delivery attempts, by class and enhanced status",
            m.upstream_replies.clone(),
        );
        registry.register_with_unit(
            "upstream_attempt_duration",
            "Time one delivery attempt took",
            Unit::Seconds,
            m.upstream_duration.clone(),
        );
        registry.register_with_unit(
            "delivery_latency",
            "Time from acceptance to delivery",
            Unit::Seconds,
            m.delivery_latency.clone(),
        );
        if let Some(s) = snapshot {
            registry.register_collector(Box::new(SnapshotCollector(s)));
        }
        Arc::new(Metrics { registry, ..m })
    }

    /// The exposition text for `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a final upstream reply of a delivery attempt.
    pub fn upstream_reply(&self, account: &str, code: u16, status: Option<String>) {
        let class = match code / 100 {
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        self.upstream_replies
            .get_or_create(&ReplyLabels {
                account: account.to_string(),
                class,
                status: status.unwrap_or_else(|| "none".into()),
            })
            .inc();
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

#[derive(Debug)]
struct SnapshotCollector(Arc<dyn Snapshot>);

fn gauge<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: &[(L, f64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in rows {
        let fam = m.encode_family(labels)?;
        ConstGauge::new(*v).encode(fam)?;
    }
    Ok(())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountStateLabels {
    account: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountResultLabels {
    account: String,
    result: &'static str,
}

/// One row per account and state: 1 for the state the account is in, 0 for the others.
fn state_rows(accounts: &[AccountSnapshot]) -> Vec<(AccountStateLabels, f64)> {
    accounts
        .iter()
        .flat_map(|a| {
            a.states.iter().map(|(state, now)| {
                let labels = AccountStateLabels {
                    account: a.account.clone(),
                    state,
                };
                (labels, if *now { 1.0 } else { 0.0 })
            })
        })
        .collect()
}

impl prometheus_client::collector::Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let q = self.0.queue();
        {
            let mut m = enc.encode_descriptor(
                "queue_messages",
                "Messages in the spool, by state (queued, failed)",
                None,
                MetricType::Gauge,
            )?;
            for (state, v) in [("queued", q.queued), ("failed", q.failed)] {
                let labels = StateLabels { state };
                let fam = m.encode_family(&labels)?;
                ConstGauge::new(v as i64).encode(fam)?;
            }
        }
        {
            let m = enc.encode_descriptor(
                "queue_oldest_message_age",
                "Age of the oldest queued message (0 when empty)",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            ConstGauge::new(q.oldest_age_seconds).encode(m)?;
        }
        let accounts = self.0.accounts();
        let rows: Vec<(AccountLabels, f64)> = accounts
            .iter()
            .map(|a| {
                (
                    AccountLabels {
                        account: a.account.clone(),
                    },
                    a.token_expires_in.unwrap_or(0.0),
                )
            })
            .collect();
        gauge(
            &mut enc,
            "token_expiry",
            "Seconds until the account's cached access token expires (0: none)",
            Some(&Unit::Seconds),
            &rows,
        )?;
        let rows: Vec<(AccountLabels, f64)> = accounts
            .iter()
            .map(|a| {
                (
                    AccountLabels {
                        account: a.account.clone(),
                    },
                    if a.sign_in_required { 1.0 } else { 0.0 },
                )
            })
            .collect();
        gauge(
            &mut enc,
            "account_sign_in_required",
            "1 when the account needs a person to sign in again",
            None,
            &rows,
        )?;
        gauge(
            &mut enc,
            "account_state",
            "1 for the account's health state now (ok, degraded, sign_in_needed, throttled, unreachable), 0 for the others",
            None,
            &state_rows(&accounts),
        )?;
        let mut m = enc.encode_descriptor(
            "token_refreshes",
            "Token endpoint requests by account and result",
            None,
            MetricType::Counter,
        )?;
        for a in &accounts {
            for (result, v) in [
                ("success", a.token_requests.saturating_sub(a.token_failures)),
                ("failure", a.token_failures),
            ] {
                let labels = AccountResultLabels {
                    account: a.account.clone(),
                    result,
                };
                let fam = m.encode_family(&labels)?;
                prometheus_client::metrics::counter::ConstCounter::new(v).encode(fam)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed;
    impl Snapshot for Fixed {
        fn queue(&self) -> QueueSnapshot {
            QueueSnapshot {
                queued: 3,
                failed: 1,
                oldest_age_seconds: 42.0,
            }
        }
        fn accounts(&self) -> Vec<AccountSnapshot> {
            vec![AccountSnapshot {
                account: "scanner".into(),
                token_expires_in: Some(3000.0),
                token_requests: 5,
                token_failures: 1,
                sign_in_required: false,
                states: vec![("ok", false), ("degraded", true)],
            }]
        }
    }

    #[test]
    fn exposition_has_conventional_names() {
        let m = Metrics::new(Some(Arc::new(Fixed)));
        m.sessions
            .get_or_create(&SessionLabels {
                listener: "smtp-2525".into(),
                tls: "starttls",
            })
            .inc();
        m.messages_received
            .get_or_create(&AccountLabels {
                account: "scanner".into(),
            })
            .inc();
        m.received_bytes
            .get_or_create(&AccountLabels {
                account: "scanner".into(),
            })
            .inc_by(1234);
        m.upstream_reply("scanner", 451, Some("4.7.500".into()));
        m.upstream_duration
            .get_or_create(&RouteLabels {
                account: "scanner".into(),
                route: "smtp",
            })
            .observe(0.2);
        let text = m.encode();
        for needle in [
            "smtp2oauth_sessions_total{listener=\"smtp-2525\",tls=\"starttls\"} 1",
            "smtp2oauth_messages_received_total{account=\"scanner\"} 1",
            "smtp2oauth_received_bytes_total{account=\"scanner\"} 1234",
            "smtp2oauth_upstream_replies_total{account=\"scanner\",class=\"4xx\",status=\"4.7.500\"} 1",
            "smtp2oauth_upstream_attempt_duration_seconds_bucket{le=\"0.25\",account=\"scanner\",route=\"smtp\"} 1",
            "smtp2oauth_queue_messages{state=\"queued\"} 3\n",
            "smtp2oauth_queue_oldest_message_age_seconds 42.0\n",
            "smtp2oauth_token_expiry_seconds{account=\"scanner\"} 3000.0\n",
            "smtp2oauth_token_refreshes_total{account=\"scanner\",result=\"failure\"} 1",
            "smtp2oauth_account_sign_in_required{account=\"scanner\"} 0.0\n",
            "smtp2oauth_account_state{account=\"scanner\",state=\"ok\"} 0.0\n",
            "smtp2oauth_account_state{account=\"scanner\",state=\"degraded\"} 1.0\n",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
