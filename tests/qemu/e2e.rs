//! End-to-end migrations: a source server's disks go through a real
//! `ferry serve` and `ferry send` (block mode) over loopback; when the last
//! disk is committed, the appliance processes the round by itself (grow,
//! repair, verify) and the job reaches Finished, as `/v1/job` and the sender
//! show; the target then boots on the cloud's hardware (virtio-blk,
//! virtio-net with DHCP) with its data disk mounted.
//!
//! The failure side: a received disk without an operating system, and a
//! system without GRUB, put the job InError with the code and hint the
//! sender prints and `/v1/job` shows.
//!
//! Needs root and qemu-system-x86_64: `cargo test --release --test qemu -- e2e::`.

use std::path::{Path, PathBuf};

use crate::common::boot::SourceImage;
use ferry::cmd::Cmd;
use ferry::job::errors::ErrorCode;

const TOKEN: &str = "e2e-job-token-0123456789";
pub(crate) const CONTROL_TOKEN: &str = "e2e-control-token-0123456789";

/// The appliance in production mode: `targets[i]` receives source disk i.
fn appliance(dir: &Path, targets: &[PathBuf]) -> crate::common::serve::Server {
    appliance_with(dir, targets, "")
}

/// [`appliance`] with more config keys (top-level TOML lines).
///
/// The appliance's own boot test is off unless `keys` set it: these tests
/// boot the targets on the host afterwards, with the fixture's marker.
pub(crate) fn appliance_with(
    dir: &Path,
    targets: &[PathBuf],
    keys: &str,
) -> crate::common::serve::Server {
    crate::common::serve::Server::processing_onto(dir, targets, TOKEN, CONTROL_TOKEN, keys)
}

/// Empty target files: `extra` bytes larger than the source for disk 0 (the
/// cloud disk is often larger than the server's), the same size for others.
pub(crate) fn targets_for(src: &[PathBuf], dir: &Path, extra: u64) -> Vec<PathBuf> {
    src.iter()
        .enumerate()
        .map(|(i, s)| {
            let t = dir.join(format!("target-{i}.img"));
            let size = std::fs::metadata(s).expect("source size").len();
            let f = std::fs::File::create(&t).expect("creating a target");
            f.set_len(size + if i == 0 { extra } else { 0 })
                .expect("sizing a target");
            t
        })
        .collect()
}

pub(crate) fn job(server: &crate::common::serve::Server) -> serde_json::Value {
    server.job()
}

/// (start, sectors) of partition `n` of an image, by util-linux's partx.
fn partition_extent(image: &Path, n: u32) -> (u64, u64) {
    let out = Cmd::new("partx")
        .args(["-g", "-o", "START,SECTORS", "-n", &n.to_string()])
        .arg(image)
        .run()
        .expect("partx");
    let text = out.stdout_text();
    let v: Vec<u64> = text
        .split_whitespace()
        .map(|x| x.parse().expect("a number"))
        .collect();
    (v[0], v[1])
}

/// Hash of the first `len` bytes of a file.
fn prefix_hash(path: &Path, len: u64) -> String {
    use std::io::Read;
    let f = std::fs::File::open(path).expect("opening");
    let mut h = blake3::Hasher::new();
    let mut r = f.take(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).expect("reading");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().to_hex().to_string()
}

/// Where the appliance writes the disks.
enum Targets {
    /// Embedded mode: sparse files the appliance makes, sized as the source.
    Embedded,
    /// Production mode: target files mapped in the config, disk 0 this many
    /// bytes larger than its source.
    Mapped { extra: u64 },
}

/// Whether the data connection is cut while the appliance repairs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Link {
    Steady,
    CutDuringRepair,
}

