//! The relay's memory: at rest, with many idle device sessions, and while it carries one large
//! message (the memory targets of docs/benchmarks.md, t5).
//!
//! Why a subcommand of its own: these are not throughput runs. Each figure needs a relay in a
//! known state, so every measurement starts a fresh relay (and fresh fakes):
//!
//! 1. **idle**: the relay started and left alone for `--settle-s`: VmRSS (and VmHWM, the peak
//!    while starting).
//! 2. **idle sessions**: a fresh relay is first put in service: [`WARM_UP_SESSIONS`] sessions
//!    log in at the same time and send one small message each (so every argon2 worker has run
//!    once, as it will have in a relay that has been up a while; the login is then cached, a
//!    token fetched, upstream sessions pooled), rests ("idle in service"), then
//!    `--idle-sessions` device sessions are opened (greeting, EHLO, AUTH PLAIN when the device
//!    logs in) and held: VmRSS with all of them open, and the peak while opening.
//! 3. **large message**: a fresh relay, the same warm-up, rest, VmRSS as "idle"; the peak is
//!    reset (`/proc/PID/clear_refs` = 5), one `--large-size` message is sent and delivered, and
//!    the new VmHWM minus that idle VmRSS is what the message cost.

use crate::idle;
use crate::load::{self, Auth, LoadResult, LoadSpec};
use crate::message::Template;
use crate::relay::{DEVICE_PASSWORD, DEVICE_USER, DeviceAuth, RelayProcess, proc_status_kib};
use crate::report::median;
use crate::scenario::{Peer, Scenario, relay_side, sync_disks, unique_tag};
use crate::sink::{SinkResult, SinkWatch};
use crate::upstream::{MAILBOX, RECIPIENT, Upstream, UpstreamOptions};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Concurrent first logins of the warm-up: at least the relay's argon2 workers
/// (`auth_workers`, default min(cores, 4)), so each of them has verified a password once.
pub const WARM_UP_SESSIONS: usize = 4;

/// The memory targets (t5 in docs/benchmarks.md), in KiB.
pub const IDLE_TARGET_KIB: u64 = 15 * 1024;
pub const SESSIONS_TARGET_KIB: u64 = 64 * 1024;
pub const LARGE_TARGET_KIB: u64 = 16 * 1024;

#[derive(Clone, Debug)]
pub struct MemoryOptions {
    pub idle_sessions: usize,
    pub large_size: usize,
    /// Rest before reading an idle figure.
    pub settle: Duration,
}

#[derive(Debug, Default, Serialize)]
pub struct MemoryRun {
    pub idle_rss_kib: Option<u64>,
    pub idle_hwm_kib: Option<u64>,
    pub sessions_wanted: usize,
    pub sessions_open: usize,
    pub sessions_problems: BTreeMap<String, u64>,
    /// After the warm-up message, before the sessions.
    pub sessions_before_rss_kib: Option<u64>,
    pub sessions_rss_kib: Option<u64>,
    pub sessions_hwm_kib: Option<u64>,
    pub large_size: usize,
    pub large_idle_rss_kib: Option<u64>,
    pub large_peak_kib: Option<u64>,
    pub large_delivered: bool,
    pub large_accept_ms: Option<f64>,
}

impl MemoryRun {
    pub fn sessions_increase_kib(&self) -> Option<u64> {
        Some(
            self.sessions_rss_kib?
                .saturating_sub(self.sessions_before_rss_kib?),
        )
    }
    pub fn large_increase_kib(&self) -> Option<u64> {
        Some(
            self.large_peak_kib?
                .saturating_sub(self.large_idle_rss_kib?),
        )
    }
}

#[derive(Debug, Serialize)]
pub struct MemoryReport {
    pub runs: Vec<MemoryRun>,
    pub idle_rss_kib_median: Option<f64>,
    pub warm_idle_rss_kib_median: Option<f64>,
    pub sessions_rss_kib_median: Option<f64>,
    pub sessions_hwm_kib_median: Option<f64>,
    pub sessions_per_session_kib_median: Option<f64>,
    pub large_increase_kib_median: Option<f64>,
    /// Every message and session went through (otherwise the figures are not comparable).
    pub complete: bool,
}

pub async fn run(
    sc: &Scenario,
    opts: &MemoryOptions,
    runs: usize,
    mut progress: impl FnMut(usize, &MemoryRun),
) -> anyhow::Result<MemoryReport> {
    let mut all = Vec::new();
    for i in 0..runs {
        let r = one(sc, opts).await?;
        progress(i, &r);
        all.push(r);
    }
    let med = |f: &dyn Fn(&MemoryRun) -> Option<f64>| -> Option<f64> {
        median(&mut all.iter().filter_map(f).collect::<Vec<_>>())
    };
    let kib = |v: Option<u64>| v.map(|k| k as f64);
    let warm: Vec<f64> = all
        .iter()
        .flat_map(|r| [r.sessions_before_rss_kib, r.large_idle_rss_kib])
        .filter_map(kib)
        .collect();
    let complete = all.iter().all(|r| {
        r.large_delivered && r.sessions_open == r.sessions_wanted && r.sessions_problems.is_empty()
    });
    Ok(MemoryReport {
        idle_rss_kib_median: med(&|r| kib(r.idle_rss_kib)),
        warm_idle_rss_kib_median: median(&mut warm.clone()),
        sessions_rss_kib_median: med(&|r| kib(r.sessions_rss_kib)),
        sessions_hwm_kib_median: med(&|r| kib(r.sessions_hwm_kib)),
        sessions_per_session_kib_median: med(&|r| {
            let n = r.sessions_open.max(1) as f64;
            r.sessions_increase_kib().map(|k| k as f64 / n)
        }),
        large_increase_kib_median: med(&|r| kib(r.large_increase_kib())),
        complete,
        runs: all,
    })
}

