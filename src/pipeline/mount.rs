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
pub const SYSTEM_MOUNTS: &[&str] = &["/", "/boot", "/boot/efi", "/usr", "/var"];

/// The mounted system.
pub struct Mounted {
    pub tree: MountTree,
    /// Every mount point of the fstab, the unmounted ones too.
    pub full: layout::Layout,
    /// What was mounted: `full` less the data file systems.
    pub mounted: layout::Layout,
}

pub fn system(targets: &[Target], staging: &Path) -> Result<Mounted> {
    let paths: Vec<PathBuf> = targets.iter().map(|t| t.path.clone()).collect();
    let names: Vec<Vec<String>> = targets.iter().map(|t| t.names.clone()).collect();
    layout::tree::clean_leftovers(staging, &paths)
        .context("cleaning up after an interrupted run")?;
    let mut full = layout::read_all(&paths)
        .context("reading the received disks")
        .code(ErrorCode::SystemNotFound)?;
    layout::tree::fill_mount_points_named(&mut full, &paths, &names)
        .code(ErrorCode::SystemNotFound)?;
    let mut mounted = full.clone();
    for p in mounted
        .disks
        .iter_mut()
        .flat_map(|d| d.partitions.iter_mut())
    {
        if p.mount
            .as_deref()
            .is_some_and(|m| !SYSTEM_MOUNTS.contains(&m))
        {
            p.mount = None;
        }
    }
    let tree = MountTree::mount(&mounted, &paths, staging, MountOptions::default())
        .code(ErrorCode::SystemNotFound)?;
    Ok(Mounted {
        tree,
        full,
        mounted,
    })
}
