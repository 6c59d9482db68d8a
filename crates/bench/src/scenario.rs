//! One self-contained measurement: fakes up, relay up, load, drain, figures, everything down.
//!
//! Why everything is fresh per scenario: a new token endpoint, sink, spool and relay process for
//! every run means no run inherits another's cached token, warm spool directory or leftover queue,
//! so the durable and non-durable runs of `compare` differ only in the setting under test.

use crate::load::{self, LoadSpec};
use crate::message::Template;
use crate::relay::{
    DEVICE_PASSWORD, DEVICE_USER, DeviceAuth, RelayProcess, RelaySettings, proc_status_kib,
};
use crate::report::{Report, Settings, cpu_between, process_cpu_time};
use crate::sink::SinkWatch;
use anyhow::Context as _;
use rustls_pki_types::ServerName;
use smtp2oauth_testkit::{FakeIdp, FakeSmtp, IdpConfig, SmtpConfig, TestPki};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The account's mailbox; devices send as it, so no sender rewriting is involved.
pub const MAILBOX: &str = "scanner@contoso.example";
pub const RECIPIENT: &str = "archive@contoso.example";

/// The load's shape (shared by `run`, `load` and `compare`).
#[derive(Clone, Debug)]
pub struct Shape {
    pub sessions: usize,
    pub messages: u64,
    pub per_session: u64,
    pub size: usize,
    pub starttls: bool,
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub shape: Shape,
    pub relay: RelaySettings,
    pub reply_delay: Duration,
    /// How long to wait, after the load, for the queue to drain into the sink.
    pub drain_timeout: Duration,
    /// Copy the relay's log here when the scenario ends.
    pub keep_log: Option<PathBuf>,
    /// Quiet time after flushing the disks and before starting, so the previous run's writeback
    /// and discards do not land in this one.
    pub settle: Duration,
    /// Kill the relay when its resident memory passes this many KiB: the machine is shared,
    /// and a relay that grows without bound must not take it down with it.
    pub max_relay_rss_kib: u64,
}

/// A tag unique to this scenario, in every message id (see `message::find_seq`).
fn unique_tag() -> String {
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
fn sync_disks() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

pub async fn run(sc: &Scenario, label: &str) -> anyhow::Result<Report> {
    tokio::task::block_in_place(sync_disks);
    tokio::time::sleep(sc.settle).await;
    let pki = TestPki::new();
    let idp_cfg = IdpConfig::default();
    let idp = FakeIdp::start(idp_cfg.clone()).await;
    let mut smtp_cfg = SmtpConfig::microsoft(pki.server_config(), MAILBOX, idp.validator());
    smtp_cfg.reply_delay = sc.reply_delay;
    smtp_cfg.max_size = smtp_cfg.max_size.max(sc.shape.size.saturating_mul(2));
    let sink = FakeSmtp::start(smtp_cfg).await;

    let up = crate::relay::UpstreamSide {
        mailbox: MAILBOX,
        authority: idp.authority(),
        tenant: idp_cfg.tenant.clone(),
        client_id: idp_cfg.client_id.clone(),
        client_secret: idp_cfg.client_secret.clone().unwrap_or_default(),
        smtp_port: sink.port(),
        ca_file: pki.ca_pem_path(),
        cert_file: pki.cert_pem_path(),
        key_file: pki.key_pem_path(),
    };
    let mut relay_settings = sc.relay.clone();
    relay_settings.sessions = sc.shape.sessions;
    relay_settings.max_message_size = relay_settings
        .max_message_size
        .max(sc.shape.size as u64 + 64 * 1024);
    // Starting the relay polls its log with short sleeps: keep that off the fakes' workers.
    let mut relay = tokio::task::block_in_place(|| RelayProcess::start(&relay_settings, &up))?;

    let tag = unique_tag();
    let spec = Arc::new(LoadSpec {
        addr: relay.addr.to_string(),
        sessions: sc.shape.sessions,
        messages: sc.shape.messages,
        per_session: sc.shape.per_session.max(1),
        template: Template::new(MAILBOX, RECIPIENT, &tag, sc.shape.size),
        auth: match sc.relay.device_auth {
            DeviceAuth::Password => Some((DEVICE_USER.into(), DEVICE_PASSWORD.into())),
            DeviceAuth::Address => None,
        },
        starttls: if sc.shape.starttls {
            Some((pki.client_config(), ServerName::try_from("localhost")?))
        } else {
            None
        },
        from: MAILBOX.into(),
        to: RECIPIENT.into(),
        helo: "bench-device".into(),
        timeout: sc.shape.timeout,
    });

    let cpu0 = process_cpu_time("/proc/self/stat");
    let relay_cpu0 = relay.cpu_time();
    let (abort_tx, abort_rx) = watch::channel(false);
    let guard = relay
        .pid()
        .map(|pid| tokio::spawn(memory_guard(pid, sc.max_relay_rss_kib, abort_tx)));
    let base = Instant::now();
    let watch = SinkWatch::start(sink.clone(), tag, base, abort_rx.clone());
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
    let relay_cpu = cpu_between(relay_cpu0, relay.cpu_time());
    let rss = relay.peak_rss_kib();
    let upstream_connections = sink.connections();
    let token_requests = idp.token_requests();
    tokio::task::block_in_place(|| relay.stop(Duration::from_secs(10)));
    if let Some(path) = &sc.keep_log {
        std::fs::copy(&relay.log_path, path)
            .with_context(|| format!("copying the relay log to {}", path.display()))?;
    }
    if sink_result.missing > 0 {
        eprintln!(
            "smtp2oauth-bench: {label}: {} accepted messages did not reach the sink within {:?}; \
             last lines of the relay log:\n{}",
            sink_result.missing,
            sc.drain_timeout,
            tail(&relay.log(), 20)
        );
    }

    let settings = Settings {
        target: format!("relay {} (in-process fakes upstream)", relay.addr),
        sessions: sc.shape.sessions,
        messages: sc.shape.messages,
        per_session: sc.shape.per_session,
        size: sc.shape.size,
        starttls: sc.shape.starttls,
        auth: sc.relay.device_auth == DeviceAuth::Password,
        fsync: Some(sc.relay.fsync),
        wait_for_upstream: Some(sc.relay.wait_for_upstream.clone()),
        max_upstream_connections: Some(sc.relay.max_upstream_connections),
        reply_delay_ms: Some(sc.reply_delay.as_millis() as u64),
    };
    let mut report = Report::new(label, settings, &result, bench_cpu).with_delivery(
        &result,
        &sink_result,
        upstream_connections,
        token_requests,
        rss,
        relay_cpu,
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
                unsafe { libc::kill(pid, libc::SIGKILL) };
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

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
