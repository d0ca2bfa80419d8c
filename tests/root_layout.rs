#![allow(clippy::unwrap_used)]
//! Root-only tests of the layout engine on sparse image files: apply, read,
//! mount trees, the chroot session, grow, refusals, and cleanup after a kill.
//! Every result is checked by tools ferry did not write (sfdisk, sgdisk,
//! blkid, e2fsck, xfs_repair, fsck.vfat).

#[path = "common/layout.rs"]
mod layout_common;

use std::path::Path;

use ferry::cmd::Cmd;
use ferry::layout::{self, desc::SECTOR, FsType, Layout, Safety, Size};
use layout_common::*;

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
            Some(p.fs.as_str()).filter(|t| *t != "none"),
            "partition {} blkid TYPE",
            i + 1
        );
        assert_eq!(
            b.get("UUID"),
            p.uuid.as_ref(),
            "partition {} blkid UUID",
            i + 1
        );
        assert_eq!(
            b.get("LABEL"),
            p.label.as_ref(),
            "partition {} blkid LABEL",
            i + 1
        );
        match p.fs {
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
    assert_eq!(read, l.without_mounts().disks[0]);
    assert!(
        loops_of(&img).is_empty(),
        "apply left loop devices: {:?}",
        loops_of(&img)
    );
}

#[test]
fn bios_mbr_one_ext4_root() {
    require_root!();
    apply_and_check(BIOS_MBR, 64);
}

#[test]
fn bios_gpt_with_bios_boot_boot_and_root() {
    require_root!();
    apply_and_check(BIOS_GPT, 128);
}

#[test]
fn uefi_gpt_with_esp_xfs_root_and_swap() {
    require_root!();
    apply_and_check(UEFI_GPT, 448);
}

#[test]
fn data_disk_with_one_ext4_partition() {
    require_root!();
    apply_and_check(DATA_DISK, 64);
}

#[test]
fn open_ids_are_filled_and_read_back() {
    require_root!();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l: Layout = layout(DATA_DISK);
    l.disks[0].id = None;
    l.disks[0].partitions[0].uuid = None;
    l.disks[0].partitions[0].partuuid = None;
    let img = sparse_image(dir.path(), "d.img", 64);
    let applied =
        layout::apply(&l.disks[0], &img, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(applied.id.is_some() && applied.partitions[0].uuid.is_some());
    assert_ne!(applied.partitions[0].uuid, l.disks[0].partitions[0].uuid);
    let mut read = layout::read(&img).unwrap_or_else(|e| panic!("{e:#}"));
    read.partitions[0].mount = Some("/srv/data".into());
    assert_eq!(read, applied);
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
    require_root!();
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
    require_root!();
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
    require_root!();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = layout(BIOS_GPT);
    let img = sparse_image(dir.path(), "bios.img", 128);
    layout::apply(&l.disks[0], &img, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
    // Claim /boot is xfs: mounting it fails after / is mounted.
    l.disks[0].partitions[1].fs = FsType::Xfs;
    l.disks[0].partitions[1].label = None;
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
