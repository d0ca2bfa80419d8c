//! A regular file's content: created in the staging directory, written
//! piece by piece (decompressed, in order, within its size), checked
//! against its hash, given its metadata and put in place.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result};
use bytes::Bytes;
use rustix::fs::{Mode, OFlags};

use super::metadata::{setting, times};
use super::TreeWriter;
use crate::entry::{self, ContentHash, Entry};
use crate::job::errors::{coded, Code, ErrorCode};

/// A regular file being received.
pub(super) struct Open {
    entry: Box<Entry>,
    file: OwnedFd,
    staged: Vec<u8>,
    /// Where the next piece may start (pieces ascend without overlap).
    next: u64,
    hash: ContentHash,
}

impl TreeWriter {
    pub(super) fn no_open_file(&self, what: &str) -> Result<()> {
        if let Some(o) = &self.open {
            return Err(coded(
                ErrorCode::UnexpectedFrame,
                format!(
                    "{what} while the content of `{}` was still expected",
                    entry::display(&o.entry.path)
                ),
            ));
        }
        Ok(())
    }

    /// Create a file entry's staged file; its content follows.
    pub(super) fn open_file(&mut self, e: Box<Entry>) -> Result<()> {
        let staged = self.stage_name();
        let file = rustix::fs::openat(
            &self.staging,
            OsStr::from_bytes(&staged),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .with_context(|| format!("creating `{}`", entry::display(&e.path)))
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

    pub(super) fn data(&mut self, offset: u64, compressed: bool, payload: Bytes) -> Result<()> {
        let Some(o) = self.open.as_mut() else {
            return Err(coded(
                ErrorCode::UnexpectedFrame,
                "FileData without a file entry before it",
            ));
        };
        let shown = entry::display(&o.entry.path);
        let bytes = if compressed {
            // At most a piece's size comes out, whatever the input says.
            self.unzstd
                .decompress(&payload, entry::FILE_CHUNK)
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

    pub(super) fn end(&mut self, hash: [u8; 32]) -> Result<()> {
        let Some(o) = self.open.take() else {
            return Err(coded(
                ErrorCode::UnexpectedFrame,
                "FileEnd without a file entry before it",
            ));
        };
        let e = &o.entry;
        let shown = entry::display(&e.path);
        if o.hash.finish(e.size) != hash {
            return Err(coded(
                ErrorCode::ChunkHashMismatch,
                format!("the content of `{shown}` does not match its hash"),
            ));
        }
        let wrap = |r: rustix::io::Result<()>, what: &str| setting(r, what, &shown);
        // The length last: what was not written is a hole.
        wrap(rustix::fs::ftruncate(&o.file, e.size), "length")?;
        self.metadata_fd(&o.file, e)?;
        wrap(rustix::fs::futimens(&o.file, &times(e)), "times")?;
        drop(o.file);
        self.place(&e.path, &o.staged)?;
        self.done(&o.entry, hash);
        Ok(())
    }
}
