//! The filesystem as data: what a program sees now, and what a disk would give back after a
//! power cut.
//!
//! Why a pure model: the durability rules are the whole point of the rig, so they live in one
//! place with no kernel in the way, and are unit-tested op by op. The FUSE layer (`fs.rs`) only
//! translates requests into calls on a [`Model`].
//!
//! # The durability rules (strict POSIX)
//! - A file's bytes and length are durable as of its last `fsync`/`fdatasync`. Later writes and
//!   truncations are lost in a cut.
//! - A directory's entries (names created, renamed in or out, unlinked) are durable as of its
//!   last `fsync`. An entry is a (name → inode) link, separate from the inode it names: a file
//!   can be durable with no durable name (lost), or have a durable name and no durable bytes
//!   (comes back empty).
//! - A rename changes two entries: the new name is durable once the destination directory is
//!   synced, the removal of the old one once the source directory is. Syncing only one of them
//!   leaves both names, or neither, after a cut.
//! - An unlink is durable once its directory is synced; until then a cut brings the file back
//!   with its durable bytes.
//! - A directory made by `mkdir` is itself a name in its parent: until the parent is synced, a
//!   cut takes it away with everything under it, whatever was synced inside it.
//! - Nothing else counts: no ordering between operations, no "rename is atomic on ext4".
//!
//! Of the outcomes this model allows after a cut, [`Model::cut`] takes the harshest one:
//! everything not durable is gone (never a random part of it). Permission bits, owners and
//! times are not crash state: they survive as they are.
//!
//! Inodes are never freed between cuts (an unlinked file may still have a durable name), so
//! memory grows with what is written between two cuts and is given back at each cut.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

/// An inode number. The root directory is [`ROOT`].
pub type Ino = u64;
pub const ROOT: Ino = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// Why an operation failed; each maps to the errno a real filesystem returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid argument")]
    Invalid,
}

impl FsError {
    pub fn errno(self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Invalid => libc::EINVAL,
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;

/// What `stat` shows of an inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    /// Permission bits (no file type bits).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// Owner and permission bits of a new inode.
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, Debug)]
enum Body {
    File {
        data: Vec<u8>,
        durable: Vec<u8>,
    },
    Dir {
        entries: BTreeMap<OsString, Ino>,
        durable: BTreeMap<OsString, Ino>,
        /// Names changed since the last sync of this directory.
        dirty: BTreeSet<OsString>,
        /// The directory holding it now (for rename loop checks).
        parent: Ino,
    },
}

#[derive(Clone, Debug)]
struct Node {
    body: Body,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Current names pointing here.
    links: u32,
    /// The path it was last given (for cut triggers and messages; not authoritative).
    path: String,
}

impl Node {
    fn kind(&self) -> Kind {
        match self.body {
            Body::File { .. } => Kind::File,
            Body::Dir { .. } => Kind::Dir,
        }
    }
}

/// Counts of what happened, for reports and for tests that must prove a path was taken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub writes: u64,
    pub file_syncs: u64,
    pub dir_syncs: u64,
    pub renames: u64,
    pub unlinks: u64,
    pub cuts: u64,
}

/// The whole filesystem: current state and durable state of every inode.
#[derive(Clone, Debug)]
pub struct Model {
    nodes: HashMap<Ino, Node>,
    next: Ino,
    pub stats: Stats,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

impl Model {
    /// An empty filesystem: a root directory (mode 0755, root's), durable by definition.
    pub fn new() -> Model {
        let now = SystemTime::now();
        let root = Node {
            body: Body::Dir {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
                dirty: BTreeSet::new(),
                parent: ROOT,
            },
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: now,
            ctime: now,
            links: 1,
            path: String::new(),
        };
        Model {
            nodes: HashMap::from([(ROOT, root)]),
            next: ROOT + 1,
            stats: Stats::default(),
        }
    }

    fn node(&self, ino: Ino) -> FsResult<&Node> {
        self.nodes.get(&ino).ok_or(FsError::NotFound)
    }

    fn node_mut(&mut self, ino: Ino) -> FsResult<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(FsError::NotFound)
    }