/// A fresh relay and fakes, sized for `sessions` concurrent device sessions.
async fn start(
    sc: &Scenario,
    sessions: usize,
    size: usize,
) -> anyhow::Result<(Upstream, RelayProcess)> {
    tokio::task::block_in_place(sync_disks);
    tokio::time::sleep(sc.settle).await;
    let up = Upstream::start(&UpstreamOptions {
        reply_delay: sc.reply_delay,
        max_size: size.saturating_mul(2),
        token_lifetime: sc.token_lifetime,
        password_login: None,
    })
    .await;
    let mut settings = sc.relay_settings(Peer::Relay);
    settings.sessions = sessions;
    settings.max_message_size = settings.max_message_size.max(size as u64 + 64 * 1024);
    let relay = tokio::task::block_in_place(|| RelayProcess::start(&settings, &relay_side(&up)))?;
    Ok((up, relay))
}

fn device_auth(sc: &Scenario) -> Option<Auth> {
    match sc.relay.device_auth {
        DeviceAuth::Password => Some(Auth::Plain {
            user: DEVICE_USER.into(),
            password: DEVICE_PASSWORD.into(),
        }),
        DeviceAuth::Address => None,
    }
}

/// `sessions` concurrent sessions each sending one message of `size` bytes (tagged `tag`) to
/// `addr`, logged in as the scenario's devices do.
pub(crate) fn one_message_each(
    sc: &Scenario,
    addr: String,
    sessions: usize,
    size: usize,
    tag: &str,
) -> LoadSpec {
    LoadSpec {
        addr,
        sessions,
        messages: sessions as u64,
        per_session: 1,
        template: Template::new(MAILBOX, RECIPIENT, tag, size).into(),
        auth: device_auth(sc),
        starttls: None,
        from: MAILBOX.into(),
        to: RECIPIENT.into(),
        helo: "bench-device".into(),
        timeout: sc.shape.timeout,
        hooks: crate::load::Hooks::default(),
    }
}

/// `sessions` concurrent sessions each send one message of `size` bytes through the relay;
/// returns once the sink has them all (or the drain timeout passed).
async fn send(
    sc: &Scenario,
    up: &Upstream,
    relay: &RelayProcess,
    sessions: usize,
    size: usize,
) -> (LoadResult, SinkResult) {
    let tag = unique_tag();
    let spec = Arc::new(one_message_each(
        sc,
        relay.addr.to_string(),
        sessions,
        size,
        &tag,
    ));
    let (_abort_tx, abort_rx) = watch::channel(false);
    let base = Instant::now();
    let watch = SinkWatch::start(up.sink.clone(), tag, base, abort_rx);
    let result = load::run(spec, base).await;
    let sink = watch.finish(&result.accepted_seqs, sc.drain_timeout).await;
    (result, sink)
}

/// Resets the process's peak resident size (VmHWM) to its current size.
pub fn reset_peak(pid: u32) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

