//! `ferry check` on real disks (root: loop devices, mounts, FUSE): the
//! source fixtures of the QEMU suites (scripts/make-source-image.sh), the
//! special fixtures derived from them here (no GRUB, no initramfs
//! generator, a full /boot, an XFS V4 root), and Windows-shaped disks
//! (scripts/make-windows-image.sh: NTFS by mkntfs, hives by hivexsh). Then
//! the appliance: the same report in `/v1/job`, a blocker that puts the job
//! InError before anything is changed, a Windows disk prepared (its SAN
//! policy read back with hivexget) and grown (ntfsresize, ntfsfix clean).

#![allow(clippy::unwrap_used)] // a test file: a panic is the failure report

use std::path::{Path, PathBuf};

use crate::common::repair::{source_image, tree_hashes};
use ferry::cmd::Cmd;
use ferry::job::errors::ErrorCode;
use ferry::layout::tree::{MountOptions, MountTree};
use serde_json::Value;

const TOKEN: &str = "check-suite-job-token-0123456789";
const CONTROL_TOKEN: &str = "check-suite-control-token-0123456789";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `ferry check ARGS --json`: (exit status 0, the report, stderr).
fn check(args: &[&str], staging: &Path) -> (bool, Value, String) {
    let (status, out) = Cmd::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("check")
        .args(args)
        .arg("--json")
        .arg("--staging")
        .arg(staging)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {}\n{stderr}", out.stdout_text()));
    (status.success(), report, stderr)
}

fn check_disks(disks: &[PathBuf], staging: &Path) -> (bool, Value, String) {
    let mut args = Vec::new();
    for d in disks {
        args.push("--disk");
        args.push(d.to_str().unwrap());
    }
    check(&args, staging)
}

/// (severity, code, detail) of every finding.
fn findings(report: &Value) -> Vec<(String, String, String)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["severity"].as_str().unwrap().to_owned(),
                f["code"].as_str().unwrap().to_owned(),
                f["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn blockers(report: &Value) -> Vec<(String, String)> {
    findings(report)
        .into_iter()
        .filter(|f| f.0 == "blocker")
        .map(|f| (f.1, f.2))
        .collect()
}

/// A copy of the Windows-shaped disk `variant` in `dir`.
fn windows_image(variant: &str, dir: &Path) -> PathBuf {
    let out = Cmd::new("bash")
        .arg(repo().join("scripts/make-windows-image.sh"))
        .arg(variant)
        .run()
        .unwrap_or_else(|e| panic!("building the Windows image: {e:#}"));
    let src = PathBuf::from(out.stdout_text().trim()).join("disk0.img");
    let d = dir.join(format!("windows-{variant}.img"));
    Cmd::new("cp")
        .arg("--sparse=always")
        .arg(&src)
        .arg(&d)
        .run()
        .unwrap();
    d
}

/// (start byte, length) of partition `n` of an image, by partx.
fn partition(image: &Path, n: u32) -> (u64, u64) {
    let out = Cmd::new("partx")
        .args(["-g", "-o", "START,SECTORS", "-n", &n.to_string()])
        .arg(image)
        .run()
        .unwrap();
    let v: Vec<u64> = out
        .stdout_text()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (v[0] * 512, v[1] * 512)
}

/// A loop device over a byte range of an image, detached on drop.
struct Loop(String);

impl Loop {
    fn at(image: &Path, (start, len): (u64, u64)) -> Loop {
        let out = Cmd::new("losetup")
            .args(["-f", "--show", "-o", &start.to_string()])
            .args(["--sizelimit", &len.to_string()])
            .arg(image)
            .run()
            .unwrap();
        Loop(out.stdout_text().trim().to_owned())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Cmd::new("losetup").args(["-d", &self.0]).run();
    }
}

/// Mount partition `n` of `image` (ext4) at a fresh directory, run `f` on
/// it, unmount.
fn edit_partition(image: &Path, n: u32, f: impl FnOnce(&Path)) {
    let lo = Loop::at(image, partition(image, n));
    let mnt = tempfile::tempdir().unwrap();
    Cmd::new("mount").arg(&lo.0).arg(mnt.path()).run().unwrap();
    f(mnt.path());
    Cmd::new("umount").arg(mnt.path()).run().unwrap();
}

