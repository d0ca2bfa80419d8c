//! What a layout must satisfy before anything is written: sizes,
//! numbers, ids, mount points and names that reach mount options or
//! device paths, each refused with `LAYOUT_INVALID` and the reason.

use anyhow::{bail, Context, Result};

use super::*;
use crate::job::errors::{coded, ErrorCode};

impl Layout {
    pub fn validate(&self) -> Result<()> {
        let mut mounts = std::collections::HashSet::new();
        for (d, disk) in self.disks.iter().enumerate() {
            disk.validate()
                .with_context(|| format!("checking disk {d} of the layout"))?;
        }
        for m in self.mount_points() {
            validate_mount_point(m)?;
            if !mounts.insert(m.to_owned()) {
                bail!(invalid(format!("mount point {m} appears twice")));
            }
        }
        for (d, disk) in self.disks.iter().enumerate() {
            for p in &disk.partitions {
                let subvols =
                    p.fs.subvol
                        .iter()
                        .chain(p.fs.subvolumes.iter().map(|s| &s.subvol));
                for sv in subvols {
                    validate_subvol(sv)
                        .with_context(|| format!("checking disk {d} of the layout"))?;
                }
            }
        }
        for v in &self.volumes {
            if !valid_lvm_name(&v.vg) || !valid_lvm_name(&v.name) {
                bail!(invalid(format!(
                    "logical volume {:?}/{:?}: not a name LVM allows",
                    v.vg, v.name
                )));
            }
            if let Some(sv) = &v.fs.subvol {
                validate_subvol(sv)?;
            }
            if let Some(place) = v.place {
                let partitions = self.disks.get(place.disk).map(|d| d.partitions.len());
                if partitions.is_none_or(|n| place.partition >= n) {
                    bail!(invalid(format!(
                        "logical volume {} lies on partition {} of disk {}, which the layout does not have",
                        v.display(),
                        place.partition,
                        place.disk
                    )));
                }
                if place.offset.checked_add(place.size).is_none() {
                    bail!(invalid(format!(
                        "logical volume {}: its place overflows",
                        v.display()
                    )));
                }
            }
        }
        Ok(())
    }
}

pub(super) fn invalid(detail: String) -> anyhow::Error {
    coded(ErrorCode::LayoutInvalid, detail)
}

impl DiskLayout {
    pub fn validate(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for n in self.numbers() {
            if n == 0 || !seen.insert(n) {
                bail!(invalid(format!(
                    "partition number {n} is zero or appears twice"
                )));
            }
        }
        if let Some(id) = &self.id {
            match self.table {
                TableType::Gpt => {
                    uuid::Uuid::parse_str(id)
                        .map_err(|e| invalid(format!("disk id {id:?} is not a GUID: {e}")))?;
                }
                TableType::Mbr => {
                    if id.len() != 8 || u32::from_str_radix(id, 16).is_err() {
                        bail!(invalid(format!(
                            "MBR disk id {id:?} must be 8 hex digits (the disk signature)"
                        )));
                    }
                }
            }
        }
        let logical = self
            .partitions
            .iter()
            .any(|p| p.number.is_some_and(|n| n > 4));
        if self.table == TableType::Mbr && self.partitions.len() > 4 && !logical {
            bail!(invalid(format!(
                "an MBR table holds 4 primary partitions, the layout has {} (logical partitions are not supported)",
                self.partitions.len()
            )));
        }
        if self.table == TableType::Gpt && self.partitions.len() > 128 {
            bail!(invalid("a GPT holds at most 128 partitions".into()));
        }
        let n = self.partitions.len();
        for (i, p) in self.partitions.iter().enumerate() {
            let num = i + 1;
            p.validate(self.table)
                .with_context(|| format!("checking partition {num}"))?;
            if p.size == Size::Rest && i + 1 != n {
                bail!(invalid(format!(
                    "partition {num} has size \"rest\" but is not the last partition"
                )));
            }
        }
        Ok(())
    }
}

