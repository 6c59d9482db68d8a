use super::*;

fn envelope() -> Envelope {
    Envelope {
        id: MessageId::default(),
        received_at_ms: now_ms(),
        account: "scanner".into(),
        device: "mfp".into(),
        listener: "smtp-2525".into(),
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

fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[tokio::test]
async fn commit_makes_message_visible_with_exact_bytes() {
    let d = tmpdir();
    let spool = Spool::open(d.path()).unwrap();
    let mut inc = spool.receive(envelope()).await.unwrap();
    inc.write(b"Subject: hi\r\n\r\n").await.unwrap();
    inc.write(b"body\r\n").await.unwrap();
    // not visible before commit
    assert!(spool.list(Area::Queue).await.unwrap().is_empty());
    let q = inc.commit(true).await.unwrap();
    assert_eq!(spool.list(Area::Queue).await.unwrap(), vec![q.id().clone()]);
    assert_eq!(
        std::fs::read(&q.data_path).unwrap(),
        b"Subject: hi\r\n\r\nbody\r\n"
    );
    let back = spool.read(q.id(), Area::Queue).await.unwrap();
    assert_eq!(back.envelope.size, 21);
    assert!(back.envelope.eight_bit);
    assert_eq!(back.envelope, q.envelope);
}

#[tokio::test]
async fn aborted_and_dropped_messages_leave_nothing() {
    let d = tmpdir();
    let spool = Spool::open(d.path()).unwrap();
    let mut inc = spool.receive(envelope()).await.unwrap();
    inc.write(b"x").await.unwrap();
    inc.abort().await;
    let inc2 = spool.receive(envelope()).await.unwrap();
    drop(inc2);
    assert_eq!(std::fs::read_dir(d.path().join("data")).unwrap().count(), 0);
}

#[tokio::test]
async fn recovery_removes_only_unacknowledged_files() {
    let d = tmpdir();
    let spool = Spool::open(d.path()).unwrap();
    let mut inc = spool.receive(envelope()).await.unwrap();
    inc.write(b"kept").await.unwrap();
    let kept = inc.commit(false).await.unwrap();
    // Simulate a crash mid-receive and mid-commit: a .part file, a data file without envelope,
    // and a readiness probe's file.
    std::fs::write(d.path().join("data/00000000000aaaaa.part"), b"partial").unwrap();
    std::fs::write(d.path().join("data/00000000000bbbbb"), b"no envelope").unwrap();
    std::fs::write(d.path().join("data/.probe-1"), b"ok").unwrap();
    let spool = Spool::open(d.path()).unwrap();
    assert_eq!(spool.clean_orphans().await.unwrap(), 3);
    assert_eq!(
        spool.list(Area::Queue).await.unwrap(),
        vec![kept.id().clone()]
    );
    assert!(kept.data_path.exists());
}

#[tokio::test]
async fn events_append_and_torn_lines_are_ignored() {
    let d = tmpdir();
    let spool = Spool::open(d.path()).unwrap();
    let q = spool
        .receive(envelope())
        .await
        .unwrap()
        .commit(false)
        .await
        .unwrap();
    let ev = Event::Attempt {
        at_ms: 1,
        attempt: 1,
        outcome: AttemptOutcome::Deferred,
        reply: "451 4.7.500 busy".into(),
        stage: None,
        delivered: vec![],
        failed: vec![],
        next_attempt_ms: Some(5),
    };
    spool.append_event(q.id(), Area::Queue, &ev).await.unwrap();
    // a torn append
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(d.path().join("queue").join(q.id().as_str()))
        .unwrap();
    f.write_all(b"{\"event\":\"attempt\",\"attempt\": 2, \"res")
        .unwrap();
    let back = spool.read(q.id(), Area::Queue).await.unwrap();
    assert_eq!(back.events, vec![ev]);
    assert_eq!(back.progress.attempts, 1);
    assert_eq!(back.progress.next_attempt_ms, Some(5));
}

#[tokio::test]
async fn move_and_remove() {
    let d = tmpdir();
    let spool = Spool::open(d.path()).unwrap();
    let q = spool
        .receive(envelope())
        .await
        .unwrap()
        .commit(false)
        .await
        .unwrap();
    spool
        .move_to(q.id(), Area::Queue, Area::Failed)
        .await
        .unwrap();
    assert!(spool.list(Area::Queue).await.unwrap().is_empty());
    assert_eq!(spool.list(Area::Failed).await.unwrap().len(), 1);
    // the data file still belongs to a message: not an orphan
    assert_eq!(spool.clean_orphans().await.unwrap(), 0);
    spool.remove(q.id(), Area::Failed).await.unwrap();
    assert!(!q.data_path.exists());
    assert!(matches!(
        spool.remove(q.id(), Area::Failed).await,
        Err(SpoolError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_directory_fsyncs_and_all_land() {
    let d = tmpdir();
    let spool = Spool::open(d.path()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let mut inc = spool.receive(envelope()).await.unwrap();
            inc.write(format!("message {i}\r\n").as_bytes())
                .await
                .unwrap();
            inc.commit(false).await.unwrap()
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().id().clone());
    }
    assert_eq!(ids.len(), 50);
    assert_eq!(spool.list(Area::Queue).await.unwrap().len(), 50);
    // Every commit's renames were covered by a directory fsync (none skipped), and never by
    // more than one each: concurrent commits share them (fsync.rs shows the sharing itself).
    for (dir, sync) in [
        ("data", &spool.inner.data_sync),
        ("queue", &spool.inner.queue_sync),
    ] {
        let n = sync.fsyncs();
        assert!((1..=50).contains(&n), "{dir}/: {n} fsyncs for 50 commits");
    }
}

#[test]
fn a_full_disk_or_quota_is_classified_as_full() {
    use rustix::io::Errno;
    for errno in [Errno::NOSPC, Errno::DQUOT] {
        let e: SpoolError = io::Error::from_raw_os_error(errno.raw_os_error()).into();
        assert!(e.is_full(), "{errno:?}");
    }
    let e: SpoolError = io::Error::from_raw_os_error(Errno::ACCESS.raw_os_error()).into();
    assert!(!e.is_full());
}

#[test]
fn checksums_are_crc32c() {
    // RFC 3720 (iSCSI) appendix B.4 and the classic check value; any split of the input gives
    // the same value (the checksum is computed as the message streams in).
    assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8A91_36AA);
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    let whole = crc32c::crc32c(&data);
    for split in [1, 7, 8, 9, 4095, 9999] {
        let c = crc32c::crc32c_append(crc32c::crc32c_append(0, &data[..split]), &data[split..]);
        assert_eq!(c, whole, "split at {split}");
    }
}

#[tokio::test]
async fn free_space_and_writability_are_reported() {
    let d = tmpdir();
    let spool = Spool::open(d.path()).unwrap();
    assert!(spool.free_space().await.is_some_and(|n| n > 0));
    spool.check_writable().await.unwrap();
    assert_eq!(std::fs::read_dir(d.path().join("data")).unwrap().count(), 0);
    // A file where the data directory should be: nothing can be written.
    std::fs::remove_dir(d.path().join("data")).unwrap();
    std::fs::write(d.path().join("data"), b"").unwrap();
    assert!(spool.check_writable().await.is_err());
}

#[tokio::test]
async fn an_envelope_whose_data_never_became_durable_is_removed_at_recovery() {
    let d = tmpdir();
    let spool = Spool::open(d.path()).unwrap();
    let q = spool
        .receive(envelope())
        .await
        .unwrap()
        .commit(false)
        .await
        .unwrap();
    let kept = spool
        .receive(envelope())
        .await
        .unwrap()
        .commit(false)
        .await
        .unwrap();
    // A power cut after the envelope's rename reached the disk but before data/ was synced.
    std::fs::remove_file(&q.data_path).unwrap();
    let spool = Spool::open(d.path()).unwrap();
    assert_eq!(spool.clean_orphans().await.unwrap(), 1);
    assert_eq!(
        spool.list(Area::Queue).await.unwrap(),
        vec![kept.id().clone()]
    );
}

#[tokio::test]
async fn recovery_keeps_only_envelopes_committed_whole() {
    let d = tmpdir();
    let spool = Spool::open(d.path()).unwrap();
    let commit = async |body: &[u8]| spool.write_message(envelope(), body).await.unwrap();
    let kept = commit(b"kept\r\n").await;
    let torn = commit(b"torn envelope\r\n").await;
    let unterminated = commit(b"envelope without its newline\r\n").await;
    let short = commit(b"data cut short by a power failure\r\n").await;
    let empty = commit(b"data never flushed\r\n").await;
    let with_events = commit(b"kept, with a torn event line\r\n").await;
    let queue = d.path().join("queue");
    let env_of = |q: &Queued| std::fs::read(queue.join(q.id().as_str())).unwrap();

    // A power cut inside commit: the envelope's name reached the disk, its bytes did not all.
    let e = env_of(&torn);
    std::fs::write(queue.join(torn.id().as_str()), &e[..e.len() / 2]).unwrap();
    let e = env_of(&unterminated);
    std::fs::write(queue.join(unterminated.id().as_str()), &e[..e.len() - 1]).unwrap();
    // ... or the data file's name reached the disk with fewer bytes than the envelope says.
    std::fs::write(&short.data_path, b"data cut short").unwrap();
    std::fs::write(&empty.data_path, b"").unwrap();
    // An envelope still being written under its temporary name.
    std::fs::write(queue.join("00000000000ccccc.tmp"), b"{\"id\":").unwrap();
    // A torn event line after acceptance is not a torn commit.
    let mut e = env_of(&with_events);
    e.extend_from_slice(b"{\"event\":\"attempt\",\"att");
    std::fs::write(queue.join(with_events.id().as_str()), e).unwrap();

    let spool = Spool::open(d.path()).unwrap();
    // 4 envelopes + their 4 data files + the .tmp
    assert_eq!(spool.clean_orphans().await.unwrap(), 9);
    let mut expect = vec![kept.id().clone(), with_events.id().clone()];
    expect.sort();
    assert_eq!(spool.list(Area::Queue).await.unwrap(), expect);
    assert!(kept.data_path.exists() && with_events.data_path.exists());
    assert!(!short.data_path.exists() && !torn.data_path.exists());
    assert_eq!(
        spool
            .read(with_events.id(), Area::Queue)
            .await
            .unwrap()
            .envelope
            .size,
        "kept, with a torn event line\r\n".len() as u64
    );
}

#[tokio::test]
async fn a_small_message_is_written_at_commit_and_a_large_one_streams() {
    let d = tmpdir();
    let spool = Spool::open(d.path()).unwrap();
    let mut small = spool.receive(envelope()).await.unwrap();
    small.write(b"Subject: scan\r\n\r\n").await.unwrap();
    // Nothing on disk yet: one write and one flush at commit.
    assert!(!spool.data_path(small.id()).exists());
    let small = small.commit(false).await.unwrap();
    assert_eq!(
        std::fs::read(&small.data_path).unwrap(),
        b"Subject: scan\r\n\r\n"
    );

    // A large message never sits whole in memory: its file grows while it arrives.
    let mut large = spool.receive(envelope()).await.unwrap();
    let chunk = vec![b'x'; 8 * 1024];
    let mut expected = Vec::new();
    for _ in 0..40 {
        large.write(&chunk).await.unwrap();
        expected.extend_from_slice(&chunk);
    }
    let on_disk = std::fs::metadata(spool.data_path(large.id()))
        .unwrap()
        .len();
    assert!(on_disk >= 256 * 1024, "only {on_disk} bytes written so far");
    assert!(large.buf.capacity() <= 2 * BUFFER);
    let large = large.commit(false).await.unwrap();
    assert_eq!(std::fs::read(&large.data_path).unwrap(), expected);
    assert_eq!(large.envelope.size, expected.len() as u64);
    // No temporary envelope is left behind.
    let names: Vec<_> = std::fs::read_dir(d.path().join("queue"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    assert_eq!(names.len(), 2);
}

#[tokio::test]
async fn a_failed_commit_leaves_nothing_behind() {
    let d = tmpdir();
    let spool = Spool::open(d.path()).unwrap();
    let mut inc = spool.receive(envelope()).await.unwrap();
    inc.write(b"body\r\n").await.unwrap();
    let id = inc.id().clone();
    // Something in the way of the envelope's temporary name makes the commit fail.
    std::fs::create_dir(d.path().join("queue").join(format!("{id}.tmp"))).unwrap();
    assert!(inc.commit(false).await.is_err());
    assert!(spool.list(Area::Queue).await.unwrap().is_empty());
    assert!(!spool.data_path(&id).exists());
}

#[tokio::test]
async fn recovery_checks_the_checksum_of_never_attempted_messages_and_keeps_what_it_cannot_judge() {
    let d = tmpdir();
    let spool = Spool::open(d.path()).unwrap();
    let commit = async |body: &[u8]| spool.write_message(envelope(), body).await.unwrap();
    let zeroed = commit(b"length on disk, bytes not\r\n").await;
    let attempted = commit(b"handed to delivery, so committed\r\n").await;
    let unparsable = commit(b"an envelope line that does not parse\r\n").await;
    let longer = commit(b"a data file longer than recorded\r\n").await;
    assert_eq!(
        zeroed.envelope.crc32c,
        crc32c::crc32c(b"length on disk, bytes not\r\n")
    );
    let queue = d.path().join("queue");

    // The length reached the disk, the bytes did not (ext4 data=writeback after a power cut).
    let n = std::fs::metadata(&zeroed.data_path).unwrap().len() as usize;
    std::fs::write(&zeroed.data_path, vec![0u8; n]).unwrap();
    // Same damage to a message with an event line: it was committed (delivery only ever sees
    // committed messages), so the data is what the device sent and it is not second-guessed.
    spool
        .append_event(
            attempted.id(),
            Area::Queue,
            &Event::RetryRequested { at_ms: 1 },
        )
        .await
        .unwrap();
    let n = std::fs::metadata(&attempted.data_path).unwrap().len() as usize;
    std::fs::write(&attempted.data_path, vec![b'x'; n]).unwrap();
    // Damage no crash produces: left for the admin, never deleted.
    std::fs::write(
        queue.join(unparsable.id().as_str()),
        b"{\"not\": \"an envelope\"}\n",
    )
    .unwrap();
    std::fs::write(
        &longer.data_path,
        b"a data file longer than recorded\r\nand more\r\n",
    )
    .unwrap();

    let spool = Spool::open(d.path()).unwrap();
    assert_eq!(
        spool.clean_orphans().await.unwrap(),
        2,
        "the zeroed message's envelope and data"
    );
    let mut expect = vec![
        attempted.id().clone(),
        unparsable.id().clone(),
        longer.id().clone(),
    ];
    expect.sort();
    assert_eq!(spool.list(Area::Queue).await.unwrap(), expect);
    assert!(!zeroed.data_path.exists());
    assert!(unparsable.data_path.exists() && longer.data_path.exists());
}