fn remove(root: &Path, paths: &[&str]) {
    for p in paths {
        Cmd::new("rm").arg("-rf").arg(root.join(p)).run().unwrap();
    }
}

const GRUB_FILES: &[&str] = &[
    "boot/grub",
    "etc/default/grub",
    "usr/sbin/grub-install",
    "usr/sbin/grub-mkconfig",
    "usr/sbin/update-grub",
];

#[test]
fn every_source_fixture_that_migrates_has_no_blocker() {
    need_root!("loop devices, mounts");
    for variant in ["bios-mbr", "bios-gpt", "uefi-gpt", "bios-mbr-data"] {
        let work = tempfile::tempdir().unwrap();
        let disks = source_image(variant, work.path());
        let before = crate::common::serve::file_hash(&disks[0]);
        let (ok, r, err) = check_disks(&disks, &work.path().join("stage"));
        assert!(ok, "{variant}: {r:#}\n{err}");
        assert_eq!(r["blockers"], 0, "{variant}: {r:#}");
        assert_eq!(
            crate::common::serve::file_hash(&disks[0]),
            before,
            "{variant}: the check wrote to the disk"
        );
        let s = &r["systems"][0];
        assert_eq!(s["kind"], "linux", "{variant}");
        assert_eq!(s["os"]["id"], "debian");
        assert_eq!(s["os"]["version_id"], "12");
        assert_eq!(s["recipe"], "debian");
        let k = &s["kernels"][0];
        for d in [
            "virtio_blk",
            "virtio_scsi",
            "virtio_net",
            "virtio_pci",
            "nvme",
        ] {
            assert_eq!(k["drivers"][d], true, "{variant}: {d} in {k}");
        }
        assert_eq!(s["initramfs"]["tool"], "/usr/sbin/update-initramfs");
        assert_eq!(s["initramfs"]["runnable"], true);
        assert_eq!(s["bootloader"]["kind"], "grub2");
        assert!(
            s["bootloader"]["version"]
                .as_str()
                .is_some_and(|v| v.starts_with("2.06")),
            "{variant}: {}",
            s["bootloader"]
        );
        let uefi = variant == "uefi-gpt";
        assert_eq!(s["firmware"]["mode"], if uefi { "uefi" } else { "bios" });
        if uefi {
            assert_eq!(
                s["firmware"]["efi_loaders"],
                serde_json::json!(["EFI/BOOT/BOOTX64.EFI"]),
                "the loader at the removable path, read from the FAT in-process"
            );
        }
        assert_eq!(s["lvm"]["supported"], true);
        assert_eq!(s["os"]["selinux"], "absent");
        // What a network map names: the NIC, its pinned MAC, its addresses.
        assert_eq!(
            s["network"]["nics"],
            serde_json::json!([{"name": "ens8", "mac": null, "addresses": ["10.0.2.50/24"]}]),
            "{variant}"
        );
        assert_eq!(
            findings(&r),
            [(
                "info".to_owned(),
                "NETWORK_STATIC".to_owned(),
                "/etc/network/interfaces: ens8 10.0.2.50/24".to_owned()
            )],
            "{variant}"
        );
        let fs = r["filesystems"].as_array().unwrap();
        let root = fs.iter().find(|f| f["mount"] == "/").unwrap();
        assert_eq!(root["fstype"], "ext4");
        assert_eq!(root["mountable"], true);
        assert_eq!(root["checker"], "e2fsck");
        if variant == "bios-mbr-data" {
            let data = fs.iter().find(|f| f["mount"] == "/data").unwrap();
            assert_eq!(data["device"], "disk 1 partition 1");
        }
        if variant == "bios-gpt" {
            let mounts: Vec<&str> = s["space"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["mount"].as_str().unwrap())
                .collect();
            assert_eq!(mounts, ["/", "/boot"], "a separate /boot is measured apart");
        }
    }
}

