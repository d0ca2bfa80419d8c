//! Boot truth across the stacks people migrate: for each source of
//! `scripts/make-stack-image.sh` (LVM, XFS on GPT with /var and swap by
//! /dev/sdX, btrfs subvolumes, dracut with NetworkManager, netplan on Debian
//! 13 UEFI, Debian 11, a prebuilt UEFI GRUB found by a firmware boot entry):
//!
//! 1. the source boots on its old hardware with its root, hostname, static
//!    address on the old NIC and every fstab file system and swap area in
//!    use (the positive control);
//! 2. the same bytes, unrepaired, fail on the cloud's virtio hardware where
//!    that stack fails (the negative control);
//! 3. migrated by `ferry send` to `ferry serve` (block mode, Processing on,
//!    the appliance's own boot test off), the copy boots on virtio-blk with
//!    virtio-net: the source's root, hostname, the DHCP address, every fstab
//!    file system mounted. The LVM server goes onto a larger disk, and its
//!    PV's partition, the PV, the root LV and its file system grow.
//!
//! One test per stack, so that they run side by side. Needs root and
//! qemu-system-x86_64: `cargo test --release --test qemu -- stacks::`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::boot::{Hardware, Outcome, SourceImage};
use ferry::cmd::Cmd;

const TOKEN: &str = "stacks-job-token-0123456789";
const CONTROL_TOKEN: &str = "stacks-control-token-0123456789";
/// The LVM server's cloud disk is this much larger than its own.
const LVM_EXTRA: u64 = 1 << 30;

