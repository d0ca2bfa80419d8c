//! The repair engine on a real Debian bookworm source server (built by
//! scripts/make-source-image.sh: fstab on /dev/sda1, ifupdown with a static
//! address, an initramfs without virtio), loop-mounted by the layout
//! engine: `--plan` changes no byte; the repair runs the system's own
//! update-initramfs, grub-install and update-grub in a chroot; the result
//! is checked with the system's own lsinitramfs; a second run changes
//! nothing.

#![allow(clippy::unwrap_used)] // a test file: a panic is the failure report

use std::path::Path;

use crate::common::repair::*;
use ferry::layout::tree::{MountOptions, MountTree};
use ferry::repair::{self, probe, BootMode, DeviceMap, Mode, Status};

fn lines_with<'a>(text: &'a str, word: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.split_whitespace().next() == Some(word))
        .collect()
}

#[test]
fn debian_bookworm_source_is_repaired_and_a_second_run_changes_nothing() {
    need_root!("loop devices, mounts, chroot");
    let work = tempfile::tempdir().unwrap();
    let disks = source_image("bios-mbr", work.path());
    let mut layout = ferry::layout::read_all(&disks).unwrap();
    layout.disks[0].partitions[0].fs.mount = Some("/".to_owned());
    let staging = work.path().join("mnt");
    let tree = MountTree::mount(&layout, &disks, &staging, MountOptions::default()).unwrap();
    let root = tree.root().to_owned();
    let loopdev = tree.disks()[0].whole().to_owned();
    let result = std::panic::catch_unwind(|| check(&root, &loopdev));
    tree.close().unwrap();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

fn check(root: &Path, loopdev: &Path) {
    let rootarg = root.to_str().unwrap();
    let diskarg = format!("/dev/sda={}", loopdev.display());
    let devices = DeviceMap {
        renamed: Vec::new(),
        disks: vec![probe::probe_disk(vec!["/dev/sda".into()], loopdev, root).unwrap()],
    };
    let root_vol = devices
        .by_mountpoint("/")
        .expect("the root volume is mounted at /")
        .clone();
    let uuid = root_vol.uuid.clone().unwrap();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    assert!(
        read("etc/fstab").contains("/dev/sda1 / ext4"),
        "the source's fstab names /dev/sda1"
    );

    // --plan: diffs and commands on stdout, not one byte written.
    let before = tree_hashes(root);
    let (ok, out, err) = ferry(&["repair", "--root", rootarg, "--disk", &diskarg, "--plan"]);
    assert!(ok, "plan failed: {err}");
    assert!(
        out.contains(&format!(
            "-/dev/sda1 / ext4 errors=remount-ro 0 1\n+UUID={uuid} / ext4 errors=remount-ro 0 1\n"
        )),
        "{out}"
    );
    assert!(out.contains("+iface eth0 inet dhcp\n"), "{out}");
    assert!(
        out.contains("would run (in chroot): update-initramfs -u -k "),
        "{out}"
    );
    assert!(out.contains("would run (in chroot): update-grub"), "{out}");
    assert!(
        out.ends_with("plan: changes shown above; nothing was written\n"),
        "{out}"
    );
    assert_eq!(tree_hashes(root), before, "--plan changed files");

    // Apply through the CLI, with its JSON report.
    let report = root.parent().unwrap().join("report.json");
    let (ok, out, err) = ferry(&[
        "repair",
        "--root",
        rootarg,
        "--disk",
        &diskarg,
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(ok, "repair failed: {err}\n{out}");
    eprintln!("{out}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["changed"], true);
    assert_eq!(json["recipe"], "debian");
    assert_eq!(json["os"]["id"], "debian");
    assert_eq!(json["error"], serde_json::Value::Null);

    let fstab = read("etc/fstab");
    assert!(
        fstab.contains(&format!("\nUUID={uuid} / ext4 errors=remount-ro 0 1\n")),
        "{fstab}"
    );
    assert!(!fstab.contains("/dev/sd"), "{fstab}");

    let cfg = read("boot/grub/grub.cfg");
    let linux = lines_with(&cfg, "linux");
    assert!(!linux.is_empty(), "{cfg}");
    for l in &linux {
        assert!(l.contains(&format!("root=UUID={uuid} ")), "{l}");
        assert!(
            l.contains("console=ttyS0,115200n8") && l.contains("net.ifnames=0"),
            "{l}"
        );
    }
    assert!(
        !cfg.contains("/dev/loop"),
        "grub.cfg names the appliance's loop device"
    );

    let interfaces = read("etc/network/interfaces");
    assert!(
        interfaces.contains("\nallow-hotplug eth0\niface eth0 inet dhcp\n"),
        "{interfaces}"
    );
    assert!(
        lines_with(&interfaces, "iface")
            .iter()
            .all(|l| l.ends_with("inet dhcp") || l.ends_with("inet loopback")),
        "{interfaces}"
    );
    assert!(
        !lines_with(&interfaces, "address").iter().any(|_| true),
        "a static address is still active: {interfaces}"
    );

    // The system's own lsinitramfs sees the drivers in every kernel's image.
    let kernels: Vec<String> = std::fs::read_dir(root.join("lib/modules"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!kernels.is_empty());
    let session = ferry::sandbox::Sandbox::enter(root, &[]).unwrap();
    for k in &kernels {
        let out = session
            .command("lsinitramfs")
            .arg(format!("/boot/initrd.img-{k}"))
            .run()
            .unwrap()
            .stdout_text();
        for m in [
            "virtio_blk",
            "virtio_net",
            "virtio_pci",
            "virtio_scsi",
            "nvme",
        ] {
            assert!(
                out.lines().any(|l| l.ends_with(&format!("/{m}.ko"))),
                "{m} missing from the initramfs of {k}"
            );
        }
    }
    session.close().unwrap();

    // The MBR holds GRUB's boot code.
    let mut mbr = [0u8; 512];
    std::io::Read::read_exact(&mut std::fs::File::open(loopdev).unwrap(), &mut mbr).unwrap();
    assert!(
        mbr.windows(4).any(|w| w == b"GRUB"),
        "no GRUB boot code in the MBR"
    );
    assert_eq!(&mbr[510..], &[0x55, 0xaa]);

    // A second run, through the library as the job runner calls it: no change.
    second_run_changes_nothing(root, &devices);
}

/// Mount `disks` with the layout engine, partition p of disk d at mp.
fn mounted(
    disks: &[std::path::PathBuf],
    staging: &Path,
    mounts: &[(usize, usize, &str)],
) -> MountTree {
    let mut layout = ferry::layout::read_all(disks).unwrap();
    for (d, p, mp) in mounts {
        layout.disks[*d].partitions[*p].fs.mount = Some((*mp).to_owned());
    }
    MountTree::mount(&layout, disks, staging, MountOptions::default()).unwrap()
}

/// Repair `variant` through the library, as the job runner does, with the
/// device map taken from the layout engine's mount tree; run `check` on
/// the tree; a second run must change nothing.
fn repair_variant(
    variant: &str,
    mounts: &[(usize, usize, &str)],
    source_names: &[&str],
    check: impl Fn(&Path, &DeviceMap, &MountTree),
) {
    need_root!("loop devices, mounts, chroot");
    let work = tempfile::tempdir().unwrap();
    let disks = source_image(variant, work.path());
    let tree = mounted(&disks, &work.path().join("mnt"), mounts);
    let names: Vec<Vec<String>> = source_names.iter().map(|n| vec![(*n).to_owned()]).collect();
    let devices = DeviceMap::from_mount_tree(&tree, &names);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let first = repair::run(tree.root(), &devices, BootMode::Auto, Mode::Apply).unwrap();
        assert!(first.changed);
        check(tree.root(), &devices, &tree);
        second_run_changes_nothing(tree.root(), &devices);
    }));
    tree.close().unwrap();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

/// A second repair of `root` reports no change.
fn second_run_changes_nothing(root: &Path, devices: &DeviceMap) {
    let again = repair::run(root, devices, BootMode::Auto, Mode::Apply).unwrap();
    let changed: Vec<String> = again
        .steps
        .iter()
        .filter(|s| s.status == Status::Changed)
        .map(|s| format!("{}: {:?}", s.step, s.changes))
        .collect();
    assert!(changed.is_empty(), "second run changed: {changed:#?}");
    assert!(!again.changed);
}

/// The bios-mbr source mounted (its root only) with its device map;
/// `check` runs on it, and it is unmounted whatever `check` does.
fn on_bios_mbr(check: impl FnOnce(&Path, &DeviceMap)) {
    let work = tempfile::tempdir().unwrap();
    let disks = source_image("bios-mbr", work.path());
    let tree = mounted(&disks, &work.path().join("mnt"), &[(0, 0, "/")]);
    let devices = DeviceMap::from_mount_tree(&tree, &[vec!["/dev/sda".to_owned()]]);
    let root = tree.root().to_owned();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&root, &devices)));
    tree.close().unwrap();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

fn uuid_at(devices: &DeviceMap, mp: &str) -> String {
    devices
        .by_mountpoint(mp)
        .and_then(|v| v.uuid.clone())
        .unwrap()
}

#[test]
fn bios_gpt_with_separate_boot_and_swap() {
    repair_variant(
        "bios-gpt",
        &[(0, 3, "/"), (0, 1, "/boot")],
        &["/dev/sda"],
        |root, devices, _| {
            let swap = devices
                .volumes()
                .find(|v| v.fstype.as_deref() == Some("swap"))
                .unwrap();
            let fstab = std::fs::read_to_string(root.join("etc/fstab")).unwrap();
            let want = format!(
            "UUID={} / ext4 errors=remount-ro 0 1\nUUID={} /boot ext4 defaults 0 2\nUUID={} none swap sw 0 0\n",
            uuid_at(devices, "/"),
            uuid_at(devices, "/boot"),
            swap.uuid.clone().unwrap()
        );
            assert!(fstab.ends_with(&want), "{fstab}");
            // /boot is its own file system: grub.cfg lives there and boots / by UUID.
            let cfg = std::fs::read_to_string(root.join("boot/grub/grub.cfg")).unwrap();
            let root_arg = format!("root=UUID={} ", uuid_at(devices, "/"));
            assert!(
                lines_with(&cfg, "linux")
                    .iter()
                    .all(|l| l.contains(&root_arg)),
                "{cfg}"
            );
        },
    );
}

#[test]
fn uefi_gpt_gets_the_removable_loader_on_its_esp() {
    repair_variant(
        "uefi-gpt",
        &[(0, 1, "/")],
        &["/dev/sda"],
        |root, devices, tree| {
            let esp = devices
                .volumes()
                .find(|v| v.fstype.as_deref() == Some("vfat"))
                .unwrap();
            let fstab = std::fs::read_to_string(root.join("etc/fstab")).unwrap();
            assert!(
                fstab.contains(&format!(
                    "\nUUID={} /boot/efi vfat umask=0077 0 1\n",
                    esp.uuid.clone().unwrap()
                )),
                "{fstab}"
            );
            assert_eq!(esp.node, tree.disks()[0].partitions()[0]);
            let loader = ferry::layout::fat::FatPartition::new(&esp.node)
                .read("EFI/BOOT/BOOTX64.EFI")
                .unwrap();
            let marker = format!(
                "# ferry-early-config {} /boot/grub\n",
                uuid_at(devices, "/")
            );
            assert!(
                loader.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "the ESP's loader was not built for this root"
            );
            assert!(loader.starts_with(b"MZ"), "not an EFI executable");
        },
    );
}

/// Without root: a directory that holds no Linux fails with its code and
/// the hint, and changes nothing.
#[test]
fn a_root_without_linux_is_refused_with_a_code_and_hint() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("Windows/System32")).unwrap();
    let before = tree_hashes(d.path());
    let (ok, _out, err) = ferry(&["repair", "--root", d.path().to_str().unwrap(), "--plan"]);
    assert!(!ok);
    assert!(
        err.contains("error: detecting the migrated OS: UNSUPPORTED_OS: The migrated operating system is not supported"),
        "{err}"
    );
    assert!(err.contains("\nhint: ferry repairs Linux systems"), "{err}");
    assert_eq!(tree_hashes(d.path()), before);
}

