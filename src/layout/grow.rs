//! `grow`: after a block copy onto a larger disk, move the GPT backup to
//! the new end, extend the last partition when it holds a growable file
//! system, and grow that file system.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

use super::desc::{rest_end, Extent, FsType, TableType, SECTOR};
use super::devices::{disk_size, AttachedDisk};
use super::mount::MountGuard;
use super::safety::{check_target, Safety};
use super::{mkfs, table};
use crate::cmd::Cmd;

/// What `grow` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrowReport {
    pub disk: PathBuf,
    pub disk_size: u64,
    pub table: TableType,
    /// The GPT backup header moved from this LBA to the disk's last one.
    pub gpt_backup_moved_from: Option<u64>,
    /// The grown partition: number, old and new length in bytes.
    pub partition: Option<GrownPartition>,
    /// Why the last partition was left as it was.
    pub skipped: Option<String>,
    /// The grown partition's LVM physical volume and the volume that took
    /// its new extents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lvm: Option<super::lvm::grow::LvmGrowReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrownPartition {
    pub number: usize,
    pub fs: String,
    pub old_len: u64,
    pub new_len: u64,
}

/// Grow the disk at `target` (image file or block device) into its full
/// size. Safe to run again: a disk already grown is left as it is.
pub fn grow(target: &Path, safety: Safety) -> Result<GrowReport> {
    check_target(target, safety)?;
    let size = disk_size(target)?;
    let t = table::read(target)?;
    let mut report = GrowReport {
        disk: target.to_owned(),
        disk_size: size,
        table: t.kind,
        gpt_backup_moved_from: None,
        partition: None,
        skipped: None,
        lvm: None,
    };
    let new_end = rest_end(t.kind, size);
    let grow_part = match growable_last(target, &t, new_end)? {
        Ok(g) => Some(g),
        Err(why) => {
            report.skipped = Some(why);
            None
        }
    };
    let new_extents: Vec<Extent> = t
        .entries
        .iter()
        .map(|e| match &grow_part {
            Some((g, _)) if g.number == e.number => Extent {
                start: e.extent.start,
                len: new_end - e.extent.start,
            },
            _ => e.extent,
        })
        .collect();
    match t.kind {
        TableType::Gpt => {
            let last_lba = size / SECTOR - 1;
            if t.gpt_backup_lba != Some(last_lba) || grow_part.is_some() {
                report.gpt_backup_moved_from = t.gpt_backup_lba.filter(|b| *b != last_lba);
                rewrite_gpt(target, grow_part.as_ref().map(|(e, _)| (e.number, new_end)))?;
            }
        }
        TableType::Mbr => {
            if let Some((e, _)) = &grow_part {
                rewrite_mbr(target, e.number, new_end)?;
            }
        }
    }
    if let Some((e, fs)) = grow_part {
        report.lvm = grow_contents(target, &t, &new_extents, &e, &fs)?;
        report.partition = Some(GrownPartition {
            number: e.number,
            fs: fs.to_string(),
            old_len: e.extent.len,
            new_len: new_end - e.extent.start,
        });
    }
    tracing::info!(?report, "grow done");
    Ok(report)
}

/// The last partition when it can grow to `new_end`, with what it holds;
/// Ok(Err(why)) when it cannot (nothing is changed then). A PV whose
/// partition already reaches the end may still wait for its volume to
/// grow (a run stopped midway).
fn growable_last(
    target: &Path,
    t: &table::Table,
    new_end: u64,
) -> Result<std::result::Result<(table::TableEntry, FsType), String>> {
    let Some(e) = t.entries.iter().max_by_key(|e| e.extent.end()).cloned() else {
        return Ok(Err("the disk has no partitions".into()));
    };
    let probe = mkfs::probe(target, e.extent)?;
    let n = e.number;
    Ok(if t.kind == TableType::Mbr && n > 4 {
        Err(format!(
            "partition {n} is a logical MBR partition, which ferry does not grow"
        ))
    } else if !probe.kind.growable() && !probe.kind.is_lvm_pv() {
        Err(format!(
            "partition {n} holds {}, which ferry does not grow",
            probe.kind
        ))
    } else if new_end <= e.extent.end() && !probe.kind.is_lvm_pv() {
        Err(format!("partition {n} already reaches the end"))
    } else if new_end < e.extent.end() {
        Err(format!("partition {n} reaches beyond the end"))
    } else {
        Ok((e, probe.kind))
    })
}

