//! Root-only tests of the layout engine on sparse image files: apply, read,
//! mount trees, the chroot session, grow, refusals, and cleanup after a kill.
//! Every result is checked by tools ferry did not write (sfdisk, sgdisk,
//! blkid, e2fsck, xfs_repair, fsck.vfat).

use std::path::Path;

use crate::common::layout::*;
use ferry::cmd::Cmd;
use ferry::layout::{self, desc::SECTOR, FsType, Layout, Safety, Size};

/// Check one applied disk against its description with outside tools.
fn check_disk(img: &Path, want: &layout::DiskLayout) {
    let (label, id, parts) = sfdisk(img);
    match want.table {
        layout::TableType::Gpt => {
            assert_eq!(label, "gpt");
            assert_eq!(Some(id), want.id.clone());
            let v = run(Cmd::new("sgdisk").arg("-v").arg(img));
            assert!(v.contains("No problems found"), "sgdisk -v: {v}");
        }
        layout::TableType::Mbr => {
            assert_eq!(label, "dos");
            assert_eq!(
                Some(id.trim_start_matches("0x").to_owned()),
                want.id.clone()
            );
        }
    }
    assert_eq!(parts.len(), want.partitions.len(), "partition count");
    let size = std::fs::metadata(img).expect("image").len();
    let extents = layout::desc::plan(want, size).expect("plan");
    for (i, ((start, sectors, ty), (p, e))) in parts
        .iter()
        .zip(want.partitions.iter().zip(&extents))
        .enumerate()
    {
        assert_eq!(*start * SECTOR, e.start, "partition {} start", i + 1);
        assert_eq!(*sectors * SECTOR, e.len, "partition {} size", i + 1);
        assert_eq!(*start % 2048, 0, "partition {} is 1 MiB aligned", i + 1);
        let want_ty = match want.table {
            layout::TableType::Gpt => p.kind.gpt_guid().expect("guid"),
            layout::TableType::Mbr => {
                format!("{:x}", layout::desc::mbr_type_byte(&p.kind).expect("byte"))
            }
        };
        assert_eq!(ty, &want_ty, "partition {} type", i + 1);
        let lo = PartLoop::new(img, *start, *sectors);
        let b = blkid(&lo.0);
        assert_eq!(
            b.get("TYPE").map(String::as_str),
            Some(p.fs.kind.as_str()).filter(|t| *t != "none"),
            "partition {} blkid TYPE",
            i + 1
        );
        assert_eq!(
            b.get("UUID"),
            p.fs.uuid.as_ref(),
            "partition {} blkid UUID",
            i + 1
        );
        assert_eq!(
            b.get("LABEL"),
            p.fs.label.as_ref(),
            "partition {} blkid LABEL",
            i + 1
        );
        match p.fs.kind {
            FsType::Ext4 | FsType::Ext3 => {
                run(Cmd::new("e2fsck").arg("-fn").arg(&lo.0));
            }
            FsType::Xfs => {
                run(Cmd::new("xfs_repair").arg("-n").arg(&lo.0));
            }
            FsType::Vfat => {
                run(Cmd::new("fsck.vfat").arg("-n").arg(&lo.0));
            }
            _ => {}
        }
    }
}

/// A layout as read, without the ext features it found (the layouts
/// written here leave them to mke2fs's defaults).
fn bare(mut d: layout::DiskLayout) -> layout::DiskLayout {
    for p in &mut d.partitions {
        p.fs.features.clear();
    }
    d
}

fn apply_and_check(text: &str, mib: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let l = layout(text);
    let img = sparse_image(dir.path(), "disk.img", mib);
    let applied =
        layout::apply(&l.disks[0], &img, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
    // Fully specified layouts come back unchanged.
    assert_eq!(applied, l.disks[0]);
    check_disk(&img, &l.disks[0]);
    let read = layout::read(&img).unwrap_or_else(|e| panic!("{e:#}"));
    // read gives each ext file system's features (mke2fs's defaults here).
    for p in &read.partitions {
        assert_eq!(
            p.fs.features.iter().any(|f| f == "has_journal"),
            matches!(p.fs.kind, FsType::Ext4 | FsType::Ext3),
            "{p:?}"
        );
    }
    assert_eq!(bare(read), l.without_mounts().disks[0]);
    assert!(
        loops_of(&img).is_empty(),
        "apply left loop devices: {:?}",
        loops_of(&img)
    );
}

#[test]
fn bios_mbr_one_ext4_root() {
    need_root!("loop devices, mounts");
    apply_and_check(BIOS_MBR, 64);
}

#[test]
fn bios_gpt_with_bios_boot_boot_and_root() {
    need_root!("loop devices, mounts");
    apply_and_check(BIOS_GPT, 128);
}

#[test]
fn uefi_gpt_with_esp_xfs_root_and_swap() {
    need_root!("loop devices, mounts");
    apply_and_check(UEFI_GPT, 448);
}

#[test]
fn data_disk_with_one_ext4_partition() {
    need_root!("loop devices, mounts");
    apply_and_check(DATA_DISK, 64);
}

#[test]
fn open_ids_are_filled_and_read_back() {
    need_root!("loop devices, mounts");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l: Layout = layout(DATA_DISK);
    l.disks[0].id = None;
    l.disks[0].partitions[0].fs.uuid = None;
    l.disks[0].partitions[0].partuuid = None;
    let img = sparse_image(dir.path(), "d.img", 64);
    let applied =
        layout::apply(&l.disks[0], &img, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(applied.id.is_some() && applied.partitions[0].fs.uuid.is_some());
    assert_ne!(
        applied.partitions[0].fs.uuid,
        l.disks[0].partitions[0].fs.uuid
    );
    let mut read = layout::read(&img).unwrap_or_else(|e| panic!("{e:#}"));
    read.partitions[0].fs.mount = Some("/srv/data".into());
    assert_eq!(bare(read.clone()), applied);
    assert_eq!(read.partitions[0].size, Size::Rest);
}

fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect()
}

/// The source device of the mount at `dir`.
fn mount_source(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-")?;
        (Path::new(f[4]) == dir).then(|| f[sep + 2].to_owned())
    })
}

