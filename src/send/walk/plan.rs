//! The trees file mode sends: one per file system of the layout that
//! ferry writes, each with where it is read, the exclude list that applies
//! to it, and the mount points of the other trees beneath it; and the
//! source's plan (its layout and how much each tree holds) that the
//! appliance lays its targets out by.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bytes::Bytes;

use super::entries;
use super::excludes::Excludes;
use super::live;
use crate::job::errors::{coded, ErrorCode};

/// One tree to send: its number, its mount point in the layout, where it
/// is read, what it leaves out, and the other trees' mount points beneath
/// it (sent as empty directories, not entered).
#[derive(Debug, Clone)]
pub(crate) struct TreeJob {
    pub(crate) tree: u32,
    pub(crate) mount: String,
    pub(crate) root: PathBuf,
    pub(crate) excludes: Excludes,
    pub(crate) stops: Vec<Vec<u8>>,
    /// Bytes the tree holds (measured before the layout is sent): what
    /// the progress line's estimate of the time left counts against.
    pub(crate) used: u64,
}

/// The trees of `layout` beneath `root`: the root file system first, then
/// every other file system ferry writes (ext4, ext3, xfs, vfat), in the
/// layout's order. The system disk's exclude list applies to the root file
/// system, data disk N's to the file systems of disk N.
pub(crate) fn tree_jobs(
    root: &Path,
    layout: &crate::layout::Layout,
    excludes_dir: Option<&Path>,
) -> Result<Vec<TreeJob>> {
    use crate::layout::FsType;
    let writable =
        |fs: &FsType| matches!(fs, FsType::Ext4 | FsType::Ext3 | FsType::Xfs | FsType::Vfat);
    let mut mounts: Vec<(String, usize)> = Vec::new();
    for (d, disk) in layout.disks.iter().enumerate() {
        for p in &disk.partitions {
            if let Some(m) = p.fs.mount.as_ref().filter(|_| writable(&p.fs.kind)) {
                mounts.push((m.trim_end_matches('/').to_owned(), d));
            }
        }
    }
    // A logical volume is on the disk of its physical volume.
    for v in &layout.volumes {
        if let (Some(m), Some(place)) = (
            v.fs.mount.as_ref().filter(|_| writable(&v.fs.kind)),
            v.place,
        ) {
            mounts.push((m.trim_end_matches('/').to_owned(), place.disk));
        }
    }
    for m in &mut mounts {
        if m.0.is_empty() {
            m.0 = "/".into();
        }
    }
    mounts.sort_by_key(|(m, _)| m != "/");
    if mounts.first().is_none_or(|(m, _)| m != "/") {
        return Err(coded(
            ErrorCode::LayoutInvalid,
            "the layout has no ext4, ext3 or xfs file system mounted on /",
        ));
    }
    let mut jobs = Vec::new();
    for (i, (mount, disk)) in mounts.iter().enumerate() {
        let rel = mount.trim_start_matches('/');
        let dir = if rel.is_empty() {
            root.to_owned()
        } else {
            root.join(rel)
        };
        if !dir.is_dir() {
            return Err(coded(
                ErrorCode::Usage,
                format!(
                    "--root {}: no directory {} for the file system the layout mounts on {mount}",
                    root.display(),
                    dir.display()
                ),
            ));
        }
        let prefix = if rel.is_empty() {
            String::new()
        } else {
            format!("{rel}/")
        };
        let stops = mounts
            .iter()
            .filter_map(|(m, _)| m.trim_start_matches('/').strip_prefix(&prefix))
            .filter(|r| !r.is_empty())
            .map(|r| r.as_bytes().to_vec())
            .collect();
        let excludes = match (excludes_dir, i, *disk) {
            (Some(d), 0, _) => Excludes::load(d, 0)?,
            (Some(d), _, n) if n > 0 => Excludes::load(d, n as u32)?,
            _ => Excludes::default(),
        };
        jobs.push(TreeJob {
            tree: i as u32,
            mount: mount.clone(),
            root: dir,
            excludes,
            stops,
            used: 0,
        });
    }
    Ok(jobs)
}

/// A live server's trees are read where each file system is seen alone,
/// without what is mounted on it.
pub(crate) fn read_alone(jobs: &mut [TreeJob], views: Option<&live::Views>) {
    for j in jobs {
        if let Some(alone) = views.and_then(|v| v.root_of(&j.mount)) {
            eprintln!(
                "ferry send: tree {} ({}) is read alone at {}, without what is mounted on it",
                j.tree,
                j.mount,
                alone.display()
            );
            j.root = alone;
        }
    }
}

/// How much each tree holds, measured by a walk that reads no file (the
/// progress line's estimate counts against it, the appliance sizes its
/// targets by it).
pub(crate) async fn measure(jobs: &mut [TreeJob]) -> Result<Vec<crate::layout::fit::TreeSource>> {
    let mut trees = Vec::new();
    for j in jobs {
        if let Some(src) = &j.excludes.source {
            eprintln!(
                "ferry send: excluding from {} the paths listed in {}",
                j.mount,
                src.display()
            );
        }
        let (root, ex, stops) = (j.root.clone(), j.excludes.clone(), j.stops.clone());
        let used = tokio::task::spawn_blocking(move || entries::used_bytes(&root, &ex, &stops))
            .await
            .context("measuring the trees")??;
        j.used = used;
        trees.push(crate::layout::fit::TreeSource {
            mount: j.mount.clone(),
            used,
        });
    }
    Ok(trees)
}

/// The source's plan as the SourceLayout frame carries it, checked here
/// first as the appliance will lay it out; what becomes of its logical
/// volumes is said.
pub(crate) fn source_plan(
    layout: crate::layout::Layout,
    trees: Vec<crate::layout::fit::TreeSource>,
) -> Result<Bytes> {
    let plan = crate::layout::fit::SourcePlan { layout, trees };
    let (_, lvm) = plan.flattened()?;
    for v in &lvm.volumes {
        eprintln!(
            "ferry send: the logical volume {} ({}) becomes a plain partition on the target; the migrated system boots without its volume group",
            v.volume,
            v.mount.as_deref().unwrap_or(&v.fs)
        );
    }
    for v in &lvm.left_out {
        eprintln!(
            "ferry send: the logical volume {v} is not mounted and not swap: nothing of it is sent"
        );
    }
    Ok(Bytes::from(
        plan.to_json(crate::wire::frame::MAX_SOURCE_LAYOUT)?,
    ))
}
