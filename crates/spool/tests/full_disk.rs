//! The spool on a real filesystem that runs full (a small tmpfs): a message that does not fit
//! fails with `SpoolError::Full` (the device hears `452 4.3.1`) wherever the disk runs out,
//! leaves nothing half-written behind, takes nothing accepted with it, and the spool takes
//! mail again by itself once there is space.

#![allow(clippy::unwrap_used)]

use smtp2oauth_spool::{Area, Envelope, MessageId, Spool, SpoolError};
use smtp2oauth_testkit::Tmpfs;
use std::path::Path;

fn envelope() -> Envelope {
    Envelope {
        id: MessageId::default(),
        received_at_ms: smtp2oauth_spool::now_ms(),
        account: "scanner".into(),
        device: "mfp".into(),
        listener: "plain".into(),
        client_ip: "127.0.0.1".into(),
        helo: "printer".into(),
        sender: "scanner@contoso.com".into(),
        original_sender: None,
        recipients: vec!["a@example.com".into()],
        eight_bit: false,
        smtputf8: false,
        size: 0,
        crc32c: 0,
        notice: false,
        session: 0,
    }
}

/// Every file name in the spool's areas, sorted (`area/name`).
fn files(spool_dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for area in ["data", "queue", "failed"] {
        for e in std::fs::read_dir(spool_dir.join(area)).unwrap() {
            out.push(format!(
                "{area}/{}",
                e.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    out.sort();
    out
}

/// Streams `size` bytes into a new message and commits it.
async fn message(spool: &Spool, size: usize) -> Result<MessageId, SpoolError> {
    let mut inc = spool.receive(envelope()).await?;
    let line = b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n";
    let mut left = size;
    while left > 0 {
        let n = left.min(line.len());
        inc.write(&line[..n]).await?;
        left -= n;
    }
    inc.commit(false).await.map(|q| q.id().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_the_message_whole_and_space_brings_mail_back() {
    let Some(fs) = Tmpfs::mount_or_skip("1m", "spool full-disk test") else {
        return;
    };
    let dir = fs.path().join("spool");
    let spool = Spool::open_with(&dir, true).unwrap();
    let kept = message(&spool, 20_000).await.unwrap();
    let before = files(&dir);

    // A large message streaming in: the disk runs out in the middle of the body.
    let filler = fs.fill("filler");
    assert!(filler > 0);
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    // Leave about 100 KiB: less than the message below.
    std::fs::write(
        fs.path().join("filler"),
        vec![0u8; filler.saturating_sub(100 * 1024) as usize],
    )
    .unwrap();
    let e = message(&spool, 400 * 1024).await.unwrap_err();
    assert!(e.is_full(), "{e}");
    assert_eq!(
        files(&dir),
        before,
        "nothing of the refused message is left"
    );

    // A small message (held in memory until commit) on a disk with no room at all: the
    // commit's own writes fail, and take nothing with them either.
    fs.fill("filler-2");
    let e = message(&spool, 5_000).await.unwrap_err();
    assert!(e.is_full(), "{e}");
    assert_eq!(files(&dir), before, "nothing of the refused commit is left");

    // What was accepted before is untouched.
    let q = spool.read(&kept, Area::Queue).await.unwrap();
    assert_eq!(std::fs::metadata(&q.data_path).unwrap().len(), 20_000);

    // Space comes back: the same spool takes mail again, without a restart.
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    std::fs::remove_file(fs.path().join("filler-2")).unwrap();
    let id = message(&spool, 400 * 1024).await.unwrap();
    assert_eq!(spool.list(Area::Queue).await.unwrap().len(), 2);
    assert_eq!(
        spool.read(&id, Area::Queue).await.unwrap().envelope.size,
        400 * 1024
    );
    drop(spool);
    drop(fs);
}
