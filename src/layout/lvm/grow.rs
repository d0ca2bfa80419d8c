//! A PV grown with its partition: `pvresize` (metadata only, with a private
//! configuration that sees nothing but this PV and needs no device-mapper),
//! then the system's LV extended over the new extents as one run. The LVs
//! that follow it on the PV (a swap volume, as installers leave it) are
//! first copied to the PV's new end, into extents that are free in both the
//! old and the new metadata, so that a crash at any point leaves a volume
//! group whose metadata matches its data; the new metadata is then
//! committed by `vgcfgrestore`, and only after that the file system grows.

use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::text::Value;
use super::vg::VolumeGroup;
use super::{read_pv, LvNode};
use crate::cmd::Cmd;
use crate::layout::desc::Extent;
use crate::layout::desc::LogicalVolume;

/// What growing the PV did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LvmGrowReport {
    pub vg: String,
    pub pv_extents_before: u64,
    pub pv_extents_after: u64,
    /// The volume that took the new extents (`vg/lv`), its old and new size.
    pub volume: Option<String>,
    pub old_bytes: u64,
    pub new_bytes: u64,
    /// Volumes moved to the PV's end to make room, with their new first extent.
    pub moved: Vec<(String, u64)>,
    /// Why no volume was extended.
    pub skipped: Option<String>,
}

/// A private LVM configuration in a temporary directory that accepts only
/// `node`; dropped with the directory.
pub(crate) struct PrivateLvm {
    dir: tempfile::TempDir,
}

