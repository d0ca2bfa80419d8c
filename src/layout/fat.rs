//! FAT partitions (EFI system partitions) read and written in-process.
//!
//! The kernel here has no vfat, so an ESP cannot be mounted; its contents
//! are reached through `fatfs` on the partition's device node instead. Each
//! call opens, works and flushes, so nothing stays open between calls.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A FAT file system on a partition node (or any file holding one).
#[derive(Debug, Clone)]
pub struct FatPartition {
    node: PathBuf,
}

/// One entry of a FAT directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatEntry {
    pub name: String,
    pub is_dir: bool,
    pub len: u64,
}

fn components(path: &str) -> Vec<&str> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect()
}

impl FatPartition {
    pub fn new(node: &Path) -> FatPartition {
        FatPartition {
            node: node.to_owned(),
        }
    }

    pub fn node(&self) -> &Path {
        &self.node
    }

    fn with_fs<T>(
        &self,
        write: bool,
        f: impl FnOnce(&fatfs::FileSystem<&mut File>) -> Result<T>,
    ) -> Result<T> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(write)
            .open(&self.node)
            .with_context(|| format!("opening {}", self.node.display()))?;
        let out = {
            let fs =
                fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new()).with_context(|| {
                    format!("reading the FAT file system on {}", self.node.display())
                })?;
            let out = f(&fs)?;
            fs.unmount().with_context(|| {
                format!("flushing the FAT file system on {}", self.node.display())
            })?;
            out
        };
        if write {
            file.sync_all()
                .with_context(|| format!("flushing {}", self.node.display()))?;
            drop(file);
            fix_dot_entries(&self.node)?;
        }
        Ok(out)
    }

    /// The content of the file at `path` ("EFI/BOOT/BOOTX64.EFI").
    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        self.with_fs(false, |fs| {
            let mut f = fs.root_dir().open_file(path).with_context(|| {
                format!(
                    "opening {path} on the FAT partition {}",
                    self.node.display()
                )
            })?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)
                .with_context(|| format!("reading {path} on {}", self.node.display()))?;
            Ok(buf)
        })
    }

    /// Write `data` to `path`, creating parent directories and replacing
    /// an existing file.
    pub fn write(&self, path: &str, data: &[u8]) -> Result<()> {
        self.with_fs(true, |fs| write_in(fs, path, data))
            .with_context(|| {
                format!(
                    "writing {path} on the FAT partition {}",
                    self.node.display()
                )
            })
    }

    /// The entries of directory `dir` ("" or "/" for the root), without . and ..
    pub fn list(&self, dir: &str) -> Result<Vec<FatEntry>> {
        self.with_fs(false, |fs| {
            let root = fs.root_dir();
            let d = if components(dir).is_empty() {
                root
            } else {
                root.open_dir(dir).with_context(|| {
                    format!("opening directory {dir} on {}", self.node.display())
                })?
            };
            let mut out = Vec::new();
            for e in d.iter() {
                let e = e.with_context(|| format!("listing {dir} on {}", self.node.display()))?;
                let name = e.file_name();
                if name == "." || name == ".." {
                    continue;
                }
                out.push(FatEntry {
                    name,
                    is_dir: e.is_dir(),
                    len: e.len(),
                });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    /// Copy the host directory `src` (recursively) into `dest` on the FAT
    /// partition: how a staged ESP (e.g. what GRUB's tools wrote into a
    /// directory) reaches the partition.
    pub fn import_dir(&self, src: &Path, dest: &str) -> Result<usize> {
        let mut files = Vec::new();
        collect(src, Path::new(""), &mut files)?;
        let count = files.len();
        self.with_fs(true, |fs| {
            for rel in &files {
                let data = std::fs::read(src.join(rel))
                    .with_context(|| format!("reading {}", src.join(rel).display()))?;
                let target = format!("{}/{}", dest.trim_end_matches('/'), rel.display());
                write_in(fs, &target, &data)?;
            }
            Ok(())
        })
        .with_context(|| {
            format!(
                "copying {} into the FAT partition {}",
                src.display(),
                self.node.display()
            )
        })?;
        Ok(count)
    }

    /// Make `dest` on the FAT partition hold what the host directory
    /// `src` holds: its files copied in, and every file or directory
    /// beneath `dest` that `src` no longer has removed (FAT names compare
    /// without case, as FAT resolves them). Returns the files copied and
    /// the entries removed.
    pub(crate) fn mirror_dir(&self, src: &Path, dest: &str) -> Result<(usize, usize)> {
        let mut files = Vec::new();
        collect(src, Path::new(""), &mut files)?;
        let count = files.len();
        let removed = self
            .with_fs(true, |fs| {
                for rel in &files {
                    let data = std::fs::read(src.join(rel))
                        .with_context(|| format!("reading {}", src.join(rel).display()))?;
                    let target = format!("{}/{}", dest.trim_end_matches('/'), rel.display());
                    write_in(fs, &target, &data)?;
                }
                let mut dir = fs.root_dir();
                for d in components(dest) {
                    dir = dir
                        .open_dir(d)
                        .with_context(|| format!("opening directory {d}"))?;
                }
                remove_missing(&dir, src)
            })
            .with_context(|| {
                format!(
                    "mirroring {} into the FAT partition {}",
                    src.display(),
                    self.node.display()
                )
            })?;
        Ok((count, removed))
    }
}

/// Remove from `dir` what `host` (its counterpart on the host) has not:
/// a file where the host has none (or has a directory), a directory where
/// the host has no directory (with everything beneath it).
fn remove_missing(dir: &fatfs::Dir<'_, &mut File>, host: &Path) -> Result<usize> {
    let mut on_host = std::collections::HashMap::new();
    for e in std::fs::read_dir(host).with_context(|| format!("listing {}", host.display()))? {
        let e = e.with_context(|| format!("listing {}", host.display()))?;
        let is_dir = e
            .file_type()
            .with_context(|| format!("reading {}", e.path().display()))?
            .is_dir();
        let name = e.file_name();
        on_host.insert(name.to_string_lossy().to_lowercase(), (name, is_dir));
    }
    let mut gone = Vec::new();
    for (name, is_dir) in entries_of(dir)? {
        let kept = on_host
            .get(&name.to_lowercase())
            .filter(|(_, d)| *d == is_dir);
        if let (true, Some((host_name, _))) = (is_dir, kept) {
            let sub = dir
                .open_dir(&name)
                .with_context(|| format!("opening directory {name}"))?;
            let n = remove_missing(&sub, &host.join(host_name))?;
            gone.push((None, n));
        } else if kept.is_none() {
            gone.push((Some((name, is_dir)), 0));
        }
    }
    let mut removed = 0;
    for (entry, n) in gone {
        removed += n;
        if let Some((name, is_dir)) = entry {
            removed += remove_entry(dir, &name, is_dir)?;
        }
    }
    Ok(removed)
}

/// The names of a FAT directory's entries (without . and ..), and
/// whether each is a directory.
fn entries_of(dir: &fatfs::Dir<'_, &mut File>) -> Result<Vec<(String, bool)>> {
    let mut names = Vec::new();
    for e in dir.iter() {
        let e = e.context("listing a FAT directory")?;
        let name = e.file_name();
        if name != "." && name != ".." {
            names.push((name, e.is_dir()));
        }
    }
    Ok(names)
}

/// Empty a FAT directory, deepest first.
fn remove_all(dir: &fatfs::Dir<'_, &mut File>) -> Result<usize> {
    let mut removed = 0;
    for (name, is_dir) in entries_of(dir)? {
        removed += remove_entry(dir, &name, is_dir)?;
    }
    Ok(removed)
}

/// Remove one entry of `dir` (a directory with all it holds); returns how
/// many entries went.
fn remove_entry(dir: &fatfs::Dir<'_, &mut File>, name: &str, is_dir: bool) -> Result<usize> {
    let mut removed = 0;
    if is_dir {
        let sub = dir
            .open_dir(name)
            .with_context(|| format!("opening directory {name}"))?;
        removed += remove_all(&sub)?;
    }
    dir.remove(name)
        .with_context(|| format!("removing {name} from the FAT file system"))?;
    Ok(removed + 1)
}

fn collect(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let dir = base.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let r = rel.join(e.file_name());
        let ft = e
            .file_type()
            .with_context(|| format!("reading {}", e.path().display()))?;
        if ft.is_dir() {
            collect(base, &r, out)?;
        } else if ft.is_file() {
            out.push(r);
        } else {
            bail!(
                "{} is neither a file nor a directory; FAT holds only those",
                e.path().display()
            );
        }
    }
    Ok(())
}

fn write_in(fs: &fatfs::FileSystem<&mut File>, path: &str, data: &[u8]) -> Result<()> {
    let parts = components(path);
    let Some((name, dirs)) = parts.split_last() else {
        bail!("empty path");
    };
    let mut dir = fs.root_dir();
    for d in dirs {
        dir = match dir.open_dir(d) {
            Ok(x) => x,
            Err(_) => dir
                .create_dir(d)
                .with_context(|| format!("creating directory {d}"))?,
        };
    }
    let mut f = dir
        .create_file(name)
        .with_context(|| format!("creating {name}"))?;
    f.truncate().with_context(|| format!("truncating {name}"))?;
    f.write_all(data)
        .with_context(|| format!("writing {name}"))?;
    f.flush().with_context(|| format!("flushing {name}"))?;
    Ok(())
}

/// Directory entry attribute of long-name entries.
const ATTR_LFN: u8 = 0x0f;
const ATTR_DIR: u8 = 0x10;

/// The geometry of a FAT volume, from its boot sector.
struct Geometry {
    bytes_per_cluster: u64,
    fat_offset: u64,
    data_offset: u64,
    root_offset: u64,
    root_entries: u64,
    root_cluster: u32,
    bits: u8,
}

fn le16(b: &[u8], o: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[o], b[o + 1]]))
}

