//! One self-contained measurement of one peer: fakes up, server up, load, drain, figures,
//! everything down.
//!
//! Why everything is fresh per scenario: a new token endpoint, sink, spool (or Postfix queue)
//! and server process for every run means no run inherits another's cached token, warm spool
//! directory, pooled upstream session or leftover queue, so runs that are compared differ only
//! in the setting or the peer under test.
//!
//! The peers, all fed the same load and delivering to the same kind of sink:
//! - `ceiling`: no server in between; the load generator itself speaks STARTTLS + AUTH XOAUTH2
//!   (with a token fetched from the fake IdP) straight to the sink, as a transparent proxy would
//!   at best;
//! - `relay`: our relay binary (with its upstream session pool as configured);
//! - `relay-nopool`: the same with `upstream_idle_timeout = "0s"`: a new upstream session per
//!   message;
//! - `postfix`: a private Postfix instance as an authenticated relay (see `postfix.rs`).

use crate::load::{self, Auth, LoadSpec};
use crate::message::Template;
use crate::postfix::{PostfixInstance, PostfixSettings, SinkSide};
use crate::relay::{
    DEVICE_PASSWORD, DEVICE_USER, DeviceAuth, RelayProcess, RelaySettings, proc_status_kib,
};
use crate::report::{Cpu, Report, Settings, cpu_between, process_cpu_time};
use crate::sink::SinkWatch;
use crate::upstream::{
    MAILBOX, POSTFIX_SINK_USER, RECIPIENT, Upstream, UpstreamOptions, random_password,
};
use anyhow::Context as _;
use rustls_pki_types::ServerName;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What receives the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Peer {
    /// The load straight to the sink (STARTTLS + XOAUTH2): the ceiling.
    Ceiling,
    /// Our relay.
    Relay,
    /// Our relay without its upstream session pool.
    RelayNopool,
    /// Another relay binary (`--baseline-relay`), configured like `relay`: measures a change
    /// against the build before it, in the same rounds.
    Baseline,
    /// Postfix from the distribution, as an authenticated relay.
    Postfix,
}

impl Peer {
    /// Runs a relay binary (ours, or the baseline build).
    pub fn is_relay(self) -> bool {
        matches!(self, Peer::Relay | Peer::RelayNopool | Peer::Baseline)
    }

    pub fn name(self) -> &'static str {
        match self {
            Peer::Ceiling => "ceiling",
            Peer::Relay => "relay",
            Peer::RelayNopool => "relay-nopool",
            Peer::Baseline => "baseline",
            Peer::Postfix => "postfix",
        }
    }
}

/// The load's shape (shared by every subcommand).
#[derive(Clone, Debug)]
pub struct Shape {
    pub sessions: usize,
    pub messages: u64,
    pub per_session: u64,
    pub size: usize,
    /// STARTTLS from the device to the relay or Postfix (the ceiling always uses it: the sink
    /// requires it).
    pub starttls: bool,
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub shape: Shape,
    pub relay: RelaySettings,
    pub reply_delay: Duration,
    /// `expires_in` of the fake IdP's tokens.
    pub token_lifetime: Duration,
    /// Postfix's `default_destination_concurrency_limit`.
    pub postfix_concurrency: usize,
    /// The relay binary of the `baseline` peer.
    pub baseline_binary: Option<PathBuf>,
    /// Messages sent (one session, one at a time) and delivered before the measured load, so
    /// it measures a server in service rather than one just started: the device's login is
    /// cached, a token is held, Postfix has its daemons running. 0: measure from a cold start.
    pub warm_up: u64,
    /// How long to wait, after the load, for the queue to drain into the sink.
    pub drain_timeout: Duration,
    /// Copy the server's log here when the scenario ends.
    pub keep_log: Option<PathBuf>,
    /// Quiet time after flushing the disks and before starting, so the previous run's writeback
    /// and discards do not land in this one.
    pub settle: Duration,
    /// Kill the relay when its resident memory passes this many KiB: the machine is shared,
    /// and a relay that grows without bound must not take it down with it.
    pub max_relay_rss_kib: u64,
}

