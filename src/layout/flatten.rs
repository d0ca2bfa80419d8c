//! File mode's answer to an LVM source: a file system on a logical volume
//! is laid out on the target as a plain partition with the same file
//! system UUID, so the migrated system needs no volume group. What named
//! the volume (`/dev/mapper/<vg>-<lv>`, `/dev/<vg>/<lv>`) is then to be
//! named by its UUID ([`Renamed`]), which the repair writes into fstab,
//! the kernel command line and the initramfs's resume setting.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::desc::LogicalVolume;
use super::desc::{align_up, DiskLayout, FsType, Layout, PartType, PartitionLayout, Size, MIB};
use crate::job::errors::{coded, ErrorCode};

/// A device name of the source that no longer exists on the target, and
/// the spec that names the same file system there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Renamed {
    pub from: String,
    pub to: String,
}

/// A logical volume laid out as a plain partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flattened {
    /// `vg/lv`.
    pub volume: String,
    pub fs: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// Disk index and partition number on the target.
    pub disk: usize,
    pub partition: usize,
}

/// What [`flatten_layout`] made of a layout's volume groups.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlatLvm {
    /// Each kept volume and the partition it became.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Flattened>,
    /// The old names of the kept volumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub renamed: Vec<Renamed>,
    /// Volumes left behind: neither mounted on the source nor swap, so
    /// nothing of them is sent (`vg/lv`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
}

impl FlatLvm {
    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty() && self.left_out.is_empty()
    }
}

/// Its names in the source system: device-mapper's (a `-` in either name
/// doubled), LVM's own link and udev's by-id link.
pub(crate) fn device_names(v: &LogicalVolume) -> [String; 3] {
    let mapper = v.mapper_path();
    let dm = mapper.trim_start_matches("/dev/mapper/").to_owned();
    [mapper, v.vg_path(), format!("/dev/disk/by-id/dm-name-{dm}")]
}

/// A volume file mode carries: one mounted on the source, or swap.
fn carried(v: &LogicalVolume) -> bool {
    v.fs.mount.is_some() || v.fs.kind == FsType::Swap
}

/// The layout with every LVM physical volume that holds volumes replaced
/// by one plain partition per carried volume ([`flatten_lvm`]), and no
/// volumes left; the layout as it is when it has no volumes. A carried
/// volume the appliance cannot place (striped, thin...) is refused with
/// `LVM_UNSUPPORTED`.
pub fn flatten_layout(layout: &Layout) -> Result<(Layout, FlatLvm)> {
    let mut out = layout.clone();
    out.volumes.clear();
    let mut flat = FlatLvm::default();
    if layout.volumes.is_empty() {
        return Ok((out, flat));
    }
    for v in &layout.volumes {
        if !carried(v) {
            flat.left_out.push(v.display());
            continue;
        }
        if let Some(e) = v.refusal() {
            return Err(e.context(
                "file mode lays out linear logical volumes only; send this server in block mode",
            ));
        }
        if v.place.is_none() {
            bail!(coded(
                ErrorCode::LvmUnsupported,
                format!(
                    "logical volume {} is on no physical volume of the layout's disks",
                    v.display()
                )
            ));
        }
    }
    for (d, disk) in layout.disks.iter().enumerate().rev() {
        for (p, part) in disk.partitions.iter().enumerate().rev() {
            let mut here: Vec<&LogicalVolume> = layout
                .volumes
                .iter()
                .filter(|v| carried(v))
                .filter(|v| v.place.is_some_and(|pl| pl.disk == d && pl.partition == p))
                .collect();
            if !part.fs.kind.is_lvm_pv() && part.kind != PartType::Lvm {
                continue;
            }
            if here.is_empty() {
                // A physical volume with nothing carried: nothing of it
                // is laid out.
                out.disks[d].partitions.remove(p);
                continue;
            }
            here.sort_by_key(|v| v.place.map(|pl| pl.offset));
            let volumes: Vec<LogicalVolume> = here.into_iter().cloned().collect();
            let (disk_out, renamed) = flatten_lvm(&out.disks[d], p, &volumes)?;
            out.disks[d] = disk_out;
            flat.renamed.extend(renamed);
        }
    }
    out.validate()?;
    // Where each kept volume went.
    for (d, disk) in out.disks.iter().enumerate() {
        let numbers = disk.numbers();
        for (i, part) in disk.partitions.iter().enumerate() {
            let Some(v) = layout.volumes.iter().find(|v| {
                carried(v)
                    && v.fs.uuid.is_some()
                    && v.fs.uuid == part.fs.uuid
                    && v.fs.kind == part.fs.kind
                    && v.fs.mount == part.fs.mount
            }) else {
                continue;
            };
            flat.volumes.push(Flattened {
                volume: v.display(),
                fs: v.fs.kind.to_string(),
                uuid: v.fs.uuid.clone(),
                mount: v.fs.mount.clone(),
                disk: d,
                partition: numbers[i],
            });
        }
    }
    Ok((out, flat))
}

