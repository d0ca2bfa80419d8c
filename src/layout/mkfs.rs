//! Making file systems with fixed UUIDs and labels, and probing them.
//!
//! ext3/ext4, xfs and swap are made by their own tools (their behaviour is
//! the spec); FAT is made in-process with `fatfs` because this kernel has no
//! vfat and an ESP must be written wherever ferry runs.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::desc::{fat_volume_id, Extent, FsSpec, FsType};
use crate::cmd::Cmd;

/// Bytes zeroed at the start of every partition before its file system is
/// made, so that no signature of an earlier one makes blkid ambiguous.
const WIPE: u64 = 1024 * 1024;

/// Make the file system `fs` describes on the node `node` (a partition or
/// a logical volume; uuid and label already resolved).
pub fn make(node: &Path, fs: &FsSpec) -> Result<()> {
    wipe_start(node)?;
    let uuid = fs.uuid.as_deref();
    let label = fs.label.as_deref();
    let need_uuid =
        || uuid.with_context(|| format!("the {} uuid must be resolved before mkfs", fs.kind));
    match &fs.kind {
        FsType::None => Ok(()),
        FsType::Ext4 | FsType::Ext3 | FsType::Ext2 => {
            let tool = match fs.kind {
                FsType::Ext4 => "mkfs.ext4",
                FsType::Ext3 => "mkfs.ext3",
                _ => "mkfs.ext2",
            };
            let mut c = Cmd::new(tool).args(["-F", "-q", "-U", need_uuid()?]);
            if let Some(l) = label {
                c = c.args(["-L", l]);
            }
            let (features, dropped) = settable_features(&fs.features);
            if !dropped.is_empty() {
                tracing::warn!(
                    "{}: the source's ext features {} are not made by this appliance's mke2fs; made without them",
                    node.display(),
                    dropped.join(",")
                );
            }
            if !features.is_empty() {
                // "none" first: exactly the source's features, not mke2fs's
                // defaults beside them (a newer default such as
                // metadata_csum_seed or orphan_file can make the file
                // system unreadable to the migrated system's older GRUB or
                // kernel).
                c = c.arg("-O").arg(format!("none,{}", features.join(",")));
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
    .with_context(|| format!("making {} on {}", fs.kind, node.display()))
}

/// ext2/3/4 features that this appliance's mke2fs (e2fsprogs 1.47) can
/// set when it makes a file system. The others of a source's list are
/// states (`needs_recovery`, `orphan_present`), need what a target has not
/// (`journal_dev`: an external journal), or are newer than it.
const SETTABLE_EXT_FEATURES: &[&str] = &[
    "64bit",
    "bigalloc",
    "casefold",
    "dir_index",
    "dir_nlink",
    "ea_inode",
    "encrypt",
    "extent",
    "extra_isize",
    "ext_attr",
    "filetype",
    "flex_bg",
    "has_journal",
    "huge_file",
    "inline_data",
    "large_dir",
    "large_file",
    "meta_bg",
    "metadata_csum",
    "metadata_csum_seed",
    "mmp",
    "orphan_file",
    "project",
    "quota",
    "resize_inode",
    "sparse_super",
    "sparse_super2",
    "stable_inodes",
    "uninit_bg",
    "verity",
];

/// The features of `wanted` that mke2fs can set, and those it cannot.
pub(crate) fn settable_features(wanted: &[String]) -> (Vec<String>, Vec<String>) {
    wanted
        .iter()
        .cloned()
        .partition(|f| SETTABLE_EXT_FEATURES.contains(&f.as_str()))
}

/// The "Filesystem features" of the ext2/3/4 file system at `spec` (a
/// node or image, or `FILE?offset=BYTES` for one inside an image), as
/// `dumpe2fs -h` names them.
pub fn ext_features(spec: &str) -> Result<Vec<String>> {
    let out = Cmd::new("dumpe2fs")
        .arg("-h")
        .arg(spec)
        .run()
        .with_context(|| format!("reading the ext superblock of {spec}"))?;
    Ok(parse_ext_features(&out.stdout_text()))
}

fn parse_ext_features(text: &str) -> Vec<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("Filesystem features:"))
        .map(|l| {
            l.split_whitespace()
                .filter(|f| *f != "(none)")
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
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

/// Probe the byte range `extent` of `disk` (image file or block device)
/// without any device node for the partition.
/// What blkid finds there: a file system's type, identity and (ext2/3/4)
/// features; no mount point, which only the migrated system's fstab tells.
pub fn probe(disk: &Path, extent: Extent) -> Result<FsSpec> {
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
        return Ok(FsSpec::default());
    }
    if !status.success() {
        bail!(
            "blkid failed on {} at byte {} ({status}): {}",
            disk.display(),
            extent.start,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut p = parse_export(&out.stdout_text());
    if matches!(p.kind, FsType::Ext2 | FsType::Ext3 | FsType::Ext4) {
        p.features = ext_features(&format!("{}?offset={}", disk.display(), extent.start))?;
    }
    Ok(p)
}

fn parse_export(text: &str) -> FsSpec {
    let mut p = FsSpec::default();
    for (k, v) in crate::devname::parse_blkid_export(text) {
        match k.as_str() {
            "TYPE" => p.kind = v.parse().unwrap_or(FsType::None),
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
            FsSpec {
                kind: FsType::Vfat,
                uuid: Some("ABCD-1234".into()),
                label: Some("my disk".into()),
                ..FsSpec::default()
            }
        );
    }

    #[test]
    fn ext_features_are_read_and_filtered() {
        let text = "dumpe2fs 1.47.0 (5-Feb-2023)\nFilesystem volume name:   boot\nFilesystem features:      has_journal ext_attr resize_inode dir_index filetype needs_recovery extent flex_bg sparse_super large_file huge_file dir_nlink extra_isize orphan_present future_thing\nInode size:\t          256\nJournal features:         (none)\n";
        let f = parse_ext_features(text);
        assert_eq!(f.len(), 15);
        assert_eq!(f[0], "has_journal");
        let (made, dropped) = settable_features(&f);
        assert_eq!(
            dropped,
            ["needs_recovery", "orphan_present", "future_thing"]
        );
        assert_eq!(made.len(), 12);
        assert!(!made.contains(&"needs_recovery".to_owned()));
        assert!(parse_ext_features("Filesystem features:      (none)\n").is_empty());
    }
}