/// How the unrepaired source fails on virtio.
#[derive(Clone, Copy, Debug)]
enum Fails {
    /// The initramfs has no virtio driver and gives up on its root, which it
    /// names in the line that says so (initramfs-tools' ALERT).
    RootNamed(&'static str),
    /// dracut's initqueue times out on its root and gives up (its "Could
    /// not boot", or systemd's emergency mode in the initramfs).
    DracutGivesUp,
    /// The firmware finds no loader: the disk's only one is named by the
    /// old machine's boot entry, which the new machine does not have.
    NoLoader,
}

struct Stack {
    variant: &'static str,
    fails: Fails,
    /// Bytes the cloud disk has beyond the source's.
    extra: u64,
}

fn positive_control(src: &SourceImage) {
    let report = crate::common::boot::boot(
        &src.old_hardware_boot(&format!("stack-{}-old-hardware", src.variant)),
    )
    .expect("running the boot check");
    let m = report.expect_booted();
    assert_eq!(m.root_uuid, src.root_uuid, "root file system");
    assert_eq!(m.hostname, src.hostname, "hostname");
    assert_eq!(
        m.ipv4.as_deref(),
        Some(src.static_ipv4.as_str()),
        "the static address of the old server (links: {:?})",
        m.links
    );
    assert_eq!(
        m.iface.as_deref(),
        Some(src.old_nic.as_str()),
        "old NIC name"
    );
    crate::common::boot::assert_fstab_in_use(src, m);
}

fn negative_control(src: &SourceImage, fails: Fails) {
    let mut spec = src.old_hardware_boot(&format!("stack-{}-unrepaired-virtio", src.variant));
    spec.hardware = Hardware::Cloud;
    // The new machine's firmware starts without the old one's entries.
    spec.ovmf_vars = None;
    if matches!(fails, Fails::DracutGivesUp) {
        // dracut waits for its root for about three minutes before it gives up.
        spec.timeout = Duration::from_secs(600);
    }
    if matches!(fails, Fails::NoLoader) {
        // Nothing stops by itself: the firmware tries the network and then
        // waits in its menu. Booting no system within this long is the verdict.
        spec.timeout = Duration::from_secs(150);
    }
    let report = crate::common::boot::boot(&spec).expect("running the boot check");
    let tail = || report.log_tail(3000);
    match (fails, &report.outcome) {
        (Fails::RootNamed(dev), Outcome::RootNotFound(line)) => {
            let dev = dev.replace("{root_uuid}", &src.root_uuid);
            assert!(
                line.contains(&dev),
                "the initramfs should name the missing root {dev}: {line}"
            );
        }
        (Fails::DracutGivesUp, Outcome::RootNotFound(_) | Outcome::EmergencyMode(_)) => {
            let log = report.log_tail(200_000);
            assert!(
                log.contains("dracut"),
                "the initramfs that gave up is dracut's:\n{}",
                tail()
            );
        }
        (Fails::NoLoader, Outcome::TimedOut) => {
            let log = report.log_tail(200_000);
            assert!(
                !log.contains("GRUB") && !log.contains("Linux version"),
                "no loader should have started:\n{}",
                tail()
            );
            assert!(
                log.contains("BdsDxe"),
                "the firmware's boot manager ran:\n{}",
                tail()
            );
        }
        (_, other) => panic!(
            "the unrepaired source must fail on virtio ({fails:?}), got: {other}; log:\n{}",
            tail()
        ),
    }
}

/// The appliance in production mode with mapped targets, its boot test off
/// (the test boots the targets itself, with the fixture's marker).
fn appliance(dir: &Path, targets: &[PathBuf]) -> crate::common::serve::Server {
    crate::common::serve::Server::processing_onto(dir, targets, TOKEN, CONTROL_TOKEN, "")
}

fn job(server: &crate::common::serve::Server) -> serde_json::Value {
    server.job()
}

/// Sends the source through a real appliance and returns the targets once
/// the job is Finished; keeps the logs as artifacts.
fn migrate(src: &SourceImage, dir: &Path, extra: u64) -> Vec<PathBuf> {
    let targets: Vec<PathBuf> = src
        .disks
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let t = dir.join(format!("target-{i}.img"));
            let size = std::fs::metadata(s).expect("source size").len();
            let f = std::fs::File::create(&t).expect("creating a target");
            f.set_len(size + if i == 0 { extra } else { 0 })
                .expect("sizing a target");
            t
        })
        .collect();
    let server = appliance(dir, &targets);
    let disks: Vec<&Path> = src.disks.iter().map(PathBuf::as_path).collect();
    let sent = server.send(&disks, &[]);
    let name = format!("stack-{}", src.variant);
    let out = crate::common::boot::artifacts_dir().join("boot");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join(format!("{name}.send.log")), sent.stderr());
    let j = job(&server);
    drop(server);
    for (from, to) in [
        ("state.serve.log", "serve.log"),
        ("state/processing/repair.json", "repair.json"),
        ("state/processing/report.json", "processing.json"),
    ] {
        let _ = std::fs::copy(dir.join(from), out.join(format!("{name}.{to}")));
    }
    assert!(
        sent.ok() && j["state"] == "Finished",
        "the migration of {} did not finish: job {}, last error {}; the sender's last lines:\n{}",
        src.variant,
        j["state"],
        j["last_error"],
        tail_lines(&sent.stderr(), 6)
    );
    targets
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// (start, sectors) of partition `n` of an image.
fn partition_extent(image: &Path, n: u32) -> (u64, u64) {
    let text = Cmd::new("partx")
        .args(["-g", "-o", "START,SECTORS", "-n", &n.to_string()])
        .arg(image)
        .run()
        .expect("partx")
        .stdout_text();
    let v: Vec<u64> = text
        .split_whitespace()
        .map(|x| x.parse().expect("a number"))
        .collect();
    (v[0], v[1])
}

/// What LVM's on-disk metadata says of the PV on partition 2 of an image
/// and its root LV, and the size of the file system in that LV.
#[derive(Debug)]
struct LvmFacts {
    partition_bytes: u64,
    pv_bytes: u64,
    root_lv_bytes: u64,
    root_fs_bytes: u64,
}

