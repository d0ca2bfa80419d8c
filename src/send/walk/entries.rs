//! The walk of one file system: every entry beneath its root, in path
//! order, a directory before what it holds, without crossing into another
//! file system (a mount point is sent as an empty directory) and without
//! what the exclude list names. Sockets are skipped.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::excludes::Excludes;
use crate::entry::{Entry, Kind, Time};
use crate::job::errors::{coded, ErrorCode};

/// One entry found by the walk, with where to read it.
pub struct Found {
    pub entry: Entry,
    pub source: PathBuf,
}

/// What the walk passed over.
#[derive(Debug, Default, Clone, Copy)]
pub struct Skipped {
    pub excluded: u64,
    pub sockets: u64,
    pub mount_points: u64,
}

/// Walk `root`, calling `f` with each entry.
pub fn walk(
    root: &Path,
    excludes: &Excludes,
    f: impl FnMut(Found) -> Result<()>,
) -> Result<Skipped> {
    walk_with(root, excludes, &[], f)
}

/// [`walk`], treating the directories `stops` (paths relative to `root`)
/// as mount points: sent, not entered. They are the mount points of the
/// other trees, which an unpacked tree has on the same device.
pub fn walk_with(
    root: &Path,
    excludes: &Excludes,
    stops: &[Vec<u8>],
    mut f: impl FnMut(Found) -> Result<()>,
) -> Result<Skipped> {
    let meta = lstat(root)?;
    let mut w = Walker {
        dev: meta.dev(),
        stops,
        excludes,
        links: HashMap::new(),
        skipped: Skipped::default(),
    };
    let entry = w.entry(b".".to_vec(), root, &meta)?;
    f(Found {
        entry,
        source: root.to_owned(),
    })?;
    w.dir(root, &[], &mut f)?;
    Ok(w.skipped)
}

struct Walker<'a> {
    dev: u64,
    stops: &'a [Vec<u8>],
    excludes: &'a Excludes,
    /// Files with more than one name: (dev, inode) → the first path sent.
    links: HashMap<(u64, u64), Vec<u8>>,
    skipped: Skipped,
}

fn unreadable(path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    coded(
        ErrorCode::SourceTreeUnreadable,
        format!(
            "{}: {e}",
            crate::entry::display(path.as_os_str().as_bytes())
        ),
    )
}

fn lstat(path: &Path) -> Result<std::fs::Metadata> {
    std::fs::symlink_metadata(path).map_err(|e| unreadable(path, e))
}

impl Walker<'_> {
    fn dir(
        &mut self,
        dir: &Path,
        rel: &[u8],
        f: &mut impl FnMut(Found) -> Result<()>,
    ) -> Result<()> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        for e in std::fs::read_dir(dir).map_err(|e| unreadable(dir, e))? {
            let e = e.map_err(|e| unreadable(dir, e))?;
            names.push(e.file_name().as_bytes().to_vec());
        }
        names.sort();
        for name in names {
            let path = dir.join(OsStr::from_bytes(&name));
            let child: Vec<u8> = if rel.is_empty() {
                name.clone()
            } else {
                [rel, b"/", &name].concat()
            };
            if child == crate::entry::STAGING {
                self.skipped.excluded += 1;
                continue;
            }
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                // Gone since the directory was listed: nothing to send.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(unreadable(&path, e)),
            };
            let ft = meta.file_type();
            if ft.is_socket() {
                self.skipped.sockets += 1;
                continue;
            }
            if self.excludes.excludes(&child, ft.is_dir()) {
                self.skipped.excluded += 1;
                continue;
            }
            let entry = self.entry(child.clone(), &path, &meta)?;
            let descend = ft.is_dir() && meta.dev() == self.dev && !self.stops.contains(&child);
            if ft.is_dir() && !descend {
                self.skipped.mount_points += 1;
            }
            f(Found {
                entry,
                source: path.clone(),
            })?;
            if descend {
                self.dir(&path, &child, f)?;
            }
        }
        Ok(())
    }

    fn entry(&mut self, rel: Vec<u8>, path: &Path, meta: &std::fs::Metadata) -> Result<Entry> {
        let ft = meta.file_type();
        let mut kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_block_device() {
            Kind::BlockDev
        } else if ft.is_char_device() {
            Kind::CharDev
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            Kind::File
        };
        let mut target = Vec::new();
        if kind == Kind::Symlink {
            target = std::fs::read_link(path)
                .map_err(|e| unreadable(path, e))?
                .into_os_string()
                .into_vec();
        }
        if kind != Kind::Dir && meta.nlink() > 1 {
            match self.links.get(&(meta.dev(), meta.ino())) {
                Some(first) => {
                    kind = Kind::HardLink;
                    target = first.clone();
                }
                None => {
                    self.links.insert((meta.dev(), meta.ino()), rel.clone());
                }
            }
        }
        let xattrs = if kind == Kind::HardLink {
            Vec::new()
        } else {
            read_xattrs(path)?
        };
        Ok(Entry {
            path: rel,
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: if matches!(kind, Kind::File | Kind::HardLink) {
                meta.size()
            } else {
                0
            },
            mtime: Time {
                sec: meta.mtime(),
                nsec: meta.mtime_nsec() as u32,
            },
            ctime: Time {
                sec: meta.ctime(),
                nsec: meta.ctime_nsec() as u32,
            },
            rdev: meta.rdev(),
            target,
            xattrs,
        })
    }
}

