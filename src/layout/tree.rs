//! A described disk set mounted as a tree under a staging directory.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::mount::MsFlags;

use super::chroot::DevNode;
use super::desc::{plan, FsType, Layout, PartitionLayout};
use super::devices::{detach, disk_size, loops_backed_by, AttachedDisk};
use super::fat::FatPartition;
use super::mount::{unmount_below, MountGuard};
use crate::job::errors::{coded, ErrorCode};

/// Options for [`MountTree::mount`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MountOptions {
    pub read_only: bool,
}

/// The mounted tree: each disk attached (loop device + BLKPG partitions for
/// an image file, the kernel's nodes for a block device) and each mountable
/// partition mounted, root first, then by mount-point depth. `close`
/// unmounts and detaches in reverse order; so does drop, best effort, when
/// a caller errors out midway.
#[derive(Debug)]
pub struct MountTree {
    root: PathBuf,
    layout: Layout,
    disks: Vec<AttachedDisk>,
    mounts: Vec<MountGuard>,
}

/// What a killed run left: mounts under the staging dir, loop devices over
/// the image files.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    pub unmounted: Vec<PathBuf>,
    pub detached: Vec<PathBuf>,
}

/// Remove what an earlier, interrupted run left for the same staging dir
/// and images, so that a fresh run never stacks mounts or leaks loops.
pub fn clean_leftovers(staging: &Path, targets: &[PathBuf]) -> Result<Leftovers> {
    let mut l = Leftovers::default();
    if staging.exists() {
        let staging = fs::canonicalize(staging)
            .with_context(|| format!("resolving {}", staging.display()))?;
        l.unmounted = unmount_below(&staging)?;
    }
    for t in targets {
        let is_file = fs::metadata(t)
            .with_context(|| format!("reading {}", t.display()))?
            .is_file();
        if !is_file {
            continue;
        }
        for lo in loops_backed_by(t)? {
            detach(&lo).with_context(|| {
                format!("detaching leftover {} over {}", lo.display(), t.display())
            })?;
            l.detached.push(lo);
        }
    }
    if !l.unmounted.is_empty() || !l.detached.is_empty() {
        tracing::warn!(unmounted = ?l.unmounted, detached = ?l.detached, "cleaned up after an interrupted run");
    }
    Ok(l)
}

impl MountTree {
    /// Mount `layout` (disk i on `targets[i]`) under `staging`, which is
    /// created if missing. Mounts and loops an interrupted earlier run left
    /// there are removed first.
    pub fn mount(
        layout: &Layout,
        targets: &[PathBuf],
        staging: &Path,
        opts: MountOptions,
    ) -> Result<MountTree> {
        layout.validate()?;
        if layout.disks.len() != targets.len() {
            bail!(coded(
                ErrorCode::LayoutInvalid,
                format!(
                    "the layout describes {} disk(s) but {} target(s) were given",
                    layout.disks.len(),
                    targets.len()
                )
            ));
        }
        fs::create_dir_all(staging).with_context(|| format!("creating {}", staging.display()))?;
        let root = fs::canonicalize(staging)
            .with_context(|| format!("resolving {}", staging.display()))?;
        clean_leftovers(&root, targets)?;
        let mut tree = MountTree {
            root,
            layout: layout.clone(),
            disks: Vec::new(),
            mounts: Vec::new(),
        };
        for (d, t) in layout.disks.iter().zip(targets) {
            let size = disk_size(t)?;
            let extents =
                plan(d, size).with_context(|| format!("placing the layout on {}", t.display()))?;
            let reread = fs::metadata(t).is_ok_and(|m| m.file_type().is_block_device());
            tree.disks.push(AttachedDisk::attach(t, &extents, reread)?);
        }
        let mut order: Vec<(usize, usize)> = Vec::new();
        for (di, d) in layout.disks.iter().enumerate() {
            for (pi, p) in d.partitions.iter().enumerate() {
                if p.mount.is_some() {
                    order.push((di, pi));
                }
            }
        }
        order.sort_by_key(|&(di, pi)| {
            depth(
                layout.disks[di].partitions[pi]
                    .mount
                    .as_deref()
                    .unwrap_or("/"),
            )
        });
        for (di, pi) in order {
            let p = &layout.disks[di].partitions[pi];
            let mp = p.mount.as_deref().unwrap_or("/");
            let dir = tree.path_of(mp);
            fs::create_dir_all(&dir)
                .with_context(|| format!("creating mount point {}", dir.display()))?;
            if !p.fs.mountable_anywhere() {
                // vfat: reached through `fat()`; the directory stands in for it.
                continue;
            }
            let node = tree.disks[di].partitions()[pi].clone();
            let mut flags = MsFlags::empty();
            if opts.read_only {
                flags |= MsFlags::MS_RDONLY;
            }
            let g = MountGuard::mount(&node.to_string_lossy(), &dir, p.fs.as_str(), flags, None)?;
            tree.mounts.push(g);
        }
        tracing::info!(root = %tree.root.display(), mounts = tree.mounts.len(), "layout mounted");
        Ok(tree)
    }

