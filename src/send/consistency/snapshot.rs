//! `--consistency snapshot`: each file system mounted read-write on a
//! source disk is on an LVM logical volume; a snapshot volume of it is
//! taken (LVM suspends the volume and freezes its file system for the
//! moment it takes), the disk is read with that volume's extents taken from
//! the snapshot instead, and the snapshot is removed at the end. A
//! snapshot that a killed run left (named [`PREFIX`]`<volume>`) is found and
//! removed before a new one is taken.
//!
//! The commands are a [`Plan`] built from LVM's JSON reports, so that it
//! can be checked without device-mapper; [`Overlay`] is the mapping of the
//! disk's bytes to the snapshots'.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Deserialize;

use super::mounts::{Host, Lv};
use crate::cmd::Cmd;
use crate::disk::Disk;
use crate::job::errors::{coded, ErrorCode};

/// The name of ferry's snapshot of volume `lv` starts with this.
pub const PREFIX: &str = "ferry-snap-";

/// Copy-on-write space of a snapshot: a tenth of its volume, at least
/// this much (in bytes), in whole extents.
const MIN_COW: u64 = 256 << 20;

/// LVM's `--reportformat json`: `{"report": [{"lv": [{...}]}]}`.
#[derive(Debug, Deserialize)]
struct LvmJson<T> {
    report: Vec<T>,
}

#[derive(Debug, Deserialize)]
struct LvReport {
    lv: Vec<LvRow>,
}

#[derive(Debug, Deserialize)]
struct VgReport {
    vg: Vec<VgRow>,
}

#[derive(Debug, Deserialize)]
struct PvReport {
    pv: Vec<PvRow>,
}

