//! File mode's entries, shared by the sender (which walks a tree into them)
//! and the appliance (which writes them beneath a target root).
//!
//! An entry names its path relative to the root of its file system, as raw
//! bytes: Linux file names are bytes, not UTF-8 (a name with a newline or
//! invalid UTF-8 is migrated as it is). [`check_path`] is the one place
//! that decides which paths the wire may carry.

use thiserror::Error;

/// Longest path of an entry (Linux's PATH_MAX).
pub(crate) const MAX_PATH: usize = 4096;
/// Longest component of a path (NAME_MAX).
pub(crate) const MAX_NAME: usize = 255;
/// Longest symlink target.
pub(crate) const MAX_TARGET: usize = 4096;
/// Most extended attributes of one entry, and their bytes all together
/// (names and values): the kernel's own limit for one inode is 64 KiB of
/// values on ext4 and XFS.
pub(crate) const MAX_XATTRS: usize = 128;
pub(crate) const MAX_XATTR_BYTES: usize = 256 << 10;
/// Largest piece of a file's content in one frame.
pub(crate) const FILE_CHUNK: usize = 1 << 20;
/// Entries in one page of a tree manifest, and its bytes (paths and stamps).
pub(crate) const MANIFEST_PAGE_ENTRIES: usize = 4096;
pub(crate) const MANIFEST_PAGE_BYTES: usize = 256 << 10;
/// Most file systems (trees) of one job.
pub const MAX_TREES: u32 = 64;
/// The appliance's staging directory beneath each target root: files are
/// written there and renamed into place, so a path holds either the old
/// content or the new, whatever is interrupted. No source path may use it.
pub(crate) const STAGING: &[u8] = b".ferry-partial";

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// Another name of a file sent before (its `target` is that path).
    HardLink,
    CharDev,
    BlockDev,
    Fifo,
}

impl Kind {
    pub(crate) fn wire_code(self) -> u8 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::Symlink => 3,
            Kind::HardLink => 4,
            Kind::CharDev => 5,
            Kind::BlockDev => 6,
            Kind::Fifo => 7,
        }
    }

    pub(crate) fn from_wire_code(c: u8) -> Option<Kind> {
        Some(match c {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::HardLink,
            5 => Kind::CharDev,
            6 => Kind::BlockDev,
            7 => Kind::Fifo,
            _ => return None,
        })
    }
}

/// One file, directory, link or node of a tree, with everything a booting
/// system needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the file system's root; `.` is the root itself.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// A regular file's length (its content follows the entry).
    pub size: u64,
    pub mtime: Time,
    /// The source's ctime: changes with content and with any metadata
    /// (mode, owner, xattrs, link count), so a rerun that finds it equal in
    /// the ledger has nothing to send for the entry.
    pub ctime: Time,
    /// A device node's number.
    pub rdev: u64,
    /// A symlink's target (any bytes), or a hard link's other path.
    pub target: Vec<u8>,
    /// Extended attributes (`security.*`, `system.posix_acl_*`, `trusted.*`,
    /// `user.*`), names and raw values.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

impl Entry {
    /// What the ledger records of a committed entry, and what a rerun
    /// compares.
    pub fn stamp(&self, hash: [u8; 32]) -> Stamp {
        Stamp {
            kind: self.kind,
            size: self.size,
            mtime: self.mtime,
            ctime: self.ctime,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            hash,
        }
    }
}

/// A committed entry as the ledger keeps it: enough to tell whether the
/// source's entry changed since, and the content's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub kind: Kind,
    pub size: u64,
    pub mtime: Time,
    pub ctime: Time,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// A file's content hash ([`ContentHash`]); zeros for other kinds.
    pub hash: [u8; 32],
}

/// Bytes of an encoded [`Stamp`].
pub(crate) const STAMP_LEN: usize = 1 + 8 + 12 + 12 + 4 + 4 + 4 + 32;

impl Stamp {
    /// Whether the source's entry is still what was committed (the hash
    /// aside: reading the content to hash it is what a rerun avoids).
    pub(crate) fn same_as(&self, other: &Stamp) -> bool {
        (
            self.kind, self.size, self.mtime, self.ctime, self.mode, self.uid, self.gid,
        ) == (
            other.kind,
            other.size,
            other.mtime,
            other.ctime,
            other.mode,
            other.uid,
            other.gid,
        )
    }

    pub fn to_bytes(&self) -> [u8; STAMP_LEN] {
        let mut b = [0u8; STAMP_LEN];
        b[0] = self.kind.wire_code();
        b[1..9].copy_from_slice(&self.size.to_be_bytes());
        b[9..17].copy_from_slice(&self.mtime.sec.to_be_bytes());
        b[17..21].copy_from_slice(&self.mtime.nsec.to_be_bytes());
        b[21..29].copy_from_slice(&self.ctime.sec.to_be_bytes());
        b[29..33].copy_from_slice(&self.ctime.nsec.to_be_bytes());
        b[33..37].copy_from_slice(&self.mode.to_be_bytes());
        b[37..41].copy_from_slice(&self.uid.to_be_bytes());
        b[41..45].copy_from_slice(&self.gid.to_be_bytes());
        b[45..77].copy_from_slice(&self.hash);
        b
    }

