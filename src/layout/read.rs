//! `read`: the description of an existing disk, from its partition table
//! and what blkid finds in each partition.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::desc::{
    align_up, rest_end, usable_range, DiskLayout, Layout, PartitionLayout, Size, ALIGN,
};
use super::devices::disk_size;
use super::{mkfs, table};

/// Describe the disk at `target` (image file or block device). Mount points
/// are not on a disk; [`super::tree::fill_mount_points`] finds them in the
/// root's fstab.
pub fn read(target: &Path) -> Result<DiskLayout> {
    flush_block_cache(target);
    let size = disk_size(target)?;
    let t = table::read(target)?;
    let rest = rest_end(t.kind, size);
    // The first partition's default start is the usable start aligned up.
    let mut cursor = usable_range(t.kind, size).0;
    let mut partitions = Vec::new();
    let n = t.entries.len();
    for (i, e) in t.entries.iter().enumerate() {
        let expected_start = align_up(cursor, ALIGN);
        let probe = mkfs::probe(target, e.extent)
            .with_context(|| format!("probing partition {} of {}", e.number, target.display()))?;
        partitions.push(PartitionLayout {
            size: if i + 1 == n && e.extent.end() == rest {
                Size::Rest
            } else {
                Size::Bytes(e.extent.len)
            },
            start: (e.extent.start != expected_start).then_some(Size::Bytes(e.extent.start)),
            kind: e.kind.clone(),
            fs: probe,
            partuuid: Some(e.partuuid.clone()),
            name: e.name.clone(),
            number: (e.number != i + 1).then_some(e.number),
            bootable: e.bootable,
        });
        cursor = e.extent.end();
    }
    Ok(DiskLayout {
        table: t.kind,
        id: Some(t.id),
        partitions,
    })
}

/// Describe every disk in `targets`, and the logical volumes of the LVM
/// physical volumes among their partitions.
pub fn read_all(targets: &[PathBuf]) -> Result<Layout> {
    let mut l = Layout::default();
    for t in targets {
        l.disks
            .push(read(t).with_context(|| format!("reading the layout of {}", t.display()))?);
    }
    l.volumes =
        super::lvm::volumes_of(&l, targets).context("reading the LVM metadata of the disks")?;
    Ok(l)
}

/// Drop a block device's cached pages: partitions were written through
/// their own nodes, whose caches are not the whole disk's.
fn flush_block_cache(target: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::metadata(target).is_ok_and(|m| m.file_type().is_block_device()) {
        if let Err(e) = crate::cmd::Cmd::new("blockdev")
            .arg("--flushbufs")
            .arg(target)
            .run()
        {
            tracing::debug!("flushing the cache of {}: {e:#}", target.display());
        }
    }
}
