//! Where the system lies: its file systems on LVM (from the fstab and the
//! mounted tree), and the free space the repair needs on / and /boot.

use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result};
use serde::Serialize;

use super::super::{CheckReport, Finding, Severity};
use super::{KernelReport, MIB, SYSTEM_MOUNTS};
use crate::job::errors::ErrorCode;
use crate::repair::tree::Tree;

#[derive(Debug, Clone, Serialize)]
pub struct LvmReport {
    /// The fstab's file systems on logical volumes.
    pub volumes: Vec<String>,
    pub supported: bool,
    pub why: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpaceReport {
    /// The mount points sharing the file system.
    pub mount: String,
    pub free_bytes: u64,
    pub free_inodes: u64,
    pub need_bytes: u64,
    pub need_inodes: u64,
}

/// Whether an fstab device spec names a logical volume.
fn on_lvm(spec: &str) -> bool {
    if let Some(name) = spec.strip_prefix("/dev/mapper/") {
        return !name.is_empty() && name != "control";
    }
    if spec.starts_with("/dev/dm-") {
        return true;
    }
    // /dev/VG/LV (not /dev/disk/by-*, /dev/md/...).
    let parts: Vec<&str> = spec
        .strip_prefix("/dev/")
        .map(|s| s.split('/').collect())
        .unwrap_or_default();
    parts.len() == 2 && !["disk", "md", "cciss", "mapper"].contains(&parts[0])
}

pub(super) fn lvm(tree: &Tree, r: &CheckReport) -> Result<LvmReport> {
    let fstab = tree.read("/etc/fstab")?.unwrap_or_default();
    let mut volumes = Vec::new();
    let mut system = Vec::new();
    for e in crate::devname::parse_fstab(&fstab) {
        let (spec, mp) = (e.spec, e.mountpoint);
        if on_lvm(&spec) {
            if SYSTEM_MOUNTS.contains(&mp.as_str()) {
                system.push(format!("{mp} on {spec}"));
            }
            volumes.push(format!("{mp} on {spec}"));
        }
    }
    // A mounted tree says where its system really is.
    for fs in &r.filesystems {
        let mp = fs.mount.as_deref().unwrap_or("");
        if SYSTEM_MOUNTS.contains(&mp)
            && (fs.device.starts_with("/dev/mapper/") || fs.device.starts_with("/dev/dm-"))
            && !system.iter().any(|s| s.starts_with(&format!("{mp} on")))
        {
            system.push(format!("{mp} on {}", fs.device));
            volumes.push(format!("{mp} on {}", fs.device));
        }
    }
    let (supported, why) = if !system.is_empty() {
        (
            true,
            format!(
                "the system is on logical volumes ({}): the appliance reads the LVM metadata and reaches linear volumes through loop devices; others are refused when the disks are checked",
                system.join(", ")
            ),
        )
    } else if !volumes.is_empty() {
        (
            true,
            "only data file systems are on LVM: they are copied block for block and not mounted"
                .to_owned(),
        )
    } else {
        (true, "no LVM in the fstab".to_owned())
    };
    Ok(LvmReport {
        volumes,
        supported,
        why,
    })
}

pub(super) fn space(
    tree: &Tree,
    kernels: &[KernelReport],
    f: &mut Vec<Finding>,
) -> Result<Vec<SpaceReport>> {
    // A new initramfs is written beside the old one before it replaces it.
    let largest = kernels
        .iter()
        .filter_map(|k| k.initramfs.as_deref())
        .filter_map(|p| tree.path(p).ok())
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0);
    let needs = [
        ("/", 64 * MIB, 1024),
        ("/boot", (largest + 16 * MIB).max(24 * MIB), 64),
    ];
    let mut out: Vec<(u64, SpaceReport)> = Vec::new();
    for (mp, bytes, inodes) in needs {
        let host = tree.path(mp)?;
        if !host.is_dir() {
            continue;
        }
        let dev = std::fs::metadata(&host)
            .with_context(|| format!("inspecting {}", host.display()))?
            .dev();
        let st = nix::sys::statvfs::statvfs(&host)
            .with_context(|| format!("reading the free space of {}", host.display()))?;
        if let Some((_, s)) = out.iter_mut().find(|(d, _)| *d == dev) {
            s.mount.push_str(&format!(" and {mp}"));
            s.need_bytes += bytes;
            s.need_inodes += inodes;
            continue;
        }
        out.push((
            dev,
            SpaceReport {
                mount: mp.to_owned(),
                free_bytes: st.blocks_free() * st.fragment_size(),
                free_inodes: st.files_free(),
                need_bytes: bytes,
                need_inodes: inodes,
            },
        ));
    }
    for (_, s) in &out {
        let mut short = Vec::new();
        if s.free_bytes < s.need_bytes {
            short.push(format!(
                "{} MiB free, {} MiB needed",
                s.free_bytes / MIB,
                s.need_bytes.div_ceil(MIB)
            ));
        }
        // File systems without an inode count (btrfs) report 0 of 0.
        if s.free_inodes < s.need_inodes && s.free_inodes != 0 {
            short.push(format!(
                "{} inodes free, {} needed",
                s.free_inodes, s.need_inodes
            ));
        }
        if !short.is_empty() {
            f.push(Finding::new(
                Severity::Blocker,
                ErrorCode::SpaceLow,
                format!("{}: {}", s.mount, short.join(", ")),
            ));
        }
    }
    Ok(out.into_iter().map(|(_, s)| s).collect())
}

#[cfg(test)]
mod tests {
    use super::on_lvm;

    #[test]
    fn lvm_specs_are_told_from_partitions() {
        for (spec, lvm) in [
            ("/dev/mapper/vg0-root", true),
            ("/dev/vg0/root", true),
            ("/dev/dm-0", true),
            ("/dev/sda1", false),
            ("/dev/disk/by-id/ata-X-part1", false),
            ("/dev/md/0", false),
            ("UUID=1234", false),
        ] {
            assert_eq!(on_lvm(spec), lvm, "{spec}");
        }
    }
}