impl Scenario {
    /// The relay's settings with everything the load decides filled in.
    pub fn relay_settings(&self, peer: Peer) -> RelaySettings {
        let mut r = self.relay.clone();
        r.sessions = self.shape.sessions;
        r.max_message_size = r.max_message_size.max(self.shape.size as u64 + 64 * 1024);
        if peer == Peer::RelayNopool {
            r.upstream_idle_timeout = "0s".into();
        }
        if peer == Peer::Baseline
            && let Some(b) = &self.baseline_binary
        {
            r.binary = b.clone();
        }
        r
    }
}

/// A tag unique to this scenario, in every message id (see `message::find_seq`).
pub fn unique_tag() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}x{}x{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Flushes every filesystem so the previous run's dirty pages are not written back during this
/// one (they would slow the fsyncs we are measuring).
pub fn sync_disks() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    #[allow(unsafe_code)]
    let () = unsafe { libc::sync() };
}

/// How the relay reaches the fakes of `up`.
pub fn relay_side(up: &Upstream) -> crate::relay::UpstreamSide<'_> {
    crate::relay::UpstreamSide {
        mailbox: MAILBOX,
        authority: up.idp.authority(),
        tenant: up.idp_config.tenant.clone(),
        client_id: up.idp_config.client_id.clone(),
        client_secret: up.idp_config.client_secret.clone().unwrap_or_default(),
        smtp_port: up.sink.port(),
        ca_file: up.pki.ca_pem_path(),
        cert_file: up.pki.cert_pem_path(),
        key_file: up.pki.key_pem_path(),
        route_keys: None,
    }
}

/// The server between the load and the sink, if any.
enum Server {
    Ceiling,
    Relay(RelayProcess),
    Postfix(PostfixInstance),
}

impl Server {
    fn cpu_time(&self) -> Option<Cpu> {
        match self {
            Server::Relay(r) => r.cpu_time(),
            Server::Postfix(p) => p.cpu_time(),
            Server::Ceiling => None,
        }
    }

    fn log(&self) -> String {
        match self {
            Server::Ceiling => String::new(),
            Server::Relay(r) => tail(&r.log(), 20),
            Server::Postfix(p) => p.output(),
        }
    }
}