fn le32(b: &[u8], o: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]))
}

fn geometry(boot: &[u8]) -> Result<Geometry> {
    let bps = le16(boot, 11);
    let spc = u64::from(boot[13]);
    let reserved = le16(boot, 14);
    let fats = u64::from(boot[16]);
    let root_entries = le16(boot, 17);
    let total = match le16(boot, 19) {
        0 => le32(boot, 32),
        n => n,
    };
    let fat_size = match le16(boot, 22) {
        0 => le32(boot, 36),
        n => n,
    };
    if bps == 0 || spc == 0 || fats == 0 {
        bail!("not a FAT boot sector");
    }
    let root_sectors = (root_entries * 32).div_ceil(bps);
    let data_sector = reserved + fats * fat_size + root_sectors;
    let clusters = total.saturating_sub(data_sector) / spc;
    let bits = if clusters < 4085 {
        12
    } else if clusters < 65525 {
        16
    } else {
        32
    };
    Ok(Geometry {
        bytes_per_cluster: bps * spc,
        fat_offset: reserved * bps,
        data_offset: data_sector * bps,
        root_offset: (reserved + fats * fat_size) * bps,
        root_entries,
        root_cluster: if bits == 32 { le32(boot, 44) as u32 } else { 0 },
        bits,
    })
}

