//! `soak`: the relay for many minutes under a steady mixed load while the upstream misbehaves;
//! does anything get lost or duplicated, and does the relay's memory or descriptor count creep?
//!
//! Why: leaks and slow state corruption show only over time and under faults: a pooled session
//! never returned after a dropped connection, a token refresh that keeps a socket, a waiter
//! left behind by a 451. Short tests cannot see them; a soak can, if it measures growth where
//! the relay should be flat (the last 20 minutes of a 30-minute run: the first 10 are warm-up).
//!
//! The load: `--devices` devices logging in with AUTH PLAIN (every other one over STARTTLS),
//! each with `--sessions-per-device` sessions of 1 to 3 messages, resting `--pace` (±50 %)
//! between sessions; sizes from 1 KiB to 10 MiB in set proportions. The chaos, each kind at
//! random about every `--chaos-every` (one fault at a time waits at the Exchange fake and one at
//! the token endpoint, so faults scripted while the relay is paused never go off in a burst):
//! a `421` greeting, `451 4.7.500` after DATA, the connection dropped in the middle of DATA, a
//! token endpoint `500`, a token endpoint stalling 5 s. Tokens live 60 s. The relay's RSS and open
//! descriptors are sampled every `--sample-s`. At the end the load stops, the queue is asked to
//! retry everything (`smtp2oauth queue retry --all`, as an admin would) and drains; every
//! message a device got `250` for must have arrived exactly once.

use crate::load::{self, Auth, Hooks, LoadResult, LoadSpec};
use crate::message::{Mix, Template, mix64};
use crate::relay::{DEVICE_PASSWORD, DEVICE_USER, DeviceAuth, RelayProcess, RelaySettings};
use crate::relay::{hash_password, proc_status_kib};
use crate::scenario::{relay_side, unique_tag};
use crate::sink::SinkWatch;
use crate::upstream::{MAILBOX, RECIPIENT, Upstream, UpstreamOptions};
use anyhow::Context as _;
use rustls_pki_types::ServerName;
use smtp2oauth_testkit::{IdpFailure, Stage};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct Options {
    pub relay: PathBuf,
    pub duration: Duration,
    pub devices: usize,
    pub sessions_per_device: usize,
    /// Rest between a worker's sessions (±50 %).
    pub pace: Duration,
    /// (size in bytes, weight).
    pub sizes: Vec<(usize, u32)>,
    /// No upstream faults (a baseline to compare with).
    pub chaos: bool,
    /// Average interval between two faults of one kind.
    pub chaos_every: Duration,
    pub token_lifetime: Duration,
    pub sample_every: Duration,
    /// Growth is measured over this last part of the run.
    pub window: Duration,
    pub drain_timeout: Duration,
    pub work_dir: Option<PathBuf>,
    pub keep_log: Option<PathBuf>,
    pub seed: u64,
}

impl Options {
    pub fn new(relay: PathBuf, duration: Duration) -> Options {
        Options {
            relay,
            duration,
            devices: 4,
            sessions_per_device: 2,
            pace: Duration::from_secs(5),
            sizes: vec![(1024, 50), (64 * 1024, 30), (1 << 20, 15), (10 << 20, 5)],
            chaos: true,
            chaos_every: Duration::from_secs(60),
            token_lifetime: Duration::from_secs(60),
            sample_every: Duration::from_secs(60),
            window: Duration::from_secs(20 * 60),
            drain_timeout: Duration::from_secs(600),
            work_dir: None,
            keep_log: None,
            seed: 1,
        }
    }
}

/// The relay's resident memory and open descriptors at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub at: Duration,
    pub rss_kib: u64,
    pub fds: u64,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub load: LoadResult,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub chaos: BTreeMap<&'static str, u64>,
    pub samples: Vec<Sample>,
    /// Growth over the window, in percent (None: too few samples).
    pub rss_growth_pct: Option<f64>,
    pub fd_growth_pct: Option<f64>,
    pub window: Duration,
    pub upstream_connections: usize,
    pub token_requests: usize,
    pub left_queued: usize,
    pub left_failed: usize,
    pub drain_s: f64,
}