async fn one(sc: &Scenario, opts: &MemoryOptions) -> anyhow::Result<MemoryRun> {
    let mut r = MemoryRun {
        sessions_wanted: opts.idle_sessions,
        large_size: opts.large_size,
        ..MemoryRun::default()
    };

    // 1. At rest after starting.
    {
        let (_up, mut relay) = start(sc, 1, 1024).await?;
        tokio::time::sleep(opts.settle).await;
        let pid = relay.pid().unwrap_or(0);
        r.idle_rss_kib = proc_status_kib(pid, "VmRSS:");
        r.idle_hwm_kib = proc_status_kib(pid, "VmHWM:");
        tokio::task::block_in_place(|| relay.stop(Duration::from_secs(10)));
    }

    // 2. Idle device sessions, in service.
    {
        let (up, mut relay) = start(sc, opts.idle_sessions, 1024).await?;
        let pid = relay.pid().unwrap_or(0);
        send(sc, &up, &relay, WARM_UP_SESSIONS, 10 * 1024).await;
        tokio::time::sleep(opts.settle).await;
        r.sessions_before_rss_kib = proc_status_kib(pid, "VmRSS:");
        let _ = reset_peak(pid);
        let held = idle::open(
            &relay.addr.to_string(),
            opts.idle_sessions,
            device_auth(sc),
            sc.shape.timeout,
        )
        .await;
        // Let the relay settle with every session open (its command timeout is 30 s).
        tokio::time::sleep(Duration::from_secs(1)).await;
        r.sessions_rss_kib = proc_status_kib(pid, "VmRSS:");
        r.sessions_hwm_kib = proc_status_kib(pid, "VmHWM:");
        r.sessions_open = held.open.len();
        r.sessions_problems = held.problems.clone();
        held.close().await;
        tokio::task::block_in_place(|| relay.stop(Duration::from_secs(10)));
    }

    // 3. One large message, in service.
    {
        let (up, mut relay) = start(sc, 1, opts.large_size).await?;
        let pid = relay.pid().unwrap_or(0);
        send(sc, &up, &relay, WARM_UP_SESSIONS, 10 * 1024).await;
        tokio::time::sleep(opts.settle).await;
        r.large_idle_rss_kib = proc_status_kib(pid, "VmRSS:");
        if let Err(e) = reset_peak(pid) {
            eprintln!(
                "smtp2oauth-bench: cannot reset the relay's peak RSS ({e}); the figure includes start-up"
            );
        }
        let (load, sink) = send(sc, &up, &relay, 1, opts.large_size).await;
        r.large_peak_kib = proc_status_kib(pid, "VmHWM:");
        r.large_delivered = load.accepted == 1 && sink.delivered == 1;
        r.large_accept_ms = load.latencies_us.first().map(|&us| f64::from(us) / 1000.0);
        if !r.large_delivered {
            eprintln!(
                "smtp2oauth-bench: the large message was not delivered: {:?}\n{}",
                load.problems,
                crate::scenario::tail(&relay.log(), 20)
            );
        }
        tokio::task::block_in_place(|| relay.stop(Duration::from_secs(10)));
    }
    Ok(r)
}

fn mib(k: Option<u64>) -> String {
    k.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn mibf(k: Option<f64>) -> String {
    k.map_or("-".into(), |k| format!("{:.1}", k / 1024.0))
}

fn verdict(v: Option<f64>, limit_kib: u64) -> &'static str {
    match v {
        Some(v) if v < limit_kib as f64 => "meets",
        Some(_) => "MISSES",
        None => "no figure",
    }
}

impl MemoryRun {
    pub fn table(&self, n: usize) -> String {
        format!(
            "memory run {n}: idle {} MiB (peak at start {}); idle in service {} MiB; {} of {} idle \
             sessions: {} MiB (peak {}, +{:.1} KiB each){}; {} B message: idle {} MiB, peak {} \
             MiB (+{} MiB){}\n",
            mib(self.idle_rss_kib),
            mib(self.idle_hwm_kib),
            mib(self.sessions_before_rss_kib),
            self.sessions_open,
            self.sessions_wanted,
            mib(self.sessions_rss_kib),
            mib(self.sessions_hwm_kib),
            self.sessions_increase_kib()
                .map_or(0.0, |k| k as f64 / self.sessions_open.max(1) as f64),
            if self.sessions_problems.is_empty() {
                String::new()
            } else {
                format!(" problems {:?}", self.sessions_problems)
            },
            self.large_size,
            mib(self.large_idle_rss_kib),
            mib(self.large_peak_kib),
            mib(self.large_increase_kib()),
            if self.large_delivered {
                ""
            } else {
                " NOT DELIVERED"
            },
        )
    }
}

impl MemoryReport {
    pub fn table(&self) -> String {
        let mut out = String::new();
        for (i, r) in self.runs.iter().enumerate() {
            out.push_str(&r.table(i + 1));
        }
        let n = self.runs.len();
        let sessions = self.runs.first().map_or(0, |r| r.sessions_wanted);
        let size = self.runs.first().map_or(0, |r| r.large_size);
        let _ = writeln!(
            out,
            "\nmedians of {n} runs:\n\
             idle RSS (fresh relay)              {:>7} MiB  target < 15 MiB: {}\n\
             idle RSS in service                 {:>7} MiB  (after {WARM_UP_SESSIONS} concurrent logins and messages)\n\
             {sessions} idle device sessions: RSS {:>7} MiB  (peak {} MiB, {:.1} KiB per session) \
             target < 64 MiB: {}\n\
             one {size} B message: peak − idle   {:>7} MiB  target < 16 MiB: {}",
            mibf(self.idle_rss_kib_median),
            verdict(self.idle_rss_kib_median, IDLE_TARGET_KIB),
            mibf(self.warm_idle_rss_kib_median),
            mibf(self.sessions_rss_kib_median),
            mibf(self.sessions_hwm_kib_median),
            self.sessions_per_session_kib_median.unwrap_or(0.0),
            // The peak while they were opened, which is at least the RSS with all of them open.
            verdict(self.sessions_hwm_kib_median, SESSIONS_TARGET_KIB),
            mibf(self.large_increase_kib_median),
            verdict(self.large_increase_kib_median, LARGE_TARGET_KIB),
        );
        if !self.complete {
            let _ = writeln!(
                out,
                "INCOMPLETE: some sessions or the large message failed (see above)"
            );
        }
        out
    }
}
