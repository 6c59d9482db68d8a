//! Turning raw counts and times into the figures we quote, as a table for people and as JSON for
//! scripts (`peers`, `compare` and `memory` build their summaries from these reports).
//!
//! Definitions live here, once, so every subcommand quotes the same thing:
//! - accepted msgs/s: accepted messages / (last 250 after a body − first connect);
//! - delivered msgs/s: accepted messages that reached the sink / (last arrival at the sink −
//!   first connect), so it includes draining the queue after the load stopped;
//! - MB/s: 10^6 bytes per second; accepted counts the bytes we sent, delivered the bytes the sink
//!   stored (the message plus the Received header of the relay or Postfix);
//! - latency: per accepted message, connect → 250 (first message of a session) or previous 250 →
//!   250 (later ones); median and p99 by nearest rank.

use crate::load::LoadResult;
use crate::sink::SinkResult;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// The load's shape and the server's settings, echoed in every report so a figure is never
/// separated from what produced it.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// "ceiling", "relay", "relay-nopool", "postfix" or "load".
    pub peer: String,
    pub target: String,
    pub sessions: usize,
    pub messages: u64,
    pub per_session: u64,
    pub size: usize,
    pub starttls: bool,
    /// The AUTH mechanism the load used ("PLAIN", "XOAUTH2"), if any.
    pub auth: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_for_upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_upstream_connections: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_idle_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postfix_concurrency: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_lifetime_s: Option<u64>,
}

/// Figures that exist only when we ran the relay and the sink ourselves.
#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    pub delivered: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub foreign: u64,
    pub delivered_window_s: f64,
    pub delivered_per_s: f64,
    pub delivered_mb_per_s: f64,
    pub upstream_connections: usize,
    pub token_requests: usize,
    /// Peak memory of the server under test: the relay's VmHWM; for Postfix the highest sum of
    /// its processes' PSS seen by a 500 ms sampler. None for the ceiling.
    pub server_peak_rss_kib: Option<u64>,
    /// CPU of the server under test (user + system) during the run: the relay's; for Postfix
    /// every process of the instance (live ones and those its master reaped).
    pub server_cpu_s: Option<f64>,
    pub server_cpu_sys_s: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub label: String,
    pub settings: Settings,
    pub sent: u64,
    pub accepted: u64,
    pub refused: u64,
    pub errors: u64,
    pub sessions_opened: u64,
    pub problems: BTreeMap<String, u64>,
    pub accepted_window_s: f64,
    pub accepted_per_s: f64,
    pub accepted_mb_per_s: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    /// CPU time of the benchmark process itself (load generator and fakes).
    pub bench_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// Why the run was cut short, if it was (e.g. the memory guard killed the relay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
}

