//! `/readyz` of a real `ferry serve` answers 503, saying why, while the
//! file system it receives data on is full: in embedded mode the state
//! directory's, with a configured target that is a file that target's.
//! Small tmpfs mounts are filled up; mounting needs root, and without it
//! the tests say so and check nothing.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

#[path = "common/serve.rs"]
mod harness;

use std::io::Write;
use std::path::{Path, PathBuf};

use harness::{target_config, Server};
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

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED: mounting a tmpfs needs root");
    false
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
    if !root() {
        return;
    }
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
    if !root() {
        return;
    }
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