#[test]
fn a_mount_point_missing_from_the_read_only_tree_is_said_and_the_rest_inspected() {
    need_root!("loop devices, mounts");
    let work = tempfile::tempdir().unwrap();
    let disks = source_image("bios-gpt", work.path());
    // The fstab mounts partition 2 on /boot; the root (partition 4) no
    // longer has the directory. A read-only look cannot make it.
    edit_partition(&disks[0], 4, |root| remove(root, &["boot"]));
    let (_, r, err) = check_disks(&disks, &work.path().join("stage"));
    let missing: Vec<_> = findings(&r)
        .into_iter()
        .filter(|f| f.1 == "MOUNT_POINT_MISSING")
        .collect();
    assert_eq!(
        missing,
        [(
            "warning".to_owned(),
            "MOUNT_POINT_MISSING".to_owned(),
            "/boot is not mounted: its mount point does not exist in the read-only file system above it".to_owned()
        )],
        "{r:#}\n{err}"
    );
    // The system around it was inspected all the same (and its kernels,
    // on the unmounted /boot, are not found).
    let s = &r["systems"][0];
    assert_eq!(s["os"]["id"], "debian", "{r:#}");
    assert!(!err.contains("Read-only file system"), "{err}");
}

#[test]
fn a_mount_point_under_a_symlink_stays_inside_the_tree() {
    need_root!("loop devices, mounts");
    let work = tempfile::tempdir().unwrap();
    let disks = source_image("bios-gpt", work.path());
    // A hostile source: its /boot (partition 2's mount point) is a link out
    // of the tree. Followed on the appliance, the check would make that
    // directory on the appliance's own root and mount there.
    // The link's target exists on the appliance (an empty directory made
    // for the test), as /etc or /tmp would.
    let escape = format!("/ferry-escape-{}", std::process::id());
    std::fs::create_dir(&escape).unwrap();
    edit_partition(&disks[0], 4, |root| {
        remove(root, &["boot"]);
        std::os::unix::fs::symlink(&escape, root.join("boot")).unwrap();
    });
    let (_, r, err) = check_disks(&disks, &work.path().join("stage"));
    // Whatever happened, the appliance's directory goes again.
    let _ = Cmd::new("umount").arg(&escape).run();
    std::fs::remove_dir(&escape).unwrap();
    // Inside the tree the link leads nowhere the read-only root can make;
    // followed on the appliance, /boot would have been mounted there.
    let missing: Vec<_> = findings(&r)
        .into_iter()
        .filter(|f| f.1 == "MOUNT_POINT_MISSING")
        .map(|f| f.2)
        .collect();
    assert_eq!(
        missing,
        ["/boot is not mounted: its mount point does not exist in the read-only file system above it"],
        "{r:#}\n{err}"
    );
}

