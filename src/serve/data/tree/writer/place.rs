//! Paths beneath the root: a staged entry renamed over its path, a
//! directory made where the sender names one, a removed path gone.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result};
use rustix::fs::{FileType, Mode};

use super::TreeWriter;
use crate::entry::{self, Entry};
use crate::job::errors::{coded, Code, ErrorCode};
use crate::serve::data::tree::beneath;

impl TreeWriter {
    /// Rename a staged entry over its path; whatever was there goes (a
    /// directory with its content).
    pub(super) fn place(&self, path: &[u8], staged: &[u8]) -> Result<()> {
        let (parent, last) = entry::split_parent(path);
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
        .with_context(|| format!("putting `{}` in place", entry::display(path)))
        .code(ErrorCode::TargetWriteFailed)
    }

    pub(super) fn dir(&mut self, e: Entry) -> Result<()> {
        if e.path != b"." {
            let (parent, last) = entry::split_parent(&e.path);
            let dir = self.root.dir(parent)?;
            match beneath::kind_at(&dir, last)? {
                Some(FileType::Directory) => {}
                other => {
                    if other.is_some() {
                        beneath::remove_all(&dir, last)?;
                    }
                    rustix::fs::mkdirat(&dir, OsStr::from_bytes(last), Mode::from_raw_mode(0o700))
                        .with_context(|| {
                            format!("making the directory `{}`", entry::display(&e.path))
                        })
                        .code(ErrorCode::TargetWriteFailed)?;
                }
            }
        }
        self.dirs.push(e);
        Ok(())
    }

    pub(super) fn remove(&mut self, path: &[u8]) -> Result<()> {
        self.no_open_file("a removal")?;
        self.check(path)?;
        if path == b"." {
            return Err(coded(
                ErrorCode::UnsafePath,
                "`.` (the root) cannot be removed",
            ));
        }
        let (parent, last) = entry::split_parent(path);
        // A parent already gone took the path with it.
        if let Some(dir) = self.root.dir_if_exists(parent)? {
            beneath::remove_all(&dir, last).code(ErrorCode::TargetWriteFailed)?;
        }
        self.removed.push(path.to_vec());
        self.summary.removed += 1;
        Ok(())
    }
}
