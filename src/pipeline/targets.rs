//! File mode's targets: laid out from the sender's layout on the job's
//! disks (the configured ones, or image files under the state directory),
//! and mounted while a session writes their trees. The pipeline's room
//! because it makes partitions and file systems, as the round's steps do;
//! the data port only asks for them ([`prepare`]) and writes beneath them.
//!
//! Order, for crash safety: fit the layout to the targets (a target too
//! small is refused here, before anything is written), lay every disk out
//! (file systems first, the partition table last), record the result in
//! the ledger, and only then write entries. A rerun that finds the record
//! finds the file systems by their UUIDs and does not make them again; one
//! interrupted before the record lays the disks out again (nothing of them
//! was committed).
//!
//! Each file system is mounted on its own directory (`tree-N` under the
//! mount root), not nested as in the migrated system: a tree's writer never
//! crosses into another file system (`RESOLVE_NO_XDEV`), and the root file
//! system's mount-point directories (`boot`, `var`...) get the source's
//! owner and mode rather than being hidden beneath a mount. Processing
//! mounts the system nested, by its own fstab.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::job::errors::{coded, ErrorCode};
use crate::job::ledger::Ledger;
use crate::layout::desc::{align_up, plan, FsType, Layout, Size, ALIGN, MIB};
use crate::layout::fit::{self, SourcePlan};
use crate::layout::flatten::FlatLvm;
use crate::layout::{MountOptions, MountTree, Safety};
use crate::pipeline::file_mode::FileTargets;

/// Where the job's disks are: what [`prepare`] takes of the appliance's
/// config, and no more.
pub enum DiskPlaces {
    /// The configured target of each disk, by index.
    Configured(BTreeMap<u32, PathBuf>),
    /// Sparse image files (an embedded job), one per disk of the source's
    /// layout in order, made as large as the source's disk when missing.
    Images(Vec<PathBuf>),
}

/// The targets mounted for a session: tree N beneath `root_of(N)`.
pub struct Mounted {
    tree: MountTree,
    fs: Vec<FsType>,
}

/// What [`prepare`] did.
pub struct Prepared {
    pub targets: FileTargets,
    pub mounted: Mounted,
    /// The file systems were made now (false: found from an earlier run).
    pub made: bool,
}

impl Mounted {
    pub fn trees(&self) -> usize {
        self.fs.len()
    }

    pub fn root_of(&self, tree: u32) -> Option<PathBuf> {
        ((tree as usize) < self.fs.len()).then(|| self.tree.path_of(&mount_name(tree)))
    }

    /// A vfat tree is written into a directory (this kernel has no vfat)
    /// and mirrored into its FAT partition when it is closed: its files
    /// copied, what the directory no longer holds (the sender's removals)
    /// removed from the partition.
    pub(crate) fn finish_tree(&self, tree: u32) -> Result<()> {
        if self.fs.get(tree as usize) != Some(&FsType::Vfat) {
            return Ok(());
        }
        let dir = self.tree.path_of(&mount_name(tree));
        let fat = self.tree.fat(&mount_name(tree))?;
        let (files, removed) = fat
            .mirror_dir(&dir, "/")
            .with_context(|| format!("copying tree {tree} into its FAT file system"))?;
        tracing::info!(
            tree,
            files,
            removed,
            "tree mirrored into its FAT file system"
        );
        Ok(())
    }

    pub fn close(self) -> Result<()> {
        self.tree.close()
    }
}

fn mount_name(tree: u32) -> String {
    format!("/tree-{tree}")
}

/// The job's targets for the plan's disks: the configured ones, or (an
/// embedded job) sparse image files under the state directory as large as
/// the source's disks.
fn target_paths(disks: &DiskPlaces, plan: &SourcePlan) -> Result<Vec<PathBuf>> {
    let places = plan.places()?;
    let mut out = Vec::new();
    for (i, disk) in plan.layout.disks.iter().enumerate() {
        let images = match disks {
            DiskPlaces::Configured(targets) => {
                let t = targets.get(&(i as u32)).ok_or_else(|| {
                    coded(
                        ErrorCode::DiskNotConfigured,
                        format!("disk {i} of the source's layout"),
                    )
                })?;
                out.push(t.to_owned());
                continue;
            }
            DiskPlaces::Images(images) => images,
        };
        // The caller names one image per disk of the layout; a shorter
        // list is refused rather than indexed past.
        let path = images.get(i).cloned().ok_or_else(|| {
            anyhow::anyhow!("no image file named for disk {i} of the source's layout")
        })?;
        if !path.exists() {
            // As large as the source's disk: its partitions, a "rest" one
            // as large as its file system needs.
            let mut end = ALIGN;
            for (p, part) in disk.partitions.iter().enumerate() {
                let tree = places.iter().position(|pl| pl.disk == i && pl.part == p);
                let len = match (part.size, tree) {
                    (Size::Bytes(b), Some(t)) => {
                        b.max(fit::needed_bytes(&part.fs.kind, plan.trees[t].used))
                    }
                    (Size::Bytes(b), None) => b,
                    (Size::Rest, Some(t)) => fit::needed_bytes(&part.fs.kind, plan.trees[t].used),
                    (Size::Rest, None) => 1024 * MIB,
                };
                end = align_up(end, ALIGN) + len;
            }
            let size = align_up(end + ALIGN, MIB);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let f = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.set_len(size)
                .with_context(|| format!("sizing {}", path.display()))?;
        }
        out.push(path);
    }
    Ok(out)
}

