//! Target and source disks: opening, sizing, positioned I/O, zeroing,
//! flushing, and the chunk arithmetic and digests both sides agree on.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub mod buffers;

use crate::job::errors::{coded, ErrorCode};

/// Length of chunk `index` of a disk of `size` bytes (the last may be short).
pub(crate) fn chunk_len(size: u64, chunk_size: u32, index: u64) -> usize {
    let start = index * u64::from(chunk_size);
    (size.saturating_sub(start)).min(u64::from(chunk_size)) as usize
}

/// Number of chunks of a disk.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size))
}

/// Is every byte zero?
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    // Compare 16 bytes at a time; the compiler vectorises this loop.
    let mut words = buf.chunks_exact(16);
    let words_zero = words
        .all(|w| u128::from_ne_bytes(w.try_into().expect("chunks_exact yields 16 bytes")) == 0);
    words_zero && words.remainder().iter().all(|&b| b == 0)
}

/// BLAKE3 of `len` zero bytes.
pub(crate) fn zero_hash(len: usize) -> [u8; 32] {
    thread_local! {
        static CACHE: std::cell::RefCell<Option<(usize, [u8; 32])>> = const { std::cell::RefCell::new(None) };
    }
    CACHE.with(|c| {
        if let Some((l, h)) = *c.borrow() {
            if l == len {
                return h;
            }
        }
        let mut hasher = blake3::Hasher::new();
        let zeros = [0u8; 65536];
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len());
            hasher.update(&zeros[..n]);
            left -= n;
        }
        let h = *hasher.finalize().as_bytes();
        *c.borrow_mut() = Some((len, h));
        h
    })
}

/// The whole-disk digest both sides compute: BLAKE3 over the disk's geometry
/// and the hash of every chunk in order. Fed chunk by chunk, so a disk of
/// any size costs no memory.
pub(crate) struct DiskDigester {
    hasher: blake3::Hasher,
}

impl DiskDigester {
    pub fn new(size: u64, chunk_size: u32) -> DiskDigester {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"ferry-disk-digest-v1");
        hasher.update(&size.to_le_bytes());
        hasher.update(&chunk_size.to_le_bytes());
        DiskDigester { hasher }
    }

    pub fn push(&mut self, chunk_hash: &[u8; 32]) {
        self.hasher.update(chunk_hash);
    }

    pub fn finish(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }
}

/// The digest of a disk whose chunk hashes are all at hand.
pub fn disk_digest<'a>(
    size: u64,
    chunk_size: u32,
    hashes: impl IntoIterator<Item = &'a [u8; 32]>,
) -> [u8; 32] {
    let mut d = DiskDigester::new(size, chunk_size);
    for c in hashes {
        d.push(c);
    }
    d.finish()
}

/// A disk opened for positioned reads and writes.
#[derive(Debug)]
pub struct Disk {
    file: File,
    /// The same disk opened with O_DIRECT, for whole aligned chunks: the
    /// data goes from the buffer to the device, not copied into the page
    /// cache first (the copy cost a receiver a quarter of its CPU), and a
    /// re-read reads the device, not what the cache kept.
    direct: Option<File>,
    path: PathBuf,
    size: u64,
    block_device: bool,
}

impl Disk {
    /// Open a source disk (block device or image file) read-only.
    pub fn open_source(path: &Path) -> Result<Disk> {
        let file = File::open(path).map_err(|e| {
            coded(
                ErrorCode::SourceReadFailed,
                format!("{}: {e}", path.display()),
            )
        })?;
        Self::from_file(file, path)
    }

    /// Open an existing target read-write. A block device is opened with
    /// O_EXCL, which the kernel refuses while the device is mounted or held
    /// by another user (a partition mounted, a device-mapper table...).
    pub(crate) fn open_target(path: &Path) -> Result<Disk> {
        let meta = std::fs::metadata(path).map_err(|e| {
            coded(
                ErrorCode::TargetUnavailable,
                format!("{}: {e}", path.display()),
            )
        })?;
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if meta.file_type().is_block_device() {
            opts.custom_flags(libc::O_EXCL);
        }
        let file = opts.open(path).map_err(|e| {
            coded(
                ErrorCode::TargetUnavailable,
                format!("{}: {e}", path.display()),
            )
        })?;
        Self::from_file(file, path)
    }

    /// Create (or re-create, emptied) a sparse image file of `size` bytes.
    pub(crate) fn create_sparse(path: &Path, size: u64) -> Result<Disk> {
        if let Some(dir) = path.parent() {
            private_dir(dir)?;
        }
        // The image holds the migrated server's whole disk: only root reads it.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating target image {}", path.display()))?;
        set_mode(&file, path, 0o600)?;
        file.set_len(size)
            .map_err(|e| map_write_err(e, format!("sizing {} to {size} bytes", path.display())))?;
        file.sync_all()
            .with_context(|| format!("flushing {}", path.display()))?;
        sync_dir(path)?;
        Self::from_file(file, path)
    }

