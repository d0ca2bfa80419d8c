//! [`MountTree`]: a described disk set attached and mounted under a staging
//! directory, closed in reverse order.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::mount::MsFlags;

use super::leftovers::{clean_leftovers_locked, lock_staging};
use super::mount_points::fill_mount_points_named;
use crate::layout::desc::LogicalVolume;
use crate::layout::desc::{plan, FsSpec, FsType, Layout, PartitionLayout};
use crate::layout::dev_nodes::DevNode;
use crate::layout::devices::{disk_size, AttachedDisk};
use crate::layout::fat::FatPartition;
use crate::layout::lvm::activate::{self, Access, Activation};
use crate::layout::lvm::LvNode;
use crate::layout::mount::MountGuard;

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
    /// The logical volumes reached, by their index in `layout.volumes`.
    volumes: Vec<(usize, LvNode)>,
    /// The guest's volume groups, where device-mapper reaches them.
    activation: Option<Activation>,
    lvm_access: Option<Access>,
    mounts: Vec<MountGuard>,
    /// Mount points a read-only tree could not make: (mount point, why).
    unmounted: Vec<(String, String)>,
    /// Where each mount point was mounted, resolved inside the tree.
    mounted_at: BTreeMap<String, PathBuf>,
    /// Held while the tree is up; the kernel drops it when the process
    /// dies, which is how a later run tells leftovers from a live tree.
    _lock: nix::fcntl::Flock<fs::File>,
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
        layout.validate_for(targets)?;
        fs::create_dir_all(staging).with_context(|| format!("creating {}", staging.display()))?;
        let root = fs::canonicalize(staging)
            .with_context(|| format!("resolving {}", staging.display()))?;
        let lock = lock_staging(&root)?;
        clean_leftovers_locked(&root, targets)?;
        let mut tree = MountTree {
            root,
            layout: layout.clone(),
            disks: Vec::new(),
            volumes: Vec::new(),
            activation: None,
            lvm_access: None,
            mounts: Vec::new(),
            unmounted: Vec::new(),
            mounted_at: BTreeMap::new(),
            _lock: lock,
        };
        let starts = tree.attach_disks(layout, targets)?;
        tree.activate_volumes(opts);
        tree.reach_volumes(layout, targets, &starts, opts)?;
        let order = tree.planned_mounts();
        tree.mount_planned(order, opts)?;
        tracing::info!(root = %tree.root.display(), mounts = tree.mounts.len(), "layout mounted");
        Ok(tree)
    }

    /// Attach each disk of `layout` on its target; returns the start of
    /// each partition, by disk.
    fn attach_disks(&mut self, layout: &Layout, targets: &[PathBuf]) -> Result<Vec<Vec<u64>>> {
        let mut starts = Vec::new();
        for (d, t) in layout.disks.iter().zip(targets) {
            let size = disk_size(t)?;
            let extents =
                plan(d, size).with_context(|| format!("placing the layout on {}", t.display()))?;
            starts.push(extents.iter().map(|e| e.start).collect::<Vec<_>>());
            let reread = fs::metadata(t).is_ok_and(|m| m.file_type().is_block_device());
            let numbered: Vec<(usize, _)> = d.numbers().into_iter().zip(extents).collect();
            self.disks.push(AttachedDisk::attach(t, &numbered, reread)?);
        }
        Ok(starts)
    }

    /// Reach each placed logical volume: through device-mapper where its
    /// volume group is active, else as a partition node of its disk's own
    /// loop device, else through a loop device of its own. `starts` are the
    /// partitions' starts from [`MountTree::attach_disks`]. A volume to be
    /// mounted that has no place is refused.
    fn reach_volumes(
        &mut self,
        layout: &Layout,
        targets: &[PathBuf],
        starts: &[Vec<u64>],
        opts: MountOptions,
    ) -> Result<()> {
        let mut shrunk = std::collections::BTreeSet::new();
        for (vi, v) in layout.volumes.iter().enumerate() {
            let Some(place) = v.place else {
                if v.fs.mount.is_some() {
                    return Err(v.refusal().unwrap_or_else(|| {
                        anyhow::anyhow!("logical volume {} has no place", v.display())
                    }));
                }
                continue;
            };
            let start = starts
                .get(place.disk)
                .and_then(|s| s.get(place.partition))
                .copied()
                .with_context(|| format!("logical volume {} lies on no partition", v.display()))?;
            let disk = &self.disks[place.disk];
            let lo = if let Some(a) = &self.activation {
                LvNode::mapped(a, v)?
            } else if disk.owns_loop() && !opts.read_only {
                // On the disk's own loop device, as a partition node: the
                // PV's node shrinks to its label and metadata first (BLKPG
                // partitions must not overlap); the loop's detach removes
                // them all.
                if shrunk.insert((place.disk, place.partition)) {
                    let first = layout
                        .volumes
                        .iter()
                        .filter_map(|o| o.place)
                        .filter(|p| p.disk == place.disk && p.partition == place.partition)
                        .map(|p| p.offset)
                        .min()
                        .unwrap_or(place.offset);
                    let n = layout.disks[place.disk].numbers()[place.partition];
                    crate::layout::devices::resize_partition(disk.whole(), n, first)?;
                }
                LvNode::partition(disk.whole(), LV_PARTITIONS + vi, start, v)?
            } else {
                LvNode::attach(&targets[place.disk], start, v, opts.read_only)?
            };
            self.volumes.push((vi, lo));
        }
        Ok(())
    }

    /// Every mount of the tree (partitions, their btrfs subvolumes, logical
    /// volumes), shallowest mount point first.
    fn planned_mounts(&self) -> Vec<Planned> {
        let mut order: Vec<Planned> = Vec::new();
        let mut plan = |fs: &FsSpec, node: &Path| {
            for (mount, subvol) in fs.mounts() {
                order.push(Planned {
                    mount: mount.to_owned(),
                    node: node.to_owned(),
                    fs: fs.kind.clone(),
                    subvol: subvol.map(str::to_owned),
                });
            }
        };
        for (di, d) in self.layout.disks.iter().enumerate() {
            for (pi, p) in d.partitions.iter().enumerate() {
                plan(&p.fs, &self.disks[di].partitions()[pi]);
            }
        }
        for (vi, lo) in &self.volumes {
            plan(&self.layout.volumes[*vi].fs, lo.path());
        }
        order.sort_by_key(|p| depth(&p.mount));
        order
    }

    /// Create each mount point and mount what is mountable there, in order.
    fn mount_planned(&mut self, order: Vec<Planned>, opts: MountOptions) -> Result<()> {
        for p in order {
            // Where the migrated system's own resolution puts it: a mount
            // point under a symlink (`/boot -> /etc`) stays in the tree,
            // never on the appliance's own directories.
            let dir = super::resolve_inside(&self.root, &p.mount)
                .with_context(|| format!("finding mount point {} in the tree", p.mount))?;
            match fs::create_dir_all(&dir) {
                Ok(()) => {}
                // Looking must not change the disk, and a read-only file
                // system above cannot take a new directory: what would be
                // mounted there is left out, and said (`unmounted`).
                Err(e) if opts.read_only && e.raw_os_error() == Some(libc::EROFS) => {
                    let why = format!(
                        "{} is not mounted: its mount point does not exist in the read-only file system above it",
                        p.mount
                    );
                    tracing::warn!("{why}");
                    self.unmounted.push((p.mount.clone(), why));
                    continue;
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("creating mount point {}", dir.display()))
                }
            }
            if !p.fs.mountable_anywhere() {
                // vfat: reached through `fat()`; the directory stands in for it.
                self.mounted_at.insert(p.mount.clone(), dir);
                continue;
            }
            let mut flags = MsFlags::empty();
            let mut data: Vec<String> = Vec::new();
            if let Some(sv) = &p.subvol {
                data.push(format!("subvol={sv}"));
            }
            if opts.read_only {
                flags |= MsFlags::MS_RDONLY;
                // Read-only without log replay: looking must not change the disk.
                data.extend(p.fs.read_only_data().map(str::to_owned));
            }
            let data = data.join(",");
            let g = MountGuard::mount(
                &p.node.to_string_lossy(),
                &dir,
                p.fs.as_str(),
                flags,
                (!data.is_empty()).then_some(data.as_str()),
            )?;
            self.mounts.push(g);
            self.mounted_at.insert(p.mount.clone(), dir);
        }
        Ok(())
    }

    /// Mount disks by their own layout: what block mode does with received
    /// disks (after [`crate::layout::grow`]) before repairs. Partitions and
    /// file systems come from the disks, mount points from the root's fstab.
    pub fn mount_existing(
        targets: &[PathBuf],
        staging: &Path,
        opts: MountOptions,
    ) -> Result<MountTree> {
        MountTree::mount_existing_named(targets, staging, opts, &[])
    }

    /// [`MountTree::mount_existing`] for disks the source system knew by
    /// kernel names: `source_names[i]` are disk i's (`/dev/sda`, ...), so an
    /// fstab line `/dev/sda2 /boot` mounts partition 2 of disk i on /boot.
    pub fn mount_existing_named(
        targets: &[PathBuf],
        staging: &Path,
        opts: MountOptions,
        source_names: &[Vec<String>],
    ) -> Result<MountTree> {
        let mut layout = crate::layout::read::read_all(targets)?;
        fill_mount_points_named(&mut layout, targets, source_names)?;
        MountTree::mount(&layout, targets, staging, opts)
    }

    /// Where the kernel has device-mapper, a tree to write in reaches the
    /// guest's logical volumes by activating their volume groups under a
    /// private configuration that sees only the target's PVs. A tree only
    /// looked at, a kernel without device-mapper, and a VG that cannot be
    /// activated here (one of the same name active on the appliance, an
    /// activation that fails) take loop devices over the volumes' extents,
    /// which reach the same bytes.
    fn activate_volumes(&mut self, opts: MountOptions) {
        let placed: Vec<&LogicalVolume> = self
            .layout
            .volumes
            .iter()
            .filter(|v| v.place.is_some())
            .collect();
        if placed.is_empty() {
            return;
        }
        let mut access = Access {
            via: "loop".to_owned(),
            volumes: placed.iter().map(|v| v.display()).collect(),
            fallback: None,
        };
        if !opts.read_only && activate::have_device_mapper() {
            match activate::obstacle(&placed) {
                Some(why) => access.fallback = Some(why),
                None => {
                    let mut pvs: Vec<PathBuf> = Vec::new();
                    let mut ids: Vec<String> = Vec::new();
                    for v in &placed {
                        let Some(p) = v.place else { continue };
                        if let Some(node) = self
                            .disks
                            .get(p.disk)
                            .and_then(|d| d.partitions().get(p.partition))
                        {
                            if !pvs.contains(node) {
                                pvs.push(node.clone());
                            }
                        }
                        if let Some(id) = &v.vg_uuid {
                            if !ids.contains(id) {
                                ids.push(id.clone());
                            }
                        }
                    }
                    match Activation::up(&pvs, &ids) {
                        Ok(a) => {
                            self.activation = Some(a);
                            access.via = "device-mapper".to_owned();
                        }
                        Err(e) => access.fallback = Some(format!("{e:#}")),
                    }
                }
            }
            if let Some(why) = &access.fallback {
                tracing::warn!("logical volumes through loop devices: {why}");
            }
        }
        self.lvm_access = Some(access);
    }

    /// How the tree reached its logical volumes; None without any.
    pub(crate) fn lvm_access(&self) -> Option<&Access> {
        self.lvm_access.as_ref()
    }

    /// The staging directory, where "/" of the layout is mounted.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What a read-only tree left unmounted, and why: (mount point, why).
    pub fn unmounted(&self) -> &[(String, String)] {
        &self.unmounted
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn disks(&self) -> &[AttachedDisk] {
        &self.disks
    }

    /// Where mount point `mp` ("/boot/efi") lies on the host.
    pub fn path_of(&self, mp: &str) -> PathBuf {
        match self.mounted_at.get(mp) {
            Some(dir) => dir.clone(),
            None => self.root.join(mp.trim_start_matches('/')),
        }
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
                aliases: Vec::new(),
            });
            for (p, node) in d.partitions.iter().zip(a.partitions()) {
                out.push(DevNode {
                    host_path: node.clone(),
                    uuid: p.fs.uuid.clone(),
                    label: p.fs.label.clone(),
                    partuuid: p.partuuid.clone(),
                    aliases: Vec::new(),
                });
            }
        }
        for (v, lo) in self.volumes() {
            out.push(DevNode {
                host_path: lo.to_owned(),
                uuid: v.fs.uuid.clone(),
                label: v.fs.label.clone(),
                partuuid: None,
                aliases: v.aliases(),
            });
        }
        out
    }

    /// The logical volumes reached, with their loop devices.
    pub fn volumes(&self) -> impl Iterator<Item = (&LogicalVolume, &Path)> {
        self.volumes
            .iter()
            .map(|(vi, lo)| (&self.layout.volumes[*vi], lo.path()))
    }

    /// The partition node mounted (or standing) at mount point `mp`.
    pub(crate) fn node_of(&self, mp: &str) -> Option<(&PartitionLayout, &Path)> {
        for (d, a) in self.layout.disks.iter().zip(&self.disks) {
            for (p, node) in d.partitions.iter().zip(a.partitions()) {
                if p.fs.mount.as_deref() == Some(mp) {
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
            Some((p, node)) if p.fs.kind == FsType::Vfat => Ok(FatPartition::new(node)),
            Some((p, _)) => bail!("{mp} holds {}, not a FAT file system", p.fs.kind),
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
            for v in self.volumes.drain(..) {
                std::mem::forget(v);
            }
            if let Some(a) = self.activation.take() {
                std::mem::forget(a);
            }
        }
        while let Some((_, v)) = self.volumes.pop() {
            if let Err(e) = v.close() {
                first.get_or_insert(e);
            }
        }
        if let Some(a) = self.activation.take() {
            if let Err(e) = a.close() {
                first.get_or_insert(e);
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
        if !self.mounts.is_empty()
            || !self.disks.is_empty()
            || !self.volumes.is_empty()
            || self.activation.is_some()
        {
            if let Err(e) = self.teardown() {
                tracing::warn!("{e:#}");
            }
        }
    }
}

/// Logical volumes shown as partitions of their disk's loop device are
/// numbered from here on, past any partition table's own numbers.
const LV_PARTITIONS: usize = 129;

/// One mount of the tree.
struct Planned {
    mount: String,
    node: PathBuf,
    fs: FsType,
    subvol: Option<String>,
}

fn depth(mp: &str) -> usize {
    mp.split('/').filter(|c| !c.is_empty()).count()
}
