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
pub const WRITABLE: &[&str] = &["ext4", "ext3", "xfs", "vfat"];

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
pub fn split_dm_name(name: &str) -> Option<(String, String)> {
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
pub type Placed = (SourceFs, Backing);

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
pub fn disks_of(placed: &[Placed]) -> Vec<String> {
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
pub fn set_mounts(layout: &mut Layout, disks: &[String], placed: &[Placed]) -> Result<()> {
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
                let same =
                    p.fs.as_str() == fs.fstype || (p.fs.is_ext() && fs.fstype.starts_with("ext"));
                if !same {
                    return Err(coded(
                        ErrorCode::LayoutInvalid,
                        format!(
                            "{mount} is {} on partition {number} of /dev/{disk}, where blkid finds {}",
                            fs.fstype,
                            p.fs.as_str()
                        ),
                    ));
                }
                root_writable(&mount, &p.fs)?;
                p.mount = Some(mount);
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
                root_writable(&mount, &v.fs)?;
                v.mount = Some(mount);
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
#[derive(Debug, Default)]
pub struct Views {
    fds: Vec<(String, std::os::fd::OwnedFd)>,
}

impl Views {
    /// A clone of the mount at each of `mounts`; none where the kernel
    /// does not make them (before 5.2, or without CAP_SYS_ADMIN), with a
    /// warning: those file systems are then walked as they are mounted.
    pub fn open(mounts: &[PathBuf]) -> Views {
        use rustix::mount::{open_tree, OpenTreeFlags};
        let mut fds = Vec::new();
        for m in mounts {
            let flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
            match open_tree(rustix::fs::CWD, m, flags) {
                Ok(fd) => fds.push((m.to_string_lossy().into_owned(), fd)),
                Err(e) => tracing::warn!(
                    "cloning the mount of {} ({e}): it is walked as it is mounted, and what \
                     lies beneath the mount points on it is not sent",
                    m.display()
                ),
            }
        }
        Views { fds }
    }

    /// Where the file system mounted at `mount` is read alone.
    pub fn root_of(&self, mount: &str) -> Option<PathBuf> {
        use std::os::fd::AsRawFd;
        self.fds
            .iter()
            .find(|(m, _)| m == mount)
            .map(|(_, fd)| PathBuf::from(format!("/proc/self/fd/{}/.", fd.as_raw_fd())))
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
mod tests {
    use super::*;
    use crate::job::errors::find_coded;
    use crate::layout::FsType;
    use crate::send::files::discover::Boot;
    use std::os::unix::fs::symlink;

    /// A fake sysfs: `sda` with partitions 1 and 2, `sdb` without a table,
    /// `sdc1` and `sdd1` as the PVs of the LV `vg-0/var` (`vg--0-var`), a
    /// dm-crypt device, `md0` on `sde1`, `loop3` on a file, `nbd0`.
    fn fake_sys() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let s = t.path();
        let dev = |rel: &str, devno: &str, files: &[(&str, &str)]| {
            let d = s.join("devices").join(rel);
            std::fs::create_dir_all(&d).unwrap();
            for (f, v) in files {
                let p = d.join(f);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, format!("{v}\n")).unwrap();
            }
            std::fs::create_dir_all(s.join("dev/block")).unwrap();
            symlink(&d, s.join("dev/block").join(devno)).unwrap();
            d
        };
        dev("pci/block/sda", "8:0", &[("size", "2097152")]);
        dev("pci/block/sda/sda1", "8:1", &[("partition", "1")]);
        dev(
            "pci/block/sda/sda2",
            "8:2",
            &[("partition", "2"), ("size", "1048576")],
        );
        dev("pci/block/sdb", "8:16", &[]);
        let sdc1 = dev("pci/block/sdc/sdc1", "8:33", &[("partition", "1")]);
        let sdd1 = dev("pci/block/sdd/sdd1", "8:49", &[("partition", "1")]);
        let lv = dev(
            "virtual/block/dm-0",
            "253:0",
            &[("dm/name", "vg--0-var"), ("dm/uuid", "LVM-abcdef")],
        );
        std::fs::create_dir(lv.join("slaves")).unwrap();
        symlink(&sdd1, lv.join("slaves/sdd1")).unwrap();
        symlink(&sdc1, lv.join("slaves/sdc1")).unwrap();
        let sdb = s.join("devices/pci/block/sdb");
        let on_disk = dev(
            "virtual/block/dm-2",
            "253:2",
            &[("dm/name", "vg-home"), ("dm/uuid", "LVM-123")],
        );
        std::fs::create_dir(on_disk.join("slaves")).unwrap();
        symlink(&sdb, on_disk.join("slaves/sdb")).unwrap();
        dev(
            "virtual/block/dm-1",
            "253:1",
            &[("dm/name", "cryptdata"), ("dm/uuid", "CRYPT-LUKS2-xyz")],
        );
        dev("pci/block/sde/sde1", "8:65", &[("partition", "1")]);
        dev("virtual/block/md0", "9:0", &[("md/level", "raid1")]);
        dev(
            "virtual/block/loop3",
            "7:3",
            &[("loop/backing_file", "/srv/disk.img")],
        );
        dev("virtual/block/nbd0", "43:0", &[]);
        t
    }

    fn fs(mp: &str, fstype: &str, source: &str, devno: &str) -> SourceFs {
        SourceFs {
            mount_point: mp.into(),
            fstype: fstype.into(),
            source: source.into(),
            devno: devno.into(),
        }
    }

    #[test]
    fn block_devices_behind_file_systems() {
        let sys = fake_sys();
        let ok = [
            (
                "a partition",
                fs("/", "ext4", "/dev/sda2", "8:2"),
                Backing::Partition {
                    disk: "sda".into(),
                    number: 2,
                },
            ),
            (
                "an LVM logical volume on two partitions",
                fs("/var", "xfs", "/dev/mapper/vg--0-var", "253:0"),
                Backing::Volume {
                    vg: "vg-0".into(),
                    lv: "var".into(),
                    pvs: vec![("sdc".into(), 1), ("sdd".into(), 1)],
                },
            ),
        ];
        for (name, f, want) in ok {
            assert_eq!(backing(sys.path(), &f).unwrap(), want, "{name}");
        }
        let refused = [
            (
                "a whole disk",
                fs("/data", "ext4", "/dev/sdb", "8:16"),
                "/data (ext4, /dev/sdb) is on the whole disk /dev/sdb, without a partition table",
            ),
            (
                "md",
                fs("/srv", "ext4", "/dev/md0", "9:0"),
                "/srv (ext4, /dev/md0) is on the md RAID array /dev/md0",
            ),
            (
                "a loop file",
                fs("/mnt/img", "ext4", "/dev/loop3", "7:3"),
                "/mnt/img (ext4, /dev/loop3) is on the loop device /dev/loop3 (backed by the file /srv/disk.img)",
            ),
            (
                "nbd",
                fs("/net", "xfs", "/dev/nbd0", "43:0"),
                "/net (xfs, /dev/nbd0) is on the network block device /dev/nbd0",
            ),
            (
                "dm-crypt",
                fs("/secret", "ext4", "/dev/mapper/cryptdata", "253:1"),
                "/secret (ext4, /dev/mapper/cryptdata) is on the device-mapper device cryptdata (CRYPT-LUKS2-xyz), which is not an LVM logical volume",
            ),
            (
                "an LV on a whole disk",
                fs("/home", "ext4", "/dev/mapper/vg-home", "253:2"),
                "/home (ext4, /dev/mapper/vg-home) is on the LVM logical volume vg/home, whose physical volume is the whole disk /dev/sdb, without a partition table",
            ),
        ];
        for (name, f, want) in refused {
            let e = backing(sys.path(), &f).unwrap_err();
            let c = find_coded(&e).unwrap_or_else(|| panic!("{name}: no code in {e:#}"));
            assert_eq!(c.code, ErrorCode::SourceDeviceUnsupported, "{name}");
            assert_eq!(c.detail, want, "{name}");
        }
        let e = backing(sys.path(), &fs("/x", "ext4", "/dev/zz", "1:99")).unwrap_err();
        assert_eq!(
            find_coded(&e).map(|c| c.code),
            Some(ErrorCode::SourceDeviceUnsupported)
        );
    }

    #[test]
    fn dm_names_split_into_vg_and_lv() {
        let cases = [
            ("vg0-root", Some(("vg0", "root"))),
            ("vg--0-var", Some(("vg-0", "var"))),
            ("vg-lv--with--dashes", Some(("vg", "lv-with-dashes"))),
            ("nodash", None),
            ("-lv", None),
        ];
        for (name, want) in cases {
            let got = split_dm_name(name);
            assert_eq!(
                got.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
                want,
                "{name}"
            );
        }
    }

    fn discovery(fss: Vec<SourceFs>) -> Discovery {
        Discovery {
            file_systems: fss,
            not_mounted: vec![],
            boot: Boot::Bios,
        }
    }

    #[test]
    fn root_must_be_a_file_system_ferry_writes() {
        let sys = fake_sys();
        for (fss, want) in [
            (
                vec![fs("/", "btrfs", "/dev/sda2", "8:2")],
                "/ is btrfs on /dev/sda2; file mode writes ext4, ext3 and xfs",
            ),
            (
                vec![fs("/boot", "ext4", "/dev/sda1", "8:1")],
                "/ is not on a local file system in /proc/self/mountinfo",
            ),
        ] {
            let e = placements(&discovery(fss), sys.path()).unwrap_err();
            let c = find_coded(&e).unwrap();
            assert_eq!(
                (c.code, c.detail.as_str()),
                (ErrorCode::RootFsUnsupported, want)
            );
        }
    }

    #[test]
    fn disks_in_order_of_first_appearance_and_mounts_on_their_partitions() {
        let sys = fake_sys();
        let d = discovery(vec![
            fs("/", "ext4", "/dev/sda2", "8:2"),
            fs("/boot", "ext4", "/dev/sda1", "8:1"),
            fs("/data", "btrfs", "/dev/sdb", "8:16"),
            fs("/var", "xfs", "/dev/mapper/vg--0-var", "253:0"),
        ]);
        let (placed, not_sent) = placements(&d, sys.path()).unwrap();
        assert_eq!(
            not_sent,
            ["/data (btrfs, /dev/sdb) is not sent: file mode writes ext4, ext3, xfs and vfat; its mount point is created empty"]
        );
        let disks = disks_of(&placed);
        assert_eq!(disks, ["sda", "sdc", "sdd"]);
        let mut layout = Layout::from_toml(
            r#"
[[disk]]
table = "gpt"
[[disk.partition]]
size = "256MiB"
type = "linux"
fs = "ext4"
[[disk.partition]]
size = "rest"
type = "linux"
fs = "ext4"
[[disk]]
table = "gpt"
[[disk.partition]]
size = "rest"
type = "lvm"
fs = "LVM2_member"
[[disk]]
table = "gpt"
[[disk.partition]]
size = "rest"
type = "lvm"
fs = "LVM2_member"
[[volume]]
vg = "vg-0"
name = "var"
fs = "xfs"
"#,
        )
        .unwrap();
        set_mounts(&mut layout, &disks, &placed).unwrap();
        let mounts: Vec<Option<&str>> = layout.disks[0]
            .partitions
            .iter()
            .map(|p| p.mount.as_deref())
            .collect();
        assert_eq!(mounts, [Some("/boot"), Some("/")]);
        assert_eq!(layout.volumes[0].mount.as_deref(), Some("/var"));
        // A partition the table does not have, a type blkid disagrees with.
        let mut wrong = layout.clone();
        wrong.disks[0].partitions.pop();
        let e = set_mounts(&mut wrong, &disks, &placed).unwrap_err();
        assert_eq!(
            find_coded(&e).map(|c| c.detail.as_str()),
            Some("/ is on partition 2 of /dev/sda, which its partition table does not have")
        );
        let mut ext3 = layout.clone();
        ext3.disks[0].partitions[1].fs = FsType::Ext3;
        set_mounts(&mut ext3, &disks, &placed).unwrap();
        assert_eq!(ext3.disks[0].partitions[1].mount.as_deref(), Some("/"));
        let mut ext2 = layout.clone();
        ext2.disks[0].partitions[1].fs = FsType::Ext2;
        let e = set_mounts(&mut ext2, &disks, &placed).unwrap_err();
        let c = find_coded(&e).unwrap();
        assert_eq!(
            (c.code, c.detail.as_str()),
            (
                ErrorCode::RootFsUnsupported,
                "/ is ext2 on its disk; file mode writes ext4, ext3 and xfs"
            )
        );
        let mut wrong = layout.clone();
        wrong.disks[0].partitions[1].fs = FsType::Xfs;
        let e = set_mounts(&mut wrong, &disks, &placed).unwrap_err();
        assert_eq!(
            find_coded(&e).map(|c| c.detail.as_str()),
            Some("/ is ext4 on partition 2 of /dev/sda, where blkid finds xfs")
        );
        let mut wrong = layout;
        wrong.volumes.clear();
        let e = set_mounts(&mut wrong, &disks, &placed).unwrap_err();
        assert_eq!(
            find_coded(&e).map(|c| c.code),
            Some(ErrorCode::LayoutInvalid)
        );
    }

    #[test]
    fn what_is_sent_is_printed_one_line_per_file_system() {
        let found = Discovery {
            file_systems: vec![],
            not_mounted: vec![("LABEL=backup".into(), "/mnt/backup".into())],
            boot: Boot::Uefi,
        };
        let row = |mp: &str, ty: &str, dev: &str, size: u64, used: u64| Row {
            mount_point: mp.into(),
            fstype: ty.into(),
            device: dev.into(),
            size,
            used,
        };
        let live = LiveSource {
            disks: vec!["/dev/sda".into(), "/dev/sdb".into()],
            mounts: vec![],
            layout: Layout::default(),
            rows: vec![
                row("/", "ext4", "/dev/sda2", 20 << 30, 3 << 30),
                row("/boot/efi", "vfat", "/dev/sda1", 512 << 20, 6 << 20),
                row("/var", "xfs", "/dev/mapper/vg0-var", 10 << 30, 1 << 29),
            ],
            not_sent: vec![
                "/mnt/backup (LABEL=backup) is in fstab but not mounted: it is not sent".into(),
            ],
        };
        assert_eq!(
            describe(&found, &live),
            "ferry send: this server boots by Uefi; its disks: disk 0 /dev/sda, disk 1 /dev/sdb
ferry send: the file systems sent:
  /  ext4  /dev/sda2  20.0 GiB  3.0 GiB used
  /boot/efi  vfat  /dev/sda1  512.0 MiB  6.0 MiB used
  /var  xfs  /dev/mapper/vg0-var  10.0 GiB  512.0 MiB used
ferry send: /mnt/backup (LABEL=backup) is in fstab but not mounted: it is not sent
"
        );
    }
}