fn migrate(variant: &str, how: Targets, link: Link) {
    need_root!("loop devices, mounts and chroot build the source images");
    let src = SourceImage::build(variant).expect("building the source image");
    let dir = tempfile::tempdir().expect("scratch directory");
    let (server, targets, extra) = match how {
        Targets::Embedded => {
            let control_token =
                crate::common::serve::secret_file(dir.path(), "control-token", CONTROL_TOKEN);
            let mut server = crate::common::serve::Server::start_processing(
                &dir.path().join("state"),
                &["--control-token-file", &control_token, "--no-boot-test"],
            );
            server.control_token = CONTROL_TOKEN.to_owned();
            let targets = (0..src.disks.len() as u32)
                .map(|i| server.disk_path(i))
                .collect::<Vec<_>>();
            (server, targets, 0)
        }
        Targets::Mapped { extra } => {
            let targets = targets_for(&src.disks, dir.path(), extra);
            (appliance(dir.path(), &targets), targets, extra)
        }
    };
    let disks: Vec<&Path> = src.disks.iter().map(PathBuf::as_path).collect();
    let sent = match link {
        Link::Steady => server.send(&disks, &[]),
        Link::CutDuringRepair => {
            // Through a relay whose connections are cut once the repair
            // runs: the sender reconnects and follows the round to its end.
            let relay = crate::common::serve::CutProxy::start(&server.data);
            let (to, token, fp) = (
                relay.addr.clone(),
                server.token.clone(),
                server.fingerprint.clone(),
            );
            let owned: Vec<PathBuf> = src.disks.clone();
            let sender = std::thread::spawn(move || {
                let d: Vec<&Path> = owned.iter().map(PathBuf::as_path).collect();
                crate::common::serve::send_to(&to, &token, &fp, &d, &[])
            });
            crate::common::serve::wait_for(600, "the repair step", || {
                job(&server)["step"] == "repair"
            });
            relay.cut();
            let sent = sender.join().expect("the sender thread");
            assert!(
                sent.stderr().contains("retrying in"),
                "the sender saw the cut: {}",
                sent.stderr()
            );
            sent
        }
    };
    let name = format!("e2e-{variant}");
    let log = crate::common::boot::artifacts_dir()
        .join("boot")
        .join(format!("{name}.send.log"));
    let _ = std::fs::create_dir_all(log.parent().expect("a parent"));
    let _ = std::fs::write(&log, sent.stderr());
    assert!(sent.ok(), "ferry send failed: {}", sent.stderr());
    for (i, _) in src.disks.iter().enumerate() {
        assert_eq!(
            sent.report["disks"][i]["verified"],
            serde_json::Value::Bool(true),
            "disk {i}: {}",
            sent.report
        );
    }
    // The sender followed the appliance's pipeline to its end.
    let err = sent.stderr();
    crate::common::serve::assert_followed_the_round(&err);
    let j = job(&server);
    assert_eq!(j["state"], "Finished", "{j}");
    assert!(j["last_error"].is_null(), "{j}");
    assert!(j.get("step").is_none(), "no step once processed: {j}");
    let state = dir.path().join("state");
    check_handoff(&server, &j, &targets, &state);
    let repair: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state.join("processing/repair.json")).expect("the repair report"),
    )
    .expect("repair JSON");
    assert_eq!(repair["changed"], true, "the repair changed the system");
    keep_logs(dir.path(), &name);
    // The data disk arrives as it was sent: the repair touches the system
    // disk's files only.
    for (i, (s, t)) in src.disks.iter().zip(&targets).enumerate().skip(1) {
        let len = std::fs::metadata(s).expect("source").len();
        assert_eq!(
            prefix_hash(s, len),
            prefix_hash(t, len),
            "disk {i} bit-exact"
        );
    }
    if extra > 0 {
        // The last partition and its file system grew into the larger disk.
        let report: serde_json::Value = serde_json::from_slice(
            &std::fs::read(state.join("processing/report.json")).expect("the stage report"),
        )
        .expect("report JSON");
        let grown = &report["grown"][0]["partition"];
        let n = grown["number"].as_u64().expect("a grown partition") as u32;
        let (_, src_sectors) = partition_extent(&src.disks[0], n);
        let (_, new_sectors) = partition_extent(&targets[0], n);
        assert!(
            new_sectors * 512 >= src_sectors * 512 + extra - (2 << 20),
            "partition {n}: {src_sectors} -> {new_sectors} sectors"
        );
        assert_eq!(
            grown["new_len"].as_u64(),
            Some(new_sectors * 512),
            "{report}"
        );
    }
    drop(server);

    crate::common::boot::boots_on_the_cloud(&src, targets, &format!("{name}-virtio"));
}

