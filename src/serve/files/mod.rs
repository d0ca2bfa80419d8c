//! File mode's writer: one thread per open tree writes the sender's entries
//! beneath the tree's target root, safely ([`beneath`]), and commits them
//! to the ledger in groups — the file system synced first (syncfs), then
//! the entries recorded.
//!
//! - A file, symlink, hard link or node is made in the root's staging
//!   directory with its owner, mode, xattrs and times, then renamed over
//!   its path: the path holds the old entry or the new one whatever
//!   interrupts the writer.
//! - Owner before mode (chown clears setuid and setgid), mode before xattrs
//!   (`security.capability` is cleared by chown too), times last.
//! - A directory is made at once (mode 0700, so nothing reads it half
//!   written) and gets its metadata when the tree is closed, deepest first,
//!   after its content: writing into a directory changes its mtime.

pub mod beneath;
pub mod progress;
pub mod targets;

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use tokio::sync::{mpsc, oneshot};

use crate::files::{self, ContentHash, Entry, Kind};
use crate::job::errors::{coded, Code, ErrorCode};
use crate::job::ledger::Ledger;
use beneath::Root;

/// Claims of trees are kept apart from those of disks.
pub const TREE_CLAIM: u32 = 1 << 31;

/// Work for a tree's writer, in the order the sender sent it.
pub enum TreeWork {
    Entry(Box<Entry>),
    Data {
        offset: u64,
        compressed: bool,
        payload: Bytes,
    },
    End {
        hash: [u8; 32],
    },
    Remove(Vec<u8>),
    /// Apply the directories' metadata, sync, commit, and answer.
    Close(oneshot::Sender<Result<Summary>>),
}

/// What a session wrote into a tree.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub entries: u64,
    pub removed: u64,
    pub bytes: u64,
}

/// Entries committed in one group at most, and content bytes.
const GROUP_ENTRIES: usize = 4096;
const GROUP_BYTES: u64 = 512 << 20;
/// Longest a group collects before it is committed.
const GROUP_AGE: Duration = Duration::from_secs(5);

/// A regular file being received.
struct Open {
    entry: Box<Entry>,
    file: OwnedFd,
    staged: Vec<u8>,
    /// Where the next piece may start (pieces ascend without overlap).
    next: u64,
    hash: ContentHash,
}

pub struct TreeWriter {
    tree: u32,
    root: Root,
    staging: OwnedFd,
    ledger: std::sync::Arc<Ledger>,
    /// One zstd context for the session's pieces: making one per piece
    /// cost the writer a twentieth of its time.
    unzstd: zstd::bulk::Decompressor<'static>,
    open: Option<Open>,
    /// Directories sent in this session, for their metadata at the close.
    dirs: Vec<Entry>,
    put: Vec<(Vec<u8>, Vec<u8>)>,
    removed: Vec<Vec<u8>>,
    group_bytes: u64,
    group_started: Instant,
    staged_count: u64,
    summary: Summary,
    /// The tree was closed: its staging directory is gone, and the root's
    /// times are the source's.
    closed: bool,
}

impl TreeWriter {
    /// Open the tree's root (created if missing) and its staging directory,
    /// emptied of what an interrupted session left there.
    pub fn open(tree: u32, root_path: &Path, ledger: std::sync::Arc<Ledger>) -> Result<TreeWriter> {
        std::fs::create_dir_all(root_path)
            .with_context(|| format!("creating the target root {}", root_path.display()))?;
        let root = Root::open(root_path)?;
        beneath::remove_all(root.fd(), files::STAGING).context("emptying the staging directory")?;
        rustix::fs::mkdirat(
            root.fd(),
            OsStr::from_bytes(files::STAGING),
            Mode::from_raw_mode(0o700),
        )
        .context("creating the staging directory")?;
        let staging = root.dir(files::STAGING)?;
        let unzstd = zstd::bulk::Decompressor::new().context("starting zstd")?;
        Ok(TreeWriter {
            tree,
            root,
            staging,
            ledger,
            unzstd,
            open: None,
            dirs: Vec::new(),
            put: Vec::new(),
            removed: Vec::new(),
            group_bytes: 0,
            group_started: Instant::now(),
            staged_count: 0,
            summary: Summary::default(),
            closed: false,
        })
    }

