//! File mode end to end: the Debian system of a source image (BIOS, GPT:
//! BIOS boot, ext4 /boot, swap, ext4 /) mounted read-only and sent with
//! `ferry send --mode file --root --layout` (the layout that `ferry layout
//! read --mounts` prints of the source disk) to a real `ferry serve` over
//! loopback, onto a target half the size of the source disk. The appliance
//! lays the target out with the source's UUIDs, writes the trees, repairs
//! and verifies the system and hands it off; the target then boots on the
//! cloud's hardware (virtio-blk, virtio-net with DHCP) with the source's
//! root UUID and hostname.
//!
//! Needs root and qemu-system-x86_64: `cargo test --release --test
//! qemu_filemode -- --test-threads=1`.

use std::path::{Path, PathBuf};

use crate::common::boot::SourceImage;
use ferry::cmd::Cmd;
use ferry::layout::{MountOptions, MountTree};

const TOKEN: &str = "filemode-job-token-0123456789";
const CONTROL_TOKEN: &str = "filemode-control-token-0123456789";
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// The appliance in production mode, writing `target`; its own boot test
/// off: the test boots the target itself afterwards, with the fixture's
/// marker.
fn appliance(dir: &Path, target: &Path) -> crate::common::serve::Server {
    crate::common::serve::Server::processing_onto(
        dir,
        &[target.to_path_buf()],
        TOKEN,
        CONTROL_TOKEN,
        "",
    )
}

fn job(server: &crate::common::serve::Server) -> serde_json::Value {
    server.job()
}

fn send_files(
    server: &crate::common::serve::Server,
    root: &Path,
    layout: &Path,
    excludes: &Path,
) -> crate::common::serve::Sent {
    server.send_only(
        &[],
        &[
            "--mode",
            "file",
            "--root",
            root.to_str().unwrap(),
            "--layout",
            layout.to_str().unwrap(),
            "--excludes",
            excludes.to_str().unwrap(),
        ],
    )
}

/// The system disk's exclude list: what a cloud machine does without
/// (translations, documentation, drivers of hardware it has not: GPUs,
/// cameras, Wi-Fi, sound, InfiniBand...). Without it the source's root
/// (614 MiB used) would not fit half of its 1.5 GiB disk with headroom
/// beside /boot and swap.
fn excludes(dir: &Path, root: &Path) -> PathBuf {
    let kernel = std::fs::read_dir(root.join("usr/lib/modules"))
        .expect("the source's modules")
        .next()
        .expect("a kernel's modules")
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    let mut list = String::from(
        "# a cloud machine needs none of these\n/usr/share/locale/\n/usr/share/doc/\n/usr/share/man/\n",
    );
    for d in [
        "drivers/gpu",
        "drivers/media",
        "drivers/infiniband",
        "drivers/net/wireless",
        "drivers/iio",
        "drivers/staging",
        "drivers/bluetooth",
        "drivers/isdn",
        "sound",
    ] {
        list.push_str(&format!("/usr/lib/modules/{kernel}/kernel/{d}/\n"));
    }
    let ex = dir.join("Excludes");
    std::fs::create_dir_all(&ex).unwrap();
    std::fs::write(ex.join("rsync_excludes_linux.txt"), list).unwrap();
    ex
}

/// UUID of partition `n` of an image, as blkid finds it in its extent.
/// Bytes (start, length) of partition `n` of an image, as partx reads them.
fn partition_extent(image: &Path, n: u32) -> (u64, u64) {
    let out = Cmd::new("partx")
        .args(["-g", "-b", "-o", "START,SECTORS", "-n", &n.to_string()])
        .arg(image)
        .run()
        .expect("partx");
    let v: Vec<u64> = out
        .stdout_text()
        .split_whitespace()
        .map(|x| x.parse().expect("a number"))
        .collect();
    (v[0] * 512, v[1] * 512)
}

fn partition_uuid(image: &Path, n: u32) -> String {
    let (start, len) = partition_extent(image, n);
    let probe = ferry::layout::mkfs::probe(image, ferry::layout::desc::Extent { start, len })
        .expect("blkid");
    probe.uuid.unwrap_or_default()
}

