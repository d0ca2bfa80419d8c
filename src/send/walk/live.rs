//! The layout of the running server: for each local file system that the
//! discovery found, the block device behind it (`/sys/dev/block/MAJ:MIN`),
//! the disks those devices are on, their layout as the layout reader reads
//! it from the disks themselves (read-only), and the mount points set on
//! the partitions and logical volumes the file systems are mounted from.
//! Nothing is mounted again: the tree sent is the running system's `/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::discover::{Discovery, SourceFs};
use crate::job::errors::{coded, Code, ErrorCode};
use crate::layout::Layout;

/// The file systems file mode writes on the target.
pub(crate) const WRITABLE: &[&str] = &["ext4", "ext3", "xfs", "vfat"];

/// What a mounted file system is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// Partition `number` of the disk `disk` (its name in `/dev`).
    Partition { disk: String, number: usize },
    /// The LVM logical volume `vg`/`lv`, on these physical volumes
    /// (partitions, as disk name and number).
    Volume {
        vg: String,
        lv: String,
        pvs: Vec<(String, usize)>,
    },
}

fn unsupported(fs: &SourceFs, what: impl std::fmt::Display) -> anyhow::Error {
    coded(
        ErrorCode::SourceDeviceUnsupported,
        format!(
            "{} ({}, {}) is on {what}",
            fs.mount_point.display(),
            fs.fstype,
            fs.source
        ),
    )
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn name_of(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A partition's sysfs directory: its disk's name and its number.
fn partition_of(dir: &Path) -> Option<(String, usize)> {
    let number = read_trimmed(&dir.join("partition"))?.parse().ok()?;
    let disk = dir.parent()?;
    Some((name_of(disk), number))
}

/// What a block device that is not a partition is, for the error.
fn whole_device(dir: &Path) -> String {
    let name = name_of(dir);
    if dir.join("md").is_dir() {
        format!("the md RAID array /dev/{name}")
    } else if dir.join("loop").is_dir() {
        match read_trimmed(&dir.join("loop/backing_file")) {
            Some(f) => format!("the loop device /dev/{name} (backed by the file {f})"),
            None => format!("the loop device /dev/{name}"),
        }
    } else if name.starts_with("nbd") {
        format!("the network block device /dev/{name}")
    } else if dir.join("dm").is_dir() {
        format!("the device-mapper device /dev/{name}")
    } else {
        format!("the whole disk /dev/{name}, without a partition table")
    }
}

/// An LVM device-mapper name `vg-lv`, dashes inside either doubled.
pub(crate) fn split_dm_name(name: &str) -> Option<(String, String)> {
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'-' {
            if b.get(i + 1) == Some(&b'-') {
                i += 2;
                continue;
            }
            let (vg, lv) = (&name[..i], &name[i + 1..]);
            if vg.is_empty() || lv.is_empty() {
                return None;
            }
            return Some((vg.replace("--", "-"), lv.replace("--", "-")));
        }
        i += 1;
    }
    None
}

/// What the file system `fs` is on, from the sysfs tree at `sys`.
pub fn backing(sys: &Path, fs: &SourceFs) -> Result<Backing> {
    let link = sys.join("dev/block").join(&fs.devno);
    let dir = std::fs::canonicalize(&link).map_err(|e| {
        unsupported(
            fs,
            format_args!(
                "the device {} that {} does not know ({e}); it is not a block device",
                fs.devno,
                link.display()
            ),
        )
    })?;
    if let Some((disk, number)) = partition_of(&dir) {
        return Ok(Backing::Partition { disk, number });
    }
    if let Some(dm) = read_trimmed(&dir.join("dm/name")) {
        let uuid = read_trimmed(&dir.join("dm/uuid")).unwrap_or_default();
        let lvm = split_dm_name(&dm).filter(|_| uuid.starts_with("LVM-"));
        let Some((vg, lv)) = lvm else {
            return Err(unsupported(
                fs,
                format_args!(
                    "the device-mapper device {dm} ({}), which is not an LVM logical volume",
                    if uuid.is_empty() { "no uuid" } else { &uuid }
                ),
            ));
        };
        let mut names: Vec<String> = std::fs::read_dir(dir.join("slaves"))
            .with_context(|| format!("listing the devices beneath {}", dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut pvs = Vec::new();
        for n in names {
            let slave = std::fs::canonicalize(dir.join("slaves").join(&n))
                .with_context(|| format!("resolving {}/slaves/{n}", dir.display()))?;
            match partition_of(&slave) {
                Some(p) => pvs.push(p),
                None => {
                    return Err(unsupported(
                        fs,
                        format_args!(
                            "the LVM logical volume {vg}/{lv}, whose physical volume is {}",
                            whole_device(&slave)
                        ),
                    ))
                }
            }
        }
        if pvs.is_empty() {
            return Err(unsupported(
                fs,
                format_args!("the LVM logical volume {vg}/{lv}, with no physical volume in sysfs"),
            ));
        }
        return Ok(Backing::Volume { vg, lv, pvs });
    }
    Err(unsupported(fs, whole_device(&dir)))
}

/// One file system that is sent, as the sender prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub device: String,
    pub size: u64,
    pub used: u64,
}

/// What the live server sends: its disks (disk 0 holds `/`), their
/// layout with the mount points set, what is printed, and the local file
/// systems that are not sent (with why).
#[derive(Debug, Clone)]
pub struct LiveSource {
    pub disks: Vec<PathBuf>,
    /// The mount points of the file systems sent.
    pub mounts: Vec<PathBuf>,
    pub layout: Layout,
    pub rows: Vec<Row>,
    pub not_sent: Vec<String>,
}

/// A file system to send and what it is on.
pub(crate) type Placed = (SourceFs, Backing);

/// The file systems to send and what each is on: `/` first, which must
/// be one ferry writes. Local file systems ferry does not write are
/// listed in `not_sent`.
pub fn placements(found: &Discovery, sys: &Path) -> Result<(Vec<Placed>, Vec<String>)> {
    let root = found
        .file_systems
        .iter()
        .find(|f| f.mount_point == Path::new("/"))
        .ok_or_else(|| {
            coded(
                ErrorCode::RootFsUnsupported,
                "/ is not on a local file system in /proc/self/mountinfo",
            )
        })?;
    if !WRITABLE.contains(&root.fstype.as_str()) || root.fstype == "vfat" {
        return Err(coded(
            ErrorCode::RootFsUnsupported,
            format!(
                "/ is {} on {}; file mode writes ext4, ext3 and xfs",
                root.fstype, root.source
            ),
        ));
    }
    let mut out = Vec::new();
    let mut not_sent = Vec::new();
    for fs in std::iter::once(root).chain(
        found
            .file_systems
            .iter()
            .filter(|f| f.mount_point != Path::new("/")),
    ) {
        if !WRITABLE.contains(&fs.fstype.as_str()) {
            not_sent.push(format!(
                "{} ({}, {}) is not sent: file mode writes ext4, ext3, xfs and vfat; its mount point is created empty",
                fs.mount_point.display(),
                fs.fstype,
                fs.source
            ));
            continue;
        }
        out.push((fs.clone(), backing(sys, fs)?));
    }
    Ok((out, not_sent))
}

/// The disks the placements are on, in order of first appearance (the
/// disk of `/` first).
pub(crate) fn disks_of(placed: &[Placed]) -> Vec<String> {
    let mut disks: Vec<String> = Vec::new();
    let mut add = |d: &String| {
        if !disks.contains(d) {
            disks.push(d.clone());
        }
    };
    for (_, b) in placed {
        match b {
            Backing::Partition { disk, .. } => add(disk),
            Backing::Volume { pvs, .. } => pvs.iter().for_each(|(d, _)| add(d)),
        }
    }
    disks
}

/// Set the mount point of each placed file system on its partition (by
/// the partition's number on its disk) or logical volume (by VG and LV
/// name) in `layout`, whose disk i is `disks[i]`.
pub(crate) fn set_mounts(layout: &mut Layout, disks: &[String], placed: &[Placed]) -> Result<()> {
    for (fs, b) in placed {
        let mount = fs.mount_point.to_string_lossy().into_owned();
        match b {
            Backing::Partition { disk, number } => {
                let d = disks
                    .iter()
                    .position(|n| n == disk)
                    .context("a placed disk is among the disks")?;
                let dl = &mut layout.disks[d];
                let i = dl
                    .numbers()
                    .iter()
                    .position(|n| n == number)
                    .ok_or_else(|| {
                        coded(
                            ErrorCode::LayoutInvalid,
                            format!(
                                "{mount} is on partition {number} of /dev/{disk}, which its partition table does not have"
                            ),
                        )
                    })?;
                let p = &mut dl.partitions[i];
                // The kernel's ext4 driver mounts ext2 and ext3 too, and
                // then calls them ext4: what the disk holds is blkid's.
                let same = p.fs.kind.as_str() == fs.fstype
                    || (p.fs.kind.is_ext() && fs.fstype.starts_with("ext"));
                if !same {
                    return Err(coded(
                        ErrorCode::LayoutInvalid,
                        format!(
                            "{mount} is {} on partition {number} of /dev/{disk}, where blkid finds {}",
                            fs.fstype,
                            p.fs.kind.as_str()
                        ),
                    ));
                }
                root_writable(&mount, &p.fs.kind)?;
                p.fs.mount = Some(mount);
            }
            Backing::Volume { vg, lv, .. } => {
                let v = layout
                    .volumes
                    .iter_mut()
                    .find(|v| &v.vg == vg && &v.name == lv)
                    .ok_or_else(|| {
                        coded(
                            ErrorCode::LayoutInvalid,
                            format!(
                                "{mount} is on the logical volume {vg}/{lv}, which the LVM metadata of its disks does not describe"
                            ),
                        )
                    })?;
                root_writable(&mount, &v.fs.kind)?;
                v.fs.mount = Some(mount);
            }
        }
    }
    Ok(())
}

/// `/` must be a file system the target can be made with, as the disk
/// holds it (an ext2 mounted by the ext4 driver is called ext4).
fn root_writable(mount: &str, fs: &crate::layout::FsType) -> Result<()> {
    use crate::layout::FsType;
    if mount == "/" && !matches!(fs, FsType::Ext4 | FsType::Ext3 | FsType::Xfs) {
        return Err(coded(
            ErrorCode::RootFsUnsupported,
            format!("/ is {fs} on its disk; file mode writes ext4, ext3 and xfs"),
        ));
    }
    Ok(())
}

/// A block device's size from sysfs (`size` is in 512-byte sectors).
fn device_size(sys: &Path, devno: &str) -> u64 {
    read_trimmed(&sys.join("dev/block").join(devno).join("size"))
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(0, |s| s * 512)
}

/// Bytes in use on the file system mounted at `mount_point`.
fn used_bytes(mount_point: &Path) -> u64 {
    match rustix::fs::statvfs(mount_point) {
        Ok(s) => (s.f_blocks - s.f_bfree) * s.f_frsize,
        Err(_) => 0,
    }
}

/// The live server: its file systems' devices and disks (from `sys` and
/// `dev`), and the layout of those disks, read from them.
pub fn source(found: &Discovery, sys: &Path, dev: &Path) -> Result<LiveSource> {
    let (placed, mut not_sent) = placements(found, sys)?;
    let names = disks_of(&placed);
    let disks: Vec<PathBuf> = names.iter().map(|n| dev.join(n)).collect();
    let mut layout = crate::layout::read_all(&disks)
        .context("reading the layout of the server's disks")
        .code(ErrorCode::SourceReadFailed)?;
    set_mounts(&mut layout, &names, &placed)?;
    for (spec, mp) in &found.not_mounted {
        not_sent.push(format!(
            "{} ({spec}) is in fstab but not mounted: it is not sent",
            mp.display()
        ));
    }
    let rows = placed
        .iter()
        .map(|(fs, _)| Row {
            mount_point: fs.mount_point.clone(),
            fstype: fs.fstype.clone(),
            device: fs.source.clone(),
            size: device_size(sys, &fs.devno),
            used: used_bytes(&fs.mount_point),
        })
        .collect();
    Ok(LiveSource {
        disks,
        mounts: placed.iter().map(|(f, _)| f.mount_point.clone()).collect(),
        layout,
        rows,
        not_sent,
    })
}

/// Each sent file system alone, without what is mounted on it: a detached
/// clone of its mount (`open_tree` with `OPEN_TREE_CLONE`, not recursive),
/// which no other process sees and which goes away with its descriptor.
/// Walked through it, a mount point of another file system is the
/// directory beneath it on the disk, with what that directory holds (the
/// static nodes of `/dev`, what an installer left in `/run`), as the
/// target will have it; the pseudo and tmpfs file systems are never
/// entered.
///
/// Kernels before 5.2 (CentOS 7's 3.10, RHEL 8's 4.18) have no `open_tree`:
/// there the same view is a read-only, non-recursive bind mount of the file
/// system under `/run/ferry-send/<pid>/`, unmounted (lazily) when the views
/// are dropped. A sender killed before that leaves its bind mounts on the
/// tmpfs `/run`; the next run removes those of senders no longer alive.
#[derive(Debug, Default)]
pub(crate) struct Views {
    views: Vec<(String, View)>,
}

#[derive(Debug)]
enum View {
    Clone(std::os::fd::OwnedFd),
    Bind(BindView),
}

/// A read-only bind mount of one file system, unmounted when dropped.
#[derive(Debug)]
struct BindView {
    dir: PathBuf,
}

/// Where the bind mounts of the sender with this pid live.
const BIND_BASE: &str = "/run/ferry-send";

impl BindView {
    fn make(mount: &Path, dir: PathBuf) -> Result<BindView> {
        use rustix::mount::MountPropagationFlags;
        use rustix::mount::{mount_bind, mount_change, mount_remount, MountFlags};
        std::fs::create_dir_all(&dir).with_context(|| format!("making {}", dir.display()))?;
        mount_bind(mount, &dir)
            .with_context(|| format!("bind-mounting {} on {}", mount.display(), dir.display()))?;
        // From here on the guard unmounts it, whatever fails next.
        let view = BindView { dir };
        // Private first: a read-only remount must not reach the original's
        // peers, and nothing mounted later under the original shows here.
        mount_change(&view.dir, MountPropagationFlags::PRIVATE)
            .with_context(|| format!("making {} private", view.dir.display()))?;
        mount_remount(
            &view.dir,
            MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
            "",
        )
        .with_context(|| format!("making {} read-only", view.dir.display()))?;
        Ok(view)
    }
}

impl Drop for BindView {
    fn drop(&mut self) {
        use rustix::mount::{unmount, UnmountFlags};
        if let Err(e) = unmount(&self.dir, UnmountFlags::DETACH) {
            tracing::warn!("unmounting {}: {e}", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Remove the bind mounts that senders no longer alive left under `base`.
fn remove_stale_binds(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(views) = std::fs::read_dir(e.path()) {
            for v in views.flatten() {
                drop(BindView { dir: v.path() });
            }
        }
        let _ = std::fs::remove_dir(e.path());
    }
}

impl Views {
    /// A view of the file system at each of `mounts`: a clone of its mount,
    /// or a private bind mount where the kernel has no `open_tree`; none,
    /// with a warning, where neither can be made (without CAP_SYS_ADMIN):
    /// that file system is then walked as it is mounted.
    pub fn open(mounts: &[PathBuf]) -> Views {
        Self::open_under(mounts, Path::new(BIND_BASE))
    }

    fn open_under(mounts: &[PathBuf], base: &Path) -> Views {
        use rustix::mount::{open_tree, OpenTreeFlags};
        remove_stale_binds(base);
        let own = base.join(std::process::id().to_string());
        let mut views = Vec::new();
        for (i, m) in mounts.iter().enumerate() {
            let flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
            let name = m.to_string_lossy().into_owned();
            let cloned = match open_tree(rustix::fs::CWD, m, flags) {
                Ok(fd) => {
                    views.push((name, View::Clone(fd)));
                    continue;
                }
                Err(e) => e,
            };
            match BindView::make(m, own.join(i.to_string())) {
                Ok(bind) => {
                    tracing::debug!(
                        "no clone of the mount of {} ({cloned}): read through a bind mount at {}",
                        m.display(),
                        bind.dir.display()
                    );
                    views.push((name, View::Bind(bind)));
                }
                Err(e) => tracing::warn!(
                    "neither a clone of the mount of {} ({cloned}) nor a bind mount ({e:#}): it \
                     is walked as it is mounted, and what lies beneath the mount points on it \
                     is not sent",
                    m.display()
                ),
            }
        }
        Views { views }
    }

    /// Where the file system mounted at `mount` is read alone.
    pub fn root_of(&self, mount: &str) -> Option<PathBuf> {
        use std::os::fd::AsRawFd;
        self.views
            .iter()
            .find(|(m, _)| m == mount)
            .map(|(_, v)| match v {
                View::Clone(fd) => PathBuf::from(format!("/proc/self/fd/{}/.", fd.as_raw_fd())),
                View::Bind(b) => b.dir.clone(),
            })
    }
}

/// What is printed before anything is sent.
pub fn describe(found: &Discovery, live: &LiveSource) -> String {
    use crate::disk::human_bytes;
    let mut s = format!(
        "ferry send: this server boots by {:?}; its disks:",
        found.boot
    );
    for (i, d) in live.disks.iter().enumerate() {
        s.push_str(&format!(" disk {i} {}", d.display()));
        if i + 1 < live.disks.len() {
            s.push(',');
        }
    }
    s.push_str("\nferry send: the file systems sent:\n");
    for r in &live.rows {
        s.push_str(&format!(
            "  {}  {}  {}  {}  {} used\n",
            r.mount_point.display(),
            r.fstype,
            r.device,
            human_bytes(r.size),
            human_bytes(r.used)
        ));
    }
    for n in &live.not_sent {
        s.push_str(&format!("ferry send: {n}\n"));
    }
    s
}

#[cfg(test)]
#[path = "live_tests.rs"]
mod tests;
