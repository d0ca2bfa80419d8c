//! Which file systems of a source disk are mounted on this system.
//!
//! The sender finds them itself: the disk's block devices (the device, or
//! the loop devices an image file backs), their partitions and, through
//! `holders`, what is stacked on them (LVM's device-mapper volumes), each
//! with its device number; then `/proc/self/mountinfo` names the mounts of
//! those numbers. Read through a [`Host`] so that tests can give a sysfs
//! tree and a mountinfo of their own.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::layout::mount::parse_mountinfo;

/// What this room needs of a mountinfo line.
struct MountLine {
    dev: String,
    mount_point: PathBuf,
    fstype: String,
    source: String,
    super_rw: bool,
}

/// Where the kernel's views are: `/sys` and `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
pub struct Host {
    pub sys: PathBuf,
    pub mountinfo: PathBuf,
}

impl Default for Host {
    fn default() -> Host {
        Host {
            sys: PathBuf::from("/sys"),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
        }
    }
}

/// An LVM logical volume, from its device-mapper name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lv {
    pub vg: String,
    pub lv: String,
}

/// One mounted file system of a source disk (one super block: a file
/// system mounted at several places is one entry with several points).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountedFs {
    /// The mount's source as mountinfo says (`/dev/loop3`, `/dev/mapper/vg-root`).
    pub source: String,
    /// The kernel's name of the block device (`loop3`, `sda2`, `dm-0`).
    pub block: String,
    /// Its device number, `major:minor`.
    pub dev: String,
    pub fstype: String,
    /// Every place it is mounted, the first one first.
    pub mount_points: Vec<PathBuf>,
    /// The super block is writable (some mount of it may be read-only).
    pub read_write: bool,
    /// The logical volume it is on, when it is on LVM.
    pub lvm: Option<Lv>,
}

impl MountedFs {
    pub fn mount_point(&self) -> &Path {
        &self.mount_points[0]
    }

    /// "/mnt/data (ext4 on /dev/loop3)".
    pub fn describe(&self) -> String {
        format!(
            "{} ({} on {})",
            self.mount_point().display(),
            self.fstype,
            self.source
        )
    }
}

/// A device-mapper name of LVM (`vg--data-lv--one`: dashes of the names
/// doubled, one dash between) split into its volume group and volume.
pub(crate) fn split_dm_name(name: &str) -> Option<Lv> {
    let chars: Vec<char> = name.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '-' {
            if chars.get(i + 1) == Some(&'-') {
                i += 2;
                continue;
            }
            let vg: String = chars[..i].iter().collect();
            let lv: String = chars[i + 1..].iter().collect();
            if vg.is_empty() || lv.is_empty() {
                return None;
            }
            return Some(Lv {
                vg: vg.replace("--", "-"),
                lv: lv.replace("--", "-"),
            });
        }
        i += 1;
    }
    None
}

