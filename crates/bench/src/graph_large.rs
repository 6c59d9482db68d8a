//! One large scan through the Graph route: how long it takes and what memory it costs, against
//! a small one through the same route in the same run.
//!
//! Why a subcommand of its own: a message too large for one Graph request goes through a
//! draft and upload sessions (`graph_large_messages = "upload"`): more requests, the message
//! read whole and its attachment decoded in memory. The figure users ask for is the time and
//! the peak memory of one such message (35 MB, Exchange Online's default limit) in the release
//! binary; a 1 MB message through the same route (one `sendMail`) measured in the same run, in
//! alternating order, is the baseline the large one is divided by (the machine is shared and
//! noisy; ratios and medians hold, absolute figures drift).
//!
//! Each measurement starts a fresh relay and fresh fakes (token endpoint, Graph over HTTPS with
//! the test CA, in this process so their copies of the message are not counted): the relay is
//! put in service ([`WARM_UP_SESSIONS`] small messages through `sendMail`, so the login is
//! cached, a token held and every argon2 worker has run), rests, its VmRSS is read, its peak
//! reset (`/proc/PID/clear_refs` = 5); then one message of the size measured is sent
//! (`message::Template`: one base64 PDF, as a scanner sends it) and timed from connect until
//! Graph holds it; the new VmHWM is the peak.

use crate::load;
use crate::memory::{self, WARM_UP_SESSIONS, reset_peak};
use crate::relay::{RelayProcess, UpstreamSide, proc_status_kib};
use crate::report::median;
use crate::scenario::{Scenario, sync_disks, unique_tag};
use crate::upstream::MAILBOX;
use serde::Serialize;
use smtp2oauth_testkit::{FakeGraph, FakeIdp, IdpConfig, TestPki};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct GraphLargeOptions {
    /// The baseline message (one `sendMail`).
    pub baseline_size: usize,
    /// The message measured (a draft and upload sessions).
    pub large_size: usize,
    /// Rest before the idle figure is read.
    pub settle: Duration,
}

/// One message through one fresh relay.
#[derive(Debug, Default, Serialize)]
pub struct Measurement {
    pub size: usize,
    pub delivered: bool,
    /// Connect → the device's 250.
    pub accept_ms: Option<f64>,
    /// Connect → Graph holds the message.
    pub delivered_ms: Option<f64>,
    pub idle_rss_kib: Option<u64>,
    pub peak_kib: Option<u64>,
    /// Graph requests the delivery took.
    pub requests: usize,
}

impl Measurement {
    pub fn increase_kib(&self) -> Option<u64> {
        Some(self.peak_kib?.saturating_sub(self.idle_rss_kib?))
    }
}

#[derive(Debug, Serialize)]
pub struct Run {
    pub baseline: Measurement,
    pub large: Measurement,
    /// The large message was measured first in this run.
    pub large_first: bool,
}

#[derive(Debug, Serialize)]
pub struct GraphLargeReport {
    pub runs: Vec<Run>,
    pub baseline_ms_median: Option<f64>,
    pub large_ms_median: Option<f64>,
    /// Median over runs of large / baseline time in the same run.
    pub time_ratio_median: Option<f64>,
    pub baseline_increase_kib_median: Option<f64>,
    pub large_increase_kib_median: Option<f64>,
    pub baseline_peak_kib_median: Option<f64>,
    pub large_peak_kib_median: Option<f64>,
    /// Every message was delivered (otherwise the figures are not comparable).
    pub complete: bool,
}

pub async fn run(
    sc: &Scenario,
    opts: &GraphLargeOptions,
    runs: usize,
    mut progress: impl FnMut(usize, &Run),
) -> anyhow::Result<GraphLargeReport> {
    let mut all = Vec::new();
    for i in 0..runs {
        // ABBA: a slow drift of the machine hurts both sizes alike.
        let large_first = i % 2 == 1;
        let (first, second) = if large_first {
            (opts.large_size, opts.baseline_size)
        } else {
            (opts.baseline_size, opts.large_size)
        };
        let a = one(sc, opts, first).await?;
        let b = one(sc, opts, second).await?;
        let (baseline, large) = if large_first { (b, a) } else { (a, b) };
        let r = Run {
            baseline,
            large,
            large_first,
        };
        progress(i, &r);
        all.push(r);
    }
    Ok(report(all))
}

