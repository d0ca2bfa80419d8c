//! LVM in the appliance.
//!
//! The appliance reads the LVM2 on-disk metadata of each physical volume
//! itself ([`label`], [`text`], [`vg`]) to find the logical volumes and
//! where each lies. The tree the repair works in reaches them by
//! device-mapper where the kernel has it (a cloud instance): [`activate`]
//! activates the guest's volume groups under a private LVM configuration
//! that sees only the target's PVs, and deactivates them after. Where it
//! has none (the machines ferry is built on), and for read-only looks,
//! each linear logical volume is a loop device at its extents' offset
//! ([`LvNode`]). Striped, mirrored, raid, thin and multi-segment volumes
//! are refused with `LVM_UNSUPPORTED`. Only the job's target disks are
//! read, so a volume group of the same name elsewhere on the appliance is
//! never seen. Growing a PV and its root LV onto a larger disk is
//! [`grow`].

pub mod activate;
pub mod grow;
pub mod label;
pub mod text;
pub mod vg;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::desc::{plan, Extent, FsSpec, Layout, LogicalVolume, Place};

use super::devices::disk_size;
use crate::cmd::Cmd;
use crate::job::errors::{coded, ErrorCode};

/// A PV found on a partition: its label's UUID and its newest metadata.
struct FoundPv {
    disk: usize,
    partition: usize,
    extent: Extent,
    uuid: String,
    vg: Option<vg::VolumeGroup>,
}

