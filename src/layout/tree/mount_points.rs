//! Mount points of a layout read from disks, filled in from the root's
//! /etc/fstab, which is found by mounting each file system read-only in turn.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use nix::mount::MsFlags;

use crate::layout::desc::{plan, FsType, Layout, PartitionLayout};
use crate::layout::devices::{disk_size, AttachedDisk};
use crate::layout::lvm::LvNode;
use crate::layout::mount::MountGuard;

/// Fill in the mount points of a layout that `read` produced, from the
/// root's /etc/fstab: each Linux file system is mounted read-only in turn
/// until one holds etc/fstab (that one is "/"), whose entries by UUID=,
/// LABEL=, PARTUUID= or /dev/disk/by-* name the others. Returns how many
/// partitions got a mount point.
pub fn fill_mount_points(layout: &mut Layout, targets: &[PathBuf]) -> Result<usize> {
    fill_mount_points_named(layout, targets, &[])
}

/// [`fill_mount_points`] that also resolves fstab lines naming kernel
/// devices (`/dev/sda2`) through `source_names[i]`, the names disk i had on
/// the source.
pub fn fill_mount_points_named(
    layout: &mut Layout,
    targets: &[PathBuf],
    source_names: &[Vec<String>],
) -> Result<usize> {
    fill_mount_points_renamed(layout, targets, source_names, &[])
}

/// [`fill_mount_points_named`] where the fstab may name file systems by
/// names they no longer have (a logical volume laid out as a plain
/// partition): each of `renamed` is looked up by its new name.
pub(crate) fn fill_mount_points_renamed(
    layout: &mut Layout,
    targets: &[PathBuf],
    source_names: &[Vec<String>],
    renamed: &[crate::layout::flatten::Renamed],
) -> Result<usize> {
    if layout.disks.len() != targets.len() {
        bail!(
            "the layout describes {} disk(s) but {} target(s) were given",
            layout.disks.len(),
            targets.len()
        );
    }
    let (root_at, fstab) = root_fstab(layout, targets)?;
    // Forget every mount point of the layout: the fstab gives them.
    layout.keep_mounts(|_| false);
    let entries = crate::devname::parse_fstab(&fstab);
    mount_root(layout, root_at, &entries);
    let mut count = 1;
    for e in &entries {
        let mp = e.mountpoint.clone();
        if mp == "/" || !mp.starts_with('/') || e.fstype == "swap" {
            continue;
        }
        let spec = renamed
            .iter()
            .find(|r| r.from == e.spec)
            .map_or(e.spec.as_str(), |r| r.to.as_str());
        let hit = locate(layout, spec, source_names);
        let fs = match hit {
            Some(At::Partition(d, p)) => &mut layout.disks[d].partitions[p].fs,
            Some(At::Volume(v)) => &mut layout.volumes[v].fs,
            None => {
                tracing::warn!(
                    spec,
                    mount = mp,
                    "an fstab entry names no partition or logical volume of these disks"
                );
                continue;
            }
        };
        if fs.mount.is_none() {
            fs.mount = Some(mp);
            fs.subvol = e.subvol();
            count += 1;
        } else if let (FsType::Btrfs, Some(sv)) = (&fs.kind, e.subvol()) {
            // Another subvolume of a btrfs already mounted elsewhere.
            fs.subvolumes.push(crate::layout::desc::SubvolumeMount {
                subvol: sv,
                mount: mp,
            });
            count += 1;
        }
    }
    Ok(count)
}

/// The root's fstab and where it was found: the disks of `layout` are
/// attached on `targets` (logical volumes through loop devices), looked
/// into read-only, and detached again whatever was found.
fn root_fstab(layout: &Layout, targets: &[PathBuf]) -> Result<(RootAt, String)> {
    let mut disks = Vec::new();
    let mut volumes = Vec::new();
    let attached = (|| -> Result<()> {
        for (d, t) in layout.disks.iter().zip(targets) {
            let extents = plan(d, disk_size(t)?)?;
            let reread = fs::metadata(t).is_ok_and(|m| m.file_type().is_block_device());
            let numbered: Vec<(usize, _)> = d.numbers().into_iter().zip(extents).collect();
            disks.push(AttachedDisk::attach(t, &numbered, reread)?);
        }
        for (vi, v) in layout.volumes.iter().enumerate() {
            let Some(place) = v.place else { continue };
            if !v.fs.kind.mountable_anywhere() {
                continue;
            }
            let d = &layout.disks[place.disk];
            let start = plan(d, disk_size(&targets[place.disk])?)?[place.partition].start;
            volumes.push((vi, LvNode::attach(&targets[place.disk], start, v, true)?));
        }
        Ok(())
    })();
    let found = attached.and_then(|()| find_fstab(layout, &disks, &volumes));
    let mut close_err = None;
    while let Some((_, v)) = volumes.pop() {
        if let Err(e) = v.close() {
            close_err.get_or_insert(e);
        }
    }
    while let Some(d) = disks.pop() {
        if let Err(e) = d.close() {
            close_err.get_or_insert(e);
        }
    }
    let Some((root_at, fstab)) = found? else {
        if let Some(e) = close_err {
            return Err(e);
        }
        bail!("no Linux file system of these disks holds etc/fstab");
    };
    if let Some(e) = close_err {
        return Err(e);
    }
    Ok((root_at, fstab))
}