#[test]
fn data_disk_migrated_with_the_system_disk() {
    repair_variant(
        "bios-mbr-data",
        &[(0, 0, "/"), (1, 0, "/data")],
        &["/dev/sda", "/dev/sdb"],
        |root, devices, _| {
            let fstab = std::fs::read_to_string(root.join("etc/fstab")).unwrap();
            let want = format!(
                "UUID={} / ext4 errors=remount-ro 0 1\nUUID={} /data ext4 defaults 0 2\n",
                uuid_at(devices, "/"),
                uuid_at(devices, "/data")
            );
            assert!(fstab.ends_with(&want), "{fstab}");
        },
    );
}

#[test]
fn data_disk_left_behind_is_commented_out_of_fstab() {
    repair_variant(
        "bios-mbr-data",
        &[(0, 0, "/")],
        &["/dev/sda"],
        |root, _, _| {
            let fstab = std::fs::read_to_string(root.join("etc/fstab")).unwrap();
            assert!(
            fstab.ends_with("\n# ferry: disk not migrated, /dev/sdb1 would name another disk on the cloud: /dev/sdb1 /data ext4 defaults 0 2\n"),
            "{fstab}"
        );
        },
    );
}

/// The operator's hooks on a real system: after-repair scripts run in the
/// sandbox of the migrated system (its files, its shell), their output
/// and status in the report, a failure that need not succeed reported and
/// passed, a timeout killed; a first-boot hook installed as a unit that
/// removes itself; a must-succeed failure stops the repair with
/// HOOK_FAILED and its output, and the hooks after it do not run.
#[test]
fn hooks_run_in_the_migrated_system_and_a_must_succeed_failure_stops_the_repair() {
    use ferry::repair::hooks::{HookStatus, Hooks};
    need_root!("loop devices, mounts, chroot");
    on_bios_mbr(|root, devices| {
        let hooks = Hooks::parse(
            r##"
[[hook]]
name = "proof"
phase = "after-repair"
script = """#!/bin/sh
echo "ran on $(cat /etc/hostname) as $(id -u)" >/etc/ferry-hook-proof
cat /etc/ferry-hook-proof
echo to-stderr >&2
"""
must_succeed = true

[[hook]]
name = "soft-fail"
phase = "after-repair"
script = "echo trying; exit 3"

[[hook]]
name = "sleepy"
phase = "after-repair"
script = "sleep 60"
timeout = 1

[[hook]]
name = "greet"
phase = "first-boot"
script = "echo hello from the first boot >/var/lib/greeted"
"##,
        )
        .unwrap();
        let mut opts =
            repair::RepairOptions::new(root, devices.clone(), BootMode::Auto, Mode::Apply);
        opts.hooks = hooks;
        let out = repair::run_with_options(&opts);
        if let Some(e) = &out.error {
            panic!("the repair failed: {e:#}");
        }
        let report = out.report;
        let by_name = |n: &str| report.hooks.iter().find(|h| h.name == n).unwrap().clone();
        let proof = by_name("proof");
        assert_eq!(proof.status, HookStatus::Succeeded, "{proof:?}");
        assert_eq!(proof.exit_code, Some(0));
        assert_eq!(proof.stdout, "ran on src-bios-mbr as 0\n");
        assert_eq!(proof.stderr, "to-stderr\n");
        assert_eq!(
            std::fs::read_to_string(root.join("etc/ferry-hook-proof")).unwrap(),
            "ran on src-bios-mbr as 0\n"
        );
        // The script itself does not stay in the migrated system.
        assert!(!root.join("var/lib/ferry/hooks/proof").exists());
        let soft = by_name("soft-fail");
        assert_eq!((soft.status, soft.exit_code), (HookStatus::Failed, Some(3)));
        assert_eq!(soft.stdout, "trying\n");
        let sleepy = by_name("sleepy");
        assert_eq!(sleepy.status, HookStatus::TimedOut, "{sleepy:?}");
        assert!(sleepy.seconds.unwrap() < 30.0, "{sleepy:?}");
        let step = report.steps.iter().find(|s| s.step == "hooks").unwrap();
        assert!(
            step.notes.iter().any(|n| n.starts_with("the after-repair hook soft-fail exited with status 3 (not must_succeed: the repair goes on)")),
            "{:?}",
            step.notes
        );
        assert!(step
            .notes
            .iter()
            .any(|n| n.starts_with("the after-repair hook sleepy ran out of its 1 s")));
        // The first-boot hook waits as an enabled unit.
        assert_eq!(by_name("greet").status, HookStatus::Installed);
        let unit = "etc/systemd/system/ferry-first-boot-greet.service";
        assert!(std::fs::read_to_string(root.join(unit))
            .unwrap()
            .contains("ExecStart=/bin/sh /var/lib/ferry/first-boot/greet.run\n"));
        assert_eq!(
            std::fs::read_link(
                root.join(
                    "etc/systemd/system/multi-user.target.wants/ferry-first-boot-greet.service"
                )
            )
            .unwrap(),
            Path::new("/etc/systemd/system/ferry-first-boot-greet.service")
        );

        // A must-succeed hook that fails stops the repair, with its code
        // and output; the hooks after it do not run.
        let gate = Hooks::parse(
            "[[hook]]\nname = \"gate\"\nphase = \"after-repair\"\nscript = \"echo failing-output; exit 7\"\nmust_succeed = true\n\n[[hook]]\nname = \"after-gate\"\nphase = \"after-repair\"\nscript = \"touch /etc/after-gate\"\n",
        )
        .unwrap();
        opts.hooks = gate;
        let out = repair::run_with_options(&opts);
        let err = out.error.expect("the repair fails");
        let coded = ferry::job::errors::find_coded(&err).expect("a coded error");
        assert_eq!(coded.code, ferry::job::errors::ErrorCode::HookFailed);
        assert!(
            format!("{err:#}")
                .contains("the after-repair hook gate exited with status 7: failing-output"),
            "{err:#}"
        );
        let e = out.report.error.unwrap();
        assert_eq!(
            (e.code.as_str(), e.step.as_deref()),
            ("HOOK_FAILED", Some("hooks"))
        );
        assert_eq!(out.report.hooks.len(), 1, "{:?}", out.report.hooks);
        assert_eq!(out.report.hooks[0].status, HookStatus::Failed);
        assert!(!root.join("etc/after-gate").exists());
    });
}

