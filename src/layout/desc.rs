//! The layout description: disks, partition tables, partitions and file
//! systems, as TOML or JSON.
//!
//! The same description is what `apply` is given, what `read` returns and
//! what the file-mode sender sends, so every field that `read` cannot recover
//! from a disk is optional (`mount` comes from the root's fstab, see
//! [`crate::layout::read::fill_mount_points`]).

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::job::errors::{coded, ErrorCode};

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
    pub volumes: Vec<super::lvm::LogicalVolume>,
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
    #[serde(default)]
    pub fs: FsType,
    /// File system UUID (ext*, xfs, swap) or FAT volume serial `XXXX-XXXX`
    /// (a full UUID given for vfat contributes its first 32 bits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Where the partition is mounted in the migrated system ("/", "/boot", "/boot/efi").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
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

/// A btrfs subvolume mounted at a mount point of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubvolumeMount {
    pub subvol: String,
    pub mount: String,
}

/// A size in bytes, or the rest of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Bytes(u64),
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartType {
    BiosBoot,
    Esp,
    Linux,
    Swap,
    Lvm,
    MsData,
    /// Anything else `read` finds: a GPT type GUID or an MBR type byte "0xNN".
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FsType {
    Ext4,
    Ext3,
    Ext2,
    Xfs,
    Btrfs,
    Vfat,
    Swap,
    #[default]
    None,
    /// What blkid calls a signature ferry does not make (btrfs, LVM2_member...).
    Other(String),
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

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("writing the layout as TOML")
    }

    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).context("writing the layout as JSON")
    }

    /// Validate the layout and check that it has one disk per target.
    pub fn validate_for(&self, targets: &[std::path::PathBuf]) -> Result<()> {
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
                let subvols = p
                    .subvol
                    .iter()
                    .chain(p.subvolumes.iter().map(|s| &s.subvol));
                for sv in subvols {
                    validate_subvol(sv)
                        .with_context(|| format!("checking disk {d} of the layout"))?;
                }
            }
        }
        for v in &self.volumes {
            if !super::lvm::vg::valid_name(&v.vg) || !super::lvm::vg::valid_name(&v.name) {
                bail!(invalid(format!(
                    "logical volume {:?}/{:?}: not a name LVM allows",
                    v.vg, v.name
                )));
            }
            if let Some(sv) = &v.subvol {
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

    /// Every mount point of the layout: partitions, their btrfs
    /// subvolumes, logical volumes.
    pub fn mount_points(&self) -> Vec<&str> {
        let mut out = Vec::new();
        for p in self.disks.iter().flat_map(|d| &d.partitions) {
            out.extend(p.mount.as_deref());
            out.extend(p.subvolumes.iter().map(|s| s.mount.as_str()));
        }
        out.extend(self.volumes.iter().filter_map(|v| v.mount.as_deref()));
        out
    }

    /// The layout without mount points: what a disk alone can tell.
    pub fn without_mounts(&self) -> Layout {
        let mut l = self.clone();
        l.keep_mounts(|_| false);
        l
    }

    /// Keep only the mount points `keep` accepts; a btrfs subvolume stays
    /// mounted with the file system it belongs to.
    pub fn keep_mounts(&mut self, keep: impl Fn(&str) -> bool) {
        for p in self.disks.iter_mut().flat_map(|d| d.partitions.iter_mut()) {
            if p.mount.as_deref().is_some_and(|m| !keep(m)) {
                p.mount = None;
                p.subvol = None;
            }
            if p.mount.is_none() {
                p.subvolumes.clear();
            }
        }
        for v in &mut self.volumes {
            if v.mount.as_deref().is_some_and(|m| !keep(m)) {
                v.mount = None;
                v.subvol = None;
            }
        }
    }
}

fn invalid(detail: String) -> anyhow::Error {
    coded(ErrorCode::LayoutInvalid, detail)
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
        if let Some(u) = &self.uuid {
            match self.fs {
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
        if let Some(l) = &self.label {
            let max = match self.fs {
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
                    self.fs
                )));
            }
            if self.fs == FsType::Vfat && (l != &l.to_uppercase() || !l.is_ascii()) {
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
        if let Some(m) = &self.mount {
            validate_mount_point(m)?;
            if !self.fs.mountable_anywhere() && self.fs != FsType::Vfat {
                bail!(invalid(format!(
                    "a {} partition has no mount point",
                    self.fs
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

/// The FAT volume serial from `XXXX-XXXX` or from a full UUID's first 32 bits.
pub fn fat_volume_id(s: &str) -> Result<u32> {
    if s.len() == 9 && s.as_bytes()[4] == b'-' {
        let hex = format!("{}{}", &s[..4], &s[5..]);
        if let Ok(v) = u32::from_str_radix(&hex, 16) {
            return Ok(v);
        }
    }
    if let Ok(u) = uuid::Uuid::parse_str(s) {
        let b = u.as_bytes();
        return Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    }
    bail!(invalid(format!(
        "FAT volume id {s:?} is neither XXXX-XXXX nor a UUID"
    )))
}

/// blkid's spelling of a FAT serial.
pub fn fat_volume_id_string(v: u32) -> String {
    format!("{:04X}-{:04X}", v >> 16, v & 0xffff)
}

impl FsType {
    /// File systems the kernel here mounts (vfat is handled in-process).
    pub fn mountable_anywhere(&self) -> bool {
        matches!(
            self,
            FsType::Ext4 | FsType::Ext3 | FsType::Ext2 | FsType::Xfs | FsType::Btrfs
        )
    }
    pub fn growable(&self) -> bool {
        self.mountable_anywhere() || self.is_ntfs()
    }
    /// ext2, ext3 or ext4: checked by e2fsck, grown by resize2fs.
    pub fn is_ext(&self) -> bool {
        matches!(self, FsType::Ext4 | FsType::Ext3 | FsType::Ext2)
    }
    /// An LVM2 physical volume (blkid's `LVM2_member`).
    pub fn is_lvm_pv(&self) -> bool {
        matches!(self, FsType::Other(s) if s == "LVM2_member")
    }
    /// The mount data that mounts it read-only without changing it: no
    /// journal or log replay (ext2 has none, and its driver knows no
    /// `noload`).
    pub fn read_only_data(&self) -> Option<&'static str> {
        match self {
            FsType::Xfs => Some("norecovery"),
            FsType::Ext4 | FsType::Ext3 => Some("noload"),
            FsType::Btrfs => Some("rescue=nologreplay"),
            _ => None,
        }
    }
    /// NTFS (a Windows volume), reached through ntfs-3g.
    pub fn is_ntfs(&self) -> bool {
        matches!(self, FsType::Other(s) if s == "ntfs")
    }
    /// blkid's TYPE value.
    pub fn as_str(&self) -> &str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Ext3 => "ext3",
            FsType::Ext2 => "ext2",
            FsType::Xfs => "xfs",
            FsType::Btrfs => "btrfs",
            FsType::Vfat => "vfat",
            FsType::Swap => "swap",
            FsType::None => "none",
            FsType::Other(s) => s,
        }
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FsType {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s {
            "ext4" => FsType::Ext4,
            "ext3" => FsType::Ext3,
            "ext2" => FsType::Ext2,
            "xfs" => FsType::Xfs,
            "btrfs" => FsType::Btrfs,
            "vfat" | "fat" | "fat32" => FsType::Vfat,
            "swap" => FsType::Swap,
            "none" | "" => FsType::None,
            o => FsType::Other(o.to_owned()),
        })
    }
}

impl Serialize for FsType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FsType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(s.parse().unwrap_or(FsType::None))
    }
}

pub const GUID_BIOS_BOOT: &str = "21686148-6449-6e6f-744e-656564454649";
pub const GUID_ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
pub const GUID_LINUX: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
pub const GUID_SWAP: &str = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f";
pub const GUID_LVM: &str = "e6d6d379-f507-44c2-a23c-238f2a3df928";
pub const GUID_MSDATA: &str = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7";

impl PartType {
    pub fn as_str(&self) -> &str {
        match self {
            PartType::BiosBoot => "bios-boot",
            PartType::Esp => "esp",
            PartType::Linux => "linux",
            PartType::Swap => "swap",
            PartType::Lvm => "lvm",
            PartType::MsData => "msdata",
            PartType::Other(s) => s,
        }
    }

    /// The GPT type GUID (lower case).
    pub fn gpt_guid(&self) -> Result<String> {
        Ok(match self {
            PartType::BiosBoot => GUID_BIOS_BOOT.into(),
            PartType::Esp => GUID_ESP.into(),
            PartType::Linux => GUID_LINUX.into(),
            PartType::Swap => GUID_SWAP.into(),
            PartType::Lvm => GUID_LVM.into(),
            PartType::MsData => GUID_MSDATA.into(),
            PartType::Other(s) => uuid::Uuid::parse_str(s)
                .map_err(|e| invalid(format!("GPT partition type {s:?} is not a GUID: {e}")))?
                .to_string(),
        })
    }

    pub fn from_gpt_guid(g: &str) -> PartType {
        let g = g.to_ascii_lowercase();
        match g.as_str() {
            GUID_BIOS_BOOT => PartType::BiosBoot,
            GUID_ESP => PartType::Esp,
            GUID_LINUX => PartType::Linux,
            GUID_SWAP => PartType::Swap,
            GUID_LVM => PartType::Lvm,
            GUID_MSDATA => PartType::MsData,
            _ => PartType::Other(g),
        }
    }

    pub fn from_mbr_byte(b: u8) -> PartType {
        match b {
            0xef => PartType::Esp,
            0x83 => PartType::Linux,
            0x82 => PartType::Swap,
            0x8e => PartType::Lvm,
            0x07 => PartType::MsData,
            o => PartType::Other(format!("0x{o:02x}")),
        }
    }
}

pub fn mbr_type_byte(t: &PartType) -> Result<u8> {
    Ok(match t {
        PartType::Esp => 0xef,
        PartType::Linux => 0x83,
        PartType::Swap => 0x82,
        PartType::Lvm => 0x8e,
        PartType::MsData => 0x07,
        PartType::BiosBoot => bail!(invalid("no BIOS boot partition on MBR".into())),
        PartType::Other(s) => {
            let h = s.strip_prefix("0x").unwrap_or(s);
            let b = u8::from_str_radix(h, 16)
                .map_err(|_| invalid(format!("MBR type {s:?} is not a byte like 0x83")))?;
            if matches!(b, 0x05 | 0x0f | 0x85 | 0x00 | 0xee) {
                bail!(invalid(format!(
                    "MBR type {s} (extended, empty or protective) cannot be laid out"
                )));
            }
            b
        }
    })
}

impl FromStr for PartType {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s {
            "bios-boot" | "bios_boot" | "bios" => PartType::BiosBoot,
            "esp" | "efi" | "efi-system" => PartType::Esp,
            "linux" => PartType::Linux,
            "swap" => PartType::Swap,
            "lvm" => PartType::Lvm,
            "msdata" | "microsoft-basic-data" => PartType::MsData,
            o => PartType::Other(o.to_ascii_lowercase()),
        })
    }
}

impl Serialize for PartType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PartType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(s.parse().unwrap_or(PartType::Linux))
    }
}

