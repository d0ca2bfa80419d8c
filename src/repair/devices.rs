//! What the repair knows about the disks: which source disk became which
//! target, and the identity (UUID, label, PARTUUID) of every migrated file
//! system. It is given, never guessed: the job runner knows it from the
//! transfer and the layout.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::devname::split_device;

/// The migrated disks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceMap {
    pub disks: Vec<MigratedDisk>,
    /// Names of the source that no longer exist on the target, and the
    /// spec that names the same file system there: a logical volume laid
    /// out as a plain partition (`/dev/mapper/vg-root` is `UUID=...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub renamed: Vec<crate::layout::flatten::Renamed>,
}

/// One source disk and the target it was written to.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MigratedDisk {
    /// The names the source system knew the disk by: `/dev/sda`,
    /// `/dev/disk/by-id/ata-...`, `/dev/disk/by-path/...`.
    pub source_names: Vec<String>,
    /// The target disk on the appliance (`/dev/vdb`, `/dev/loop3`).
    pub target: PathBuf,
    pub volumes: Vec<Volume>,
}

/// A file system or swap area on a migrated disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Volume {
    /// Partition number; None for a file system on the whole disk.
    pub partition: Option<u32>,
    /// The node on the appliance (`/dev/vdb1`, `/dev/loop3p1`).
    pub node: PathBuf,
    pub fstype: Option<String>,
    pub uuid: Option<String>,
    pub label: Option<String>,
    pub partuuid: Option<String>,
    /// Where it is mounted inside the migrated root, when it is (`/`, `/boot`).
    pub mountpoint: Option<String>,
    /// The names (relative to /dev) the migrated system knows it by beside
    /// the node: a logical volume's `mapper/<vg>-<lv>` and `<vg>/<lv>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// How an fstab device spec relates to the migrated disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved<'a> {
    /// A migrated volume.
    Migrated(&'a Volume),
    /// A kernel device name whose disk was not migrated.
    NotMigrated,
    /// A stable identity (UUID=, LABEL=...) not found on any migrated disk.
    UnknownId,
    /// Not a disk name ferry rewrites (LVM, md, network, pseudo file systems).
    Other,
}

impl DeviceMap {
    pub fn volumes(&self) -> impl Iterator<Item = &Volume> {
        self.disks.iter().flat_map(|d| d.volumes.iter())
    }

    pub fn by_mountpoint(&self, mp: &str) -> Option<&Volume> {
        self.volumes().find(|v| v.mountpoint.as_deref() == Some(mp))
    }

    /// The disk holding the volume mounted at `mp`.
    /// The disk that gets GRUB's BIOS boot code: the one holding /boot, or
    /// /. It must be a whole disk with a partition table: boot code cannot
    /// be embedded into a device that holds the file system itself (a
    /// partition's node, or a loop device at a partition's offset), where
    /// grub-install fails with "Embedding is not possible".
    pub(crate) fn bios_disk(&self) -> anyhow::Result<std::path::PathBuf> {
        let (mp, disk) = ["/boot", "/"]
            .iter()
            .find_map(|mp| self.disk_of_mountpoint(mp).map(|d| (*mp, d)))
            .ok_or_else(|| {
                crate::job::errors::coded(
                    crate::job::errors::ErrorCode::RepairBadInput,
                    "no migrated disk holds / or /boot",
                )
            })?;
        let bare = disk
            .volumes
            .iter()
            .any(|v| v.mountpoint.as_deref() == Some(mp) && v.partition.is_none());
        if bare {
            return Err(crate::job::errors::coded(
                crate::job::errors::ErrorCode::RepairBadInput,
                format!(
                    "{} holds the file system of {mp} itself, not a whole disk with a partition table, so GRUB's BIOS boot code has nowhere to go; \
                     attach the whole disk (an image: `losetup --find --show IMAGE` then `partx -a /dev/loopN`, and mount /dev/loopNpM) \
                     and name it with --disk SOURCE=/dev/loopN (e.g. --disk /dev/sda=/dev/loop0)",
                    disk.target.display()
                ),
            ));
        }
        Ok(disk.target.clone())
    }

