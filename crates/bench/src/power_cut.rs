//! `power-cut`: the relay under load with its store on a filesystem that loses power, cut at
//! chosen moments, restarted on what survived; every message that got `250` must arrive.
//!
//! Why: a SIGKILL leaves the page cache intact, so it cannot show a missing fsync. Here the
//! store lives on `smtp2oauth_powercut` (strict POSIX: a file's bytes are durable after its
//! fsync, a name after its directory's fsync, nothing else), and a cut throws away everything
//! else and SIGKILLs the relay at the same instant (from inside the filesystem).
//!
//! One run: the fake token endpoint and Exchange sink start; the relay starts once to lay out
//! its store, stops, and that layout is made durable (as a machine that has been up a while;
//! `--fresh-store` skips this and cuts a relay that has just created its directories). Then,
//! `--cuts` times: the relay starts on the store, `--sessions` devices send without pause
//! (`wait_for_upstream = "0"`: 250 as soon as the message is spooled), and a cut comes at one of
//! the moments below, picked at random (seeded); the filesystem is remounted with what
//! survived. Finally the relay starts once more and drains the queue. A message is *lost* when
//! it got `250` and never reached the sink (each carries its sequence number in its
//! Message-ID); *duplicated* counts arrivals of a number already seen.
//!
//! The moments ([`Moment`]): a write into a data file (in DATA, for messages larger than the
//! spool's buffer), one of the commit's fsyncs or its rename (between the body and the 250),
//! right after a device got its 250, a read of a data file (delivery), an unlink in the spool
//! (removal after delivery), or a random time. A trigger that does not fire within
//! `--segment-max-s` is replaced by a timed cut (counted as a fallback).

use crate::load::{self, Hooks, LoadSpec};
use crate::message::{Mix, Template};
use crate::relay::{DeviceAuth, RelayProcess, RelaySettings};
use crate::scenario::{relay_side, unique_tag};
use crate::sink::SinkWatch;
use crate::upstream::{MAILBOX, RECIPIENT, Upstream, UpstreamOptions};
use anyhow::{Context as _, bail};
use smtp2oauth_powercut::{CutEvent, Mount, Op, PowerCutFs, Trigger, When};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// When a cut comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Moment {
    /// At a write into a data file (the body arriving in DATA, or written at commit).
    InData,
    /// At one of the commit's fsyncs or its rename, before or after it.
    Commit,
    /// Right after a device received its 250.
    AfterAck,
    /// At a read of a data file: the body going upstream.
    Delivery,
    /// At an unlink in the spool: a delivered message being removed.
    Removal,
    /// At a random time.
    Timer,
}

impl Moment {
    pub const ALL: [Moment; 6] = [
        Moment::InData,
        Moment::Commit,
        Moment::AfterAck,
        Moment::Delivery,
        Moment::Removal,
        Moment::Timer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Moment::InData => "in-data",
            Moment::Commit => "commit",
            Moment::AfterAck => "after-ack",
            Moment::Delivery => "delivery",
            Moment::Removal => "removal",
            Moment::Timer => "timer",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub relay: PathBuf,
    pub cuts: u32,
    pub sessions: usize,
    /// `[store] fsync`.
    pub fsync: bool,
    /// Moments to pick from (all by default).
    pub moments: Vec<Moment>,
    /// (size in bytes, weight) of the messages sent.
    pub sizes: Vec<(usize, u32)>,
    /// Messages per device session.
    pub per_session: u64,
    /// Delay before each reply of the Exchange fake (a WAN; keeps mail in the queue a while).
    pub upstream_delay: Duration,
    /// Cut a relay that has just created its store instead of one laid out durably before.
    pub fresh_store: bool,
    /// A trigger not fired by then is replaced by a timed cut.
    pub segment_max: Duration,
    /// The drain gives up when the queue has not shrunk for this long.
    pub drain_timeout: Duration,
    /// Parent of the run's temporary directory (mount point, configs, relay logs).
    pub work_dir: Option<PathBuf>,
    /// Copy every relay log (setup, each segment, the drain) into this directory.
    pub keep_logs: Option<PathBuf>,
    pub seed: u64,
}

impl Options {
    pub fn new(relay: PathBuf) -> Options {
        Options {
            relay,
            cuts: 50,
            sessions: 8,
            fsync: true,
            moments: Moment::ALL.to_vec(),
            sizes: vec![(10 * 1024, 4), (300 * 1024, 1)],
            per_session: 2,
            upstream_delay: Duration::from_millis(20),
            fresh_store: false,
            segment_max: Duration::from_secs(8),
            drain_timeout: Duration::from_secs(120),
            work_dir: None,
            keep_logs: None,
            seed: seed_from_clock(),
        }
    }
}

/// One cut: what was planned, what fired, what the devices got in that segment.
#[derive(Clone, Debug)]
pub struct CutRecord {
    pub moment: Moment,
    /// The trigger did not fire in time: a timed cut was made instead.
    pub fallback: bool,
    pub reason: String,
    pub acknowledged: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub cuts: Vec<CutRecord>,
    pub acknowledged: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Sequence numbers of lost messages, with the cut (1-based) of the segment they were
    /// acknowledged in (0: the drain).
    pub lost_seqs: Vec<(u64, usize)>,
    /// Messages still queued, or in `failed/`, when the drain ended.
    pub left_queued: usize,
    pub left_failed: usize,
    pub drain_s: f64,
}

impl Outcome {
    /// The last line of the report, exactly as the issue defines it.
    pub fn summary_line(&self) -> String {
        format!(
            "power-cut: cuts {}, acknowledged {}, delivered {}, lost {}, duplicated {}",
            self.cuts.len(),
            self.acknowledged,
            self.delivered,
            self.lost,
            self.duplicated
        )
    }

