//! The file system on a partition or volume, as the layout names it, and
//! the FAT volume id's two spellings.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::validate::invalid;

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
    pub(crate) fn mountable_anywhere(&self) -> bool {
        matches!(
            self,
            FsType::Ext4 | FsType::Ext3 | FsType::Ext2 | FsType::Xfs | FsType::Btrfs
        )
    }
    pub fn growable(&self) -> bool {
        self.mountable_anywhere() || self.is_ntfs()
    }
    /// ext2, ext3 or ext4: checked by e2fsck, grown by resize2fs.
    pub(crate) fn is_ext(&self) -> bool {
        matches!(self, FsType::Ext4 | FsType::Ext3 | FsType::Ext2)
    }
    /// An LVM2 physical volume (blkid's `LVM2_member`).
    pub(crate) fn is_lvm_pv(&self) -> bool {
        matches!(self, FsType::Other(s) if s == "LVM2_member")
    }
    /// The mount data that mounts it read-only without changing it: no
    /// journal or log replay (ext2 has none, and its driver knows no
    /// `noload`).
    pub(crate) fn read_only_data(&self) -> Option<&'static str> {
        match self {
            FsType::Xfs => Some("norecovery"),
            FsType::Ext4 | FsType::Ext3 => Some("noload"),
            FsType::Btrfs => Some("rescue=nologreplay"),
            _ => None,
        }
    }
    /// NTFS (a Windows volume), reached through ntfs-3g.
    pub(crate) fn is_ntfs(&self) -> bool {
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
