//! The layout description: disks, partition tables, partitions and file
//! systems, as TOML or JSON.
//!
//! The same description is what `apply` is given, what `read` returns and
//! what the file-mode sender sends, so every field that `read` cannot recover
//! from a disk is optional (`mount` comes from the root's fstab, see
//! [`crate::layout::read::fill_mount_points`]).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::job::errors::{coded, ErrorCode};

mod fs_type;
mod part_type;
mod plan;
mod size;
mod validate;
mod volume;

pub use fs_type::{fat_volume_id, fat_volume_id_string, FsType};
pub use part_type::{
    mbr_type_byte, PartType, GUID_BIOS_BOOT, GUID_ESP, GUID_LINUX, GUID_LVM, GUID_MSDATA, GUID_SWAP,
};
pub use plan::{align_down, align_up, plan, rest_end, usable_range, Extent};
pub use size::Size;
pub use volume::{valid_lvm_name, LogicalVolume, Place};

pub const SECTOR: u64 = 512;
pub const MIB: u64 = 1024 * 1024;
/// Partitions start on 1 MiB boundaries, as every current partitioner does.
pub const ALIGN: u64 = MIB;

/// A set of disks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    #[serde(rename = "disk", alias = "disks", default)]
    pub disks: Vec<DiskLayout>,
    /// The logical volumes of the LVM physical volumes on these disks, as
    /// their on-disk metadata describes them. `read` only.
    #[serde(rename = "volume", default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<LogicalVolume>,
}

/// One disk: its partition table and partitions in table order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskLayout {
    pub table: TableType,
    /// GPT disk GUID, or the MBR disk signature as 8 hex digits (blkid's PTUUID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "partition", alias = "partitions", default)]
    pub partitions: Vec<PartitionLayout>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableType {
    Gpt,
    Mbr,
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionLayout {
    /// Bytes (a number or "512MiB", "2GiB", "1G"...) or "rest" (last partition only).
    pub size: Size,
    /// Start offset in bytes; absent means right after the previous
    /// partition, aligned to 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Size>,
    #[serde(rename = "type")]
    pub kind: PartType,
    /// Its file system: type, identity, where it is mounted.
    #[serde(flatten)]
    pub fs: FsSpec,
    /// GPT partition GUID; on MBR always `<disk id>-<NN>` (derived, may be omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// GPT partition name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The partition's number in the table when it is not its position
    /// (a GPT with gaps, a logical MBR partition: 5, 6...). `read` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<usize>,
    /// MBR active flag / GPT legacy-BIOS-bootable attribute.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bootable: bool,
}

/// A file system as the layout describes it, the same on a partition and
/// on a logical volume: its type, identity, where the migrated system
/// mounts it, and what it is made with.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FsSpec {
    #[serde(rename = "fs", default)]
    pub kind: FsType,
    /// File system UUID (ext*, xfs, swap) or FAT volume serial `XXXX-XXXX`
    /// (a full UUID given for vfat contributes its first 32 bits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Where it is mounted in the migrated system ("/", "/boot", "/boot/efi").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// The btrfs subvolume mounted at `mount` (fstab's `subvol=@`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subvol: Option<String>,
    /// Further mount points of the same btrfs: its other subvolumes as the
    /// fstab mounts them (`/home` on `@home`). `read` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subvolumes: Vec<SubvolumeMount>,
    /// ext2/3/4: the features to make it with, as `dumpe2fs` names them
    /// (`read` gives the source's; empty: mke2fs's defaults). Those this
    /// appliance's mke2fs cannot set are left out with a warning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

impl FsSpec {
    /// Where the migrated system mounts it: its mount point with the
    /// subvolume mounted there, then its further btrfs subvolumes.
    pub fn mounts(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        let own = self.mount.as_deref().map(|m| (m, self.subvol.as_deref()));
        let further = self.subvolumes.iter();
        own.into_iter()
            .chain(further.map(|s| (s.mount.as_str(), Some(s.subvol.as_str()))))
    }
}

/// A btrfs subvolume mounted at a mount point of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubvolumeMount {
    pub subvol: String,
    pub mount: String,
}

impl Layout {
    pub fn from_toml(text: &str) -> Result<Layout> {
        let l: Layout = toml::from_str(text).map_err(|e| {
            coded(
                ErrorCode::LayoutInvalid,
                format!("parsing the layout TOML: {e}"),
            )
        })?;
        Ok(l)
    }

    pub fn from_json(text: &str) -> Result<Layout> {
        let l: Layout = serde_json::from_str(text).map_err(|e| {
            coded(
                ErrorCode::LayoutInvalid,
                format!("parsing the layout JSON: {e}"),
            )
        })?;
        Ok(l)
    }

    /// Parse TOML or JSON, judged by the first non-blank character.
    pub fn parse(text: &str) -> Result<Layout> {
        if text.trim_start().starts_with('{') {
            Layout::from_json(text)
        } else {
            Layout::from_toml(text)
        }
    }

    pub fn load(path: &std::path::Path) -> Result<Layout> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the layout {}", path.display()))?;
        Layout::parse(&text).with_context(|| format!("loading the layout {}", path.display()))
    }

    pub(crate) fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("writing the layout as TOML")
    }

    pub(crate) fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).context("writing the layout as JSON")
    }

    /// Validate the layout and check that it has one disk per target.
    pub(crate) fn validate_for(&self, targets: &[std::path::PathBuf]) -> Result<()> {
        self.validate()?;
        if self.disks.len() != targets.len() {
            bail!(coded(
                ErrorCode::LayoutInvalid,
                format!(
                    "the layout describes {} disk(s) but {} target(s) were given",
                    self.disks.len(),
                    targets.len()
                )
            ));
        }
        Ok(())
    }

    /// Every mount point of the layout: partitions, their btrfs
    /// subvolumes, logical volumes.
    pub fn mount_points(&self) -> Vec<&str> {
        self.file_systems()
            .flat_map(FsSpec::mounts)
            .map(|(mount, _)| mount)
            .collect()
    }

    /// The file systems of the layout: its partitions', then its logical
    /// volumes'.
    pub fn file_systems(&self) -> impl Iterator<Item = &FsSpec> {
        let parts = self.disks.iter().flat_map(|d| &d.partitions);
        parts
            .map(|p| &p.fs)
            .chain(self.volumes.iter().map(|v| &v.fs))
    }

    /// The layout without mount points: what a disk alone can tell.
    pub fn without_mounts(&self) -> Layout {
        let mut l = self.clone();
        l.keep_mounts(|_| false);
        l
    }

    /// Keep only the mount points `keep` accepts; a btrfs subvolume stays
    /// mounted with the file system it belongs to.
    pub(crate) fn keep_mounts(&mut self, keep: impl Fn(&str) -> bool) {
        let parts = self.disks.iter_mut().flat_map(|d| d.partitions.iter_mut());
        let file_systems = parts
            .map(|p| &mut p.fs)
            .chain(self.volumes.iter_mut().map(|v| &mut v.fs));
        for fs in file_systems {
            if fs.mount.as_deref().is_some_and(|m| !keep(m)) {
                fs.mount = None;
                fs.subvol = None;
            }
            if fs.mount.is_none() {
                fs.subvolumes.clear();
            }
        }
    }
}

impl DiskLayout {
    /// Each partition's number in the table (its node: `vdb5`, `loop0p5`).
    pub fn numbers(&self) -> Vec<usize> {
        self.partitions
            .iter()
            .enumerate()
            .map(|(i, p)| p.number.unwrap_or(i + 1))
            .collect()
    }
}

#[cfg(test)]
mod tests;
