//! The release for source servers (`scripts/release.sh`): a binary that
//! needs no glibc symbol newer than 2.17 and no library but glibc's, under
//! 20 MB, packed with its licences and README, named by `SHA256SUMS`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;

use crate::common::release;
use sha2::{Digest, Sha256};

fn stdout(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `GLIBC_2.17` → (2, 17).
fn glibc_versions(objdump: &str) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = objdump
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|w| {
            let mut it = w.split('.');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn glibc_versions_are_read_from_objdump_lines() {
    let text = "0000000000000000      DF *UND*\t0000000000000000 (GLIBC_2.2.5) memcpy\n\
                0000000000000000      DF *UND*\t0000000000000000  GLIBC_2.34  __libc_start_main\n";
    assert_eq!(glibc_versions(text), [(2, 2), (2, 34)]);
}

#[test]
fn the_released_binary_needs_nothing_newer_than_glibc_2_17() {
    let r = release::built();
    let symbols = stdout(Command::new("objdump").arg("-T").arg(&r.binary));
    let versions = glibc_versions(&symbols);
    assert!(
        !versions.is_empty(),
        "no glibc symbol versions read:\n{symbols}"
    );
    let newest = *versions.last().unwrap();
    assert!(
        newest <= (2, 17),
        "the release needs GLIBC_{}.{}: {:?}",
        newest.0,
        newest.1,
        symbols
            .lines()
            .filter(|l| glibc_versions(l).iter().any(|v| *v > (2, 17)))
            .collect::<Vec<_>>()
    );
    let headers = stdout(Command::new("objdump").arg("-p").arg(&r.binary));
    let needed: Vec<&str> = headers
        .lines()
        .filter_map(|l| l.trim().strip_prefix("NEEDED"))
        .map(str::trim)
        .collect();
    for lib in &needed {
        assert!(
            [
                "libc.so.6",
                "libm.so.6",
                "libpthread.so.0",
                "libdl.so.2",
                "librt.so.1"
            ]
            .contains(lib)
                || lib.starts_with("ld-linux"),
            "the release needs {lib}: {needed:?}"
        );
    }
    let size = std::fs::metadata(&r.binary).unwrap().len();
    assert!(size < 20 << 20, "the release is {size} bytes");
    let version = stdout(Command::new(&r.binary).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("ferry {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_tarball_holds_the_binary_its_licences_and_a_readme_and_matches_its_sum() {
    let r = release::built();
    let bytes = std::fs::read(&r.tarball).unwrap();
    assert_eq!(hex::encode(Sha256::digest(&bytes)), r.sha256);
    let name = r
        .tarball
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".tar.gz")
        .to_owned();
    assert_eq!(
        name,
        format!("ferry-{}-x86_64-linux", env!("CARGO_PKG_VERSION"))
    );
    let listing = stdout(Command::new("tar").arg("-tzvf").arg(&r.tarball));
    let mut entries: Vec<String> = listing
        .lines()
        .map(|l| l.split_whitespace().last().unwrap().to_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            format!("{name}/"),
            format!("{name}/LICENSES.txt"),
            format!("{name}/README.txt"),
            format!("{name}/ferry"),
        ]
    );
    // Owned by root, the same whoever built it.
    assert!(listing.lines().all(|l| l.contains(" 0/0 ")), "{listing}");

    let dir = tempfile::tempdir().unwrap();
    stdout(
        Command::new("tar")
            .arg("-xzf")
            .arg(&r.tarball)
            .arg("-C")
            .arg(dir.path()),
    );
    let unpacked = dir.path().join(&name);
    assert_eq!(
        std::fs::read(unpacked.join("ferry")).unwrap(),
        std::fs::read(&r.binary).unwrap()
    );
    let licences = std::fs::read_to_string(unpacked.join("LICENSES.txt")).unwrap();
    for crate_name in ["ring ", "zstd-sys ", "blake3 ", "rustls ", "tokio "] {
        assert!(
            licences.lines().any(|l| l.starts_with(crate_name)),
            "{crate_name} is not in LICENSES.txt"
        );
    }
    assert!(licences.contains("Apache License"), "no licence text");
    let readme = std::fs::read_to_string(unpacked.join("README.txt")).unwrap();
    for want in ["glibc 2.17", "sha256sum", "./ferry check", "./ferry send"] {
        assert!(
            readme.contains(want),
            "{want} is not in README.txt:\n{readme}"
        );
    }
}