/// Give "/" (with its subvolume) to the file system where the root's
/// fstab was found.
fn mount_root(layout: &mut Layout, root_at: RootAt, entries: &[crate::devname::FstabEntry]) {
    // The root's subvolume: as its fstab line says, else where the fstab
    // was found.
    let root_subvol = entries
        .iter()
        .find(|e| e.mountpoint == "/")
        .and_then(|e| e.subvol())
        .or(root_at.subvol.clone());
    match root_at.at {
        At::Partition(d, p) => {
            let part = &mut layout.disks[d].partitions[p];
            part.fs.mount = Some("/".into());
            part.fs.subvol = root_subvol;
        }
        At::Volume(v) => {
            layout.volumes[v].fs.mount = Some("/".into());
            layout.volumes[v].fs.subvol = root_subvol;
        }
    }
}

/// The partition or logical volume an fstab spec names: by the source's
/// kernel names first, then by UUID=, LABEL=, PARTUUID= or
/// /dev/disk/by-*.
fn locate(layout: &Layout, spec: &str, source_names: &[Vec<String>]) -> Option<At> {
    let by_name = kernel_name_match(layout, spec, source_names).map(|(d, p)| At::Partition(d, p));
    by_name.or_else(|| {
        layout
            .disks
            .iter()
            .enumerate()
            .find_map(|(di, d)| {
                d.partitions
                    .iter()
                    .position(|p| spec_matches(spec, p))
                    .map(|pi| At::Partition(di, pi))
            })
            .or_else(|| {
                layout
                    .volumes
                    .iter()
                    .position(|v| v.matches(spec))
                    .map(At::Volume)
            })
    })
}

/// Where something lies: a partition (disk, index) or a logical volume.
#[derive(Debug, Clone, Copy)]
enum At {
    Partition(usize, usize),
    Volume(usize),
}

/// Where the root's fstab was found, and in which btrfs subvolume of the
/// file system's top level, if not there.
struct RootAt {
    at: At,
    subvol: Option<String>,
}

/// How many top-level directories of a btrfs are looked into for a root
/// subvolume (`@`, `root`, ...).
const MAX_SUBVOLS_PROBED: usize = 64;

fn find_fstab(
    layout: &Layout,
    disks: &[AttachedDisk],
    volumes: &[(usize, LvNode)],
) -> Result<Option<(RootAt, String)>> {
    let dir = tempfile::Builder::new()
        .prefix("ferry-probe-")
        .tempdir()
        .context("making a mount point to look for fstab")?;
    let mut candidates: Vec<(At, PathBuf, FsType)> = Vec::new();
    for (di, (d, a)) in layout.disks.iter().zip(disks).enumerate() {
        for (pi, (p, node)) in d.partitions.iter().zip(a.partitions()).enumerate() {
            candidates.push((At::Partition(di, pi), node.clone(), p.fs.kind.clone()));
        }
    }
    for (vi, lo) in volumes {
        candidates.push((
            At::Volume(*vi),
            lo.path().to_owned(),
            layout.volumes[*vi].fs.kind.clone(),
        ));
    }
    for (at, node, fs) in candidates {
        if !fs.mountable_anywhere() {
            continue;
        }
        // Read-only without log replay: looking must not change the disk.
        let g = match MountGuard::mount(
            &node.to_string_lossy(),
            dir.path(),
            fs.as_str(),
            MsFlags::MS_RDONLY,
            fs.read_only_data(),
        ) {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!("{e:#}");
                continue;
            }
        };
        let mut found = fs::read_to_string(dir.path().join("etc/fstab"))
            .ok()
            .map(|f| (None, f));
        if found.is_none() && fs == FsType::Btrfs {
            // A root in a subvolume (`@`) that is not the default one: the
            // top level shows it as a directory.
            if let Ok(entries) = fs::read_dir(dir.path()) {
                let mut names: Vec<String> = entries
                    .flatten()
                    .take(MAX_SUBVOLS_PROBED)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                found = names.into_iter().find_map(|n| {
                    fs::read_to_string(dir.path().join(&n).join("etc/fstab"))
                        .ok()
                        .map(|f| (Some(n), f))
                });
            }
        }
        if let Err(e) = g.close() {
            std::mem::forget(dir);
            return Err(e);
        }
        if let Some((subvol, f)) = found {
            return Ok(Some((RootAt { at, subvol }, f)));
        }
    }
    Ok(None)
}

