//! Undoing a mistake without `rm -rf`: a disk announced wrongly is reset
//! (its ledger entries forgotten and, in embedded mode, its image removed),
//! and a deleted job starts over as a fresh Ready job. The token, the
//! control token and the TLS identity the sender pinned stay.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::Appliance;
use crate::job::errors::{coded, Code, ErrorCode};
use crate::job::state::{JobStatus, StateChange};

/// What the control API asks of the appliance beyond the job record.
pub(crate) trait Resets: Send + Sync {
    /// Forget disk `index`: its ledger record and chunks, and in embedded
    /// mode its image. Refused while a round runs or a sender writes it.
    fn reset_disk(&self, index: u32) -> Result<()>;
    /// A Deleting job: forget every disk, then start over as a fresh job.
    fn finish_delete(&self) -> Result<StateChange>;
}

impl Resets for Arc<Appliance> {
    fn reset_disk(&self, index: u32) -> Result<()> {
        if self
            .ledger
            .disk(index)
            .code(ErrorCode::LedgerFailed)?
            .is_none()
            && !self.job.snapshot().disks.iter().any(|d| d.index == index)
        {
            return Err(coded(
                ErrorCode::DiskNotConfigured,
                format!("the job has no disk {index} to reset"),
            ));
        }
        let _held = self.claims.hold(index).ok_or_else(|| {
            coded(
                ErrorCode::DiskBusy,
                format!("disk {index}: a sender is writing it; stop the job first"),
            )
        })?;
        self.job
            .forget_disk(index)
            .with_context(|| format!("resetting disk {index}"))?;
        forget(self, index)?;
        tracing::warn!(
            disk = index,
            "disk reset: the next sender sends it from the start"
        );
        Ok(())
    }

    fn finish_delete(&self) -> Result<StateChange> {
        anyhow::ensure!(
            self.job.status() == JobStatus::Deleting,
            "the job is {}, not Deleting",
            self.job.status()
        );
        let disks = self.ledger.disks().code(ErrorCode::LedgerFailed)?;
        let mut held = Vec::new();
        for (index, _) in &disks {
            held.push(self.claims.hold(*index).ok_or_else(|| {
                coded(
                    ErrorCode::DiskBusy,
                    format!("disk {index} is still being written; the deletion is finished at the next start"),
                )
            })?);
        }
        let trees = self.ledger.trees().code(ErrorCode::LedgerFailed)?;
        for tree in &trees {
            held.push(self.claims.hold(super::data::tree::TREE_CLAIM | tree).ok_or_else(|| {
                coded(
                    ErrorCode::DiskBusy,
                    format!("tree {tree} is still being written; the deletion is finished at the next start"),
                )
            })?);
        }
        for (index, _) in disks {
            forget(self, index)?;
        }
        for tree in trees {
            forget_tree(self, tree)?;
        }
        // File mode's targets: laid out again by the next sender.
        if let Some(ft) = crate::pipeline::file_mode::FileTargets::load(&self.ledger)? {
            self.ledger
                .remove_meta(crate::pipeline::file_mode::META_KEY)
                .code(ErrorCode::LedgerFailed)?;
            if self.config.embedded() {
                for i in 0..ft.targets.len() {
                    remove_if_present(&self.config.embedded_disk_path(i as u32))?;
                }
            }
        }
        let manifest = crate::pipeline::handoff::manifest_path(&self.config.state_dir);
        remove_if_present(&manifest)?;
        // The control plane's network map and hooks were for the deleted
        // job's server.
        for file in [
            crate::pipeline::NETWORK_MAP_FILE,
            crate::pipeline::HOOKS_FILE,
        ] {
            remove_if_present(&self.config.state_dir.join(file))?;
        }
        let change = self.job.renew().context("starting the job over")?;
        tracing::warn!(job = %change.job_id, "the job was deleted: a fresh job starts, with the same token and TLS identity");
        Ok(change)
    }
}

fn forget(app: &Appliance, index: u32) -> Result<()> {
    app.ledger
        .forget_disk(index)
        .code(ErrorCode::LedgerFailed)?;
    if app.config.embedded() {
        remove_if_present(&app.config.embedded_disk_path(index))?;
    }
    Ok(())
}

/// Forget a tree's entries, then remove what was written of it (its own
/// directory under the state directory; never beneath a mount).
fn forget_tree(app: &Appliance, tree: u32) -> Result<()> {
    app.ledger.forget_tree(tree).code(ErrorCode::LedgerFailed)?;
    let root = app.config.tree_root(tree);
    if crate::layout::mount::is_mount_point(&root)? {
        return Err(coded(
            ErrorCode::TargetInUse,
            format!(
                "{} is a mount point: unmount it, then delete the job again",
                root.display()
            ),
        ));
    }
    match std::fs::remove_dir_all(&root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", root.display())),
    }
}

fn remove_if_present(path: &std::path::Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => crate::disk::sync_dir(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}
