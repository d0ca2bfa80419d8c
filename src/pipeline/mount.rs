//! Mount: the received system's own file systems, under the staging
//! directory, with the mount points from its fstab and the device names the
//! source knew its disks by. Data file systems are not mounted, so they stay
//! exactly as they arrived.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Target;
use crate::job::errors::{Code, ErrorCode};
use crate::layout::{self, MountOptions, MountTree};

/// The mount points of the system itself, which the repair reads and writes.
pub(crate) const SYSTEM_MOUNTS: &[&str] = &["/", "/boot", "/boot/efi", "/usr", "/var"];

/// The mounted system.
pub struct Mounted {
    pub tree: MountTree,
    /// Every mount point of the fstab, the unmounted ones too.
    pub full: layout::Layout,
    /// What was mounted: `full` less the data file systems.
    pub mounted: layout::Layout,
}

pub fn system(
    targets: &[Target],
    staging: &Path,
    renamed: &[layout::flatten::Renamed],
) -> Result<Mounted> {
    let paths: Vec<PathBuf> = targets.iter().map(|t| t.path.clone()).collect();
    let names: Vec<Vec<String>> = targets.iter().map(|t| t.names.clone()).collect();
    layout::tree::clean_leftovers(staging, &paths)
        .context("cleaning up after an interrupted run")?;
    let mut full = layout::read_all(&paths)
        .context("reading the received disks")
        .code(ErrorCode::SystemNotFound)?;
    layout::tree::fill_mount_points_renamed(&mut full, &paths, &names, renamed)
        .code(ErrorCode::SystemNotFound)?;
    let mut mounted = full.clone();
    mounted.keep_mounts(|m| SYSTEM_MOUNTS.contains(&m));
    let tree = MountTree::mount(&mounted, &paths, staging, MountOptions::default())
        .code(ErrorCode::SystemNotFound)?;
    Ok(Mounted {
        tree,
        full,
        mounted,
    })
}

/// A received file system whose journal was replayed, and where it lies.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replayed {
    pub disk: u32,
    pub partition: usize,
    /// The logical volume (`vg/lv`) on that partition holding it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    #[serde(flatten)]
    pub recovery: layout::journal::Recovery,
    /// Its bytes on the disk, which the ledger must learn again.
    #[serde(skip)]
    pub range: (u64, u64),
}

/// Replay the journal of every ext4 and xfs of the received disks that
/// carries one (a disk sent with `--consistency none`, or a frozen xfs's
/// covered log), on a partition or on a linear logical volume, before
/// anything else reads, grows or mounts them.
pub fn replay_journals(targets: &[Target], scratch: &Path) -> Result<Vec<Replayed>> {
    let paths: Vec<PathBuf> = targets.iter().map(|t| t.path.clone()).collect();
    let described = layout::read_all(&paths).context("reading the received disks")?;
    let mut replayed = Vec::new();
    for ((d, path), t) in described.disks.iter().zip(&paths).zip(targets) {
        let size = layout::devices::disk_size(path)
            .with_context(|| format!("reading the size of {}", path.display()))?;
        let extents = layout::desc::plan(d, size)
            .with_context(|| format!("placing the partitions of {}", path.display()))?;
        let numbered: Vec<(usize, _)> = d.numbers().into_iter().zip(extents.clone()).collect();
        let attached = layout::devices::AttachedDisk::attach(path, &numbered, false)?;
        let mut failure = None;
        for (pi, (p, node)) in d.partitions.iter().zip(attached.partitions()).enumerate() {
            if !matches!(
                p.fs.kind,
                layout::FsType::Ext4 | layout::FsType::Ext3 | layout::FsType::Xfs
            ) {
                continue;
            }
            match layout::journal::recover(node, &p.fs.kind, scratch).with_context(|| {
                format!(
                    "replaying the journal of {} on disk {} ({})",
                    p.fs.kind,
                    t.index,
                    node.display()
                )
            }) {
                Ok(Some(recovery)) => replayed.push(Replayed {
                    disk: t.index,
                    partition: pi + 1,
                    volume: None,
                    recovery,
                    range: (extents[pi].start, extents[pi].end()),
                }),
                Ok(None) => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        attached.close()?;
        if let Some(e) = failure {
            return Err(e).code(ErrorCode::VerifyFailed);
        }
    }
    // The file systems on the guest's linear logical volumes, each through
    // a loop device over its extents.
    for v in &described.volumes {
        let Some(place) = v.place else { continue };
        let (Some(d), Some(path), Some(t)) = (
            described.disks.get(place.disk),
            paths.get(place.disk),
            targets.get(place.disk),
        ) else {
            continue;
        };
        if !matches!(
            v.fs.kind,
            layout::FsType::Ext4 | layout::FsType::Ext3 | layout::FsType::Xfs
        ) {
            continue;
        }
        let size = layout::devices::disk_size(path)
            .with_context(|| format!("reading the size of {}", path.display()))?;
        let start = layout::desc::plan(d, size)
            .with_context(|| format!("placing the partitions of {}", path.display()))?
            .get(place.partition)
            .map(|e| e.start)
            .with_context(|| format!("logical volume {} lies on no partition", v.display()))?;
        // Looked at read-only first: closing a loop that held the disk
        // open for writing makes udev rescan the disk's partitions, which
        // races with grow's; only a file system with a journal to replay
        // gets a writable one.
        let ro = layout::lvm::LvNode::attach(path, start, v, true)?;
        let dirty = layout::journal::dirty(ro.path(), &v.fs.kind);
        ro.close()?;
        if !dirty
            .with_context(|| format!("reading the journal of logical volume {}", v.display()))?
        {
            continue;
        }
        let lo = layout::lvm::LvNode::attach(path, start, v, false)?;
        let found = layout::journal::recover(lo.path(), &v.fs.kind, scratch).with_context(|| {
            format!(
                "replaying the journal of {} on logical volume {} of disk {}",
                v.fs.kind,
                v.display(),
                t.index
            )
        });
        lo.close()?;
        if let Some(recovery) = found.code(ErrorCode::VerifyFailed)? {
            let at = start + place.offset;
            replayed.push(Replayed {
                disk: t.index,
                partition: place.partition + 1,
                volume: Some(v.display()),
                recovery,
                range: (at, at + place.size),
            });
        }
    }
    Ok(replayed)
}