impl Host {
    fn class(&self, block: &str) -> PathBuf {
        self.sys.join("class/block").join(block)
    }

    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// The block devices a source disk is: the device itself, or for an
    /// image file the loop devices it backs.
    pub(crate) fn disk_blocks(&self, disk: &Path) -> Result<Vec<String>> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let meta = std::fs::metadata(disk)
            .with_context(|| format!("reading what {} is", disk.display()))?;
        if meta.file_type().is_block_device() {
            let rdev = meta.rdev();
            let dev = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
            let link = self.sys.join("dev/block").join(&dev);
            let target =
                std::fs::read_link(&link).with_context(|| format!("reading {}", link.display()))?;
            let name = target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .with_context(|| format!("{} names no device", link.display()))?;
            return Ok(vec![name]);
        }
        let real =
            std::fs::canonicalize(disk).with_context(|| format!("resolving {}", disk.display()))?;
        let class = self.sys.join("class/block");
        let mut loops = Vec::new();
        let entries = match std::fs::read_dir(&class) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(loops),
            Err(e) => return Err(e).with_context(|| format!("listing {}", class.display())),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(backing) = self.read(&class.join(&name).join("loop/backing_file")) else {
                continue;
            };
            let backing = backing.strip_suffix(" (deleted)").unwrap_or(&backing);
            if Path::new(backing) == real {
                loops.push(name);
            }
        }
        loops.sort();
        Ok(loops)
    }

    /// The blocks and everything on them: partitions, and what holds them
    /// (device-mapper volumes, stacked in turn), with their device numbers.
    fn stacked(&self, roots: &[String]) -> Vec<(String, String)> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = roots.to_vec();
        let mut out = Vec::new();
        while let Some(block) = todo.pop() {
            if !seen.insert(block.clone()) {
                continue;
            }
            let dir = self.class(&block);
            if let Some(dev) = self.read(&dir.join("dev")) {
                out.push((block.clone(), dev));
            }
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if e.path().join("partition").is_file() {
                        todo.push(e.file_name().to_string_lossy().into_owned());
                    }
                }
            }
            if let Ok(entries) = std::fs::read_dir(dir.join("holders")) {
                for e in entries.flatten() {
                    todo.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        out
    }

    fn lvm_of(&self, block: &str) -> Option<Lv> {
        let dm = self.class(block).join("dm");
        let uuid = self.read(&dm.join("uuid"))?;
        if !uuid.starts_with("LVM-") {
            return None;
        }
        split_dm_name(&self.read(&dm.join("name"))?)
    }

    /// The mounted file systems of one source disk.
    pub fn mounted(&self, disk: &Path) -> Result<Vec<MountedFs>> {
        let blocks = self.disk_blocks(disk)?;
        if blocks.is_empty() {
            return Ok(Vec::new());
        }
        let stacked = self.stacked(&blocks);
        let text = std::fs::read_to_string(&self.mountinfo)
            .with_context(|| format!("reading {}", self.mountinfo.display()))?;
        let mut found: Vec<MountedFs> = Vec::new();
        for line in parse_mountinfo(&text) {
            let line = MountLine {
                dev: line.devno,
                mount_point: line.mount_point,
                fstype: line.fstype,
                source: line.source,
                super_rw: line.read_write,
            };
            // btrfs shows an anonymous device number: its source names the device.
            let source_dev = source_dev(&line.source);
            let Some((block, dev)) = stacked
                .iter()
                .find(|(_, d)| *d == line.dev || source_dev.as_deref() == Some(d.as_str()))
            else {
                continue;
            };
            if let Some(fs) = found.iter_mut().find(|f| f.dev == *dev) {
                fs.mount_points.push(line.mount_point);
                continue;
            }
            found.push(MountedFs {
                source: line.source,
                block: block.clone(),
                dev: dev.clone(),
                fstype: line.fstype,
                mount_points: vec![line.mount_point],
                read_write: line.super_rw,
                lvm: self.lvm_of(block),
            });
        }
        Ok(found)
    }
}