impl PrivateLvm {
    pub fn new(node: &Path) -> Result<PrivateLvm> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-lvm-")
            .tempdir()
            .context("making a private LVM configuration directory")?;
        let conf = super::activate::config(dir.path(), &[node.to_owned()]);
        std::fs::write(dir.path().join("lvm.conf"), conf)
            .context("writing the private lvm.conf")?;
        Ok(PrivateLvm { dir })
    }

    /// `lvm <args> --driverloaded n` under the private configuration.
    pub fn cmd(&self, args: &[&str]) -> Cmd {
        let (sub, rest) = args
            .split_first()
            .map_or(("version", &[][..]), |(s, r)| (*s, r));
        Cmd::new("lvm")
            .arg(sub)
            .args(["--driverloaded", "n"])
            .args(rest)
            .env("LVM_SYSTEM_DIR", self.dir.path())
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// One volume's run of extents on the PV.
#[derive(Debug, Clone)]
struct Run {
    lv: String,
    first: u64,
    count: u64,
    /// A visible linear volume, which may be moved or extended.
    linear: bool,
    visible: bool,
}

fn runs_on(g: &VolumeGroup, pv_key: &str) -> Vec<Run> {
    let mut out = Vec::new();
    for lv in &g.lvs {
        let linear = lv.linear().is_ok_and(|l| l.pv == pv_key);
        for seg in &lv.segments {
            for (pv, first) in &seg.stripes {
                if pv == pv_key {
                    out.push(Run {
                        lv: lv.name.clone(),
                        first: *first,
                        count: seg.extent_count / seg.stripes.len().max(1) as u64,
                        linear,
                        visible: lv.visible,
                    });
                }
            }
        }
    }
    out.sort_by_key(|r| r.first);
    out
}

/// Grow the PV on bytes `part` of `disk` (its partition already grown),
/// reached as `node`, and extend the volume `choose` picks among its
/// linear volumes. Returns the report and the extended volume, placed
/// anew (its file system is still to grow).
pub(crate) fn grow_pv(
    disk: &Path,
    node: &Path,
    part: Extent,
    choose: &dyn Fn(&[LogicalVolume]) -> Option<String>,
    volumes: &[LogicalVolume],
) -> Result<(LvmGrowReport, Option<LogicalVolume>)> {
    let lvm = PrivateLvm::new(node)?;
    let resized = resize_pv(&lvm, disk, node, part)?;
    let g = &resized.group;
    let mut report = LvmGrowReport {
        vg: g.name.clone(),
        pv_extents_before: resized.extents_before,
        pv_extents_after: resized.extents_after,
        volume: None,
        old_bytes: 0,
        new_bytes: 0,
        moved: Vec::new(),
        skipped: None,
    };
    if g.pvs.len() > 1 {
        report.skipped = Some(format!(
            "volume group {} spans {} physical volumes; only its PV was resized",
            g.name,
            g.pvs.len()
        ));
        return Ok((report, None));
    }
    let ours: Vec<LogicalVolume> = volumes
        .iter()
        .filter(|v| v.vg == g.name && v.place.is_some() && v.fs.kind.growable())
        .cloned()
        .collect();
    let Some(name) = choose(&ours) else {
        report.skipped = Some("no linear volume with a file system ferry grows".to_owned());
        return Ok((report, None));
    };
    let plan = match plan_growth(&resized, &name)? {
        Ok(plan) => plan,
        Err(why) => {
            report.skipped = Some(why);
            return Ok((report, None));
        }
    };
    move_followers(disk, part, &resized, &plan.moves)?;
    commit_growth(&lvm, &resized, &plan)?;
    let count = read_back(disk, part, &plan)?;
    let mut grown = ours
        .iter()
        .find(|v| v.name == name)
        .cloned()
        .context("the chosen volume vanished")?;
    if let Some(p) = grown.place.as_mut() {
        p.size = count * g.extent_size;
    }
    report.volume = Some(grown.display());
    report.old_bytes = plan.volume.count * g.extent_size;
    report.new_bytes = count * g.extent_size;
    report.moved = plan
        .moves
        .iter()
        .map(|(r, to)| (r.lv.clone(), *to))
        .collect();
    Ok((report, Some(grown)))
}

/// A physical volume resized to its grown partition: its group as the
/// metadata now says, and its extents before and after.
struct Resized {
    group: VolumeGroup,
    /// The PV's key in the group's metadata (`pv0`).
    pv_key: String,
    extents_before: u64,
    extents_after: u64,
    /// Where its first extent starts, in bytes from the partition's start.
    pe_start: u64,
}

/// `pvresize` the PV on `node` (in the private LVM of `lvm`) and read its
/// metadata back from the disk.
fn resize_pv(lvm: &PrivateLvm, disk: &Path, node: &Path, part: Extent) -> Result<Resized> {
    let (label, Some(before)) =
        read_pv(disk, part)?.context("the grown partition holds no LVM label")?
    else {
        bail!(
            "the physical volume on {} is in no volume group",
            node.display()
        );
    };
    let pv_key = before
        .pvs
        .iter()
        .find(|p| p.uuid == label.uuid)
        .map(|p| p.key.clone())
        .context("the volume group's metadata does not list this physical volume")?;
    let extents_before = before.pv(&pv_key).map(|p| p.pe_count).unwrap_or(0);
    lvm.cmd(&["pvresize", "-q"])
        .arg(node)
        .run()
        .with_context(|| format!("resizing the physical volume on {}", node.display()))?;
    let (_, Some(group)) = read_pv(disk, part)?.context("the resized PV lost its label")? else {
        bail!("the resized physical volume lost its metadata");
    };
    let pv = group
        .pv(&pv_key)
        .context("the resized PV vanished from its VG")?;
    Ok(Resized {
        extents_before,
        extents_after: pv.pe_count,
        pe_start: pv.pe_start,
        pv_key,
        group,
    })
}

/// How a volume grows into the PV's new extents: the volumes after it are
/// packed at the PV's end, and it takes what is free between.
struct Growth {
    name: String,
    /// The volume's run of extents before it grows.
    volume: Run,
    grow_by: u64,
    /// The volumes that move, each with its new first extent.
    moves: Vec<(Run, u64)>,
}

/// Plan `name`'s growth; Ok(Err(why)) when it cannot grow (nothing is
/// changed then).
fn plan_growth(r: &Resized, name: &str) -> Result<std::result::Result<Growth, String>> {
    let runs = runs_on(&r.group, &r.pv_key);
    let Some(pos) = runs.iter().position(|run| run.lv == name && run.linear) else {
        bail!("volume {name} is not one run of extents on its PV");
    };
    let volume = runs[pos].clone();
    let followers = &runs[pos + 1..];
    if let Some(f) = followers.iter().find(|f| !f.linear || !f.visible) {
        return Ok(Err(format!(
            "volume {} after {name} on the PV is not a linear volume that can be moved",
            f.lv
        )));
    }
    let tail: u64 = followers.iter().map(|f| f.count).sum();
    let new_end = r.extents_after - tail;
    let grow_by = new_end.saturating_sub(volume.first + volume.count);
    if grow_by == 0 {
        return Ok(Err(format!("no free extents follow {name}")));
    }
    // New places of the followers, in order, packed at the end.
    let mut at = new_end;
    let mut moves = Vec::new();
    for f in followers {
        if at != f.first {
            let to = (at, at + f.count);
            if let Some(clash) = runs
                .iter()
                .find(|o| o.first < to.1 && to.0 < o.first + o.count)
            {
                return Ok(Err(format!(
                    "moving {} to extent {at} would overwrite {} before the new metadata is committed",
                    f.lv, clash.lv
                )));
            }
            moves.push((f.clone(), at));
        }
        at += f.count;
    }
    Ok(Ok(Growth {
        name: name.to_owned(),
        volume,
        grow_by,
        moves,
    }))
}

/// Copy each moving volume's extents to their new place, and flush.
fn move_followers(disk: &Path, part: Extent, r: &Resized, moves: &[(Run, u64)]) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {} for writing", disk.display()))?;
    let extent_size = r.group.extent_size;
    let byte = |extent: u64| part.start + r.pe_start + extent * extent_size;
    for (run, to) in moves {
        copy(&f, byte(run.first), byte(*to), run.count * extent_size)
            .with_context(|| format!("copying volume {} to extent {to}", run.lv))?;
    }
    f.sync_all().context("flushing the moved volumes")
}

