//! Loop devices and partition nodes.
//!
//! The kernel on the appliance's build machines parses no partition tables
//! by itself, so partitions are announced with BLKPG (`addpart`/`delpart`),
//! on loop devices always and on real disks when a re-read does not give
//! the expected nodes. No udev runs either: a node that devtmpfs did not
//! create (or left stale from an earlier device) is made here.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::desc::{Extent, SECTOR};
use crate::cmd::Cmd;

/// A loop device over an image file; detached (with its partitions
/// removed) by `close` or, best effort, on drop.
#[derive(Debug)]
pub(crate) struct LoopDevice {
    path: PathBuf,
    open: bool,
}

impl LoopDevice {
    pub fn attach(file: &Path) -> Result<LoopDevice> {
        let out = Cmd::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .run()
            .with_context(|| format!("attaching {} to a loop device", file.display()))?;
        let name = out.stdout_text().trim().to_owned();
        if !name.starts_with("/dev/loop") {
            bail!(
                "losetup printed {name:?} for {}, not a loop device",
                file.display()
            );
        }
        let lo = LoopDevice {
            path: PathBuf::from(name),
            open: true,
        };
        tracing::debug!(file = %file.display(), device = %lo.path.display(), "loop device attached");
        // A loop device number can be reused with partitions that an
        // earlier user added by BLKPG and never removed.
        remove_partitions(&lo.path)?;
        Ok(lo)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn close(mut self) -> Result<()> {
        self.open = false;
        detach(&self.path)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if self.open {
            if let Err(e) = detach(&self.path) {
                tracing::warn!(device = %self.path.display(), "detaching loop device: {e:#}");
            }
        }
    }
}

/// Remove BLKPG partitions of a loop device and detach it.
pub fn detach(dev: &Path) -> Result<()> {
    let mut last = None;
    for attempt in 0..10 {
        let res = remove_partitions(dev).and_then(|()| {
            Cmd::new("losetup")
                .arg("--detach")
                .arg(dev)
                .run()
                .map(|_| ())
        });
        match res {
            Ok(()) => {
                wait_detached(dev);
                tracing::debug!(device = %dev.display(), "loop device detached");
                return Ok(());
            }
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(50 * (attempt + 1)));
            }
        }
    }
    Err(last
        .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
        .context(format!("detaching loop device {}", dev.display())))
}

/// While another process still has the device open (a probe, a parallel
/// `losetup --find`), the kernel only marks it for detaching; wait for the
/// detach to finish so that the next step does not see the image in use.
fn wait_detached(dev: &Path) {
    let Some(name) = dev.file_name() else { return };
    let backing = Path::new("/sys/block").join(name).join("loop/backing_file");
    let deadline = Instant::now() + Duration::from_secs(5);
    while backing.exists() {
        if Instant::now() > deadline {
            tracing::warn!(device = %dev.display(), "detach still pending; the kernel finishes it when the last user closes the device");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The kernel name of a block device node (`/dev/loop3` → `loop3`).
pub(crate) fn kernel_name(dev: &Path) -> Result<String> {
    let meta = fs::metadata(dev).with_context(|| format!("reading {}", dev.display()))?;
    if !meta.file_type().is_block_device() {
        bail!("{} is not a block device", dev.display());
    }
    let (maj, min) = (major(meta.rdev()), minor(meta.rdev()));
    let link = fs::read_link(format!("/sys/dev/block/{maj}:{min}"))
        .with_context(|| format!("looking up block device {maj}:{min} in /sys"))?;
    Ok(link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default())
}

pub fn major(rdev: u64) -> u64 {
    nix::sys::stat::major(rdev)
}

pub fn minor(rdev: u64) -> u64 {
    nix::sys::stat::minor(rdev)
}

/// The node of partition `n` (1-based) of a disk: `loop3p1`, `nvme0n1p1`, `vdb1`. A link to the disk (a
/// `/dev/disk/by-id/virtio-target0` whose name ends in a digit) is resolved
/// first: the kernel names partitions after the disk's own node.
pub fn partition_node(disk: &Path, n: usize) -> PathBuf {
    let resolved = fs::canonicalize(disk).unwrap_or_else(|_| disk.to_owned());
    let s = resolved.to_string_lossy();
    if s.ends_with(|c: char| c.is_ascii_digit()) {
        PathBuf::from(format!("{s}p{n}"))
    } else {
        PathBuf::from(format!("{s}{n}"))
    }
}

/// Partitions the kernel knows for a disk: (number, start sector, sectors).
///
/// Where udev runs, it re-reads a whole disk's table when a writer closes
/// it, and the partitions' directories vanish and come back while it does:
/// udev's queue is waited for first, and a listing that met a vanishing
/// partition is taken again (a few times, 250 ms apart).
pub(crate) fn kernel_partitions(disk_name: &str) -> Result<Vec<(usize, u64, u64)>> {
    settle_udev();
    let mut tries = 0;
    loop {
        let dir = PathBuf::from(format!("/sys/class/block/{disk_name}"));
        match list_partitions(&dir)? {
            Listing::Whole(out) => return Ok(out),
            Listing::Vanished(path) if tries < 20 => {
                tracing::debug!("{} vanished while listing; listing again", path.display());
                tries += 1;
                std::thread::sleep(Duration::from_millis(250));
                settle_udev();
            }
            Listing::Vanished(path) => bail!(
                "the partitions of /dev/{disk_name} kept changing while they were listed \
                 ({} vanished {tries} times): something keeps re-reading the disk's table",
                path.display()
            ),
        }
    }
}

/// One listing of a disk's partitions in sysfs.
enum Listing {
    Whole(Vec<(usize, u64, u64)>),
    /// A partition's file went away between the directory read and its read.
    Vanished(PathBuf),
}

/// `dir` is the disk's directory in sysfs.
fn list_partitions(dir: &Path) -> Result<Listing> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let p = e.path();
        // Only a partition's directory has a `partition` file; an entry
        // that is gone by now was one being removed.
        let num = match fs::read_to_string(p.join("partition")) {
            Ok(num) => num,
            Err(_) if fs::symlink_metadata(&p).is_err() => return Ok(Listing::Vanished(p)),
            Err(_) => continue,
        };
        let n: usize = num
            .trim()
            .parse()
            .with_context(|| format!("parsing {}/partition", p.display()))?;
        let mut fields = [0u64; 2];
        for (slot, f) in fields.iter_mut().zip(["start", "size"]) {
            let file = p.join(f);
            let t = match fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(Listing::Vanished(file))
                }
                Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
            };
            *slot = t
                .trim()
                .parse()
                .with_context(|| format!("parsing {}", file.display()))?;
        }
        out.push((n, fields[0], fields[1]));
    }
    out.sort();
    Ok(Listing::Whole(out))
}