    /// The whole report; its last line is [`Outcome::summary_line`].
    pub fn report(&self, opts: &Options) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "relay {} | fsync {} | sessions {} | sizes {:?} | seed {} | store {}",
            opts.relay.display(),
            opts.fsync,
            opts.sessions,
            opts.sizes,
            opts.seed,
            if opts.fresh_store {
                "fresh (cut before its directories were ever synced)"
            } else {
                "laid out and made durable before the first cut"
            }
        );
        let mut by: BTreeMap<Moment, (u32, u32)> = BTreeMap::new();
        for c in &self.cuts {
            let e = by.entry(c.moment).or_default();
            e.0 += 1;
            e.1 += u32::from(c.fallback);
        }
        let moments: Vec<String> = by
            .iter()
            .map(|(m, (n, f))| match f {
                0 => format!("{} {n}", m.name()),
                f => format!("{} {n} ({f} timed fallback)", m.name()),
            })
            .collect();
        let _ = writeln!(out, "cuts by moment: {}", moments.join(", "));
        let _ = writeln!(
            out,
            "drain: {:.1} s; left queued {}, in failed/ {}",
            self.drain_s, self.left_queued, self.left_failed
        );
        if !self.lost_seqs.is_empty() {
            let shown: Vec<String> = self
                .lost_seqs
                .iter()
                .take(20)
                .map(|(s, c)| format!("#{s} (acknowledged before cut {c})"))
                .collect();
            let _ = writeln!(out, "lost: {}", shown.join(", "));
        }
        let _ = writeln!(out, "{}", self.summary_line());
        out
    }
}

/// A small deterministic generator (xorshift64*), so a run is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
}

fn seed_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1
}

/// How one segment's cut is set up.
struct Plan {
    moment: Moment,
    trigger: Option<Trigger>,
    /// Cut right after the n-th 250 of the segment.
    after_ack: Option<u32>,
    /// Cut at this time after the load starts (the timer, or the fallback).
    at: Duration,
}

fn plan(moment: Moment, rng: &mut Rng, segment_max: Duration) -> Plan {
    let nth = |rng: &mut Rng, n: u64| 1 + rng.below(n) as u32;
    let when = |rng: &mut Rng| rng.pick(&[When::Before, When::After]);
    let trigger = |op, path: &str, nth, when| {
        Some(Trigger {
            op,
            path_contains: path.to_string(),
            nth,
            when,
        })
    };
    let mut p = Plan {
        moment,
        trigger: None,
        after_ack: None,
        at: segment_max,
    };
    match moment {
        Moment::InData => {
            p.trigger = trigger(Op::Write, "/spool/data/", nth(rng, 12), When::Before)
        }
        Moment::Commit => {
            let (op, path) = rng.pick(&[
                (Op::Fsync, "/spool/data/"),
                (Op::Fsync, "/spool/queue/"),
                (Op::FsyncDir, "/spool/data"),
                (Op::FsyncDir, "/spool/queue"),
                (Op::Rename, "/spool/queue/"),
            ]);
            p.trigger = trigger(op, path, nth(rng, 20), when(rng));
        }
        Moment::AfterAck => p.after_ack = Some(nth(rng, 20)),
        Moment::Delivery => {
            p.trigger = trigger(Op::Read, "/spool/data/", nth(rng, 20), when(rng));
        }
        Moment::Removal => {
            let path = rng.pick(&["/spool/queue/", "/spool/data/"]);
            p.trigger = trigger(Op::Unlink, path, nth(rng, 20), when(rng));
        }
        Moment::Timer => p.at = Duration::from_millis(200 + rng.below(2800)),
    }
    p
}

