//! Symlinks, hard links, device nodes and fifos: made in the staging
//! directory with their metadata, then put in place.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, FileType, Mode};

use super::TreeWriter;
use crate::entry::{self, Entry, Kind};
use crate::job::errors::{coded, Code, ErrorCode};
use crate::serve::data::tree::beneath;

impl TreeWriter {
    /// A link or special file, made staged and renamed over its path.
    pub(super) fn node(&mut self, e: &Entry) -> Result<()> {
        let staged = self.stage_name();
        self.make_node(e, &staged)?;
        self.set_node_metadata(e, &staged)?;
        self.place(&e.path, &staged)?;
        self.done(e, [0; 32]);
        Ok(())
    }

    fn make_node(&self, e: &Entry, staged: &[u8]) -> Result<()> {
        let name = OsStr::from_bytes(staged);
        let shown = entry::display(&e.path);
        let r = match e.kind {
            Kind::Symlink => {
                rustix::fs::symlinkat(OsStr::from_bytes(&e.target), &self.staging, name)
            }
            Kind::HardLink => {
                self.check(&e.target)?;
                let (parent, last) = entry::split_parent(&e.target);
                let dir = self.root.dir(parent)?;
                match beneath::kind_at(&dir, last)? {
                    Some(FileType::Directory) | None => {
                        return Err(coded(
                            ErrorCode::UnsafePath,
                            format!(
                                "`{shown}`: a hard link to `{}`, which is not a file of the tree",
                                entry::display(&e.target)
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
}