/// Growth of `value` over the samples taken in the last `window`, in percent: the median of
/// the last three samples against the median of the first three (single samples are noisy).
pub fn growth_pct(samples: &[Sample], window: Duration, value: fn(&Sample) -> u64) -> Option<f64> {
    let end = samples.last()?.at;
    let from = end.saturating_sub(window);
    let inside: Vec<f64> = samples
        .iter()
        .filter(|s| s.at >= from)
        .map(|s| value(s) as f64)
        .collect();
    if inside.len() < 2 {
        return None;
    }
    let k = (inside.len() / 2).clamp(1, 3);
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let first = median(&inside[..k]);
    let last = median(&inside[inside.len() - k..]);
    (first > 0.0).then(|| (last - first) / first * 100.0)
}

impl Outcome {
    pub fn summary_line(&self) -> String {
        format!(
            "soak: acknowledged {}, delivered {}, lost {}, duplicated {}",
            self.load.accepted_seqs.len(),
            self.delivered,
            self.lost,
            self.duplicated
        )
    }

    pub fn report(&self, o: &Options) -> String {
        let mut out = String::new();
        let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:+.1} %"));
        let _ = writeln!(
            out,
            "soak {:.0} min | relay {} | {} devices × {} sessions, pace {:?} | sizes {:?} | tokens live {:?} | chaos {}",
            o.duration.as_secs_f64() / 60.0,
            o.relay.display(),
            o.devices,
            o.sessions_per_device,
            o.pace,
            o.sizes,
            o.token_lifetime,
            if o.chaos {
                format!("each kind about every {:?}", o.chaos_every)
            } else {
                "off".into()
            }
        );
        let chaos: Vec<String> = self.chaos.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(out, "faults injected: {}", chaos.join(", "));
        let l = &self.load;
        let _ = writeln!(
            out,
            "devices: sent {}, acknowledged {}, refused {}, errors {}; {:?}",
            l.sent, l.accepted, l.refused, l.errors, l.problems
        );
        let _ = writeln!(
            out,
            "upstream: {} connections, {} token requests",
            self.upstream_connections, self.token_requests
        );
        let _ = writeln!(out, "{:>8} {:>9} {:>5}", "minute", "RSS MiB", "fds");
        for s in &self.samples {
            let _ = writeln!(
                out,
                "{:>8.1} {:>9.1} {:>5}",
                s.at.as_secs_f64() / 60.0,
                s.rss_kib as f64 / 1024.0,
                s.fds
            );
        }
        let _ = writeln!(
            out,
            "growth over the last {:.1} min: RSS {}, open fds {} (target < 5 %)",
            self.window.as_secs_f64() / 60.0,
            pct(self.rss_growth_pct),
            pct(self.fd_growth_pct)
        );
        let _ = writeln!(
            out,
            "drain: {:.1} s; left queued {}, in failed/ {}{}",
            self.drain_s,
            self.left_queued,
            self.left_failed,
            if self.left_queued > 0 {
                " (the drain did not finish: what is still queued counts as lost below)"
            } else {
                ""
            }
        );
        let _ = writeln!(out, "{}", self.summary_line());
        out
    }
}

/// The soak's devices: the bench device and `n - 1` more, each with its own password.
struct Device {
    user: String,
    password: String,
}

fn devices(o: &Options) -> anyhow::Result<(Vec<Device>, String)> {
    let mut list = vec![Device {
        user: DEVICE_USER.into(),
        password: DEVICE_PASSWORD.into(),
    }];
    let mut toml = String::new();
    for i in 1..o.devices.max(1) {
        let d = Device {
            user: format!("soak-device-{i}"),
            password: format!("soak-Pr1nter-{i}-{:x}", mix64(o.seed + i as u64)),
        };
        let hash = hash_password(&o.relay, &d.password)?;
        let _ = write!(
            toml,
            "\n[[devices]]\nusername = \"{}\"\npassword_hash = \"{hash}\"\naccount = \"bench\"\n",
            d.user
        );
        list.push(d);
    }
    Ok((list, toml))
}

