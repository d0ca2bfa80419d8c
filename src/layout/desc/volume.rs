//! A logical volume of the migrated disks, as the layout describes it:
//! its group and name, where its bytes lie on its physical volume, and
//! the file system on it. The layout's description and every stage that
//! reaches a volume share this type; reading it from LVM's metadata is
//! [`crate::layout::lvm`]'s work.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::FsSpec;
use crate::devname::udev_escape;
use crate::job::errors::{coded, ErrorCode};

/// LVM's rule for the name of a volume group or logical volume: letters,
/// digits and `+_.-`, not starting with `-`, not `.` or `..`, under 128
/// bytes. The names become paths (`/dev/<vg>/<lv>`, `/dev/mapper/...`)
/// in the repair's chroot, so a crafted one must never reach them.
pub fn valid_lvm_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 128
        && !name.starts_with('-')
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+_.-".contains(&c))
}

/// A logical volume of the disks, and where it lies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogicalVolume {
    pub vg: String,
    /// The volume group's id, as its metadata writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vg_uuid: Option<String>,
    pub name: String,
    /// Where its bytes are, for a volume the appliance reaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<Place>,
    /// Why the appliance does not reach it (striped, thin...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Its file system: type, identity, where it is mounted.
    #[serde(flatten)]
    pub fs: FsSpec,
}

/// Bytes of a partition that a linear LV occupies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Place {
    /// Disk index in the layout.
    pub disk: usize,
    /// Partition index (position in the disk's table order).
    pub partition: usize,
    /// Byte offset of its first extent from the partition's start.
    pub offset: u64,
    pub size: u64,
}

impl LogicalVolume {
    /// `/dev/mapper/<vg>-<lv>`, each dash of the names doubled.
    pub(crate) fn mapper_path(&self) -> String {
        format!(
            "/dev/mapper/{}-{}",
            self.vg.replace('-', "--"),
            self.name.replace('-', "--")
        )
    }

    /// An ext4 volume `vg/name` with nothing else known, for tests.
    #[cfg(test)]
    pub fn test(vg: &str, name: &str) -> LogicalVolume {
        LogicalVolume {
            vg: vg.into(),
            vg_uuid: None,
            name: name.into(),
            place: None,
            refused: None,
            fs: FsSpec {
                kind: super::FsType::Ext4,
                ..FsSpec::default()
            },
        }
    }

    /// `/dev/<vg>/<lv>`.
    pub(crate) fn vg_path(&self) -> String {
        format!("/dev/{}/{}", self.vg, self.name)
    }

    /// The names (relative to /dev) the migrated system knows the volume
    /// by, whatever node the appliance reaches it through.
    pub fn aliases(&self) -> Vec<String> {
        vec![
            self.mapper_path().trim_start_matches("/dev/").to_owned(),
            self.vg_path().trim_start_matches("/dev/").to_owned(),
        ]
    }

    /// `vg/lv`, as LVM's tools name it.
    pub fn display(&self) -> String {
        format!("{}/{}", self.vg, self.name)
    }

    /// Whether an fstab or kernel device spec names this volume.
    pub fn matches(&self, spec: &str) -> bool {
        let spec = spec.trim_matches('"');
        let id = |v: &Option<String>, want: &str| {
            v.as_deref().is_some_and(|u| u.eq_ignore_ascii_case(want))
        };
        if let Some(u) = spec
            .strip_prefix("UUID=")
            .or_else(|| spec.strip_prefix("/dev/disk/by-uuid/"))
        {
            return id(&self.fs.uuid, u.trim_matches('"'));
        }
        if let Some(l) = spec.strip_prefix("LABEL=") {
            return self.fs.label.as_deref() == Some(l.trim_matches('"'));
        }
        if let Some(l) = spec.strip_prefix("/dev/disk/by-label/") {
            return self.fs.label.as_deref().map(udev_escape).as_deref() == Some(l);
        }
        spec == self.mapper_path()
            || spec == self.vg_path()
            || spec.strip_prefix("/dev/disk/by-id/dm-name-")
                == self.mapper_path().strip_prefix("/dev/mapper/")
    }

    /// The error for a volume the appliance must mount but cannot reach.
    pub fn refusal(&self) -> Option<anyhow::Error> {
        self.refused.as_ref().map(|why| {
            coded(
                ErrorCode::LvmUnsupported,
                format!(
                    "logical volume {}{}: {why}",
                    self.display(),
                    self.fs
                        .mount
                        .as_deref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                ),
            )
        })
    }

    /// Where the appliance reaches the volume's bytes, or why it cannot.
    pub fn reachable_place(&self) -> Result<Place> {
        if let Some(e) = self.refusal() {
            return Err(e);
        }
        self.place
            .with_context(|| format!("logical volume {} has no place", self.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(vg: &str, name: &str) -> LogicalVolume {
        LogicalVolume {
            fs: FsSpec {
                uuid: Some("aaaa-bbbb".into()),
                label: Some("my root".into()),
                ..LogicalVolume::test(vg, name).fs
            },
            ..LogicalVolume::test(vg, name)
        }
    }

    #[test]
    fn the_names_of_a_volume_are_matched() {
        let v = volume("ferry-vg", "swap_1");
        assert_eq!(v.mapper_path(), "/dev/mapper/ferry--vg-swap_1");
        assert_eq!(v.vg_path(), "/dev/ferry-vg/swap_1");
        for (spec, want) in [
            ("/dev/mapper/ferry--vg-swap_1", true),
            ("/dev/ferry-vg/swap_1", true),
            ("/dev/disk/by-id/dm-name-ferry--vg-swap_1", true),
            ("UUID=AAAA-BBBB", true),
            ("/dev/disk/by-uuid/aaaa-bbbb", true),
            ("LABEL=my root", true),
            ("/dev/disk/by-label/my\\x20root", true),
            ("/dev/mapper/ferry-vg-swap_1", false),
            ("/dev/mapper/ferry--vg-root", false),
            ("UUID=cccc", false),
            ("/dev/sda2", false),
        ] {
            assert_eq!(v.matches(spec), want, "{spec}");
        }
    }

    #[test]
    fn a_refused_volume_says_why_with_its_code() {
        let mut v = volume("vg0", "data");
        v.fs.mount = Some("/srv".into());
        v.refused = Some("it is striped over 2 stripes".into());
        let e = v.refusal().unwrap();
        assert_eq!(
            crate::job::errors::find_coded(&e).map(|c| c.code),
            Some(ErrorCode::LvmUnsupported)
        );
        assert_eq!(
            format!("{e:#}"),
            "LVM_UNSUPPORTED: A logical volume of the migrated system has a layout the appliance cannot reach (logical volume vg0/data (/srv): it is striped over 2 stripes)"
        );
    }

    #[test]
    fn a_volume_answers_to_its_mapper_and_group_names() {
        assert_eq!(
            volume("ferry-vg", "root").aliases(),
            ["mapper/ferry--vg-root", "ferry-vg/root"]
        );
    }
}