#[test]
fn mount_tree_writes_survive_remount_and_fs_stay_clean() {
    need_root!("loop devices, mounts");
    let dir = tempfile::tempdir().expect("tempdir");
    let l = layout(UEFI_GPT);
    let img = sparse_image(dir.path(), "uefi.img", 448);
    layout::apply(&l.disks[0], &img, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let staging = dir.path().join("tree");
    let targets = vec![img.clone()];
    let efi_binary: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
    {
        let tree = layout::MountTree::mount(&l, &targets, &staging, Default::default())
            .unwrap_or_else(|e| panic!("{e:#}"));
        let root = tree.root().to_owned();
        let src = mount_source(&root).expect("root is mounted");
        assert!(
            src.starts_with("/dev/loop") && src.ends_with("p2"),
            "root from {src}"
        );
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hostname"), b"migrated\n").unwrap();
        assert!(root.join("boot/efi").is_dir(), "ESP mount point made");
        let esp = tree.fat("/boot/efi").unwrap();
        esp.write("EFI/BOOT/BOOTX64.EFI", &efi_binary).unwrap();
        let staged = dir.path().join("staged");
        std::fs::create_dir_all(staged.join("debian")).unwrap();
        std::fs::write(staged.join("debian/grub.cfg"), b"search --fs-uuid\n").unwrap();
        assert_eq!(esp.import_dir(&staged, "EFI").unwrap(), 1);
        let err = tree.fat("/").unwrap_err();
        assert_eq!(format!("{err:#}"), "/ holds xfs, not a FAT file system");
        tree.close().unwrap_or_else(|e| panic!("{e:#}"));
    }
    assert!(
        mounts_under(&staging).is_empty(),
        "left mounts: {:?}",
        mounts_under(&staging)
    );
    assert!(
        loops_of(&img).is_empty(),
        "left loops: {:?}",
        loops_of(&img)
    );
    // Everything is still there after a fresh mount.
    let tree = layout::MountTree::mount(&l, &targets, &staging, Default::default())
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        std::fs::read(tree.root().join("etc/hostname")).unwrap(),
        b"migrated\n"
    );
    let esp = tree.fat("/boot/efi").unwrap();
    assert_eq!(esp.read("EFI/BOOT/BOOTX64.EFI").unwrap(), efi_binary);
    assert_eq!(
        esp.read("EFI/debian/grub.cfg").unwrap(),
        b"search --fs-uuid\n"
    );
    let names: Vec<String> = esp
        .list("EFI")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["BOOT", "debian"]);
    tree.close().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(loops_of(&img).is_empty());
    // The ESP written in-process and the xfs written by the kernel pass
    // their own checkers.
    check_disk(&img, &l.disks[0]);
}

