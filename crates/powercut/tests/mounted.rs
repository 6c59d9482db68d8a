//! The filesystem mounted, driven through the kernel with the calls the spool makes: O_EXCL
//! creates, writes, O_APPEND, fdatasync, rename, unlink, readdir, a directory opened and
//! fsynced, flock, statfs. Then cuts, and what a remount shows.
//!
//! Needs /dev/fuse and root; skipped otherwise, except under SMTP2OAUTH_REQUIRE_CLIENTS (CI),
//! where a missing FUSE is a failure.

use smtp2oauth_powercut::{Op, PowerCutFs, Trigger, When};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

fn fuse_or_skip() -> bool {
    match smtp2oauth_powercut::can_mount() {
        Ok(()) => true,
        Err(why) if std::env::var_os("SMTP2OAUTH_REQUIRE_CLIENTS").is_some() => {
            panic!("cannot mount FUSE here ({why}), but SMTP2OAUTH_REQUIRE_CLIENTS is set")
        }
        Err(why) => {
            eprintln!("skipped: cannot mount FUSE here: {why}");
            false
        }
    }
}

fn sync_dir(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

fn read(p: &Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}

#[test]
fn what_the_spool_does_survives_exactly_as_far_as_it_was_synced() {
    if !fuse_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path();
    let fs = PowerCutFs::new();
    let mount = fs.mount(at).unwrap();

    std::fs::create_dir_all(at.join("spool/data")).unwrap();
    std::fs::create_dir(at.join("spool/queue")).unwrap();
    fs.checkpoint();
    let (data, queue) = (at.join("spool/data"), at.join("spool/queue"));

    // A message committed the spool's way: data file fdatasynced, envelope renamed into place,
    // both directories fsynced.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(data.join("m1"))
        .unwrap();
    f.write_all(b"message one\r\n").unwrap();
    f.sync_data().unwrap();
    let mut e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(queue.join("m1.tmp"))
        .unwrap();
    e.write_all(b"{\"id\":\"m1\"}\n").unwrap();
    std::fs::rename(queue.join("m1.tmp"), queue.join("m1")).unwrap();
    e.sync_data().unwrap();
    sync_dir(&data);
    sync_dir(&queue);
    // An event appended and synced, then one appended and not synced.
    let mut a = OpenOptions::new()
        .append(true)
        .open(queue.join("m1"))
        .unwrap();
    a.write_all(b"{\"event\":1}\n").unwrap();
    a.sync_data().unwrap();
    a.write_all(b"{\"event\":2}\n").unwrap();

    // A second message whose directories were never synced, and an O_EXCL refusal.
    std::fs::write(data.join("m2"), b"message two").unwrap();
    File::open(data.join("m2")).unwrap().sync_all().unwrap();
    let again = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(data.join("m2"));
    assert_eq!(again.unwrap_err().kind(), ErrorKind::AlreadyExists);

    // The lock the relay takes, and the free space it checks.
    let lock = File::create(at.join("lock")).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let other = File::open(at.join("lock")).unwrap();
    // SAFETY: as above.
    assert_ne!(
        unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0,
        "a second flock is refused"
    );
    let c = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs into a struct we own, with a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert!(st.f_bavail * st.f_frsize > 1 << 30);

    let mut names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["m1", "m2"]);

    assert!(fs.cut("test"));
    // Powered off: the kernel gets EIO for everything until the remount.
    assert_eq!(
        std::fs::read(queue.join("m1")).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    drop((f, e, a, lock, other));
    mount.unmount().unwrap();

    let mount = fs.mount(at).unwrap();
    assert_eq!(read(&data.join("m1")).unwrap(), b"message one\r\n");
    assert_eq!(
        read(&queue.join("m1")).unwrap(),
        b"{\"id\":\"m1\"}\n{\"event\":1}\n"
    );
    assert_eq!(read(&queue.join("m1.tmp")), None);
    assert_eq!(read(&data.join("m2")), None, "its name was never synced");
    assert_eq!(read(&at.join("lock")), None);

    // Removal: unlinks come back until the directory is synced.
    std::fs::remove_file(queue.join("m1")).unwrap();
    std::fs::remove_file(data.join("m1")).unwrap();
    sync_dir(&data);
    fs.cut("test");
    mount.unmount().unwrap();
    let mount = fs.mount(at).unwrap();
    assert!(read(&queue.join("m1")).is_some());
    assert_eq!(read(&data.join("m1")), None);
    mount.unmount().unwrap();
}

#[test]
fn a_trigger_cuts_at_the_exact_operation_and_calls_the_hook() {
    if !fuse_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path();
    let fs = PowerCutFs::new();
    let calls = Arc::new(AtomicU64::new(0));
    let seen = calls.clone();
    fs.on_cut(Some(Arc::new(move |e| {
        assert!(e.reason.contains("Fsync of /q/b"), "{}", e.reason);
        seen.fetch_add(1, Ordering::SeqCst);
    })));
    let mount = fs.mount(at).unwrap();
    std::fs::create_dir(at.join("q")).unwrap();
    fs.checkpoint();
    fs.arm(Trigger {
        op: Op::Fsync,
        path_contains: "/q/".into(),
        nth: 2,
        when: When::Before,
    });
    let mut a = File::create(at.join("q/a")).unwrap();
    a.write_all(b"a").unwrap();
    a.sync_data().unwrap();
    sync_dir(&at.join("q"));
    let mut b = File::create(at.join("q/b")).unwrap();
    b.write_all(b"b").unwrap();
    assert_eq!(b.sync_data().unwrap_err().raw_os_error(), Some(libc::EIO));
    drop((a, b));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(!fs.is_powered());
    mount.unmount().unwrap();
    let mount = fs.mount(at).unwrap();
    let mut a = String::new();
    File::open(at.join("q/a"))
        .unwrap()
        .read_to_string(&mut a)
        .unwrap();
    assert_eq!(a, "a");
    assert!(!at.join("q/b").exists());
    mount.unmount().unwrap();
}
