//! What a live server's file mode would send: the local file systems of
//! its mount table and fstab, and how it boots. Parsed from the kernel's
//! and the system's own text (`/proc/self/mountinfo`, `/etc/fstab`,
//! `/sys/firmware/efi`) by the project's one parser of each format.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::layout::mount::MountInfo;

/// File systems whose files are migrated. Everything else (proc, sysfs,
/// devtmpfs, tmpfs, cgroup, network and FUSE file systems, overlays,
/// squashfs images) is never walked; its mount point is created empty.
pub(crate) const LOCAL: &[&str] = &["ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "f2fs"];

/// One local file system to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFs {
    pub mount_point: PathBuf,
    pub fstype: String,
    /// The mounted device, as the mount table names it.
    pub source: String,
    pub devno: String,
}

/// How the source boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    Bios,
    Uefi,
}

/// What the discovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// `/` first, then by mount point.
    pub file_systems: Vec<SourceFs>,
    /// Local file systems of fstab that are not mounted: not sent.
    pub not_mounted: Vec<(String, PathBuf)>,
    pub boot: Boot,
}

/// The local file systems of the mount table (each device once, at its
/// shortest mount point, bind mounts of subdirectories left out), the
/// local ones of fstab that are not mounted, and the boot mode
/// (`firmware` is `/sys/firmware`).
pub(crate) fn discover(
    mounts: &[MountInfo],
    fstab: &[(String, String, String)],
    firmware: &Path,
) -> Discovery {
    let mut seen = HashSet::new();
    let mut fss: Vec<SourceFs> = Vec::new();
    let mut local: Vec<&MountInfo> = mounts
        .iter()
        .filter(|m| LOCAL.contains(&m.fstype.as_str()) && m.root == Path::new("/"))
        .collect();
    local.sort_by_key(|m| (m.mount_point.components().count(), m.mount_point.clone()));
    for m in local {
        if seen.insert(m.devno.clone()) {
            fss.push(SourceFs {
                mount_point: m.mount_point.clone(),
                fstype: m.fstype.clone(),
                source: m.source.clone(),
                devno: m.devno.clone(),
            });
        }
    }
    let mounted: HashSet<&Path> = mounts.iter().map(|m| m.mount_point.as_path()).collect();
    let not_mounted = fstab
        .iter()
        .filter(|(_, mp, ty)| LOCAL.contains(&ty.as_str()) && !mounted.contains(Path::new(mp)))
        .map(|(spec, mp, _)| (spec.clone(), PathBuf::from(mp)))
        .collect();
    let boot = if firmware.join("efi").is_dir() {
        Boot::Uefi
    } else {
        Boot::Bios
    };
    Discovery {
        file_systems: fss,
        not_mounted,
        boot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::mount::parse_mountinfo;
    use crate::layout::tree::parse_fstab;

    /// A server's mount table as the kernel shows it: / and /boot and
    /// /boot/efi on sda, /var on an LV, a data disk, its bind mount of a
    /// subdirectory, /home mounted twice, pseudo and network file systems.
    const MOUNTINFO: &str = "\
22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 22 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=4010180k
26 22 0:23 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=806000k
27 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw
30 22 8:1 / /boot rw,relatime shared:30 - ext4 /dev/sda1 rw
31 30 8:15 / /boot/efi rw,relatime shared:31 - vfat /dev/sda15 rw,fmask=0077
32 22 253:0 / /var rw,relatime shared:32 - xfs /dev/mapper/vg0-var rw,attr2
33 22 8:17 / /srv/data\\040disk rw,relatime shared:33 - ext4 /dev/sdb1 rw
34 22 8:17 /exports /exports rw,relatime shared:33 - ext4 /dev/sdb1 rw
35 22 8:33 / /home rw,relatime shared:35 - ext4 /dev/sdc1 rw
36 22 8:33 / /mnt/home-again rw,relatime shared:35 - ext4 /dev/sdc1 rw
37 22 0:40 / /mnt/nfs rw,relatime shared:40 - nfs4 fileserver:/share rw,vers=4.2
38 22 0:41 / /tmp rw,nosuid,nodev shared:41 - tmpfs tmpfs rw
";

    const FSTAB: &str = "\
# /etc/fstab
UUID=0b3c-root / ext4 errors=remount-ro 0 1
UUID=1a2b /boot ext4 defaults 0 2
/dev/mapper/vg0-var /var xfs defaults 0 2
LABEL=backup /mnt/backup ext4 noauto 0 0
fileserver:/share /mnt/nfs nfs4 defaults 0 0
tmpfs /tmp tmpfs defaults 0 0
";

    #[test]
    fn local_file_systems_of_a_server() {
        let dir = tempfile::tempdir().unwrap();
        let d = discover(&parse_mountinfo(MOUNTINFO), &parse_fstab(FSTAB), dir.path());
        let got: Vec<(&str, &str, &str)> = d
            .file_systems
            .iter()
            .map(|f| {
                (
                    f.mount_point.to_str().unwrap(),
                    f.fstype.as_str(),
                    f.source.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("/", "ext4", "/dev/sda2"),
                ("/boot", "ext4", "/dev/sda1"),
                ("/home", "ext4", "/dev/sdc1"),
                ("/var", "xfs", "/dev/mapper/vg0-var"),
                ("/boot/efi", "vfat", "/dev/sda15"),
                ("/srv/data disk", "ext4", "/dev/sdb1"),
            ]
        );
        assert_eq!(
            d.not_mounted,
            [("LABEL=backup".to_owned(), PathBuf::from("/mnt/backup"))]
        );
        assert_eq!(d.boot, Boot::Bios);
        std::fs::create_dir(dir.path().join("efi")).unwrap();
        assert_eq!(discover(&[], &[], dir.path()).boot, Boot::Uefi);
    }
}