/// The handoff manifest names every target with the digest of what it holds
/// now, read back by `ferry verify`; the job names the manifest by the
/// digest of its bytes.
pub(crate) fn check_handoff(
    server: &crate::common::serve::Server,
    job: &serde_json::Value,
    targets: &[PathBuf],
    state: &Path,
) {
    let (status, body) = server.control("GET", "/v1/job/handoff");
    assert_eq!(status, 200, "{body}");
    let on_disk = std::fs::read(state.join("handoff.json")).expect("handoff.json");
    assert_eq!(body.as_bytes(), on_disk.as_slice(), "served as written");
    assert_eq!(
        job["handoff"]["manifest_digest"],
        blake3::hash(&on_disk).to_hex().as_str()
    );
    let m: serde_json::Value = serde_json::from_slice(&on_disk).expect("manifest JSON");
    assert_eq!(m["job_id"], job["id"]);
    assert_eq!(m["disks"].as_array().map(Vec::len), Some(targets.len()));
    for (i, t) in targets.iter().enumerate() {
        assert_eq!(m["disks"][i]["target"], t.display().to_string());
        assert_eq!(
            m["disks"][i]["digest_bytes"].as_u64(),
            Some(std::fs::metadata(t).expect("target").len()),
            "the digest covers the whole target"
        );
    }
    assert!(m["recipe"].is_string(), "{m}");
    assert!(m["repairs"].is_array(), "{m}");
    let manifest = state.join("handoff.json");
    let mut verify = Cmd::new(crate::common::serve::FERRY)
        .arg("verify")
        .arg("--manifest")
        .arg(&manifest);
    for (i, t) in targets.iter().enumerate() {
        verify = verify.arg("--disk").arg(format!("{i}={}", t.display()));
    }
    let out = verify.run().expect("ferry verify against the manifest");
    assert_eq!(
        out.stdout_text().matches("matches the manifest").count(),
        targets.len()
    );
}

/// Keep the appliance's log and its processing reports as test artifacts.
pub(crate) fn keep_logs(dir: &Path, name: &str) {
    let out = crate::common::boot::artifacts_dir().join("boot");
    let _ = std::fs::create_dir_all(&out);
    for (from, to) in [
        ("state.serve.log", "serve.log"),
        ("state/processing/repair.json", "repair.json"),
        ("state/processing/report.json", "processing.json"),
    ] {
        let _ = std::fs::copy(dir.join(from), out.join(format!("{name}.{to}")));
    }
}

/// A processing failure: the sender exits non-zero with the code and its
/// hint, and /v1/job shows the job InError with the same code.
pub(crate) fn assert_processing_failed(
    server: &crate::common::serve::Server,
    sent: &crate::common::serve::Sent,
    code: ErrorCode,
) {
    let err = sent.stderr();
    assert!(!sent.ok(), "the sender succeeded:\n{err}");
    assert!(err.contains(code.as_str()), "no {code} in:\n{err}");
    assert!(err.contains(code.hint()), "no hint of {code} in:\n{err}");
    let j = job(server);
    assert_eq!(j["state"], "InError", "{j}");
    assert_eq!(j["last_error"]["code"], code.as_str(), "{j}");
    assert_eq!(j["last_error"]["hint"], code.hint(), "{j}");
}

#[test]
fn bios_mbr_server_with_data_disk_migrates_and_boots_on_virtio() {
    migrate("bios-mbr-data", Targets::Mapped { extra: 0 }, Link::Steady);
}

#[test]
fn bios_gpt_server_migrates_onto_a_larger_disk_and_boots_on_virtio() {
    migrate(
        "bios-gpt",
        Targets::Mapped { extra: 512 << 20 },
        Link::CutDuringRepair,
    );
}