    pub(crate) fn disk_of_mountpoint(&self, mp: &str) -> Option<&MigratedDisk> {
        self.disks.iter().find(|d| {
            d.volumes
                .iter()
                .any(|v| v.mountpoint.as_deref() == Some(mp))
        })
    }

    pub fn by_uuid(&self, uuid: &str) -> Option<&Volume> {
        self.volumes().find(|v| {
            v.uuid
                .as_deref()
                .is_some_and(|u| u.eq_ignore_ascii_case(uuid))
        })
    }

    /// Resolve an fstab/kernel-command-line device spec (unescaped from
    /// fstab's octal), parsed by [`crate::devname::DeviceSpec`].
    pub fn resolve(&self, spec: &str, mountpoint: Option<&str>) -> Resolved<'_> {
        use crate::devname::{DeviceSpec, Ids};
        if let Some(r) = self.renamed_from(spec) {
            return self.resolve(&r.to.clone(), mountpoint);
        }
        let parsed = DeviceSpec::parse(spec);
        let (disk, part) = match parsed {
            DeviceSpec::Device { disk, partition } => (disk, partition),
            DeviceSpec::Mapper(_) | DeviceSpec::Other => return Resolved::Other,
            ref ident => {
                let hit = self.volumes().find(|v| {
                    let ids = Ids {
                        uuid: v.uuid.as_deref(),
                        label: v.label.as_deref(),
                        partuuid: v.partuuid.as_deref(),
                        partlabel: None,
                    };
                    ident.matches(&ids) == Some(true)
                });
                return hit.map(Resolved::Migrated).unwrap_or(Resolved::UnknownId);
            }
        };
        let found = self
            .disks
            .iter()
            .find(|d| d.source_names.iter().any(|n| n == &disk))
            .and_then(|d| d.volumes.iter().find(|v| v.partition == part));
        match found {
            Some(v) => Resolved::Migrated(v),
            // A source name the map does not list: the mount point still
            // tells which migrated volume it was when the layout mounted it.
            None => match mountpoint.and_then(|mp| self.by_mountpoint(mp)) {
                Some(v) => Resolved::Migrated(v),
                None => Resolved::NotMigrated,
            },
        }
    }
}

impl DeviceMap {
    /// The renaming of `spec`, a name the source had (quotes ignored);
    /// never one whose new name is itself renamed.
    pub(crate) fn renamed_from(&self, spec: &str) -> Option<&crate::layout::flatten::Renamed> {
        let spec = spec.trim_matches('"');
        self.renamed
            .iter()
            .find(|r| r.from == spec && !self.renamed.iter().any(|o| o.from == r.to))
    }

    /// Whether the volume group `vg` of the source is gone: one of its
    /// volumes was laid out as a plain partition.
    pub(crate) fn vg_flattened(&self, vg: &str) -> bool {
        let prefix = format!("/dev/{vg}/");
        self.renamed.iter().any(|r| r.from.starts_with(&prefix))
    }

    /// The map of a layout engine's mount tree, the way the job runner has
    /// it after a transfer: `source_names[i]` are the names the source
    /// system knew disk i by (from the sender's inventory).
    pub fn from_mount_tree(
        tree: &crate::layout::tree::MountTree,
        source_names: &[Vec<String>],
    ) -> DeviceMap {
        let disks = tree
            .layout()
            .disks
            .iter()
            .zip(tree.disks())
            .enumerate()
            .map(|(i, (desc, attached))| MigratedDisk {
                source_names: source_names.get(i).cloned().unwrap_or_default(),
                target: attached.whole().to_owned(),
                volumes: desc
                    .partitions
                    .iter()
                    .zip(attached.partitions())
                    .filter(|(p, _)| p.fs.kind != crate::layout::FsType::None)
                    .map(|(p, node)| Volume {
                        partition: partition_number(node),
                        node: node.clone(),
                        fstype: Some(p.fs.kind.as_str().to_owned()),
                        uuid: p.fs.uuid.clone(),
                        label: p.fs.label.clone(),
                        partuuid: p.partuuid.clone(),
                        mountpoint: p.fs.mount.clone(),
                        aliases: Vec::new(),
                    })
                    .collect(),
            })
            .collect::<Vec<MigratedDisk>>();
        let mut disks = disks;
        // Logical volumes, on the disk of their PV: no partition of their
        // own, reached through their loop devices.
        for (v, node) in tree.volumes() {
            if let Some(d) = v.place.and_then(|p| disks.get_mut(p.disk)) {
                d.volumes.push(Volume {
                    partition: None,
                    node: node.to_owned(),
                    fstype: Some(v.fs.kind.as_str().to_owned()),
                    uuid: v.fs.uuid.clone(),
                    label: v.fs.label.clone(),
                    partuuid: None,
                    mountpoint: v.fs.mount.clone(),
                    aliases: v.aliases(),
                });
            }
        }
        DeviceMap {
            disks,
            renamed: Vec::new(),
        }
    }
}

