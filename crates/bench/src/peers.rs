//! The same load through several peers, repeated and alternated: how the relay measures against its targets.
//!
//! Why this shape: "at least 2× Postfix" or "within 2 ms of the sink alone" are ratios, and on a
//! shared, noisy machine a ratio means something only between runs seconds apart. Each round runs
//! every peer once (fresh fakes and server each time); odd rounds run the peers in reverse order
//! (ABC, CBA, ...: ABBA generalised, so a slow drift of the machine hurts every peer alike). We
//! quote each peer's medians, the ratio of the medians, and the ratio within each round.

use crate::report::{Report, fmt_ms, median};
use crate::scenario::{self, Peer, Scenario};
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Debug, Serialize)]
pub struct PeerSummary {
    pub peer: String,
    pub runs: usize,
    pub accepted_per_s_median: Option<f64>,
    pub delivered_per_s_median: Option<f64>,
    pub accepted_mb_per_s_median: Option<f64>,
    pub delivered_mb_per_s_median: Option<f64>,
    pub latency_p50_ms_median: Option<f64>,
    pub latency_p99_ms_median: Option<f64>,
    pub server_peak_rss_kib_median: Option<f64>,
    pub server_cpu_s_median: Option<f64>,
    pub upstream_connections_median: Option<f64>,
    pub token_requests_max: usize,
    /// Over all runs of this peer.
    pub refused: u64,
    pub errors: u64,
    pub missing: u64,
    pub duplicates: u64,
}

/// `numerator` / `denominator` for one figure.
#[derive(Debug, Serialize)]
pub struct Ratio {
    pub figure: String,
    pub numerator: String,
    pub denominator: String,
    pub of_medians: Option<f64>,
    pub per_round: Vec<f64>,
}

