//! Durable versus non-durable spooling, same load, same process run: what durability costs.
//!
//! Why this shape: the machine is shared and noisy, so one pair of runs proves little. We repeat
//! the pair `--runs` times, alternate which mode goes first (ABBA: a slow drift of the machine
//! then hurts both modes alike), and quote medians per mode, the ratio of the medians, and the
//! ratio within each pair (runs seconds apart see the same machine).

use crate::report::{Report, fmt_ms, median};
use crate::scenario::{self, Peer, Scenario};
use serde::Serialize;
use std::fmt::Write as _;

/// The aim: durable keeps at least half of the non-durable rate.
pub const TARGET_RATIO: f64 = 0.5;

#[derive(Debug, Serialize)]
pub struct ModeSummary {
    pub runs: usize,
    pub accepted_per_s_median: Option<f64>,
    pub delivered_per_s_median: Option<f64>,
    pub latency_p50_ms_median: Option<f64>,
    pub latency_p99_ms_median: Option<f64>,
    pub relay_peak_rss_kib_median: Option<f64>,
    pub relay_cpu_s_median: Option<f64>,
    pub relay_cpu_sys_s_median: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub runs: Vec<Report>,
    pub durable: ModeSummary,
    pub non_durable: ModeSummary,
    /// durable median / non-durable median.
    pub accepted_ratio_of_medians: Option<f64>,
    pub delivered_ratio_of_medians: Option<f64>,
    /// durable / non-durable within each pair, in run order.
    pub accepted_ratio_per_pair: Vec<f64>,
    pub delivered_ratio_per_pair: Vec<f64>,
    pub target_ratio: f64,
}