/// The device number of a mount source that is a device node.
fn source_dev(source: &str) -> Option<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if !source.starts_with("/dev/") {
        return None;
    }
    let meta = std::fs::metadata(source).ok()?;
    meta.file_type().is_block_device().then(|| {
        let rdev = meta.rdev();
        format!("{}:{}", libc::major(rdev), libc::minor(rdev))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_parsed_with_their_escapes() {
        let text = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
98 27 7:3 / /mnt/my\\040data rw,relatime shared:5 - ext4 /dev/loop3 rw
99 27 7:3 /sub /srv/bind ro,relatime - ext4 /dev/loop3 rw
100 27 253:0 / /var ro - xfs /dev/mapper/vg-var ro,attr2
garbage
";
        let lines = parse_mountinfo(text);
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[1].mount_point, PathBuf::from("/mnt/my data"));
        assert_eq!(lines[1].devno, "7:3");
        assert_eq!(lines[1].fstype, "ext4");
        assert!(
            lines[2].read_write,
            "a read-only bind of a writable file system"
        );
        assert!(!lines[3].read_write);
    }

    #[test]
    fn device_mapper_names_split_into_group_and_volume() {
        let cases = [
            ("vg-root", Some(("vg", "root"))),
            ("vg--data-lv--one", Some(("vg-data", "lv-one"))),
            ("my--vg-lv", Some(("my-vg", "lv"))),
            ("nodash", None),
            ("-lv", None),
        ];
        for (name, want) in cases {
            let got = split_dm_name(name);
            let want = want.map(|(vg, lv)| Lv {
                vg: vg.to_owned(),
                lv: lv.to_owned(),
            });
            assert_eq!(got, want, "{name}");
        }
    }

    /// A sysfs tree: `sda` with `sda1` (ext4, mounted) and `sda2`, a PV
    /// held by `dm-0` (LVM vg/root, mounted twice) and `dm-1` (not
    /// LVM); `loop5` backs an image file whose file system is mounted
    /// read-only; `sdb` is someone else's disk.
    fn fake_host(dir: &Path, image: &Path) -> Host {
        let sys = dir.join("sys");
        let mk = |p: &str, content: Option<&str>| {
            let path = sys.join(p);
            match content {
                Some(c) => {
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(path, c).unwrap();
                }
                None => std::fs::create_dir_all(path).unwrap(),
            }
        };
        mk("class/block/sda/dev", Some("8:0\n"));
        mk("class/block/sda/holders", None);
        mk("class/block/sda/sda1/partition", Some("1\n"));
        mk("class/block/sda/sda2/partition", Some("2\n"));
        // class/block/sdaN is a link to sda/sdaN in the real tree.
        std::os::unix::fs::symlink(
            sys.join("class/block/sda/sda1"),
            sys.join("class/block/sda1"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            sys.join("class/block/sda/sda2"),
            sys.join("class/block/sda2"),
        )
        .unwrap();
        mk("class/block/sda/sda1/dev", Some("8:1\n"));
        mk("class/block/sda/sda2/dev", Some("8:2\n"));
        mk("class/block/sda/sda2/holders/dm-0", Some(""));
        mk("class/block/sda/sda2/holders/dm-1", Some(""));
        mk("class/block/dm-0/dev", Some("253:0\n"));
        mk("class/block/dm-0/dm/name", Some("vg-root\n"));
        mk("class/block/dm-0/dm/uuid", Some("LVM-abcdef\n"));
        mk("class/block/dm-1/dev", Some("253:1\n"));
        mk("class/block/dm-1/dm/name", Some("crypt\n"));
        mk("class/block/dm-1/dm/uuid", Some("CRYPT-LUKS2-x\n"));
        mk("class/block/sdb/dev", Some("8:16\n"));
        mk("class/block/loop5/dev", Some("7:5\n"));
        mk(
            "class/block/loop5/loop/backing_file",
            Some(&format!("{}\n", image.display())),
        );
        mk("dev/block", None);
        std::os::unix::fs::symlink("../../devices/virtual/block/sda", sys.join("dev/block/8:0"))
            .unwrap();
        let mountinfo = dir.join("mountinfo");
        std::fs::write(
            &mountinfo,
            "\
1 0 8:1 / /boot rw,relatime - ext4 /dev/sda1 rw
2 0 253:0 / / rw,relatime - xfs /dev/mapper/vg-root rw,attr2
3 0 253:0 /home /home rw,relatime - xfs /dev/mapper/vg-root rw,attr2
4 0 253:1 / /secret rw - ext4 /dev/mapper/crypt rw
5 0 8:16 / /other rw - ext4 /dev/sdb rw
6 0 7:5 / /mnt/image ro - ext4 /dev/loop5 ro
",
        )
        .unwrap();
        Host { sys, mountinfo }
    }

    #[test]
    fn an_image_file_is_found_through_the_loop_device_it_backs() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::write(&image, b"x").unwrap();
        let host = fake_host(dir.path(), &image);
        let found = host.mounted(&image).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].describe(), "/mnt/image (ext4 on /dev/loop5)");
        assert!(!found[0].read_write);
        assert_eq!(found[0].lvm, None);
        let other = dir.path().join("other.img");
        std::fs::write(&other, b"x").unwrap();
        assert_eq!(host.mounted(&other).unwrap(), []);
    }

    #[test]
    fn partitions_and_lvm_volumes_on_a_disk_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let host = fake_host(dir.path(), &image);
        let stacked = host.stacked(&["sda".to_owned()]);
        let names: Vec<&str> = stacked.iter().map(|(b, _)| b.as_str()).collect();
        assert_eq!(names, ["dm-0", "dm-1", "sda", "sda1", "sda2"]);
        // The mounts of those numbers, without sdb's.
        let text = std::fs::read_to_string(&host.mountinfo).unwrap();
        let lines: Vec<_> = parse_mountinfo(&text)
            .into_iter()
            .filter(|l| stacked.iter().any(|(_, d)| *d == l.devno))
            .collect();
        let points: Vec<&Path> = lines.iter().map(|l| l.mount_point.as_path()).collect();
        assert_eq!(
            points,
            [
                Path::new("/boot"),
                Path::new("/"),
                Path::new("/home"),
                Path::new("/secret")
            ]
        );
        assert_eq!(
            host.lvm_of("dm-0"),
            Some(Lv {
                vg: "vg".into(),
                lv: "root".into()
            })
        );
        assert_eq!(host.lvm_of("dm-1"), None, "not LVM");
        assert_eq!(host.lvm_of("sda1"), None);
    }
}
