//! Resolution beneath a target root. Every directory a path from the wire
//! names is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` from the root's descriptor:
//! no `..`, no absolute path, no symlink on the way and no other file
//! system can take a write elsewhere. The last component is then used with
//! the `*at` calls on that directory, none of which follows a symlink there
//! (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`), and what is written is made in the
//! root's staging directory and renamed into place.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::entry;
use crate::job::errors::{coded, ErrorCode};

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// A target root, held open.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    pub fn open(path: &Path) -> Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening the target root {}", path.display()))?;
        Ok(Root {
            fd,
            path: path.to_owned(),
        })
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory `rel` beneath the root (`.` is the root), as a handle
    /// for the `*at` calls; a symlink, `..` or a mount on the way refuses.
    pub fn dir(&self, rel: &[u8]) -> Result<OwnedFd> {
        self.open_beneath(rel, OFlags::PATH | OFlags::DIRECTORY)
    }

    /// The directory `rel`, open for reading, for its metadata (fchown,
    /// fchmod, fsetxattr and futimens take no O_PATH handle).
    pub(crate) fn dir_for_metadata(&self, rel: &[u8]) -> Result<OwnedFd> {
        self.open_beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY)
    }

    /// The directory `rel`, or None if there is none there: nothing, or
    /// not a directory (a directory the source replaced by a file or a
    /// symlink took what it held with it; nothing is followed). A symlink
    /// or `..` on the way refuses as for [`Root::dir`].
    pub(crate) fn dir_if_exists(&self, rel: &[u8]) -> Result<Option<OwnedFd>> {
        match self.raw(rel, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT | Errno::NOTDIR) => Ok(None),
            Err(e) => Err(refusal(rel, e)),
        }
    }

    fn open_beneath(&self, rel: &[u8], flags: OFlags) -> Result<OwnedFd> {
        self.raw(rel, flags).map_err(|e| refusal(rel, e))
    }

    fn raw(&self, rel: &[u8], flags: OFlags) -> rustix::io::Result<OwnedFd> {
        rustix::fs::openat2(
            &self.fd,
            OsStr::from_bytes(rel),
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
    }
}

/// What openat2's refusals mean for a path from the wire.
fn refusal(rel: &[u8], e: Errno) -> anyhow::Error {
    let shown = entry::display(rel);
    match e {
        Errno::LOOP | Errno::XDEV => coded(
            ErrorCode::UnsafePath,
            format!(
                "`{shown}`: a component is a symlink, or the path leaves the target file system"
            ),
        ),
        Errno::NOTDIR => coded(
            ErrorCode::UnsafePath,
            format!("`{shown}`: a component is a symlink or not a directory"),
        ),
        other => coded(
            ErrorCode::TargetWriteFailed,
            format!("opening `{shown}` beneath the target root: {other}"),
        ),
    }
}

/// What is at `name` in `dir`, without following a symlink; None if nothing.
pub(crate) fn kind_at(dir: impl AsFd, name: &[u8]) -> Result<Option<FileType>> {
    match rustix::fs::statat(dir, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("inspecting `{}`", entry::display(name))),
    }
}

/// Remove `name` in `dir` and, for a directory, everything beneath it,
/// never following a symlink (a symlink is removed, not its target).
pub(crate) fn remove_all(dir: &OwnedFd, name: &[u8]) -> Result<()> {
    let path = OsStr::from_bytes(name);
    match kind_at(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            let sub = rustix::fs::openat2(
                dir,
                path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                RESOLVE,
            )
            .with_context(|| format!("opening `{}` to remove it", entry::display(name)))?;
            let mut names = Vec::new();
            for e in rustix::fs::Dir::read_from(&sub).context("listing a directory to remove")? {
                let e = e.context("listing a directory to remove")?;
                let n = e.file_name().to_bytes();
                if n != b"." && n != b".." {
                    names.push(n.to_vec());
                }
            }
            for n in names {
                remove_all(&sub, &n)?;
            }
            rustix::fs::unlinkat(dir, path, AtFlags::REMOVEDIR)
                .with_context(|| format!("removing the directory `{}`", entry::display(name)))
        }
        Some(_) => rustix::fs::unlinkat(dir, path, AtFlags::empty())
            .with_context(|| format!("removing `{}`", entry::display(name))),
    }
}

/// The path through which the `l*xattr` calls reach `name` in `dir`
/// without following it: the kernel's link to the directory itself, then
/// the name (the directory was opened beneath the root; the last component
/// is not followed).
pub(crate) fn proc_path(dir: &OwnedFd, name: &[u8]) -> PathBuf {
    use std::os::fd::AsRawFd;
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(OsStr::from_bytes(name));
    p
}
