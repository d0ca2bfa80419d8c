//! Owner, mode, xattrs and times: of a node through its name in the
//! staging directory, of a file or directory through its descriptor.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, Mode, Timespec, Timestamps, XattrFlags};

use super::TreeWriter;
use crate::entry::{self, Entry, Kind};
use crate::job::errors::{Code, ErrorCode};
use crate::serve::data::tree::beneath;

impl TreeWriter {
    /// Owner, mode, xattrs and times of a node made in the staging
    /// directory (a hard link keeps its file's).
    pub(super) fn set_node_metadata(&self, e: &Entry, staged: &[u8]) -> Result<()> {
        if e.kind == Kind::HardLink {
            return Ok(());
        }
        let name = OsStr::from_bytes(staged);
        let shown = entry::display(&e.path);
        let wrap = |r: rustix::io::Result<()>, what: &str| setting(r, what, &shown);
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

    /// Owner, mode and xattrs through an open descriptor (a file or a
    /// directory). A directory's xattrs that the source no longer has go.
    pub(super) fn metadata_fd(&self, fd: &OwnedFd, e: &Entry) -> Result<()> {
        let shown = entry::display(&e.path);
        let wrap = |r: rustix::io::Result<()>, what: &str| setting(r, what, &shown);
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
}

/// A metadata call that failed: which of the entry's `what` (owner, mode,
/// times...) could not be set, as TARGET_WRITE_FAILED.
pub(super) fn setting(r: rustix::io::Result<()>, what: &str, shown: &str) -> Result<()> {
    r.with_context(|| format!("setting the {what} of `{shown}`"))
        .code(ErrorCode::TargetWriteFailed)
}

/// The entry's times as `utimensat` and `futimens` take them.
pub(super) fn times(e: &Entry) -> Timestamps {
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
            entry::display(name)
        )
    })
    .code(ErrorCode::TargetWriteFailed)
}
