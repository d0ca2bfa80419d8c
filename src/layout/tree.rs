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
use super::lvm::activate::{self, Access, Activation};
use super::lvm::{LogicalVolume, LvNode};
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
    /// The logical volumes reached, by their index in `layout.volumes`.
    volumes: Vec<(usize, LvNode)>,
    /// The guest's volume groups, where device-mapper reaches them.
    activation: Option<Activation>,
    lvm_access: Option<Access>,
    mounts: Vec<MountGuard>,
    /// Held while the tree is up; the kernel drops it when the process
    /// dies, which is how a later run tells leftovers from a live tree.
    _lock: nix::fcntl::Flock<fs::File>,
}

/// Take the lock of staging dir `root` (canonical), or say who holds it.
fn lock_staging(root: &Path) -> Result<nix::fcntl::Flock<fs::File>> {
    let dir = Path::new("/run/ferry");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let hash = blake3::hash(root.as_os_str().as_encoded_bytes()).to_hex();
    let path = dir.join(format!("mount-{}.lock", &hash[..16]));
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        if e == nix::errno::Errno::EWOULDBLOCK {
            coded(
                ErrorCode::TargetInUse,
                format!(
                    "{} is mounted by another running ferry process (lock {})",
                    root.display(),
                    path.display()
                ),
            )
        } else {
            anyhow::anyhow!("locking {}: {e}", path.display())
        }
    })
}

/// What a killed run left: mounts under the staging dir, loop devices over
/// the image files.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// Processes a killed run left running in a chroot of the staging dir
    /// (an orphaned update-initramfs, say): killed before the unmount.
    pub killed: Vec<i32>,
    pub unmounted: Vec<PathBuf>,
    /// Device-mapper devices of a guest's volumes left active.
    pub deactivated: Vec<String>,
    pub detached: Vec<PathBuf>,
}

/// Remove what an earlier, interrupted run left for the same staging dir
/// and images, so that a fresh run never stacks mounts or leaks loops.
/// Refuses while a live process holds the staging dir.
pub fn clean_leftovers(staging: &Path, targets: &[PathBuf]) -> Result<Leftovers> {
    if staging.exists() {
        let staging = fs::canonicalize(staging)
            .with_context(|| format!("resolving {}", staging.display()))?;
        let _lock = lock_staging(&staging)?;
        return clean_leftovers_locked(&staging, targets);
    }
    clean_leftovers_locked(staging, targets)
}

fn clean_leftovers_locked(staging: &Path, targets: &[PathBuf]) -> Result<Leftovers> {
    let mut l = Leftovers::default();
    if staging.exists() {
        l.killed = kill_chrooted(staging)?;
        l.unmounted = unmount_below(staging)?;
    }
    let dm = activate::have_device_mapper();
    for t in targets {
        let is_file = fs::metadata(t)
            .with_context(|| format!("reading {}", t.display()))?
            .is_file();
        if !is_file {
            if dm {
                let node =
                    fs::canonicalize(t).with_context(|| format!("resolving {}", t.display()))?;
                l.deactivated.extend(activate::remove_holders(&node)?);
            }
            continue;
        }
        for lo in loops_backed_by(t)? {
            if dm {
                l.deactivated.extend(activate::remove_holders(&lo)?);
            }
            detach(&lo).with_context(|| {
                format!("detaching leftover {} over {}", lo.display(), t.display())
            })?;
            l.detached.push(lo);
        }
    }
    if l != Leftovers::default() {
        tracing::warn!(killed = ?l.killed, unmounted = ?l.unmounted, deactivated = ?l.deactivated, detached = ?l.detached, "cleaned up after an interrupted run");
    }
    Ok(l)
}