    fn entries(&self, dir: Ino) -> FsResult<&BTreeMap<OsString, Ino>> {
        match &self.node(dir)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            Body::File { .. } => Err(FsError::NotDir),
        }
    }

    /// Sets (`Some`) or removes (`None`) a current entry and marks the name for the next sync.
    fn set_entry(&mut self, dir: Ino, name: &OsStr, to: Option<Ino>) -> FsResult<()> {
        let node = self.node_mut(dir)?;
        let now = SystemTime::now();
        node.mtime = now;
        node.ctime = now;
        let Body::Dir { entries, dirty, .. } = &mut node.body else {
            return Err(FsError::NotDir);
        };
        match to {
            Some(ino) => entries.insert(name.to_owned(), ino),
            None => entries.remove(name),
        };
        dirty.insert(name.to_owned());
        Ok(())
    }

    /// The path a new name in `dir` would have.
    pub fn path_of(&self, dir: Ino, name: &OsStr) -> String {
        let parent = self.nodes.get(&dir).map_or("", |n| n.path.as_str());
        format!("{parent}/{}", name.to_string_lossy())
    }

    /// The path an inode was last given ("" for the root).
    pub fn path(&self, ino: Ino) -> String {
        self.nodes
            .get(&ino)
            .map_or_else(String::new, |n| n.path.clone())
    }

    pub fn lookup(&self, dir: Ino, name: &OsStr) -> FsResult<Ino> {
        self.entries(dir)?
            .get(name)
            .copied()
            .ok_or(FsError::NotFound)
    }

    /// The inode at a path relative to the root ("a/b/c"), if any.
    pub fn resolve(&self, path: &str) -> FsResult<Ino> {
        path.split('/')
            .filter(|c| !c.is_empty())
            .try_fold(ROOT, |dir, name| self.lookup(dir, OsStr::new(name)))
    }

    pub fn attr(&self, ino: Ino) -> FsResult<Attr> {
        let n = self.node(ino)?;
        let (size, nlink) = match &n.body {
            Body::File { data, .. } => (data.len() as u64, n.links),
            Body::Dir { entries, .. } => (entries.len() as u64, 2),
        };
        Ok(Attr {
            ino,
            kind: n.kind(),
            size,
            mode: n.mode,
            nlink,
            uid: n.uid,
            gid: n.gid,
            mtime: n.mtime,
            ctime: n.ctime,
        })
    }

    fn add_node(&mut self, dir: Ino, name: &OsStr, body: Body, owner: Owner) -> FsResult<Ino> {
        if self.entries(dir)?.contains_key(name) {
            return Err(FsError::Exists);
        }
        let ino = self.next;
        self.next += 1;
        let now = SystemTime::now();
        let path = self.path_of(dir, name);
        self.nodes.insert(
            ino,
            Node {
                body,
                mode: owner.mode & 0o7777,
                uid: owner.uid,
                gid: owner.gid,
                mtime: now,
                ctime: now,
                links: 1,
                path,
            },
        );
        self.set_entry(dir, name, Some(ino))?;
        Ok(ino)
    }

    /// Creates an empty file. With `exclusive` (O_EXCL) an existing name is an error; without,
    /// an existing file is returned as it is.
    pub fn create(
        &mut self,
        dir: Ino,
        name: &OsStr,
        owner: Owner,
        exclusive: bool,
    ) -> FsResult<Ino> {
        check_name(name)?;
        if let Ok(ino) = self.lookup(dir, name) {
            return match (exclusive, self.node(ino)?.kind()) {
                (true, _) => Err(FsError::Exists),
                (false, Kind::Dir) => Err(FsError::IsDir),
                (false, Kind::File) => Ok(ino),
            };
        }
        let body = Body::File {
            data: Vec::new(),
            durable: Vec::new(),
        };
        self.add_node(dir, name, body, owner)
    }

    pub fn mkdir(&mut self, dir: Ino, name: &OsStr, owner: Owner) -> FsResult<Ino> {
        check_name(name)?;
        let body = Body::Dir {
            entries: BTreeMap::new(),
            durable: BTreeMap::new(),
            dirty: BTreeSet::new(),
            parent: dir,
        };
        self.add_node(dir, name, body, owner)
    }

    fn file_data(&mut self, ino: Ino) -> FsResult<&mut Vec<u8>> {
        let node = self.node_mut(ino)?;
        let now = SystemTime::now();
        node.mtime = now;
        node.ctime = now;
        match &mut node.body {
            Body::File { data, .. } => Ok(data),
            Body::Dir { .. } => Err(FsError::IsDir),
        }
    }

    /// Writes at `offset` (at the end with `append`, as O_APPEND does); returns the new length.
    pub fn write(&mut self, ino: Ino, offset: u64, bytes: &[u8], append: bool) -> FsResult<u64> {
        let data = self.file_data(ino)?;
        let at = if append {
            data.len()
        } else {
            usize::try_from(offset).map_err(|_| FsError::Invalid)?
        };
        let end = at.checked_add(bytes.len()).ok_or(FsError::Invalid)?;
        if data.len() < end {
            data.resize(end, 0);
        }
        data[at..end].copy_from_slice(bytes);
        let len = data.len() as u64;
        self.stats.writes += 1;
        Ok(len)
    }

    pub fn read(&self, ino: Ino, offset: u64, size: usize) -> FsResult<&[u8]> {
        match &self.node(ino)?.body {
            Body::File { data, .. } => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start.saturating_add(size).min(data.len());
                Ok(&data[start..end])
            }
            Body::Dir { .. } => Err(FsError::IsDir),
        }
    }

    pub fn truncate(&mut self, ino: Ino, size: u64) -> FsResult<()> {
        let size = usize::try_from(size).map_err(|_| FsError::Invalid)?;
        self.file_data(ino)?.resize(size, 0);
        Ok(())
    }

    /// chmod (permission bits only).
    pub fn set_mode(&mut self, ino: Ino, mode: u32) -> FsResult<()> {
        let node = self.node_mut(ino)?;
        node.mode = mode & 0o7777;
        node.ctime = SystemTime::now();
        Ok(())
    }

    pub fn set_owner(&mut self, ino: Ino, uid: Option<u32>, gid: Option<u32>) -> FsResult<()> {
        let node = self.node_mut(ino)?;
        node.uid = uid.unwrap_or(node.uid);
        node.gid = gid.unwrap_or(node.gid);
        Ok(())
    }

    pub fn set_mtime(&mut self, ino: Ino, mtime: SystemTime) -> FsResult<()> {
        self.node_mut(ino)?.mtime = mtime;
        Ok(())
    }

    fn drop_link(&mut self, ino: Ino) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.links = n.links.saturating_sub(1);
        }
    }

    pub fn unlink(&mut self, dir: Ino, name: &OsStr) -> FsResult<()> {
        let ino = self.lookup(dir, name)?;
        if self.node(ino)?.kind() == Kind::Dir {
            return Err(FsError::IsDir);
        }
        self.set_entry(dir, name, None)?;
        self.drop_link(ino);
        self.stats.unlinks += 1;
        Ok(())
    }

    pub fn rmdir(&mut self, dir: Ino, name: &OsStr) -> FsResult<()> {
        let ino = self.lookup(dir, name)?;
        if !self.entries(ino)?.is_empty() {
            return Err(FsError::NotEmpty);
        }
        self.set_entry(dir, name, None)?;
        self.drop_link(ino);
        Ok(())
    }

    /// True if `ino` is `dir` or one of its ancestors (a directory cannot move under itself).
    fn is_ancestor(&self, ino: Ino, mut dir: Ino) -> bool {
        loop {
            if dir == ino {
                return true;
            }
            match self.nodes.get(&dir).map(|n| &n.body) {
                Some(Body::Dir { parent, .. }) if *parent != dir => dir = *parent,
                _ => return false,
            }
        }
    }

    /// rename(2); with `no_replace` (RENAME_NOREPLACE) an existing target is an error.
    pub fn rename(
        &mut self,
        from_dir: Ino,
        from: &OsStr,
        to_dir: Ino,
        to: &OsStr,
        no_replace: bool,
    ) -> FsResult<()> {
        check_name(to)?;
        let ino = self.lookup(from_dir, from)?;
        let kind = self.node(ino)?.kind();
        self.entries(to_dir)?;
        if kind == Kind::Dir && self.is_ancestor(ino, to_dir) {
            return Err(FsError::Invalid);
        }
        let replaced = self.lookup(to_dir, to).ok();
        if let Some(old) = replaced {
            if old == ino {
                return Ok(());
            }
            if no_replace {
                return Err(FsError::Exists);
            }
            match (kind, self.node(old)?.kind()) {
                (Kind::File, Kind::Dir) => return Err(FsError::IsDir),
                (Kind::Dir, Kind::File) => return Err(FsError::NotDir),
                (Kind::Dir, Kind::Dir) if !self.entries(old)?.is_empty() => {
                    return Err(FsError::NotEmpty);
                }
                _ => {}
            }
        }
        self.set_entry(from_dir, from, None)?;
        self.set_entry(to_dir, to, Some(ino))?;
        if let Some(old) = replaced {
            self.drop_link(old);
        }
        let path = self.path_of(to_dir, to);
        let node = self.node_mut(ino)?;
        node.path = path;
        node.ctime = SystemTime::now();
        if let Body::Dir { parent, .. } = &mut node.body {
            *parent = to_dir;
        }
        self.stats.renames += 1;
        Ok(())
    }

    /// Current entries of a directory, in name order.
    pub fn readdir(&self, dir: Ino) -> FsResult<Vec<(OsString, Ino, Kind)>> {
        let entries = self.entries(dir)?;
        Ok(entries
            .iter()
            .map(|(name, &ino)| {
                let kind = self.nodes.get(&ino).map_or(Kind::File, Node::kind);
                (name.clone(), ino, kind)
            })
            .collect())
    }

    /// fsync/fdatasync of a file (its bytes and length), or of a directory (its entries).
    pub fn fsync(&mut self, ino: Ino) -> FsResult<()> {
        match &mut self.node_mut(ino)?.body {
            Body::File { data, durable } => {
                durable.clone_from(data);
                self.stats.file_syncs += 1;
            }
            Body::Dir {
                entries,
                durable,
                dirty,
                ..
            } => {
                for name in std::mem::take(dirty) {
                    match entries.get(&name) {
                        Some(&to) => durable.insert(name, to),
                        None => durable.remove(&name),
                    };
                }
                self.stats.dir_syncs += 1;
            }
        }
        Ok(())
    }

    /// Everything becomes durable, as after sync(2) and a quiet disk.
    pub fn checkpoint(&mut self) {
        for node in self.nodes.values_mut() {
            match &mut node.body {
                Body::File { data, durable } => durable.clone_from(data),
                Body::Dir {
                    entries,
                    durable,
                    dirty,
                    ..
                } => {
                    durable.clone_from(entries);
                    dirty.clear();
                }
            }
        }
    }

    /// The power cut: what is left is what was durable, reached from the root through durable
    /// entries only. Every other inode is gone.
    pub fn cut(&mut self) {
        let mut kept: HashSet<Ino> = HashSet::new();
        let mut stack = vec![(ROOT, ROOT, String::new())];
        let mut links: HashMap<Ino, u32> = HashMap::new();
        while let Some((ino, parent_dir, path)) = stack.pop() {
            *links.entry(ino).or_default() += 1;
            if !kept.insert(ino) {
                continue;
            }
            let Some(node) = self.nodes.get_mut(&ino) else {
                continue;
            };
            node.path.clone_from(&path);
            match &mut node.body {
                Body::File { data, durable } => data.clone_from(durable),
                Body::Dir {
                    entries,
                    durable,
                    dirty,
                    parent,
                } => {
                    entries.clone_from(durable);
                    dirty.clear();
                    *parent = parent_dir;
                    for (name, &child) in durable.iter() {
                        let child_path = format!("{path}/{}", name.to_string_lossy());
                        stack.push((child, ino, child_path));
                    }
                }
            }
        }
        self.nodes.retain(|ino, _| kept.contains(ino));
        for (ino, node) in &mut self.nodes {
            node.links = links.get(ino).copied().unwrap_or(1);
        }
        self.stats.cuts += 1;
    }

    /// Bytes held by current file contents (for statfs).
    pub fn used_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match &n.body {
                Body::File { data, .. } => data.len() as u64,
                Body::Dir { .. } => 0,
            })
            .sum()
    }

    pub fn inode_count(&self) -> u64 {
        self.nodes.len() as u64
    }
}

fn check_name(name: &OsStr) -> FsResult<()> {
    let b = name.as_encoded_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.len() > 255 {
        return Err(FsError::Invalid);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
