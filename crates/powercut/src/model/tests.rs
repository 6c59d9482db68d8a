//! The durability rules, one at a time, without a kernel.

use super::*;

const OWNER: Owner = Owner {
    mode: 0o644,
    uid: 0,
    gid: 0,
};

fn n(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// A model with `spool/` and `spool/data/`, `spool/queue/` made durable (as an install would).
fn spool() -> (Model, Ino, Ino) {
    let mut m = Model::new();
    let spool = m.mkdir(ROOT, n("spool"), OWNER).unwrap();
    let data = m.mkdir(spool, n("data"), OWNER).unwrap();
    let queue = m.mkdir(spool, n("queue"), OWNER).unwrap();
    m.checkpoint();
    (m, data, queue)
}

fn content(m: &Model, path: &str) -> Option<Vec<u8>> {
    let ino = m.resolve(path).ok()?;
    Some(m.read(ino, 0, usize::MAX).unwrap().to_vec())
}

fn file(m: &mut Model, dir: Ino, name: &str, bytes: &[u8]) -> Ino {
    let ino = m.create(dir, n(name), OWNER, true).unwrap();
    m.write(ino, 0, bytes, false).unwrap();
    ino
}

#[test]
fn nothing_unsynced_survives_a_cut() {
    let (mut m, data, _) = spool();
    file(&mut m, data, "a", b"hello");
    assert_eq!(content(&m, "spool/data/a").as_deref(), Some(&b"hello"[..]));
    m.cut();
    assert_eq!(content(&m, "spool/data/a"), None);
    assert_eq!(m.stats.cuts, 1);
}

#[test]
fn a_synced_file_without_a_synced_name_is_lost() {
    let (mut m, data, _) = spool();
    let a = file(&mut m, data, "a", b"hello");
    m.fsync(a).unwrap();
    m.cut();
    assert_eq!(content(&m, "spool/data/a"), None);
}

#[test]
fn a_synced_name_without_synced_bytes_comes_back_empty() {
    let (mut m, data, _) = spool();
    file(&mut m, data, "a", b"hello");
    m.fsync(data).unwrap();
    m.cut();
    assert_eq!(content(&m, "spool/data/a").as_deref(), Some(&b""[..]));
}

#[test]
fn file_and_directory_synced_survive_and_later_writes_do_not() {
    let (mut m, data, _) = spool();
    let a = file(&mut m, data, "a", b"hello");
    m.fsync(a).unwrap();
    m.fsync(data).unwrap();
    m.write(a, 5, b" world", false).unwrap();
    m.truncate(a, 2).unwrap();
    m.cut();
    assert_eq!(content(&m, "spool/data/a").as_deref(), Some(&b"hello"[..]));
    // The survivor is an ordinary file again: it can be written and synced.
    let a = m.resolve("spool/data/a").unwrap();
    m.write(a, 0, b"J", false).unwrap();
    m.fsync(a).unwrap();
    m.cut();
    assert_eq!(content(&m, "spool/data/a").as_deref(), Some(&b"Jello"[..]));
}

#[test]
fn appends_go_to_the_end_and_vanish_unless_synced() {
    let (mut m, data, _) = spool();
    let a = file(&mut m, data, "a", b"line1\n");
    m.fsync(a).unwrap();
    m.fsync(data).unwrap();
    m.write(a, 0, b"line2\n", true).unwrap();
    assert_eq!(
        content(&m, "spool/data/a").as_deref(),
        Some(&b"line1\nline2\n"[..])
    );
    m.cut();
    assert_eq!(
        content(&m, "spool/data/a").as_deref(),
        Some(&b"line1\n"[..])
    );
}

#[test]
fn rename_is_durable_only_when_its_directory_is_synced() {
    let (mut m, _, queue) = spool();
    let t = file(&mut m, queue, "x.tmp", b"env");
    m.fsync(t).unwrap();
    m.fsync(queue).unwrap();
    m.rename(queue, n("x.tmp"), queue, n("x"), false).unwrap();
    m.cut();
    assert_eq!(content(&m, "spool/queue/x"), None);
    assert_eq!(
        content(&m, "spool/queue/x.tmp").as_deref(),
        Some(&b"env"[..])
    );

    let t = m.resolve("spool/queue/x.tmp").unwrap();
    m.rename(queue, n("x.tmp"), queue, n("x"), false).unwrap();
    m.fsync(queue).unwrap();
    m.cut();
    assert_eq!(content(&m, "spool/queue/x.tmp"), None);
    assert_eq!(content(&m, "spool/queue/x").as_deref(), Some(&b"env"[..]));
    assert_eq!(m.resolve("spool/queue/x").unwrap(), t, "same inode");
}

#[test]
fn a_renamed_file_keeps_only_its_synced_bytes() {
    // The spool's envelope: written, renamed, the directory synced, the file never synced.
    let (mut m, _, queue) = spool();
    file(&mut m, queue, "x.tmp", b"{\"id\":1}\n");
    m.rename(queue, n("x.tmp"), queue, n("x"), false).unwrap();
    m.fsync(queue).unwrap();
    m.cut();
    assert_eq!(content(&m, "spool/queue/x").as_deref(), Some(&b""[..]));
}

#[test]
fn an_unlink_comes_back_until_its_directory_is_synced() {
    let (mut m, data, _) = spool();
    let a = file(&mut m, data, "a", b"kept");
    m.fsync(a).unwrap();
    m.fsync(data).unwrap();
    m.unlink(data, n("a")).unwrap();
    assert_eq!(content(&m, "spool/data/a"), None);
    m.cut();
    assert_eq!(content(&m, "spool/data/a").as_deref(), Some(&b"kept"[..]));
    m.unlink(data, n("a")).unwrap();
    m.fsync(data).unwrap();
    m.cut();
    assert_eq!(content(&m, "spool/data/a"), None);
}

#[test]
fn an_unlinked_file_comes_back_with_its_durable_bytes_not_its_last_ones() {
    let (mut m, data, _) = spool();
    let a = file(&mut m, data, "a", b"old");
    m.fsync(a).unwrap();
    m.fsync(data).unwrap();
    m.write(a, 0, b"new", false).unwrap();
    m.unlink(data, n("a")).unwrap();
    m.cut();
    assert_eq!(content(&m, "spool/data/a").as_deref(), Some(&b"old"[..]));
}

#[test]
fn a_rename_between_directories_needs_both_synced() {
    let (mut m, _, queue) = spool();
    let spool = m.resolve("spool").unwrap();
    let failed = m.mkdir(spool, n("failed"), OWNER).unwrap();
    m.checkpoint();
    let x = file(&mut m, queue, "x", b"env");
    m.fsync(x).unwrap();
    m.fsync(queue).unwrap();

    // Only the destination synced: both names survive, naming one inode.
    m.rename(queue, n("x"), failed, n("x"), false).unwrap();
    m.fsync(failed).unwrap();
    let mut only_dest = m.clone();
    only_dest.cut();
    assert_eq!(
        only_dest.resolve("spool/queue/x"),
        only_dest.resolve("spool/failed/x")
    );
    assert_eq!(only_dest.attr(x).unwrap().nlink, 2);

    // Moved on to queue/y with only the source (failed/) synced: the new name is lost, and
    // the file survives only under the oldest name still durable, queue/x (queue/ was never
    // synced after x left it).
    let mut m2 = m.clone();
    m2.rename(failed, n("x"), queue, n("y"), false).unwrap();
    m2.fsync(failed).unwrap();
    m2.cut();
    assert_eq!(content(&m2, "spool/failed/x"), None);
    assert_eq!(content(&m2, "spool/queue/y"), None);
    assert_eq!(content(&m2, "spool/queue/x").as_deref(), Some(&b"env"[..]));

    // Both synced: moved.
    m.fsync(queue).unwrap();
    m.cut();
    assert_eq!(content(&m, "spool/queue/x"), None);
    assert_eq!(content(&m, "spool/failed/x").as_deref(), Some(&b"env"[..]));
    assert_eq!(m.attr(x).unwrap().nlink, 1);
}

#[test]
fn a_new_directory_is_lost_with_its_contents_until_its_parent_is_synced() {
    let mut m = Model::new();
    let store = m.mkdir(ROOT, n("store"), OWNER).unwrap();
    let q = m.mkdir(store, n("queue"), OWNER).unwrap();
    let x = file(&mut m, q, "x", b"mail");
    m.fsync(x).unwrap();
    m.fsync(q).unwrap();
    m.fsync(store).unwrap();
    let mut unsynced_root = m.clone();
    unsynced_root.cut();
    assert_eq!(unsynced_root.resolve("store"), Err(FsError::NotFound));
    assert_eq!(unsynced_root.inode_count(), 1, "only the root is left");

    m.fsync(ROOT).unwrap();
    m.cut();
    assert_eq!(content(&m, "store/queue/x").as_deref(), Some(&b"mail"[..]));
}

#[test]
fn a_synced_directory_whose_entries_were_not_synced_comes_back_empty() {
    let mut m = Model::new();
    let d = m.mkdir(ROOT, n("d"), OWNER).unwrap();
    let x = file(&mut m, d, "x", b"1");
    m.fsync(x).unwrap();
    m.fsync(ROOT).unwrap();
    m.cut();
    assert_eq!(m.readdir(m.resolve("d").unwrap()).unwrap(), vec![]);
}

#[test]
fn replacing_rename_brings_the_old_file_back_until_synced() {
    let (mut m, _, queue) = spool();
    let old = file(&mut m, queue, "x", b"old");
    m.fsync(old).unwrap();
    m.fsync(queue).unwrap();
    let new = file(&mut m, queue, "x.tmp", b"new");
    m.fsync(new).unwrap();
    m.rename(queue, n("x.tmp"), queue, n("x"), false).unwrap();
    assert_eq!(content(&m, "spool/queue/x").as_deref(), Some(&b"new"[..]));
    assert_eq!(m.attr(old).unwrap().nlink, 0);
    m.cut();
    assert_eq!(content(&m, "spool/queue/x").as_deref(), Some(&b"old"[..]));
    assert_eq!(content(&m, "spool/queue/x.tmp"), None);
}

#[test]
fn posix_errors() {
    let (mut m, data, queue) = spool();
    file(&mut m, data, "a", b"");
    assert_eq!(
        m.create(data, n("a"), OWNER, true).unwrap_err(),
        FsError::Exists
    );
    assert!(
        m.create(data, n("a"), OWNER, false).is_ok(),
        "O_CREAT alone opens"
    );
    assert_eq!(m.mkdir(data, n("a"), OWNER).unwrap_err(), FsError::Exists);
    assert_eq!(m.unlink(ROOT, n("spool")).unwrap_err(), FsError::IsDir);
    assert_eq!(m.unlink(data, n("zz")).unwrap_err(), FsError::NotFound);
    assert_eq!(m.rmdir(ROOT, n("spool")).unwrap_err(), FsError::NotEmpty);
    let a = m.resolve("spool/data/a").unwrap();
    assert_eq!(
        m.create(a, n("b"), OWNER, false).unwrap_err(),
        FsError::NotDir
    );
    assert_eq!(
        m.rename(data, n("a"), queue, n("a"), false),
        Ok(()),
        "files move between directories"
    );
    file(&mut m, queue, "b", b"");
    assert_eq!(
        m.rename(queue, n("a"), queue, n("b"), true).unwrap_err(),
        FsError::Exists,
        "RENAME_NOREPLACE"
    );
    let spool = m.resolve("spool").unwrap();
    assert_eq!(
        m.rename(ROOT, n("spool"), data, n("s"), false).unwrap_err(),
        FsError::Invalid,
        "a directory cannot move under itself"
    );
    assert_eq!(
        m.rename(queue, n("a"), ROOT, n("spool"), false)
            .unwrap_err(),
        FsError::IsDir
    );
    assert_eq!(
        m.create(spool, n(".."), OWNER, false).unwrap_err(),
        FsError::Invalid
    );
    assert_eq!(m.read(spool, 0, 1).unwrap_err(), FsError::IsDir);
}

#[test]
fn reads_sizes_and_holes() {
    let (mut m, data, _) = spool();
    let a = file(&mut m, data, "a", b"abc");
    m.write(a, 5, b"z", false).unwrap();
    assert_eq!(m.read(a, 0, 100).unwrap(), b"abc\0\0z");
    assert_eq!(m.read(a, 4, 1).unwrap(), b"\0");
    assert_eq!(m.read(a, 100, 1).unwrap(), b"");
    assert_eq!(m.attr(a).unwrap().size, 6);
    m.truncate(a, 1).unwrap();
    assert_eq!(m.read(a, 0, 100).unwrap(), b"a");
    assert_eq!(m.path(a), "/spool/data/a");
}

#[test]
fn checkpoint_makes_everything_durable() {
    let mut m = Model::new();
    let d = m.mkdir(ROOT, n("d"), OWNER).unwrap();
    file(&mut m, d, "x", b"1");
    m.checkpoint();
    m.cut();
    assert_eq!(content(&m, "d/x").as_deref(), Some(&b"1"[..]));
}
