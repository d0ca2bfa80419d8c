//! The sender's release, served to source servers on the control port.
//!
//! A source server behind the usual firewall rule reaches only the
//! appliance (8080 and 8703 outbound), so the appliance carries the release
//! that `scripts/release.sh` made and serves it openly at
//! `GET /v1/sender/<file>`; `/v1/identity` names the file and its SHA-256,
//! which the source side checks (against what the control plane gave it)
//! before it runs the binary. The release is a public program, not job
//! detail, so it needs no token.
//!
//! The directory holds the tarball and the `SHA256SUMS` naming it. It is
//! read and checked once, at start: a tarball that does not match its sum is
//! refused then, never served.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Where the baked appliance image keeps the release.
pub const DEFAULT_DIR: &str = "/usr/lib/ferry/sender";

/// What `/v1/identity` tells of the release (`sender`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SenderRelease {
    /// The tarball's name, e.g. `ferry-0.1.0-x86_64-linux.tar.gz`.
    pub file: String,
    /// SHA-256 of the tarball, hex.
    pub sha256: String,
    pub bytes: u64,
    /// Where to fetch it on this port: `/v1/sender/<file>`.
    pub path: String,
}

/// The release, checked and held in memory (a few MB) for serving.
#[derive(Debug, Clone)]
pub struct SenderFiles {
    pub release: SenderRelease,
    pub tarball: Bytes,
}

impl SenderFiles {
    /// The release in `dir` as `SHA256SUMS` names it; `None` when `dir` is
    /// missing and `required` is false (an appliance built without one).
    pub fn load(dir: &Path, required: bool) -> Result<Option<SenderFiles>> {
        if !required && !dir.exists() {
            return Ok(None);
        }
        let sums_path = dir.join("SHA256SUMS");
        let sums = std::fs::read_to_string(&sums_path).with_context(|| {
            format!(
                "reading {} (the sender's release: scripts/release.sh writes it beside the tarball)",
                sums_path.display()
            )
        })?;
        let (file, want) =
            tarball_of(&sums).with_context(|| format!("reading {}", sums_path.display()))?;
        let path: PathBuf = dir.join(&file);
        let tarball =
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let got = hex::encode(Sha256::digest(&tarball));
        if got != want {
            bail!(
                "{} does not match {}: SHA-256 {got}, listed {want}; the release is damaged or \
                 was replaced (run scripts/release.sh again and copy both files)",
                path.display(),
                sums_path.display()
            );
        }
        Ok(Some(SenderFiles {
            release: SenderRelease {
                path: format!("/v1/sender/{file}"),
                bytes: tarball.len() as u64,
                sha256: got,
                file,
            },
            tarball: Bytes::from(tarball),
        }))
    }
}

/// The one tarball a `SHA256SUMS` text names: (file, hex sum). Lines are
/// `<64 hex digits>  <name>` (or ` *<name>`, binary mode); the name must be
/// a plain file name ending in `.tar.gz`.
fn tarball_of(sums: &str) -> Result<(String, String)> {
    let mut found = None;
    for (i, line) in sums.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let (sum, rest) = line
            .split_once(' ')
            .with_context(|| format!("line {}: not `<sha256>  <file>`", i + 1))?;
        let name = rest
            .strip_prefix(' ')
            .or_else(|| rest.strip_prefix('*'))
            .with_context(|| format!("line {}: not `<sha256>  <file>`", i + 1))?;
        if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("line {}: {sum:?} is not a SHA-256 in hex", i + 1);
        }
        if !name.ends_with(".tar.gz") {
            continue;
        }
        if name.contains('/') || name.starts_with('.') {
            bail!("line {}: {name:?} is not a plain file name", i + 1);
        }
        if found.is_some() {
            bail!("more than one tarball is listed (line {})", i + 1);
        }
        found = Some((name.to_owned(), sum.to_ascii_lowercase()));
    }
    found.context("no tarball (*.tar.gz) is listed")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUM: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn sums_name_one_tarball() {
        let text = format!("{SUM}  ferry-0.1.0-x86_64-linux.tar.gz\n");
        assert_eq!(
            tarball_of(&text).unwrap(),
            ("ferry-0.1.0-x86_64-linux.tar.gz".into(), SUM.into())
        );
        let binary_mode = format!("{}  other.txt\n{} *f.tar.gz\n", SUM, SUM.to_uppercase());
        assert_eq!(
            tarball_of(&binary_mode).unwrap(),
            ("f.tar.gz".into(), SUM.into())
        );
    }

    #[test]
    fn sums_refusals_say_why() {
        let cases = [
            ("", "no tarball (*.tar.gz) is listed"),
            ("abc  f.tar.gz\n", "line 1: \"abc\" is not a SHA-256 in hex"),
            (
                &format!("{SUM}  ../f.tar.gz\n"),
                "line 1: \"../f.tar.gz\" is not a plain file name",
            ),
            (
                &format!("{SUM}  a.tar.gz\n{SUM}  b.tar.gz\n"),
                "more than one tarball is listed (line 2)",
            ),
            ("nospace\n", "line 1: not `<sha256>  <file>`"),
        ];
        for (text, want) in cases {
            let err = tarball_of(text).unwrap_err();
            assert_eq!(format!("{err:#}"), want, "{text:?}");
        }
    }

    #[test]
    fn a_tarball_that_does_not_match_its_sum_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.tar.gz"), b"test").unwrap();
        // SHA-256 of "test".
        std::fs::write(dir.path().join("SHA256SUMS"), format!("{SUM}  f.tar.gz\n")).unwrap();
        let ok = SenderFiles::load(dir.path(), true).unwrap().unwrap();
        assert_eq!(
            ok.release,
            SenderRelease {
                file: "f.tar.gz".into(),
                sha256: SUM.into(),
                bytes: 4,
                path: "/v1/sender/f.tar.gz".into()
            }
        );
        std::fs::write(dir.path().join("f.tar.gz"), b"tesT").unwrap();
        let err = format!("{:#}", SenderFiles::load(dir.path(), true).unwrap_err());
        assert!(err.contains("does not match"), "{err}");
        assert!(err.contains(SUM), "{err}");
    }

    #[test]
    fn a_missing_directory_is_none_unless_required() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("none");
        assert!(SenderFiles::load(&gone, false).unwrap().is_none());
        let err = format!("{:#}", SenderFiles::load(&gone, true).unwrap_err());
        assert!(err.contains("SHA256SUMS"), "{err}");
    }
}