/// fatfs 0.3 writes a long-name entry before the "." and ".." entries of
/// every directory it creates; FAT requires them as the first two plain
/// entries (fsck.fat and some firmware insist). Move them into place and
/// mark the freed slots deleted.
pub(crate) fn fix_dot_entries(node: &Path) -> Result<usize> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(node)
        .with_context(|| format!("opening {}", node.display()))?;
    let mut boot = [0u8; 512];
    f.read_exact_at(&mut boot, 0)
        .with_context(|| format!("reading the boot sector of {}", node.display()))?;
    let g = geometry(&boot)
        .with_context(|| format!("reading the FAT geometry of {}", node.display()))?;
    let next = |c: u32| -> Result<Option<u32>> {
        let (off, mask, eoc) = match g.bits {
            12 => (u64::from(c) * 3 / 2, 0xfff, 0xff8),
            16 => (u64::from(c) * 2, 0xffff, 0xfff8),
            _ => (u64::from(c) * 4, 0x0fff_ffff, 0x0fff_fff8),
        };
        let mut b = [0u8; 4];
        f.read_exact_at(
            &mut b[..if g.bits == 32 { 4 } else { 2 }],
            g.fat_offset + off,
        )?;
        let mut v = u32::from_le_bytes(b);
        if g.bits == 12 {
            v = if c % 2 == 1 { v >> 4 } else { v & 0xfff };
        }
        let v = v & mask;
        Ok((v >= 2 && v < eoc).then_some(v))
    };
    let cluster_off = |c: u32| g.data_offset + u64::from(c - 2) * g.bytes_per_cluster;
    // Reads a directory (a cluster chain, or the fixed FAT12/16 root) whole.
    let read_dir = |first: u32| -> Result<Vec<(u64, [u8; 32])>> {
        let mut spans = Vec::new();
        if first == 0 {
            spans.push((g.root_offset, g.root_entries * 32));
        } else {
            let mut c = Some(first);
            let mut guard = 0;
            while let Some(cl) = c {
                spans.push((cluster_off(cl), g.bytes_per_cluster));
                c = next(cl)?;
                guard += 1;
                if guard > 65536 {
                    bail!("directory cluster chain at {first} does not end");
                }
            }
        }
        let mut out = Vec::new();
        for (off, len) in spans {
            let mut buf = vec![0u8; len as usize];
            f.read_exact_at(&mut buf, off)?;
            for (i, e) in buf.chunks_exact(32).enumerate() {
                let mut a = [0u8; 32];
                a.copy_from_slice(e);
                out.push((off + i as u64 * 32, a));
            }
        }
        Ok(out)
    };
    let mut fixed = 0;
    let mut stack = vec![g.root_cluster];
    let mut seen = std::collections::HashSet::new();
    while let Some(dir) = stack.pop() {
        if !seen.insert(dir) {
            continue;
        }
        let entries = read_dir(dir)?;
        if dir != g.root_cluster && entries.len() >= 4 && entries[0].1[11] == ATTR_LFN {
            let dot = entries[..4]
                .iter()
                .find(|(_, e)| &e[..11] == b".          " && e[11] & ATTR_LFN != ATTR_LFN);
            let dotdot = entries[..4]
                .iter()
                .find(|(_, e)| &e[..11] == b"..         " && e[11] & ATTR_LFN != ATTR_LFN);
            if let (Some(dot), Some(dotdot)) = (dot, dotdot) {
                let mut block = [0u8; 128];
                block[..32].copy_from_slice(&dot.1);
                block[32..64].copy_from_slice(&dotdot.1);
                for slot in [2usize, 3] {
                    block[slot * 32] = 0xe5;
                    block[slot * 32 + 11] = 0;
                }
                f.write_all_at(&block, entries[0].0)
                    .with_context(|| format!("fixing directory entries on {}", node.display()))?;
                fixed += 1;
            }
        }
        for (_, e) in read_dir(dir)? {
            if e[0] == 0 {
                break;
            }
            if e[0] == 0xe5 || e[11] == ATTR_LFN || e[11] & ATTR_DIR == 0 || e[0] == b'.' {
                continue;
            }
            let hi = if g.bits == 32 { le16(&e, 20) << 16 } else { 0 };
            let c = (hi | le16(&e, 26)) as u32;
            if c >= 2 {
                stack.push(c);
            }
        }
    }
    f.sync_all()
        .with_context(|| format!("flushing {}", node.display()))?;
    Ok(fixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn formatted(dir: &Path, mib: u64) -> PathBuf {
        let p = dir.join("esp.img");
        let f = File::create(&p).unwrap();
        f.set_len(mib * 1024 * 1024).unwrap();
        let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        fatfs::format_volume(
            &mut f,
            fatfs::FormatVolumeOptions::new().volume_id(0x1234abcd),
        )
        .unwrap();
        p
    }

    #[test]
    fn files_round_trip_and_directories_pass_fsck() {
        let dir = tempfile::tempdir().unwrap();
        for mib in [8, 64] {
            let img = formatted(dir.path(), mib);
            let fat = FatPartition::new(&img);
            fat.write("EFI/BOOT/BOOTX64.EFI", b"MZ binary").unwrap();
            fat.write("EFI/BOOT/BOOTX64.EFI", b"MZ").unwrap();
            fat.write("EFI/debian/grub.cfg", b"cfg").unwrap();
            assert_eq!(fat.read("EFI/BOOT/BOOTX64.EFI").unwrap(), b"MZ");
            let names: Vec<String> = fat
                .list("/EFI")
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect();
            assert_eq!(names, ["BOOT", "debian"]);
            // Each new directory starts with plain "." and ".." entries.
            assert_eq!(
                fix_dot_entries(&img).unwrap(),
                0,
                "already fixed after each write"
            );
            if crate::cmd::have("fsck.vfat") {
                crate::cmd::Cmd::new("fsck.vfat")
                    .arg("-n")
                    .arg(&img)
                    .run()
                    .unwrap();
            }
        }
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let img = formatted(dir.path(), 8);
        let err = FatPartition::new(&img).read("EFI/none").unwrap_err();
        assert!(
            format!("{err:#}").starts_with("opening EFI/none on the FAT partition"),
            "{err:#}"
        );
    }
}