/// One row of `lvs --segments`.
#[derive(Debug, Clone, Deserialize)]
pub struct LvRow {
    pub lv_name: String,
    pub vg_name: String,
    #[serde(default)]
    pub lv_size: String,
    #[serde(default)]
    pub seg_start_pe: String,
    #[serde(default)]
    pub seg_pe_ranges: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VgRow {
    pub vg_name: String,
    pub vg_extent_size: String,
    pub vg_free_count: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PvRow {
    pub pv_name: String,
    pub pe_start: String,
}

fn num(field: &str, what: &str) -> Result<u64> {
    field
        .trim()
        .trim_end_matches('B')
        .parse()
        .with_context(|| format!("LVM reported {what} `{field}`, not a number"))
}

/// What LVM says about the volumes, groups and physical volumes.
#[derive(Debug, Clone, Default)]
pub struct Lvm {
    pub lvs: Vec<LvRow>,
    pub vgs: Vec<VgRow>,
    pub pvs: Vec<PvRow>,
}

impl Lvm {
    fn report<T: serde::de::DeserializeOwned>(cmd: Cmd) -> Result<Vec<T>> {
        let r: LvmJson<T> = cmd.json()?;
        Ok(r.report)
    }

    /// Ask LVM (`lvs --segments`, `vgs`, `pvs`, sizes in bytes).
    pub fn read() -> Result<Lvm> {
        let common = ["--reportformat", "json", "--units", "b", "--nosuffix"];
        let lvs = Self::report::<LvReport>(Cmd::new("lvs").args(common).args([
            "--segments",
            "-o",
            "lv_name,vg_name,lv_size,seg_start_pe,seg_pe_ranges",
        ]))?;
        let vgs = Self::report::<VgReport>(
            Cmd::new("vgs")
                .args(common)
                .args(["-o", "vg_name,vg_extent_size,vg_free_count"]),
        )?;
        let pvs = Self::report::<PvReport>(
            Cmd::new("pvs")
                .args(common)
                .args(["-o", "pv_name,pe_start"]),
        )?;
        Ok(Lvm {
            lvs: lvs.into_iter().flat_map(|r| r.lv).collect(),
            vgs: vgs.into_iter().flat_map(|r| r.vg).collect(),
            pvs: pvs.into_iter().flat_map(|r| r.pv).collect(),
        })
    }

    pub fn from_json(lvs: &str, vgs: &str, pvs: &str) -> Result<Lvm> {
        let lvs: LvmJson<LvReport> = serde_json::from_str(lvs).context("parsing lvs")?;
        let vgs: LvmJson<VgReport> = serde_json::from_str(vgs).context("parsing vgs")?;
        let pvs: LvmJson<PvReport> = serde_json::from_str(pvs).context("parsing pvs")?;
        Ok(Lvm {
            lvs: lvs.report.into_iter().flat_map(|r| r.lv).collect(),
            vgs: vgs.report.into_iter().flat_map(|r| r.vg).collect(),
            pvs: pvs.report.into_iter().flat_map(|r| r.pv).collect(),
        })
    }

    fn extent_size(&self, vg: &str) -> Result<u64> {
        let row = self
            .vgs
            .iter()
            .find(|v| v.vg_name == vg)
            .with_context(|| format!("LVM knows no volume group {vg}"))?;
        num(&row.vg_extent_size, "an extent size")
    }
}

/// ferry's snapshot volume of `lv`.
pub(crate) fn snapshot_name(lv: &str) -> String {
    format!("{PREFIX}{lv}")
}

/// The LVM commands of a run, in order.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Snapshots an earlier run left, removed first.
    pub leftovers: Vec<Cmd>,
    pub create: Vec<Cmd>,
    /// Run at the end, whatever happened in between.
    pub remove: Vec<Cmd>,
    /// The snapshot volumes' devices, by volume.
    pub devices: Vec<(Lv, PathBuf)>,
}

fn remove_cmd(vg: &str, name: &str) -> Cmd {
    Cmd::new("lvremove")
        .args(["--force", "--yes"])
        .arg(format!("{vg}/{name}"))
}

/// The commands that snapshot `volumes`: leftovers of ferry's first, then
/// one snapshot each, if their volume groups have the free extents.
pub fn plan(lvm: &Lvm, volumes: &[Lv]) -> Result<Plan> {
    let mut plan = Plan::default();
    let mut seen = std::collections::BTreeSet::new();
    for row in &lvm.lvs {
        if row.lv_name.starts_with(PREFIX) && seen.insert((&row.vg_name, &row.lv_name)) {
            plan.leftovers.push(remove_cmd(&row.vg_name, &row.lv_name));
        }
    }
    let mut wanted: std::collections::BTreeMap<&str, u64> = Default::default();
    for v in volumes {
        let extent = lvm.extent_size(&v.vg)?;
        let size = lvm
            .lvs
            .iter()
            .find(|r| r.vg_name == v.vg && r.lv_name == v.lv)
            .with_context(|| format!("LVM knows no volume {}/{}", v.vg, v.lv))
            .and_then(|r| num(&r.lv_size, "a volume size"))?;
        let extents = (size / 10)
            .max(MIN_COW)
            .min(size.max(extent))
            .div_ceil(extent);
        *wanted.entry(&v.vg).or_default() += extents;
        let name = snapshot_name(&v.lv);
        plan.create.push(
            Cmd::new("lvcreate")
                .args(["--snapshot", "--yes", "--name"])
                .arg(&name)
                .args(["--extents", &extents.to_string()])
                .arg(format!("{}/{}", v.vg, v.lv)),
        );
        plan.remove.push(remove_cmd(&v.vg, &name));
        plan.devices
            .push((v.clone(), PathBuf::from(format!("/dev/{}/{name}", v.vg))));
    }
    for (vg, extents) in wanted {
        let row = lvm
            .vgs
            .iter()
            .find(|r| r.vg_name == vg)
            .with_context(|| format!("LVM knows no volume group {vg}"))?;
        // Leftovers of ferry's are removed first: their extents count as free.
        let leftover: u64 = lvm
            .lvs
            .iter()
            .filter(|r| r.vg_name == vg && r.lv_name.starts_with(PREFIX))
            .filter_map(|r| num(&r.lv_size, "a volume size").ok())
            .sum::<u64>()
            / lvm.extent_size(vg)?;
        let free = num(&row.vg_free_count, "a free extent count")? + leftover;
        if free < extents {
            return Err(coded(
                ErrorCode::SnapshotFailed,
                format!(
                    "volume group {vg} has {free} free extents, its snapshots need {extents}: extend it (vgextend) or use --consistency freeze"
                ),
            ));
        }
    }
    Ok(plan)
}

/// Bytes of the disk that are read from a snapshot instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotExtent {
    pub disk_start: u64,
    pub len: u64,
    /// Index into [`Overlay::devices`].
    pub device: usize,
    pub device_start: u64,
}