#[test]
fn uefi_gpt_server_migrates_to_an_embedded_appliance_and_boots_on_virtio() {
    migrate("uefi-gpt", Targets::Embedded, Link::Steady);
}

#[test]
fn a_disk_without_an_operating_system_puts_the_job_in_error() {
    need_root!("loop devices, mounts and chroot build the source images");
    let dir = tempfile::tempdir().expect("scratch directory");
    let src = dir.path().join("data.img");
    crate::common::serve::mixed_image(&src, 64, 7);
    let targets = targets_for(std::slice::from_ref(&src), dir.path(), 0);
    let server = appliance(dir.path(), &targets);
    let sent = server.send(&[src.as_path()], &[]);
    assert_processing_failed(&server, &sent, ErrorCode::SystemNotFound);
    assert_eq!(
        crate::common::serve::file_hash(&src),
        crate::common::serve::file_hash(&targets[0]),
        "the received data is kept as it arrived"
    );
}

#[test]
fn a_system_without_grub_puts_the_job_in_error_with_do_grub_failed() {
    need_root!("loop devices, mounts and chroot build the source images");
    let built = SourceImage::build("bios-mbr").expect("building the source image");
    let dir = tempfile::tempdir().expect("scratch directory");
    // The same server with its boot loader removed (as if it booted some
    // other way): its own copy, the cached image stays as it is.
    let src = dir.path().join("nogrub.img");
    Cmd::new("cp")
        .args(["--sparse=always"])
        .arg(&built.disks[0])
        .arg(&src)
        .run()
        .expect("copying the source");
    {
        let lo = Cmd::new("losetup")
            .args(["-f", "--show", "-o", &(2048 * 512).to_string()])
            .arg(&src)
            .run()
            .expect("attaching the root");
        let dev = lo.stdout_text().trim().to_owned();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).expect("mount point");
        let mounted = Cmd::new("mount").arg(&dev).arg(&mnt).run();
        if mounted.is_ok() {
            for p in [
                "boot/grub",
                "etc/default/grub",
                "usr/sbin/grub-install",
                "usr/sbin/grub-mkconfig",
                "usr/sbin/update-grub",
            ] {
                let _ = Cmd::new("rm").args(["-rf"]).arg(mnt.join(p)).run();
            }
            Cmd::new("umount").arg(&mnt).run().expect("unmounting");
        }
        Cmd::new("losetup")
            .args(["-d", &dev])
            .run()
            .expect("detaching");
        mounted.expect("mounting the copy's root");
    }
    let targets = targets_for(std::slice::from_ref(&src), dir.path(), 0);
    let server = appliance(dir.path(), &targets);
    let sent = server.send(&[src.as_path()], &[]);
    assert_processing_failed(&server, &sent, ErrorCode::GrubFailed);
    assert!(
        sent.stderr().contains("Do Grub Failed"),
        "the FAQ's wording: {}",
        sent.stderr()
    );
    // The check stops the round at GRUB before the repair changes anything.
    // Started again, the job takes the same source (the appliance's re-read
    // verification holds), and processing stops at the same cause again,
    // not at a digest mismatch.
    let auth = format!("Bearer {CONTROL_TOKEN}");
    let (status, body) = crate::common::serve::http(
        &server.control,
        "POST",
        "/v1/job/start",
        &[("Authorization", &auth)],
    );
    assert_eq!(status, 200, "{body}");
    let again = server.send(&[src.as_path()], &[]);
    assert_processing_failed(&server, &again, ErrorCode::GrubFailed);
    assert_eq!(
        again.report["disks"][0]["verified"],
        serde_json::Value::Bool(true),
        "{}",
        again.report
    );
    assert_eq!(
        again.report["attempts"], 1,
        "no attempt ended in a digest mismatch: {}",
        again.report
    );
    // The check changed nothing on the target: nothing is sent again.
    assert_eq!(
        again.disk(0, "sent_chunks") + again.disk(0, "zero_sent_chunks"),
        0,
        "the check left the target as it arrived: {}",
        again.report
    );
}

