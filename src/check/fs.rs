//! File systems: what their superblocks say (read in-process, nothing is
//! mounted or run), and whether the appliance's kernel and tools can mount
//! and check them.

use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;

/// One file system of the system checked.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FsInfo {
    /// Where it is: a device node, or "disk N partition M".
    pub device: String,
    /// Its mount point in the system, when known.
    pub mount: Option<String>,
    /// blkid's type (`ext4`, `xfs`, `btrfs`, `vfat`, `ntfs`, `LVM2_member`).
    pub fstype: String,
    pub uuid: Option<String>,
    /// What the superblock says: `XFS V5`, ext4's feature names...
    pub format: Option<String>,
    /// Whether the appliance can mount it (kernel driver, or ntfs-3g).
    pub mountable: bool,
    /// The tool that checks it on the appliance, if installed.
    pub checker: Option<String>,
    /// Why it cannot be mounted or repaired, if it cannot.
    pub problem: Option<String>,
}

/// What a superblock says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub format: String,
    /// A reason the appliance cannot mount it.
    pub problem: Option<String>,
}

// ext2/3/4 incompatible features (the kernel refuses to mount a file system
// with one it does not know).
const EXT_INCOMPAT: &[(u32, &str)] = &[
    (0x1, "compression"),
    (0x2, "filetype"),
    (0x4, "needs_recovery"),
    (0x8, "journal_dev"),
    (0x10, "meta_bg"),
    (0x40, "extent"),
    (0x80, "64bit"),
    (0x100, "mmp"),
    (0x200, "flex_bg"),
    (0x400, "ea_inode"),
    (0x1000, "dirdata"),
    (0x2000, "metadata_csum_seed"),
    (0x4000, "large_dir"),
    (0x8000, "inline_data"),
    (0x10000, "encrypt"),
    (0x20000, "casefold"),
];
/// Incompatible features no mainline kernel mounts.
const EXT_NEVER: &[&str] = &["compression", "dirdata", "journal_dev"];
const EXT_RO_COMPAT: &[(u32, &str)] = &[
    (0x1, "sparse_super"),
    (0x2, "large_file"),
    (0x8, "huge_file"),
    (0x10, "uninit_bg"),
    (0x20, "dir_nlink"),
    (0x40, "extra_isize"),
    (0x100, "quota"),
    (0x200, "bigalloc"),
    (0x400, "metadata_csum"),
    (0x1000, "read-only"),
    (0x2000, "project"),
    (0x8000, "verity"),
    (0x10000, "orphan_present"),
];
const EXT_COMPAT: &[(u32, &str)] = &[
    (0x4, "has_journal"),
    (0x8, "ext_attr"),
    (0x10, "resize_inode"),
    (0x20, "dir_index"),
    (0x200, "sparse_super2"),
    (0x400, "fast_commit"),
    (0x1000, "orphan_file"),
];

fn u32_le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Read the superblock of the `fstype` file system at byte `offset` of
/// `dev`; None when the type has none ferry reads or it cannot be read.
pub fn superblock(dev: &Path, offset: u64, fstype: &str) -> Option<Superblock> {
    let f = std::fs::File::open(dev).ok()?;
    let mut b = vec![0u8; 1024];
    match fstype {
        "ext2" | "ext3" | "ext4" => {
            f.read_exact_at(&mut b, offset + 1024).ok()?;
            if b[0x38..0x3a] != [0x53, 0xef] {
                return None;
            }
            Some(ext(u32_le(&b, 0x5c), u32_le(&b, 0x60), u32_le(&b, 0x64)))
        }
        "xfs" => {
            f.read_exact_at(&mut b[..512], offset).ok()?;
            if &b[..4] != b"XFSB" {
                return None;
            }
            Some(xfs(u16::from_be_bytes([b[100], b[101]])))
        }
        _ => None,
    }
}

