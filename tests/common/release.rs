//! The sender's release as `scripts/release.sh` makes it (built once per
//! test process, and only when the source changed): the tarball, its
//! `SHA256SUMS`, and the binary unpacked beside them.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::common::boot::repo_root;

#[derive(Debug, Clone)]
pub struct Release {
    /// `dist/` of the repository.
    pub dir: PathBuf,
    /// `dist/ferry-<version>-x86_64-linux.tar.gz`.
    pub tarball: PathBuf,
    /// The SHA-256 `dist/SHA256SUMS` gives the tarball, hex.
    pub sha256: String,
    /// The released binary, unpacked.
    pub binary: PathBuf,
}

/// The release of the source this test runs, made by `scripts/release.sh`
/// (which takes a lock and leaves an up-to-date release as it is).
pub fn built() -> &'static Release {
    static RELEASE: OnceLock<Release> = OnceLock::new();
    RELEASE.get_or_init(|| {
        let out = std::process::Command::new("bash")
            .arg(repo_root().join("scripts/release.sh"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("running scripts/release.sh");
        assert!(out.status.success(), "scripts/release.sh failed");
        let tarball = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let dir = repo_root().join("dist");
        let sums =
            std::fs::read_to_string(dir.join("SHA256SUMS")).expect("reading dist/SHA256SUMS");
        let name = tarball.file_name().unwrap().to_string_lossy().into_owned();
        let sha256 = sums
            .lines()
            .find_map(|l| l.strip_suffix(&format!("  {name}")))
            .unwrap_or_else(|| panic!("dist/SHA256SUMS does not name {name}: {sums}"))
            .to_owned();
        let binary = dir.join(name.trim_end_matches(".tar.gz")).join("ferry");
        assert!(binary.is_file(), "no binary at {}", binary.display());
        Release {
            dir,
            tarball,
            sha256,
            binary,
        }
    })
}