/// Remove every partition the kernel knows for `disk` (fails if one is in use).
pub(crate) fn remove_partitions(disk: &Path) -> Result<()> {
    let name = kernel_name(disk)?;
    for (n, _, _) in kernel_partitions(&name)? {
        remove_partition(disk, n)?;
    }
    Ok(())
}

/// Make the kernel show partitions at exactly `extents` on `disk` and
/// return their nodes: first a table re-read (real disks whose table is
/// written), then BLKPG for whatever does not match.
/// Remove partition `n` of block device `disk`. Where udev runs (a cloud
/// instance), it probes a disk's partitions after anything that had the
/// disk open for writing closes it, and a partition it holds open is busy:
/// wait for udev's queue and try again, for a few seconds.
fn delpart(disk: &Path, n: usize) -> Result<()> {
    let run = || Cmd::new("delpart").arg(disk).arg(n.to_string()).run();
    let mut tries = 0;
    loop {
        match run() {
            Ok(_) => return Ok(()),
            Err(e) if tries < 20 && format!("{e:#}").contains("busy") => {
                tries += 1;
                settle_udev();
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("removing stale partition {n} of {}", disk.display()))
            }
        }
    }
}

/// Wait (at most 10 s) for udev to handle its queued events, where udev
/// runs; nothing where it does not.
pub(crate) fn settle_udev() {
    if !Path::new("/run/udev/control").exists() || !crate::cmd::have("udevadm") {
        return;
    }
    if let Err(e) = Cmd::new("udevadm").args(["settle", "--timeout=10"]).run() {
        tracing::debug!("udevadm settle: {e:#}");
    }
}

