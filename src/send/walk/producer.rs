//! The producer of a tree's frames, on a blocking thread: it walks the
//! tree, compares each entry with the appliance's manifest, reads what
//! changed (data pieces only, holes left out; again when a file changes
//! while it is read) and queues the frames for the connection's task;
//! then the removals of what is gone from the source.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use bytes::Bytes;
use rustix::fs::{Mode, OFlags, SeekFrom};
use tokio::sync::mpsc;

use super::entries;
use super::plan::TreeJob;
use super::report::Counts;
use crate::entry::{self, ContentHash, Entry, Kind, Stamp, Time};
use crate::job::errors::{coded, ErrorCode};
use crate::wire::Frame;

/// The queue to the connection's task is gone: that task has the error.
fn queue_gone() -> anyhow::Error {
    coded(
        ErrorCode::TransferInterrupted,
        "the connection to the appliance closed while the tree was sent",
    )
}

/// Walk, compare and queue the frames of the tree; then the removals.
pub(crate) fn produce(
    j: &TreeJob,
    mut manifest: HashMap<Vec<u8>, Stamp>,
    tx: &mpsc::Sender<Frame>,
    level: i32,
    counts: &Counts,
) -> Result<entries::Skipped> {
    let (root, excludes, tree) = (&j.root, &j.excludes, j.tree);
    let q = Queue { tree, tx, counts };
    let mut compressor = if level > 0 {
        Some(zstd::bulk::Compressor::new(level).context("starting zstd")?)
    } else {
        None
    };
    let skipped = entries::walk_with(root, excludes, &j.stops, |found| {
        let old = manifest.remove(&found.entry.path);
        // Directories are always sent: their metadata is applied after
        // their content, which may have changed beneath them.
        if found.entry.kind != Kind::Dir {
            if let Some(s) = old {
                if s.same_as(&found.entry.stamp([0; 32])) {
                    counts.unchanged.fetch_add(1, Ordering::Relaxed);
                    counts
                        .unchanged_bytes
                        .fetch_add(found.entry.size, Ordering::Relaxed);
                    return Ok(());
                }
            }
        }
        if found.entry.kind == Kind::File {
            send_file(&q, found, compressor.as_mut())
        } else {
            if found.entry.kind == Kind::Dir {
                counts.dirs.fetch_add(1, Ordering::Relaxed);
            } else {
                counts.entries.fetch_add(1, Ordering::Relaxed);
            }
            q.send(Frame::Entry {
                tree,
                entry: Box::new(found.entry),
            })
        }
    })?;
    let mut gone: Vec<Vec<u8>> = manifest
        .into_keys()
        .filter(|p| p != b"." && !excludes.covers(p))
        .collect();
    gone.sort();
    let mut last: Option<Vec<u8>> = None;
    for p in gone {
        if let Some(r) = &last {
            if p.starts_with(r) && p.get(r.len()) == Some(&b'/') {
                continue;
            }
        }
        counts.removed.fetch_add(1, Ordering::Relaxed);
        q.send(Frame::Remove {
            tree,
            path: p.clone(),
        })?;
        last = Some(p);
    }
    Ok(skipped)
}

/// How many times a file that changes while it is read is read again.
const REREADS: u32 = 3;

fn open_source(path: &Path) -> std::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    // O_NOATIME keeps the source's access times; it needs the file's owner
    // or root.
    match rustix::fs::open(path, flags | OFlags::NOATIME, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(rustix::io::Errno::PERM) => Ok(rustix::fs::open(path, flags, Mode::empty())?),
        Err(e) => Err(e.into()),
    }
}

/// What tells a file's content changed: its length, mtime and ctime.
fn version(st: &rustix::fs::Stat) -> (u64, Time, Time) {
    (
        st.st_size as u64,
        Time {
            sec: st.st_mtime,
            nsec: st.st_mtime_nsec as u32,
        },
        Time {
            sec: st.st_ctime,
            nsec: st.st_ctime_nsec as u32,
        },
    )
}

/// Where a tree's frames go, and what counts them.
struct Queue<'a> {
    tree: u32,
    tx: &'a mpsc::Sender<Frame>,
    counts: &'a Counts,
}

impl Queue<'_> {
    fn send(&self, frame: Frame) -> Result<()> {
        self.tx.blocking_send(frame).map_err(|_| queue_gone())
    }
}

