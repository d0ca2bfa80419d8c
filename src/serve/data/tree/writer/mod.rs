//! File mode's writer: one thread per open tree writes the sender's entries
//! beneath the tree's target root, safely ([`super::beneath`]), and commits them
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
//!
//! The rooms: `file.rs` receives a regular file's content, `node.rs` makes
//! links and special files, `metadata.rs` sets owner, mode, xattrs and
//! times, `place.rs` puts entries at their paths and removes paths.

mod file;
mod metadata;
mod node;
mod place;

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use rustix::fs::Mode;
use tokio::sync::{mpsc, oneshot};

use self::file::Open;
use self::metadata::times;
use super::beneath::{self, Root};
use crate::entry::{self, Entry, Kind};
use crate::job::errors::{coded, Code, ErrorCode};
use crate::job::ledger::Ledger;

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
        beneath::remove_all(root.fd(), entry::STAGING).context("emptying the staging directory")?;
        rustix::fs::mkdirat(
            root.fd(),
            OsStr::from_bytes(entry::STAGING),
            Mode::from_raw_mode(0o700),
        )
        .context("creating the staging directory")?;
        let staging = root.dir(entry::STAGING)?;
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
        entry::check_path(path).map_err(|why| {
            coded(
                ErrorCode::UnsafePath,
                format!("`{}`: {why}", entry::display(path)),
            )
        })
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
            Kind::File => self.open_file(e),
            Kind::Symlink | Kind::HardLink | Kind::CharDev | Kind::BlockDev | Kind::Fifo => {
                self.node(&e)
            }
        }
    }

    fn stage_name(&mut self) -> Vec<u8> {
        self.staged_count += 1;
        format!("{:016x}", self.staged_count).into_bytes()
    }

    fn done(&mut self, e: &Entry, hash: [u8; 32]) {
        self.put
            .push((e.path.clone(), e.stamp(hash).to_bytes().to_vec()));
        self.summary.entries += 1;
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
                .with_context(|| format!("setting the times of `{}`", entry::display(&d.path)))
                .code(ErrorCode::TargetWriteFailed)?;
            self.put
                .push((d.path.clone(), d.stamp([0; 32]).to_bytes().to_vec()));
            self.summary.entries += 1;
        }
        beneath::remove_all(self.root.fd(), entry::STAGING)
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
            let _ = beneath::remove_all(self.root.fd(), entry::STAGING);
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