/// Mount disk images' file systems (by their fstab) under a scratch
/// directory, run `f` on the root, unmount.
pub(crate) fn with_mounted<T>(disks: &[PathBuf], read_only: bool, f: impl FnOnce(&Path) -> T) -> T {
    let staging = tempfile::tempdir().expect("a staging directory");
    let tree = ferry::layout::MountTree::mount_existing(
        disks,
        &staging.path().join("root"),
        ferry::layout::MountOptions { read_only },
    )
    .unwrap_or_else(|e| panic!("mounting {disks:?}: {e:#}"));
    let out = f(tree.root());
    tree.close().expect("unmounting");
    out
}

/// The migration service's incremental migration: a round, its repair and
/// handoff; the same source again (exactly the chunks the repair changed
/// go back, and the repair runs again); then the source changes (a file
/// added, one changed, one deleted) and a third round carries the changes
/// under the repairs, checks clean and boots.
#[test]
fn incremental_rounds_restore_the_repaired_chunks_carry_the_changes_and_boot() {
    need_root!("loop devices, mounts and chroot build the source images");
    let built = SourceImage::build("bios-mbr").expect("building the source image");
    let dir = tempfile::tempdir().expect("scratch directory");
    // The cached source stays as it is: this test changes its own copy.
    let copy = dir.path().join("source-disk0.img");
    Cmd::new("cp")
        .arg("--sparse=always")
        .arg(&built.disks[0])
        .arg(&copy)
        .run()
        .expect("copying the source image");
    let mut src = built.clone();
    src.disks = vec![copy.clone()];
    let targets = targets_for(&src.disks, dir.path(), 0);
    let server = appliance_with(dir.path(), &targets, "incremental = true\n");
    let disks = [copy.as_path()];

    let first = server.send(&disks, &[]);
    assert!(first.ok(), "round 1: {}", first.stderr());
    assert!(
        first.stderr().contains("the job is Waiting"),
        "{}",
        first.stderr()
    );
    let stage: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("state/processing/report.json")).expect("stage report"),
    )
    .expect("JSON");
    let changed = stage["resynced_chunks"].as_u64().expect("a count");
    assert!(changed > 0, "the repair changed chunks: {stage}");
    assert_ne!(
        crate::common::serve::file_hash(&targets[0]),
        crate::common::serve::file_hash(&copy),
        "the target was repaired"
    );

    // Handed off: the next round waits for the control plane.
    let held = server.send_only(&disks, &["--retries", "0"]);
    assert!(
        !held.ok() && held.stderr().contains("JOB_HANDED_OFF"),
        "{}",
        held.stderr()
    );

    // The same, unchanged source again (`send` starts the next round, as
    // the control plane does after its snapshot).
    let second = server.send(&disks, &[]);
    assert!(second.ok(), "round 2: {}", second.stderr());
    assert_eq!(
        second.disk(0, "sent_chunks") + second.disk(0, "zero_sent_chunks"),
        changed,
        "round 2 re-sent the chunks the repair changed: {}",
        second.report
    );
    assert_eq!(job(&server)["state"], "Waiting");

    // The server changes between rounds.
    with_mounted(&src.disks, false, |root| {
        std::fs::write(root.join("etc/ferry-round3-added"), "added in round 3\n").expect("adding");
        std::fs::write(root.join("etc/motd"), "changed in round 3\n").expect("changing");
        std::fs::remove_file(root.join("etc/issue.net")).expect("deleting");
    });
    let third = server.send(&disks, &[]);
    let _ = std::fs::write(
        crate::common::boot::artifacts_dir().join("boot/e2e-incremental.send.log"),
        third.stderr(),
    );
    assert!(third.ok(), "round 3: {}", third.stderr());
    let j = job(&server);
    assert_eq!(
        (j["state"].as_str(), j["rounds_completed"].as_u64()),
        (Some("Waiting"), Some(3)),
        "{j}"
    );
    check_handoff(&server, &j, &targets, &dir.path().join("state"));
    keep_logs(dir.path(), "e2e-incremental");
    with_mounted(&targets, true, |root| {
        assert_eq!(
            std::fs::read_to_string(root.join("etc/ferry-round3-added"))
                .ok()
                .as_deref(),
            Some("added in round 3\n")
        );
        assert_eq!(
            std::fs::read_to_string(root.join("etc/motd"))
                .ok()
                .as_deref(),
            Some("changed in round 3\n")
        );
        assert!(
            !root.join("etc/issue.net").exists(),
            "deleted on the source"
        );
        let fstab = std::fs::read_to_string(root.join("etc/fstab")).expect("fstab");
        assert!(
            fstab.contains(&format!("UUID={}", src.root_uuid)),
            "the repair is there again:\n{fstab}"
        );
    });
    drop(server);
    crate::common::boot::boots_on_the_cloud(&src, targets, "e2e-incremental-virtio");
}

