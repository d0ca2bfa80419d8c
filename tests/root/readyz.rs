//! `/readyz` of a real `ferry serve` answers 503, saying why, while the
//! file system it receives data on is full: in embedded mode the state
//! directory's, with a configured target that is a file that target's.
//! Small tmpfs mounts are filled up; mounting needs root, and without it
//! the tests say so and check nothing. On such a mount too: embedded
//! disks that fit one by one but not together are refused before writing.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::common::serve::{target_config, Server};
use ferry::job::errors::ErrorCode;
use serde_json::Value;

/// A tmpfs of `mib` MiB at `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Write `path` until the file system has no space left.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0x5au8; 1 << 20];
    loop {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

fn readyz(s: &Server) -> (u16, Value) {
    let (status, body) = s.http("GET", "/readyz");
    (status, serde_json::from_str(&body).unwrap())
}

#[test]
fn readyz_is_503_while_the_state_directory_is_full() {
    need_root!("mounting a tmpfs");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _fs = Tmpfs::mount(&state, 64);
    let s = Server::start_job(&state, "127.0.0.1:0", &[]);
    let (status, body) = readyz(&s);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["space_left"], true);

    fill(&state.join("filler"));
    let (status, body) = readyz(&s);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["checks"]["space_left"], false);
    let reasons: Vec<&str> = body["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let full = reasons
        .iter()
        .find(|r| r.contains("is full"))
        .unwrap_or_else(|| panic!("no reason names the full file system: {body}"));
    assert!(
        full.starts_with(&format!(
            "the file system of the state directory (the ledger and the embedded disks) ({}) is full: ",
            state.display()
        )),
        "{full}"
    );
    // Healthy again once there is room.
    std::fs::remove_file(state.join("filler")).unwrap();
    let (status, body) = readyz(&s);
    assert_eq!(status, 200, "{body}");
    drop(s);
}

#[test]
fn readyz_is_503_while_a_target_files_file_system_is_full() {
    need_root!("mounting a tmpfs");
    let dir = tempfile::tempdir().unwrap();
    let disks = dir.path().join("disks");
    let _fs = Tmpfs::mount(&disks, 64);
    let target = disks.join("target.img");
    std::fs::File::create(&target)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let config = target_config(dir.path(), "job-token-0123456789abcdef", &[&target]);
    let s = Server::start_job(
        &dir.path().join("state"),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
    );
    assert_eq!(readyz(&s).0, 200);
    fill(&disks.join("filler"));
    let (status, body) = readyz(&s);
    assert_eq!(status, 503, "{body}");
    let reasons = body["reasons"].to_string();
    assert!(
        reasons.contains(&format!(
            "the file system of the target of disk 0 ({}) is full",
            target.display()
        )),
        "{body}"
    );
    drop(s);
}

/// A dense image of `mib` MiB (random bytes: nothing is skipped as zeros).
fn dense_image(path: &Path, mib: usize, seed: u64) {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bytes = vec![0u8; mib << 20];
    rng.fill_bytes(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

/// Embedded disks share the state directory's file system: two disks
/// that each fit its free space but not together are refused before a
/// byte is written (TARGET_TOO_SMALL, naming what the other disk still
/// needs), not accepted both to stop half-way with TARGET_FULL and the
/// job InError.
#[test]
fn embedded_disks_that_fit_one_by_one_but_not_together_are_refused_before_writing() {
    need_root!("mounting a tmpfs");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _fs = Tmpfs::mount(&state, 64);
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    dense_image(&a, 40, 1);
    dense_image(&b, 40, 2);
    let s = Server::start_job(&state, "127.0.0.1:0", &[]);
    let sent = s.send(&[&a, &b], &["--retries", "0"]);
    assert!(!sent.ok(), "the sender succeeded");
    let err = sent.stderr();
    let code = ErrorCode::TargetTooSmall;
    assert!(
        err.contains(&format!("{code}: {}", code.message())),
        "no {code} in:\n{err}"
    );
    assert!(
        err.contains("and the job's other disks still need 40.0 MiB (41943040 bytes) of it: disk "),
        "{err}"
    );
    assert!(!err.contains("TARGET_FULL"), "{err}");
    let job = s.job();
    assert_ne!(job["state"], "InError", "{job}");
    // Nothing was written beyond the image that fits: the file system
    // still has room for it.
    let used: u64 = std::fs::read_dir(state.join("disks"))
        .unwrap()
        .map(|e| {
            use std::os::unix::fs::MetadataExt;
            e.unwrap().metadata().unwrap().blocks() * 512
        })
        .sum();
    assert!(used <= 40 << 20, "{used} bytes written to the images");
}