    /// Take work until the session closes the tree or goes away. The first
    /// error stops the writer and is given to `failed` before the work
    /// still queued is dropped: a session that finds its queue (or a
    /// close's answer) gone then finds the error too.
    pub fn run(
        mut self,
        work: &mut mpsc::Receiver<Vec<TreeWork>>,
        failed: impl FnOnce(anyhow::Error),
    ) {
        while let Some(batch) = work.blocking_recv() {
            let mut items = batch.into_iter();
            for w in items.by_ref() {
                let r = match w {
                    TreeWork::Close(answer) => {
                        let r = self.close();
                        let failed = r.is_err();
                        let _ = answer.send(r);
                        if failed {
                            return;
                        }
                        Ok(())
                    }
                    w => self.take(w),
                };
                if let Err(e) = r {
                    failed(e);
                    drop(items);
                    return;
                }
            }
        }
        // The session is gone without closing: keep what is complete.
        self.open = None;
        if let Err(e) = self.commit() {
            failed(e);
        }
    }

    fn take(&mut self, w: TreeWork) -> Result<()> {
        if self.closed {
            return Err(coded(
                ErrorCode::UnexpectedFrame,
                "an entry after the end of the tree",
            ));
        }
        match w {
            TreeWork::Entry(e) => self.entry(e),
            TreeWork::Data {
                offset,
                compressed,
                payload,
            } => self.data(offset, compressed, payload),
            TreeWork::End { hash } => self.end(hash),
            TreeWork::Remove(path) => self.remove(&path),
            TreeWork::Close(_) => Ok(()),
        }?;
        if self.put.len() + self.removed.len() >= GROUP_ENTRIES
            || self.group_bytes >= GROUP_BYTES
            || self.group_started.elapsed() >= GROUP_AGE
        {
            self.commit()?;
        }
        Ok(())
    }

    fn check(&self, path: &[u8]) -> Result<()> {
        files::check_path(path).map_err(|why| {
            coded(
                ErrorCode::UnsafePath,
                format!("`{}`: {why}", files::display(path)),
            )
        })
    }

    fn no_open_file(&self, what: &str) -> Result<()> {
        if let Some(o) = &self.open {
            return Err(coded(
                ErrorCode::UnexpectedFrame,
                format!(
                    "{what} while the content of `{}` was still expected",
                    files::display(&o.entry.path)
                ),
            ));
        }
        Ok(())
    }