fn rate(n: u64, window: Duration) -> f64 {
    let s = window.as_secs_f64();
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

/// Nearest-rank percentile of sorted values (microseconds), in milliseconds.
fn percentile_ms(sorted_us: &[u32], p: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let rank = ((p * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    Some(f64::from(sorted_us[rank - 1]) / 1000.0)
}

pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

impl Report {
    pub fn new(
        label: &str,
        settings: Settings,
        load: &LoadResult,
        bench_cpu: Option<Cpu>,
    ) -> Report {
        let window = match (load.first_connect, load.last_accept) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => Duration::ZERO,
        };
        let mut lat = load.latencies_us.clone();
        lat.sort_unstable();
        Report {
            label: label.to_string(),
            settings,
            sent: load.sent,
            accepted: load.accepted,
            refused: load.refused,
            errors: load.errors,
            sessions_opened: load.sessions,
            problems: load.problems.clone(),
            accepted_window_s: window.as_secs_f64(),
            accepted_per_s: rate(load.accepted, window),
            accepted_mb_per_s: rate(load.bytes_accepted, window) / 1e6,
            latency_p50_ms: percentile_ms(&lat, 0.50),
            latency_p99_ms: percentile_ms(&lat, 0.99),
            latency_max_ms: lat.last().map(|&v| f64::from(v) / 1000.0),
            bench_cpu_s: bench_cpu.map(|c| c.total().as_secs_f64()),
            delivery: None,
            aborted: None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn with_delivery(
        mut self,
        load: &LoadResult,
        sink: &SinkResult,
        upstream_connections: usize,
        token_requests: usize,
        server_peak_rss_kib: Option<u64>,
        server_cpu: Option<Cpu>,
    ) -> Report {
        let window = match (load.first_connect, sink.last_arrival) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => Duration::ZERO,
        };
        self.delivery = Some(Delivery {
            delivered: sink.delivered,
            missing: sink.missing,
            duplicates: sink.duplicates,
            foreign: sink.foreign,
            delivered_window_s: window.as_secs_f64(),
            delivered_per_s: rate(sink.delivered, window),
            delivered_mb_per_s: rate(sink.bytes, window) / 1e6,
            upstream_connections,
            token_requests,
            server_peak_rss_kib,
            server_cpu_s: server_cpu.map(|c| c.total().as_secs_f64()),
            server_cpu_sys_s: server_cpu.map(|c| c.sys.as_secs_f64()),
        });
        self
    }

    pub fn delivered_per_s(&self) -> Option<f64> {
        self.delivery.as_ref().map(|d| d.delivered_per_s)
    }

    /// A two-column table.
    pub fn table(&self) -> String {
        let s = &self.settings;
        let mut rows: Vec<(String, String)> = vec![
            ("target".into(), s.target.clone()),
            (
                "load".into(),
                format!(
                    "{} sessions, {} messages of {} B, {} per session{}{}",
                    s.sessions,
                    s.messages,
                    s.size,
                    s.per_session,
                    s.auth
                        .as_deref()
                        .map_or(String::new(), |m| format!(", AUTH {m}")),
                    if s.starttls { ", STARTTLS" } else { "" },
                ),
            ),
        ];
        if let Some(fsync) = s.fsync {
            rows.push((
                "relay".into(),
                format!(
                    "fsync={fsync}, wait_for_upstream={}, max_upstream_connections={}, \
                     upstream_idle_timeout={}",
                    s.wait_for_upstream.as_deref().unwrap_or("?"),
                    s.max_upstream_connections.unwrap_or(0),
                    s.upstream_idle_timeout.as_deref().unwrap_or("?"),
                ),
            ));
        }
        if let Some(c) = s.postfix_concurrency {
            rows.push((
                "postfix".into(),
                format!("default_destination_concurrency_limit={c}, durable queue"),
            ));
        }
        if s.reply_delay_ms.is_some() || s.token_lifetime_s.is_some() {
            rows.push((
                "upstream".into(),
                format!(
                    "reply delay {} ms, token lifetime {} s",
                    s.reply_delay_ms.unwrap_or(0),
                    s.token_lifetime_s.unwrap_or(0)
                ),
            ));
        }
        rows.push(("messages sent".into(), self.sent.to_string()));
        rows.push(("accepted (2xx)".into(), self.accepted.to_string()));
        rows.push((
            "refused / errors".into(),
            format!("{} / {}", self.refused, self.errors),
        ));
        rows.push((
            "accepted msgs/s".into(),
            format!(
                "{:.1}  ({:.2} s, first connect → last 250)",
                self.accepted_per_s, self.accepted_window_s
            ),
        ));
        rows.push((
            "accepted MB/s".into(),
            format!("{:.2}", self.accepted_mb_per_s),
        ));
        if let Some(d) = &self.delivery {
            rows.push((
                "delivered msgs/s".into(),
                format!(
                    "{:.1}  ({:.2} s, first connect → last arrival at the sink)",
                    d.delivered_per_s, d.delivered_window_s
                ),
            ));
            rows.push((
                "delivered MB/s".into(),
                format!("{:.2}", d.delivered_mb_per_s),
            ));
            rows.push((
                "delivered / missing / dup".into(),
                format!("{} / {} / {}", d.delivered, d.missing, d.duplicates),
            ));
        }
        rows.push((
            "latency p50 / p99 / max".into(),
            format!(
                "{} / {} / {} ms",
                fmt_ms(self.latency_p50_ms),
                fmt_ms(self.latency_p99_ms),
                fmt_ms(self.latency_max_ms)
            ),
        ));
        if let Some(d) = &self.delivery {
            rows.push((
                "upstream connections".into(),
                d.upstream_connections.to_string(),
            ));
            rows.push(("token requests".into(), d.token_requests.to_string()));
            rows.push((
                format!(
                    "{} peak {}",
                    s.peer,
                    if s.peer == "postfix" {
                        "PSS (sum)"
                    } else {
                        "RSS"
                    }
                ),
                d.server_peak_rss_kib
                    .map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            ));
            rows.push((
                format!("{} CPU", s.peer),
                match (d.server_cpu_s, d.server_cpu_sys_s) {
                    (Some(c), Some(sys)) => format!(
                        "{c:.2} s ({sys:.2} s system), {:.2} ms per delivered message",
                        if d.delivered > 0 {
                            c * 1000.0 / d.delivered as f64
                        } else {
                            0.0
                        }
                    ),
                    _ => "-".into(),
                },
            ));
        }
        rows.push((
            "bench CPU".into(),
            self.bench_cpu_s
                .map_or("?".into(), |c| format!("{c:.2} s (generator + fakes)")),
        ));
        if let Some(why) = &self.aborted {
            rows.push(("ABORTED".into(), why.clone()));
        }
        for (k, v) in &self.problems {
            rows.push(("problem".into(), format!("{v} × {k}")));
        }
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = format!("== {} ==\n", self.label);
        for (k, v) in rows {
            let _ = writeln!(out, "{k:<width$}  {v}");
        }
        out
    }
}

pub fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

/// CPU time of a process, split: system time is where file and socket work shows up.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cpu {
    pub user: Duration,
    pub sys: Duration,
}

impl Cpu {
    pub fn total(&self) -> Duration {
        self.user + self.sys
    }

    /// CPU used between `earlier` and this reading.
    pub fn since(&self, earlier: Cpu) -> Cpu {
        Cpu {
            user: self.user.saturating_sub(earlier.user),
            sys: self.sys.saturating_sub(earlier.sys),
        }
    }
}

/// User and system CPU time of a process, from a `/proc/PID/stat` file.
pub fn process_cpu_time(stat_path: &str) -> Option<Cpu> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // The command name (field 2) may contain spaces; fields are counted after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    #[allow(unsafe_code)]
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some(Cpu {
        user: Duration::from_secs_f64(utime as f64 / ticks),
        sys: Duration::from_secs_f64(stime as f64 / ticks),
    })
}

/// CPU used between two optional readings.
pub fn cpu_between(before: Option<Cpu>, after: Option<Cpu>) -> Option<Cpu> {
    Some(after?.since(before?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&v, 0.5), Some(50.0));
        assert_eq!(percentile_ms(&v, 0.99), Some(99.0));
        assert_eq!(percentile_ms(&[7000], 0.99), Some(7.0));
        assert_eq!(percentile_ms(&[], 0.5), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn reads_our_own_cpu_time() {
        assert!(process_cpu_time("/proc/self/stat").is_some());
    }
}