/// Write the group's metadata with the volume extended and the moved
/// volumes at their new places, and commit it with `vgcfgrestore`.
fn commit_growth(lvm: &PrivateLvm, r: &Resized, plan: &Growth) -> Result<()> {
    let g = &r.group;
    let mut text = g.text.clone();
    let vgs = text
        .section_mut(&g.name)
        .context("the metadata lost its VG section")?;
    let seqno = vgs.int("seqno").unwrap_or(g.seqno);
    vgs.set("seqno", Value::Int(seqno + 1));
    let lvs = vgs
        .section_mut("logical_volumes")
        .context("the metadata has no logical volumes")?;
    edit_segment(lvs, &plan.name, |s| {
        let count = plan.volume.count + plan.grow_by;
        s.set("extent_count", Value::Int(i64::try_from(count)?));
        Ok(())
    })?;
    for (run, to) in &plan.moves {
        edit_segment(lvs, &run.lv, |s| {
            s.set(
                "stripes",
                Value::Array(vec![
                    Value::Str(r.pv_key.clone()),
                    Value::Int(i64::try_from(*to)?),
                ]),
            );
            Ok(())
        })?;
    }
    let file = lvm.dir().join("restore.vg");
    std::fs::write(&file, super::text::write(&text)).context("writing the new metadata")?;
    lvm.cmd(&["vgcfgrestore", "-q", "-f"])
        .arg(&file)
        .arg(&g.name)
        .run()
        .with_context(|| format!("committing the grown metadata of volume group {}", g.name))?;
    Ok(())
}