/// Read the label and metadata of the PV on bytes `extent` of `target`.
pub(crate) fn read_pv(
    target: &Path,
    extent: Extent,
) -> Result<Option<(label::PvLabel, Option<vg::VolumeGroup>)>> {
    let f = std::fs::File::open(target).with_context(|| format!("opening {}", target.display()))?;
    let range = label::FileRange {
        file: &f,
        start: extent.start,
        len: extent.len,
    };
    let Some(l) = label::read_label(&range)? else {
        return Ok(None);
    };
    let mut newest: Option<vg::VolumeGroup> = None;
    let mut first_err = None;
    for mda in &l.metadata {
        let read = label::read_metadata(&range, *mda).and_then(|t| {
            t.map(|t| text::parse(&t).and_then(vg::VolumeGroup::from_text))
                .transpose()
        });
        match read {
            Ok(Some(g)) if newest.as_ref().is_none_or(|n| g.seqno > n.seqno) => newest = Some(g),
            Ok(_) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match (newest, first_err) {
        // A second copy that is damaged while one is good: LVM reads on too.
        (Some(g), _) => Ok(Some((l, Some(g)))),
        (None, Some(e)) => Err(e),
        (None, None) => Ok(Some((l, None))),
    }
}

/// The logical volumes of every PV among the layout's partitions
/// (`targets[i]` holds disk i), each VG by its newest metadata, each
/// volume placed on its PV or refused with the reason.
pub(crate) fn volumes_of(layout: &Layout, targets: &[PathBuf]) -> Result<Vec<LogicalVolume>> {
    let mut found = Vec::new();
    for (di, (d, t)) in layout.disks.iter().zip(targets).enumerate() {
        if !d.partitions.iter().any(|p| p.fs.kind.is_lvm_pv()) {
            continue;
        }
        let extents = plan(d, disk_size(t)?)
            .with_context(|| format!("placing the partitions of {}", t.display()))?;
        for (pi, (p, e)) in d.partitions.iter().zip(extents).enumerate() {
            if !p.fs.kind.is_lvm_pv() {
                continue;
            }
            let what = format!(
                "the LVM physical volume on partition {} of disk {di} ({})",
                d.numbers()[pi],
                t.display()
            );
            let pv = read_pv(t, e)
                .with_context(|| format!("reading {what}"))
                .map_err(|e| coded(ErrorCode::LvmMetadataInvalid, format!("{e:#}")))?;
            let Some((l, g)) = pv else {
                tracing::warn!("{what} has no LVM label");
                continue;
            };
            found.push(FoundPv {
                disk: di,
                partition: pi,
                extent: e,
                uuid: l.uuid,
                vg: g,
            });
        }
    }
    // Each VG by its id, the newest metadata among its PVs winning.
    let mut groups: BTreeMap<String, vg::VolumeGroup> = BTreeMap::new();
    for f in &found {
        if let Some(g) = &f.vg {
            match groups.get(&g.id) {
                Some(have) if have.seqno >= g.seqno => {}
                _ => {
                    groups.insert(g.id.clone(), g.clone());
                }
            }
        }
    }
    let mut out = Vec::new();
    for g in groups.values() {
        for lv in g.lvs.iter().filter(|l| l.visible) {
            let mut v = LogicalVolume {
                vg: g.name.clone(),
                vg_uuid: Some(g.id.clone()),
                name: lv.name.clone(),
                place: None,
                refused: None,
                fs: FsSpec::default(),
            };
            match place_of(g, lv, &found) {
                Ok((place, disk_extent)) => {
                    v.fs = super::mkfs::probe(&targets[place.disk], disk_extent)
                        .with_context(|| format!("probing logical volume {}", v.display()))?;
                    v.place = Some(place);
                }
                Err(why) => v.refused = Some(why),
            }
            out.push(v);
        }
    }
    Ok(out)
}

fn place_of(
    g: &vg::VolumeGroup,
    lv: &vg::LvMeta,
    found: &[FoundPv],
) -> std::result::Result<(Place, Extent), String> {
    let l = lv.linear()?;
    let pv = g.pv(&l.pv).ok_or_else(|| {
        format!(
            "its extents are on {}, which the metadata does not list",
            l.pv
        )
    })?;
    let f = found.iter().find(|f| f.uuid == pv.uuid).ok_or_else(|| {
        format!(
            "it is on physical volume {}, which is not on the migrated disks",
            pv.uuid
        )
    })?;
    let offset = l
        .first
        .checked_mul(g.extent_size)
        .and_then(|o| o.checked_add(pv.pe_start))
        .ok_or("its extents overflow")?;
    let size = l
        .count
        .checked_mul(g.extent_size)
        .ok_or("its extents overflow")?;
    if offset.saturating_add(size) > f.extent.len {
        return Err(format!(
            "its extents ({size} bytes at byte {offset}) reach beyond the end of its partition ({} bytes)",
            f.extent.len
        ));
    }
    Ok((
        Place {
            disk: f.disk,
            partition: f.partition,
            offset,
            size,
        },
        Extent {
            start: f.extent.start + offset,
            len: size,
        },
    ))
}

/// The node a logical volume is reached by: a loop device over its bytes
/// of the disk, a partition of its disk's loop device, or the
/// device-mapper node of its active VG. Detached by `close` or, best
/// effort, on drop (a device-mapper node goes with its VG's
/// [`activate::Activation`]).
#[derive(Debug)]
pub struct LvNode {
    dev: Option<PathBuf>,
    volume: LogicalVolume,
    kind: NodeKind,
}

#[derive(Debug)]
enum NodeKind {
    Loop,
    /// Shown as partition `.1` of its disk's loop device `.0`.
    Partition(PathBuf, usize),
    Mapped,
}

impl LvNode {
    /// Attach `v` (placed) on `disk` (the image file or block device of its
    /// disk), whose partition `v.place.partition` starts at `part_start`.
    pub fn attach(
        disk: &Path,
        part_start: u64,
        v: &LogicalVolume,
        read_only: bool,
    ) -> Result<LvNode> {
        let place = v.reachable_place()?;
        let mut c = Cmd::new("losetup")
            .args(["--find", "--show", "--offset"])
            .arg((part_start + place.offset).to_string())
            .arg("--sizelimit")
            .arg(place.size.to_string());
        if read_only {
            c = c.arg("--read-only");
        }
        let out = c.arg(disk).run().with_context(|| {
            format!(
                "attaching logical volume {} of {} to a loop device",
                v.display(),
                disk.display()
            )
        })?;
        let name = out.stdout_text().trim().to_owned();
        if !name.starts_with("/dev/loop") {
            anyhow::bail!(
                "losetup printed {name:?} for logical volume {}",
                v.display()
            );
        }
        let dev = PathBuf::from(name);
        tracing::debug!(volume = %v.display(), device = %dev.display(), "logical volume attached");
        Ok(Self::named(dev, v, NodeKind::Loop))
    }

    /// Volume `v` of a VG that `a` activated, by its device-mapper node.
    pub fn mapped(a: &activate::Activation, v: &LogicalVolume) -> Result<LvNode> {
        let dev = a.node(v)?;
        tracing::debug!(volume = %v.display(), device = %dev.display(), "logical volume active");
        Ok(Self::named(dev, v, NodeKind::Mapped))
    }

    fn named(dev: PathBuf, v: &LogicalVolume, kind: NodeKind) -> LvNode {
        LvNode {
            dev: Some(dev),
            volume: v.clone(),
            kind,
        }
    }

    /// Show `v` as partition `number` of `disk_loop` (the loop device of
    /// its disk image), at its bytes of the disk, `part_start` being its PV
    /// partition's start. The migrated system's tools treat a partition
    /// node as a disk's, where they skip a bare loop device (Debian's
    /// grub-mkconfig writes no entry for a root on one: it takes it for
    /// loop-AES).
    pub fn partition(
        disk_loop: &Path,
        number: usize,
        part_start: u64,
        v: &LogicalVolume,
    ) -> Result<LvNode> {
        let place = v.reachable_place()?;
        let dev = super::devices::add_partition(
            disk_loop,
            number,
            Extent {
                start: part_start + place.offset,
                len: place.size,
            },
        )
        .with_context(|| format!("showing logical volume {} as a partition", v.display()))?;
        Ok(Self::named(
            dev,
            v,
            NodeKind::Partition(disk_loop.to_owned(), number),
        ))
    }

    /// The node: a loop device, or /dev/dm-N.
    pub fn path(&self) -> &Path {
        self.dev.as_deref().unwrap_or(Path::new(""))
    }

    pub fn volume(&self) -> &LogicalVolume {
        &self.volume
    }

    pub fn close(mut self) -> Result<()> {
        self.impl_close()
    }

    fn impl_close(&mut self) -> Result<()> {
        let Some(dev) = self.dev.take() else {
            return Ok(());
        };
        match std::mem::replace(&mut self.kind, NodeKind::Mapped) {
            NodeKind::Partition(disk, n) => super::devices::remove_partition(&disk, n),
            NodeKind::Loop => super::devices::detach(&dev),
            NodeKind::Mapped => Ok(()),
        }
        .with_context(|| format!("detaching logical volume {}", self.volume.display()))
    }
}

impl Drop for LvNode {
    fn drop(&mut self) {
        if let Err(e) = self.impl_close() {
            tracing::warn!("{e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pv_image_is_read_into_placed_volumes() {
        let lvs = format!(
            "{}{}",
            vg::tests::lv(
                "root",
                &[("striped", 20, "stripe_count = 1\nstripes = [\"pv0\", 0]")]
            ),
            vg::tests::lv("thin1", &[("thin", 4, "thin_pool = \"p\"")])
        );
        let text = vg::tests::metadata("ferry-vg", 7, &lvs);
        let mut bytes = label::tests::pv_bytes(&text, 65536, 512);
        // the PV's UUID in the label is the metadata's without dashes
        bytes.resize(100 << 20, 0);
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("pv.img");
        std::fs::write(&img, &bytes).unwrap();
        let (l, g) = read_pv(
            &img,
            Extent {
                start: 0,
                len: bytes.len() as u64,
            },
        )
        .unwrap()
        .unwrap();
        let g = g.unwrap();
        assert_eq!(l.uuid, g.pvs[0].uuid);
        let found = vec![FoundPv {
            disk: 0,
            partition: 1,
            extent: Extent {
                start: 1 << 20,
                len: bytes.len() as u64,
            },
            uuid: l.uuid,
            vg: Some(g.clone()),
        }];
        let (place, at) = place_of(&g, &g.lvs[0], &found).unwrap();
        assert_eq!(
            place,
            Place {
                disk: 0,
                partition: 1,
                offset: 1 << 20,
                size: 20 * (4 << 20)
            }
        );
        assert_eq!(
            at,
            Extent {
                start: 2 << 20,
                len: 20 * (4 << 20)
            }
        );
        assert_eq!(
            place_of(&g, &g.lvs[1], &found).unwrap_err(),
            "it is a thin volume (its blocks are mapped by a pool)"
        );
        let elsewhere: Vec<FoundPv> = Vec::new();
        assert_eq!(
            place_of(&g, &g.lvs[0], &elsewhere).unwrap_err(),
            "it is on physical volume AbCdEf0123456789AbCdEf0123456789, which is not on the migrated disks"
        );
    }
}
