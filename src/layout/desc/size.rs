//! A partition's size: bytes in a layout's spelling (`512MiB`, `2G`) or
//! the rest of the disk.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::MIB;

/// A size in bytes, or the rest of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Bytes(u64),
    Rest,
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
