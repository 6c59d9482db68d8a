//! `smtp2oauth-bench`: measures the relay the way devices use it.
//!
//! Why a binary and not `cargo bench`: the thing measured is the release relay binary as a
//! process, fed over TCP by many concurrent SMTP sessions and delivering to an upstream that
//! speaks STARTTLS + XOAUTH2; the figures are throughput, latency, memory and connection counts of
//! that process, not of a function. See docs/benchmarks.md for what each figure means.
//!
//! Subcommands:
//! - `run`: one scenario (fakes, a peer, load, drain) with a table or JSON of its figures;
//! - `peers`: the same load through the sink alone (the ceiling), the relay (with and without
//!   its upstream session pool) and Postfix, repeated and alternated (the relay's targets);
//! - `memory`: the relay's memory at rest, with many idle sessions, and with one large message;
//! - `graph-large`: time and peak memory of a large scan through the Graph route (a draft and
//!   upload sessions) against a small one through the same route;
//! - `load`: only the load generator, against any SMTP server;
//! - `compare`: durable vs non-durable spooling, repeated and alternated (what durability costs).
//!
//! - `power-cut`: the relay's store on a filesystem that loses power (`power_cut`);
//! - `soak`: a long mixed load against a misbehaving upstream (`soak`).
//!
//! The measuring code is the `smtp2oauth_bench` library (also used by the end-to-end tests for
//! the short power-cut run); this file is its command line.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use relay::{DeviceAuth, RelaySettings};
use report::{Report, Settings};
use scenario::{Peer, Scenario, Shape};
use smtp2oauth_bench::{
    compare, graph_large, load, memory, message, peers, postfix, power_cut, relay, report,
    scenario, soak, tls, upstream,
};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "smtp2oauth-bench",
    about = "Benchmark smtp2oauth: load generator, in-process upstream fakes, durable vs non-durable spooling",
    // bench/run.sh passes defaults first and the user's arguments after: the last one wins.
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One scenario: fake token endpoint and upstream, one peer (by default the relay binary),
    /// the load, the drain.
    Run {
        /// What receives the load.
        #[arg(long, value_enum, default_value = "relay")]
        peer: Peer,
        #[command(flatten)]
        shape: ShapeArgs,
        #[command(flatten)]
        relay: RelayArgs,
        #[command(flatten)]
        out: OutArgs,
    },
    /// The same load through several peers (default: the sink alone, the relay, Postfix),
    /// `--runs` rounds, the order reversed every other round; medians and same-round ratios.
    Peers {
        /// Peers, comma-separated: ceiling, relay, relay-nopool, postfix, baseline.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "ceiling,relay,postfix"
        )]
        peers: Vec<Peer>,
        #[command(flatten)]
        shape: ShapeArgs,
        #[command(flatten)]
        relay: RelayArgs,
        /// Rounds (every peer once per round).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[command(flatten)]
        out: OutArgs,
    },
    /// The relay's memory: idle, with `--idle-sessions` idle device sessions, and carrying one
    /// `--large-size` message; a fresh relay for each figure, `--runs` times.
    Memory {
        #[command(flatten)]
        relay: RelayArgs,
        /// Device sessions held open and idle (after greeting, EHLO and AUTH).
        #[arg(long, default_value_t = 1000)]
        idle_sessions: usize,
        /// Size of the large message in bytes (35 MiB by default).
        #[arg(long, default_value_t = 36_700_160)]
        large_size: usize,
        /// Seconds the relay rests before an idle figure is read.
        #[arg(long, default_value_t = 3)]
        idle_settle_s: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Longest wait for any one reply, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Time and peak RSS of one `--large-size` message through the Graph route (a draft and
    /// upload sessions) against one `--baseline-size` message (one sendMail), a fresh relay
    /// for each, alternated, `--runs` times.
    GraphLarge {
        #[command(flatten)]
        relay: RelayArgs,
        /// Size of the baseline message in bytes.
        #[arg(long, default_value_t = 1_000_000)]
        baseline_size: usize,
        /// Size of the message measured in bytes (35 MB, Exchange Online's default limit).
        #[arg(long, default_value_t = 35_000_000)]
        large_size: usize,
        /// Seconds the relay rests before its idle memory is read.
        #[arg(long, default_value_t = 3)]
        idle_settle_s: u64,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Longest wait for any one reply, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Only the load generator, against any SMTP server.
    Load {
        /// Server address, host:port.
        #[arg(long)]
        addr: String,
        #[command(flatten)]
        shape: ShapeArgs,
        /// AUTH PLAIN user (no AUTH without it).
        #[arg(long, requires = "password")]
        user: Option<String>,
        #[arg(long, requires = "user")]
        password: Option<String>,
        #[arg(long, default_value = upstream::MAILBOX)]
        from: String,
        #[arg(long, default_value = upstream::RECIPIENT)]
        to: String,
        #[arg(long, default_value = "bench-device")]
        helo: String,
        /// Verify the server's certificate against this CA (PEM). Default: accept any certificate.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// Server name for TLS (SNI and verification).
        #[arg(long, default_value = "localhost")]
        tls_name: String,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Durable (fsync) vs non-durable spooling, the same load, `--runs` pairs, alternating.
    Compare {
        #[command(flatten)]
        shape: ShapeArgs,
        #[command(flatten)]
        relay: RelayArgs,
        /// Pairs of runs (one durable, one non-durable each).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[command(flatten)]
        out: OutArgs,
    },
    /// The relay's store on a filesystem that loses power: load, cuts at chosen moments,
    /// restarts on what survived, a drain; every message that got 250 must arrive. Needs
    /// /dev/fuse and root. Last line: `power-cut: cuts C, acknowledged A, delivered D, lost L,
    /// duplicated U`.
    PowerCut(PowerCutArgs),
    /// Many minutes of mixed load (device logins, 1 KiB to 10 MiB) against an upstream that
    /// misbehaves (421 greetings, 451 after DATA, dropped connections, token endpoint 500s and
    /// stalls, 60-s tokens); lost, duplicated, and the relay's RSS and fd growth.
    Soak(SoakArgs),
}

#[derive(Args)]
struct SoakArgs {
    /// The relay binary (as for power-cut).
    #[arg(long)]
    relay: Option<PathBuf>,
    /// Length of the load (the drain comes after).
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Devices, each with its own login (every other one over STARTTLS).
    #[arg(long, default_value_t = 4)]
    devices: usize,
    #[arg(long, default_value_t = 2)]
    sessions_per_device: usize,
    /// Seconds a device session rests before the next one (±50 %).
    #[arg(long, default_value_t = 5.0)]
    pace_s: f64,
    /// Message sizes and weights, `BYTES:WEIGHT,...`.
    #[arg(long, default_value = "1024:50,65536:30,1048576:15,10485760:5", value_parser = parse_sizes)]
    sizes: Sizes,
    /// Average seconds between two faults of one kind (0: no faults).
    #[arg(long, default_value_t = 60)]
    chaos_every_s: u64,
    /// Lifetime of the fake IdP's tokens, in seconds.
    #[arg(long, default_value_t = 60)]
    token_lifetime_s: u64,
    /// Seconds between two samples of the relay's RSS and open fds.
    #[arg(long, default_value_t = 60)]
    sample_s: u64,
    /// Minutes at the end over which growth is measured.
    #[arg(long, default_value_t = 20)]
    window_minutes: u64,
    #[arg(long, default_value_t = 600)]
    drain_timeout_s: u64,
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the relay's log at this path.
    #[arg(long)]
    keep_log: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl SoakArgs {
    fn options(self) -> anyhow::Result<soak::Options> {
        let minutes = Duration::from_secs_f64(self.minutes.max(0.1) * 60.0);
        let mut o = soak::Options::new(relay_binary(self.relay)?, minutes);
        o.devices = self.devices.max(1);
        o.sessions_per_device = self.sessions_per_device.max(1);
        o.pace = Duration::from_secs_f64(self.pace_s.max(0.0));
        o.sizes = self.sizes.0;
        o.chaos = self.chaos_every_s > 0;
        o.chaos_every = Duration::from_secs(self.chaos_every_s.max(1));
        o.token_lifetime = Duration::from_secs(self.token_lifetime_s.max(1));
        o.sample_every = Duration::from_secs(self.sample_s.max(1));
        o.window = Duration::from_secs(self.window_minutes.max(1) * 60);
        o.drain_timeout = Duration::from_secs(self.drain_timeout_s.max(1));
        o.work_dir = self.work_dir;
        o.keep_log = self.keep_log;
        o.seed = self.seed;
        Ok(o)
    }
}

#[derive(Args)]
struct PowerCutArgs {
    /// The relay binary (default: `smtp2oauth` next to this binary, else
    /// target/release/smtp2oauth).
    #[arg(long)]
    relay: Option<PathBuf>,
    /// Power cuts (each followed by a restart on what survived).
    #[arg(long, default_value_t = 50)]
    cuts: u32,
    /// Concurrent device sessions sending without pause.
    #[arg(long, default_value_t = 8)]
    sessions: usize,
    /// `[store] fsync` (false must show losses: proof that the rig can see one).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    fsync: bool,
    /// Moments to cut at, comma-separated (default: all, picked at random per cut).
    #[arg(long, value_enum, value_delimiter = ',')]
    moments: Vec<power_cut::Moment>,
    /// Message sizes and weights, `BYTES:WEIGHT,...` (300 KiB messages are written to disk
    /// while DATA arrives: the spool buffers 256 KiB).
    #[arg(long, default_value = "10240:4,307200:1", value_parser = parse_sizes)]
    sizes: Sizes,
    /// Messages per device session.
    #[arg(long, default_value_t = 2)]
    per_session: u64,
    /// Delay before every reply of the Exchange fake, in ms (keeps mail queued a while).
    #[arg(long, default_value_t = 20)]
    upstream_delay_ms: u64,
    /// Cut a relay that has just created its store, before anything made its directories
    /// durable (by default the store is laid out and made durable first).
    #[arg(long)]
    fresh_store: bool,
    /// Seconds to wait for a cut trigger before cutting at that time instead.
    #[arg(long, default_value_t = 8)]
    segment_max_s: u64,
    /// The final relay drains the queue until it has not shrunk for this many seconds.
    #[arg(long, default_value_t = 120)]
    drain_timeout_s: u64,
    /// Where to create the run's directory (mount point, configs, relay logs).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Copy every relay log (setup, each segment, drain) into this directory.
    #[arg(long)]
    keep_logs: Option<PathBuf>,
    /// Seed of the cut plan (printed; default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
}

/// Message sizes with weights, from `--sizes`.
#[derive(Clone, Debug)]
struct Sizes(Vec<(usize, u32)>);

fn parse_sizes(s: &str) -> Result<Sizes, String> {
    s.split(',')
        .map(|part| {
            let (size, weight) = part.split_once(':').unwrap_or((part, "1"));
            let size = size
                .trim()
                .parse()
                .map_err(|_| format!("bad size `{size}`"))?;
            let weight = weight
                .trim()
                .parse()
                .map_err(|_| format!("bad weight `{weight}`"))?;
            Ok((size, weight))
        })
        .collect::<Result<Vec<_>, String>>()
        .and_then(|v| match v.iter().any(|(_, w)| *w > 0) {
            true => Ok(Sizes(v)),
            false => Err("every weight is 0".into()),
        })
}

impl PowerCutArgs {
    fn options(self) -> anyhow::Result<power_cut::Options> {
        let mut o = power_cut::Options::new(relay_binary(self.relay)?);
        o.cuts = self.cuts.max(1);
        o.sessions = self.sessions.max(1);
        o.fsync = self.fsync;
        if !self.moments.is_empty() {
            o.moments = self.moments;
        }
        o.sizes = self.sizes.0;
        o.per_session = self.per_session.max(1);
        o.upstream_delay = Duration::from_millis(self.upstream_delay_ms);
        o.fresh_store = self.fresh_store;
        o.segment_max = Duration::from_secs(self.segment_max_s.max(1));
        o.drain_timeout = Duration::from_secs(self.drain_timeout_s.max(1));
        o.work_dir = self.work_dir;
        o.keep_logs = self.keep_logs;
        if let Some(seed) = self.seed {
            o.seed = seed;
        }
        Ok(o)
    }
}

#[derive(Args)]
struct ShapeArgs {
    /// Concurrent SMTP sessions.
    #[arg(long, default_value_t = 50)]
    sessions: usize,
    /// Messages in total.
    #[arg(long, default_value_t = 2000)]
    messages: u64,
    /// Messages per session (1: a new session and login per message, as printers do).
    #[arg(long, default_value_t = 1)]
    per_session: u64,
    /// Bytes per message (headers + body).
    #[arg(long, default_value_t = 10240)]
    size: usize,
    /// Upgrade each session with STARTTLS before AUTH.
    #[arg(long)]
    starttls: bool,
    /// Longest wait for any one reply, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
}

impl ShapeArgs {
    fn shape(&self) -> Shape {
        Shape {
            sessions: self.sessions.max(1),
            messages: self.messages,
            per_session: self.per_session.max(1),
            size: self.size,
            starttls: self.starttls,
            timeout: Duration::from_secs(self.timeout_s.max(1)),
        }
    }
}

#[derive(Args)]
struct RelayArgs {
    /// The relay binary. Default: `smtp2oauth` next to this binary, else target/release/smtp2oauth.
    #[arg(long)]
    relay: Option<PathBuf>,
    /// A second relay binary, the `baseline` peer (e.g. the build before a change).
    #[arg(long)]
    baseline_relay: Option<PathBuf>,
    /// `[delivery] wait_for_upstream` ("0" = pure queue: 250 as soon as the message is spooled).
    #[arg(long, default_value = "0")]
    wait_for_upstream: String,
    /// `[delivery] max_upstream_connections` (Exchange allows 3 per mailbox).
    #[arg(long, default_value_t = 3)]
    max_upstream_connections: usize,
    /// `[delivery] upstream_idle_timeout`: how long the relay keeps an idle upstream session
    /// for the next message ("0s": no pool).
    #[arg(long, default_value = "30s")]
    upstream_idle_timeout: String,
    /// No upstream session pool: `upstream_idle_timeout = "0s"`, a new session per message.
    #[arg(long)]
    no_pool: bool,
    /// `[store] fsync`: make every message durable before 250 (`compare` runs both).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    fsync: bool,
    /// Lifetime of the fake IdP's tokens, in seconds.
    #[arg(long, default_value_t = 3600)]
    token_lifetime_s: u64,
    /// Postfix's `default_destination_concurrency_limit` (Postfix's default is 20).
    #[arg(long, default_value_t = 20)]
    postfix_concurrency: usize,
    /// Messages sent and delivered, one at a time, before the measured load (the device's
    /// login cached, a token held): 0 measures from a cold start.
    #[arg(long, default_value_t = 1)]
    warm_up: u64,
    /// Delay before every reply of the upstream sink (emulates a WAN round trip).
    #[arg(long, default_value_t = 0)]
    reply_delay_ms: u64,
    /// How devices authenticate: AUTH PLAIN against an argon2id hash, or by address (no AUTH).
    #[arg(long, value_enum, default_value = "password")]
    device_auth: DeviceAuth,
    /// The relay's log filter (RUST_LOG syntax).
    #[arg(long, default_value = "info")]
    relay_log: String,
    /// Where to create the relay's temporary directory (config, spool, log). Its filesystem
    /// decides what an fsync costs: a tmpfs makes it free.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Seconds to wait after the load for every accepted message to reach the sink.
    #[arg(long, default_value_t = 300)]
    drain_timeout_s: u64,
    /// Keep the relay's log at this path (compare: one file per run, named after it).
    #[arg(long)]
    keep_log: Option<PathBuf>,
    /// Seconds to pause (after flushing the disks) before each scenario, so one run's
    /// writeback does not land in the next.
    #[arg(long, default_value_t = 2)]
    settle_s: u64,
    /// Kill the relay (and fail the run) when its resident memory passes this many MiB.
    #[arg(long, default_value_t = 4096)]
    max_relay_rss_mib: u64,
}

impl RelayArgs {
    fn scenario(&self, shape: Shape) -> anyhow::Result<Scenario> {
        Ok(Scenario {
            relay: RelaySettings {
                binary: relay_binary(self.relay.clone())?,
                fsync: self.fsync,
                wait_for_upstream: self.wait_for_upstream.clone(),
                max_upstream_connections: self.max_upstream_connections.max(1),
                upstream_idle_timeout: if self.no_pool {
                    "0s".into()
                } else {
                    self.upstream_idle_timeout.clone()
                },
                device_auth: self.device_auth,
                log_level: self.relay_log.clone(),
                work_dir: self.work_dir.clone(),
                sessions: shape.sessions,
                max_message_size: 36_700_160,
                store_dir: None,
                extra_config: String::new(),
            },
            shape,
            reply_delay: Duration::from_millis(self.reply_delay_ms),
            token_lifetime: Duration::from_secs(self.token_lifetime_s.max(1)),
            postfix_concurrency: self.postfix_concurrency.max(1),
            warm_up: self.warm_up,
            baseline_binary: self.baseline_relay.clone(),
            drain_timeout: Duration::from_secs(self.drain_timeout_s),
            keep_log: self.keep_log.clone(),
            max_relay_rss_kib: self.max_relay_rss_mib.saturating_mul(1024),
            settle: Duration::from_secs(self.settle_s),
        })
    }
}

#[derive(Args)]
struct OutArgs {
    /// Print JSON on standard output (the table then goes to standard error).
    #[arg(long)]
    json: bool,
}

impl OutArgs {
    fn emit(&self, table: &str, json: impl FnOnce() -> serde_json::Result<String>) {
        if self.json {
            eprint!("{table}");
            match json() {
                Ok(j) => println!("{j}"),
                Err(e) => eprintln!("smtp2oauth-bench: cannot write JSON: {e}"),
            }
        } else {
            print!("{table}");
        }
    }
}

fn relay_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("smtp2oauth")));
    let candidates = sibling
        .into_iter()
        .chain([PathBuf::from("target/release/smtp2oauth")]);
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
    }
    anyhow::bail!(
        "no relay binary found next to this one or at target/release/smtp2oauth; \
         build it (cargo build --release -p smtp2oauth) or pass --relay"
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Two workers: the machine this runs on has two cores, shared with the relay under test.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("smtp2oauth-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("smtp2oauth-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            peer,
            shape,
            relay,
            out,
        } => {
            let sc = relay.scenario(shape.shape())?;
            if peer == Peer::Postfix
                && let Err(why) = postfix::available()
            {
                anyhow::bail!("cannot run Postfix here: {why}");
            }
            let label = match peer {
                p if p.is_relay() && sc.relay.fsync => format!("{} (durable)", peer.name()),
                p if p.is_relay() => format!("{} (non-durable)", peer.name()),
                _ => peer.name().to_string(),
            };
            let report = scenario::run(&sc, peer, &label).await?;
            out.emit(&report.table(), || serde_json::to_string_pretty(&report));
            Ok(exit_code(&[&report]))
        }
        Command::Peers {
            peers,
            shape,
            relay,
            runs,
            out,
        } => {
            let sc = relay.scenario(shape.shape())?;
            // Each run's full table as it ends, on stderr (stdout is the summary or JSON).
            let cmp = peers::run(&sc, &peers, runs.max(1), |r| eprint!("{}", r.table())).await?;
            out.emit(&cmp.table(), || serde_json::to_string_pretty(&cmp));
            let all: Vec<&Report> = cmp.runs.iter().collect();
            Ok(exit_code(&all))
        }
        Command::Memory {
            relay,
            idle_sessions,
            large_size,
            idle_settle_s,
            runs,
            timeout_s,
            out,
        } => {
            let shape = Shape {
                sessions: 1,
                messages: 1,
                per_session: 1,
                size: large_size,
                starttls: false,
                timeout: Duration::from_secs(timeout_s.max(1)),
            };
            let sc = relay.scenario(shape)?;
            let opts = memory::MemoryOptions {
                idle_sessions: idle_sessions.max(1),
                large_size,
                settle: Duration::from_secs(idle_settle_s),
            };
            let rep = memory::run(&sc, &opts, runs.max(1), |i, r| {
                eprint!("{}", r.table(i + 1))
            })
            .await?;
            out.emit(&rep.table(), || serde_json::to_string_pretty(&rep));
            Ok(if rep.complete {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::GraphLarge {
            relay,
            baseline_size,
            large_size,
            idle_settle_s,
            runs,
            timeout_s,
            out,
        } => {
            let shape = Shape {
                sessions: 1,
                messages: 1,
                per_session: 1,
                size: large_size,
                starttls: false,
                timeout: Duration::from_secs(timeout_s.max(1)),
            };
            let sc = relay.scenario(shape)?;
            let opts = graph_large::GraphLargeOptions {
                baseline_size,
                large_size,
                settle: Duration::from_secs(idle_settle_s),
            };
            let rep = graph_large::run(&sc, &opts, runs.max(1), |i, r| {
                eprint!("{}", r.table(i + 1))
            })
            .await?;
            out.emit(&rep.table(), || serde_json::to_string_pretty(&rep));
            Ok(if rep.complete {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Load {
            addr,
            shape,
            user,
            password,
            from,
            to,
            helo,
            tls_ca,
            tls_name,
            out,
        } => {
            let shape = shape.shape();
            let starttls = if shape.starttls {
                let config = tls::client_config(tls_ca.as_deref())?;
                let name = rustls_pki_types::ServerName::try_from(tls_name.clone())
                    .with_context(|| format!("--tls-name {tls_name}"))?;
                Some((config, name))
            } else {
                None
            };
            let tag = format!("load{}", std::process::id());
            let spec = Arc::new(load::LoadSpec {
                addr: addr.clone(),
                sessions: shape.sessions,
                messages: shape.messages,
                per_session: shape.per_session,
                template: message::Template::new(&from, &to, &tag, shape.size).into(),
                auth: user
                    .zip(password)
                    .map(|(user, password)| load::Auth::Plain { user, password }),
                starttls,
                from,
                to,
                helo,
                timeout: shape.timeout,
                hooks: load::Hooks::default(),
            });
            let auth = spec.auth.is_some();
            let cpu0 = report::process_cpu_time("/proc/self/stat");
            let result = load::run(spec, Instant::now()).await;
            let cpu = report::cpu_between(cpu0, report::process_cpu_time("/proc/self/stat"));
            let settings = Settings {
                peer: "load".into(),
                target: addr,
                sessions: shape.sessions,
                messages: shape.messages,
                per_session: shape.per_session,
                size: shape.size,
                starttls: shape.starttls,
                auth: auth.then(|| "PLAIN".into()),
                fsync: None,
                wait_for_upstream: None,
                max_upstream_connections: None,
                upstream_idle_timeout: None,
                postfix_concurrency: None,
                reply_delay_ms: None,
                token_lifetime_s: None,
            };
            let report = Report::new("load", settings, &result, cpu);
            out.emit(&report.table(), || serde_json::to_string_pretty(&report));
            Ok(exit_code(&[&report]))
        }
        Command::Compare {
            shape,
            relay,
            runs,
            out,
        } => {
            let sc = relay.scenario(shape.shape())?;
            let quiet = out.json;
            let cmp = compare::run(&sc, runs.max(1), |r| {
                // Progress goes to stderr so stdout stays the final table (or JSON).
                if !quiet {
                    eprint!("{}", r.table());
                }
            })
            .await?;
            out.emit(&cmp.table(), || serde_json::to_string_pretty(&cmp));
            let all: Vec<&Report> = cmp.runs.iter().collect();
            Ok(exit_code(&all))
        }
        Command::Soak(args) => {
            let opts = args.options()?;
            let out = soak::run(opts.clone(), &mut |line| eprintln!("{line}")).await?;
            print!("{}", out.report(&opts));
            let grew = |g: Option<f64>| g.is_some_and(|g| g >= 5.0);
            Ok(
                if out.lost > 0
                    || out.duplicated > 0
                    || grew(out.rss_growth_pct)
                    || grew(out.fd_growth_pct)
                {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                },
            )
        }
        Command::PowerCut(args) => {
            let opts = args.options()?;
            eprintln!(
                "power-cut: seed {} (rerun the same plan with --seed {})",
                opts.seed, opts.seed
            );
            let out = power_cut::run(opts.clone(), &mut |line| eprintln!("{line}")).await?;
            print!("{}", out.report(&opts));
            // A loss, or mail left behind, is what scripts must notice; duplicates after a
            // cut between the upstream's 250 and the removal are the documented price.
            Ok(if out.lost > 0 || out.left_queued > 0 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// Non-zero when a message was lost, duplicated or not accepted, so scripts notice.
fn exit_code(reports: &[&Report]) -> ExitCode {
    let bad = reports.iter().any(|r| {
        r.accepted < r.sent
            || r.aborted.is_some()
            || r.delivery
                .as_ref()
                .is_some_and(|d| d.missing > 0 || d.duplicates > 0)
    });
    if bad {
        eprintln!(
            "smtp2oauth-bench: some messages were refused, failed, lost or duplicated (see above)"
        );
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}
