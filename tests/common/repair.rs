//! Helpers for the repair engine's root tests: the source image, hashes of
//! a whole tree, the ferry binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferry::cmd::Cmd;
use sha2::{Digest, Sha256};

/// Root tests skip (with a message) when not run as root; CI is root.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A private copy of the cached source image `variant` (see
/// scripts/make-source-image.sh) in `dir`, so the cache stays pristine.
/// Returns the copies of its disks, disk0 first.
pub fn source_image(variant: &str, dir: &Path) -> Vec<PathBuf> {
    let out = Cmd::new("bash")
        .arg(repo().join("scripts/make-source-image.sh"))
        .arg(variant)
        .run()
        .unwrap_or_else(|e| panic!("building the source image: {e:#}"));
    let src = PathBuf::from(out.stdout_text().trim());
    let mut disks = Vec::new();
    for i in 0.. {
        let s = src.join(format!("disk{i}.img"));
        if !s.exists() {
            break;
        }
        let d = dir.join(format!("disk{i}.img"));
        Cmd::new("cp")
            .arg("--sparse=always")
            .arg(&s)
            .arg(&d)
            .run()
            .unwrap_or_else(|e| panic!("{e:#}"));
        disks.push(d);
    }
    assert!(!disks.is_empty(), "no disk0.img in {}", src.display());
    disks
}

/// Every regular file's SHA-256 and every symlink's target under `root`
/// (not crossing into other file systems' special trees).
pub fn tree_hashes(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let rel = p
                .strip_prefix(root)
                .expect("walking below the root")
                .to_owned();
            if ["proc", "sys", "dev", "run"]
                .iter()
                .any(|s| rel == Path::new(s))
            {
                continue;
            }
            if m.file_type().is_symlink() {
                out.insert(
                    rel,
                    format!(
                        "-> {}",
                        std::fs::read_link(&p).expect("reading a link").display()
                    ),
                );
            } else if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                let bytes = std::fs::read(&p).expect("reading a file");
                out.insert(rel, hex::encode(Sha256::digest(&bytes)));
            }
        }
    }
    out
}

/// Run the ferry binary; (success, stdout, stderr).
pub fn ferry(args: &[&str]) -> (bool, String, String) {
    let (status, out) = Cmd::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{e:#}"));
    (
        status.success(),
        out.stdout_text(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