/// (spec, mount point, type) of each fstab line (parsed by
/// [`crate::devname::parse_fstab`]).
pub fn parse_fstab(text: &str) -> Vec<(String, String, String)> {
    crate::devname::parse_fstab(text)
        .into_iter()
        .map(|e| (e.spec, e.mountpoint, e.fstype))
        .collect()
}

/// (disk, partition index) of an fstab spec like `/dev/sdb1` or
/// `/dev/nvme0n1p2`, when `source_names` says which disk had that name.
fn kernel_name_match(
    layout: &Layout,
    spec: &str,
    source_names: &[Vec<String>],
) -> Option<(usize, usize)> {
    let (disk_name, part) = crate::devname::split_device(spec)?;
    let part = part? as usize;
    let d = source_names
        .iter()
        .position(|names| names.iter().any(|n| n == &disk_name))?;
    let p = layout
        .disks
        .get(d)?
        .numbers()
        .iter()
        .position(|&n| n == part)?;
    Some((d, p))
}

fn spec_matches(spec: &str, p: &PartitionLayout) -> bool {
    let ids = crate::devname::Ids {
        uuid: p.fs.uuid.as_deref(),
        label: p.fs.label.as_deref(),
        partuuid: p.partuuid.as_deref(),
        partlabel: None,
    };
    crate::devname::DeviceSpec::parse(spec)
        .matches(&ids)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_of_the_source_find_partitions_by_number() {
        let layout = Layout::from_toml(
            "[[disk]]\ntable = \"mbr\"\n[[disk.partition]]\nsize = \"1GiB\"\ntype = \"linux\"\nfs = \"ext4\"\n\
             [[disk.partition]]\nsize = \"rest\"\ntype = \"linux\"\nfs = \"ext4\"\n\
             [[disk]]\ntable = \"gpt\"\n[[disk.partition]]\nsize = \"rest\"\ntype = \"linux\"\nfs = \"xfs\"\n",
        )
        .unwrap();
        let names = vec![
            vec!["/dev/sda".to_owned(), "/dev/vda".to_owned()],
            vec!["/dev/sdb".to_owned()],
        ];
        assert_eq!(
            kernel_name_match(&layout, "/dev/sda2", &names),
            Some((0, 1))
        );
        assert_eq!(
            kernel_name_match(&layout, "/dev/vda1", &names),
            Some((0, 0))
        );
        assert_eq!(
            kernel_name_match(&layout, "/dev/sdb1", &names),
            Some((1, 0))
        );
        assert_eq!(
            kernel_name_match(&layout, "/dev/sdb2", &names),
            None,
            "no such partition"
        );
        assert_eq!(
            kernel_name_match(&layout, "/dev/sdc1", &names),
            None,
            "not migrated"
        );
        assert_eq!(
            kernel_name_match(&layout, "/dev/sda", &names),
            None,
            "a whole disk"
        );
        assert_eq!(kernel_name_match(&layout, "UUID=x", &names), None);
        assert_eq!(
            kernel_name_match(&layout, "/dev/sda1", &[]),
            None,
            "no names known"
        );
    }

    #[test]
    fn fstab_specs_match_partitions() {
        let l = Layout::from_toml(
            "[[disk]]\ntable = \"gpt\"\n[[disk.partition]]\nsize = \"rest\"\ntype = \"linux\"\nfs = \"ext4\"\nuuid = \"aa-bb\"\nlabel = \"my root\"\npartuuid = \"cc\"\n",
        )
        .unwrap();
        let p = &l.disks[0].partitions[0];
        for (spec, want) in [
            ("UUID=AA-BB", true),
            ("UUID=\"aa-bb\"", true),
            ("LABEL=my root", true),
            ("PARTUUID=cc", true),
            ("/dev/disk/by-uuid/aa-bb", true),
            ("/dev/disk/by-label/my\\x20root", true),
            ("/dev/sda1", false),
            ("UUID=other", false),
        ] {
            assert_eq!(spec_matches(spec, p), want, "{spec}");
        }
        let f = parse_fstab("# c\nUUID=x / ext4 defaults 0 1\n\nLABEL=a\\040b /srv\\040x xfs defaults\nproc /proc proc defaults\n");
        assert_eq!(f[1], ("LABEL=a b".into(), "/srv x".into(), "xfs".into()));
        assert_eq!(f.len(), 3);
    }
}