/// An ext file system's features.
pub fn ext(compat: u32, incompat: u32, ro_compat: u32) -> Superblock {
    let mut names = Vec::new();
    let mut unknown = Vec::new();
    for (flags, table, kind) in [
        (compat, EXT_COMPAT, "compat"),
        (incompat, EXT_INCOMPAT, "incompat"),
        (ro_compat, EXT_RO_COMPAT, "ro_compat"),
    ] {
        let mut rest = flags;
        for (bit, name) in table {
            if flags & bit != 0 {
                names.push(*name);
                rest &= !bit;
            }
        }
        // Unknown compat features are harmless by definition.
        if rest != 0 && kind != "compat" {
            unknown.push(format!("{kind} 0x{rest:x}"));
        }
    }
    let never: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| EXT_NEVER.contains(n))
        .collect();
    let problem = if !never.is_empty() {
        Some(format!(
            "it has the feature {} that the kernel does not mount",
            never.join(", ")
        ))
    } else if !unknown.is_empty() {
        Some(format!(
            "it has features this appliance does not know ({})",
            unknown.join(", ")
        ))
    } else {
        None
    };
    Superblock {
        format: format!("features {}", names.join(" ")),
        problem,
    }
}

/// An XFS by the version in its `sb_versionnum`.
pub fn xfs(versionnum: u16) -> Superblock {
    let v = versionnum & 0xf;
    Superblock {
        format: format!("XFS V{v}"),
        problem: (v < 5).then(|| {
            format!(
                "it is XFS V{v} (made without CRCs, crc=0), which is deprecated and which kernels built without XFS V4 support, the appliance's among them, do not mount"
            )
        }),
    }
}

/// Whether the running kernel knows the file system type (or ntfs-3g is
/// there for NTFS).
pub(crate) fn kernel_mounts(fstype: &str) -> bool {
    if fstype == "ntfs" {
        return crate::cmd::have("ntfs-3g");
    }
    if fstype == "vfat" {
        // The ESP is read and written in-process (fatfs): no driver needed.
        return true;
    }
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|t| {
        t.lines()
            .any(|l| l.split_whitespace().last() == Some(fstype))
    })
}

/// The checking tool of a type on the appliance, if installed.
pub fn checker(fstype: &str) -> Option<String> {
    let name = match fstype {
        "ext2" | "ext3" | "ext4" => "e2fsck",
        "xfs" => "xfs_repair",
        "vfat" => "fsck.vfat",
        "btrfs" => "btrfs",
        "ntfs" => "ntfsfix",
        _ => return None,
    };
    crate::cmd::have(name).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext_features_are_named_and_the_unmountable_ones_said() {
        // A Debian 12 mkfs.ext4: has_journal ext_attr resize_inode dir_index,
        // filetype extent 64bit flex_bg metadata_csum_seed, sparse_super ...
        let sb = ext(0x3c, 0x22c2, 0x46b);
        assert_eq!(
            sb.format,
            "features has_journal ext_attr resize_inode dir_index filetype extent 64bit flex_bg metadata_csum_seed sparse_super large_file huge_file dir_nlink extra_isize metadata_csum"
        );
        assert_eq!(sb.problem, None);
        let sb = ext(0, 0x1002, 0);
        assert_eq!(
            sb.problem.as_deref(),
            Some("it has the feature dirdata that the kernel does not mount")
        );
        let sb = ext(0x8000_0000, 0x8000_0002, 0);
        assert_eq!(
            sb.problem.as_deref(),
            Some("it has features this appliance does not know (incompat 0x80000000)")
        );
    }

    #[test]
    fn xfs_v4_is_a_problem_and_v5_is_not() {
        assert_eq!(xfs(0xb4a5).format, "XFS V5");
        assert_eq!(xfs(0xb4a5).problem, None);
        let v4 = xfs(0xb4a4);
        assert_eq!(v4.format, "XFS V4");
        assert!(v4
            .problem
            .unwrap()
            .starts_with("it is XFS V4 (made without CRCs"));
    }
}