/// The grown volume's extents as the disk's metadata now says, checked
/// against what was written.
fn read_back(disk: &Path, part: Extent, plan: &Growth) -> Result<u64> {
    let name = &plan.name;
    let (_, Some(after)) = read_pv(disk, part)?.context("the PV lost its label")? else {
        bail!("the physical volume lost its metadata");
    };
    let lv = after
        .lvs
        .iter()
        .find(|l| &l.name == name)
        .context("the extended volume vanished")?;
    let lin = lv
        .linear()
        .map_err(|why| anyhow::anyhow!("volume {name} after growing: {why}"))?;
    let want = plan.volume.count + plan.grow_by;
    if lin.count != want {
        bail!(
            "volume {name} has {} extents after growing, {want} were written",
            lin.count
        );
    }
    Ok(lin.count)
}

fn edit_segment(
    lvs: &mut super::text::Section,
    lv: &str,
    f: impl FnOnce(&mut super::text::Section) -> Result<()>,
) -> Result<()> {
    let l = lvs
        .section_mut(lv)
        .with_context(|| format!("volume {lv} vanished from the metadata"))?;
    let key = l
        .sections()
        .next()
        .map(|(k, _)| k.to_owned())
        .with_context(|| format!("volume {lv} has no segment"))?;
    let s = l
        .section_mut(&key)
        .with_context(|| format!("segment {key} of {lv} vanished"))?;
    f(s)
}

/// Copy `len` bytes from `from` to `to` in `f` (to > from: from the end
/// backwards, so an overlap never reads what was already written).
fn copy(f: &std::fs::File, from: u64, to: u64, len: u64) -> Result<()> {
    const STEP: u64 = 4 << 20;
    let mut buf = vec![0u8; STEP as usize];
    let mut done = 0;
    while done < len {
        let n = STEP.min(len - done);
        let off = if to > from { len - done - n } else { done };
        let b = &mut buf[..n as usize];
        f.read_exact_at(b, from + off)
            .with_context(|| format!("reading byte {}", from + off))?;
        f.write_all_at(b, to + off)
            .with_context(|| format!("writing byte {}", to + off))?;
        done += n;
    }
    Ok(())
}

/// The LV to extend on a larger disk: the one holding the system's root
/// (etc/fstab), else the largest.
pub(crate) fn system_volume(
    disk: &Path,
    part_start: u64,
    vols: &[LogicalVolume],
) -> Option<String> {
    for v in vols.iter().filter(|v| v.fs.kind.mountable_anywhere()) {
        if holds_fstab(disk, part_start, v).unwrap_or(false) {
            return Some(v.name.clone());
        }
    }
    vols.iter()
        .max_by_key(|v| v.place.map(|p| p.size).unwrap_or(0))
        .map(|v| v.name.clone())
}

fn holds_fstab(disk: &Path, part_start: u64, v: &LogicalVolume) -> Result<bool> {
    let lo = LvNode::attach(disk, part_start, v, true)?;
    let dir = tempfile::Builder::new()
        .prefix("ferry-probe-")
        .tempdir()
        .context("making a mount point")?;
    let m = crate::layout::mount::MountGuard::mount(
        &lo.path().to_string_lossy(),
        dir.path(),
        v.fs.kind.as_str(),
        nix::mount::MsFlags::MS_RDONLY,
        v.fs.kind.read_only_data(),
    )?;
    let found = dir.path().join("etc/fstab").is_file();
    if let Err(e) = m.close() {
        std::mem::forget(dir);
        return Err(e);
    }
    lo.close()?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlapping_copy_to_the_right_keeps_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(12u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        copy(&f, 1 << 20, 3 << 20, 9 << 20).unwrap();
        let got = std::fs::read(&p).unwrap();
        assert_eq!(&got[3 << 20..12 << 20], &data[1 << 20..10 << 20]);
        assert_eq!(&got[..3 << 20], &data[..3 << 20]);
    }
}
