//! A partition's type: its name in a layout, its GPT type GUID and its
//! MBR type byte.

use std::str::FromStr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::validate::invalid;

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

    pub(crate) fn from_gpt_guid(g: &str) -> PartType {
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

    pub(crate) fn from_mbr_byte(b: u8) -> PartType {
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