use std::os::unix::ffi::OsStringExt;

/// Bytes the entries of a walk take on the source: allocated blocks of
/// everything sent (a file with several names once), the same rules as
/// [`walk_with`] for what is not entered or is left out.
pub(crate) fn used_bytes(root: &Path, excludes: &Excludes, stops: &[Vec<u8>]) -> Result<u64> {
    let meta = lstat(root)?;
    let dev = meta.dev();
    let mut seen = std::collections::HashSet::new();
    let mut total = meta.blocks() * 512;
    let mut todo: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_owned(), Vec::new())];
    while let Some((dir, rel)) = todo.pop() {
        for e in std::fs::read_dir(&dir).map_err(|e| unreadable(&dir, e))? {
            let e = e.map_err(|e| unreadable(&dir, e))?;
            let name = e.file_name();
            let child: Vec<u8> = if rel.is_empty() {
                name.as_bytes().to_vec()
            } else {
                [&rel[..], b"/", name.as_bytes()].concat()
            };
            let path = e.path();
            let m = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(unreadable(&path, e)),
            };
            let ft = m.file_type();
            if child == crate::entry::STAGING
                || ft.is_socket()
                || excludes.excludes(&child, ft.is_dir())
            {
                continue;
            }
            if m.nlink() > 1 && !ft.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            if ft.is_dir() && m.dev() != dev {
                continue;
            }
            total += m.blocks() * 512;
            if ft.is_dir() && !stops.contains(&child) {
                todo.push((path, child));
            }
        }
    }
    Ok(total)
}

/// Every extended attribute of a path, without following it.
pub(crate) fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut list = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut list[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) if list.len() < (1 << 20) => {
                let len = list.len() * 4;
                list.resize(len, 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => {
                return Err(unreadable(
                    path,
                    format!("listing its extended attributes: {e}"),
                ))
            }
        }
    };
    let mut out = Vec::new();
    let mut value = vec![0u8; 4096];
    for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let len = loop {
            match rustix::fs::lgetxattr(path, OsStr::from_bytes(name), &mut value[..]) {
                Ok(len) => break Some(len),
                Err(rustix::io::Errno::RANGE) if value.len() < (1 << 20) => {
                    let len = value.len() * 4;
                    value.resize(len, 0);
                }
                // Removed since it was listed.
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => {
                    return Err(unreadable(
                        path,
                        format!(
                            "reading its extended attribute {}: {e}",
                            crate::entry::display(name)
                        ),
                    ))
                }
            }
        };
        if let Some(len) = len {
            out.push((name.to_vec(), value[..len].to_vec()));
        }
    }
    Ok(out)
}
