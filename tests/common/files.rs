//! Helpers of the file-mode root suites: a tmpfs for big trees, the cached
//! Debian tree, and rsync's comparison of two trees.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh(script: &str) -> String {
    run(Command::new("sh").args(["-euc", script]))
}

/// A tmpfs mounted for the test, unmounted at the end.
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0755"))
            .arg("tmpfs")
            .arg(dir.path()));
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// The cached Debian root file system of `scripts/rootfs.sh bios`.
pub fn rootfs_tarball() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cache = std::env::var("FERRY_CACHE").unwrap_or_else(|_| "/var/cache/ferry-test".to_owned());
    let out = run(Command::new(repo.join("scripts/rootfs.sh"))
        .arg("bios")
        .env("FERRY_CACHE", cache));
    PathBuf::from(out.trim())
}

/// Unpack the Debian tree into `dir` (which may hold mount points).
pub fn unpack_debian(dir: &Path) {
    run(Command::new("tar")
        .args([
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "-I",
            "zstd",
            "-xpf",
        ])
        .arg(rootfs_tarball())
        .arg("-C")
        .arg(dir));
}

/// rsync's own listing of what differs between the trees: empty when
/// they are equal (with `--delete`, extra paths on the target count too).
pub fn differences(src: &Path, dst: &Path, extra: &[&str]) -> String {
    let out = Command::new("rsync")
        .args(["-aHAXn", "--checksum", "--itemize-changes", "--numeric-ids"])
        .args(extra)
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rsync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A disk image attached to a loop device with its partition nodes
/// (added by BLKPG: this kernel parses no partition table by itself).
pub struct LoopDisk {
    pub dev: String,
}

impl LoopDisk {
    pub fn attach(image: &Path) -> LoopDisk {
        let dev = run(Command::new("losetup")
            .args(["-f", "--show", "-P"])
            .arg(image))
        .trim()
        .to_owned();
        let disk = LoopDisk { dev };
        if !Path::new(&disk.part(1)).exists() {
            run(Command::new("partx").args(["-a", &disk.dev]));
        }
        disk
    }

    /// The node of partition `n`.
    pub fn part(&self, n: usize) -> String {
        format!("{}p{n}", self.dev)
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("partx").args(["-d", &self.dev]).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// A mount made by the test, unmounted when dropped.
pub struct Mounted(pub PathBuf);

impl Mounted {
    pub fn new(dev: &str, dir: &Path, opts: &str) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        run(Command::new("mount").args(["-o", opts, dev]).arg(dir));
        Mounted(dir.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