pub async fn run(o: Options, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Outcome> {
    let up = Upstream::start(&UpstreamOptions {
        reply_delay: Duration::from_millis(10),
        max_size: 64 << 20,
        token_lifetime: o.token_lifetime,
        password_login: None,
    })
    .await;
    let dir = match &o.work_dir {
        Some(p) => tempfile::Builder::new()
            .prefix("smtp2oauth-soak.")
            .tempdir_in(p),
        None => tempfile::Builder::new()
            .prefix("smtp2oauth-soak.")
            .tempdir(),
    }
    .context("creating the soak's directory")?;
    let (devs, extra_config) = tokio::task::block_in_place(|| devices(&o))?;
    let settings = RelaySettings {
        binary: o.relay.clone(),
        fsync: true,
        wait_for_upstream: "20s".into(),
        max_upstream_connections: 3,
        upstream_idle_timeout: "30s".into(),
        device_auth: DeviceAuth::Password,
        log_level: "info".into(),
        work_dir: Some(dir.path().to_path_buf()),
        sessions: o.devices * o.sessions_per_device,
        max_message_size: 36_700_160,
        store_dir: None,
        extra_config,
    };
    let side = relay_side(&up);
    let mut relay = tokio::task::block_in_place(|| RelayProcess::start(&settings, &side))?;
    let pid = relay.pid().context("the relay has no pid")?;

    let tag = unique_tag();
    let mix = Mix::new(
        o.sizes
            .iter()
            .map(|&(size, w)| (w, Template::new(MAILBOX, RECIPIENT, &tag, size)))
            .collect(),
    );
    let (_abort_tx, abort_rx) = watch::channel(false);
    let watch = SinkWatch::start(up.sink.clone(), tag, Instant::now(), abort_rx);
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let mut loads = Vec::new();
    for (i, d) in devs.iter().enumerate() {
        let starttls = (i % 2 == 1).then(|| {
            let name = ServerName::try_from("localhost").expect("a valid name");
            (up.pki.client_config(), name)
        });
        let spec = LoadSpec {
            addr: relay.addr.to_string(),
            sessions: o.sessions_per_device.max(1),
            messages: u64::MAX,
            per_session: 1 + (i as u64 % 3),
            template: mix.clone(),
            auth: Some(Auth::Plain {
                user: d.user.clone(),
                password: d.password.clone(),
            }),
            starttls,
            from: MAILBOX.into(),
            to: RECIPIENT.into(),
            helo: format!("soak-device-{i}"),
            timeout: Duration::from_secs(120),
            hooks: Hooks {
                next: Some(next.clone()),
                stop: Some(stop.clone()),
                on_accept: None,
                pace: Some(o.pace),
            },
        };
        loads.push(tokio::spawn(load::run(Arc::new(spec), Instant::now())));
    }
    let chaos = tokio::spawn(chaos(
        up.sink.clone(),
        up.idp.clone(),
        o.clone(),
        stop.clone(),
    ));
    let samples = sample(pid, &o, progress).await;
    stop.store(true, Ordering::SeqCst);
    let mut load = LoadResult::default();
    for l in loads {
        load.merge(l.await.context("a device load failed")?);
    }
    let chaos = chaos.await.unwrap_or_default();
    let (left_queued, left_failed, drain) = drain(&relay, &o, progress).await;
    let sink = watch
        .finish(&load.accepted_seqs, Duration::from_secs(10))
        .await;
    tokio::task::block_in_place(|| relay.stop(Duration::from_secs(30)));
    if let Some(to) = &o.keep_log {
        std::fs::copy(&relay.log_path, to).context("keeping the relay log")?;
    }
    let window = o.window.min(o.duration.saturating_sub(o.sample_every));
    Ok(Outcome {
        delivered: sink.delivered,
        lost: sink.missing,
        duplicated: sink.duplicates,
        chaos,
        rss_growth_pct: growth_pct(&samples, window, |s| s.rss_kib),
        fd_growth_pct: growth_pct(&samples, window, |s| s.fds),
        samples,
        window,
        upstream_connections: up.sink.connections(),
        token_requests: up.idp.token_requests(),
        left_queued,
        left_failed,
        drain_s: drain.as_secs_f64(),
        load,
    })
}

fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Samples the relay every `sample_every` until the soak's time is up.
async fn sample(pid: u32, o: &Options, progress: &mut dyn FnMut(&str)) -> Vec<Sample> {
    let t0 = Instant::now();
    let mut samples = Vec::new();
    loop {
        if let (Some(rss_kib), Some(fds)) = (proc_status_kib(pid, "VmRSS:"), open_fds(pid)) {
            let s = Sample {
                at: t0.elapsed(),
                rss_kib,
                fds,
            };
            progress(&format!(
                "minute {:>5.1}: RSS {:.1} MiB, {} open fds",
                s.at.as_secs_f64() / 60.0,
                rss_kib as f64 / 1024.0,
                fds
            ));
            samples.push(s);
        } else {
            progress("the relay is gone");
            return samples;
        }
        if t0.elapsed() >= o.duration {
            return samples;
        }
        let left = o.duration.saturating_sub(t0.elapsed());
        tokio::time::sleep(o.sample_every.min(left)).await;
    }
}

const GREETING_421: &str = "421 4.3.2 Service not available, closing transmission channel";
const BUSY_451: &str = "451 4.7.500 Server busy. Please try again later. [BN8NAM12FT003.eop-nam12.prod.protection.outlook.com]";

/// Injects upstream faults at random until `stop`; returns how many of each.
async fn chaos(
    sink: smtp2oauth_testkit::FakeSmtp,
    idp: smtp2oauth_testkit::FakeIdp,
    o: Options,
    stop: Arc<AtomicBool>,
) -> BTreeMap<&'static str, u64> {
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    if !o.chaos {
        return counts;
    }
    let per_second = 1.0 / o.chaos_every.as_secs_f64().max(1.0);
    let mut tick = 0u64;
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tick += 1;
        let roll = |kind: u64| {
            let r = mix64(o.seed ^ (tick << 8) ^ kind) % 1_000_000;
            (r as f64) < per_second * 1e6
        };
        // One fault waits at a time on each side: a fault scripted while the relay is paused
        // would otherwise pile up and go off in a burst when it comes back.
        if sink.pending_scripts() == 0 {
            let fault = [1, 2, 3].into_iter().find(|&k| roll(k));
            match fault {
                Some(1) => sink.script(Stage::Connect, GREETING_421, 1),
                Some(2) => sink.script(Stage::DataBody, BUSY_451, 1),
                Some(_) => sink.drop_at(Stage::DataBody, 1),
                None => {}
            }
            if let Some(k) = fault {
                *counts
                    .entry(["", "421-greeting", "451-after-data", "drop-mid-data"][k as usize])
                    .or_default() += 1;
            }
        }
        if idp.pending_failures() == 0 {
            if roll(4) {
                idp.fail_next(IdpFailure::ServerError, 1);
                *counts.entry("token-500").or_default() += 1;
            } else if roll(5) {
                idp.fail_next(IdpFailure::Stall(Duration::from_secs(5)), 1);
                *counts.entry("token-stall-5s").or_default() += 1;
            }
        }
    }
    // The load is over: faults not used yet are withdrawn, so the drain meets a sound upstream.
    sink.clear_scripts();
    counts
}