/// Lay the targets out for `plan` (or find them laid out by an earlier
/// run) and mount each sent file system under `mount_root`.
pub fn prepare(
    disks: &DiskPlaces,
    ledger: &Ledger,
    plan: SourcePlan,
    lvm: FlatLvm,
    mount_root: &Path,
) -> Result<Prepared> {
    let places = plan.places()?;
    let (targets, made) = match FileTargets::load(ledger)? {
        Some(ft) => {
            if ft.plan.layout != plan.layout {
                return Err(coded(
                    ErrorCode::LayoutInvalid,
                    "the job's targets were laid out for another source layout; send the same source, or delete the job (POST /v1/job/delete) to start over",
                ));
            }
            found(&ft)?;
            let ft = FileTargets { plan, lvm, ..ft };
            ft.save(ledger)?;
            (ft, false)
        }
        None => {
            let paths = target_paths(disks, &plan)?;
            // What a session killed while it laid them out left: its
            // mounts and loop devices.
            crate::layout::tree::clean_leftovers(mount_root, &paths)
                .context("cleaning up after an interrupted session")?;
            let sizes = paths
                .iter()
                .map(|p| crate::layout::devices::disk_size(p))
                .collect::<Result<Vec<_>>>()?;
            let fitted = fit::fit(&plan, &sizes)?;
            let mut layout = Layout::default();
            for (i, (d, t)) in fitted.disks.iter().zip(&paths).enumerate() {
                let applied = crate::layout::apply(d, t, Safety::default())
                    .with_context(|| format!("laying out disk {i} on {}", t.display()))?;
                layout.disks.push(applied);
            }
            let ft = FileTargets {
                plan,
                lvm,
                layout,
                targets: paths,
            };
            ft.save(ledger)?;
            (ft, true)
        }
    };
    let mut flat = targets.layout.clone();
    for p in flat.disks.iter_mut().flat_map(|d| d.partitions.iter_mut()) {
        p.fs.mount = None;
    }
    let mut fs = Vec::new();
    for (t, pl) in places.iter().enumerate() {
        let p = &mut flat.disks[pl.disk].partitions[pl.part];
        p.fs.mount = Some(mount_name(t as u32));
        fs.push(p.fs.kind.clone());
    }
    let tree = MountTree::mount(&flat, &targets.targets, mount_root, MountOptions::default())
        .context("mounting the targets' file systems")?;
    Ok(Prepared {
        targets,
        mounted: Mounted { tree, fs },
        made,
    })
}

/// Every sent file system of an earlier run is on its target, with its
/// UUID.
fn found(ft: &FileTargets) -> Result<()> {
    for (pl, t) in ft.plan.places()?.iter().zip(&ft.plan.trees) {
        let target = &ft.targets[pl.disk];
        let d = &ft.layout.disks[pl.disk];
        let ext = plan(d, crate::layout::devices::disk_size(target)?)?;
        let want = &d.partitions[pl.part];
        let got = crate::layout::mkfs::probe(target, ext[pl.part])?;
        let same = got.kind == want.fs.kind
            && got
                .uuid
                .as_deref()
                .zip(want.fs.uuid.as_deref())
                .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b));
        if !same {
            return Err(coded(
                ErrorCode::TargetUnavailable,
                format!(
                    "{} ({} {}) of the job's layout is not on {} any more (found {} {}); delete the job (POST /v1/job/delete) to lay the targets out again",
                    t.mount,
                    want.fs.kind,
                    want.fs.uuid.as_deref().unwrap_or("?"),
                    target.display(),
                    got.kind,
                    got.uuid.as_deref().unwrap_or("no uuid")
                ),
            ));
        }
    }
    Ok(())
}

/// What the sender is told of the targets.
pub fn describe(p: &Prepared) -> String {
    let fs: Vec<String> = p
        .targets
        .plan
        .trees
        .iter()
        .map(|t| t.mount.clone())
        .collect();
    let disks: Vec<String> = p
        .targets
        .targets
        .iter()
        .map(|t| t.display().to_string())
        .collect();
    let lvm = &p.targets.lvm;
    let flattened = if lvm.volumes.is_empty() {
        String::new()
    } else {
        let v: Vec<String> = lvm.volumes.iter().map(|v| v.volume.clone()).collect();
        format!(
            "; the logical volumes {} as plain partitions, without their volume group",
            v.join(", ")
        )
    };
    format!(
        "{} {} on {} (the source's UUIDs and labels{flattened})",
        if p.made {
            "laid out and made"
        } else {
            "found, as an earlier run made them:"
        },
        fs.join(", "),
        disks.join(", "),
    )
}
