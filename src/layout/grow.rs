//! `grow`: after a block copy onto a larger disk, move the GPT backup to
//! the new end, extend the last partition when it holds a growable file
//! system, and grow that file system.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use gpt::disk::LogicalBlockSize;
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
    };
    let last = t.entries.iter().max_by_key(|e| e.extent.end()).cloned();
    let new_end = rest_end(t.kind, size);
    let mut grow_part = None;
    match &last {
        None => report.skipped = Some("the disk has no partitions".into()),
        Some(e) => {
            let probe = mkfs::probe(target, e.extent)?;
            if !probe.fs.growable() {
                report.skipped = Some(format!(
                    "partition {} holds {}, which ferry does not grow",
                    e.number, probe.fs
                ));
            } else if new_end <= e.extent.end() {
                report.skipped = Some(format!("partition {} already reaches the end", e.number));
            } else {
                grow_part = Some((e.clone(), probe.fs));
            }
        }
    }
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
        let numbers: Vec<usize> = t.entries.iter().map(|x| x.number).collect();
        let index = numbers
            .iter()
            .position(|n| *n == e.number)
            .ok_or_else(|| anyhow!("partition {} vanished", e.number))?;
        if numbers.iter().enumerate().any(|(i, n)| *n != i + 1) {
            // Nodes are named by position; a table with holes would need
            // gaps in BLKPG numbering too.
            return Err(anyhow!(
                "{} numbers its partitions {:?}; only tables numbered 1..n are grown",
                target.display(),
                numbers
            ));
        }
        let is_block = std::fs::metadata(target)
            .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
            .unwrap_or(false);
        let attached = AttachedDisk::attach(target, &new_extents, is_block)?;
        let node = attached.partitions()[index].clone();
        let res = grow_fs(&node, &fs);
        let closed = attached.close();
        res.with_context(|| {
            format!(
                "growing {fs} on partition {} of {}",
                e.number,
                target.display()
            )
        })?;
        closed?;
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

fn open_rw(target: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(target)
        .with_context(|| format!("opening {} for writing", target.display()))
}

/// Rewrite both GPT headers for the disk's current size (the crate places
/// the backup at the last LBA), optionally ending partition `grow.0` at
/// byte `grow.1`, and widen the protective MBR, keeping its boot code.
fn rewrite_gpt(target: &Path, grow: Option<(usize, u64)>) -> Result<()> {
    let f = open_rw(target)?;
    let mut g = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open_from_device(f)
        .with_context(|| format!("reading the GPT of {}", target.display()))?;
    let mut parts = g.partitions().clone();
    if let Some((n, end)) = grow {
        let p = parts
            .get_mut(&(n as u32))
            .ok_or_else(|| anyhow!("GPT entry {n} not found"))?;
        p.last_lba = end / SECTOR - 1;
    }
    g.update_partitions(parts)
        .with_context(|| format!("placing the GPT of {} at the new end", target.display()))?;
    let f = g
        .write()
        .with_context(|| format!("writing the GPT of {}", target.display()))?;
    let sectors = disk_size(target)? / SECTOR;
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

fn grow_fs(node: &Path, fs: &FsType) -> Result<()> {
    match fs {
        FsType::Ext4 | FsType::Ext3 => {
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
        other => Err(anyhow!("{other} is not grown")),
    }
}