/// Replace the LVM physical-volume partition at position `pv` of `disk`
/// by one plain partition per logical volume of `volumes`, in their order:
/// each with the volume's size (rounded up to 1 MiB), file system, UUID,
/// label and mount point. Returns the new layout and what each volume's
/// old names become.
pub fn flatten_lvm(
    disk: &DiskLayout,
    pv: usize,
    volumes: &[LogicalVolume],
) -> Result<(DiskLayout, Vec<Renamed>)> {
    let invalid = |d: String| coded(ErrorCode::LayoutInvalid, d);
    let Some(p) = disk.partitions.get(pv) else {
        bail!(invalid(format!("the disk has no partition {}", pv + 1)));
    };
    if p.kind != PartType::Lvm && !p.fs.kind.is_lvm_pv() {
        bail!(invalid(format!(
            "partition {} is not an LVM physical volume ({}, {})",
            pv + 1,
            p.kind.as_str(),
            p.fs.kind
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
    let mut parts = Vec::new();
    for v in volumes {
        let Some(place) = v.place else {
            bail!(invalid(format!(
                "logical volume {} has no place on its physical volume",
                v.display()
            )));
        };
        if let Some(u) = &v.fs.uuid {
            let to = format!("UUID={u}");
            for from in device_names(v) {
                renamed.push(Renamed {
                    from,
                    to: to.clone(),
                });
            }
        }
        parts.push(PartitionLayout {
            size: Size::Bytes(align_up(place.size.max(MIB), MIB)),
            start: None,
            kind: if v.fs.kind == FsType::Swap {
                PartType::Swap
            } else {
                PartType::Linux
            },
            fs: v.fs.clone(),
            partuuid: None,
            name: None,
            number: None,
            bootable: false,
        });
    }
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
    use crate::layout::desc::FsSpec;
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

    fn lv(
        name: &str,
        offset: u64,
        size: u64,
        fs: FsType,
        uuid: Option<&str>,
        mount: Option<&str>,
    ) -> LogicalVolume {
        LogicalVolume {
            vg: "vg-sys".into(),
            vg_uuid: None,
            name: name.into(),
            place: Some(crate::layout::desc::Place {
                disk: 0,
                partition: 1,
                offset,
                size,
            }),
            refused: None,
            fs: FsSpec {
                kind: fs,
                uuid: uuid.map(str::to_owned),
                mount: mount.map(str::to_owned),
                ..FsSpec::default()
            },
        }
    }

    fn volumes() -> Vec<LogicalVolume> {
        vec![
            lv(
                "root",
                MIB,
                8 * 1024 * MIB,
                FsType::Xfs,
                Some("21111111-2222-3333-4444-555555555555"),
                Some("/"),
            ),
            lv(
                "swap_1",
                (8 * 1024 + 1) * MIB,
                1000 * MIB + 4096,
                FsType::Swap,
                Some("31111111-2222-3333-4444-555555555555"),
                None,
            ),
        ]
    }

    #[test]
    fn each_volume_becomes_a_plain_partition_with_its_uuid() {
        let l = Layout::from_toml(LVM).unwrap();
        let (d, renamed) = flatten_lvm(&l.disks[0], 1, &volumes()).unwrap();
        let p = &d.partitions;
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].fs.mount.as_deref(), Some("/boot"));
        assert!(p[0].bootable);
        assert_eq!(
            (
                &p[1].kind,
                &p[1].fs.kind,
                p[1].fs.uuid.as_deref(),
                p[1].fs.mount.as_deref()
            ),
            (
                &PartType::Linux,
                &FsType::Xfs,
                Some("21111111-2222-3333-4444-555555555555"),
                Some("/")
            )
        );
        assert_eq!(p[1].size, Size::Bytes(8 * 1024 * MIB));
        assert_eq!(
            (&p[2].kind, &p[2].fs.kind),
            (&PartType::Swap, &FsType::Swap)
        );
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
                    "/dev/disk/by-id/dm-name-vg--sys-root",
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
                (
                    "/dev/disk/by-id/dm-name-vg--sys-swap_1",
                    "UUID=31111111-2222-3333-4444-555555555555"
                ),
            ]
        );
    }

    #[test]
    fn an_ext4_volume_keeps_its_features_on_its_partition() {
        let l = Layout::from_toml(LVM).unwrap();
        let mut vols = volumes();
        vols[0].fs.kind = FsType::Ext4;
        vols[0].fs.features = vec!["has_journal".into(), "metadata_csum".into(), "64bit".into()];
        let (d, _) = flatten_lvm(&l.disks[0], 1, &vols).unwrap();
        assert_eq!(d.partitions[1].fs.features, vols[0].fs.features);
        assert!(d.partitions[2].fs.features.is_empty());
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
            v.name = format!("data{i}");
            v.fs.mount = Some(format!("/data{i}"));
            v.fs.uuid = None;
            many.push(v);
        }
        let err = format!("{:#}", flatten_lvm(&l.disks[0], 1, &many).unwrap_err());
        assert!(
            err.contains("an MBR table holds 4 primary partitions"),
            "{err}"
        );
    }

    #[test]
    fn a_layout_loses_its_volume_groups_and_says_where_each_volume_went() {
        let mut l = Layout::from_toml(LVM).unwrap();
        l.volumes = volumes();
        // Mounted nowhere and not swap: not carried.
        l.volumes.push(lv(
            "scratch",
            (9 * 1024 - 10) * MIB,
            4 * MIB,
            FsType::Ext4,
            Some("41111111-2222-3333-4444-555555555555"),
            None,
        ));
        let (flat, lvm) = flatten_layout(&l).unwrap();
        assert!(flat.volumes.is_empty());
        assert_eq!(flat.disks[0].partitions.len(), 3);
        assert_eq!(flat.mount_points(), ["/boot", "/"]);
        assert_eq!(lvm.left_out, ["vg-sys/scratch"]);
        assert_eq!(lvm.renamed.len(), 6);
        let went: Vec<(&str, Option<&str>, usize)> = lvm
            .volumes
            .iter()
            .map(|v| (v.volume.as_str(), v.mount.as_deref(), v.partition))
            .collect();
        assert_eq!(
            went,
            [("vg-sys/root", Some("/"), 2), ("vg-sys/swap_1", None, 3)]
        );

        // The same layout without volumes is left as it is.
        let plain = Layout::from_toml(LVM).unwrap();
        let (same, none) = flatten_layout(&plain).unwrap();
        assert_eq!(same, plain);
        assert!(none.is_empty() && none.renamed.is_empty());

        // A carried volume the appliance cannot place is refused.
        let mut striped = l.clone();
        striped.volumes[0].place = None;
        striped.volumes[0].refused = Some("it is striped over 2 physical volumes".into());
        let err = flatten_layout(&striped).unwrap_err();
        assert_eq!(
            crate::job::errors::find_coded(&err).map(|c| c.code),
            Some(ErrorCode::LvmUnsupported)
        );
        let text = format!("{err:#}");
        assert!(
            text.contains("send this server in block mode")
                && text.contains(
                    "logical volume vg-sys/root (/): it is striped over 2 physical volumes"
                ),
            "{text}"
        );
    }
}