/// Kill every process whose root directory is `staging` or below it (the
/// tools of a chroot session whose ferry died), and wait until they are
/// gone, so that the leftover mounts can be unmounted and nothing writes to
/// them afterwards.
fn kill_chrooted(staging: &Path) -> Result<Vec<i32>> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let in_chroot = || -> Result<Vec<i32>> {
        let mut pids = Vec::new();
        for e in fs::read_dir("/proc").context("listing /proc")?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // Processes that exit meanwhile, or kernel threads, have no root.
            if fs::read_link(e.path().join("root")).is_ok_and(|r| r.starts_with(staging)) {
                pids.push(pid);
            }
        }
        Ok(pids)
    };
    let found = in_chroot()?;
    for &pid in &found {
        match kill(Pid::from_raw(pid), Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => bail!(
                "killing process {pid}, left in a chroot of {}: {e}",
                staging.display()
            ),
        }
    }
    for _ in 0..200 {
        if in_chroot()?.is_empty() {
            return Ok(found);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    bail!(
        "processes left in a chroot of {} do not exit after SIGKILL: {:?}",
        staging.display(),
        in_chroot()?
    )
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
            _lock: lock,
        };
        let mut starts = Vec::new();
        for (d, t) in layout.disks.iter().zip(targets) {
            let size = disk_size(t)?;
            let extents =
                plan(d, size).with_context(|| format!("placing the layout on {}", t.display()))?;
            starts.push(extents.iter().map(|e| e.start).collect::<Vec<_>>());
            let reread = fs::metadata(t).is_ok_and(|m| m.file_type().is_block_device());
            let numbered: Vec<(usize, _)> = d.numbers().into_iter().zip(extents).collect();
            tree.disks.push(AttachedDisk::attach(t, &numbered, reread)?);
        }
        tree.activate_volumes(opts);
        let mut shrunk = std::collections::BTreeSet::new();
        for (vi, v) in layout.volumes.iter().enumerate() {
            let Some(place) = v.place else {
                if v.mount.is_some() {
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
            let disk = &tree.disks[place.disk];
            let lo = if let Some(a) = &tree.activation {
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
                    super::devices::resize_partition(disk.whole(), n, first)?;
                }
                LvNode::partition(disk.whole(), LV_PARTITIONS + vi, start, v)?
            } else {
                LvNode::attach(&targets[place.disk], start, v, opts.read_only)?
            };
            tree.volumes.push((vi, lo));
        }
        let mut order: Vec<Planned> = Vec::new();
        for (di, d) in layout.disks.iter().enumerate() {
            for (pi, p) in d.partitions.iter().enumerate() {
                let Some(mp) = &p.mount else { continue };
                let node = tree.disks[di].partitions()[pi].clone();
                order.push(Planned {
                    mount: mp.clone(),
                    node: node.clone(),
                    fs: p.fs.clone(),
                    subvol: p.subvol.clone(),
                });
                for sv in &p.subvolumes {
                    order.push(Planned {
                        mount: sv.mount.clone(),
                        node: node.clone(),
                        fs: p.fs.clone(),
                        subvol: Some(sv.subvol.clone()),
                    });
                }
            }
        }
        for (vi, lo) in &tree.volumes {
            let v = &layout.volumes[*vi];
            if let Some(mp) = &v.mount {
                order.push(Planned {
                    mount: mp.clone(),
                    node: lo.path().to_owned(),
                    fs: v.fs.clone(),
                    subvol: v.subvol.clone(),
                });
            }
        }
        order.sort_by_key(|p| depth(&p.mount));
        for p in order {
            let dir = tree.path_of(&p.mount);
            fs::create_dir_all(&dir)
                .with_context(|| format!("creating mount point {}", dir.display()))?;
            if !p.fs.mountable_anywhere() {
                // vfat: reached through `fat()`; the directory stands in for it.
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
            tree.mounts.push(g);
        }
        tracing::info!(root = %tree.root.display(), mounts = tree.mounts.len(), "layout mounted");
        Ok(tree)
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
        let mut layout = super::read::read_all(targets)?;
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
    pub fn lvm_access(&self) -> Option<&Access> {
        self.lvm_access.as_ref()
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
        for (v, lo) in self.volumes() {
            out.push(DevNode {
                host_path: lo.to_owned(),
                uuid: v.uuid.clone(),
                label: v.label.clone(),
                partuuid: None,
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
pub fn fill_mount_points_renamed(
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
            if !v.fs.mountable_anywhere() {
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
    for p in layout
        .disks
        .iter_mut()
        .flat_map(|d| d.partitions.iter_mut())
    {
        p.mount = None;
        p.subvol = None;
        p.subvolumes.clear();
    }
    for v in &mut layout.volumes {
        v.mount = None;
        v.subvol = None;
    }
    let entries = crate::devname::parse_fstab(&fstab);
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
            part.mount = Some("/".into());
            part.subvol = root_subvol;
        }
        At::Volume(v) => {
            layout.volumes[v].mount = Some("/".into());
            layout.volumes[v].subvol = root_subvol;
        }
    }
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
        let by_name =
            kernel_name_match(layout, spec, source_names).map(|(d, p)| At::Partition(d, p));
        let hit = by_name.or_else(|| {
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
        });
        let (mount, subvol, subvolumes, fs) = match hit {
            Some(At::Partition(d, p)) => {
                let part = &mut layout.disks[d].partitions[p];
                (
                    &mut part.mount,
                    &mut part.subvol,
                    Some(&mut part.subvolumes),
                    part.fs.clone(),
                )
            }
            Some(At::Volume(v)) => {
                let vol = &mut layout.volumes[v];
                (&mut vol.mount, &mut vol.subvol, None, vol.fs.clone())
            }
            None => {
                tracing::warn!(
                    spec,
                    mount = mp,
                    "an fstab entry names no partition or logical volume of these disks"
                );
                continue;
            }
        };
        if mount.is_none() {
            *mount = Some(mp);
            *subvol = e.subvol();
            count += 1;
        } else if let (FsType::Btrfs, Some(sv), Some(list)) = (&fs, e.subvol(), subvolumes) {
            // Another subvolume of a btrfs already mounted elsewhere.
            list.push(super::desc::SubvolumeMount {
                subvol: sv,
                mount: mp,
            });
            count += 1;
        }
    }
    Ok(count)
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
            candidates.push((At::Partition(di, pi), node.clone(), p.fs.clone()));
        }
    }
    for (vi, lo) in volumes {
        candidates.push((
            At::Volume(*vi),
            lo.path().to_owned(),
            layout.volumes[*vi].fs.clone(),
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
        uuid: p.uuid.as_deref(),
        label: p.label.as_deref(),
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