#[test]
fn a_mounted_tree_is_checked_with_its_own_mounts() {
    need_root!("loop devices, mounts");
    let work = tempfile::tempdir().unwrap();
    let disks = source_image("bios-gpt", work.path());
    let tree = MountTree::mount_existing_named(
        &disks,
        &work.path().join("mnt"),
        MountOptions { read_only: true },
        &[vec!["/dev/sda".to_owned()]],
    )
    .unwrap();
    let root = tree.root().to_str().unwrap().to_owned();
    let (ok, r, err) = check(&["--root", &root], &work.path().join("stage"));
    tree.close().unwrap();
    assert!(ok, "{r:#}\n{err}");
    assert_eq!(r["source"], "root");
    let mounted: Vec<(String, String)> = r["filesystems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["mount"].as_str().unwrap().to_owned(),
                f["device"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(mounted.len(), 2, "{mounted:?}");
    assert_eq!(mounted[0].0, "/");
    assert!(mounted[0].1.ends_with("p4"), "{mounted:?}");
    assert_eq!(mounted[1].0, "/boot");
    assert!(mounted[1].1.ends_with("p2"), "{mounted:?}");
    // The superblock read through the mounted device.
    assert!(
        r["filesystems"][0]["format"]
            .as_str()
            .is_some_and(|f| f.starts_with("features has_journal ")),
        "{}",
        r["filesystems"][0]
    );
    assert_eq!(r["blockers"], 0);
}

#[test]
fn a_system_without_grub_is_a_blocker_with_the_appliances_code() {
    need_root!("loop devices, mounts");
    let work = tempfile::tempdir().unwrap();
    let disks = source_image("bios-mbr", work.path());
    edit_partition(&disks[0], 1, |root| remove(root, GRUB_FILES));
    let (ok, r, err) = check_disks(&disks, &work.path().join("stage"));
    assert!(!ok, "{r:#}");
    assert_eq!(
        blockers(&r),
        [(
            "GRUB_FAILED".to_owned(),
            "no GRUB is installed in the migrated system".to_owned()
        )]
    );
    assert!(
        err.contains("the check found 1 blocker(s): GRUB_FAILED"),
        "{err}"
    );
    assert_eq!(r["systems"][0]["bootloader"]["kind"], "none");
    // In words for the operator: the FAQ's message and what to do.
    let (status, out) = Cmd::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["check", "--disk"])
        .arg(&disks[0])
        .arg("--staging")
        .arg(work.path().join("stage"))
        .output()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let text = out.stdout_text();
    assert!(
        text.contains(
            "  blocker GRUB_FAILED: Do Grub Failed: no GRUB is installed in the migrated system\n    what to do: The migrated system has no usable GRUB 2"
        ),
        "{text}"
    );
    assert!(
        text.contains("result: 1 blocker(s), 0 warning(s): fix the blockers before migrating"),
        "{text}"
    );
}

#[test]
fn a_system_without_its_initramfs_generator_is_a_blocker() {
    need_root!("loop devices, mounts");
    let work = tempfile::tempdir().unwrap();
    let disks = source_image("bios-mbr", work.path());
    edit_partition(&disks[0], 1, |root| {
        remove(root, &["usr/sbin/update-initramfs"])
    });
    let (ok, r, _) = check_disks(&disks, &work.path().join("stage"));
    assert!(!ok);
    assert_eq!(
        blockers(&r),
        [(
            "REPAIR_TOOL_MISSING".to_owned(),
            "no initramfs generator in the migrated system (recipe debian looks for /usr/sbin/update-initramfs, /usr/bin/dracut, /usr/sbin/dracut)"
                .to_owned()
        )]
    );
    assert_eq!(r["systems"][0]["initramfs"]["tool"], Value::Null);
}

#[test]
fn a_full_boot_is_a_blocker() {
    need_root!("loop devices, mounts");
    let work = tempfile::tempdir().unwrap();
    let disks = source_image("bios-gpt", work.path());
    // /boot is partition 2: fill it as years of kernels would.
    edit_partition(&disks[0], 2, |boot| {
        let st = nix::sys::statvfs::statvfs(boot).unwrap();
        let free = st.blocks_available() * st.fragment_size();
        Cmd::new("fallocate")
            .args(["-l", &(free - (2 << 20)).to_string()])
            .arg(boot.join("old-kernels.img"))
            .run()
            .unwrap();
    });
    let (ok, r, _) = check_disks(&disks, &work.path().join("stage"));
    assert!(!ok);
    let b = blockers(&r);
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0].0, "SPACE_LOW");
    assert!(
        b[0].1.starts_with("/boot: ")
            && b[0].1.contains(" MiB free, ")
            && b[0].1.ends_with(" MiB needed"),
        "{}",
        b[0].1
    );
    let boot = r["systems"][0]["space"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["mount"] == "/boot")
        .cloned()
        .unwrap();
    assert!(
        boot["free_bytes"].as_u64().unwrap() < boot["need_bytes"].as_u64().unwrap(),
        "{boot}"
    );
}