/// Send a regular file: its entry as opened, its data pieces (holes left
/// out), its hash; again when it changed while it was read.
fn send_file(
    q: &Queue<'_>,
    found: entries::Found,
    mut compressor: Option<&mut zstd::bulk::Compressor<'static>>,
) -> Result<()> {
    let (tree, counts) = (q.tree, q.counts);
    let shown = || {
        entry::display(std::os::unix::ffi::OsStrExt::as_bytes(
            found.source.as_os_str(),
        ))
    };
    let unreadable = |e: &dyn std::fmt::Display| {
        coded(ErrorCode::SourceTreeUnreadable, format!("{}: {e}", shown()))
    };
    let mut entry: Entry = found.entry;
    for round in 0..REREADS {
        let fd = match open_source(&found.source) {
            Ok(fd) => fd,
            // Gone, or replaced by a symlink, since the walk saw it.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ELOOP)) => {
                return Ok(())
            }
            Err(e) => return Err(unreadable(&e)),
        };
        let before = rustix::fs::fstat(&fd).map_err(|e| unreadable(&e))?;
        if rustix::fs::FileType::from_raw_mode(before.st_mode) != rustix::fs::FileType::RegularFile
        {
            return Ok(());
        }
        let (size, mtime, ctime) = version(&before);
        entry.size = size;
        entry.mtime = mtime;
        entry.ctime = ctime;
        entry.mode = before.st_mode & 0o7777;
        entry.uid = before.st_uid;
        entry.gid = before.st_gid;
        counts.entries.fetch_add(1, Ordering::Relaxed);
        counts.files.fetch_add(1, Ordering::Relaxed);
        q.send(Frame::Entry {
            tree,
            entry: Box::new(entry.clone()),
        })?;
        let mut hash = ContentHash::default();
        let short = send_data(
            q,
            &fd,
            size,
            &mut hash,
            compressor.as_deref_mut(),
            &unreadable,
        )?;
        q.send(Frame::FileEnd {
            tree,
            hash: hash.finish(size),
        })?;
        let after = rustix::fs::fstat(&fd).map_err(|e| unreadable(&e))?;
        if !short && version(&after) == (size, mtime, ctime) {
            return Ok(());
        }
        if round + 1 < REREADS {
            counts.resent_changed.fetch_add(1, Ordering::Relaxed);
        }
    }
    counts.changed_while_read.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(path = %shown(), "the file kept changing while it was read; sent as last read");
    Ok(())
}

/// Send the data pieces of an open file of `size` bytes (its holes left
/// out) and add them to `hash`. Returns whether the file ended before
/// `size`: it changed while it was read.
fn send_data(
    q: &Queue<'_>,
    fd: &OwnedFd,
    size: u64,
    hash: &mut ContentHash,
    mut compressor: Option<&mut zstd::bulk::Compressor<'static>>,
    unreadable: &dyn Fn(&dyn std::fmt::Display) -> anyhow::Error,
) -> Result<bool> {
    let mut pos = 0u64;
    while pos < size {
        let data = match rustix::fs::seek(fd, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(unreadable(&e)),
        };
        if data >= size {
            break;
        }
        let hole = match rustix::fs::seek(fd, SeekFrom::Hole(data)) {
            Ok(h) => h.min(size),
            Err(e) => return Err(unreadable(&e)),
        };
        let mut off = data;
        while off < hole {
            let want = ((hole - off) as usize).min(entry::FILE_CHUNK);
            let buf = read_at(fd, off, want).map_err(|e| unreadable(&e))?;
            let got = buf.len();
            if got == 0 {
                return Ok(true);
            }
            hash.piece(off, &buf);
            q.counts
                .content_bytes
                .fetch_add(got as u64, Ordering::Relaxed);
            // Compress only while the link is what holds the transfer
            // back (the queue to it more than half full): on a link
            // faster than zstd, compressing costs time and saves none.
            let link_bound = q.tx.capacity() < q.tx.max_capacity() / 2;
            let (compressed, payload) = pack(compressor.as_deref_mut().filter(|_| link_bound), buf);
            q.counts
                .wire_bytes
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
            q.send(Frame::FileData {
                tree: q.tree,
                offset: off,
                compressed,
                payload,
            })?;
            off += got as u64;
            if got < want {
                return Ok(true);
            }
        }
        pos = hole;
    }
    Ok(false)
}

/// Up to `want` bytes of the file at `off`; fewer where it ends.
fn read_at(fd: &OwnedFd, off: u64, want: usize) -> rustix::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; want];
    let mut got = 0usize;
    while got < want {
        let n = rustix::io::pread(fd, &mut buf[got..], off + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(buf)
}

/// A piece compressed when that saves an eighth of it.
fn pack(compressor: Option<&mut zstd::bulk::Compressor<'static>>, buf: Vec<u8>) -> (bool, Bytes) {
    if let Some(c) = compressor {
        if buf.len() >= 512 {
            if let Ok(z) = c.compress(&buf) {
                if z.len() < buf.len() - buf.len() / 8 {
                    return (true, Bytes::from(z));
                }
            }
        }
    }
    (false, Bytes::from(buf))
}