fn summarise(runs: &[&Report]) -> ModeSummary {
    let collect = |f: &dyn Fn(&Report) -> Option<f64>| -> Option<f64> {
        median(&mut runs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
    };
    ModeSummary {
        runs: runs.len(),
        accepted_per_s_median: collect(&|r| Some(r.accepted_per_s)),
        delivered_per_s_median: collect(&|r| r.delivered_per_s()),
        latency_p50_ms_median: collect(&|r| r.latency_p50_ms),
        latency_p99_ms_median: collect(&|r| r.latency_p99_ms),
        relay_peak_rss_kib_median: collect(&|r| {
            r.delivery
                .as_ref()
                .and_then(|d| d.server_peak_rss_kib)
                .map(|k| k as f64)
        }),
        relay_cpu_s_median: collect(&|r| r.delivery.as_ref().and_then(|d| d.server_cpu_s)),
        relay_cpu_sys_s_median: collect(&|r| r.delivery.as_ref().and_then(|d| d.server_cpu_sys_s)),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Runs the pairs; `progress` gets each run's table as it finishes.
pub async fn run(
    base: &Scenario,
    runs: usize,
    mut progress: impl FnMut(&Report),
) -> anyhow::Result<Comparison> {
    let mut reports = Vec::new();
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for i in 0..runs {
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        let mut idx = [0usize; 2];
        for fsync in order {
            let mut sc = base.clone();
            sc.relay.fsync = fsync;
            let label = format!(
                "run {}/{runs}: {}",
                i + 1,
                if fsync { "durable" } else { "non-durable" }
            );
            if let Some(path) = &base.keep_log {
                let mode = if fsync { "durable" } else { "non-durable" };
                sc.keep_log = Some(path.with_extension(format!("{}.{mode}.log", i + 1)));
            }
            let report = scenario::run(&sc, Peer::Relay, &label).await?;
            progress(&report);
            idx[usize::from(!fsync)] = reports.len();
            reports.push(report);
        }
        pairs.push((idx[0], idx[1]));
    }
    let durable: Vec<&Report> = pairs.iter().map(|&(d, _)| &reports[d]).collect();
    let non_durable: Vec<&Report> = pairs.iter().map(|&(_, n)| &reports[n]).collect();
    let d = summarise(&durable);
    let n = summarise(&non_durable);
    let accepted_ratio_per_pair = pairs
        .iter()
        .filter_map(|&(a, b)| {
            ratio(
                Some(reports[a].accepted_per_s),
                Some(reports[b].accepted_per_s),
            )
        })
        .collect();
    let delivered_ratio_per_pair = pairs
        .iter()
        .filter_map(|&(a, b)| ratio(reports[a].delivered_per_s(), reports[b].delivered_per_s()))
        .collect();
    Ok(Comparison {
        accepted_ratio_of_medians: ratio(d.accepted_per_s_median, n.accepted_per_s_median),
        delivered_ratio_of_medians: ratio(d.delivered_per_s_median, n.delivered_per_s_median),
        durable: d,
        non_durable: n,
        accepted_ratio_per_pair,
        delivered_ratio_per_pair,
        runs: reports,
        target_ratio: TARGET_RATIO,
    })
}

impl Comparison {
    /// One line per run, then the medians and the ratios.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<26} {:>10} {:>11} {:>8} {:>8} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7}",
            "run",
            "accepted/s",
            "delivered/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "missing",
            "RSS MiB",
            "relay s",
            "sys s",
            "bench s"
        );
        for r in &self.runs {
            let d = r.delivery.as_ref();
            let _ = writeln!(
                out,
                "{:<26} {:>10.1} {:>11.1} {:>8} {:>8} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7}",
                r.label,
                r.accepted_per_s,
                r.delivered_per_s().unwrap_or(0.0),
                fmt_ms(r.latency_p50_ms),
                fmt_ms(r.latency_p99_ms),
                r.refused + r.errors,
                d.map_or(0, |d| d.missing),
                d.and_then(|d| d.server_peak_rss_kib)
                    .map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
                d.and_then(|d| d.server_cpu_s)
                    .map_or("?".into(), |c| format!("{c:.1}")),
                d.and_then(|d| d.server_cpu_sys_s)
                    .map_or("?".into(), |c| format!("{c:.1}")),
                r.bench_cpu_s.map_or("?".into(), |c| format!("{c:.1}")),
            );
        }
        for (name, m) in [
            ("median durable", &self.durable),
            ("median non-durable", &self.non_durable),
        ] {
            let _ = writeln!(
                out,
                "{:<26} {:>10.1} {:>11.1} {:>8} {:>8} {:>6} {:>7} {:>7} {:>7} {:>7}",
                format!("{name} ({})", m.runs),
                m.accepted_per_s_median.unwrap_or(0.0),
                m.delivered_per_s_median.unwrap_or(0.0),
                fmt_ms(m.latency_p50_ms_median),
                fmt_ms(m.latency_p99_ms_median),
                "",
                "",
                m.relay_peak_rss_kib_median
                    .map_or("?".into(), |k| format!("{:.1}", k / 1024.0)),
                m.relay_cpu_s_median
                    .map_or("?".into(), |c| format!("{c:.1}")),
                m.relay_cpu_sys_s_median
                    .map_or("?".into(), |c| format!("{c:.1}")),
            );
        }
        let list = |v: &[f64]| {
            v.iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let verdict = |r: Option<f64>| match r {
            Some(r) if r >= TARGET_RATIO => "meets the target (>= 0.50)",
            Some(_) => "MISSES the target (>= 0.50)",
            None => "no figure",
        };
        let _ = writeln!(
            out,
            "\ndurable/non-durable, accepted msgs/s:  {:.2} (ratio of medians; per pair: {}) {}",
            self.accepted_ratio_of_medians.unwrap_or(0.0),
            list(&self.accepted_ratio_per_pair),
            verdict(self.accepted_ratio_of_medians),
        );
        let _ = writeln!(
            out,
            "durable/non-durable, delivered msgs/s: {:.2} (ratio of medians; per pair: {}) {}",
            self.delivered_ratio_of_medians.unwrap_or(0.0),
            list(&self.delivered_ratio_per_pair),
            verdict(self.delivered_ratio_of_medians),
        );
        out
    }
}