#[test]
fn an_xfs_v4_root_is_a_blocker() {
    need_root!("loop devices, mounts");
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("xfs4.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(320 << 20)
        .unwrap();
    Cmd::new("sfdisk")
        .arg("-q")
        .arg(&img)
        .stdin_bytes(b"label: dos\nstart=2048, type=83\n".to_vec())
        .run()
        .unwrap();
    {
        let lo = Loop::at(&img, partition(&img, 1));
        Cmd::new("mkfs.xfs")
            .args(["-q", "-f", "-m", "crc=0"])
            .arg(&lo.0)
            .run()
            .unwrap();
    }
    let (ok, r, _) = check_disks(std::slice::from_ref(&img), &work.path().join("stage"));
    assert!(!ok);
    assert_eq!(
        blockers(&r),
        [(
            "FS_UNSUPPORTED".to_owned(),
            "disk 0 partition 1 (xfs): it is XFS V4 (made without CRCs, crc=0), which is deprecated and which kernels built without XFS V4 support, the appliance's among them, do not mount"
                .to_owned()
        )]
    );
    assert_eq!(r["filesystems"][0]["format"], "XFS V4");
    assert_eq!(r["filesystems"][0]["mountable"], false);
}

#[test]
fn windows_shaped_disks_are_recognised_and_checked_for_virtio() {
    need_root!("loop devices, mounts");
    let work = tempfile::tempdir().unwrap();
    let with = windows_image("virtio", work.path());
    let before = crate::common::serve::file_hash(&with);
    let (ok, r, err) = check_disks(std::slice::from_ref(&with), &work.path().join("stage"));
    assert!(ok, "{r:#}\n{err}");
    assert_eq!(
        crate::common::serve::file_hash(&with),
        before,
        "the check wrote to the disk"
    );
    let s = &r["systems"][0];
    assert_eq!(s["kind"], "windows");
    assert_eq!(s["product_name"], "Windows Server 2019 Datacenter");
    assert_eq!(s["current_build"], "17763");
    assert_eq!(s["control_set"], "ControlSet001");
    assert_eq!(s["volume"], "disk 0 partition 1");
    assert_eq!(s["storage_drivers"][0]["name"], "viostor");
    assert_eq!(s["storage_drivers"][0]["start"], 0);
    assert_eq!(
        s["storage_drivers"][0]["file"],
        "Windows/System32/drivers/viostor.sys"
    );
    assert_eq!(s["net_driver"]["name"], "netkvm");
    assert_eq!(s["san_policy"], 2);
    assert_eq!(s["virtio"], true);
    assert_eq!(
        findings(&r),
        [(
            "info".to_owned(),
            "WINDOWS_SAN_POLICY".to_owned(),
            "ControlSet001\\Services\\partmgr\\Parameters\\SanPolicy is 2; the appliance sets it to 1"
                .to_owned()
        )]
    );

    // The same from the volume mounted by someone else (ntfs-3g, FUSE).
    {
        let m = Ntfs::mount(&with, true);
        let (ok, r2, err) = check(
            &["--root", m.path().to_str().unwrap()],
            &work.path().join("stage"),
        );
        assert!(ok, "{r2:#}\n{err}");
        assert_eq!(r2["source"], "root");
        assert_eq!(r2["systems"][0]["kind"], "windows");
        assert_eq!(r2["systems"][0]["volume"], "the tree");
        assert_eq!(r2["systems"][0]["virtio"], true);
        assert_eq!(r2["filesystems"][0]["fstype"], "ntfs");
        assert_eq!(r2["filesystems"][0]["mount"], "/");
    }

    let without = windows_image("no-virtio", work.path());
    let (ok, r, _) = check_disks(std::slice::from_ref(&without), &work.path().join("stage"));
    assert!(!ok);
    assert_eq!(
        blockers(&r),
        [(
            "VIRTIO_CHECK_FAILED".to_owned(),
            "Windows Server 2019 Datacenter: no VirtIO storage driver (viostor or vioscsi) is installed; the VirtIO network driver netkvm is not installed"
                .to_owned()
        )]
    );
    assert_eq!(r["findings"][0]["message"], "check virtio failed");
}

/// The NTFS of partition 1 of `image` mounted through ntfs-3g.
struct Ntfs {
    dir: tempfile::TempDir,
    _lo: Loop,
}

impl Ntfs {
    fn mount(image: &Path, ro: bool) -> Ntfs {
        let lo = Loop::at(image, partition(image, 1));
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cmd::new("ntfs-3g");
        if ro {
            c = c.args(["-o", "ro"]);
        }
        c.arg(&lo.0).arg(dir.path()).run().unwrap();
        Ntfs { dir, _lo: lo }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Ntfs {
    fn drop(&mut self) {
        let _ = Cmd::new("umount").arg(self.dir.path()).run();
    }
}

const SAN_KEY: &str = "\\ControlSet001\\Services\\partmgr\\Parameters";

/// SanPolicy as hivexget (which ferry does not use) reads it.
fn san_policy(system_hive: &Path) -> String {
    Cmd::new("hivexget")
        .arg(system_hive)
        .arg(SAN_KEY)
        .arg("SanPolicy")
        .run()
        .unwrap()
        .stdout_text()
        .trim()
        .to_owned()
}

#[test]
fn the_windows_preparation_is_planned_applied_once_and_idempotent() {
    need_root!("loop devices, mounts");
    let work = tempfile::tempdir().unwrap();
    let img = windows_image("virtio", work.path());
    let m = Ntfs::mount(&img, false);
    let root = m.path().to_str().unwrap().to_owned();
    let hive = m.path().join("Windows/System32/config/SYSTEM");
    let before = std::fs::read(&hive).unwrap();
    let ferry = |args: &[&str]| {
        let (status, out) = Cmd::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("repair")
            .args(args)
            .current_dir(work.path())
            .output()
            .unwrap();
        (status.success(), out.stdout_text())
    };
    let (ok, plan) = ferry(&["--root", &root, "--plan"]);
    assert!(ok, "{plan}");
    assert_eq!(
        plan,
        "== san-policy: would change\n   registry Windows/System32/config/SYSTEM \\ControlSet001\\Services\\partmgr\\Parameters\\SanPolicy: 2 -> 1\nplan: changes shown above; nothing was written\n"
    );
    assert_eq!(
        std::fs::read(&hive).unwrap(),
        before,
        "the plan wrote the hive"
    );
    let (ok, out) = ferry(&["--root", &root]);
    assert!(ok, "{out}");
    assert!(out.ends_with("repair applied\n"), "{out}");
    assert_eq!(san_policy(&hive), "1");
    let after = std::fs::read(&hive).unwrap();
    let (ok, out) = ferry(&["--root", &root]);
    assert!(ok, "{out}");
    assert!(
        out.ends_with("no change: the system was already repaired\n"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&hive).unwrap(),
        after,
        "a second run wrote the hive"
    );
    // The other values of the services survive the hive's rewrite.
    let viostor = Cmd::new("hivexget")
        .arg(&hive)
        .arg("\\ControlSet001\\Services\\viostor")
        .arg("ImagePath")
        .run()
        .unwrap();
    assert_eq!(
        viostor.stdout_text().trim(),
        "\\SystemRoot\\System32\\drivers\\viostor.sys"
    );
}

// --- the appliance ---------------------------------------------------------

/// The appliance as configured in production (its boot test on: a
/// Windows system skips it, and the Linux ones of this suite stop at the
/// check or are turned off with `keys`).
fn appliance(dir: &Path, targets: &[PathBuf]) -> crate::common::serve::Server {
    appliance_with(dir, targets, "")
}

fn appliance_with(dir: &Path, targets: &[PathBuf], keys: &str) -> crate::common::serve::Server {
    let mut cfg = format!("token = \"{TOKEN}\"\ncontrol_token = \"{CONTROL_TOKEN}\"\n{keys}");
    for (i, t) in targets.iter().enumerate() {
        cfg.push_str(&format!(
            "[[disk]]\nindex = {i}\ntarget = \"{}\"\n",
            t.display()
        ));
    }
    let path = dir.join("ferry.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut server = crate::common::serve::Server::start_processing(
        &dir.join("state"),
        &["--config", path.to_str().unwrap()],
    );
    server.token = TOKEN.to_owned();
    server.control_token = CONTROL_TOKEN.to_owned();
    server
}

/// An empty target file `extra` bytes larger than `src`.
fn target_for(src: &Path, dir: &Path, extra: u64) -> PathBuf {
    let t = dir.join("target-0.img");
    let size = std::fs::metadata(src).unwrap().len();
    std::fs::File::create(&t)
        .unwrap()
        .set_len(size + extra)
        .unwrap();
    t
}

fn job(server: &crate::common::serve::Server) -> Value {
    let (status, body) = server.control("GET", "/v1/job");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn assert_in_error(
    server: &crate::common::serve::Server,
    sent: &crate::common::serve::Sent,
    code: ErrorCode,
) -> Value {
    let err = sent.stderr();
    assert!(!sent.ok(), "the sender succeeded:\n{err}");
    assert!(err.contains(code.as_str()), "no {code} in:\n{err}");
    assert!(err.contains(code.hint()), "no hint of {code} in:\n{err}");
    let j = job(server);
    assert_eq!(j["state"], "InError", "{j}");
    assert_eq!(j["last_error"]["code"], code.as_str(), "{j}");
    assert_eq!(j["last_error"]["hint"], code.hint(), "{j}");
    j
}

#[test]
fn the_appliance_stops_a_system_without_grub_before_it_changes_anything() {
    need_root!("loop devices, mounts");
    let work = tempfile::tempdir().unwrap();
    let disks = source_image("bios-mbr", work.path());
    edit_partition(&disks[0], 1, |root| remove(root, GRUB_FILES));
    let mut files_before = None;
    edit_partition(&disks[0], 1, |root| files_before = Some(tree_hashes(root)));
    let target = target_for(&disks[0], work.path(), 0);
    let server = appliance(work.path(), std::slice::from_ref(&target));
    let sent = server.send(&[disks[0].as_path()], &[]);
    let j = assert_in_error(&server, &sent, ErrorCode::GrubFailed);
    assert!(
        sent.stderr().contains("Do Grub Failed"),
        "{}",
        sent.stderr()
    );
    assert!(
        sent.stderr().contains(
            "the check before the repair found: no GRUB is installed in the migrated system"
        ),
        "{}",
        sent.stderr()
    );
    // The report in /v1/job is the one `ferry check` gives for the disk.
    let c = &j["check"];
    assert_eq!(c["source"], "disks", "{j}");
    assert_eq!(c["blockers"], 1);
    assert_eq!(
        blockers(c),
        [(
            "GRUB_FAILED".to_owned(),
            "no GRUB is installed in the migrated system".to_owned()
        )]
    );
    assert_eq!(c["systems"][0]["kind"], "linux");
    assert_eq!(c["systems"][0]["bootloader"]["kind"], "none");
    let kept: Value = serde_json::from_slice(
        &std::fs::read(work.path().join("state/processing/check.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(&kept, c);
    // The same report as `ferry check` on the received disk.
    let (ok, cli, _) = check_disks(std::slice::from_ref(&target), &work.path().join("stage"));
    assert!(!ok);
    assert_eq!(&cli, c, "the appliance's check differs from ferry check's");
    // Nothing was changed: the target is the source byte for byte, and so
    // is every file of its root.
    assert_eq!(
        crate::common::serve::file_hash(&target),
        crate::common::serve::file_hash(&disks[0])
    );
    let mut files_after = None;
    edit_partition(&target, 1, |root| files_after = Some(tree_hashes(root)));
    assert_eq!(files_after, files_before);
    assert!(
        !work.path().join("state/processing/repair.json").exists(),
        "the repair ran"
    );
}

#[test]
fn the_appliance_refuses_windows_without_virtio_drivers() {
    need_root!("loop devices, mounts");
    let work = tempfile::tempdir().unwrap();
    let src = windows_image("no-virtio", work.path());
    let target = target_for(&src, work.path(), 0);
    let server = appliance(work.path(), std::slice::from_ref(&target));
    let sent = server.send(&[src.as_path()], &[]);
    let j = assert_in_error(&server, &sent, ErrorCode::VirtioCheckFailed);
    assert!(
        sent.stderr().contains("check virtio failed"),
        "{}",
        sent.stderr()
    );
    assert_eq!(j["check"]["systems"][0]["kind"], "windows", "{j}");
    assert_eq!(j["check"]["systems"][0]["virtio"], false);
    assert_eq!(
        crate::common::serve::file_hash(&target),
        crate::common::serve::file_hash(&src)
    );
}

#[test]
fn the_appliance_prepares_windows_and_grows_its_ntfs_onto_a_larger_disk() {
    need_root!("loop devices, mounts");
    let work = tempfile::tempdir().unwrap();
    let src = windows_image("virtio", work.path());
    let target = target_for(&src, work.path(), 256 << 20);
    let server = appliance(work.path(), std::slice::from_ref(&target));
    let sent = server.send(&[src.as_path()], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    assert!(
        sent.stderr().contains(
            "the round is processed (check, grow, repair, resync, verify) and handed off; the job is Finished"
        ),
        "no mount, no Linux step: {}",
        sent.stderr()
    );
    let j = job(&server);
    assert_eq!(j["state"], "Finished", "{j}");
    assert_eq!(j["check"]["systems"][0]["kind"], "windows", "{j}");
    assert_eq!(j["check"]["blockers"], 0);
    // What was changed is in the job's report.
    let repair: Value = serde_json::from_slice(
        &std::fs::read(work.path().join("state/processing/repair.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        repair["steps"],
        serde_json::json!([{
            "step": "san-policy",
            "status": "changed",
            "changes": [{
                "kind": "registry",
                "hive": "Windows/System32/config/SYSTEM",
                "key": SAN_KEY,
                "value": "SanPolicy",
                "old": "2",
                "new": "1",
            }],
            "notes": [],
        }])
    );
    let handoff: Value =
        serde_json::from_slice(&std::fs::read(work.path().join("state/handoff.json")).unwrap())
            .unwrap();
    assert_eq!(handoff["repairs"], repair["steps"], "{handoff}");
    // Windows prints nothing on the serial console the boot test reads.
    assert!(handoff["boot_test"].is_null(), "{handoff}");
    let round: Value = serde_json::from_slice(
        &std::fs::read(work.path().join("state/processing/report.json")).unwrap(),
    )
    .unwrap();
    assert!(
        round["boot_test_skipped"]
            .as_str()
            .is_some_and(|r| r.starts_with("a Windows system")),
        "{round}"
    );
    assert_eq!(
        handoff["os"]["product_name"], "Windows Server 2019 Datacenter",
        "{handoff}"
    );
    drop(server);
    // Grown to the end of the larger disk, and clean.
    let (start, len) = partition(&target, 1);
    assert_eq!(
        start + len,
        std::fs::metadata(&target).unwrap().len(),
        "the partition reaches the end of the disk"
    );
    {
        let lo = Loop::at(&target, (start, len));
        let info = Cmd::new("ntfsresize")
            .args(["--info", "--force", "--no-progress-bar"])
            .arg(&lo.0)
            .run()
            .unwrap()
            .stdout_text();
        let size: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("Current volume size: "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no volume size in {info}"));
        assert!(
            size > len - (1 << 20) && size <= len,
            "the NTFS ({size} bytes) fills its partition ({len} bytes)"
        );
        Cmd::new("ntfsfix")
            .arg("--no-action")
            .arg(&lo.0)
            .run()
            .unwrap();
    }
    // The SAN policy, read back with a tool ferry did not write with.
    let m = Ntfs::mount(&target, true);
    assert_eq!(
        san_policy(&m.path().join("Windows/System32/config/SYSTEM")),
        "1"
    );
    drop(m);
    // And checked again: nothing left to do.
    let (ok, r, err) = check_disks(std::slice::from_ref(&target), &work.path().join("stage"));
    assert!(ok, "{err}");
    assert_eq!(r["systems"][0]["san_policy"], 1);
    assert_eq!(findings(&r), []);
}

#[test]
fn a_linux_server_without_blockers_goes_on_to_its_repair_and_handoff() {
    need_root!("loop devices, mounts");
    let work = tempfile::tempdir().unwrap();
    let disks = source_image("bios-gpt", work.path());
    let target = target_for(&disks[0], work.path(), 256 << 20);
    // A root suite boots nothing: the QEMU suites show the boot test.
    let server = appliance_with(
        work.path(),
        std::slice::from_ref(&target),
        "boot_test = false\n",
    );
    let sent = server.send(&[disks[0].as_path()], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    crate::common::serve::assert_followed_the_round(&sent.stderr());
    let j = job(&server);
    assert_eq!(j["state"], "Finished", "{j}");
    let c = &j["check"];
    assert_eq!(c["blockers"], 0, "{c}");
    assert_eq!(c["systems"][0]["kind"], "linux");
    assert_eq!(
        c["systems"][0]["os"]["pretty_name"],
        "Debian GNU/Linux 12 (bookworm)"
    );
    assert_eq!(
        blockers(c),
        [],
        "checked before the grow: the source's own sizes"
    );
    // The check ran first, on the disks as they arrived.
    let steps: Vec<String> = serde_json::from_slice::<Value>(
        &std::fs::read(work.path().join("state/processing/report.json")).unwrap(),
    )
    .unwrap()["seconds"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    for s in [
        "check", "grow", "mount", "repair", "resync", "verify", "handoff",
    ] {
        assert!(steps.iter().any(|x| x == s), "no {s} in {steps:?}");
    }
}