fn report(runs: Vec<Run>) -> GraphLargeReport {
    let med = |f: &dyn Fn(&Run) -> Option<f64>| -> Option<f64> {
        median(&mut runs.iter().filter_map(f).collect::<Vec<_>>())
    };
    let kib = |v: Option<u64>| v.map(|k| k as f64);
    GraphLargeReport {
        baseline_ms_median: med(&|r| r.baseline.delivered_ms),
        large_ms_median: med(&|r| r.large.delivered_ms),
        time_ratio_median: med(&|r| Some(r.large.delivered_ms? / r.baseline.delivered_ms?)),
        baseline_increase_kib_median: med(&|r| kib(r.baseline.increase_kib())),
        large_increase_kib_median: med(&|r| kib(r.large.increase_kib())),
        baseline_peak_kib_median: med(&|r| kib(r.baseline.peak_kib)),
        large_peak_kib_median: med(&|r| kib(r.large.peak_kib)),
        complete: runs
            .iter()
            .all(|r| r.baseline.delivered && r.large.delivered),
        runs,
    }
}

/// The fakes of one measurement: token endpoint and Graph.
struct Fakes {
    pki: TestPki,
    idp: FakeIdp,
    idp_config: IdpConfig,
    graph: FakeGraph,
}

impl Fakes {
    async fn start(sc: &Scenario) -> Fakes {
        let pki = TestPki::new();
        let idp_config = IdpConfig {
            expires_in: sc.token_lifetime,
            ..IdpConfig::default()
        };
        let idp = FakeIdp::start(idp_config.clone()).await;
        let graph = FakeGraph::start(pki.server_config(), MAILBOX, idp.scope_validator()).await;
        Fakes {
            pki,
            idp,
            idp_config,
            graph,
        }
    }

    /// The relay's account: the Graph route, large messages uploaded.
    fn side(&self) -> UpstreamSide<'_> {
        UpstreamSide {
            mailbox: MAILBOX,
            authority: self.idp.authority(),
            tenant: self.idp_config.tenant.clone(),
            client_id: self.idp_config.client_id.clone(),
            client_secret: self.idp_config.client_secret.clone().unwrap_or_default(),
            smtp_port: 0,
            ca_file: self.pki.ca_pem_path(),
            cert_file: self.pki.cert_pem_path(),
            key_file: self.pki.key_pem_path(),
            route_keys: Some(format!(
                "route = \"graph\"\ngraph_url = \"{}\"\ngraph_large_messages = \"upload\"\n",
                self.graph.url()
            )),
        }
    }
}

/// `sessions` messages of `size` bytes, one per session, all at once; returns the load's
/// result once Graph holds `expect` messages in all (or the drain timeout passed).
async fn send(
    sc: &Scenario,
    fakes: &Fakes,
    relay: &RelayProcess,
    sessions: usize,
    size: usize,
    expect: usize,
) -> (load::LoadResult, Instant, bool) {
    // Logged in as the scenario says (`--device-auth`), as the memory bench does.
    let spec = Arc::new(memory::one_message_each(
        sc,
        relay.addr.to_string(),
        sessions,
        size,
        &unique_tag(),
    ));
    let base = Instant::now();
    let result = load::run(spec, base).await;
    let held = fakes
        .graph
        .wait_for_messages(expect, sc.drain_timeout)
        .await
        .len();
    (result, base, held >= expect)
}