#[test]
fn appliance_killed_while_repairing_processes_again_after_restart_and_the_disk_boots() {
    need_root!("loop devices, mounts and chroot build the source images");
    let src = SourceImage::build("bios-mbr").expect("building the source image");
    let dir = tempfile::tempdir().expect("scratch directory");
    let targets = targets_for(&src.disks, dir.path(), 0);
    let mut server = appliance(dir.path(), &targets);
    let disks: Vec<&Path> = src.disks.iter().map(PathBuf::as_path).collect();
    let sent = server.send(&disks, &["--no-wait"]);
    assert!(sent.ok(), "{}", sent.stderr());
    let chroot_proc = std::fs::canonicalize(dir.path())
        .expect("scratch path")
        .join("state/processing/root/proc");
    let chroot_proc = chroot_proc.to_string_lossy().into_owned();
    let mounted = |p: &str| {
        std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(p))
    };
    // The migrated system's own update-initramfs, in the sandbox: the
    // keeper's command line names it, and its spec names this job's staging
    // root (another test's appliance may be repairing beside this one).
    let scratch = dir.path().file_name().expect("a named scratch directory");
    let scratch = scratch.to_string_lossy().into_owned();
    let guest_running = || {
        std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .any(|e| {
                std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                    let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                    args.contains(&&b"sandbox"[..])
                        && args.iter().any(|a| a.starts_with(b"update-initramfs"))
                        && args
                            .iter()
                            .any(|a| String::from_utf8_lossy(a).contains(scratch.as_str()))
                })
            })
    };
    // Kill -9 the appliance in the middle of the repair: while the migrated
    // system's own update-initramfs runs, after the file steps
    // (grub-defaults among them) and before grub-config.
    crate::common::serve::wait_for(120, "the repair's update-initramfs", guest_running);
    let log = dir.path().join("state.serve.log");
    let done = |step: &str| {
        let needle = format!("\"{step}\"");
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("repair step done") && l.contains(&needle))
    };
    crate::common::serve::wait_for(120, "the repair's file steps", || done("agents"));
    let during = job(&server);
    assert_eq!(during["business_status"], "Processing", "{during}");
    assert_eq!(during["step"], "repair", "{during}");
    server.kill();
    assert!(!done("grub-config"), "killed before grub-config");

    let server = appliance(dir.path(), &targets);
    let mut last = serde_json::Value::Null;
    crate::common::serve::wait_for(300, "the job to end its processing", || {
        last = job(&server);
        last["state"] != "Running"
    });
    assert_eq!(last["state"], "Finished", "{last}");
    assert!(
        !guest_running(),
        "the guest died with the appliance that ran it"
    );
    let root = chroot_proc.trim_end_matches("/proc");
    assert!(!mounted(root), "the staging root was unmounted");
    for t in &targets {
        let loops = Cmd::new("losetup")
            .arg("-j")
            .arg(t)
            .run()
            .expect("losetup -j");
        assert_eq!(
            loops.stdout_text().trim(),
            "",
            "no loop device left on {}",
            t.display()
        );
    }
    drop(server);

    keep_logs(dir.path(), "e2e-killed-while-repairing");
    crate::common::boot::boots_on_the_cloud(&src, targets, "e2e-killed-while-repairing-virtio");
}