impl PartitionLayout {
    pub fn validate(&self, table: TableType) -> Result<()> {
        match self.size {
            Size::Bytes(0) => bail!(invalid("size 0".into())),
            Size::Bytes(b) if b % SECTOR != 0 => {
                bail!(invalid(format!(
                    "size {b} is not a multiple of {SECTOR} bytes"
                )))
            }
            _ => {}
        }
        match self.start {
            Some(Size::Rest) => bail!(invalid("start cannot be \"rest\"".into())),
            Some(Size::Bytes(b)) if b % SECTOR != 0 => {
                bail!(invalid(format!(
                    "start {b} is not a multiple of {SECTOR} bytes"
                )))
            }
            _ => {}
        }
        if table == TableType::Mbr {
            if self.kind == PartType::BiosBoot {
                bail!(invalid(
                    "a BIOS boot partition exists only on GPT (on MBR, GRUB embeds itself after the MBR)".into()
                ));
            }
            if self.name.is_some() {
                bail!(invalid("MBR partitions have no name".into()));
            }
            if let PartType::Other(t) = &self.kind {
                mbr_type_byte(&self.kind).with_context(|| format!("MBR partition type {t:?}"))?;
            }
        }
        if let Some(u) = &self.fs.uuid {
            match self.fs.kind {
                FsType::Vfat => {
                    fat_volume_id(u)?;
                }
                FsType::Ext4
                | FsType::Ext3
                | FsType::Ext2
                | FsType::Xfs
                | FsType::Btrfs
                | FsType::Swap => {
                    uuid::Uuid::parse_str(u).map_err(|e| {
                        invalid(format!("file system uuid {u:?} is not a UUID: {e}"))
                    })?;
                }
                _ => {}
            }
        }
        if let Some(l) = &self.fs.label {
            let max = match self.fs.kind {
                FsType::Ext4 | FsType::Ext3 | FsType::Ext2 => 16,
                FsType::Xfs => 12,
                FsType::Btrfs => 255,
                FsType::Vfat => 11,
                FsType::Swap => 16,
                _ => usize::MAX,
            };
            if l.len() > max {
                bail!(invalid(format!(
                    "label {l:?} is {} bytes, {} labels hold at most {max}",
                    l.len(),
                    self.fs.kind
                )));
            }
            if self.fs.kind == FsType::Vfat && (l != &l.to_uppercase() || !l.is_ascii()) {
                bail!(invalid(format!(
                    "FAT label {l:?} must be upper-case ASCII (FAT stores labels upper-case)"
                )));
            }
        }
        if let Some(pu) = &self.partuuid {
            if table == TableType::Gpt {
                uuid::Uuid::parse_str(pu)
                    .map_err(|e| invalid(format!("partuuid {pu:?} is not a GUID: {e}")))?;
            }
        }
        if let Some(m) = &self.fs.mount {
            validate_mount_point(m)?;
            if !self.fs.kind.mountable_anywhere() && self.fs.kind != FsType::Vfat {
                bail!(invalid(format!(
                    "a {} partition has no mount point",
                    self.fs.kind
                )));
            }
        }
        Ok(())
    }
}

/// A mount point becomes a path under the staging directory: absolute,
/// without `.` or `..`, nothing a mount table could not hold.
fn validate_mount_point(m: &str) -> Result<()> {
    if !m.starts_with('/') {
        bail!(invalid(format!(
            "mount point {m:?} is not an absolute path"
        )));
    }
    if m.split('/').any(|c| c == ".." || c == ".") {
        bail!(invalid(format!("mount point {m:?} contains . or ..")));
    }
    if m.bytes().any(|c| c.is_ascii_control()) || m.len() > 4096 {
        bail!(invalid(format!(
            "mount point {m:?} holds a control character or is too long"
        )));
    }
    Ok(())
}

/// A btrfs subvolume's path goes into the mount's options as `subvol=`:
/// a comma would add options of the sender's choice.
fn validate_subvol(sv: &str) -> Result<()> {
    if sv.is_empty()
        || sv.len() > 4096
        || sv.bytes().any(|c| c == b',' || c.is_ascii_control())
        || sv.split('/').any(|c| c == "..")
    {
        bail!(invalid(format!(
            "btrfs subvolume {sv:?} is not a path a mount option can carry"
        )));
    }
    Ok(())
}
