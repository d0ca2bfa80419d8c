//! The released sender inside an old userland on an old kernel: the
//! `bullseye-bios` source server (Debian 11, glibc 2.31) mounted as a
//! running system's tree in a private mount namespace, with the release's
//! binary copied onto its tmpfs `/run` and run through chroot, as on that
//! server, every system call newer than Linux 3.10 answering ENOSYS. `ferry check`
//! inspects the system from inside it, and `ferry send --mode file` sends
//! it live to a `ferry serve` on the host, which lays out, copies, repairs
//! and verifies it. A plain `cargo build` of ferry (this machine's glibc)
//! does not even start there; the release must.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::Command;

use crate::common::boot::SourceImage;
use crate::common::files::*;
use crate::common::release;
use crate::common::serve::*;

const MIB: u64 = 1 << 20;

/// What the commands inside the old system left in `out`.
fn read(out: &Path, name: &str) -> String {
    std::fs::read_to_string(out.join(name)).unwrap_or_default()
}

#[test]
fn the_released_sender_checks_and_sends_a_debian_11_server_from_inside_it() {
    need_root!("loop devices, mounts, chroot");
    let release = release::built();
    let src = SourceImage::build_stack("bullseye-bios").expect("building the Debian 11 server");
    let fs = Tmpfs::mount("6G");
    // A copy: the live system's mount changes its superblock, and the
    // cached image is shared with the boot suites.
    let image = fs.path().join("bullseye.img");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(&src.disks[0])
        .arg(&image));
    let disk = LoopDisk::attach(&image);
    let target = fs.path().join("target.img");
    std::fs::File::create(&target)
        .unwrap()
        .set_len(2048 * MIB)
        .unwrap();
    let token = "old-userland-token-0123456789abcd";
    let cfg = target_config(fs.path(), token, &[&target]);
    let mut server = Server::start_processing(
        &fs.path().join("state"),
        &["--config", cfg.to_str().unwrap(), "--no-boot-test"],
    );
    server.token = token.to_owned();

    let tree = fs.path().join("tree");
    let out = fs.path().join("out");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let script = format!(
        r#"T='{tree}'
mount {root} "$T"
mount -t proc proc "$T/proc"
mount -t sysfs sysfs "$T/sys"
mount --bind /dev "$T/dev"
mount -t tmpfs -o mode=0755 tmpfs "$T/run"
cp '{release}' "$T/run/ferry"
cp '{build}' "$T/run/ferry-build"
chroot "$T" /lib/x86_64-linux-gnu/libc.so.6 > '{out}/libc' 2>&1 || true
rc=0; chroot "$T" /run/ferry-build --version > '{out}/build.out' 2> '{out}/build.err' || rc=$?
echo $rc > '{out}/build.status'
chroot "$T" /run/ferry --version > '{out}/version'
rc=0; chroot "$T" /run/ferry check --json > '{out}/check.json' 2> '{out}/check.err' || rc=$?
echo $rc > '{out}/check.status'
rc=0
chroot "$T" /run/ferry send --mode file --to '{data}' --token '{token}' --fingerprint '{fp}' \
    --report /run/report.json 2> '{out}/send.err' || rc=$?
cp "$T/run/report.json" '{out}/report.json' || true
echo $rc > '{out}/send.status'
"#,
        tree = tree.display(),
        root = disk.part(1),
        release = release.binary.display(),
        build = FERRY,
        out = out.display(),
        data = server.data,
        token = server.token,
        fp = server.fingerprint,
    );
    // CentOS 7's situation: an old userland on a Linux 3.10 kernel.
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-euc", &script])
        .env("RUST_LOG", "warn");
    crate::common::old_kernel::refuse_newer_syscalls(&mut cmd);
    let ran = cmd.output().unwrap();
    assert!(
        ran.status.success(),
        "the namespace's script: {}\n{}",
        String::from_utf8_lossy(&ran.stderr),
        read(&out, "send.err")
    );

    // The old system is what it should be: glibc 2.31.
    let libc = read(&out, "libc");
    assert!(libc.contains("release version 2.31"), "{libc}");
    // This machine's build does not start there; the release does.
    assert_ne!(
        read(&out, "build.status").trim(),
        "0",
        "{}",
        read(&out, "build.out")
    );
    let build_err = read(&out, "build.err");
    assert!(
        build_err.contains("version `GLIBC_2.3") && build_err.contains("not found"),
        "{build_err}"
    );
    assert_eq!(
        read(&out, "version").trim(),
        format!("ferry {}", env!("CARGO_PKG_VERSION"))
    );

    // The check, from inside: the running Debian 11 on its one disk.
    let check: serde_json::Value =
        serde_json::from_str(&read(&out, "check.json")).unwrap_or_else(|e| {
            panic!(
                "{e}: {}\n{}",
                read(&out, "check.json"),
                read(&out, "check.err")
            )
        });
    assert_eq!(
        read(&out, "check.status").trim(),
        "0",
        "{check:#}\n{}",
        read(&out, "check.err")
    );
    assert_eq!(check["blockers"], 0, "{check:#}");
    assert!(
        check.to_string().contains("bullseye") || check.to_string().contains("Debian GNU/Linux 11"),
        "{check:#}"
    );
    let mounts: Vec<&str> = check["filesystems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["mount"].as_str())
        .collect();
    assert_eq!(mounts, ["/"], "{check:#}");

    // The send: laid out, copied, repaired and verified by the appliance.
    let err = read(&out, "send.err");
    assert_eq!(
        read(&out, "send.status").trim(),
        "0",
        "{err}\n{}",
        keep_log(&server.state)
    );
    // No open_tree on 3.10: the root file system is read through a bind mount.
    assert!(
        err.contains("tree 0 (/) is read alone at /run/ferry-send/"),
        "{err}"
    );
    let report: serde_json::Value = serde_json::from_str(&read(&out, "report.json")).unwrap();
    assert_eq!(
        report["trees"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert!(
        err.contains(
            "the round is processed (mount, repair, verify) and handed off; the job is Finished"
        ),
        "{err}"
    );
    let job = server.job();
    assert_eq!(job["state"], "Finished", "{job}");

    // What the repair does not touch is on the target as on the source.
    wait_for(60, "the appliance to release the target", || {
        run(Command::new("losetup").arg("-j").arg(&target))
            .trim()
            .is_empty()
    });
    let src_dir = fs.path().join("src");
    let src_root = Mounted::new(&disk.part(1), &src_dir, "ro");
    let target_disk = LoopDisk::attach(&target);
    let dst_dir = fs.path().join("dst");
    let dst_root = Mounted::new(&target_disk.part(1), &dst_dir, "ro");
    for dir in ["usr", "var/lib/dpkg"] {
        assert_eq!(
            differences(&src_dir.join(dir), &dst_dir.join(dir), &[]),
            "",
            "/{dir} differs"
        );
    }
    assert_eq!(
        std::fs::read_to_string(dst_dir.join("etc/debian_version")).unwrap(),
        std::fs::read_to_string(src_dir.join("etc/debian_version")).unwrap()
    );
    drop(dst_root);
    drop(target_disk);
    drop(src_root);
    drop(disk);
}