/// The "Filesystem features" line of the ext file system at byte `offset`.
fn ext_features(image: &Path, offset: u64) -> String {
    let out = Cmd::new("dumpe2fs")
        .arg("-h")
        .arg(format!("{}?offset={offset}", image.display()))
        .run()
        .expect("dumpe2fs -h");
    out.stdout_text()
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem features:"))
        .map(|f| f.split_whitespace().collect::<Vec<_>>().join(" "))
        .expect("dumpe2fs shows the features")
}

/// A copy of the cached source image in `dir` (nothing may write the
/// cache's), its layout as `ferry layout read --mounts` prints it (the
/// source's fstab names its disk /dev/sda), written to `layout.toml`, and
/// its system mounted read-only.
fn source_mounted(
    src: &SourceImage,
    dir: &Path,
) -> (PathBuf, PathBuf, ferry::layout::Layout, MountTree) {
    let source = dir.join("source.img");
    Cmd::new("cp")
        .args(["--sparse=always"])
        .arg(&src.disks[0])
        .arg(&source)
        .run()
        .expect("copying the source image");
    let layout_toml = Cmd::new(FERRY)
        .args(["layout", "read", "--mounts", "--source-name", "/dev/sda"])
        .arg(&source)
        .run()
        .expect("ferry layout read")
        .stdout_text();
    let layout = dir.join("layout.toml");
    std::fs::write(&layout, &layout_toml).unwrap();
    let described = ferry::layout::Layout::from_toml(&layout_toml).expect("the layout");
    let mounted = MountTree::mount(
        &described,
        std::slice::from_ref(&source),
        &dir.join("src"),
        MountOptions { read_only: true },
    )
    .expect("mounting the source read-only");
    (source, layout, described, mounted)
}