/// The labels, not a relabel: a Debian server with SELinux (the real
/// policy's file_contexts, the tree labelled by `setfiles`), repaired:
/// every file the repair or its tools wrote carries the label
/// `matchpathcon` gives its path, no file is left without the label the
/// policy gives it, no relabel is scheduled, and a second run changes
/// nothing. ferry's reading of file_contexts agrees with libselinux's on
/// every path of the tree's /etc and /boot and on aliased paths.
#[test]
fn selinux_labels_of_what_the_repair_wrote_come_from_the_policy() {
    use ferry::repair::selinux::{label_of, FileContexts, Kind};
    need_root!("loop devices, mounts, chroot, security.* attributes");
    let policy = Path::new("/etc/selinux/default");
    assert!(
        policy.join("contexts/files/file_contexts").exists(),
        "the test needs Debian's selinux-policy-default (scripts/packages.txt)"
    );
    on_bios_mbr(|root, devices| {
        let root = root.to_owned();
        let run = |argv: &[&str]| {
            let out = ferry::cmd::Cmd::new(argv[0]).args(&argv[1..]).run();
            out.unwrap_or_else(|e| panic!("{argv:?}: {e:#}"))
        };
        let selinux = root.join("etc/selinux");
        std::fs::create_dir_all(&selinux).unwrap();
        run(&[
            "cp",
            "-a",
            "/etc/selinux/default",
            selinux.to_str().unwrap(),
        ]);
        std::fs::write(
            selinux.join("config"),
            "SELINUX=enforcing\nSELINUXTYPE=default\n",
        )
        .unwrap();
        let fc = selinux.join("default/contexts/files/file_contexts");
        let fc_s = fc.to_str().unwrap().to_owned();
        run(&[
            "setfiles",
            "-r",
            root.to_str().unwrap(),
            &fc_s,
            root.to_str().unwrap(),
        ]);
        let before = tree_hashes(&root);

        let first = repair::run(&root, devices, BootMode::Auto, Mode::Apply).unwrap();
        assert!(!root.join(".autorelabel").exists(), "no full relabel");
        let se = first.steps.iter().find(|s| s.step == "selinux").unwrap();
        assert!(
            se.notes
                .iter()
                .any(|n| n.contains("no relabel is scheduled")),
            "{:?}",
            se.notes
        );
        let labels = first
            .steps
            .iter()
            .find(|s| s.step == "selinux-labels")
            .unwrap();
        assert_eq!(labels.status, Status::Changed);

        // What libselinux says, for a batch of paths of one type.
        let matchpathcon = |kind: &str, paths: &[String]| -> Vec<String> {
            if paths.is_empty() {
                return Vec::new();
            }
            let mut argv = vec!["matchpathcon", "-n", "-m", kind, "-f", &fc_s];
            argv.extend(paths.iter().map(String::as_str));
            run(&argv)
                .stdout_text()
                .lines()
                .map(str::to_owned)
                .collect()
        };
        let kind_name = |m: &std::fs::Metadata| {
            if m.file_type().is_symlink() {
                "lnk_file"
            } else if m.is_dir() {
                "dir"
            } else {
                "file"
            }
        };
        // Every file that changed or is new, and every path left without a
        // label anywhere in the tree.
        let after = tree_hashes(&root);
        let mut check: Vec<String> = after
            .iter()
            .filter(|(p, h)| before.get(*p) != Some(*h))
            .map(|(p, _)| format!("/{}", p.display()))
            .collect();
        assert!(check.iter().any(|p| p == "/etc/fstab"), "{check:?}");
        assert!(
            check.iter().any(|p| p.starts_with("/boot/initrd.img-")),
            "{check:?}"
        );
        let mut unlabelled = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                let rel = format!("/{}", p.strip_prefix(&root).unwrap().display());
                if ["/proc", "/sys", "/dev", "/run", "/tmp"].contains(&rel.as_str()) {
                    continue;
                }
                let m = std::fs::symlink_metadata(&p).unwrap();
                if label_of(&p).is_none() {
                    unlabelled.push(rel.clone());
                }
                if m.is_dir() {
                    stack.push(p);
                }
            }
        }
        check.extend(unlabelled.iter().cloned());
        check.sort();
        check.dedup();
        for kind in ["file", "dir", "lnk_file"] {
            let paths: Vec<String> = check
                .iter()
                .filter(|p| {
                    kind_name(&std::fs::symlink_metadata(root.join(&p[1..])).unwrap()) == kind
                })
                .cloned()
                .collect();
            let want = matchpathcon(kind, &paths);
            assert_eq!(want.len(), paths.len(), "{kind}: {want:?}");
            for (p, w) in paths.iter().zip(&want) {
                let got = label_of(&root.join(&p[1..]));
                let want = (w != "<<none>>").then(|| w.clone());
                assert_eq!(got, want, "{p} ({kind})");
            }
        }

        // ferry's reading of file_contexts agrees with libselinux's.
        let contexts = FileContexts::load(&ferry::repair::tree::Tree::new(&root), "default")
            .unwrap()
            .unwrap();
        let mut sample: Vec<(String, &str)> = Vec::new();
        for (p, _) in after.iter().filter(|(p, _)| {
            p.starts_with("etc") || p.starts_with("boot") || p.starts_with("usr/lib/systemd")
        }) {
            let m = std::fs::symlink_metadata(root.join(p)).unwrap();
            sample.push((format!("/{}", p.display()), kind_name(&m)));
        }
        for extra in [
            "/lib64/ld-linux-x86-64.so.2",
            "/home/u/.ssh/authorized_keys",
            "/root/.bashrc",
            "/var/log/x.log",
            "/usr/local/sbin/x",
            "/etc/systemd/system/x.service",
        ] {
            sample.push((extra.to_owned(), "file"));
        }
        assert!(sample.len() > 500, "{}", sample.len());
        for kind in ["file", "dir", "lnk_file"] {
            let paths: Vec<String> = sample
                .iter()
                .filter(|(_, k)| *k == kind)
                .map(|(p, _)| p.clone())
                .collect();
            for chunk in paths.chunks(500) {
                let want = matchpathcon(kind, chunk);
                let k = match kind {
                    "file" => Kind::File,
                    "dir" => Kind::Dir,
                    _ => Kind::Link,
                };
                for (p, w) in chunk.iter().zip(&want) {
                    let want = (w != "<<none>>").then_some(w.as_str());
                    assert_eq!(contexts.lookup(p, k), want, "{p} ({kind})");
                }
            }
        }

        second_run_changes_nothing(&root, devices);
    });
}
