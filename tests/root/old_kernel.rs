//! The released sender (`scripts/release.sh`) as the oldest supported
//! source server runs it: on a kernel without any system call newer than
//! Linux 3.10 (a seccomp filter answers them `ENOSYS`). Block mode copies
//! a disk bit-exact, and freezes a mounted file system for its final pass
//! (the passes after the first read only what the change tracker names);
//! the same runs without the filter send the same bytes. File mode of a
//! live server under the same filter is in `filemode_live`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::old_kernel::refuse_newer_syscalls;
use crate::common::release;
use crate::common::serve::{file_hash, mixed_image, send_by, Sent, Server};
use crate::consistency::{LoopFs, ReadOnly};

/// `ferry send` by the released binary to `server`, on an old kernel or not.
fn send(server: &Server, disks: &[&Path], extra: &[&str], old_kernel: bool) -> Sent {
    send_by(
        &release::built().binary,
        &server.data,
        &server.token,
        &server.fingerprint,
        disks,
        extra,
        Duration::from_secs(900),
        |cmd| {
            if old_kernel {
                refuse_newer_syscalls(cmd)
            }
        },
    )
}

#[test]
fn the_filter_answers_a_newer_call_with_enosys() {
    // What the other tests rest on: getrandom(2) is Linux 3.17.
    let mut cmd = Command::new("python3");
    cmd.args(["-c", "import os; os.getrandom(1)"]);
    refuse_newer_syscalls(&mut cmd);
    let out = cmd.output().expect("python3 (scripts/packages.txt)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "getrandom ran under the filter");
    assert!(err.contains("[Errno 38] Function not implemented"), "{err}");
    let out = Command::new("python3")
        .args(["-c", "import os; os.getrandom(1)"])
        .output()
        .unwrap();
    assert!(out.status.success(), "getrandom fails without the filter");
}

#[test]
fn the_released_sender_copies_a_disk_bit_exact_on_a_linux_3_10_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.img");
    mixed_image(&source, 96, 7);
    let want = file_hash(&source);

    let old = Server::start(&dir.path().join("state-old"), &[]);
    let sent = send(&old, &[&source], &[], true);
    assert!(sent.ok(), "on Linux 3.10:\n{}", sent.stderr());
    assert_eq!(sent.report["disks"][0]["verified"], true, "{}", sent.report);
    assert_eq!(
        file_hash(&old.disk_path(0)),
        want,
        "the copy differs from the source"
    );

    let new = Server::start(&dir.path().join("state-new"), &[]);
    let sent = send(&new, &[&source], &[], false);
    assert!(sent.ok(), "{}", sent.stderr());
    assert_eq!(file_hash(&new.disk_path(0)), want);
}

#[test]
fn the_released_sender_freezes_a_mounted_file_system_on_a_linux_3_10_kernel() {
    need_root!("loop devices, mounts and FIFREEZE");
    let dir = tempfile::tempdir().unwrap();
    let ext4 = LoopFs::make(dir.path(), "ext4", 96, "");
    let data = ext4.mnt.join("data");
    std::fs::create_dir(&data).unwrap();
    for i in 0..24u64 {
        let bytes: Vec<u8> = (0..(97_000 + i * 3_001))
            .map(|j| (j.wrapping_mul(0x9e37_79b9).wrapping_add(i) >> 11) as u8)
            .collect();
        std::fs::write(data.join(format!("f{i:02}")), bytes).unwrap();
    }
    std::fs::write(
        ext4.mnt.join("unsynced"),
        b"in the page cache at the freeze\n",
    )
    .unwrap();

    let mut copies = Vec::new();
    for (name, old_kernel) in [("old", true), ("new", false)] {
        let server = Server::start(&dir.path().join(format!("state-{name}")), &[]);
        let sent = send(
            &server,
            &[&ext4.image],
            &["--consistency", "freeze"],
            old_kernel,
        );
        assert!(sent.ok(), "{name}:\n{}", sent.stderr());
        let report = &sent.report["consistency"]["disks"][0];
        let passes = report["passes"].as_array().unwrap();
        assert_eq!(passes.last().unwrap()["frozen"], true, "{name}: {report}");
        // The change tracker works with 3.10's calls: the passes after the
        // first read only what changed.
        for p in &passes[1..] {
            assert_eq!(p["tracked"], true, "{name}: {report}\n{}", sent.stderr());
        }
        assert_eq!(
            report["frozen"].as_array().unwrap().len(),
            1,
            "{name}: {report}"
        );
        assert_eq!(sent.report["disks"][0]["verified"], true, "{}", sent.report);
        copies.push(server);
    }
    // The file system was thawed after each send.
    std::fs::write(ext4.mnt.join("after"), b"writable\n").unwrap();

    // Each copy checks clean and holds the files, and the two hold the same.
    let mut mounted = Vec::new();
    for (i, server) in copies.iter().enumerate() {
        let out = Command::new("e2fsck")
            .arg("-fn")
            .arg(server.disk_path(0))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "copy {i}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        mounted.push(ReadOnly::mount(
            &server.disk_path(0),
            &dir.path().join(format!("copy-{i}")),
            ",noload",
        ));
    }
    for i in 0..24u64 {
        let name = format!("data/f{i:02}");
        let want = file_hash(&ext4.mnt.join(&name));
        for m in &mounted {
            assert_eq!(
                file_hash(&m.0.join(&name)),
                want,
                "{name} in {}",
                m.0.display()
            );
        }
    }
    for m in &mounted {
        assert_eq!(
            std::fs::read(m.0.join("unsynced")).unwrap(),
            b"in the page cache at the freeze\n"
        );
    }
    assert_eq!(
        crate::common::files::differences(&mounted[0].0, &mounted[1].0, &[]),
        "",
        "the copies made on 3.10 and on this kernel differ"
    );
}