impl Size {
    pub fn bytes(self) -> Option<u64> {
        match self {
            Size::Bytes(b) => Some(b),
            Size::Rest => None,
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Rest => f.write_str("rest"),
            Size::Bytes(b) if *b % (1024 * MIB) == 0 => write!(f, "{}GiB", b / (1024 * MIB)),
            Size::Bytes(b) if *b % MIB == 0 => write!(f, "{}MiB", b / MIB),
            Size::Bytes(b) => write!(f, "{b}"),
        }
    }
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("rest") {
            return Ok(Size::Rest);
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("size {s:?} is not a number of bytes, \"512MiB\" or \"rest\""))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" | "k" => 1024,
            "M" | "MiB" => MIB,
            "G" | "GiB" => 1024 * MIB,
            "T" | "TiB" => 1024 * 1024 * MIB,
            u => {
                return Err(format!(
                    "size {s:?} has an unknown unit {u:?} (use KiB, MiB, GiB, TiB)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(Size::Bytes)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Size::Bytes(b) if b % MIB != 0 => s.serialize_u64(*b),
            other => s.serialize_str(&other.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size::Bytes(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Where each partition lies, in bytes, once a layout meets a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

pub fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

pub fn align_down(v: u64, a: u64) -> u64 {
    v / a * a
}

/// The byte range partitions may use on a disk of `disk_size` bytes:
/// after the primary GPT (34 sectors) / the MBR, and before the backup GPT.
pub fn usable_range(table: TableType, disk_size: u64) -> (u64, u64) {
    match table {
        TableType::Gpt => (
            34 * SECTOR,
            (disk_size / SECTOR).saturating_sub(33) * SECTOR,
        ),
        TableType::Mbr => {
            // MBR addresses at most 2^32-1 sectors.
            let max = u64::from(u32::MAX) * SECTOR;
            (SECTOR, disk_size.min(max) / SECTOR * SECTOR)
        }
    }
}

/// Where a "rest" partition ends: the end of the usable range, aligned down
/// so that a copy of the disk onto one a little larger still reads the same.
pub fn rest_end(table: TableType, disk_size: u64) -> u64 {
    align_down(usable_range(table, disk_size).1, ALIGN)
}

/// Place the partitions of `disk` on a disk of `disk_size` bytes, or say by
/// how much the layout does not fit.
pub fn plan(disk: &DiskLayout, disk_size: u64) -> Result<Vec<Extent>> {
    let (first, last) = usable_range(disk.table, disk_size);
    let rest = rest_end(disk.table, disk_size);
    let mut cursor = first;
    let mut out = Vec::new();
    for (i, p) in disk.partitions.iter().enumerate() {
        let start = match p.start {
            Some(Size::Bytes(s)) => s,
            _ => align_up(cursor, ALIGN),
        };
        if start < first || start < cursor {
            bail!(invalid(format!(
                "partition {} starts at byte {start}, before the end of what precedes it (byte {})",
                i + 1,
                cursor.max(first)
            )));
        }
        let len = match p.size {
            Size::Bytes(b) => b,
            Size::Rest => {
                if rest <= start {
                    bail!(too_small(disk, disk_size, start + MIB, last));
                }
                rest - start
            }
        };
        let end = start + len;
        if end > last {
            let needed = disk
                .partitions
                .iter()
                .skip(i + 1)
                // A "rest" partition needs at least 1 MiB.
                .map(|p| p.size.bytes().unwrap_or(MIB))
                .fold(end, |acc, b| align_up(acc, ALIGN) + b);
            bail!(too_small(disk, disk_size, needed, last));
        }
        out.push(Extent { start, len });
        cursor = end;
    }
    Ok(out)
}

fn too_small(
    _disk: &DiskLayout,
    disk_size: u64,
    needed_end: u64,
    usable_end: u64,
) -> anyhow::Error {
    let trailer = disk_size - usable_end;
    let needed_total = needed_end + trailer;
    coded(
        ErrorCode::LayoutTooLarge,
        format!(
            "the layout needs {needed_total} bytes ({} MiB) including the partition table, the disk has {disk_size} bytes ({} MiB): {} bytes ({} MiB) short",
            needed_total.div_ceil(MIB),
            disk_size / MIB,
            needed_total.saturating_sub(disk_size),
            needed_total.saturating_sub(disk_size).div_ceil(MIB)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[[disk]]
table = "gpt"
id = "8c5f1d8e-2f35-4c2a-9d0b-4b1b8a0f0e11"

[[disk.partition]]
size = "1MiB"
type = "bios-boot"

[[disk.partition]]
size = "100MiB"
type = "esp"
fs = "vfat"
uuid = "ABCD-1234"
label = "ESP"
mount = "/boot/efi"

[[disk.partition]]
size = "rest"
type = "linux"
fs = "ext4"
uuid = "2f1e6a4c-8b1d-4d6e-9a55-0f6c2c1e7b90"
label = "root"
mount = "/"
"#;

    #[test]
    fn toml_and_json_round_trip() {
        let l = Layout::from_toml(SAMPLE).unwrap();
        l.validate().unwrap();
        assert_eq!(l.disks[0].partitions[1].size, Size::Bytes(100 * MIB));
        assert_eq!(l.disks[0].partitions[2].size, Size::Rest);
        assert_eq!(l.disks[0].partitions[0].kind, PartType::BiosBoot);
        assert_eq!(Layout::from_toml(&l.to_toml().unwrap()).unwrap(), l);
        assert_eq!(Layout::parse(&l.to_json().unwrap()).unwrap(), l);
    }

    #[test]
    fn sizes_parse() {
        let cases = [
            ("rest", Ok(Size::Rest)),
            ("512MiB", Ok(Size::Bytes(512 * MIB))),
            ("2G", Ok(Size::Bytes(2048 * MIB))),
            ("4096", Ok(Size::Bytes(4096))),
            (
                "12XB",
                Err("size \"12XB\" has an unknown unit \"XB\" (use KiB, MiB, GiB, TiB)".to_owned()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Size>(), want, "{text}");
        }
    }

    #[test]
    fn plan_aligns_and_fills_the_rest() {
        let l = Layout::from_toml(SAMPLE).unwrap();
        let ext = plan(&l.disks[0], 256 * MIB).unwrap();
        assert_eq!(
            ext[0],
            Extent {
                start: MIB,
                len: MIB
            }
        );
        assert_eq!(
            ext[1],
            Extent {
                start: 2 * MIB,
                len: 100 * MIB
            }
        );
        // The backup GPT takes the last 33 sectors, so the rest ends one MiB early.
        assert_eq!(
            ext[2],
            Extent {
                start: 102 * MIB,
                len: 153 * MIB
            }
        );
    }

    #[test]
    fn too_small_says_by_how_much() {
        let mut l = Layout::from_toml(SAMPLE).unwrap();
        l.disks[0].partitions[2].size = Size::Bytes(300 * MIB);
        let err = plan(&l.disks[0], 256 * MIB).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "LAYOUT_TOO_LARGE: The layout does not fit the target disk (the layout needs 421544448 bytes (403 MiB) including the partition table, the disk has 268435456 bytes (256 MiB): 153108992 bytes (147 MiB) short)"
        );
    }

    #[test]
    fn invalid_layouts_are_refused_with_reasons() {
        let base = Layout::from_toml(SAMPLE).unwrap();
        type Case = (&'static str, Box<dyn Fn(&mut Layout)>, &'static str);
        let cases: Vec<Case> = vec![
            (
                "rest not last",
                Box::new(|l| l.disks[0].partitions[1].size = Size::Rest),
                "partition 2 has size \"rest\" but is not the last partition",
            ),
            (
                "bad uuid",
                Box::new(|l| l.disks[0].partitions[2].uuid = Some("nope".into())),
                "file system uuid \"nope\" is not a UUID",
            ),
            (
                "long xfs label",
                Box::new(|l| {
                    l.disks[0].partitions[2].fs = FsType::Xfs;
                    l.disks[0].partitions[2].label = Some("0123456789abc".into())
                }),
                "label \"0123456789abc\" is 13 bytes, xfs labels hold at most 12",
            ),
            (
                "bios boot on mbr",
                Box::new(|l| {
                    l.disks[0].table = TableType::Mbr;
                    l.disks[0].id = None
                }),
                "a BIOS boot partition exists only on GPT",
            ),
            (
                "duplicate mount",
                Box::new(|l| l.disks[0].partitions[1].mount = Some("/".into())),
                "mount point / appears twice",
            ),
            (
                "subvolume mount escaping the root",
                Box::new(|l| {
                    l.disks[0].partitions[2].subvolumes = vec![SubvolumeMount {
                        subvol: "@home".into(),
                        mount: "/../../etc".into(),
                    }]
                }),
                "mount point \"/../../etc\" contains . or ..",
            ),
            (
                "relative subvolume mount",
                Box::new(|l| {
                    l.disks[0].partitions[2].subvolumes = vec![SubvolumeMount {
                        subvol: "@home".into(),
                        mount: "home".into(),
                    }]
                }),
                "mount point \"home\" is not an absolute path",
            ),
            (
                "subvolume adding mount options",
                Box::new(|l| l.disks[0].partitions[2].subvol = Some("@,device=/dev/vda1".into())),
                "btrfs subvolume \"@,device=/dev/vda1\" is not a path a mount option can carry",
            ),
            (
                "mount point with a newline",
                Box::new(|l| l.disks[0].partitions[1].mount = Some("/boot\n/".into())),
                "mount point \"/boot\\n/\" holds a control character or is too long",
            ),
            (
                "volume group named ..",
                Box::new(|l| l.volumes = vec![lv("..", "root", None)]),
                "logical volume \"..\"/\"root\": not a name LVM allows",
            ),
            (
                "volume on a partition the layout lacks",
                Box::new(|l| {
                    l.volumes = vec![lv(
                        "vg",
                        "root",
                        Some(crate::layout::lvm::Place {
                            disk: 0,
                            partition: 9,
                            offset: 0,
                            size: 1,
                        }),
                    )]
                }),
                "logical volume vg/root lies on partition 9 of disk 0, which the layout does not have",
            ),
            (
                "volume mounted outside the root",
                Box::new(|l| {
                    let mut v = lv("vg", "var", None);
                    v.mount = Some("/var/../..".into());
                    l.volumes = vec![v];
                }),
                "mount point \"/var/../..\" contains . or ..",
            ),
        ];
        for (name, f, want) in cases {
            let mut l = base.clone();
            f(&mut l);
            let err = format!("{:#}", l.validate().unwrap_err());
            assert!(err.contains(want), "{name}: {err}");
            assert!(err.contains("LAYOUT_INVALID"), "{name}: {err}");
        }
    }

    fn lv(
        vg: &str,
        name: &str,
        place: Option<crate::layout::lvm::Place>,
    ) -> crate::layout::lvm::LogicalVolume {
        crate::layout::lvm::LogicalVolume {
            place,
            ..crate::layout::lvm::LogicalVolume::test(vg, name)
        }
    }

    #[test]
    fn fat_ids() {
        assert_eq!(fat_volume_id("ABCD-1234").unwrap(), 0xABCD1234);
        assert_eq!(
            fat_volume_id("12345678-9abc-def0-1234-56789abcdef0").unwrap(),
            0x12345678
        );
        assert_eq!(fat_volume_id_string(0xABCD1234), "ABCD-1234");
    }
}
