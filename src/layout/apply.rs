//! `apply`: lay a described disk out on an image file or block device.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::Rng;

use super::desc::{
    fat_volume_id, fat_volume_id_string, plan, DiskLayout, FsType, Layout, TableType,
};
use super::devices::{disk_size, AttachedDisk};
use super::safety::{check_target, Safety};
use super::{mkfs, table};
use crate::job::errors::{coded, ErrorCode};

/// Fill in every id the description leaves open (disk id, partition GUIDs,
/// file system UUIDs) so that what `apply` returns is exactly what `read`
/// will find. FAT serials are spelled as blkid spells them.
pub fn resolve(disk: &DiskLayout) -> Result<DiskLayout> {
    let mut d = disk.clone();
    let mut rng = rand::thread_rng();
    let id = match (&d.id, d.table) {
        (Some(id), _) => id.to_ascii_lowercase(),
        (None, TableType::Gpt) => uuid::Uuid::new_v4().to_string(),
        (None, TableType::Mbr) => format!("{:08x}", rng.gen_range(1..=u32::MAX)),
    };
    d.id = Some(id.clone());
    for (i, p) in d.partitions.iter_mut().enumerate() {
        let n = i + 1;
        match d.table {
            TableType::Gpt => {
                p.partuuid = Some(
                    p.partuuid
                        .as_deref()
                        .map(str::to_ascii_lowercase)
                        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                );
            }
            TableType::Mbr => {
                let derived = format!("{id}-{n:02x}");
                if let Some(given) = &p.partuuid {
                    if !given.eq_ignore_ascii_case(&derived) {
                        bail!(coded(
                            ErrorCode::LayoutInvalid,
                            format!("partition {n}: an MBR partuuid is always <disk id>-<number> ({derived}), not {given}")
                        ));
                    }
                }
                p.partuuid = Some(derived);
            }
        }
        p.fs.uuid = match &p.fs.kind {
            FsType::Ext4
            | FsType::Ext3
            | FsType::Ext2
            | FsType::Xfs
            | FsType::Btrfs
            | FsType::Swap => Some(
                p.fs.uuid
                    .as_deref()
                    .map(str::to_ascii_lowercase)
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            ),
            FsType::Vfat => Some(fat_volume_id_string(match &p.fs.uuid {
                Some(u) => fat_volume_id(u)?,
                None => rng.gen(),
            })),
            FsType::None | FsType::Other(_) => {
                if p.fs.uuid.is_some() || p.fs.label.is_some() {
                    bail!(coded(
                        ErrorCode::LayoutInvalid,
                        format!(
                            "partition {n}: a uuid or label needs a file system (fs = \"none\")"
                        )
                    ));
                }
                None
            }
        };
    }
    Ok(d)
}

/// Lay `disk` out on `target`: partitions, then file systems, and the
/// partition table last so that an interrupted run never leaves a disk that
/// looks laid out but is not. Returns the resolved description.
pub fn apply(disk: &DiskLayout, target: &Path, safety: Safety) -> Result<DiskLayout> {
    disk.validate()?;
    if let Some((i, n)) = disk
        .numbers()
        .into_iter()
        .enumerate()
        .find(|(i, n)| *n != i + 1)
    {
        bail!(coded(
            ErrorCode::LayoutInvalid,
            format!("partition {} is numbered {n}; ferry lays out partitions numbered 1 to n (no logical MBR partitions)", i + 1)
        ));
    }
    check_target(target, safety)?;
    let size = disk_size(target)?;
    let extents =
        plan(disk, size).with_context(|| format!("placing the layout on {}", target.display()))?;
    let d = resolve(disk)?;
    let numbered: Vec<(usize, _)> = extents
        .iter()
        .copied()
        .enumerate()
        .map(|(i, e)| (i + 1, e))
        .collect();
    let attached = AttachedDisk::attach(target, &numbered, false)?;
    let made = (|| -> Result<()> {
        for (i, (p, node)) in d.partitions.iter().zip(attached.partitions()).enumerate() {
            mkfs::make(node, &p.fs).with_context(|| format!("partition {}", i + 1))?;
        }
        Ok(())
    })();
    let closed = attached.close();
    made.with_context(|| format!("making the file systems of {}", target.display()))?;
    closed?;
    table::write(target, &d, &extents)?;
    tracing::info!(target = %target.display(), partitions = d.partitions.len(), "layout applied");
    Ok(d)
}

/// Apply every disk of `layout` to the matching target.
pub fn apply_all(layout: &Layout, targets: &[PathBuf], safety: Safety) -> Result<Layout> {
    layout.validate_for(targets)?;
    let mut out = Layout::default();
    for (i, (d, t)) in layout.disks.iter().zip(targets).enumerate() {
        out.disks.push(
            apply(d, t, safety)
                .with_context(|| format!("laying out disk {i} on {}", t.display()))?,
        );
    }
    Ok(out)
}