/// Everything that lives for the whole run.
struct Rig {
    opts: Options,
    fs: PowerCutFs,
    mount: Option<Mount>,
    mount_path: PathBuf,
    settings: RelaySettings,
    up: Upstream,
    /// The relay the next cut must kill (0: none).
    pid: Arc<AtomicI32>,
    cuts: watch::Receiver<u64>,
    mix: Mix,
    next_seq: Arc<AtomicU64>,
    /// Acknowledged sequence numbers → the cut that ended their segment.
    acked: HashMap<u64, usize>,
    logs: usize,
    _dir: tempfile::TempDir,
}

pub async fn run(opts: Options, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Outcome> {
    smtp2oauth_powercut::can_mount().map_err(|why| anyhow::anyhow!("cannot mount FUSE: {why}"))?;
    if opts.moments.is_empty() || opts.sizes.is_empty() {
        bail!("power-cut needs at least one moment and one message size");
    }
    let tag = unique_tag();
    let mix = Mix::new(
        opts.sizes
            .iter()
            .map(|&(size, w)| (w, Template::new(MAILBOX, RECIPIENT, &tag, size)))
            .collect(),
    );
    let mut rig = Rig::new(opts, mix).await?;
    let (_abort_tx, abort_rx) = watch::channel(false);
    let watch = SinkWatch::start(rig.up.sink.clone(), tag, Instant::now(), abort_rx);
    if !rig.opts.fresh_store {
        rig.lay_out_store()?;
    }
    let mut rng = Rng(rig.opts.seed);
    let mut records = Vec::new();
    for n in 1..=rig.opts.cuts as usize {
        let moment = rng.pick(&rig.opts.moments);
        let p = plan(moment, &mut rng, rig.opts.segment_max);
        let record = rig.segment(n, p).await?;
        progress(&format!(
            "cut {n:>3}/{}: {:<9} {}{} ({} acknowledged in this segment)",
            rig.opts.cuts,
            moment.name(),
            if record.fallback {
                "[timed fallback] "
            } else {
                ""
            },
            record.reason,
            record.acknowledged
        ));
        records.push(record);
        rig.remount()?;
    }
    let (left_queued, left_failed, drain) = rig.drain().await?;
    let mut acked: Vec<u64> = rig.acked.keys().copied().collect();
    acked.sort_unstable();
    let sink = watch.finish(&acked, Duration::from_secs(5)).await;
    let mut out = Outcome {
        cuts: records,
        acknowledged: acked.len() as u64,
        delivered: sink.delivered,
        lost: sink.missing,
        duplicated: sink.duplicates,
        left_queued,
        left_failed,
        drain_s: drain.as_secs_f64(),
        ..Outcome::default()
    };
    out.lost_seqs = rig.lost(&sink.arrived);
    Ok(out)
}

impl Rig {
    async fn new(opts: Options, mix: Mix) -> anyhow::Result<Rig> {
        let dir = match &opts.work_dir {
            Some(p) => tempfile::Builder::new()
                .prefix("smtp2oauth-powercut.")
                .tempdir_in(p),
            None => tempfile::Builder::new()
                .prefix("smtp2oauth-powercut.")
                .tempdir(),
        }
        .context("creating the run's directory")?;
        let mount_path = dir.path().join("mnt");
        std::fs::create_dir(&mount_path)?;
        let fs = PowerCutFs::new();
        let mount = fs
            .mount(&mount_path)
            .context("mounting the power-cut filesystem")?;
        let pid = Arc::new(AtomicI32::new(0));
        let (tx, cuts) = watch::channel(0u64);
        let victim = pid.clone();
        fs.on_cut(Some(Arc::new(move |e: &CutEvent| {
            let p = victim.load(Ordering::SeqCst);
            // Our own child, not yet reaped (the rig reaps it only after clearing `victim`), so
            // the pid cannot be another process's.
            if let Some(pid) = rustix::process::Pid::from_raw(p) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            tx.send_replace(e.number);
        })));
        let up = Upstream::start(&UpstreamOptions {
            reply_delay: opts.upstream_delay,
            max_size: opts.sizes.iter().map(|s| s.0).max().unwrap_or(0) * 2 + (1 << 20),
            token_lifetime: Duration::from_secs(3600),
            password_login: None,
        })
        .await;
        let settings = RelaySettings {
            binary: opts.relay.clone(),
            fsync: opts.fsync,
            wait_for_upstream: "0".into(),
            max_upstream_connections: 3,
            upstream_idle_timeout: "30s".into(),
            device_auth: DeviceAuth::Address,
            log_level: "info".into(),
            work_dir: Some(dir.path().to_path_buf()),
            sessions: opts.sessions,
            max_message_size: 36_700_160,
            store_dir: Some(mount_path.join("store")),
            extra_config: String::new(),
        };
        Ok(Rig {
            mix,
            opts,
            fs,
            mount: Some(mount),
            mount_path,
            settings,
            up,
            pid,
            cuts,
            next_seq: Arc::new(AtomicU64::new(0)),
            acked: HashMap::new(),
            logs: 0,
            _dir: dir,
        })
    }

    fn start_relay(&mut self) -> anyhow::Result<RelayProcess> {
        let side = relay_side(&self.up);
        let relay = tokio::task::block_in_place(|| RelayProcess::start(&self.settings, &side))?;
        self.pid
            .store(relay.pid().map_or(0, |p| p as i32), Ordering::SeqCst);
        Ok(relay)
    }

    /// Ends a relay's life (already SIGKILLed by a cut, or not) and keeps its log if asked.
    fn end_relay(&mut self, mut relay: RelayProcess, name: &str, graceful: bool) {
        self.pid.store(0, Ordering::SeqCst);
        if graceful {
            tokio::task::block_in_place(|| relay.stop(Duration::from_secs(20)));
        } else {
            relay.kill();
        }
        if let Some(dir) = &self.opts.keep_logs {
            self.logs += 1;
            let _ = std::fs::create_dir_all(dir);
            let to = dir.join(format!("{:03}-{name}.log", self.logs));
            let _ = std::fs::copy(&relay.log_path, to);
        }
    }

    /// The relay lays out its store; it is stopped and the layout made durable.
    fn lay_out_store(&mut self) -> anyhow::Result<()> {
        let relay = self.start_relay()?;
        self.end_relay(relay, "setup", true);
        self.fs.checkpoint();
        Ok(())
    }

    fn remount(&mut self) -> anyhow::Result<()> {
        if let Some(m) = self.mount.take() {
            m.unmount().context("unmounting after a cut")?;
        }
        self.mount = Some(self.fs.mount(&self.mount_path).context("remounting")?);
        Ok(())
    }

    fn load_spec(
        &self,
        addr: String,
        stop: Arc<AtomicBool>,
        on_accept: load::OnAccept,
    ) -> LoadSpec {
        LoadSpec {
            addr,
            sessions: self.opts.sessions,
            messages: u64::MAX,
            per_session: self.opts.per_session.max(1),
            template: self.mix.clone(),
            auth: None,
            starttls: None,
            from: MAILBOX.into(),
            to: RECIPIENT.into(),
            helo: "powercut-device".into(),
            timeout: Duration::from_secs(60),
            hooks: Hooks {
                next: Some(self.next_seq.clone()),
                stop: Some(stop),
                on_accept: Some(on_accept),
                pace: None,
            },
        }
    }

    /// One segment: relay up, load, the planned cut, relay gone.
    async fn segment(&mut self, n: usize, plan: Plan) -> anyhow::Result<CutRecord> {
        let relay = self.start_relay()?;
        self.cuts.borrow_and_update();
        if let Some(t) = &plan.trigger {
            self.fs.arm(t.clone());
        }
        let acks = Arc::new(AtomicU32::new(0));
        let (fs, after_ack, counted) = (self.fs.clone(), plan.after_ack, acks.clone());
        let on_accept: load::OnAccept = Arc::new(move |seq| {
            let k = counted.fetch_add(1, Ordering::SeqCst) + 1;
            if after_ack == Some(k) {
                fs.cut(&format!("right after the 250 of message #{seq}"));
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let spec = Arc::new(self.load_spec(relay.addr.to_string(), stop.clone(), on_accept));
        let load = tokio::spawn(load::run(spec, Instant::now()));
        let fired = tokio::select! {
            _ = self.cuts.changed() => true,
            _ = tokio::time::sleep(plan.at) => false,
        };
        let timed = plan.moment == Moment::Timer;
        if !fired {
            let why = if timed {
                "at a random time"
            } else {
                "no trigger fired in time"
            };
            self.fs.cut(&format!(
                "{why} ({} ms into the segment)",
                plan.at.as_millis()
            ));
        }
        self.fs.disarm();
        stop.store(true, Ordering::SeqCst);
        self.end_relay(relay, &format!("segment-{n}"), false);
        let result = load.await.context("the load task failed")?;
        for seq in &result.accepted_seqs {
            self.acked.insert(*seq, n);
        }
        let reason = self.fs.last_cut().map(|c| c.reason).unwrap_or_default();
        Ok(CutRecord {
            moment: plan.moment,
            fallback: !fired && !timed,
            reason,
            acknowledged: result.accepted_seqs.len() as u64,
        })
    }

    /// The relay on what survived the last cut, until its queue is empty.
    async fn drain(&mut self) -> anyhow::Result<(usize, usize, Duration)> {
        let relay = self.start_relay()?;
        let t0 = Instant::now();
        let spool = self.mount_path.join("store/spool");
        let queued = |area: &str| count_messages(&spool.join(area));
        // A long run leaves a long queue: wait while it shrinks, give up when it stops.
        let (mut last, mut progress_at) = (usize::MAX, Instant::now());
        loop {
            let now = queued("queue");
            if now == 0 || progress_at.elapsed() > self.opts.drain_timeout {
                break;
            }
            if now < last {
                (last, progress_at) = (now, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = t0.elapsed();
        let left = (queued("queue"), queued("failed"));
        self.end_relay(relay, "drain", true);
        Ok((left.0, left.1, took))
    }

    fn lost(&self, arrived: &std::collections::HashSet<u64>) -> Vec<(u64, usize)> {
        let mut lost: Vec<(u64, usize)> = self
            .acked
            .iter()
            .filter(|(s, _)| !arrived.contains(s))
            .map(|(&s, &c)| (s, c))
            .collect();
        lost.sort_unstable();
        lost
    }
}

/// Messages in a spool area: names without a dot (`.tmp` files are not messages).
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

    #[test]
    fn the_last_line_is_exactly_the_one_promised() {
        let o = Outcome {
            cuts: vec![
                CutRecord {
                    moment: Moment::Commit,
                    fallback: false,
                    reason: String::new(),
                    acknowledged: 3,
                };
                2
            ],
            acknowledged: 10,
            delivered: 9,
            lost: 1,
            duplicated: 4,
            ..Outcome::default()
        };
        assert_eq!(
            o.summary_line(),
            "power-cut: cuts 2, acknowledged 10, delivered 9, lost 1, duplicated 4"
        );
        let report = o.report(&Options::new(PathBuf::from("relay")));
        assert_eq!(report.lines().last(), Some(o.summary_line().as_str()));
    }

    #[test]
    fn plans_are_reproducible_from_the_seed_and_cover_every_moment() {
        let plans = |seed| {
            let mut rng = Rng(seed);
            (0..200)
                .map(|_| {
                    let m = rng.pick(&Moment::ALL);
                    let p = plan(m, &mut rng, Duration::from_secs(8));
                    (m, p.trigger, p.after_ack, p.at)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(plans(7), plans(7));
        assert_ne!(plans(7), plans(8));
        for m in Moment::ALL {
            assert!(plans(7).iter().any(|p| p.0 == m), "{m:?}");
        }
        for (m, trigger, after_ack, at) in plans(7) {
            match m {
                Moment::AfterAck => assert!(after_ack.is_some_and(|n| (1..=20).contains(&n))),
                Moment::Timer => assert!(at < Duration::from_secs(3) && trigger.is_none()),
                _ => assert!(trigger.is_some_and(|t| t.nth >= 1), "{m:?}"),
            }
        }
    }
}