fn lvm_facts(image: &Path) -> LvmFacts {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let (start, sectors) = partition_extent(image, 2);
    // The PV's partition alone, as a loop device; a private LVM
    // configuration that sees only it and needs no device-mapper.
    let lo = Cmd::new("losetup")
        .args([
            "-f",
            "--show",
            "-r",
            "-o",
            &(start * 512).to_string(),
            "--sizelimit",
            &(sectors * 512).to_string(),
        ])
        .arg(image)
        .run()
        .expect("attaching the PV's partition")
        .stdout_text()
        .trim()
        .to_owned();
    let detach = Detach(lo.clone());
    std::fs::write(
        scratch.path().join("lvm.conf"),
        format!(
            "devices {{ filter = [ \"a|^{lo}$|\", \"r|.*|\" ] obtain_device_list_from_udev = 0 use_devicesfile = 0 }}\n\
             activation {{ udev_sync = 0 udev_rules = 0 monitoring = 0 }}\n\
             backup {{ backup = 0 archive = 0 }}\n"
        ),
    )
    .expect("writing lvm.conf");
    let lvm = |args: &[&str]| -> String {
        Cmd::new("lvm")
            .args(args)
            .args([
                "--driverloaded",
                "n",
                "--noheadings",
                "--units",
                "b",
                "--nosuffix",
            ])
            .env("LVM_SYSTEM_DIR", scratch.path())
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .run()
            .unwrap_or_else(|e| panic!("lvm {args:?}: {e:#}"))
            .stdout_text()
            .trim()
            .to_owned()
    };
    let num = |s: &str| -> u64 {
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {s:?}"))
    };
    let pv = lvm(&["pvs", "-o", "pv_size,pe_start", &lo]);
    let pv: Vec<u64> = pv.split_whitespace().map(num).collect();
    let extent = num(&lvm(&["vgs", "-o", "vg_extent_size", "ferry-vg"]));
    let lv = lvm(&[
        "lvs",
        "--segments",
        "-o",
        "seg_size,seg_pe_ranges",
        "ferry-vg/root",
    ]);
    let (size, ranges) = lv.split_once(' ').expect("lvs: size and PE ranges");
    assert!(
        !lv.contains('\n'),
        "the root LV is one segment after growing: {lv}"
    );
    let first: u64 = num(ranges
        .trim()
        .rsplit(':')
        .next()
        .and_then(|r| r.split('-').next())
        .expect("a PE range"));
    let root_lv_bytes = num(size);
    drop(detach);
    let fs_lo = Cmd::new("losetup")
        .args([
            "-f",
            "--show",
            "-r",
            "-o",
            &(start * 512 + pv[1] + first * extent).to_string(),
            "--sizelimit",
            &root_lv_bytes.to_string(),
        ])
        .arg(image)
        .run()
        .expect("attaching the root LV")
        .stdout_text()
        .trim()
        .to_owned();
    let _detach = Detach(fs_lo.clone());
    let sb = Cmd::new("dumpe2fs")
        .args(["-h", &fs_lo])
        .run()
        .expect("dumpe2fs of the root LV")
        .stdout_text();
    let field = |k: &str| -> u64 {
        sb.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(num)
            .unwrap_or_else(|| panic!("dumpe2fs shows no {k}"))
    };
    LvmFacts {
        partition_bytes: sectors * 512,
        pv_bytes: pv[0],
        root_lv_bytes,
        root_fs_bytes: field("Block count:") * field("Block size:"),
    }
}

struct Detach(String);

impl Drop for Detach {
    fn drop(&mut self) {
        let _ = Cmd::new("losetup").args(["-d", &self.0]).run();
    }
}

fn run(stack: Stack) {
    need_root!("loop devices, mounts and chroot build the source images");
    let src = SourceImage::build_stack(stack.variant).expect("building the source image");
    positive_control(&src);
    negative_control(&src, stack.fails);
    let dir = tempfile::tempdir().expect("scratch directory");
    let targets = migrate(&src, dir.path(), stack.extra);
    if stack.extra > 0 {
        let before = lvm_facts(&src.disks[0]);
        let after = lvm_facts(&targets[0]);
        eprintln!("LVM before {before:?}, after {after:?}");
        let slack = 8 << 20;
        assert!(
            after.partition_bytes + slack >= before.partition_bytes + stack.extra,
            "the PV's partition grew into the larger disk: {before:?} -> {after:?}"
        );
        assert!(
            after.pv_bytes + slack >= after.partition_bytes,
            "the PV fills its partition: {after:?}"
        );
        assert!(
            after.root_lv_bytes >= before.root_lv_bytes + stack.extra - slack,
            "the root LV took the new space: {before:?} -> {after:?}"
        );
        assert_eq!(
            after.root_fs_bytes, after.root_lv_bytes,
            "the root file system fills its LV"
        );
    }
    crate::common::boot::boots_on_the_cloud(
        &src,
        targets,
        &format!("stack-{}-migrated-virtio", src.variant),
    );
}

