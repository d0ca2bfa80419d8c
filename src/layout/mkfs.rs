//! Making file systems with fixed UUIDs and labels, and probing them.
//!
//! ext3/ext4, xfs and swap are made by their own tools (their behaviour is
//! the spec); FAT is made in-process with `fatfs` because this kernel has no
//! vfat and an ESP must be written wherever ferry runs.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::desc::{fat_volume_id, Extent, FsType, PartitionLayout};
use crate::cmd::Cmd;

/// Bytes zeroed at the start of every partition before its file system is
/// made, so that no signature of an earlier one makes blkid ambiguous.
const WIPE: u64 = 1024 * 1024;

/// Make the file system `p` asks for on partition node `node` (uuid and
/// label already resolved).
pub fn make(node: &Path, p: &PartitionLayout) -> Result<()> {
    wipe_start(node)?;
    let uuid = p.uuid.as_deref();
    let label = p.label.as_deref();
    let need_uuid =
        || uuid.with_context(|| format!("the {} uuid must be resolved before mkfs", p.fs));
    match &p.fs {
        FsType::None => Ok(()),
        FsType::Ext4 | FsType::Ext3 | FsType::Ext2 => {
            let tool = match p.fs {
                FsType::Ext4 => "mkfs.ext4",
                FsType::Ext3 => "mkfs.ext3",
                _ => "mkfs.ext2",
            };
            let mut c = Cmd::new(tool).args(["-F", "-q", "-U", need_uuid()?]);
            if let Some(l) = label {
                c = c.args(["-L", l]);
            }
            c.arg(node).run().map(|_| ())
        }
        FsType::Xfs => {
            let mut c = Cmd::new("mkfs.xfs")
                .args(["-f", "-q", "-m"])
                .arg(format!("uuid={}", need_uuid()?));
            if let Some(l) = label {
                c = c.args(["-L", l]);
            }
            c.arg(node).run().map(|_| ())
        }
        FsType::Btrfs => {
            let mut c = Cmd::new("mkfs.btrfs").args(["-f", "-q", "-U", need_uuid()?]);
            if let Some(l) = label {
                c = c.args(["-L", l]);
            }
            c.arg(node).run().map(|_| ())
        }
        FsType::Swap => {
            let mut c = Cmd::new("mkswap").args(["-f", "-U", need_uuid()?]);
            if let Some(l) = label {
                c = c.args(["-L", l]);
            }
            c.arg(node).run().map(|_| ())
        }
        FsType::Vfat => make_fat(node, need_uuid()?, label),
        FsType::Other(o) => bail!(crate::job::errors::coded(
            crate::job::errors::ErrorCode::LayoutInvalid,
            format!(
                "ferry cannot make a {o} file system (it makes ext4, ext3, ext2, xfs, btrfs, vfat and swap)"
            )
        )),
    }
    .with_context(|| format!("making {} on {}", p.fs, node.display()))
}

fn wipe_start(node: &Path) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(node)
        .with_context(|| format!("opening {}", node.display()))?;
    let len = f.seek(SeekFrom::End(0))?.min(WIPE);
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&vec![0u8; len as usize])
        .and_then(|()| f.sync_all())
        .with_context(|| format!("wiping the start of {}", node.display()))
}

fn make_fat(node: &Path, uuid: &str, label: Option<&str>) -> Result<()> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(node)
        .with_context(|| format!("opening {}", node.display()))?;
    let mut opts = fatfs::FormatVolumeOptions::new().volume_id(fat_volume_id(uuid)?);
    if let Some(l) = label {
        let mut b = [b' '; 11];
        b[..l.len()].copy_from_slice(l.as_bytes());
        opts = opts.volume_label(b);
    }
    let mut f = f;
    fatfs::format_volume(&mut f, opts).context("formatting FAT")?;
    f.sync_all().context("flushing FAT")?;
    Ok(())
}

/// What blkid finds in a partition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Probe {
    pub fs: FsType,
    pub uuid: Option<String>,
    pub label: Option<String>,
}

/// Probe the byte range `extent` of `disk` (image file or block device)
/// without any device node for the partition.
pub fn probe(disk: &Path, extent: Extent) -> Result<Probe> {
    let (status, out) = Cmd::new("blkid")
        .args(["-p", "-o", "export", "-O"])
        .arg(extent.start.to_string())
        .arg("-S")
        .arg(extent.len.to_string())
        .arg(disk)
        .output()
        .with_context(|| format!("probing {} at byte {}", disk.display(), extent.start))?;
    // blkid exits 2 when it finds nothing to report.
    if status.code() == Some(2) {
        return Ok(Probe::default());
    }
    if !status.success() {
        bail!(
            "blkid failed on {} at byte {} ({status}): {}",
            disk.display(),
            extent.start,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(parse_export(&out.stdout_text()))
}

fn parse_export(text: &str) -> Probe {
    let mut p = Probe::default();
    for (k, v) in crate::devname::parse_blkid_export(text) {
        match k.as_str() {
            "TYPE" => p.fs = v.parse().unwrap_or(FsType::None),
            "UUID" => p.uuid = Some(v),
            "LABEL" => p.label = Some(v),
            _ => {}
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_is_parsed() {
        let p = parse_export(
            "DEVNAME=x\nUUID=ABCD-1234\nLABEL=my\\ disk\nTYPE=vfat\nUSAGE=filesystem\n",
        );
        assert_eq!(
            p,
            Probe {
                fs: FsType::Vfat,
                uuid: Some("ABCD-1234".into()),
                label: Some("my disk".into())
            }
        );
    }
}
