//! Mounts as RAII guards, and the kernel's table of mounts.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::mount::{MntFlags, MsFlags};

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub id: u64,
    /// "major:minor" of the mounted device.
    pub devno: String,
    /// The directory of the file system this mount shows (`/` but for a
    /// bind mount of a subdirectory).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    /// The file system (its super block) is writable, whatever this one
    /// mount's own options say.
    pub read_write: bool,
}

pub fn mountinfo() -> Result<Vec<MountInfo>> {
    let text =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text))
}

/// mountinfo's lines: `id parent major:minor root point options
/// [optional...] - fstype source super-options`.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 5 || fields.len() < sep + 3 {
            continue;
        }
        out.push(MountInfo {
            id: fields[0].parse().unwrap_or(0),
            devno: fields[2].to_owned(),
            root: PathBuf::from(crate::devname::unescape_octal(fields[3])),
            mount_point: PathBuf::from(crate::devname::unescape_octal(fields[4])),
            fstype: fields[sep + 1].to_owned(),
            source: crate::devname::unescape_octal(fields[sep + 2]),
            read_write: fields
                .get(sep + 3)
                .is_some_and(|o| o.split(',').any(|o| o == "rw")),
        });
    }
    out
}

impl MountInfo {
    /// Its mount point as the tree at `root` sees it (`/`, `/boot`), when
    /// it lies at `root` or below.
    pub(crate) fn inside(&self, root: &Path) -> Option<String> {
        let rel = self.mount_point.strip_prefix(root).ok()?;
        let inside = format!("/{}", rel.display());
        Some(if inside == "/" {
            inside
        } else {
            inside.trim_end_matches('/').to_owned()
        })
    }
}

/// Is something mounted exactly at `path`?
pub(crate) fn is_mount_point(path: &Path) -> Result<bool> {
    Ok(mountinfo()?.iter().any(|m| m.mount_point == path))
}

/// A mount, unmounted by `close` or, best effort, on drop.
#[derive(Debug)]
pub(crate) struct MountGuard {
    target: PathBuf,
    what: String,
    active: bool,
}

impl MountGuard {
    /// Mount `source` of type `fstype` on `target`.
    pub fn mount(
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<MountGuard> {
        nix::mount::mount(Some(source), target, Some(fstype), flags, data)
            .with_context(|| format!("mounting {source} ({fstype}) on {}", target.display()))?;
        tracing::debug!(source, target = %target.display(), fstype, "mounted");
        Ok(MountGuard {
            target: target.to_owned(),
            what: source.to_owned(),
            active: true,
        })
    }

    pub fn close(mut self) -> Result<()> {
        self.active = false;
        unmount(&self.target)
            .with_context(|| format!("unmounting {} from {}", self.what, self.target.display()))
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.active {
            if let Err(e) = unmount(&self.target) {
                tracing::warn!(target = %self.target.display(), "unmounting: {e:#}");
            }
        }
    }
}

/// Unmount `target`, retrying briefly while it is busy (a tool that just
/// exited may still hold it). A mount that stays busy is left in place and
/// reported: its contents are never touched.
pub fn unmount(target: &Path) -> Result<()> {
    let mut last = None;
    for attempt in 0..20u64 {
        match nix::mount::umount2(target, MntFlags::empty()) {
            Ok(()) => {
                tracing::debug!(target = %target.display(), "unmounted");
                return Ok(());
            }
            Err(nix::errno::Errno::EINVAL) if !is_mount_point(target)? => return Ok(()),
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(25 * (attempt + 1).min(8)));
            }
        }
    }
    Err(anyhow::anyhow!(
        "{} stays busy: {}",
        target.display(),
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// Unmount whatever is mounted at or below `dir`, deepest first: what a
/// killed run left behind.
pub(crate) fn unmount_below(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut stale: Vec<MountInfo> = mountinfo()?
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect();
    // Later mounts (higher ids) first: they may sit on top of earlier ones.
    stale.sort_by(|a, b| {
        b.mount_point
            .components()
            .count()
            .cmp(&a.mount_point.components().count())
            .then(b.id.cmp(&a.id))
    });
    let mut done = Vec::new();
    for m in stale {
        unmount(&m.mount_point)
            .with_context(|| format!("unmounting leftover {}", m.mount_point.display()))?;
        done.push(m.mount_point);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_point_is_seen_from_inside_its_tree() {
        let m = parse_mountinfo(
            "36 35 254:3 / /run/ferry/root/boot\\040efi rw,relatime shared:1 - vfat /dev/vdb1 rw\n\
             37 35 254:2 / /run/ferry/root rw - ext4 /dev/vdb2 rw\n\
             38 35 254:4 / /run/ferry/rooted rw - ext4 /dev/vdb4 rw\n",
        );
        let root = Path::new("/run/ferry/root");
        let seen: Vec<Option<String>> = m.iter().map(|m| m.inside(root)).collect();
        assert_eq!(
            seen,
            [Some("/boot efi".to_owned()), Some("/".to_owned()), None]
        );
    }

    #[test]
    fn mountinfo_lines_parse() {
        let t = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                 99 27 7:1 / /tmp/a\\040b rw shared:1 - xfs /dev/loop1p2 rw\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].mount_point, PathBuf::from("/tmp/a b"));
        assert_eq!(m[1].fstype, "xfs");
        assert_eq!(m[1].devno, "7:1");
        assert_eq!(m[1].source, "/dev/loop1p2");
    }
}