    fn from_file(file: File, path: &Path) -> Result<Disk> {
        let meta = file
            .metadata()
            .with_context(|| format!("inspecting {}", path.display()))?;
        let block_device = meta.file_type().is_block_device();
        let size = if block_device {
            use std::io::{Seek, SeekFrom};
            // A block device's size is where SEEK_END lands.
            (&file)
                .seek(SeekFrom::End(0))
                .with_context(|| format!("measuring block device {}", path.display()))?
        } else {
            meta.len()
        };
        Ok(Disk {
            file,
            direct: None,
            path: path.to_owned(),
            size,
            block_device,
        })
    }

    /// Write and re-read whole aligned chunks with O_DIRECT from now on,
    /// when the file system or device allows it (otherwise nothing
    /// changes). The file is opened a second time; a block device is held
    /// exclusively by the first open already.
    pub(crate) fn use_direct_io(&mut self) {
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&self.path);
        match opened {
            Ok(f) => self.direct = Some(f),
            Err(e) => tracing::debug!(path = %self.path.display(), "no O_DIRECT: {e}"),
        }
    }

    /// The O_DIRECT file when a transfer of `len` bytes from `buf` at
    /// `offset` can use it.
    fn direct_for(&self, buf: &[u8], offset: u64) -> Option<&File> {
        let a = buffers::ALIGN;
        let aligned = (buf.as_ptr() as usize).is_multiple_of(a)
            && buf.len().is_multiple_of(a)
            && offset.is_multiple_of(a as u64);
        self.direct.as_ref().filter(|_| aligned && !buf.is_empty())
    }

    /// Write a chunk: with O_DIRECT when it is aligned, else as
    /// [`Disk::write_at`]. Durable only after [`Disk::sync_data`], like any write.
    pub(crate) fn write_chunk(&self, buf: &[u8], offset: u64) -> Result<()> {
        if let Some(f) = self.direct_for(buf, offset) {
            match f.write_all_at(buf, offset) {
                Ok(()) => return Ok(()),
                // Alignment the device does not take: the page cache does.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => {
                    return Err(map_write_err(
                        e,
                        format!(
                            "writing {} bytes to {} at offset {offset}",
                            buf.len(),
                            self.path.display()
                        ),
                    ))
                }
            }
        }
        self.write_at(buf, offset)
    }

    /// Read a chunk: from the device with O_DIRECT when it is aligned, else
    /// as [`Disk::read_at`].
    pub(crate) fn read_chunk(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if let Some(f) = self.direct_for(buf, offset) {
            match f.read_exact_at(buf, offset) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "reading {} bytes of {} at offset {offset}",
                            buf.len(),
                            self.path.display()
                        )
                    })
                }
            }
        }
        self.read_at(buf, offset)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Read exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file.read_exact_at(buf, offset).with_context(|| {
            format!(
                "reading {} bytes of {} at offset {offset}",
                buf.len(),
                self.path.display()
            )
        })
    }

    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file.write_all_at(buf, offset).map_err(|e| {
            map_write_err(
                e,
                format!(
                    "writing {} bytes to {} at offset {offset}",
                    buf.len(),
                    self.path.display()
                ),
            )
        })
    }

    /// Make `len` bytes at `offset` read as zeros: a hole in a file, zeroes
    /// on a device (discard is not guaranteed to zero, so it is not used).
    pub(crate) fn zero_range(&self, offset: u64, len: usize) -> Result<()> {
        if !self.block_device {
            use nix::fcntl::{fallocate, FallocateFlags};
            let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            if fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&self.file),
                flags,
                offset as i64,
                len as i64,
            )
            .is_ok()
            {
                return Ok(());
            }
        }
        let zeros = vec![0u8; len.min(1 << 20)];
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(zeros.len());
            self.write_at(&zeros[..n], offset + done as u64)?;
            done += n;
        }
        Ok(())
    }

    /// Make written data durable (fdatasync).
    pub fn sync_data(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| map_write_err(e, format!("flushing {}", self.path.display())))
    }
}

fn map_write_err(e: std::io::Error, what: String) -> anyhow::Error {
    let code = match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorCode::TargetFull,
        // The file system cannot hold a file that large (ext4: 16 TiB).
        Some(libc::EFBIG) => {
            return coded(
                ErrorCode::TargetTooSmall,
                format!("{what}: {e}: the file system cannot hold a file this large; use a file system that can (xfs) or a target device"),
            )
        }
        _ => ErrorCode::TargetWriteFailed,
    };
    coded(code, format!("{what}: {e}"))
}

/// A byte count for people: `20.0 TiB`, `512.0 MiB`, `17 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// BLAKE3 of every chunk of the first `size` bytes of `disk`, read on two
/// threads.
pub fn hash_chunks(
    disk: &Disk,
    size: u64,
    chunk_size: u32,
    range: std::ops::Range<u64>,
) -> Result<Vec<[u8; 32]>> {
    reread_chunks(disk, size, chunk_size, range, &|_, data| {
        *blake3::hash(data).as_bytes()
    })
}

