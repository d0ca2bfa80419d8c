//! Which block devices' events are a source disk's writes, and where they
//! land on it. The block layer reports a write to a partition on the whole
//! disk with the disk's sector (a partition's bios are remapped before the
//! tracepoint), and every kernel since 5.12 names the whole disk for it
//! too; to be safe whatever the kernel, a partition's own number is
//! watched as well, its sectors taken both ways. A device-mapper volume on
//! the disk is seen twice: on the volume, and again on the disk once the
//! volume has remapped the write, which is the one that counts. An image
//! file is read through the loop devices it backs (at their offset).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::send::consistency::Host;

/// Writes to device `major:minor` at sector S land on the source at byte
/// `S * 512 + shift`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    pub(crate) major: u32,
    pub(crate) minor: u32,
    pub(crate) shift: i64,
}

/// The ranges of a source disk, or why it cannot be tracked.
pub(crate) fn ranges(host: &Host, disk: &Path) -> Result<Vec<Range>> {
    let blocks = host.disk_blocks(disk)?;
    if blocks.is_empty() {
        anyhow::bail!("an image file that no loop device reads: only the reads of its own passes say what changed");
    }
    of_blocks(host, &blocks)
}

/// The ranges of the block devices a source disk is.
fn of_blocks(host: &Host, blocks: &[String]) -> Result<Vec<Range>> {
    let mut out = Vec::new();
    for block in blocks {
        let dir = class_dir(host, block)?;
        // An image behind a loop device at an offset: the device's sector 0
        // is the file's byte `offset`.
        let base = read_u64(&dir.join("loop/offset")).unwrap_or(0) as i64;
        let (major, minor) = dev_of(&dir)?;
        out.push(Range {
            major,
            minor,
            shift: base,
        });
        if dir.join("partition").is_file() {
            // The source is a partition: the disk reports its writes.
            let start =
                sectors_to_bytes(read_u64(&dir.join("start")).context("a partition's start")?);
            let parent = dir.parent().context("a partition's disk")?;
            let (pmaj, pmin) = dev_of(parent)?;
            out.push(Range {
                major: pmaj,
                minor: pmin,
                shift: base - start,
            });
            out.push(Range {
                major,
                minor,
                shift: base - start,
            });
        } else {
            for part in partitions(&dir) {
                let start =
                    sectors_to_bytes(read_u64(&part.join("start")).context("a partition's start")?);
                let (pmaj, pmin) = dev_of(&part)?;
                out.push(Range {
                    major: pmaj,
                    minor: pmin,
                    shift: base + start,
                });
                out.push(Range {
                    major: pmaj,
                    minor: pmin,
                    shift: base,
                });
            }
        }
    }
    out.sort_by_key(|r| (r.major, r.minor, r.shift));
    out.dedup();
    Ok(out)
}

fn sectors_to_bytes(sectors: u64) -> i64 {
    (sectors * 512) as i64
}

/// The device's directory in sysfs (the real one, so that `..` of a
/// partition is its disk).
fn class_dir(host: &Host, block: &str) -> Result<PathBuf> {
    let link = host.sys.join("class/block").join(block);
    std::fs::canonicalize(&link).with_context(|| format!("resolving {}", link.display()))
}

fn dev_of(dir: &Path) -> Result<(u32, u32)> {
    let path = dir.join("dev");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (major, minor) = text
        .trim()
        .split_once(':')
        .with_context(|| format!("{}: not MAJOR:MINOR", path.display()))?;
    Ok((
        major
            .parse()
            .with_context(|| format!("{}: the major", path.display()))?,
        minor
            .parse()
            .with_context(|| format!("{}: the minor", path.display()))?,
    ))
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn partitions(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut parts: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("partition").is_file())
        .collect();
    parts.sort();
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A sysfs of a loop device (at an offset) backed by an image, with a
    /// partition, and a disk with a partition.
    fn fake_sys(dir: &Path, image: &Path) -> Host {
        let sys = dir.join("sys");
        let loop3 = sys.join("devices/virtual/block/loop3");
        write(&loop3.join("dev"), "7:3\n");
        write(
            &loop3.join("loop/backing_file"),
            &format!("{}\n", image.display()),
        );
        write(&loop3.join("loop/offset"), "1048576\n");
        write(&loop3.join("loop3p1/dev"), "259:0\n");
        write(&loop3.join("loop3p1/partition"), "1\n");
        write(&loop3.join("loop3p1/start"), "2048\n");
        let sda = sys.join("devices/pci/block/sda");
        write(&sda.join("dev"), "8:0\n");
        write(&sda.join("sda2/dev"), "8:2\n");
        write(&sda.join("sda2/partition"), "2\n");
        write(&sda.join("sda2/start"), "4096\n");
        std::fs::create_dir_all(sys.join("class/block")).unwrap();
        for (name, target) in [
            ("loop3", loop3.clone()),
            ("loop3p1", loop3.join("loop3p1")),
            ("sda", sda.clone()),
            ("sda2", sda.join("sda2")),
        ] {
            std::os::unix::fs::symlink(target, sys.join("class/block").join(name)).unwrap();
        }
        Host {
            sys,
            mountinfo: dir.join("mountinfo"),
        }
    }

    #[test]
    fn an_image_is_tracked_through_its_loop_device_and_the_partitions_on_it() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::write(&image, b"x").unwrap();
        let host = fake_sys(dir.path(), &image);
        let mib = 1 << 20;
        assert_eq!(
            ranges(&host, &image).unwrap(),
            vec![
                Range {
                    major: 7,
                    minor: 3,
                    shift: mib
                },
                Range {
                    major: 259,
                    minor: 0,
                    shift: mib
                },
                Range {
                    major: 259,
                    minor: 0,
                    shift: mib + 2048 * 512
                },
            ]
        );
        let lone = dir.path().join("lone.img");
        std::fs::write(&lone, b"x").unwrap();
        let err = ranges(&host, &lone).unwrap_err().to_string();
        assert!(
            err.starts_with("an image file that no loop device reads"),
            "{err}"
        );
    }

    #[test]
    fn a_partition_is_tracked_on_its_disk_at_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let host = fake_sys(dir.path(), Path::new("/nonexistent"));
        let start = 4096 * 512;
        assert_eq!(
            of_blocks(&host, &["sda2".to_owned()]).unwrap(),
            vec![
                Range {
                    major: 8,
                    minor: 0,
                    shift: -start
                },
                Range {
                    major: 8,
                    minor: 2,
                    shift: -start
                },
                Range {
                    major: 8,
                    minor: 2,
                    shift: 0
                },
            ]
        );
        // The whole disk: its own sectors, and its partition's both ways.
        assert_eq!(
            of_blocks(&host, &["sda".to_owned()]).unwrap(),
            vec![
                Range {
                    major: 8,
                    minor: 0,
                    shift: 0
                },
                Range {
                    major: 8,
                    minor: 2,
                    shift: 0
                },
                Range {
                    major: 8,
                    minor: 2,
                    shift: start
                },
            ]
        );
    }
}
