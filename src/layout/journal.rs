//! Replaying the journal a received file system may carry.
//!
//! A disk copied while its file systems were mounted (`ferry send
//! --consistency none`) is crash-consistent at best: ext4 says so with
//! `needs_recovery`, xfs with a log that holds changes. A frozen xfs, too,
//! has a covered log rather than a clean one (a freeze no longer writes an
//! unmount record). Each is replayed the way its own tools and kernel
//! driver do — `e2fsck -p` (the journal, then what preen mode fixes), a
//! mount and unmount of the xfs — and repaired when that is not enough
//! (`e2fsck -fy`; `xfs_repair -L`, which gives up the log's changes), so
//! that the checks before the handoff find them clean.

use std::path::Path;

use anyhow::{Context, Result};
use nix::mount::MsFlags;
use serde::Serialize;

use super::mount::MountGuard;
use super::FsType;
use crate::cmd::Cmd;

/// What was done to one file system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recovery {
    pub node: String,
    pub fs: String,
    /// "journal replayed", "journal replayed and repaired (e2fsck -fy)", ...
    pub action: String,
}

/// Does the file system on `node` carry a journal to replay?
pub fn dirty(node: &Path, fs: &FsType) -> Result<bool> {
    match fs {
        FsType::Ext4 | FsType::Ext3 => {
            let features = super::mkfs::ext_features(&node.to_string_lossy())?;
            Ok(features.iter().any(|f| f == "needs_recovery"))
        }
        FsType::Xfs => {
            let (_, out) = xfs_check(node).output()?;
            Ok(String::from_utf8_lossy(&out.stderr).contains("metadata changes in a log"))
        }
        _ => Ok(false),
    }
}

fn xfs_check(node: &Path) -> Cmd {
    let cmd = Cmd::new("xfs_repair").arg("-n");
    // An image file needs -f; a device node must not have it.
    if node.is_file() {
        cmd.arg("-f").arg(node)
    } else {
        cmd.arg(node)
    }
}

/// Replay the journal of the file system on `node` if it has one to
/// replay; `scratch` is an empty directory to mount an xfs on.
pub fn recover(node: &Path, fs: &FsType, scratch: &Path) -> Result<Option<Recovery>> {
    if !dirty(node, fs).with_context(|| format!("reading the journal of {}", node.display()))? {
        return Ok(None);
    }
    let action = match fs {
        FsType::Ext4 | FsType::Ext3 => recover_ext(node)?,
        FsType::Xfs => recover_xfs(node, scratch)?,
        _ => return Ok(None),
    };
    tracing::warn!(node = %node.display(), %action, "a received file system carried a journal to replay");
    Ok(Some(Recovery {
        node: node.display().to_string(),
        fs: fs.as_str().to_owned(),
        action,
    }))
}

/// e2fsck's exit status: 0 clean, 1 fixed, 2 fixed (reboot), 4 and up not.
fn recover_ext(node: &Path) -> Result<String> {
    let preen = Cmd::new("e2fsck").arg("-p").arg(node);
    let (status, _) = preen.output()?;
    if status.code().is_some_and(|c| c < 4) {
        return Ok("journal replayed (e2fsck -p)".to_owned());
    }
    let repair = Cmd::new("e2fsck").arg("-fy").arg(node);
    let (status, out) = repair.output()?;
    match status.code() {
        Some(c) if c < 4 => {
            Ok("journal replayed and the file system repaired (e2fsck -fy)".to_owned())
        }
        _ => anyhow::bail!(
            "`{}` could not repair it ({status}): {}",
            repair.display(),
            String::from_utf8_lossy(&out.stdout).trim()
        ),
    }
}

fn recover_xfs(node: &Path, scratch: &Path) -> Result<String> {
    std::fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let source = node.to_string_lossy();
    // nouuid: the source's twin may be mounted on the same machine.
    match MountGuard::mount(&source, scratch, "xfs", MsFlags::empty(), Some("nouuid")) {
        Ok(guard) => {
            guard.close()?;
            if !dirty(node, &FsType::Xfs)? {
                return Ok("log replayed (mounted once)".to_owned());
            }
        }
        Err(e) => tracing::warn!("mounting {source} to replay its log: {e:#}"),
    }
    // The log cannot be replayed: give its changes up, and repair.
    let cmd = Cmd::new("xfs_repair").arg("-L");
    let cmd = if node.is_file() {
        cmd.arg("-f").arg(node)
    } else {
        cmd.arg(node)
    };
    cmd.run()?;
    Ok("log could not be replayed: zeroed and the file system repaired (xfs_repair -L)".to_owned())
}