#[test]
fn a_debian_tree_migrated_file_by_file_onto_half_the_disk_boots_on_virtio() {
    need_root!("loop devices, mounts and chroot build the source images");
    let src = SourceImage::build("bios-gpt").expect("building the bios-gpt source image");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let dir = scratch.path();
    let (source, layout, _, mounted) = source_mounted(&src, dir);
    assert!(
        mounted.root().join("boot/grub").is_dir(),
        "the source's /boot is not mounted"
    );

    let source_size = std::fs::metadata(&src.disks[0]).unwrap().len();
    let target: PathBuf = dir.join("target.img");
    std::fs::File::create(&target)
        .unwrap()
        .set_len(source_size / 2)
        .unwrap();
    let server = appliance(dir, &target);
    let ex = excludes(dir, mounted.root());
    let sent = send_files(&server, mounted.root(), &layout, &ex);
    assert!(
        sent.ok(),
        "the file-mode send failed: {}\n{}",
        sent.stderr(),
        crate::common::serve::keep_log(&server.state)
    );
    let out = sent.stderr();
    assert!(out.contains("laid out and made /, /boot on "), "{out}");
    // Processing as block mode's, without grow (the layout was made for
    // the target) and check (nothing arrived as a disk).
    for step in ["mount", "repair", "verify", "handoff"] {
        assert!(
            out.contains(&format!(
                "the appliance runs the round's pipeline: {step}\n"
            )),
            "no step {step} in:\n{out}"
        );
    }
    assert!(
        out.contains(
            "the round is processed (mount, repair, verify) and handed off; the job is Finished"
        ),
        "{out}"
    );
    let j = job(&server);
    assert_eq!(j["state"], "Finished", "{j}");
    assert!(
        server.state.join("handoff.json").exists(),
        "no handoff manifest"
    );
    assert!(
        sent.report["excluded"].as_u64().is_some_and(|n| n >= 12),
        "{}",
        sent.report
    );
    mounted.close().expect("unmounting the source");

    // The layout on the target: the source's UUIDs, on half the disk.
    assert_eq!(std::fs::metadata(&target).unwrap().len(), source_size / 2);
    assert_eq!(
        partition_uuid(&target, 4),
        src.root_uuid,
        "root file system"
    );
    assert_eq!(
        partition_uuid(&target, 2),
        partition_uuid(&source, 2),
        "/boot file system"
    );
    assert_eq!(
        partition_uuid(&target, 3),
        partition_uuid(&source, 3),
        "swap"
    );

    let started = std::time::Instant::now();
    let report =
        crate::common::boot::boots_on_the_cloud(&src, vec![target.clone()], "filemode-half");
    eprintln!(
        "file-mode target booted on virtio in {:.1} s (test: {:.1} s)",
        report.elapsed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// The same system sent live: the source image's partitions on a loop
/// device, mounted as a running system's tree in a private mount namespace
/// (proc, sysfs, /dev, a tmpfs on /run holding the sender and its exclude
/// list), and `ferry send --mode file` without --root run in a chroot of
/// it, finding its disk and layout itself. The target, half the source
/// disk, boots on virtio with the source's root UUID.
#[test]
fn a_live_debian_server_migrated_file_by_file_onto_half_the_disk_boots_on_virtio() {
    need_root!("loop devices, mounts and chroot build the source images");
    let src = SourceImage::build("bios-gpt").expect("building the bios-gpt source image");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let dir = scratch.path();
    let source = dir.join("source.img");
    Cmd::new("cp")
        .args(["--sparse=always"])
        .arg(&src.disks[0])
        .arg(&source)
        .run()
        .expect("copying the source image");
    let disk = crate::common::files::LoopDisk::attach(&source);
    let source_size = std::fs::metadata(&source).unwrap().len();
    let target: PathBuf = dir.join("target.img");
    std::fs::File::create(&target)
        .unwrap()
        .set_len(source_size / 2)
        .unwrap();
    let server = appliance(dir, &target);
    let tree = dir.join("tree");
    let out = dir.join("out");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let list = {
        let staging = dir.join("modules");
        let root = crate::common::files::Mounted::new(&disk.part(4), &staging, "ro");
        let ex = excludes(dir, &root.0);
        std::fs::read_to_string(ex.join("rsync_excludes_linux.txt")).unwrap()
    };
    std::fs::write(out.join("rsync_excludes_linux.txt"), list).unwrap();
    let script = format!(
        r#"T='{tree}'
mount -o ro {root} "$T"
mount -o ro {boot} "$T/boot"
mount -t proc proc "$T/proc"
mount -t sysfs sysfs "$T/sys"
mount --bind /dev "$T/dev"
mount -t tmpfs -o mode=0755 tmpfs "$T/run"
cp '{ferry}' "$T/run/ferry"
mkdir "$T/run/Excludes"
cp '{out}/rsync_excludes_linux.txt' "$T/run/Excludes/"
rc=0
chroot "$T" /run/ferry send --mode file --to '{data}' --token '{token}' --fingerprint '{fp}' \
    2> '{out}/send.err' || rc=$?
echo $rc > '{out}/status'
"#,
        tree = tree.display(),
        root = disk.part(4),
        boot = disk.part(2),
        ferry = FERRY,
        out = out.display(),
        data = server.data,
        token = server.token,
        fp = server.fingerprint,
    );
    let ran = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-euc", &script])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = std::fs::read_to_string(out.join("send.err")).unwrap_or_default();
    assert!(
        ran.status.success(),
        "{}\n{stderr}",
        String::from_utf8_lossy(&ran.stderr)
    );
    eprintln!("{stderr}");
    let status = std::fs::read_to_string(out.join("status")).unwrap();
    assert_eq!(
        status.trim(),
        "0",
        "the live send failed: {stderr}\n{}",
        crate::common::serve::keep_log(&server.state)
    );
    for want in [
        format!("its disks: disk 0 {}\n", disk.dev),
        format!("  /  ext4  {}  ", disk.part(4)),
        format!("  /boot  ext4  {}  ", disk.part(2)),
        "laid out and made /, /boot on ".to_owned(),
        "the round is processed (mount, repair, verify) and handed off; the job is Finished"
            .to_owned(),
    ] {
        assert!(stderr.contains(&want), "want {want:?} in\n{stderr}");
    }
    assert_eq!(job(&server)["state"], "Finished");
    drop(disk);
    assert_eq!(
        partition_uuid(&target, 4),
        src.root_uuid,
        "root file system"
    );
    assert_eq!(
        partition_uuid(&target, 2),
        partition_uuid(&source, 2),
        "/boot file system"
    );
    let started = std::time::Instant::now();
    let report =
        crate::common::boot::boots_on_the_cloud(&src, vec![target.clone()], "filemode-live");
    eprintln!(
        "live file-mode target booted on virtio in {:.1} s (test: {:.1} s)",
        report.elapsed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// An LVM server (MBR: ext4 /boot, a physical volume with the root and
/// swap logical volumes, fstab naming `/dev/mapper/ferry--vg-root` and the
/// swap LV, initramfs-tools with the lvm2 hook) sent file by file: each
/// volume becomes a plain partition with its file system's UUID, and the
/// repaired system boots on virtio without its volume group, its root and
/// swap found by UUID.
#[test]
fn an_lvm_server_migrated_file_by_file_boots_on_virtio_without_its_volume_group() {
    need_root!("loop devices, mounts and chroot build the source images");
    let src = SourceImage::build_stack("lvm").expect("building the lvm source image");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let dir = scratch.path();
    let (source, layout, described, mounted) = source_mounted(&src, dir);
    let root_lv = described
        .volumes
        .iter()
        .find(|v| v.fs.mount.as_deref() == Some("/"))
        .unwrap_or_else(|| panic!("no logical volume mounted on /: {described:?}"));
    assert_eq!(root_lv.fs.uuid.as_deref(), Some(src.root_uuid.as_str()));
    let fstab = std::fs::read_to_string(mounted.root().join("etc/fstab")).unwrap();
    assert!(fstab.contains("/dev/mapper/ferry--vg-root"), "{fstab}");

    let source_size = std::fs::metadata(&src.disks[0]).unwrap().len();
    let target: PathBuf = dir.join("target.img");
    std::fs::File::create(&target)
        .unwrap()
        .set_len(source_size)
        .unwrap();
    let server = appliance(dir, &target);
    let ex = dir.join("Excludes");
    std::fs::create_dir_all(&ex).unwrap();
    let sent = send_files(&server, mounted.root(), &layout, &ex);
    assert!(
        sent.ok(),
        "the file-mode send failed: {}\n{}",
        sent.stderr(),
        crate::common::serve::keep_log(&server.state)
    );
    let out = sent.stderr();
    assert!(
        out.contains(
            "the logical volume ferry-vg/root (/) becomes a plain partition on the target"
        ),
        "{out}"
    );
    assert!(
        out.contains("the logical volumes ferry-vg/root, ferry-vg/swap_1 as plain partitions, without their volume group"),
        "{out}"
    );
    assert_eq!(job(&server)["state"], "Finished");
    mounted.close().expect("unmounting the source");

    // On the target: /boot, then root and swap as plain partitions with
    // the volumes' UUIDs; no physical volume is left.
    assert_eq!(
        partition_uuid(&target, 1),
        partition_uuid(&source, 1),
        "/boot"
    );
    assert_eq!(
        partition_uuid(&target, 2),
        src.root_uuid,
        "root file system"
    );
    // Made with the volume's own ext4 features (the source's LV read by
    // dumpe2fs at its extents, the target's plain partition likewise).
    let lv_at =
        partition_extent(&source, 2).0 + root_lv.place.expect("the root LV is placed").offset;
    let source_features = ext_features(&source, lv_at);
    assert!(
        source_features.contains("metadata_csum"),
        "{source_features}"
    );
    assert_eq!(
        ext_features(&target, partition_extent(&target, 2).0).replace(" needs_recovery", ""),
        source_features.replace(" needs_recovery", ""),
        "the root's ext4 features"
    );
    let types = Cmd::new("sfdisk")
        .args(["--dump"])
        .arg(&target)
        .run()
        .expect("sfdisk --dump")
        .stdout_text();
    assert!(
        !types.contains("type=8e"),
        "an LVM partition is left:\n{types}"
    );
    assert_eq!(types.matches("type=").count(), 3, "{types}");

    let report =
        crate::common::boot::boots_on_the_cloud(&src, vec![target.clone()], "filemode-lvm");
    eprintln!(
        "the flattened LVM server booted on virtio in {:.1} s",
        report.elapsed.as_secs_f64()
    );
}
