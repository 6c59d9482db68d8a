//! The power-cut rig's short form: the relay's store on a filesystem that loses power
//! (`smtp2oauth_powercut`, strict POSIX durability), cut a few times under load at chosen
//! moments and restarted on what survived. Every message a device got `250` for must arrive.
//! The long runs (50+ cuts) are `smtp2oauth-bench power-cut`; docs/benchmarks.md has them.
//!
//! The second test proves the rig can see a loss: with `[store] fsync = false` and a cut right
//! after a `250` while the upstream is slow, the acknowledged message cannot be anywhere but in
//! memory.
//!
//! Needs /dev/fuse and root: skipped without them, a failure under SMTP2OAUTH_REQUIRE_CLIENTS.

use crate::harness::BIN;
use smtp2oauth_bench::power_cut::{self, Moment, Options};
use std::time::Duration;

fn fuse_or_skip() -> bool {
    match smtp2oauth_powercut::can_mount() {
        Ok(()) => true,
        Err(why) if std::env::var_os("SMTP2OAUTH_REQUIRE_CLIENTS").is_some() => {
            panic!("cannot mount FUSE ({why}), but SMTP2OAUTH_REQUIRE_CLIENTS is set")
        }
        Err(why) => {
            eprintln!("skipped: cannot mount FUSE here: {why}");
            false
        }
    }
}

fn short(fsync: bool) -> Options {
    let mut o = Options::new(BIN.into());
    o.fsync = fsync;
    o.sessions = 4;
    o.segment_max = Duration::from_secs(4);
    o.drain_timeout = Duration::from_secs(60);
    o
}

async fn run(o: &Options) -> power_cut::Outcome {
    eprintln!("power-cut seed {}", o.seed);
    let out = power_cut::run(o.clone(), &mut |l| eprintln!("{l}"))
        .await
        .expect("the power-cut rig ran");
    eprint!("{}", out.report(o));
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_acknowledged_message_survives_power_cuts() {
    if !fuse_or_skip() {
        return;
    }
    let mut o = short(true);
    o.cuts = 8;
    // From the relay's first start: its own directories must be durable before any message.
    o.fresh_store = true;
    let out = run(&o).await;
    assert_eq!(out.cuts.len(), 8);
    assert!(out.acknowledged > 0, "no message was acknowledged");
    assert_eq!(
        out.lost, 0,
        "acknowledged messages lost (seed {}): {:?}",
        o.seed, out.lost_seqs
    );
    assert_eq!(out.left_queued, 0, "the queue did not drain");
    assert_eq!(out.delivered, out.acknowledged);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_fsync_the_rig_sees_acknowledged_mail_lost() {
    if !fuse_or_skip() {
        return;
    }
    let mut o = short(false);
    o.cuts = 2;
    o.moments = vec![Moment::AfterAck];
    // Delivery takes several of these round trips: a message just acknowledged is still only
    // in the spool (in memory, without fsync) when the power goes.
    o.upstream_delay = Duration::from_millis(300);
    let out = run(&o).await;
    assert!(out.acknowledged > 0);
    assert!(
        out.lost > 0,
        "with fsync off, a cut right after a 250 must lose that message: {}",
        out.summary_line()
    );
}