/// Grow what the grown partition `e` holds into it: its file system
/// `fs`, or the LVM physical volume and a volume on it (its report).
fn grow_contents(
    target: &Path,
    t: &table::Table,
    new_extents: &[Extent],
    e: &table::TableEntry,
    fs: &FsType,
) -> Result<Option<super::lvm::grow::LvmGrowReport>> {
    let numbers: Vec<usize> = t.entries.iter().map(|x| x.number).collect();
    let index = numbers
        .iter()
        .position(|n| *n == e.number)
        .ok_or_else(|| anyhow!("partition {} vanished", e.number))?;
    let is_block = std::fs::metadata(target)
        .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
        .unwrap_or(false);
    let numbered: Vec<(usize, Extent)> = numbers
        .iter()
        .copied()
        .zip(new_extents.iter().copied())
        .collect();
    let attached = AttachedDisk::attach(target, &numbered, is_block)?;
    let node = attached.partitions()[index].clone();
    let res = if fs.is_lvm_pv() {
        let extent = new_extents[index];
        grow_lvm(target, &node, extent).map(Some)
    } else {
        grow_fs(&node, fs).map(|()| None)
    };
    let closed = attached.close();
    let lvm = res.with_context(|| {
        format!(
            "growing {fs} on partition {} of {}",
            e.number,
            target.display()
        )
    })?;
    closed?;
    Ok(lvm)
}

fn open_rw(target: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(target)
        .with_context(|| format!("opening {} for writing", target.display()))
}

/// Rewrite both GPT headers for the disk's current size (backup header and
/// array at the end), optionally ending partition `grow.0` at byte
/// `grow.1`, and widen the protective MBR, keeping its boot code.
///
/// Done on the raw structures rather than through the `gpt` crate: the
/// crate writes entries back compacted, which would renumber a cloud
/// image's partitions 14 and 15 and break the migrated system's references
/// to them.
fn rewrite_gpt(target: &Path, grow: Option<(usize, u64)>) -> Result<()> {
    let f = open_rw(target)?;
    let sectors = disk_size(target)? / SECTOR;
    let mut hdr = [0u8; 512];
    f.read_exact_at(&mut hdr, SECTOR)
        .with_context(|| format!("reading the GPT header of {}", target.display()))?;
    if &hdr[..8] != b"EFI PART" {
        anyhow::bail!("{} has no valid primary GPT header", target.display());
    }
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let header_size = (u32_at(&hdr, 12) as usize).clamp(92, 512);
    let old_backup = u64_at(&hdr, 32);
    let part_start = u64_at(&hdr, 72);
    let num = u64::from(u32_at(&hdr, 80));
    let esize = u64::from(u32_at(&hdr, 84));
    if esize < 128 || num == 0 || num * esize > 1024 * 1024 {
        anyhow::bail!(
            "{}: unusual GPT entry array ({num} x {esize} bytes)",
            target.display()
        );
    }
    let mut array = vec![0u8; (num * esize) as usize];
    f.read_exact_at(&mut array, part_start * SECTOR)
        .with_context(|| format!("reading the GPT entries of {}", target.display()))?;
    if let Some((n, end)) = grow {
        let o = ((n as u64 - 1) * esize) as usize;
        array[o + 40..o + 48].copy_from_slice(&(end / SECTOR - 1).to_le_bytes());
    }
    let array_sectors = (num * esize).div_ceil(SECTOR);
    let backup_lba = sectors - 1;
    let backup_array = backup_lba - array_sectors;
    let last_usable = backup_array - 1;
    let parts_crc = crc32(&array);
    let seal = |h: &mut [u8; 512], current: u64, other: u64, entries: u64| {
        h[24..32].copy_from_slice(&current.to_le_bytes());
        h[32..40].copy_from_slice(&other.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable.to_le_bytes());
        h[72..80].copy_from_slice(&entries.to_le_bytes());
        h[88..92].copy_from_slice(&parts_crc.to_le_bytes());
        h[16..20].copy_from_slice(&[0; 4]);
        let c = crc32(&h[..header_size]);
        h[16..20].copy_from_slice(&c.to_le_bytes());
    };
    let mut primary = hdr;
    seal(&mut primary, 1, backup_lba, part_start);
    let mut backup = hdr;
    seal(&mut backup, backup_lba, 1, backup_array);
    // Backup first: until the primary is written, the old primary and its
    // old backup still describe the disk.
    f.write_all_at(&array, backup_array * SECTOR)
        .and_then(|()| f.write_all_at(&backup, backup_lba * SECTOR))
        .and_then(|()| f.sync_all())
        .and_then(|()| f.write_all_at(&array, part_start * SECTOR))
        .and_then(|()| f.write_all_at(&primary, SECTOR))
        .with_context(|| format!("writing the GPT of {}", target.display()))?;
    if old_backup != backup_lba && old_backup > 1 && old_backup < backup_array {
        // A stale header in the middle of the disk confuses recovery tools.
        f.write_all_at(&[0u8; 512], old_backup * SECTOR)
            .with_context(|| format!("clearing the old backup GPT of {}", target.display()))?;
    }
    let mut mbr = [0u8; 512];
    f.read_exact_at(&mut mbr, 0)
        .with_context(|| format!("reading the protective MBR of {}", target.display()))?;
    for i in 0..4 {
        let o = 446 + i * 16;
        if mbr[o + 4] == 0xee {
            let len = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
            mbr[o + 12..o + 16].copy_from_slice(&len.to_le_bytes());
        }
    }
    f.write_all_at(&mbr, 0)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing the protective MBR of {}", target.display()))?;
    Ok(())
}