/// The disk with its volumes' extents replaced by their snapshots'.
#[derive(Debug, Default)]
pub struct Overlay {
    pub extents: Vec<SnapshotExtent>,
    pub devices: Vec<PathBuf>,
    files: Vec<File>,
}

/// `/dev/sda2:0-255 /dev/sdb1:0-99` into (PV, first, last).
fn pe_ranges(field: &str) -> Vec<(String, u64, u64)> {
    field
        .split_whitespace()
        .filter_map(|r| {
            let (pv, range) = r.rsplit_once(':')?;
            let (a, b) = range.split_once('-')?;
            Some((pv.to_owned(), a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

impl Overlay {
    /// Where each volume's segments lie on this disk: `pv_offset` says at
    /// which byte of the disk a physical volume starts (None: not on it).
    pub fn map(
        lvm: &Lvm,
        snapshots: &[(Lv, PathBuf)],
        pv_offset: &dyn Fn(&str) -> Option<u64>,
    ) -> Result<Overlay> {
        let mut o = Overlay::default();
        for (di, (v, device)) in snapshots.iter().enumerate() {
            o.devices.push(device.clone());
            let extent = lvm.extent_size(&v.vg)?;
            for seg in lvm
                .lvs
                .iter()
                .filter(|r| r.vg_name == v.vg && r.lv_name == v.lv)
            {
                let mut lv_pe = num(&seg.seg_start_pe, "a segment start")?;
                for (pv, first, last) in pe_ranges(&seg.seg_pe_ranges) {
                    let count = last + 1 - first;
                    if let Some(base) = pv_offset(&pv) {
                        let pe_start = lvm
                            .pvs
                            .iter()
                            .find(|p| p.pv_name == pv)
                            .with_context(|| format!("LVM knows no physical volume {pv}"))
                            .and_then(|p| num(&p.pe_start, "a data offset"))?;
                        o.extents.push(SnapshotExtent {
                            disk_start: base + pe_start + first * extent,
                            len: count * extent,
                            device: di,
                            device_start: lv_pe * extent,
                        });
                    }
                    lv_pe += count;
                }
            }
        }
        o.extents.sort_by_key(|e| e.disk_start);
        Ok(o)
    }

    /// Open the snapshot devices for reading.
    pub fn open(&mut self) -> Result<()> {
        self.files = self
            .devices
            .iter()
            .map(|d| {
                File::open(d).map_err(|e| {
                    coded(
                        ErrorCode::SnapshotFailed,
                        format!("opening {}: {e}", d.display()),
                    )
                })
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// Read `buf.len()` bytes of the disk at `offset`, the snapshots' where
    /// they cover it.
    pub fn read_at(&self, disk: &Disk, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let cover = self
                .extents
                .iter()
                .find(|e| e.disk_start <= pos && pos < e.disk_start + e.len);
            let next = match cover {
                Some(e) => (e.disk_start + e.len).min(end),
                None => self
                    .extents
                    .iter()
                    .map(|e| e.disk_start)
                    .filter(|&s| s > pos)
                    .min()
                    .unwrap_or(end)
                    .min(end),
            };
            let part = &mut buf[(pos - offset) as usize..(next - offset) as usize];
            match cover {
                Some(e) => {
                    let file = self.files.get(e.device).with_context(|| {
                        format!(
                            "the snapshot {} is not open",
                            self.devices[e.device].display()
                        )
                    })?;
                    file.read_exact_at(part, e.device_start + (pos - e.disk_start))
                        .with_context(|| {
                            format!(
                                "reading {} at offset {}",
                                self.devices[e.device].display(),
                                e.device_start + (pos - e.disk_start)
                            )
                        })?;
                }
                None => disk.read_at(part, pos)?,
            }
            pos = next;
        }
        Ok(())
    }
}

/// The byte at which block device `pv` starts on the disk whose kernel
/// name is `disk` (0 for the disk itself), from sysfs.
pub fn pv_offset(host: &Host, disk: &str, pv: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(pv).ok()?.rdev();
    let link =
        host.sys
            .join("dev/block")
            .join(format!("{}:{}", libc::major(rdev), libc::minor(rdev)));
    let target = std::fs::read_link(&link).ok()?;
    let name = target.file_name()?.to_string_lossy().into_owned();
    if name == disk {
        return Some(0);
    }
    let parent = target.parent()?.file_name()?.to_string_lossy().into_owned();
    if parent != disk {
        return None;
    }
    let start =
        std::fs::read_to_string(host.sys.join("class/block").join(&name).join("start")).ok()?;
    start.trim().parse::<u64>().ok().map(|s| s * 512)
}

/// Snapshots taken by this run, removed by [`Snapshots::remove`] or on drop.
pub struct Snapshots {
    remove: Vec<Cmd>,
    pub overlay: Arc<Overlay>,
    pub devices: Vec<(Lv, PathBuf)>,
}

impl Snapshots {
    /// Remove ferry's leftovers, take the snapshots, map them onto the disk.
    pub fn take(volumes: &[Lv], pv_offset: &dyn Fn(&str) -> Option<u64>) -> Result<Snapshots> {
        let failed = |e: anyhow::Error| coded(ErrorCode::SnapshotFailed, format!("{e:#}"));
        let lvm = Lvm::read().map_err(failed)?;
        let plan = plan(&lvm, volumes)?;
        for c in &plan.leftovers {
            tracing::warn!(command = %c.display(), "removing a snapshot an earlier run left");
            c.run().map_err(failed)?;
        }
        let mut taken = Snapshots {
            remove: Vec::new(),
            overlay: Arc::new(Overlay::default()),
            devices: plan.devices.clone(),
        };
        for (create, remove) in plan.create.iter().zip(&plan.remove) {
            create.run().map_err(failed)?;
            taken.remove.push(remove.clone());
        }
        let lvm = Lvm::read().map_err(failed)?;
        let mut overlay = Overlay::map(&lvm, &plan.devices, pv_offset).map_err(failed)?;
        overlay.open()?;
        taken.overlay = Arc::new(overlay);
        Ok(taken)
    }

    pub fn remove(mut self) -> Result<()> {
        self.impl_remove()
    }

    fn impl_remove(&mut self) -> Result<()> {
        // Its files closed (the reader's clone is gone with its pass), or
        // LVM refuses to remove a volume in use.
        self.overlay = Arc::new(Overlay::default());
        let mut first = None;
        for c in std::mem::take(&mut self.remove) {
            if let Err(e) = c.run() {
                tracing::error!("{e:#}");
                first.get_or_insert(coded(ErrorCode::SnapshotFailed, format!("{e:#}")));
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Snapshots {
    fn drop(&mut self) {
        if !self.remove.is_empty() {
            if let Err(e) = self.impl_remove() {
                tracing::error!("removing the snapshots: {e:#}");
            }
        }
    }
}

/// Where a plan's devices are, for messages.
pub fn describe(devices: &[(Lv, PathBuf)]) -> String {
    devices
        .iter()
        .map(|(v, d)| format!("{}/{} as {}", v.vg, v.lv, d.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LVS: &str = r#"{"report": [{"lv": [
        {"lv_name":"root", "vg_name":"vg", "lv_size":"2147483648", "seg_start_pe":"0", "seg_pe_ranges":"/dev/sda2:0-255"},
        {"lv_name":"root", "vg_name":"vg", "lv_size":"2147483648", "seg_start_pe":"256", "seg_pe_ranges":"/dev/sdb1:10-265"},
        {"lv_name":"home", "vg_name":"vg", "lv_size":"1073741824", "seg_start_pe":"0", "seg_pe_ranges":"/dev/sda2:256-511"},
        {"lv_name":"ferry-snap-root", "vg_name":"vg", "lv_size":"268435456", "seg_start_pe":"0", "seg_pe_ranges":"/dev/sda2:600-663"}
    ]}]}"#;
    const VGS: &str = r#"{"report": [{"vg": [
        {"vg_name":"vg", "vg_extent_size":"4194304", "vg_free_count":"100"}
    ]}]}"#;
    const PVS: &str = r#"{"report": [{"pv": [
        {"pv_name":"/dev/sda2", "pe_start":"1048576"},
        {"pv_name":"/dev/sdb1", "pe_start":"1048576"}
    ]}]}"#;

    fn lv(vg: &str, lv: &str) -> Lv {
        Lv {
            vg: vg.into(),
            lv: lv.into(),
        }
    }

    fn lines(cmds: &[Cmd]) -> Vec<String> {
        cmds.iter().map(Cmd::display).collect()
    }

    #[test]
    fn the_plan_removes_leftovers_then_snapshots_each_volume() {
        let lvm = Lvm::from_json(LVS, VGS, PVS).unwrap();
        let plan = plan(&lvm, &[lv("vg", "root"), lv("vg", "home")]).unwrap();
        assert_eq!(
            lines(&plan.leftovers),
            ["lvremove --force --yes vg/ferry-snap-root"]
        );
        // 2 GiB / 10 is less than 256 MiB: 64 extents of 4 MiB each.
        assert_eq!(
            lines(&plan.create),
            [
                "lvcreate --snapshot --yes --name ferry-snap-root --extents 64 vg/root",
                "lvcreate --snapshot --yes --name ferry-snap-home --extents 64 vg/home",
            ]
        );
        assert_eq!(
            lines(&plan.remove),
            [
                "lvremove --force --yes vg/ferry-snap-root",
                "lvremove --force --yes vg/ferry-snap-home",
            ]
        );
        assert_eq!(
            describe(&plan.devices),
            "vg/root as /dev/vg/ferry-snap-root, vg/home as /dev/vg/ferry-snap-home"
        );
    }

    #[test]
    fn a_volume_group_without_the_free_extents_is_refused() {
        let vgs = VGS.replace("\"100\"", "\"10\"");
        let lvm = Lvm::from_json(LVS, &vgs, PVS).unwrap();
        // 10 free and 64 of the leftover: 74 < 128.
        let err = plan(&lvm, &[lv("vg", "root"), lv("vg", "home")]).unwrap_err();
        let (code, detail) = crate::job::errors::describe(&err);
        assert_eq!(code, ErrorCode::SnapshotFailed);
        assert_eq!(
            detail,
            "volume group vg has 74 free extents, its snapshots need 128: extend it (vgextend) or use --consistency freeze"
        );
        let err = plan(&lvm, &[lv("vg", "nosuch")]).unwrap_err();
        assert_eq!(format!("{err:#}"), "LVM knows no volume vg/nosuch");
    }

    #[test]
    fn the_overlay_maps_the_volume_segments_on_this_disk() {
        let lvm = Lvm::from_json(LVS, VGS, PVS).unwrap();
        let snaps = vec![(lv("vg", "root"), PathBuf::from("/dev/vg/ferry-snap-root"))];
        // sda2 starts at 1 MiB of sda; sdb1 is another disk's.
        let o = Overlay::map(&lvm, &snaps, &|pv| (pv == "/dev/sda2").then_some(1 << 20)).unwrap();
        assert_eq!(
            o.extents,
            [SnapshotExtent {
                disk_start: (1 << 20) + (1 << 20),
                len: 256 * (4 << 20),
                device: 0,
                device_start: 0,
            }]
        );
        // On the other disk, the second segment, at the volume's 1 GiB.
        let o = Overlay::map(&lvm, &snaps, &|pv| (pv == "/dev/sdb1").then_some(0)).unwrap();
        assert_eq!(
            o.extents,
            [SnapshotExtent {
                disk_start: (1 << 20) + 10 * (4 << 20),
                len: 256 * (4 << 20),
                device: 0,
                device_start: 256 * (4 << 20),
            }]
        );
    }

    #[test]
    fn reads_take_the_snapshots_bytes_where_it_covers_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let disk_path = dir.path().join("disk");
        let snap_path = dir.path().join("snap");
        std::fs::write(&disk_path, vec![b'd'; 100]).unwrap();
        let snap: Vec<u8> = (0..50u8).collect();
        std::fs::write(&snap_path, &snap).unwrap();
        let mut o = Overlay {
            extents: vec![SnapshotExtent {
                disk_start: 20,
                len: 30,
                device: 0,
                device_start: 10,
            }],
            devices: vec![snap_path],
            files: Vec::new(),
        };
        o.open().unwrap();
        let disk = Disk::open_source(&disk_path).unwrap();
        let mut buf = vec![0u8; 60];
        o.read_at(&disk, &mut buf, 10).unwrap();
        let mut want = vec![b'd'; 10];
        want.extend(10..40u8);
        want.extend(vec![b'd'; 20]);
        assert_eq!(buf, want);
        // Wholly outside, wholly inside.
        let mut buf = vec![0u8; 5];
        o.read_at(&disk, &mut buf, 90).unwrap();
        assert_eq!(buf, b"ddddd");
        o.read_at(&disk, &mut buf, 25).unwrap();
        assert_eq!(buf, [15, 16, 17, 18, 19]);
    }
}
