use super::*;

fn envelope() -> Envelope {
    Envelope {
        id: String::new(),
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
    assert!(spool.list(Area::Queue).unwrap().is_empty());
    let q = inc.commit(true).await.unwrap();
    assert_eq!(spool.list(Area::Queue).unwrap(), vec![q.id().to_string()]);
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
    // and an envelope left in incoming/.
    std::fs::write(d.path().join("data/00000000000aaaaa.part"), b"partial").unwrap();
    std::fs::write(d.path().join("data/00000000000bbbbb"), b"no envelope").unwrap();
    std::fs::write(d.path().join("incoming/00000000000bbbbb"), b"{}").unwrap();
    let spool = Spool::open(d.path()).unwrap();
    assert_eq!(spool.clean_orphans().unwrap(), 3);
    assert_eq!(
        spool.list(Area::Queue).unwrap(),
        vec![kept.id().to_string()]
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
        outcome: "deferred".into(),
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
        .open(d.path().join("queue").join(q.id()))
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
    assert!(spool.list(Area::Queue).unwrap().is_empty());
    assert_eq!(spool.list(Area::Failed).unwrap().len(), 1);
    // the data file still belongs to a message: not an orphan
    assert_eq!(spool.clean_orphans().unwrap(), 0);
    spool.remove(q.id(), Area::Failed).await.unwrap();
    assert!(!q.data_path.exists());
    assert!(matches!(
        spool.remove(q.id(), Area::Failed).await,
        Err(SpoolError::NotFound(_))
    ));
    assert!(matches!(
        spool.read("../../etc/passwd", Area::Queue).await,
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
        ids.insert(t.await.unwrap().id().to_string());
    }
    assert_eq!(ids.len(), 50);
    assert_eq!(spool.list(Area::Queue).unwrap().len(), 50);
}

#[test]
fn enospc_is_classified_as_full() {
    let e: SpoolError = io::Error::from_raw_os_error(libc::ENOSPC).into();
    assert!(e.is_full());
    let e: SpoolError = io::Error::from_raw_os_error(libc::EACCES).into();
    assert!(!e.is_full());
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
    assert_eq!(spool.clean_orphans().unwrap(), 1);
    assert_eq!(
        spool.list(Area::Queue).unwrap(),
        vec![kept.id().to_string()]
    );
}