/// Read every chunk of `range` (of the first `size` bytes of `disk`) on
/// two threads and map each, with its index, through `f`; in order.
pub(crate) fn reread_chunks<R: Send>(
    disk: &Disk,
    size: u64,
    chunk_size: u32,
    range: std::ops::Range<u64>,
    f: &(dyn Fn(u64, &[u8]) -> R + Sync),
) -> Result<Vec<R>> {
    let threads = 2u64;
    let per = (range.end.saturating_sub(range.start))
        .div_ceil(threads)
        .max(1);
    let parts: Vec<Result<Vec<R>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let from = (range.start + t * per).min(range.end);
                let to = (range.start + (t + 1) * per).min(range.end);
                s.spawn(move || -> Result<Vec<R>> {
                    let mut buf = buffers::BufPool::new(chunk_size as usize, 1).get(0);
                    let mut out = Vec::with_capacity((to - from) as usize);
                    for i in from..to {
                        let len = chunk_len(size, chunk_size, i);
                        buf.set_len(len);
                        disk.read_chunk(&mut buf, i * u64::from(chunk_size))
                            .with_context(|| format!("reading chunk {i}"))?;
                        out.push(f(i, &buf));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("hashing thread panicked")))
            })
            .collect()
    });
    let mut all = Vec::with_capacity((range.end - range.start) as usize);
    for p in parts {
        all.extend(p?);
    }
    Ok(all)
}

/// Re-read a whole disk and compute its digest, window by window.
pub fn read_digest(disk: &Disk, size: u64, chunk_size: u32) -> Result<[u8; 32]> {
    let mut d = DiskDigester::new(size, chunk_size);
    for w in crate::job::ledger::windows(chunk_count(size, chunk_size)) {
        for h in hash_chunks(disk, size, chunk_size, w)? {
            d.push(&h);
        }
    }
    Ok(d.finish())
}

/// Replace `path` with `bytes` atomically and durably: a temporary file
/// beside it (mode 0600), fsynced, renamed over it, the directory fsynced.
/// A reader sees the old content or the new, never a part.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("flushing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_dir(path)
}

/// Create a directory (and its missing parents) that only its owner may
/// enter, mode 0700, or tighten an existing one to that: the state
/// directory and its disks hold the migrated server's data, keys and tokens.
pub(crate) fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let meta = std::fs::metadata(dir).with_context(|| format!("inspecting {}", dir.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private (mode 0700)", dir.display()))?;
    }
    Ok(())
}

/// Give an open file exactly `mode`: a file that existed before keeps its
/// old mode through `open`, whatever mode `open` was asked for.
pub(crate) fn set_mode(file: &File, path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = file
        .metadata()
        .with_context(|| format!("inspecting {}", path.display()))?;
    if meta.permissions().mode() & 0o7777 != mode {
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {} to {mode:04o}", path.display()))?;
    }
    Ok(())
}

/// fsync the directory holding `path`, so a new file's entry is durable.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        let d = File::open(dir).with_context(|| format!("opening directory {}", dir.display()))?;
        d.sync_all()
            .with_context(|| format!("flushing directory {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_arithmetic() {
        assert_eq!(chunk_count(10, 4), 3);
        assert_eq!(chunk_len(10, 4, 2), 2);
        assert_eq!(chunk_len(8, 4, 1), 4);
        assert_eq!(chunk_count(0, 4), 0);
    }

    #[test]
    fn zero_detection() {
        let mut b = vec![0u8; 4099];
        assert!(is_zero(&b));
        b[4098] = 1;
        assert!(!is_zero(&b));
        b[4098] = 0;
        b[17] = 1;
        assert!(!is_zero(&b));
        assert_eq!(zero_hash(4099), *blake3::hash(&vec![0u8; 4099]).as_bytes());
        assert_eq!(zero_hash(5), *blake3::hash(&[0u8; 5]).as_bytes());
    }

    #[test]
    fn images_and_their_directory_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let disks = dir.path().join("state/disks");
        let p = disks.join("d.img");
        Disk::create_sparse(&p, 4096).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(&disks), 0o700);
        assert_eq!(mode(&dir.path().join("state")), 0o700);
        // An image left by an older version, readable by all, is tightened.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&disks, std::fs::Permissions::from_mode(0o755)).unwrap();
        Disk::create_sparse(&p, 4096).unwrap();
        assert_eq!((mode(&p), mode(&disks)), (0o600, 0o700));
        let a = dir.path().join("a.json");
        write_atomic(&a, b"{}").unwrap();
        assert_eq!(mode(&a), 0o600);
    }

    #[test]
    fn zero_range_clears_old_data_in_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.img");
        let d = Disk::create_sparse(&p, 1 << 20).unwrap();
        d.write_at(&[0xaa; 8192], 4096).unwrap();
        d.zero_range(4096, 8192).unwrap();
        let mut buf = vec![1u8; 8192];
        d.read_at(&mut buf, 4096).unwrap();
        assert!(is_zero(&buf));
        assert_eq!(d.size(), 1 << 20);
    }
}