#[test]
fn lvm_server_boots_fails_unrepaired_and_migrates_onto_a_larger_disk() {
    run(Stack {
        variant: "lvm",
        fails: Fails::RootNamed("/dev/mapper/ferry--vg-root"),
        extra: LVM_EXTRA,
    });
}

#[test]
fn xfs_gpt_server_with_var_and_sdx_swap_boots_fails_unrepaired_and_migrates() {
    run(Stack {
        variant: "xfs-gpt",
        fails: Fails::RootNamed("UUID={root_uuid}"),
        extra: 0,
    });
}

#[test]
fn btrfs_subvolume_server_boots_fails_unrepaired_and_migrates() {
    run(Stack {
        variant: "btrfs",
        fails: Fails::RootNamed("UUID={root_uuid}"),
        extra: 0,
    });
}

#[test]
fn dracut_networkmanager_server_boots_fails_unrepaired_and_migrates() {
    run(Stack {
        variant: "dracut-nm",
        fails: Fails::DracutGivesUp,
        extra: 0,
    });
}

#[test]
fn netplan_trixie_uefi_server_boots_fails_unrepaired_and_migrates() {
    run(Stack {
        variant: "netplan-trixie",
        fails: Fails::RootNamed("UUID={root_uuid}"),
        extra: 0,
    });
}

#[test]
fn bullseye_server_boots_fails_unrepaired_and_migrates() {
    run(Stack {
        variant: "bullseye-bios",
        fails: Fails::RootNamed("UUID={root_uuid}"),
        extra: 0,
    });
}

#[test]
fn prebuilt_uefi_grub_server_boots_fails_unrepaired_and_migrates() {
    run(Stack {
        variant: "uefi-prebuilt",
        fails: Fails::NoLoader,
        extra: 0,
    });
}

// ---- without QEMU -----------------------------------------------------------------

#[test]
fn stack_marker_reports_the_fstab_in_use() {
    let m = crate::common::boot::parse_marker(
        "FERRY-BOOT-MARKER root_uuid=u ipv4=10.0.2.50/24@ens8 hostname=h data=none links=ens8 mounts=/,/boot,/var unmounted=none swaps=1",
    )
    .expect("parsing");
    assert_eq!(
        m.mounts,
        Some(vec!["/".to_owned(), "/boot".to_owned(), "/var".to_owned()])
    );
    assert_eq!(m.unmounted, Some(vec![]));
    assert_eq!(m.swaps, Some(1));
    let m = crate::common::boot::parse_marker(
        "FERRY-BOOT-MARKER root_uuid=u ipv4=none hostname=h data=none links=ens3 mounts=/ unmounted=/var,/home swaps=0",
    )
    .expect("parsing");
    assert_eq!(
        m.unmounted,
        Some(vec!["/var".to_owned(), "/home".to_owned()])
    );
    // The markers of make-source-image.sh say nothing of the fstab.
    let m = crate::common::boot::parse_marker(
        "FERRY-BOOT-MARKER root_uuid=u ipv4=none hostname=h data=none links=ens3",
    )
    .expect("parsing");
    assert_eq!((m.mounts, m.unmounted, m.swaps), (None, None, None));
    let err = crate::common::boot::parse_marker(
        "FERRY-BOOT-MARKER root_uuid=u ipv4=none hostname=h data=none links=ens3 swaps=x",
    )
    .expect_err("swaps not a number");
    assert!(
        format!("{err:#}").contains("swaps= is not a number"),
        "{err:#}"
    );
}