async fn one(sc: &Scenario, opts: &GraphLargeOptions, size: usize) -> anyhow::Result<Measurement> {
    tokio::task::block_in_place(sync_disks);
    tokio::time::sleep(sc.settle).await;
    let fakes = Fakes::start(sc).await;
    let mut settings = sc.relay.clone();
    settings.max_message_size = settings.max_message_size.max(size as u64 + 64 * 1024);
    let mut relay = tokio::task::block_in_place(|| RelayProcess::start(&settings, &fakes.side()))?;
    let pid = relay.pid().unwrap_or(0);
    send(
        sc,
        &fakes,
        &relay,
        WARM_UP_SESSIONS,
        10 * 1024,
        WARM_UP_SESSIONS,
    )
    .await;
    tokio::time::sleep(opts.settle).await;
    let mut m = Measurement {
        size,
        idle_rss_kib: proc_status_kib(pid, "VmRSS:"),
        ..Measurement::default()
    };
    if let Err(e) = reset_peak(pid) {
        eprintln!(
            "smtp2oauth-bench: cannot reset the relay's peak RSS ({e}); the figure includes start-up"
        );
    }
    let before = fakes.graph.requests().len();
    let (load, base, delivered) = send(sc, &fakes, &relay, 1, size, WARM_UP_SESSIONS + 1).await;
    m.peak_kib = proc_status_kib(pid, "VmHWM:");
    m.delivered = load.accepted == 1 && delivered;
    m.accept_ms = load.latencies_us.first().map(|&us| f64::from(us) / 1000.0);
    m.delivered_ms = fakes
        .graph
        .messages()
        .last()
        .filter(|_| m.delivered)
        .map(|g| g.received_at.saturating_duration_since(base).as_secs_f64() * 1000.0);
    m.requests = fakes.graph.requests().len() - before;
    if !m.delivered {
        eprintln!(
            "smtp2oauth-bench: the {size} B message was not delivered: {:?}\n{}",
            load.problems,
            crate::scenario::tail(&relay.log(), 20)
        );
    }
    tokio::task::block_in_place(|| relay.stop(Duration::from_secs(10)));
    Ok(m)
}

fn mib(k: Option<u64>) -> String {
    k.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn mibf(k: Option<f64>) -> String {
    k.map_or("-".into(), |k| format!("{:.1}", k / 1024.0))
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

impl Measurement {
    fn line(&self) -> String {
        format!(
            "{} B: accepted {} ms, at Graph {} ms, {} requests; idle {} MiB, peak {} MiB (+{} MiB){}",
            self.size,
            ms(self.accept_ms),
            ms(self.delivered_ms),
            self.requests,
            mib(self.idle_rss_kib),
            mib(self.peak_kib),
            mib(self.increase_kib()),
            if self.delivered { "" } else { " NOT DELIVERED" }
        )
    }
}

impl Run {
    pub fn table(&self, n: usize) -> String {
        format!(
            "graph-large run {n}{}:\n  baseline {}\n  large    {}\n",
            if self.large_first {
                " (large first)"
            } else {
                ""
            },
            self.baseline.line(),
            self.large.line()
        )
    }
}

impl GraphLargeReport {
    pub fn table(&self) -> String {
        let mut out = String::new();
        for (i, r) in self.runs.iter().enumerate() {
            out.push_str(&r.table(i + 1));
        }
        let n = self.runs.len();
        let (b, l) = self
            .runs
            .first()
            .map_or((0, 0), |r| (r.baseline.size, r.large.size));
        let _ = writeln!(
            out,
            "\nmedians of {n} runs (a fresh relay per message):\n\
             time connect → at Graph: {b} B {} ms, {l} B {} ms, ratio {} (per run, then median)\n\
             peak RSS:                {b} B {} MiB (+{} MiB over idle), {l} B {} MiB (+{} MiB over idle)",
            ms(self.baseline_ms_median),
            ms(self.large_ms_median),
            self.time_ratio_median
                .map_or("-".into(), |r| format!("{r:.1}")),
            mibf(self.baseline_peak_kib_median),
            mibf(self.baseline_increase_kib_median),
            mibf(self.large_peak_kib_median),
            mibf(self.large_increase_kib_median),
        );
        if !self.complete {
            let _ = writeln!(
                out,
                "INCOMPLETE: some message was not delivered (see above)"
            );
        }
        out
    }
}