    /// The staging directory, where "/" of the layout is mounted.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn disks(&self) -> &[AttachedDisk] {
        &self.disks
    }

    /// Where mount point `mp` ("/boot/efi") lies on the host.
    pub fn path_of(&self, mp: &str) -> PathBuf {
        self.root.join(mp.trim_start_matches('/'))
    }

    /// The device nodes of the tree, for a chroot's /dev: each whole disk
    /// and each partition with its file system UUID, label and PARTUUID.
    pub fn dev_nodes(&self) -> Vec<DevNode> {
        let mut out = Vec::new();
        for (d, a) in self.layout.disks.iter().zip(&self.disks) {
            out.push(DevNode {
                host_path: a.whole().to_owned(),
                uuid: None,
                label: None,
                partuuid: None,
            });
            for (p, node) in d.partitions.iter().zip(a.partitions()) {
                out.push(DevNode {
                    host_path: node.clone(),
                    uuid: p.uuid.clone(),
                    label: p.label.clone(),
                    partuuid: p.partuuid.clone(),
                });
            }
        }
        out
    }

    /// The partition node mounted (or standing) at mount point `mp`.
    pub fn node_of(&self, mp: &str) -> Option<(&PartitionLayout, &Path)> {
        for (d, a) in self.layout.disks.iter().zip(&self.disks) {
            for (p, node) in d.partitions.iter().zip(a.partitions()) {
                if p.mount.as_deref() == Some(mp) {
                    return Some((p, node.as_path()));
                }
            }
        }
        None
    }

    /// The FAT partition described at mount point `mp` ("/boot/efi"), read
    /// and written in-process.
    pub fn fat(&self, mp: &str) -> Result<FatPartition> {
        match self.node_of(mp) {
            Some((p, node)) if p.fs == FsType::Vfat => Ok(FatPartition::new(node)),
            Some((p, _)) => bail!("{mp} holds {}, not a FAT file system", p.fs),
            None => bail!("the layout has no partition mounted at {mp}"),
        }
    }

    /// Unmount everything (deepest first) and detach the disks.
    pub fn close(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let mut first: Option<anyhow::Error> = None;
        let mut unmount_failed = false;
        while let Some(m) = self.mounts.pop() {
            if let Err(e) = m.close() {
                unmount_failed = true;
                first.get_or_insert(e);
            }
        }
        if unmount_failed {
            // A loop under a busy mount cannot go; leave it for the next
            // run's cleanup rather than pretend.
            for d in self.disks.drain(..) {
                std::mem::forget(d);
            }
        }
        while let Some(d) = self.disks.pop() {
            if let Err(e) = d.close() {
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(e.context(format!("tearing down the tree at {}", self.root.display()))),
            None => Ok(()),
        }
    }
}

impl Drop for MountTree {
    fn drop(&mut self) {
        if !self.mounts.is_empty() || !self.disks.is_empty() {
            if let Err(e) = self.teardown() {
                tracing::warn!("{e:#}");
            }
        }
    }
}

fn depth(mp: &str) -> usize {
    mp.split('/').filter(|c| !c.is_empty()).count()
}