    pub(crate) fn from_bytes(b: &[u8]) -> Option<Stamp> {
        if b.len() != STAMP_LEN {
            return None;
        }
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap_or_default());
        Some(Stamp {
            kind: Kind::from_wire_code(b[0])?,
            size: u64_at(1),
            mtime: Time {
                sec: u64_at(9) as i64,
                nsec: u32_at(17),
            },
            ctime: Time {
                sec: u64_at(21) as i64,
                nsec: u32_at(29),
            },
            mode: u32_at(33),
            uid: u32_at(37),
            gid: u32_at(41),
            hash: b[45..77].try_into().ok()?,
        })
    }
}

/// The hash of a file's content as sent: each piece's offset, length and
/// bytes, then the file's length. Holes are not hashed (they are not
/// read); a piece sent twice or out of order is refused before it is.
pub struct ContentHash(blake3::Hasher);

impl Default for ContentHash {
    fn default() -> Self {
        ContentHash(blake3::Hasher::new())
    }
}

impl ContentHash {
    pub fn piece(&mut self, offset: u64, data: &[u8]) {
        self.0.update(&offset.to_be_bytes());
        self.0.update(&(data.len() as u64).to_be_bytes());
        self.0.update(data);
    }

    pub fn finish(mut self, size: u64) -> [u8; 32] {
        self.0.update(b"end");
        self.0.update(&size.to_be_bytes());
        *self.0.finalize().as_bytes()
    }
}

/// Why a path from the wire is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("the path is empty")]
    Empty,
    #[error("the path is longer than {MAX_PATH} bytes")]
    TooLong,
    #[error("the path holds a NUL byte")]
    Nul,
    #[error("the path is absolute")]
    Absolute,
    #[error("the path has an empty component")]
    EmptyComponent,
    #[error("the path has a `..` component")]
    DotDot,
    #[error("the path has a `.` component")]
    Dot,
    #[error("a component of the path is longer than {MAX_NAME} bytes")]
    NameTooLong,
    #[error("the path is the appliance's staging directory")]
    Staging,
}

/// Check a path from the wire: relative, no `..`, `.` or empty components,
/// no NUL, bounded. `.` alone is the root (a directory entry only).
pub fn check_path(path: &[u8]) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH {
        return Err(PathError::TooLong);
    }
    if path.contains(&0) {
        return Err(PathError::Nul);
    }
    if path == b"." {
        return Ok(());
    }
    if path[0] == b'/' {
        return Err(PathError::Absolute);
    }
    for (i, c) in path.split(|&b| b == b'/').enumerate() {
        match c {
            b"" => return Err(PathError::EmptyComponent),
            b".." => return Err(PathError::DotDot),
            b"." => return Err(PathError::Dot),
            c if c.len() > MAX_NAME => return Err(PathError::NameTooLong),
            c if i == 0 && c == STAGING => return Err(PathError::Staging),
            _ => {}
        }
    }
    Ok(())
}

/// A path's parent (`.` for a top-level name) and its last component.
pub(crate) fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b".", path),
    }
}

/// A path shown to a person: invalid UTF-8 and control characters escaped.
pub fn display(path: &[u8]) -> String {
    let mut out = String::new();
    for chunk in path.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_from_the_wire() {
        let long = vec![b'a'; MAX_NAME + 1];
        let cases: [(&str, &[u8], Result<(), PathError>); 14] = [
            ("a name", b"etc", Ok(())),
            ("nested", b"etc/ssh/sshd_config", Ok(())),
            ("the root", b".", Ok(())),
            ("newline and invalid utf-8", b"a\nb/\xff\xfe", Ok(())),
            ("dot-dot alone", b"..", Err(PathError::DotDot)),
            ("dot-dot inside", b"etc/../../x", Err(PathError::DotDot)),
            ("dot inside", b"etc/./x", Err(PathError::Dot)),
            ("absolute", b"/etc/shadow", Err(PathError::Absolute)),
            ("empty", b"", Err(PathError::Empty)),
            ("double slash", b"etc//x", Err(PathError::EmptyComponent)),
            ("trailing slash", b"etc/", Err(PathError::EmptyComponent)),
            ("nul", b"etc\0/x", Err(PathError::Nul)),
            ("long name", &long, Err(PathError::NameTooLong)),
            ("staging", b".ferry-partial/x", Err(PathError::Staging)),
        ];
        for (name, path, want) in cases {
            assert_eq!(check_path(path), want, "{name}");
        }
        assert_eq!(
            check_path(&vec![b'a'; MAX_PATH + 1]),
            Err(PathError::TooLong)
        );
        assert_eq!(check_path(b"x/.ferry-partial"), Ok(()));
    }

    #[test]
    fn stamps_round_trip_and_compare_without_the_hash() {
        let s = Stamp {
            kind: Kind::File,
            size: 1 << 40,
            mtime: Time { sec: -5, nsec: 999 },
            ctime: Time {
                sec: 1_700_000_000,
                nsec: 1,
            },
            mode: 0o4755,
            uid: 1000,
            gid: 50,
            hash: [7; 32],
        };
        assert_eq!(Stamp::from_bytes(&s.to_bytes()), Some(s));
        assert!(s.same_as(&Stamp { hash: [0; 32], ..s }));
        assert!(!s.same_as(&Stamp { mode: 0o755, ..s }));
        assert_eq!(Stamp::from_bytes(&[1, 2]), None);
    }

    #[test]
    fn parents_and_display() {
        assert_eq!(split_parent(b"etc/ssh/x"), (&b"etc/ssh"[..], &b"x"[..]));
        assert_eq!(split_parent(b"etc"), (&b"."[..], &b"etc"[..]));
        assert_eq!(display(b"a\nb\xff"), "a\\nb\\xff");
    }
}