/// After the load: the queue retried now (as an admin would) and drained.
async fn drain(
    relay: &RelayProcess,
    o: &Options,
    progress: &mut dyn FnMut(&str),
) -> (usize, usize, Duration) {
    let t0 = Instant::now();
    let store = relay
        .config_path
        .parent()
        .map(|d| d.join("store/spool"))
        .unwrap_or_default();
    let mut last_retry: Option<Instant> = None;
    loop {
        let queued = count_messages(&store.join("queue"));
        if queued == 0 || t0.elapsed() > o.drain_timeout {
            let failed = count_messages(&store.join("failed"));
            return (queued, failed, t0.elapsed());
        }
        if last_retry.is_none_or(|t| t.elapsed() > Duration::from_secs(20)) {
            progress(&format!(
                "drain: {queued} queued; asking the relay to retry them now"
            ));
            retry_all(&o.relay, &relay.config_path).await;
            last_retry = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `smtp2oauth queue retry --all`, given 30 s.
async fn retry_all(binary: &Path, config: &Path) {
    let child = tokio::process::Command::new(binary)
        .args(["queue", "retry", "--all", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(30), child).await;
}

fn count_messages(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().contains('.'))
                .count()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(min: u64, rss_kib: u64) -> Sample {
        Sample {
            at: Duration::from_secs(min * 60),
            rss_kib,
            fds: 20,
        }
    }

    #[test]
    fn growth_is_measured_over_the_window_only() {
        // A warm-up climb, then flat: flat over the last 20 minutes.
        let mut v: Vec<Sample> = (0..10).map(|m| s(m, 10_000 + m * 1000)).collect();
        v.extend((10..=30).map(|m| s(m, 20_000 + (m % 2) * 100)));
        let g = growth_pct(&v, Duration::from_secs(20 * 60), |s| s.rss_kib).unwrap();
        assert!(g.abs() < 1.0, "{g}");
        // A steady leak of 1 % a minute shows as about 20 %.
        let leak: Vec<Sample> = (0..=30).map(|m| s(m, 10_000 + m * 100)).collect();
        let g = growth_pct(&leak, Duration::from_secs(20 * 60), |s| s.rss_kib).unwrap();
        assert!((15.0..25.0).contains(&g), "{g}");
        assert_eq!(
            growth_pct(&v[..1], Duration::from_secs(60), |s| s.fds),
            None
        );
    }
}