pub(crate) fn ensure_partitions(
    disk: &Path,
    parts: &[(usize, Extent)],
    reread: bool,
) -> Result<Vec<PathBuf>> {
    let name = kernel_name(disk)?;
    let want: Vec<(usize, u64, u64)> = parts
        .iter()
        .map(|(n, e)| (*n, e.start / SECTOR, e.len / SECTOR))
        .collect();
    // The kernel may show more (an MBR's extended container); what counts
    // is that every wanted partition is there as wanted.
    let matches = |have: &[(usize, u64, u64)]| want.iter().all(|w| have.contains(w));
    if reread && !matches(&kernel_partitions(&name)?) {
        // Fails when a partition is in use (udev probing it, too) or on
        // kernels that do not scan; BLKPG below is the fallback either way.
        settle_udev();
        if let Err(e) = Cmd::new("blockdev").arg("--rereadpt").arg(disk).run() {
            tracing::debug!(
                "re-reading the partition table of {}: {e:#}",
                disk.display()
            );
        }
    }
    let have = kernel_partitions(&name)?;
    if !matches(&have) {
        for (n, _, _) in &have {
            delpart(disk, *n)?;
        }
        for (n, start, len) in &want {
            Cmd::new("addpart")
                .arg(disk)
                .arg(n.to_string())
                .arg(start.to_string())
                .arg(len.to_string())
                .run()
                .with_context(|| {
                    format!(
                        "adding partition {n} of {} at sector {start} ({len} sectors)",
                        disk.display()
                    )
                })?;
        }
    }
    let mut nodes = Vec::new();
    for (n, _, _) in &want {
        let node = partition_node(disk, *n);
        // The kernel names a partition after the disk's own name (`vdc1`,
        // `loop3p1`), whatever link the disk was given by.
        ensure_node(
            &node,
            &format!("{name}{}", node_suffix(Path::new(&name), *n)),
        )?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// Add partition `n` at `extent` of `disk` by BLKPG and return its node.
pub(crate) fn add_partition(disk: &Path, n: usize, extent: Extent) -> Result<PathBuf> {
    let name = kernel_name(disk)?;
    Cmd::new("addpart")
        .arg(disk)
        .arg(n.to_string())
        .arg((extent.start / SECTOR).to_string())
        .arg((extent.len / SECTOR).to_string())
        .run()
        .with_context(|| {
            format!(
                "adding partition {n} of {} at byte {} ({} bytes)",
                disk.display(),
                extent.start,
                extent.len
            )
        })?;
    let node = partition_node(disk, n);
    ensure_node(
        &node,
        &format!("{name}{}", node_suffix(Path::new(&name), n)),
    )?;
    Ok(node)
}

/// Make the kernel's partition `n` of `disk` `len` bytes long (BLKPG).
pub(crate) fn resize_partition(disk: &Path, n: usize, len: u64) -> Result<()> {
    Cmd::new("resizepart")
        .arg(disk)
        .arg(n.to_string())
        .arg((len / SECTOR).to_string())
        .run()
        .with_context(|| {
            format!(
                "resizing partition {n} of {} to {len} bytes",
                disk.display()
            )
        })
        .map(|_| ())
}

/// Remove partition `n` of `disk` (BLKPG) and the node left behind.
pub(crate) fn remove_partition(disk: &Path, n: usize) -> Result<()> {
    Cmd::new("delpart")
        .arg(disk)
        .arg(n.to_string())
        .run()
        .with_context(|| format!("removing partition {n} of {}", disk.display()))?;
    // The node devtmpfs may leave behind would later point at the wrong
    // device number.
    let node = partition_node(disk, n);
    if fs::symlink_metadata(&node).is_ok_and(|m| m.file_type().is_block_device()) {
        let _ = fs::remove_file(&node);
    }
    Ok(())
}

fn node_suffix(disk: &Path, n: usize) -> String {
    let s = disk.to_string_lossy();
    if s.ends_with(|c: char| c.is_ascii_digit()) {
        format!("p{n}")
    } else {
        n.to_string()
    }
}

/// Wait for devtmpfs to create `node` for kernel device `kname`; make it
/// (or replace a stale one) when it does not show up with the right number.
fn ensure_node(node: &Path, kname: &str) -> Result<()> {
    let devfile = format!("/sys/class/block/{kname}/dev");
    let deadline = Instant::now() + Duration::from_secs(2);
    let (maj, min) = loop {
        match fs::read_to_string(&devfile) {
            Ok(t) => {
                let (a, b) = t
                    .trim()
                    .split_once(':')
                    .with_context(|| format!("parsing {devfile}"))?;
                break (
                    a.parse::<u64>()
                        .with_context(|| format!("parsing {devfile}"))?,
                    b.parse::<u64>()
                        .with_context(|| format!("parsing {devfile}"))?,
                );
            }
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("reading {devfile}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let want = nix::sys::stat::makedev(maj, min);
    loop {
        match fs::metadata(node) {
            Ok(m) if m.file_type().is_block_device() && m.rdev() == want => return Ok(()),
            Ok(_) => {
                fs::remove_file(node)
                    .with_context(|| format!("removing stale node {}", node.display()))?;
            }
            Err(_) if Instant::now() < deadline => {}
            Err(_) => {
                nix::sys::stat::mknod(
                    node,
                    nix::sys::stat::SFlag::S_IFBLK,
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                    want,
                )
                .with_context(|| format!("making node {} ({maj}:{min})", node.display()))?;
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Loop devices whose backing file is `file`.
pub(crate) fn loops_backed_by(file: &Path) -> Result<Vec<PathBuf>> {
    let want = fs::canonicalize(file).with_context(|| format!("resolving {}", file.display()))?;
    let mut out = Vec::new();
    let dir = fs::read_dir("/sys/block").context("listing /sys/block")?;
    for e in dir {
        let e = e.context("listing /sys/block")?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(b) = fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        if Path::new(b.trim_end_matches('\n')) == want {
            out.push(PathBuf::from(format!("/dev/{name}")));
        }
    }
    out.sort();
    Ok(out)
}

/// A disk made ready for mkfs and mounts: the whole-disk node and one node
/// per partition, with the loop device (image files) that provides them.
#[derive(Debug)]
pub struct AttachedDisk {
    source: PathBuf,
    whole: PathBuf,
    partitions: Vec<PathBuf>,
    lo: Option<LoopDevice>,
}

impl AttachedDisk {
    /// Attach `target` (image file or block device) and show its partitions
    /// at `extents`. With `reread`, a block device's table is re-read first
    /// (it must already be written).
    /// Partitions are (number, extent) pairs.
    pub fn attach(
        target: &Path,
        extents: &[(usize, Extent)],
        reread: bool,
    ) -> Result<AttachedDisk> {
        let meta = fs::metadata(target).with_context(|| format!("reading {}", target.display()))?;
        if meta.file_type().is_block_device() {
            let partitions = ensure_partitions(target, extents, reread)
                .with_context(|| format!("showing the partitions of {}", target.display()))?;
            Ok(AttachedDisk {
                source: target.to_owned(),
                whole: target.to_owned(),
                partitions,
                lo: None,
            })
        } else if meta.is_file() {
            let lo = LoopDevice::attach(target)?;
            let partitions = ensure_partitions(lo.path(), extents, false).with_context(|| {
                format!(
                    "adding the partitions of {} to {}",
                    target.display(),
                    lo.path().display()
                )
            })?;
            Ok(AttachedDisk {
                source: target.to_owned(),
                whole: lo.path().to_owned(),
                partitions,
                lo: Some(lo),
            })
        } else {
            bail!(
                "{} is neither an image file nor a block device",
                target.display()
            )
        }
    }

    /// The image file or block device this came from.
    pub fn source(&self) -> &Path {
        &self.source
    }
    /// Whether the whole-disk node is a loop device of ours (an image
    /// file), whose partitions ferry may rearrange.
    pub(crate) fn owns_loop(&self) -> bool {
        self.lo.is_some()
    }
    /// The whole-disk node (the loop device for an image file).
    pub fn whole(&self) -> &Path {
        &self.whole
    }
    pub fn partitions(&self) -> &[PathBuf] {
        &self.partitions
    }

    pub fn close(mut self) -> Result<()> {
        match self.lo.take() {
            Some(lo) => lo.close(),
            None => Ok(()),
        }
    }
}

/// The size of an image file or block device in bytes.
pub fn disk_size(path: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.seek(SeekFrom::End(0))
        .with_context(|| format!("finding the size of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk's sysfs directory with partitions (number, start, size);
    /// `None` leaves out the partition's `start` and `size` (removed
    /// half-way through, as a table re-read does).
    fn sysfs_disk(parts: &[(usize, Option<(u64, u64)>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("queue")).unwrap();
        fs::write(dir.path().join("size"), "2097152\n").unwrap();
        for (n, fields) in parts {
            let p = dir.path().join(format!("vdc{n}"));
            fs::create_dir(&p).unwrap();
            fs::write(p.join("partition"), format!("{n}\n")).unwrap();
            if let Some((start, size)) = fields {
                fs::write(p.join("start"), format!("{start}\n")).unwrap();
                fs::write(p.join("size"), format!("{size}\n")).unwrap();
            }
        }
        dir
    }

    #[test]
    fn a_whole_listing_gives_every_partition_in_order() {
        let dir = sysfs_disk(&[(2, Some((4096, 100))), (1, Some((2048, 2048)))]);
        match list_partitions(dir.path()).unwrap() {
            Listing::Whole(v) => assert_eq!(v, vec![(1, 2048, 2048), (2, 4096, 100)]),
            Listing::Vanished(p) => panic!("vanished: {}", p.display()),
        }
    }

    #[test]
    fn a_partition_removed_while_listed_asks_for_another_listing() {
        // Seen in the appliance: udev re-read the target's table while grow
        // listed it, and `vdc2/start` was gone between the two reads.
        let dir = sysfs_disk(&[(1, Some((2048, 2048))), (2, None)]);
        match list_partitions(dir.path()).unwrap() {
            Listing::Vanished(p) => assert_eq!(p, dir.path().join("vdc2/start")),
            Listing::Whole(v) => panic!("a half-removed partition listed as whole: {v:?}"),
        }
    }

    #[test]
    fn partition_node_names() {
        assert_eq!(
            partition_node(Path::new("/dev/loop3"), 1),
            PathBuf::from("/dev/loop3p1")
        );
        assert_eq!(
            partition_node(Path::new("/dev/nvme0n1"), 2),
            PathBuf::from("/dev/nvme0n1p2")
        );
        assert_eq!(
            partition_node(Path::new("/dev/vdb"), 3),
            PathBuf::from("/dev/vdb3")
        );
    }
}
