//! File mode's answer to an LVM source: a file system on a logical volume
//! is laid out on the target as a plain partition with the same file
//! system UUID, so the migrated system needs no volume group. What named
//! the volume (`/dev/mapper/<vg>-<lv>`, `/dev/<vg>/<lv>`) is then to be
//! named by its UUID ([`Renamed`]), which the repair writes into fstab and
//! GRUB's `root=`.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::desc::{align_up, DiskLayout, FsType, PartType, PartitionLayout, Size, MIB};
use crate::job::errors::{coded, ErrorCode};

/// A logical volume of the source holding a file system (or swap).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceVolume {
    pub vg: String,
    pub lv: String,
    /// Bytes.
    pub size: u64,
    pub fs: FsType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
}

/// A device name of the source that no longer exists on the target, and
/// the spec that names the same file system there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Renamed {
    pub from: String,
    pub to: String,
}

impl SourceVolume {
    /// Its names in the source system: device-mapper's (a `-` in either
    /// name doubled) and LVM's own link.
    pub fn device_names(&self) -> [String; 2] {
        [
            format!(
                "/dev/mapper/{}-{}",
                self.vg.replace('-', "--"),
                self.lv.replace('-', "--")
            ),
            format!("/dev/{}/{}", self.vg, self.lv),
        ]
    }
}

/// Replace the LVM physical-volume partition at position `pv` of `disk`
/// by one plain partition per logical volume of `volumes`, in their order:
/// each with the volume's size (rounded up to 1 MiB), file system, UUID,
/// label and mount point. Returns the new layout and what each volume's
/// old names become.
pub fn flatten_lvm(
    disk: &DiskLayout,
    pv: usize,
    volumes: &[SourceVolume],
) -> Result<(DiskLayout, Vec<Renamed>)> {
    let invalid = |d: String| coded(ErrorCode::LayoutInvalid, d);
    let Some(p) = disk.partitions.get(pv) else {
        bail!(invalid(format!("the disk has no partition {}", pv + 1)));
    };
    if p.kind != PartType::Lvm && p.fs != FsType::Other("LVM2_member".into()) {
        bail!(invalid(format!(
            "partition {} is not an LVM physical volume ({}, {})",
            pv + 1,
            p.kind.as_str(),
            p.fs
        )));
    }
    if volumes.is_empty() {
        bail!(invalid(format!(
            "the physical volume on partition {} holds no volume to send",
            pv + 1
        )));
    }
    let mut out = disk.clone();
    let mut renamed = Vec::new();
    let parts: Vec<PartitionLayout> = volumes
        .iter()
        .map(|v| {
            if let Some(u) = &v.uuid {
                let to = format!("UUID={u}");
                for from in v.device_names() {
                    renamed.push(Renamed {
                        from,
                        to: to.clone(),
                    });
                }
            }
            PartitionLayout {
                size: Size::Bytes(align_up(v.size.max(MIB), MIB)),
                start: None,
                kind: if v.fs == FsType::Swap {
                    PartType::Swap
                } else {
                    PartType::Linux
                },
                fs: v.fs.clone(),
                uuid: v.uuid.clone(),
                label: v.label.clone(),
                mount: v.mount.clone(),
                partuuid: None,
                name: None,
                number: None,
                bootable: false,
                subvol: None,
                subvolumes: Vec::new(),
                features: Vec::new(),
            }
        })
        .collect();
    out.partitions.splice(pv..=pv, parts);
    for p in &mut out.partitions {
        p.start = None;
        p.number = None;
    }
    out.validate()?;
    Ok((out, renamed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;

    const LVM: &str = r#"
[[disk]]
table = "mbr"
id = "0a0b0c0d"
[[disk.partition]]
size = "512MiB"
type = "linux"
fs = "ext4"
uuid = "11111111-2222-3333-4444-555555555555"
mount = "/boot"
bootable = true
[[disk.partition]]
size = "9GiB"
type = "lvm"
fs = "LVM2_member"
"#;

    fn volumes() -> Vec<SourceVolume> {
        vec![
            SourceVolume {
                vg: "vg-sys".into(),
                lv: "root".into(),
                size: 8 * 1024 * MIB,
                fs: FsType::Xfs,
                uuid: Some("21111111-2222-3333-4444-555555555555".into()),
                label: None,
                mount: Some("/".into()),
            },
            SourceVolume {
                vg: "vg-sys".into(),
                lv: "swap_1".into(),
                size: 1000 * MIB + 4096,
                fs: FsType::Swap,
                uuid: Some("31111111-2222-3333-4444-555555555555".into()),
                label: None,
                mount: None,
            },
        ]
    }

    #[test]
    fn each_volume_becomes_a_plain_partition_with_its_uuid() {
        let l = Layout::from_toml(LVM).unwrap();
        let (d, renamed) = flatten_lvm(&l.disks[0], 1, &volumes()).unwrap();
        let p = &d.partitions;
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].mount.as_deref(), Some("/boot"));
        assert!(p[0].bootable);
        assert_eq!(
            (
                &p[1].kind,
                &p[1].fs,
                p[1].uuid.as_deref(),
                p[1].mount.as_deref()
            ),
            (
                &PartType::Linux,
                &FsType::Xfs,
                Some("21111111-2222-3333-4444-555555555555"),
                Some("/")
            )
        );
        assert_eq!(p[1].size, Size::Bytes(8 * 1024 * MIB));
        assert_eq!((&p[2].kind, &p[2].fs), (&PartType::Swap, &FsType::Swap));
        assert_eq!(p[2].size, Size::Bytes(1001 * MIB));
        let names: Vec<(&str, &str)> = renamed
            .iter()
            .map(|r| (r.from.as_str(), r.to.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (
                    "/dev/mapper/vg--sys-root",
                    "UUID=21111111-2222-3333-4444-555555555555"
                ),
                (
                    "/dev/vg-sys/root",
                    "UUID=21111111-2222-3333-4444-555555555555"
                ),
                (
                    "/dev/mapper/vg--sys-swap_1",
                    "UUID=31111111-2222-3333-4444-555555555555"
                ),
                (
                    "/dev/vg-sys/swap_1",
                    "UUID=31111111-2222-3333-4444-555555555555"
                ),
            ]
        );
    }

    #[test]
    fn only_a_physical_volume_is_flattened() {
        let l = Layout::from_toml(LVM).unwrap();
        let err = format!("{:#}", flatten_lvm(&l.disks[0], 0, &volumes()).unwrap_err());
        assert!(
            err.contains("partition 1 is not an LVM physical volume (linux, ext4)"),
            "{err}"
        );
        // An MBR holds four primary partitions: five volumes do not fit.
        let mut many = volumes();
        for i in 0..3 {
            let mut v = many[0].clone();
            v.lv = format!("data{i}");
            v.mount = Some(format!("/data{i}"));
            v.uuid = None;
            many.push(v);
        }
        let err = format!("{:#}", flatten_lvm(&l.disks[0], 1, &many).unwrap_err());
        assert!(
            err.contains("an MBR table holds 4 primary partitions"),
            "{err}"
        );
    }
}