pub async fn run(sc: &Scenario, peer: Peer, label: &str) -> anyhow::Result<Report> {
    tokio::task::block_in_place(sync_disks);
    tokio::time::sleep(sc.settle).await;
    let postfix_password = (peer == Peer::Postfix).then(random_password);
    let up = Upstream::start(&UpstreamOptions {
        reply_delay: sc.reply_delay,
        max_size: sc.shape.size.saturating_mul(2),
        token_lifetime: sc.token_lifetime,
        password_login: postfix_password.clone(),
    })
    .await;
    let relay_settings = sc.relay_settings(peer);
    let device_auth = sc.relay.device_auth;
    let device_login = || match device_auth {
        DeviceAuth::Password => Some(Auth::Plain {
            user: DEVICE_USER.into(),
            password: DEVICE_PASSWORD.into(),
        }),
        DeviceAuth::Address => None,
    };
    let device_tls = || -> anyhow::Result<_> {
        Ok(if sc.shape.starttls {
            Some((up.pki.client_config(), ServerName::try_from("localhost")?))
        } else {
            None
        })
    };
    let (server, addr, auth, starttls) = match peer {
        Peer::Ceiling => {
            let token = up.fetch_token().await?;
            let auth = Auth::XOAuth2 {
                user: MAILBOX.into(),
                token,
            };
            let tls = (up.pki.client_config(), ServerName::try_from("localhost")?);
            (Server::Ceiling, up.sink.addr(), Some(auth), Some(tls))
        }
        Peer::Relay | Peer::RelayNopool | Peer::Baseline => {
            if peer == Peer::Baseline && sc.baseline_binary.is_none() {
                anyhow::bail!("the baseline peer needs --baseline-relay PATH");
            }
            let side = relay_side(&up);
            // Starting the relay polls its log with short sleeps: keep that off the fakes'
            // workers.
            let relay =
                tokio::task::block_in_place(|| RelayProcess::start(&relay_settings, &side))?;
            let addr = relay.addr;
            (Server::Relay(relay), addr, device_login(), device_tls()?)
        }
        Peer::Postfix => {
            let settings = PostfixSettings {
                sessions: sc.shape.sessions,
                device_auth,
                destination_concurrency: sc.postfix_concurrency,
                work_dir: sc.relay.work_dir.clone(),
                max_message_size: relay_settings.max_message_size,
            };
            let sink = SinkSide {
                port: up.sink.port(),
                user: POSTFIX_SINK_USER,
                password: postfix_password.as_deref().unwrap_or_default(),
                ca_file: up.pki.ca_pem_path(),
                cert_file: up.pki.cert_pem_path(),
                key_file: up.pki.key_pem_path(),
            };
            let pf = tokio::task::block_in_place(|| PostfixInstance::start(&settings, &sink))?;
            let addr = pf.addr;
            pf.start_rss_sampler();
            (Server::Postfix(pf), addr, device_login(), device_tls()?)
        }
    };
    let spec = |sessions: usize, messages: u64, per_session: u64, tag: &str| {
        Arc::new(LoadSpec {
            addr: addr.to_string(),
            sessions,
            messages,
            per_session,
            template: Template::new(MAILBOX, RECIPIENT, tag, sc.shape.size).into(),
            auth: auth.clone(),
            starttls: starttls.clone(),
            from: MAILBOX.into(),
            to: RECIPIENT.into(),
            helo: "bench-device".into(),
            timeout: sc.shape.timeout,
            hooks: crate::load::Hooks::default(),
        })
    };
    if sc.warm_up > 0 {
        let tag = unique_tag();
        let (_tx, rx) = watch::channel(false);
        let base = Instant::now();
        let watch = SinkWatch::start(up.sink.clone(), tag.clone(), base, rx);
        let warm = load::run(spec(1, sc.warm_up, 1, &tag), base).await;
        let arrived = watch.finish(&warm.accepted_seqs, sc.drain_timeout).await;
        if warm.accepted < sc.warm_up || arrived.missing > 0 {
            anyhow::bail!(
                "{label}: the warm-up failed ({} of {} accepted, {} missing at the sink: {:?}):\n{}",
                warm.accepted,
                sc.warm_up,
                arrived.missing,
                warm.problems,
                server.log()
            );
        }
    }
    let tag = unique_tag();
    let spec = spec(
        sc.shape.sessions,
        sc.shape.messages,
        sc.shape.per_session.max(1),
        &tag,
    );

    let cpu0 = process_cpu_time("/proc/self/stat");
    let server_cpu0 = server.cpu_time();
    let (abort_tx, abort_rx) = watch::channel(false);
    let guard = match &server {
        Server::Relay(r) => r
            .pid()
            .map(|pid| tokio::spawn(memory_guard(pid, sc.max_relay_rss_kib, abort_tx))),
        _ => None,
    };
    let base = Instant::now();
    let watch = SinkWatch::start(up.sink.clone(), tag, base, abort_rx.clone());
    let result = load::run(spec, base).await;
    let sink_result = watch.finish(&result.accepted_seqs, sc.drain_timeout).await;
    if let Some(g) = guard {
        g.abort();
    }
    let aborted = (*abort_rx.borrow()).then(|| {
        format!(
            "relay killed: resident memory passed {} MiB (--max-relay-rss-mib)",
            sc.max_relay_rss_kib / 1024
        )
    });
    let bench_cpu = cpu_between(cpu0, process_cpu_time("/proc/self/stat"));
    // Whole-run counts: the ceiling's own token request counts, like the relay's.
    let upstream_connections = up.sink.connections();
    let token_requests = up.idp.token_requests();
    let log_tail = if sink_result.missing > 0 {
        server.log()
    } else {
        String::new()
    };
    let (server_rss, server_cpu) = match server {
        Server::Ceiling => (None, None),
        Server::Relay(mut relay) => {
            let cpu = cpu_between(server_cpu0, relay.cpu_time());
            let rss = relay.peak_rss_kib();
            tokio::task::block_in_place(|| relay.stop(Duration::from_secs(10)));
            if let Some(path) = &sc.keep_log {
                std::fs::copy(&relay.log_path, path)
                    .with_context(|| format!("copying the relay log to {}", path.display()))?;
            }
            (rss, cpu)
        }
        Server::Postfix(mut pf) => {
            let rss = pf.peak_rss_kib();
            let cpu = cpu_between(server_cpu0, pf.cpu_time());
            tokio::task::block_in_place(|| pf.stop(Duration::from_secs(20)));
            if let Some(path) = &sc.keep_log {
                std::fs::copy(&pf.log_path, path)
                    .with_context(|| format!("copying the Postfix log to {}", path.display()))?;
            }
            (rss, cpu)
        }
    };
    if sink_result.missing > 0 {
        eprintln!(
            "smtp2oauth-bench: {label}: {} accepted messages did not reach the sink within {:?}; \
             last lines of the {} log:\n{log_tail}",
            sink_result.missing,
            sc.drain_timeout,
            peer.name(),
        );
    }

    let is_relay = peer.is_relay();
    let settings = Settings {
        peer: peer.name().into(),
        target: match peer {
            Peer::Ceiling => format!("the sink alone at {addr} (STARTTLS + XOAUTH2)"),
            Peer::Relay | Peer::RelayNopool | Peer::Baseline => format!(
                "relay {} at {addr} (in-process fakes upstream)",
                relay_settings.binary.display()
            ),
            Peer::Postfix => format!("Postfix {addr} (in-process fakes upstream)"),
        },
        sessions: sc.shape.sessions,
        messages: sc.shape.messages,
        per_session: sc.shape.per_session,
        size: sc.shape.size,
        starttls: sc.shape.starttls || peer == Peer::Ceiling,
        auth: match peer {
            Peer::Ceiling => Some("XOAUTH2".into()),
            _ => (device_auth == DeviceAuth::Password).then(|| "PLAIN".into()),
        },
        fsync: is_relay.then_some(sc.relay.fsync),
        wait_for_upstream: is_relay.then(|| sc.relay.wait_for_upstream.clone()),
        max_upstream_connections: is_relay.then_some(sc.relay.max_upstream_connections),
        upstream_idle_timeout: is_relay.then(|| relay_settings.upstream_idle_timeout.clone()),
        postfix_concurrency: (peer == Peer::Postfix).then_some(sc.postfix_concurrency),
        reply_delay_ms: Some(sc.reply_delay.as_millis() as u64),
        token_lifetime_s: Some(sc.token_lifetime.as_secs()),
    };
    let mut report = Report::new(label, settings, &result, bench_cpu).with_delivery(
        &result,
        &sink_result,
        upstream_connections,
        token_requests,
        server_rss,
        server_cpu,
    );
    report.aborted = aborted;
    Ok(report)
}

/// Samples the relay's resident memory every 50 ms; past `limit_kib` it kills the relay
/// (SIGKILL: a relay that is swapping or thrashing may not honour SIGTERM soon) and raises
/// `abort`. Ends when the relay is gone.
async fn memory_guard(pid: u32, limit_kib: u64, abort: watch::Sender<bool>) {
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Some(rss) = proc_status_kib(pid, "VmRSS:") else {
            return;
        };
        if rss > limit_kib {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) on our own child's pid; the child is reaped only after this
                // task has been aborted, so the pid cannot belong to another process yet.
                #[allow(unsafe_code)]
                let _ = unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            eprintln!(
                "smtp2oauth-bench: the relay's resident memory reached {} MiB; killed it",
                rss / 1024
            );
            abort.send_replace(true);
            return;
        }
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