#[test]
fn nested_mounts_go_root_first_and_land_on_their_partitions() {
    need_root!("loop devices, mounts");
    let dir = tempfile::tempdir().expect("tempdir");
    let l = layout(BIOS_GPT);
    let img = sparse_image(dir.path(), "bios.img", 128);
    layout::apply(&l.disks[0], &img, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let staging = dir.path().join("tree");
    let tree =
        layout::MountTree::mount(&l, std::slice::from_ref(&img), &staging, Default::default())
            .unwrap_or_else(|e| panic!("{e:#}"));
    let root = tree.root().to_owned();
    let boot_src = mount_source(&root.join("boot")).expect("/boot mounted");
    assert!(boot_src.ends_with("p2"), "/boot from {boot_src}");
    std::fs::write(root.join("boot/vmlinuz"), b"kernel").unwrap();
    let nodes = tree.dev_nodes();
    assert_eq!(nodes.len(), 4);
    assert_eq!(
        nodes[3].uuid.as_deref(),
        Some("9f50bc6e-4b8d-4fae-b0c1-5d6e7f8091a2")
    );
    assert_eq!(
        nodes[3].host_path,
        layout::devices::partition_node(&nodes[0].host_path, 3)
    );
    tree.close().unwrap_or_else(|e| panic!("{e:#}"));
    // The file is on the /boot partition itself (partition 2), not in the
    // root's /boot directory.
    let (_, _, parts) = sfdisk(&img);
    let lo = PartLoop::new(&img, parts[1].0, parts[1].1);
    let listing = run(Cmd::new("debugfs").args(["-R", "cat /vmlinuz"]).arg(&lo.0));
    assert_eq!(listing, "kernel");
}

#[test]
fn a_failed_mount_midway_unmounts_and_detaches_what_it_did() {
    need_root!("loop devices, mounts");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = layout(BIOS_GPT);
    let img = sparse_image(dir.path(), "bios.img", 128);
    layout::apply(&l.disks[0], &img, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
    // Claim /boot is xfs: mounting it fails after / is mounted.
    l.disks[0].partitions[1].fs.kind = FsType::Xfs;
    l.disks[0].partitions[1].fs.label = None;
    let staging = dir.path().join("tree");
    let err =
        layout::MountTree::mount(&l, std::slice::from_ref(&img), &staging, Default::default())
            .unwrap_err();
    assert!(format!("{err:#}").contains("(xfs) on"), "{err:#}");
    assert!(
        mounts_under(&staging).is_empty(),
        "left mounts: {:?}",
        mounts_under(&staging)
    );
    assert!(
        loops_of(&img).is_empty(),
        "left loops: {:?}",
        loops_of(&img)
    );
}

#[test]
fn the_sandbox_sees_by_uuid_links_and_leaves_host_dev_alone() {
    need_root!("loop devices, mounts");
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "busybox-static is in scripts/packages.txt"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let l = layout(BIOS_GPT);
    let img = sparse_image(dir.path(), "bios.img", 128);
    layout::apply(&l.disks[0], &img, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let staging = dir.path().join("tree");
    let tree =
        layout::MountTree::mount(&l, std::slice::from_ref(&img), &staging, Default::default())
            .unwrap_or_else(|e| panic!("{e:#}"));
    let root = tree.root().to_owned();
    std::fs::create_dir_all(root.join("bin")).unwrap();
    // Copied by another process: a write descriptor open in this one could
    // be inherited by a child another test thread forks meanwhile, and exec
    // of the file would then fail with ETXTBSY.
    run(Cmd::new("cp").arg(busybox).arg(root.join("bin/busybox")));
    let host_dev_disk = Path::new("/dev/disk").exists();
    let nodes = tree.dev_nodes();
    let root_node = nodes[3].host_path.to_string_lossy().into_owned();
    let root_uuid = "9f50bc6e-4b8d-4fae-b0c1-5d6e7f8091a2";

    let session =
        ferry::sandbox::Sandbox::enter(tree.root(), &nodes).unwrap_or_else(|e| panic!("{e:#}"));
    let bb = |args: &[&str]| run(session.command("/bin/busybox").args(args));
    assert_eq!(
        bb(&["readlink", "-f", &format!("/dev/disk/by-uuid/{root_uuid}")]).trim(),
        root_node
    );
    assert_eq!(
        bb(&["readlink", "-f", "/dev/disk/by-label/boot"]).trim(),
        nodes[2].host_path.to_string_lossy()
    );
    assert_eq!(
        bb(&[
            "readlink",
            "-f",
            "/dev/disk/by-partuuid/a061cd7f-5c9e-4abf-81d2-6e7f8091a2b3"
        ])
        .trim(),
        root_node
    );
    // A read through the link reaches the file system itself: the ext4
    // superblock (at 1024) holds the UUID at +104 and the label at +120.
    let link = format!("if=/dev/disk/by-uuid/{root_uuid}");
    let uuid_hex = bb(&[
        "sh",
        "-c",
        &format!("dd {link} bs=1 skip=1128 count=16 2>/dev/null | od -An -tx1 | tr -d ' \\n'"),
    ]);
    assert_eq!(uuid_hex, root_uuid.replace('-', ""));
    let label = bb(&["dd", &link, "bs=1", "skip=1144", "count=4"]);
    assert_eq!(label, "root");
    let sb = bb(&["sh", "-c", "echo ok >/dev/null && ls /dev/pts/ptmx /dev/urandom && cat /proc/self/comm && ls /sys/class/block >/dev/null && echo $LANG"]);
    assert_eq!(sb, "/dev/pts/ptmx\n/dev/urandom\ncat\nC\n");
    assert_eq!(
        Path::new("/dev/disk").exists(),
        host_dev_disk,
        "host /dev untouched"
    );
    session.close().unwrap_or_else(|e| panic!("{e:#}"));

    for m in ["proc", "sys", "run", "dev", "dev/pts"] {
        assert!(
            !mounts_under(&root)
                .iter()
                .any(|x| Path::new(x) == root.join(m)),
            "{m} still mounted"
        );
    }
    assert_eq!(
        std::fs::read_dir(root.join("dev")).unwrap().count(),
        0,
        "nodes stayed in the target"
    );

    // A failure while entering leaves nothing mounted.
    let bad = vec![layout::DevNode {
        aliases: Vec::new(),
        host_path: "/dev/ferry-no-such-disk".into(),
        uuid: None,
        label: None,
        partuuid: None,
    }];
    let err = ferry::sandbox::Sandbox::enter(tree.root(), &bad).unwrap_err();
    assert!(
        format!("{err:#}").contains("reading /dev/ferry-no-such-disk"),
        "{err:#}"
    );
    let left: Vec<String> = mounts_under(&root)
        .into_iter()
        .filter(|m| Path::new(m) != root && Path::new(m) != root.join("boot"))
        .collect();
    assert!(left.is_empty(), "left mounts: {left:?}");
    tree.close().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(mounts_under(&root).is_empty());
    assert!(loops_of(&img).is_empty());
}

/// Write a file through a mount tree, copy the disk to a 2x larger image,
/// grow it, and check the table, the file system size and the file.
fn grow_case(text: &str, mib: u64, fs_size: fn(&Path) -> u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let l = layout(text);
    let small = sparse_image(dir.path(), "small.img", mib);
    layout::apply(&l.disks[0], &small, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let staging = dir.path().join("tree");
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let tree = layout::MountTree::mount(
        &l,
        std::slice::from_ref(&small),
        &staging,
        Default::default(),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    std::fs::write(tree.root().join("payload.bin"), &payload).unwrap();
    tree.close().unwrap_or_else(|e| panic!("{e:#}"));

    let big = dir.path().join("big.img");
    copy_to_larger(&small, &big, mib * 2);
    let report = layout::grow(&big, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let grown = report.partition.clone().expect("the last partition grew");
    assert_eq!(grown.number, l.disks[0].partitions.len());
    assert!(
        grown.new_len >= grown.old_len + (mib - 2) * 1024 * 1024,
        "{report:?}"
    );
    if l.disks[0].table == layout::TableType::Gpt {
        let v = run(Cmd::new("sgdisk").arg("-v").arg(&big));
        assert!(v.contains("No problems found"), "sgdisk -v: {v}");
        assert_eq!(report.gpt_backup_moved_from, Some(mib * 2048 - 1));
    }
    // The description is unchanged: "rest" still means the rest.
    assert_eq!(
        bare(layout::read(&big).unwrap()),
        l.without_mounts().disks[0]
    );
    let (_, _, parts) = sfdisk(&big);
    let (start, sectors, _) = parts.last().cloned().unwrap();
    assert_eq!(sectors * 512, grown.new_len);
    {
        let lo = PartLoop::new(&big, start, sectors);
        let fs_bytes = fs_size(&lo.0);
        // File systems round down to their block (xfs: AG) granularity.
        assert!(
            fs_bytes <= grown.new_len && fs_bytes + 4 * 1024 * 1024 > grown.new_len,
            "file system {fs_bytes} bytes in a {} byte partition",
            grown.new_len
        );
    }
    check_disk(&big, &l.disks[0]);
    let tree =
        layout::MountTree::mount(&l, std::slice::from_ref(&big), &staging, Default::default())
            .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        std::fs::read(tree.root().join("payload.bin")).unwrap(),
        payload
    );
    tree.close().unwrap_or_else(|e| panic!("{e:#}"));
    // A second run finds nothing to do.
    let again = layout::grow(&big, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(again.partition, None);
    assert_eq!(again.gpt_backup_moved_from, None);
    assert!(loops_of(&big).is_empty() && loops_of(&small).is_empty());
}

fn ext_size(dev: &Path) -> u64 {
    let out = run(Cmd::new("dumpe2fs").arg("-h").arg(dev));
    let field = |name: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("{name} in dumpe2fs output"))
    };
    field("Block count:") * field("Block size:")
}

fn xfs_size(dev: &Path) -> u64 {
    let out = run(Cmd::new("xfs_db")
        .args(["-r", "-c", "sb 0", "-c", "p dblocks blocksize"])
        .arg(dev));
    let field = |name: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().trim_start_matches('=').trim().parse().unwrap())
            .unwrap_or_else(|| panic!("{name} in xfs_db output: {out}"))
    };
    field("dblocks") * field("blocksize")
}

#[test]
fn grow_gpt_ext4_onto_a_2x_disk() {
    need_root!("loop devices, mounts");
    grow_case(BIOS_GPT, 128, ext_size);
}

#[test]
fn grow_mbr_ext4_onto_a_2x_disk() {
    need_root!("loop devices, mounts");
    grow_case(BIOS_MBR, 64, ext_size);
}

#[test]
fn grow_gpt_xfs_onto_a_2x_disk() {
    need_root!("loop devices, mounts");
    grow_case(XFS_ONLY, 320, xfs_size);
}

#[test]
fn grow_leaves_swap_last_alone_but_moves_the_backup_gpt() {
    need_root!("loop devices, mounts");
    let dir = tempfile::tempdir().expect("tempdir");
    let l = layout(UEFI_GPT);
    let small = sparse_image(dir.path(), "small.img", 448);
    layout::apply(&l.disks[0], &small, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let big = dir.path().join("big.img");
    copy_to_larger(&small, &big, 512);
    let report = layout::grow(&big, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(report.partition, None);
    assert_eq!(
        report.skipped.as_deref(),
        Some("partition 3 holds swap, which ferry does not grow")
    );
    let v = run(Cmd::new("sgdisk").arg("-v").arg(&big));
    assert!(v.contains("No problems found"), "sgdisk -v: {v}");
}

#[test]
fn refusals_name_the_reason_and_write_nothing() {
    need_root!("loop devices, mounts");
    let dir = tempfile::tempdir().expect("tempdir");
    let l = layout(BIOS_GPT);
    let code = |e: &anyhow::Error| ferry::job::errors::find_coded(e).map(|c| c.code.as_str());

    // Too small: the numbers are in the message.
    let tiny = sparse_image(dir.path(), "tiny.img", 32);
    let mut big_boot = l.disks[0].clone();
    big_boot.partitions[1].size = Size::Bytes(40 * 1024 * 1024);
    let err = layout::apply(&big_boot, &tiny, Safety::default()).unwrap_err();
    assert_eq!(code(&err), Some("LAYOUT_TOO_LARGE"));
    assert!(
        format!("{err:#}").contains("the layout needs 45105664 bytes (44 MiB) including the partition table, the disk has 33554432 bytes (32 MiB): 11551232 bytes (12 MiB) short"),
        "{err:#}"
    );
    assert!(
        std::fs::read(&tiny).unwrap().iter().all(|b| *b == 0),
        "nothing written"
    );

    // An image attached elsewhere is in use.
    let busy = sparse_image(dir.path(), "busy.img", 128);
    let lo = run(Cmd::new("losetup").args(["--find", "--show"]).arg(&busy));
    let lo = lo.trim().to_owned();
    let err = layout::apply(&l.disks[0], &busy, Safety::default()).unwrap_err();
    run(Cmd::new("losetup").arg("-d").arg(&lo));
    assert_eq!(code(&err), Some("TARGET_IN_USE"));
    assert!(
        format!("{err:#}").contains(&format!("is attached to {lo} (detach it, or pass --force)")),
        "{err:#}"
    );
    assert!(
        std::fs::read(&busy).unwrap().iter().all(|b| *b == 0),
        "nothing written"
    );

    // A block device with a mounted partition, even for grow.
    let img = sparse_image(dir.path(), "mounted.img", 128);
    layout::apply(&l.disks[0], &img, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let tree = layout::MountTree::mount(
        &l,
        std::slice::from_ref(&img),
        &dir.path().join("t"),
        Default::default(),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let whole = tree.disks()[0].whole().to_owned();
    for err in [
        layout::apply(&l.disks[0], &whole, Safety::default()).unwrap_err(),
        layout::grow(&whole, Safety::default()).unwrap_err(),
    ] {
        assert_eq!(code(&err), Some("TARGET_IN_USE"), "{err:#}");
        assert!(
            format!("{err:#}").contains(&format!("{} is mounted (", whole.display())),
            "{err:#}"
        );
    }
    tree.close().unwrap_or_else(|e| panic!("{e:#}"));

    // The system disk is refused even with --force (only checked, never written).
    if let Some(sys) = layout::safety::system_disk().unwrap() {
        let err =
            layout::safety::check_target(Path::new(&format!("/dev/{sys}")), Safety { force: true })
                .unwrap_err();
        assert_eq!(code(&err), Some("TARGET_IN_USE"));
        assert!(
            format!("{err:#}").contains("is the appliance's own system disk"),
            "{err:#}"
        );
    }
}

fn ferry() -> Cmd {
    Cmd::new(env!("CARGO_BIN_EXE_ferry"))
}

#[test]
fn cli_apply_read_with_fstab_mounts_round_trip_exactly() {
    need_root!("loop devices, mounts");
    let dir = tempfile::tempdir().expect("tempdir");
    let l = layout(BIOS_GPT);
    let img = sparse_image(dir.path(), "disk.img", 128);
    let lf = dir.path().join("layout.toml");
    std::fs::write(&lf, BIOS_GPT).unwrap();
    let applied = run(ferry()
        .args(["layout", "apply", "--json", "--layout"])
        .arg(&lf)
        .arg(&img));
    assert_eq!(Layout::from_json(&applied).unwrap(), l);
    let read = run(ferry().args(["layout", "read"]).arg(&img));
    let mut read = Layout::from_toml(&read).unwrap();
    read.disks = read.disks.into_iter().map(bare).collect();
    assert_eq!(read, l.without_mounts());

    // Mount points come from the root's fstab, by UUID, LABEL or PARTUUID.
    let fstab = "# written by the installer\n\
                 PARTUUID=a061cd7f-5c9e-4abf-81d2-6e7f8091a2b3 / ext4 defaults 0 1\n\
                 LABEL=boot /boot ext3 defaults 0 2\n\
                 proc /proc proc defaults 0 0\n";
    let staging = dir.path().join("tree");
    let cmd = format!(
        "mkdir -p etc && printf '{}' > etc/fstab",
        fstab.replace('\n', "\\n")
    );
    run(ferry()
        .args(["layout", "mount", "--layout"])
        .arg(&lf)
        .arg("--staging")
        .arg(&staging)
        .arg(&img)
        .args(["--", "sh", "-c", &cmd]));
    let read = run(ferry()
        .args(["layout", "read", "--mounts", "--json"])
        .arg(&img));
    let mut read = Layout::from_json(&read).unwrap();
    read.disks = read.disks.into_iter().map(bare).collect();
    assert_eq!(read, l);
    // And mounting by the disk's own layout finds the same tree.
    let out = run(ferry()
        .args(["layout", "mount", "--staging"])
        .arg(&staging)
        .arg(&img)
        .args(["--", "cat", "etc/fstab"]));
    assert!(out.ends_with(fstab), "{out}");
    assert!(mounts_under(&staging).is_empty());
    assert!(loops_of(&img).is_empty());
}

#[test]
fn a_killed_mount_is_cleaned_up_by_the_next_run() {
    need_root!("loop devices, mounts");
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let img = sparse_image(dir.path(), "disk.img", 128);
    let lf = dir.path().join("layout.toml");
    std::fs::write(&lf, BIOS_GPT).unwrap();
    run(ferry()
        .args(["layout", "apply", "--layout"])
        .arg(&lf)
        .arg(&img));
    let staging = dir.path().join("tree");
    let canon_staging = || std::fs::canonicalize(&staging).unwrap();

    let hold = |staging: &Path| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["layout", "mount", "--layout"])
            .arg(&lf)
            .arg("--staging")
            .arg(staging)
            .arg(&img)
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("spawning ferry layout mount");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a line").expect("reading");
        assert!(first.starts_with("mounted "), "{first}");
        // While it lives, nobody else takes its tree over.
        let (status, out) = ferry()
            .args(["layout", "umount", "--staging"])
            .arg(staging)
            .arg(&img)
            .output()
            .unwrap();
        assert_eq!(status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("TARGET_IN_USE")
                && err.contains("is mounted by another running ferry process"),
            "{err}"
        );
        // The tree is up: kill without any chance to clean up.
        child.kill().expect("SIGKILL");
        child.wait().expect("reaping");
    };

    hold(&staging);
    let left = mounts_under(&canon_staging());
    assert_eq!(left.len(), 2, "the kill left / and /boot mounted: {left:?}");
    assert_eq!(loops_of_now(&img).len(), 1, "the kill left the loop device");

    // A fresh run takes over the same staging dir and image without leaking.
    let out = run(ferry()
        .args(["layout", "mount", "--layout"])
        .arg(&lf)
        .arg("--staging")
        .arg(&staging)
        .arg(&img)
        .args(["--", "ls", "boot"]));
    assert!(out.contains("lost+found"), "{out}");
    assert!(
        mounts_under(&canon_staging()).is_empty(),
        "{:?}",
        mounts_under(&canon_staging())
    );
    assert!(loops_of(&img).is_empty(), "leaked: {:?}", loops_of(&img));

    // `ferry layout umount` cleans up after a kill as well, even while a
    // tool the killed run started in a chroot of the tree still runs there
    // (it would keep the root busy, and write to it after the unmount).
    hold(&staging);
    assert_eq!(mounts_under(&canon_staging()).len(), 2);
    std::fs::create_dir_all(staging.join("bin")).unwrap();
    run(Cmd::new("cp")
        .arg("/bin/busybox")
        .arg(staging.join("bin/busybox")));
    /// Kills the process if the test fails before ferry does.
    struct Orphan(std::process::Child);
    impl Drop for Orphan {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut orphan = Orphan(
        std::process::Command::new("chroot")
            .arg(&staging)
            .args(["/bin/busybox", "sleep", "600"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("a process in a chroot of the tree"),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        orphan.0.try_wait().unwrap().is_none(),
        "the chrooted sleep runs"
    );
    let out = run(ferry()
        .args(["layout", "umount", "--staging"])
        .arg(&staging)
        .arg(&img));
    assert_eq!(out.trim(), "unmounted 2, detached 1");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        orphan.0.wait().unwrap().signal(),
        Some(9),
        "the process left in the chroot was killed"
    );
    assert!(mounts_under(&canon_staging()).is_empty());
    assert!(loops_of(&img).is_empty());
    // The file systems survived both kills.
    let l = layout(BIOS_GPT);
    check_disk(&img, &l.disks[0]);
}

#[test]
fn cli_grow_and_refusal_messages() {
    need_root!("loop devices, mounts");
    let dir = tempfile::tempdir().expect("tempdir");
    let img = sparse_image(dir.path(), "disk.img", 64);
    let lf = dir.path().join("layout.toml");
    std::fs::write(&lf, DATA_DISK).unwrap();
    run(ferry()
        .args(["layout", "apply", "--layout"])
        .arg(&lf)
        .arg(&img));
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(128 * 1024 * 1024).unwrap();
    let out = run(ferry().args(["layout", "grow"]).arg(&img));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["partition"]["number"], 1);
    assert_eq!(r["partition"]["new_len"], 126 * 1024 * 1024);
    // Too small: exit status 1, message and hint on stderr.
    let small = sparse_image(dir.path(), "small.img", 1);
    let (status, out) = ferry()
        .args(["layout", "apply", "--layout"])
        .arg(&lf)
        .arg(&small)
        .output()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("LAYOUT_TOO_LARGE"), "{err}");
    assert!(err.contains("hint: Attach a larger target disk"), "{err}");
}

#[test]
fn block_device_targets_apply_read_mount_and_grow() {
    need_root!("loop devices, mounts");
    // A loop device without partition scanning stands in for a cloud
    // instance's /dev/vdb: ferry must show its partitions itself.
    let dir = tempfile::tempdir().expect("tempdir");
    let l = layout(BIOS_GPT);
    let img = sparse_image(dir.path(), "vdb.img", 128);
    struct Lo(String);
    impl Drop for Lo {
        fn drop(&mut self) {
            let _ = ferry::layout::devices::detach(Path::new(&self.0));
        }
    }
    let lo = Lo(
        run(Cmd::new("losetup").args(["--find", "--show"]).arg(&img))
            .trim()
            .to_owned(),
    );
    let dev = std::path::PathBuf::from(&lo.0);
    let applied =
        layout::apply(&l.disks[0], &dev, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(applied, l.disks[0]);
    assert_eq!(
        bare(layout::read(&dev).unwrap()),
        l.without_mounts().disks[0]
    );
    let staging = dir.path().join("tree");
    let tree =
        layout::MountTree::mount(&l, std::slice::from_ref(&dev), &staging, Default::default())
            .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(tree.disks()[0].whole(), dev.as_path());
    std::fs::write(tree.root().join("marker"), b"on vdb").unwrap();
    tree.close().unwrap_or_else(|e| panic!("{e:#}"));
    // The disk grows under the device (a resized cloud disk).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(256 * 1024 * 1024)
        .unwrap();
    run(Cmd::new("losetup").arg("--set-capacity").arg(&dev));
    let r = layout::grow(&dev, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.partition.map(|p| p.number), Some(3));
    let v = run(Cmd::new("sgdisk").arg("-v").arg(&dev));
    assert!(v.contains("No problems found"), "sgdisk -v: {v}");
    let tree =
        layout::MountTree::mount(&l, std::slice::from_ref(&dev), &staging, Default::default())
            .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        std::fs::read(tree.root().join("marker")).unwrap(),
        b"on vdb"
    );
    let st = nix::sys::statvfs::statvfs(tree.root()).unwrap();
    assert!(
        st.blocks() * st.fragment_size() > 150 * 1024 * 1024,
        "root grew"
    );
    tree.close().unwrap_or_else(|e| panic!("{e:#}"));
    drop(lo);
    check_disk(&img, &l.disks[0]);
}

/// sfdisk's view of a disk without its identifiers: (start, sectors, type).
fn geometry(img: &Path) -> Vec<(u64, u64, String)> {
    sfdisk(img).2
}

#[test]
fn disks_made_by_other_tools_read_and_reapply_identically() {
    need_root!("loop devices, mounts");
    let dir = tempfile::tempdir().expect("tempdir");
    // An old-style MBR (first partition at sector 63) and an sgdisk GPT
    // whose last partition ends at the last usable sector.
    let cases: [(&str, Vec<Cmd>); 2] = [
        ("old-mbr", vec![Cmd::new("sfdisk").stdin_bytes("label: dos\nlabel-id: 0x0badcafe\nstart=63, size=40000, type=83, bootable\nstart=40063, type=82\n")]),
        ("sgdisk-gpt", vec![Cmd::new("sgdisk").args(["-a", "1", "-n", "1:34:2047", "-t", "1:ef02", "-n", "2:2048:+20M", "-t", "2:8300", "-n", "3:0:0", "-t", "3:8200"])]),
    ];
    for (name, cmds) in cases {
        let src = sparse_image(dir.path(), &format!("{name}.img"), 64);
        for c in cmds {
            run(c.arg(&src));
        }
        let (_, _, parts) = sfdisk(&src);
        {
            let lo = PartLoop::new(&src, parts[0].0, parts[0].1);
            if name == "old-mbr" {
                run(Cmd::new("mkfs.ext4")
                    .args([
                        "-q",
                        "-U",
                        "c0ffee00-1111-4222-8333-444455556666",
                        "-L",
                        "old",
                    ])
                    .arg(&lo.0));
            }
        }
        let read = layout::read(&src).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(read.partitions[0].start.is_some(), "{name}: {read:?}");
        if name == "old-mbr" {
            assert_eq!(read.id.as_deref(), Some("0badcafe"));
            assert_eq!(read.partitions[0].start, Some(Size::Bytes(63 * 512)));
            assert_eq!(
                read.partitions[0].fs.uuid.as_deref(),
                Some("c0ffee00-1111-4222-8333-444455556666")
            );
            assert!(read.partitions[0].bootable);
        }
        // The description reproduces the same table on a fresh disk.
        let copy = sparse_image(dir.path(), &format!("{name}-copy.img"), 64);
        let applied = layout::apply(&read, &copy, Safety::default())
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(geometry(&copy), geometry(&src), "{name}");
        assert_eq!(layout::read(&copy).unwrap(), applied, "{name}");
    }
}

#[test]
fn two_disks_mount_as_one_tree() {
    need_root!("loop devices, mounts");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = layout(BIOS_MBR);
    l.disks.extend(layout(DATA_DISK).disks);
    let imgs = vec![
        sparse_image(dir.path(), "disk0.img", 64),
        sparse_image(dir.path(), "disk1.img", 64),
    ];
    let applied =
        layout::apply_all(&l, &imgs, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(applied, l);
    let staging = dir.path().join("tree");
    let tree = layout::MountTree::mount(&l, &imgs, &staging, Default::default())
        .unwrap_or_else(|e| panic!("{e:#}"));
    let data = tree.root().join("srv/data");
    assert!(mount_source(&data).is_some_and(|s| s.ends_with("p1")));
    assert_ne!(
        mount_source(&data).unwrap().trim_end_matches("p1"),
        mount_source(tree.root()).unwrap().trim_end_matches("p1"),
        "/srv/data comes from the second disk"
    );
    std::fs::write(data.join("db"), b"rows").unwrap();
    let nodes = tree.dev_nodes();
    assert_eq!(nodes.len(), 4);
    assert_eq!(nodes[3].label.as_deref(), Some("data"));
    tree.close().unwrap_or_else(|e| panic!("{e:#}"));
    // Read with mounts from fstab sees both disks.
    let tree = layout::MountTree::mount(&l, &imgs, &staging, Default::default()).unwrap();
    std::fs::create_dir_all(tree.root().join("etc")).unwrap();
    std::fs::write(
        tree.root().join("etc/fstab"),
        "UUID=0e4a0f5c-6a3b-4d7e-8f10-2b3c4d5e6f70 / ext4 defaults 0 1\nLABEL=data /srv/data ext4 defaults 0 2\n",
    )
    .unwrap();
    tree.close().unwrap();
    let mut read = layout::read_all(&imgs).unwrap();
    assert_eq!(
        layout::tree::fill_mount_points(&mut read, &imgs).unwrap(),
        2
    );
    read.disks = read.disks.into_iter().map(bare).collect();
    assert_eq!(read, l);
    for img in &imgs {
        assert!(loops_of(img).is_empty());
    }
}

#[test]
fn cloud_image_numbering_and_logical_partitions_read_mount_and_grow() {
    need_root!("loop devices, mounts");
    let dir = tempfile::tempdir().expect("tempdir");
    // A GPT laid out like a cloud image (14: BIOS boot, 15: ESP, 1: root
    // at the end) and a Debian-installer MBR (1: root, 2: extended, 5: swap).
    let cases: [(&str, Cmd, usize, Vec<usize>); 2] = [
        (
            "cloud-gpt",
            Cmd::new("sgdisk").args(["-n", "14:2048:+4M", "-t", "14:ef02", "-n", "15:0:+32M", "-t", "15:ef00", "-n", "1:0:0", "-t", "1:8300"]),
            2,
            vec![14, 15, 1],
        ),
        (
            "debian-mbr",
            Cmd::new("sfdisk").stdin_bytes("label: dos\nstart=2048, size=90M, type=83\nstart=186368, type=5\nstart=188416, size=16M, type=82\n"),
            0,
            vec![1, 5],
        ),
    ];
    for (name, cmd, root_index, numbers) in cases {
        let img = sparse_image(dir.path(), &format!("{name}.img"), 128);
        run(cmd.arg(&img));
        let parts = sfdisk(&img).2;
        let root_part = parts
            .iter()
            .find(|p| p.2 == "0fc63daf-8483-4772-8e79-3d69d8477de4" || p.2 == "83")
            .cloned()
            .unwrap();
        {
            let lo = PartLoop::new(&img, root_part.0, root_part.1);
            run(Cmd::new("mkfs.ext4")
                .args(["-q", "-L", "cloudimg-rootfs"])
                .arg(&lo.0));
        }
        let mut l = Layout {
            disks: vec![layout::read(&img).unwrap_or_else(|e| panic!("{name}: {e:#}"))],
            volumes: Vec::new(),
        };
        assert_eq!(l.disks[0].numbers(), numbers, "{name}");
        assert_eq!(
            l.disks[0].partitions[root_index].fs.label.as_deref(),
            Some("cloudimg-rootfs")
        );
        l.disks[0].partitions[root_index].fs.mount = Some("/".into());
        let staging = dir.path().join(name);
        let tree =
            layout::MountTree::mount(&l, std::slice::from_ref(&img), &staging, Default::default())
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let src = mount_source(tree.root()).unwrap();
        assert!(
            src.ends_with(&format!("p{}", numbers[root_index])),
            "{name}: root from {src}"
        );
        std::fs::write(tree.root().join("marker"), name).unwrap();
        let nodes = tree.dev_nodes();
        assert!(nodes[root_index + 1]
            .host_path
            .to_string_lossy()
            .ends_with(&format!("p{}", numbers[root_index])));
        tree.close().unwrap_or_else(|e| panic!("{name}: {e:#}"));
        if name == "cloud-gpt" {
            let big = dir.path().join("cloud-big.img");
            copy_to_larger(&img, &big, 256);
            let r = layout::grow(&big, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(r.partition.map(|p| p.number), Some(1));
            let v = run(Cmd::new("sgdisk").arg("-v").arg(&big));
            assert!(v.contains("No problems found"), "sgdisk -v: {v}");
            let after = layout::read(&big).unwrap();
            assert_eq!(after.numbers(), numbers);
            assert_eq!(after.partitions[2].size, Size::Rest);
        }
        // ferry itself lays out only partitions numbered 1..n.
        let other = sparse_image(dir.path(), &format!("{name}-copy.img"), 128);
        let err = layout::apply(&l.disks[0], &other, Safety::default()).unwrap_err();
        assert!(
            format!("{err:#}").contains("ferry lays out partitions numbered 1 to n"),
            "{err:#}"
        );
        assert!(loops_of(&img).is_empty());
    }
}