/// The number of a partition node: its trailing digits (`/dev/loop3p5`,
/// `/dev/vdb5`, `/dev/nvme0n1p5` are all 5).
pub(crate) fn partition_number(node: &std::path::Path) -> Option<u32> {
    let name = node.file_name()?.to_string_lossy().into_owned();
    let digits: String = name
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.chars().rev().collect::<String>().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_disk(target: &str, partition: Option<u32>, mp: &str) -> DeviceMap {
        DeviceMap {
            renamed: Vec::new(),
            disks: vec![MigratedDisk {
                source_names: vec!["/dev/sda".into()],
                target: target.into(),
                volumes: vec![Volume {
                    partition,
                    node: format!("{target}p1").into(),
                    fstype: Some("ext4".into()),
                    uuid: None,
                    label: None,
                    partuuid: None,
                    mountpoint: Some(mp.into()),
                    aliases: Vec::new(),
                }],
            }],
        }
    }

    #[test]
    fn bios_boot_code_goes_to_a_whole_disk_only() {
        let map = one_disk("/dev/loop0", Some(2), "/");
        assert_eq!(map.bios_disk().unwrap(), PathBuf::from("/dev/loop0"));
        let err = one_disk("/dev/loop5", None, "/").bios_disk().unwrap_err();
        assert_eq!(
            crate::job::errors::find_coded(&err).map(|c| c.code),
            Some(crate::job::errors::ErrorCode::RepairBadInput)
        );
        let text = format!("{err:#}");
        assert!(
            text.contains("/dev/loop5 holds the file system of / itself")
                && text.contains("--disk SOURCE=/dev/loopN"),
            "{text}"
        );
        let err = one_disk("/dev/loop0", Some(1), "/srv")
            .bios_disk()
            .unwrap_err();
        assert!(format!("{err:#}").contains("no migrated disk holds / or /boot"));
    }

    #[test]
    fn resolve_by_name_identity_and_mountpoint() {
        let root = Volume {
            partition: Some(1),
            uuid: Some("AAAA".into()),
            mountpoint: Some("/".into()),
            ..Default::default()
        };
        let map = DeviceMap {
            renamed: Vec::new(),
            disks: vec![MigratedDisk {
                source_names: vec!["/dev/sda".into()],
                target: "/dev/vdb".into(),
                volumes: vec![root.clone()],
            }],
        };
        assert_eq!(map.resolve("/dev/sda1", None), Resolved::Migrated(&root));
        assert_eq!(map.resolve("UUID=aaaa", None), Resolved::Migrated(&root));
        assert_eq!(
            map.resolve("/dev/disk/by-uuid/AAAA", None),
            Resolved::Migrated(&root)
        );
        assert_eq!(map.resolve("UUID=BBBB", None), Resolved::UnknownId);
        assert_eq!(
            map.resolve("/dev/sdb1", Some("/data")),
            Resolved::NotMigrated
        );
        assert_eq!(
            map.resolve("/dev/disk/by-id/wwn-0x5000-part1", Some("/")),
            Resolved::Migrated(&root)
        );
        assert_eq!(
            map.resolve("/dev/mapper/vg-home", Some("/home")),
            Resolved::Other
        );
        assert_eq!(map.resolve("proc", Some("/proc")), Resolved::Other);
    }
}