    fn entry(&mut self, e: Box<Entry>) -> Result<()> {
        self.no_open_file("an entry")?;
        self.check(&e.path)?;
        if e.path == b"." && e.kind != Kind::Dir {
            return Err(coded(
                ErrorCode::UnsafePath,
                "`.` (the root) can only be a directory",
            ));
        }
        match e.kind {
            Kind::Dir => self.dir(*e),
            Kind::File => {
                let staged = self.stage_name();
                let file = rustix::fs::openat(
                    &self.staging,
                    OsStr::from_bytes(&staged),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .with_context(|| format!("creating `{}`", files::display(&e.path)))
                .code(ErrorCode::TargetWriteFailed)?;
                self.open = Some(Open {
                    entry: e,
                    file,
                    staged,
                    next: 0,
                    hash: ContentHash::default(),
                });
                Ok(())
            }
            Kind::Symlink | Kind::HardLink | Kind::CharDev | Kind::BlockDev | Kind::Fifo => {
                let staged = self.stage_name();
                self.make_node(&e, &staged)?;
                self.set_node_metadata(&e, &staged)?;
                self.place(&e.path, &staged)?;
                self.done(&e, [0; 32]);
                Ok(())
            }
        }
    }

    fn stage_name(&mut self) -> Vec<u8> {
        self.staged_count += 1;
        format!("{:016x}", self.staged_count).into_bytes()
    }

    fn make_node(&self, e: &Entry, staged: &[u8]) -> Result<()> {
        let name = OsStr::from_bytes(staged);
        let shown = files::display(&e.path);
        let r = match e.kind {
            Kind::Symlink => {
                rustix::fs::symlinkat(OsStr::from_bytes(&e.target), &self.staging, name)
            }
            Kind::HardLink => {
                self.check(&e.target)?;
                let (parent, last) = files::split_parent(&e.target);
                let dir = self.root.dir(parent)?;
                match beneath::kind_at(&dir, last)? {
                    Some(FileType::Directory) | None => {
                        return Err(coded(
                            ErrorCode::UnsafePath,
                            format!(
                                "`{shown}`: a hard link to `{}`, which is not a file of the tree",
                                files::display(&e.target)
                            ),
                        ))
                    }
                    Some(_) => {}
                }
                rustix::fs::linkat(
                    &dir,
                    OsStr::from_bytes(last),
                    &self.staging,
                    name,
                    AtFlags::empty(),
                )
            }
            Kind::CharDev | Kind::BlockDev | Kind::Fifo => {
                let ty = match e.kind {
                    Kind::CharDev => FileType::CharacterDevice,
                    Kind::BlockDev => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let rdev = if e.kind == Kind::Fifo { 0 } else { e.rdev };
                rustix::fs::mknodat(&self.staging, name, ty, Mode::from_raw_mode(0o600), rdev)
            }
            Kind::File | Kind::Dir => Ok(()),
        };
        r.with_context(|| format!("making `{shown}`"))
            .code(ErrorCode::TargetWriteFailed)
    }

    /// Owner, mode, xattrs and times of a node made in the staging
    /// directory (a hard link keeps its file's).
    fn set_node_metadata(&self, e: &Entry, staged: &[u8]) -> Result<()> {
        if e.kind == Kind::HardLink {
            return Ok(());
        }
        let name = OsStr::from_bytes(staged);
        let shown = files::display(&e.path);
        let wrap = |r: rustix::io::Result<()>, what: &str| {
            r.with_context(|| format!("setting the {what} of `{shown}`"))
                .code(ErrorCode::TargetWriteFailed)
        };
        wrap(
            rustix::fs::chownat(
                &self.staging,
                name,
                Some(rustix::fs::Uid::from_raw(e.uid)),
                Some(rustix::fs::Gid::from_raw(e.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            ),
            "owner",
        )?;
        if e.kind != Kind::Symlink {
            // The node was made just now in the staging directory, which
            // only this writer uses: it is not a symlink.
            wrap(
                rustix::fs::chmodat(
                    &self.staging,
                    name,
                    Mode::from_raw_mode(e.mode),
                    AtFlags::empty(),
                ),
                "mode",
            )?;
        }
        let proc = beneath::proc_path(&self.staging, staged);
        for (k, v) in &e.xattrs {
            set_xattr(
                rustix::fs::lsetxattr(&proc, OsStr::from_bytes(k), v, XattrFlags::empty()),
                k,
                &shown,
            )?;
        }
        wrap(
            rustix::fs::utimensat(&self.staging, name, &times(e), AtFlags::SYMLINK_NOFOLLOW),
            "times",
        )
    }

    /// Rename a staged entry over its path; whatever was there goes (a
    /// directory with its content).
    fn place(&self, path: &[u8], staged: &[u8]) -> Result<()> {
        let (parent, last) = files::split_parent(path);
        let dir = self.root.dir(parent)?;
        if beneath::kind_at(&dir, last)? == Some(FileType::Directory) {
            beneath::remove_all(&dir, last)?;
        }
        rustix::fs::renameat(
            &self.staging,
            OsStr::from_bytes(staged),
            &dir,
            OsStr::from_bytes(last),
        )
        .with_context(|| format!("putting `{}` in place", files::display(path)))
        .code(ErrorCode::TargetWriteFailed)
    }

    fn done(&mut self, e: &Entry, hash: [u8; 32]) {
        self.put
            .push((e.path.clone(), e.stamp(hash).to_bytes().to_vec()));
        self.summary.entries += 1;
    }

    fn dir(&mut self, e: Entry) -> Result<()> {
        if e.path != b"." {
            let (parent, last) = files::split_parent(&e.path);
            let dir = self.root.dir(parent)?;
            match beneath::kind_at(&dir, last)? {
                Some(FileType::Directory) => {}
                other => {
                    if other.is_some() {
                        beneath::remove_all(&dir, last)?;
                    }
                    rustix::fs::mkdirat(&dir, OsStr::from_bytes(last), Mode::from_raw_mode(0o700))
                        .with_context(|| {
                            format!("making the directory `{}`", files::display(&e.path))
                        })
                        .code(ErrorCode::TargetWriteFailed)?;
                }
            }
        }
        self.dirs.push(e);
        Ok(())
    }

    fn data(&mut self, offset: u64, compressed: bool, payload: Bytes) -> Result<()> {
        let Some(o) = self.open.as_mut() else {
            return Err(coded(
                ErrorCode::UnexpectedFrame,
                "FileData without a file entry before it",
            ));
        };
        let shown = files::display(&o.entry.path);
        let bytes = if compressed {
            // At most a piece's size comes out, whatever the input says.
            self.unzstd
                .decompress(&payload, files::FILE_CHUNK)
                .map_err(|e| {
                    coded(
                        ErrorCode::ChunkDecompress,
                        format!("a piece of `{shown}`: {e}"),
                    )
                })?
                .into()
        } else {
            payload
        };
        let end = offset.checked_add(bytes.len() as u64);
        if offset < o.next || end.is_none_or(|end| end > o.entry.size) {
            return Err(coded(
                ErrorCode::ChunkOutOfRange,
                format!(
                    "a piece of `{shown}` at {offset} of {} bytes: out of order or past the file's {} bytes",
                    bytes.len(),
                    o.entry.size
                ),
            ));
        }
        let mut done = 0usize;
        while done < bytes.len() {
            let n = rustix::io::pwrite(&o.file, &bytes[done..], offset + done as u64)
                .with_context(|| format!("writing `{shown}` at offset {}", offset + done as u64))
                .code(ErrorCode::TargetWriteFailed)?;
            done += n;
        }
        o.hash.piece(offset, &bytes);
        o.next = offset + bytes.len() as u64;
        self.group_bytes += bytes.len() as u64;
        self.summary.bytes += bytes.len() as u64;
        Ok(())
    }

    fn end(&mut self, hash: [u8; 32]) -> Result<()> {
        let Some(o) = self.open.take() else {
            return Err(coded(
                ErrorCode::UnexpectedFrame,
                "FileEnd without a file entry before it",
            ));
        };
        let e = &o.entry;
        let shown = files::display(&e.path);
        if o.hash.finish(e.size) != hash {
            return Err(coded(
                ErrorCode::ChunkHashMismatch,
                format!("the content of `{shown}` does not match its hash"),
            ));
        }
        let wrap = |r: rustix::io::Result<()>, what: &str| {
            r.with_context(|| format!("setting the {what} of `{shown}`"))
                .code(ErrorCode::TargetWriteFailed)
        };
        // The length last: what was not written is a hole.
        wrap(rustix::fs::ftruncate(&o.file, e.size), "length")?;
        self.metadata_fd(&o.file, e)?;
        wrap(rustix::fs::futimens(&o.file, &times(e)), "times")?;
        drop(o.file);
        self.place(&e.path, &o.staged)?;
        self.done(&o.entry, hash);
        Ok(())
    }

    /// Owner, mode and xattrs through an open descriptor (a file or a
    /// directory). A directory's xattrs that the source no longer has go.
    fn metadata_fd(&self, fd: &OwnedFd, e: &Entry) -> Result<()> {
        let shown = files::display(&e.path);
        let wrap = |r: rustix::io::Result<()>, what: &str| {
            r.with_context(|| format!("setting the {what} of `{shown}`"))
                .code(ErrorCode::TargetWriteFailed)
        };
        wrap(
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(e.uid)),
                Some(rustix::fs::Gid::from_raw(e.gid)),
            ),
            "owner",
        )?;
        wrap(rustix::fs::fchmod(fd, Mode::from_raw_mode(e.mode)), "mode")?;
        if e.kind == Kind::Dir {
            for name in list_xattrs(fd)? {
                if !e.xattrs.iter().any(|(k, _)| *k == name) {
                    let _ = rustix::fs::fremovexattr(fd, OsStr::from_bytes(&name));
                }
            }
        }
        for (k, v) in &e.xattrs {
            set_xattr(
                rustix::fs::fsetxattr(fd, OsStr::from_bytes(k), v, XattrFlags::empty()),
                k,
                &shown,
            )?;
        }
        Ok(())
    }

    fn remove(&mut self, path: &[u8]) -> Result<()> {
        self.no_open_file("a removal")?;
        self.check(path)?;
        if path == b"." {
            return Err(coded(
                ErrorCode::UnsafePath,
                "`.` (the root) cannot be removed",
            ));
        }
        let (parent, last) = files::split_parent(path);
        // A parent already gone took the path with it.
        if let Some(dir) = self.root.dir_if_exists(parent)? {
            beneath::remove_all(&dir, last).code(ErrorCode::TargetWriteFailed)?;
        }
        self.removed.push(path.to_vec());
        self.summary.removed += 1;
        Ok(())
    }

    /// Sync the file system, then record the group in the ledger.
    fn commit(&mut self) -> Result<()> {
        if self.put.is_empty() && self.removed.is_empty() {
            return Ok(());
        }
        rustix::fs::syncfs(self.root.fd())
            .with_context(|| format!("syncing {}", self.root.path().display()))
            .code(ErrorCode::TargetWriteFailed)?;
        self.ledger
            .commit_entries(self.tree, &self.put, &self.removed)
            .code(ErrorCode::LedgerFailed)?;
        self.put.clear();
        self.removed.clear();
        self.group_bytes = 0;
        self.group_started = Instant::now();
        Ok(())
    }

    fn close(&mut self) -> Result<Summary> {
        if self.closed {
            return Err(coded(
                ErrorCode::UnexpectedFrame,
                "the tree was closed twice",
            ));
        }
        self.no_open_file("the end of the tree")?;
        // Deepest first: a directory's metadata after everything in it.
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(depth(&d.path)));
        for d in &dirs {
            let fd = self.root.dir_for_metadata(&d.path)?;
            self.metadata_fd(&fd, d)?;
            rustix::fs::futimens(&fd, &times(d))
                .with_context(|| format!("setting the times of `{}`", files::display(&d.path)))
                .code(ErrorCode::TargetWriteFailed)?;
            self.put
                .push((d.path.clone(), d.stamp([0; 32]).to_bytes().to_vec()));
            self.summary.entries += 1;
        }
        beneath::remove_all(self.root.fd(), files::STAGING)
            .context("removing the staging directory")?;
        // The root's own times again: removing the staging directory
        // changed them.
        if let Some(root) = dirs.iter().find(|d| d.path == b".") {
            rustix::fs::futimens(self.root.fd(), &times(root))
                .context("setting the times of the target root")
                .code(ErrorCode::TargetWriteFailed)?;
        }
        self.commit()?;
        self.closed = true;
        Ok(self.summary)
    }
}

impl Drop for TreeWriter {
    fn drop(&mut self) {
        // An interrupted session's staging directory goes; the root's
        // times are set again by the next close.
        if !self.closed {
            let _ = beneath::remove_all(self.root.fd(), files::STAGING);
        }
    }
}

fn depth(path: &[u8]) -> usize {
    if path == b"." {
        0
    } else {
        1 + path.iter().filter(|&&b| b == b'/').count()
    }
}

fn times(e: &Entry) -> Timestamps {
    let t = Timespec {
        tv_sec: e.mtime.sec,
        tv_nsec: e.mtime.nsec as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn list_xattrs(fd: &OwnedFd) -> Result<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 64 << 10];
    let n = match rustix::fs::flistxattr(fd, &mut buf[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => 0,
        Err(e) => return Err(e).context("listing extended attributes"),
    };
    Ok(buf[..n]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| n.to_vec())
        .collect())
}

/// An xattr the target file system cannot hold (`trusted.*` and
/// `security.*` need root, which the appliance is; a label on a file
/// system without them) fails the entry with its name.
fn set_xattr(r: rustix::io::Result<()>, name: &[u8], shown: &str) -> Result<()> {
    r.with_context(|| {
        format!(
            "setting the extended attribute {} of `{shown}`",
            files::display(name)
        )
    })
    .code(ErrorCode::TargetWriteFailed)
}
