//! The kernel's view: FUSE requests carried out on the shared [`Model`].
//!
//! Why a thin layer: every decision about durability is in `model.rs`; here we only translate
//! requests, answer with zero cache lifetimes (the kernel must ask us again after a cut), refuse
//! everything with EIO once the power is off, and give cut triggers a look at each operation
//! before and after it is carried out.
//!
//! Locks (flock, fcntl) are left to the kernel: we do not ask for FUSE lock requests, so the
//! kernel keeps them locally, as it does for a local disk, and they end with the process.

use crate::model::{Attr, FsError, Kind, Model, Owner};
use crate::{Op, Shared, When};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Nothing is cached by the kernel: after a cut every name and size is asked again.
const TTL: Duration = Duration::ZERO;
/// Capacity reported by statfs (the spool checks free space).
const CAPACITY: u64 = 64 << 30;
const BLOCK: u32 = 4096;

pub(crate) struct CutFs {
    pub(crate) shared: Arc<Shared>,
}

fn attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: BLOCK,
        flags: 0,
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
    }
}

fn errno(e: FsError) -> Errno {
    Errno::from_i32(e.errno())
}

/// Why a request was not carried out.
enum Refusal {
    PoweredOff,
    Fs(FsError),
}

impl From<FsError> for Refusal {
    fn from(e: FsError) -> Self {
        Refusal::Fs(e)
    }
}

impl Refusal {
    fn errno(self) -> Errno {
        match self {
            Refusal::PoweredOff => Errno::EIO,
            Refusal::Fs(e) => errno(e),
        }
    }
}

impl CutFs {
    /// Runs one operation on the model: refused while the power is off; cut triggers are
    /// checked before it (the operation then never happens) and after it.
    fn run<T>(
        &self,
        op: Op,
        target: impl FnOnce(&Model) -> String,
        f: impl FnOnce(&mut Model) -> Result<T, FsError>,
    ) -> Result<T, Refusal> {
        let mut st = self.shared.lock();
        if !st.powered {
            return Err(Refusal::PoweredOff);
        }
        let path = target(&st.model);
        if st.trigger_fires(op, &path, When::Before) {
            self.shared
                .power_off(&mut st, format!("before {op:?} of {path}"));
            return Err(Refusal::PoweredOff);
        }
        let out = f(&mut st.model)?;
        if st.trigger_fires(op, &path, When::After) {
            self.shared
                .power_off(&mut st, format!("after {op:?} of {path}"));
        }
        Ok(out)
    }

    /// A read-only look at the model (no triggers).
    fn look<T>(&self, f: impl FnOnce(&Model) -> Result<T, FsError>) -> Result<T, Refusal> {
        let st = self.shared.lock();
        if !st.powered {
            return Err(Refusal::PoweredOff);
        }
        Ok(f(&st.model)?)
    }
}

fn owner(req: &Request, mode: u32, umask: u32) -> Owner {
    Owner {
        mode: mode & !umask,
        uid: req.uid(),
        gid: req.gid(),
    }
}

impl fuser::Filesystem for CutFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.look(|m| m.attr(m.lookup(parent.0, name)?)) {
            Ok(a) => reply.entry(&TTL, &attr(&a), Generation(0)),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.look(|m| m.attr(ino.0)) {
            Ok(a) => reply.attr(&TTL, &attr(&a)),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let op = if size.is_some() {
            Op::Truncate
        } else {
            Op::SetAttr
        };
        let r = self.run(
            op,
            |m| m.path(ino.0),
            |m| {
                if let Some(size) = size {
                    m.truncate(ino.0, size)?;
                }
                if let Some(mode) = mode {
                    m.set_mode(ino.0, mode)?;
                }
                if uid.is_some() || gid.is_some() {
                    m.set_owner(ino.0, uid, gid)?;
                }
                match mtime {
                    Some(TimeOrNow::SpecificTime(t)) => m.set_mtime(ino.0, t)?,
                    Some(TimeOrNow::Now) => m.set_mtime(ino.0, SystemTime::now())?,
                    None => {}
                }
                m.attr(ino.0)
            },
        );
        match r {
            Ok(a) => reply.attr(&TTL, &attr(&a)),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let own = owner(req, mode, umask);
        let r = self.run(
            Op::Mkdir,
            |m| m.path_of(parent.0, name),
            |m| {
                let ino = m.mkdir(parent.0, name, own)?;
                m.attr(ino)
            },
        );
        match r {
            Ok(a) => reply.entry(&TTL, &attr(&a), Generation(0)),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.run(
            Op::Unlink,
            |m| m.path_of(parent.0, name),
            |m| m.unlink(parent.0, name),
        );
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.run(
            Op::Unlink,
            |m| m.path_of(parent.0, name),
            |m| m.rmdir(parent.0, name),
        );
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            reply.error(Errno::EINVAL);
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let r = self.run(
            Op::Rename,
            |m| m.path_of(newparent.0, newname),
            |m| m.rename(parent.0, name, newparent.0, newname, no_replace),
        );
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.look(|m| m.attr(ino.0)) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // Reads go through `run` so a trigger can cut while delivery reads a message.
        let r = self.run(
            Op::Read,
            |m| m.path(ino.0),
            |m| Ok(m.read(ino.0, offset, size as usize)?.to_vec()),
        );
        match r {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let append = flags.0 & libc::O_APPEND != 0;
        let r = self.run(
            Op::Write,
            |m| m.path(ino.0),
            |m| m.write(ino.0, offset, data, append),
        );
        match r {
            Ok(_) => reply.written(data.len() as u32),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.run(Op::Fsync, |m| m.path(ino.0), |m| m.fsync(ino.0));
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.look(|m| m.readdir(ino.0)) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.look(|m| m.readdir(ino.0)) {
            Ok(e) => e,
            Err(e) => {
                reply.error(e.errno());
                return;
            }
        };
        let dots = [
            (".".into(), ino.0, Kind::Dir),
            ("..".into(), ino.0, Kind::Dir),
        ];
        // Offsets are positions in this listing; a listing changed between two calls may skip
        // or repeat a name, which POSIX allows for entries changed during a readdir.
        for (i, (name, child, kind)) in dots
            .into_iter()
            .chain(entries)
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(INodeNo(child), i as u64 + 1, file_type(kind), &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.run(Op::FsyncDir, |m| m.path(ino.0), |m| m.fsync(ino.0));
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.look(|m| Ok((m.used_bytes(), m.inode_count()))) {
            Ok((used, inodes)) => {
                let blocks = CAPACITY / u64::from(BLOCK);
                let free = blocks.saturating_sub(used.div_ceil(u64::from(BLOCK)));
                let files = 1 << 24;
                reply.statfs(blocks, free, free, files, files - inodes, BLOCK, 255, BLOCK);
            }
            Err(e) => reply.error(e.errno()),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        match self.look(|m| m.attr(ino.0)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let own = owner(req, mode, umask);
        let exclusive = flags & libc::O_EXCL != 0;
        let truncate = flags & libc::O_TRUNC != 0;
        let r = self.run(
            Op::Create,
            |m| m.path_of(parent.0, name),
            |m| {
                let ino = m.create(parent.0, name, own, exclusive)?;
                if truncate {
                    m.truncate(ino, 0)?;
                }
                m.attr(ino)
            },
        );
        match r {
            Ok(a) => reply.created(
                &TTL,
                &attr(&a),
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e.errno()),
        }
    }
}