/// How much longer a device waits through a relay than when it sends straight to the sink.
#[derive(Debug, Serialize)]
pub struct AddedLatency {
    pub peer: String,
    /// Per round: this peer's p50 − the ceiling's p50 (ms).
    pub p50_per_round_ms: Vec<f64>,
    pub p99_per_round_ms: Vec<f64>,
    pub p50_median_ms: Option<f64>,
    pub p99_median_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct PeerComparison {
    pub runs: Vec<Report>,
    pub peers: Vec<PeerSummary>,
    pub ratios: Vec<Ratio>,
    pub added_latency: Vec<AddedLatency>,
    /// Peers that were asked for but could not run here (e.g. Postfix not installed), and why.
    pub skipped: Vec<(String, String)>,
}

/// The order of the peers in round `round` (0-based): as given, reversed every other round.
pub fn round_order(peers: &[Peer], round: usize) -> Vec<Peer> {
    let mut order = peers.to_vec();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// Reads one figure of a run.
type Figure = fn(&Report) -> Option<f64>;

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Runs `rounds` rounds over `peers`; `progress` gets each run's report as it finishes.
pub async fn run(
    base: &Scenario,
    peers: &[Peer],
    rounds: usize,
    mut progress: impl FnMut(&Report),
) -> anyhow::Result<PeerComparison> {
    let mut peers: Vec<Peer> = peers.to_vec();
    peers.dedup();
    let mut skipped = Vec::new();
    if peers.contains(&Peer::Postfix)
        && let Err(why) = crate::postfix::available()
    {
        eprintln!("smtp2oauth-bench: skipping Postfix: {why}");
        skipped.push(("postfix".to_string(), why));
        peers.retain(|p| *p != Peer::Postfix);
    }
    let mut runs: Vec<Report> = Vec::new();
    // by_round[round][peer index] = index into `runs`.
    let mut by_round: Vec<Vec<usize>> = Vec::new();
    for round in 0..rounds {
        let mut idx = vec![0usize; peers.len()];
        for peer in round_order(&peers, round) {
            let label = format!("round {}/{rounds}: {}", round + 1, peer.name());
            let mut sc = base.clone();
            if let Some(path) = &base.keep_log {
                sc.keep_log =
                    Some(path.with_extension(format!("{}.{}.log", round + 1, peer.name())));
            }
            let report = scenario::run(&sc, peer, &label).await?;
            progress(&report);
            let at = peers.iter().position(|p| *p == peer).unwrap_or(0);
            idx[at] = runs.len();
            runs.push(report);
        }
        by_round.push(idx);
    }

    let of_peer = |i: usize| -> Vec<&Report> { by_round.iter().map(|r| &runs[r[i]]).collect() };
    let summaries: Vec<PeerSummary> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| summarise(p.name(), &of_peer(i)))
        .collect();

    let figures: [(&str, Figure); 2] = [
        ("delivered msgs/s", |r| {
            r.delivery.as_ref().map(|d| d.delivered_per_s)
        }),
        ("delivered MB/s", |r| {
            r.delivery.as_ref().map(|d| d.delivered_mb_per_s)
        }),
    ];
    let mut ratios = Vec::new();
    let mut added_latency = Vec::new();
    // Relays over every other peer; between relays, each pair once (relay over the others,
    // relay-nopool over the baseline).
    let rank = |p: Peer| match p {
        Peer::Relay => 0,
        Peer::RelayNopool => 1,
        Peer::Baseline => 2,
        Peer::Ceiling | Peer::Postfix => 3,
    };
    for (a, pa) in peers.iter().enumerate() {
        if !pa.is_relay() {
            continue;
        }
        for (b, pb) in peers.iter().enumerate() {
            if a == b || rank(*pb) <= rank(*pa) {
                continue;
            }
            for (figure, get) in figures {
                let med = |i: usize| {
                    median(&mut of_peer(i).iter().filter_map(|r| get(r)).collect::<Vec<_>>())
                };
                ratios.push(Ratio {
                    figure: figure.to_string(),
                    numerator: pa.name().into(),
                    denominator: pb.name().into(),
                    of_medians: ratio(med(a), med(b)),
                    per_round: by_round
                        .iter()
                        .filter_map(|r| ratio(get(&runs[r[a]]), get(&runs[r[b]])))
                        .collect(),
                });
            }
            if *pb == Peer::Ceiling {
                let diff = |f: Figure| -> Vec<f64> {
                    by_round
                        .iter()
                        .filter_map(|r| Some(f(&runs[r[a]])? - f(&runs[r[b]])?))
                        .collect()
                };
                let mut p50 = diff(|r| r.latency_p50_ms);
                let mut p99 = diff(|r| r.latency_p99_ms);
                added_latency.push(AddedLatency {
                    peer: pa.name().into(),
                    p50_median_ms: median(&mut p50.clone()),
                    p99_median_ms: median(&mut p99.clone()),
                    p50_per_round_ms: std::mem::take(&mut p50),
                    p99_per_round_ms: std::mem::take(&mut p99),
                });
            }
        }
    }
    Ok(PeerComparison {
        runs,
        peers: summaries,
        ratios,
        added_latency,
        skipped,
    })
}

fn summarise(peer: &str, runs: &[&Report]) -> PeerSummary {
    let collect = |f: &dyn Fn(&Report) -> Option<f64>| -> Option<f64> {
        median(&mut runs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
    };
    let sum = |f: &dyn Fn(&Report) -> u64| -> u64 { runs.iter().map(|r| f(r)).sum() };
    PeerSummary {
        peer: peer.to_string(),
        runs: runs.len(),
        accepted_per_s_median: collect(&|r| Some(r.accepted_per_s)),
        delivered_per_s_median: collect(&|r| r.delivery.as_ref().map(|d| d.delivered_per_s)),
        accepted_mb_per_s_median: collect(&|r| Some(r.accepted_mb_per_s)),
        delivered_mb_per_s_median: collect(&|r| r.delivery.as_ref().map(|d| d.delivered_mb_per_s)),
        latency_p50_ms_median: collect(&|r| r.latency_p50_ms),
        latency_p99_ms_median: collect(&|r| r.latency_p99_ms),
        server_peak_rss_kib_median: collect(&|r| {
            r.delivery
                .as_ref()
                .and_then(|d| d.server_peak_rss_kib)
                .map(|k| k as f64)
        }),
        server_cpu_s_median: collect(&|r| r.delivery.as_ref().and_then(|d| d.server_cpu_s)),
        upstream_connections_median: collect(&|r| {
            r.delivery.as_ref().map(|d| d.upstream_connections as f64)
        }),
        token_requests_max: runs
            .iter()
            .filter_map(|r| r.delivery.as_ref().map(|d| d.token_requests))
            .max()
            .unwrap_or(0),
        refused: sum(&|r| r.refused),
        errors: sum(&|r| r.errors),
        missing: sum(&|r| r.delivery.as_ref().map_or(0, |d| d.missing)),
        duplicates: sum(&|r| r.delivery.as_ref().map_or(0, |d| d.duplicates)),
    }
}

fn signed(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:+.2}"))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

impl PeerComparison {
    /// One line per run, then each peer's medians, the ratios and the added latency.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let header = |out: &mut String, first: &str| {
            let _ = writeln!(
                out,
                "{first:<26} {:>10} {:>11} {:>10} {:>8} {:>8} {:>13} {:>8} {:>6} {:>5} {:>7} {:>8} {:>7}",
                "accepted/s",
                "delivered/s",
                "deliv MB/s",
                "p50 ms",
                "p99 ms",
                "fail/miss/dup",
                "up conns",
                "tokens",
                "",
                "RSS MiB",
                "server s",
                "bench s"
            );
        };
        header(&mut out, "run");
        for r in &self.runs {
            let d = r.delivery.as_ref();
            let _ = writeln!(
                out,
                "{:<26} {:>10.1} {:>11.1} {:>10.2} {:>8} {:>8} {:>13} {:>8} {:>6} {:>5} {:>7} {:>8} {:>7}",
                r.label,
                r.accepted_per_s,
                r.delivered_per_s().unwrap_or(0.0),
                d.map_or(0.0, |d| d.delivered_mb_per_s),
                fmt_ms(r.latency_p50_ms),
                fmt_ms(r.latency_p99_ms),
                format!(
                    "{}/{}/{}",
                    r.refused + r.errors,
                    d.map_or(0, |d| d.missing),
                    d.map_or(0, |d| d.duplicates)
                ),
                d.map_or(0, |d| d.upstream_connections),
                d.map_or(0, |d| d.token_requests),
                if r.aborted.is_some() { "ABORT" } else { "" },
                opt(
                    d.and_then(|d| d.server_peak_rss_kib)
                        .map(|k| k as f64 / 1024.0),
                    1
                ),
                opt(d.and_then(|d| d.server_cpu_s), 1),
                opt(r.bench_cpu_s, 1),
            );
        }
        let _ = writeln!(out);
        header(&mut out, "median of");
        for m in &self.peers {
            let _ = writeln!(
                out,
                "{:<26} {:>10} {:>11} {:>10} {:>8} {:>8} {:>13} {:>8} {:>6} {:>5} {:>7} {:>8}",
                format!("{} ({} runs)", m.peer, m.runs),
                opt(m.accepted_per_s_median, 1),
                opt(m.delivered_per_s_median, 1),
                opt(m.delivered_mb_per_s_median, 2),
                fmt_ms(m.latency_p50_ms_median),
                fmt_ms(m.latency_p99_ms_median),
                format!("{}/{}/{}", m.refused + m.errors, m.missing, m.duplicates),
                opt(m.upstream_connections_median, 0),
                m.token_requests_max,
                "",
                opt(m.server_peak_rss_kib_median.map(|k| k / 1024.0), 1),
                opt(m.server_cpu_s_median, 1),
            );
        }
        let list = |v: &[f64], digits: usize| {
            v.iter()
                .map(|r| format!("{r:.digits$}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.ratios.is_empty() {
            let _ = writeln!(out);
        }
        for r in &self.ratios {
            let _ = writeln!(
                out,
                "{:<40} {:>6}  (ratio of medians; per round: {})",
                format!("{}/{} {}", r.numerator, r.denominator, r.figure),
                opt(r.of_medians, 2),
                list(&r.per_round, 2),
            );
        }
        for a in &self.added_latency {
            let _ = writeln!(
                out,
                "{:<40} p50 {:>7} ms (per round: {}), p99 {:>7} ms (per round: {})",
                format!("added latency {}−ceiling", a.peer),
                signed(a.p50_median_ms),
                list(&a.p50_per_round_ms, 2),
                signed(a.p99_median_ms),
                list(&a.p99_per_round_ms, 2),
            );
        }
        for (peer, why) in &self.skipped {
            let _ = writeln!(out, "skipped {peer}: {why}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_alternate_the_order() {
        let p = [Peer::Ceiling, Peer::Relay, Peer::Postfix];
        assert_eq!(round_order(&p, 0), p.to_vec());
        assert_eq!(
            round_order(&p, 1),
            vec![Peer::Postfix, Peer::Relay, Peer::Ceiling]
        );
        assert_eq!(round_order(&p, 2), p.to_vec());
    }
}