/// CRC-32 (IEEE), as GPT uses it.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in data {
        c ^= u32::from(*b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn rewrite_mbr(target: &Path, number: usize, end: u64) -> Result<()> {
    let mut f = open_rw(target)?;
    let mut mbr = mbrman::MBR::read_from(&mut f, SECTOR as u32)
        .with_context(|| format!("reading the MBR of {}", target.display()))?;
    let start = mbr[number].starting_lba;
    mbr[number].sectors = u32::try_from(end / SECTOR - u64::from(start))
        .with_context(|| format!("partition {number} would exceed MBR's 2 TiB"))?;
    mbr.write_into(&mut f)
        .and_then(|()| f.sync_all().map_err(Into::into))
        .with_context(|| format!("writing the MBR of {}", target.display()))?;
    Ok(())
}

/// The PV on partition `extent` of `target` (reached as `node`) resized,
/// the system's volume extended and its file system grown.
fn grow_lvm(target: &Path, node: &Path, extent: Extent) -> Result<super::lvm::grow::LvmGrowReport> {
    use super::lvm;
    let described = super::read::read(target)?;
    let layout = super::desc::Layout {
        disks: vec![described],
        volumes: Vec::new(),
    };
    let volumes = lvm::volumes_of(&layout, &[target.to_owned()])?;
    let (report, grown) = lvm::grow::grow_pv(
        target,
        node,
        extent,
        &|vols| lvm::grow::system_volume(target, extent.start, vols),
        &volumes,
    )?;
    if let Some(v) = grown {
        let lo = lvm::LvNode::attach(target, extent.start, &v, false)?;
        let res = grow_fs(lo.path(), &v.fs.kind)
            .with_context(|| format!("growing {} on logical volume {}", v.fs.kind, v.display()));
        let closed = lo.close();
        res?;
        closed?;
    }
    Ok(report)
}

fn grow_fs(node: &Path, fs: &FsType) -> Result<()> {
    match fs {
        FsType::Ext4 | FsType::Ext3 | FsType::Ext2 => {
            // resize2fs insists on a freshly checked file system offline;
            // -p repairs only what is safe without asking (exit 1 = fixed).
            let (status, out) = Cmd::new("e2fsck").args(["-f", "-p"]).arg(node).output()?;
            if !matches!(status.code(), Some(0) | Some(1)) {
                anyhow::bail!(
                    "e2fsck -f -p {} found problems it cannot fix alone ({status}): {}",
                    node.display(),
                    String::from_utf8_lossy(&out.stdout).trim()
                );
            }
            Cmd::new("resize2fs").arg(node).run()?;
            Ok(())
        }
        FsType::Xfs => {
            // xfs grows only while mounted.
            let dir = tempfile::Builder::new()
                .prefix("ferry-grow-")
                .tempdir()
                .context("making a mount point for xfs_growfs")?;
            let m = MountGuard::mount(
                &node.to_string_lossy(),
                dir.path(),
                "xfs",
                nix::mount::MsFlags::empty(),
                None,
            )?;
            let res = Cmd::new("xfs_growfs").arg(dir.path()).run();
            if let Err(e) = m.close() {
                // Never let the temporary directory's cleanup walk into a
                // file system that is still mounted there.
                std::mem::forget(dir);
                return Err(e);
            }
            res.map(|_| ())
        }
        FsType::Btrfs => {
            // btrfs, like xfs, grows only while mounted.
            let dir = tempfile::Builder::new()
                .prefix("ferry-grow-")
                .tempdir()
                .context("making a mount point for btrfs filesystem resize")?;
            let m = MountGuard::mount(
                &node.to_string_lossy(),
                dir.path(),
                "btrfs",
                nix::mount::MsFlags::empty(),
                None,
            )?;
            let res = Cmd::new("btrfs")
                .args(["filesystem", "resize", "max"])
                .arg(dir.path())
                .run();
            if let Err(e) = m.close() {
                std::mem::forget(dir);
                return Err(e);
            }
            res.map(|_| ())
        }
        ntfs if ntfs.is_ntfs() => super::ntfs::resize(node),
        other => Err(anyhow!("{other} is not grown")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(super::crc32(b"123456789"), 0xcbf4_3926);
    }
}
